"""Helpers for the OpenRosa tests: a small test form, a registry with users, a real server
on 127.0.0.1 (waitress in a thread or a subprocess) and a synthetic ODK Collect client that
checks Collect's own rules (open-rosa module of getodk/collect) at every step."""

from __future__ import annotations

import email.utils
import hashlib
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.auth import HTTPDigestAuth

from storage import versions
from storage.registry import Registry
from tests.server_helpers import stop_waitress

ROOT = Path(__file__).resolve().parents[1]
XLSFORMS = Path(__file__).parent / "data" / "xlsform"
FORMLIST_NS = "http://openrosa.org/xforms/xformsList"
MANIFEST_NS = "http://openrosa.org/xforms/xformsManifest"
RESPONSE_NS = "http://openrosa.org/http/response"
WESTERN_AREA = "at6UHUQatSo"
FORM_ID = "facility_visit"


def write_test_form(folder: Path, version: str = "1", extra_rows: int = 0) -> Path:
    """An XLSForm picking a facility from orgunits.csv, with a geopoint, a photo, a repeat
    (and ``extra_rows`` more integer questions, for the 250-question benchmark)."""
    from openpyxl import Workbook

    wb = Workbook()
    survey = wb.active
    survey.title = "survey"
    survey.append(["type", "name", "label"])
    survey.append(["select_one_from_file orgunits.csv", "facility", "Facility"])
    survey.append(["geopoint", "location", "Location"])
    survey.append(["image", "photo", "Photo"])
    survey.append(["text", "remarks", "Remarks"])
    survey.append(["begin_repeat", "visit", "Visit"])
    survey.append(["integer", "patients", "Patients"])
    survey.append(["end_repeat", "", ""])
    for i in range(extra_rows):
        survey.append(["integer", f"q{i}", f"Question {i}"])
    settings = wb.create_sheet("settings")
    settings.append(["form_id", "form_title", "version"])
    settings.append([FORM_ID, "Facility visit", version])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"facility_visit_v{version}.xlsx"
    wb.save(path)
    return path


def instance_xml(facility: str, *, instance_id: str | None = None, remarks: str = "ok",
                 photo: str | None = "photo.jpg", version: str = "1", visits: int = 2,
                 extra: int = 0, deprecated_id: str | None = None) -> tuple[bytes, str]:
    iid = instance_id or f"uuid:{uuid.uuid4()}"
    rep = "".join(f"<visit><patients>{10 + i}</patients></visit>" for i in range(visits))
    more = "".join(f"<q{i}>{i}</q{i}>" for i in range(extra))
    dep = f"<deprecatedID>{deprecated_id}</deprecatedID>" if deprecated_id else ""
    xml = (f'<?xml version="1.0"?><data xmlns:jr="http://openrosa.org/javarosa" '
           f'xmlns:orx="http://openrosa.org/xforms" id="{FORM_ID}" version="{version}">'
           f"<facility>{facility}</facility><location>8.48 -13.23 12.0 4.5</location>"
           f"<photo>{photo or ''}</photo><remarks>{remarks}</remarks>{rep}{more}"
           f"<meta><instanceID>{iid}</instanceID>{dep}</meta></data>")
    return xml.encode(), iid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Setup:
    path: Path | str  # the registry: a file, or a PostgreSQL URL
    passwords: dict[str, str]
    inside: str  # a facility uuid inside Western Area
    outside: str  # a facility uuid outside it


def build_registry(path: Path, forms: list[Path] | None = None, *,
                   location: str | None = None) -> Setup:
    """Sierra Leone demo (v1 published, default), kofi (admin), amina (collector in
    Western Area), the test form with a media file.  The registry is the file ``path``,
    or ``location`` (a PostgreSQL URL) with the form files beside ``path``."""
    from sqlalchemy import text

    from local_server import forms as core_forms
    from local_server import users
    from sync.dhis2_json import import_dhis2_files
    from tests.conftest import DEMO_FILES

    reg = Registry.create(location or path)
    try:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        versions.publish_version(reg, "SL", 1, make_default=True)
        passwords = {"kofi": secrets.token_urlsafe(12), "amina": secrets.token_urlsafe(12)}
        users.add_user(reg, "kofi", passwords["kofi"], role="admin")
        users.add_user(reg, "amina", passwords["amina"], role="collector", roots=[WESTERN_AREA])
        media = path.parent / "media"
        media.mkdir(exist_ok=True)
        (media / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(300))
        form = write_test_form(path.parent / "forms")
        core_forms.add_form(reg, form, media=media, org_unit_field="facility")
        for extra in forms or []:
            core_forms.add_form(reg, extra)
        with reg.read() as conn:
            west = conn.execute(text("SELECT path FROM org_unit WHERE source_ref = :r"),
                                {"r": WESTERN_AREA}).scalar_one()
            inside = conn.execute(text(
                "SELECT uuid FROM org_unit WHERE path LIKE :p AND depth = (SELECT max(depth) "
                "FROM org_unit) ORDER BY uuid LIMIT 1"), {"p": west + "%"}).scalar_one()
            outside = conn.execute(text(
                "SELECT uuid FROM org_unit WHERE path NOT LIKE :p AND depth = (SELECT "
                "max(depth) FROM org_unit) ORDER BY uuid LIMIT 1"), {"p": west + "%"}
            ).scalar_one()
    finally:
        reg.close()
    return Setup(location or path, passwords, str(inside), str(outside))


@contextmanager
def thread_server(path: Path | str, **settings: Any) -> Iterator[str]:
    from waitress.server import create_server

    from local_server.app import create_app
    from local_server.settings import ServerSettings

    app = create_app(path, ServerSettings(**settings))
    port = free_port()
    server = create_server(app, host="127.0.0.1", port=port, threads=8,
                           max_request_body_size=app.settings.max_body * 2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_up(base)
    try:
        yield base
    finally:
        stop_waitress(server, thread)
        app.close()


def wait_up(base: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            requests.head(base + "/submission", timeout=2)
            return
        except requests.ConnectionError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def process_server(path: Path, threads: int = 8) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``georeg serve`` in a subprocess (so the test can ``kill -9`` it)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "georeg.cli", "serve", str(path), "--host", "127.0.0.1",
         "--port", str(port), "--threads", str(threads), "--no-scheduler",
         "--qr-png", str(path.parent / "qr.png")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=(path.parent / "serve.log").open("wb"))  # an unread pipe would block it
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


# --- the synthetic Collect ---------------------------------------------------------------


class CollectError(AssertionError):
    pass


@dataclass
class FormEntry:
    form_id: str
    name: str
    version: str | None
    hash: str | None
    download_url: str
    manifest_url: str | None


@dataclass
class SyntheticCollect:
    """requests + Digest, doing what ODK Collect does and checking what it checks."""

    server: str
    username: str
    password: str
    device_id: str = field(default_factory=lambda: f"collect:{secrets.token_hex(8)}")
    accept_length: int = 10_000_000
    #: Pretend the server accepts less (forces the *isIncomplete* split).
    cap: int | None = None
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.auth = HTTPDigestAuth(self.username, self.password)
        self.session.headers["User-Agent"] = "org.odk.collect.android/v2024.3 (synthetic)"
        self.session.headers["X-OpenRosa-Version"] = "1.0"

    def _params(self) -> dict[str, str]:
        return {"deviceID": self.device_id}

    def _headers(self) -> dict[str, str]:
        return {"Date": email.utils.formatdate(usegmt=True)}

    def get(self, url: str, *, xml: bool = True) -> requests.Response:
        """OpenRosaXmlFetcher: only 200 is success; an OpenRosa server sets the header;
        XML documents must be text/xml."""
        r = self.session.get(url, params=self._params(), headers=self._headers(), timeout=60)
        if r.status_code != 200:
            raise CollectError(f"GET {url}: {r.status_code} {r.text[:200]}")
        if "X-OpenRosa-Version" not in r.headers:
            raise CollectError(f"GET {url}: not an OpenRosa server (no X-OpenRosa-Version)")
        if xml and "text/xml" not in r.headers.get("Content-Type", ""):
            raise CollectError(f"GET {url}: content type {r.headers.get('Content-Type')}")
        return r

    def _absolute_same_host(self, url: str) -> None:
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            raise CollectError(f"URL without host: {url}")
        if parts.netloc != urlsplit(self.server).netloc:
            raise CollectError(f"URL {url} does not use the host the phone used")

    def form_list(self, form_id: str | None = None) -> list[FormEntry]:
        url = self.server.rstrip("/") + "/formList"
        if form_id:
            url += f"?formID={form_id}"
        root = ET.fromstring(self.get(url).content)
        if root.tag != f"{{{FORMLIST_NS}}}xforms":
            raise CollectError(f"form list root is {root.tag}")
        out = []
        for xf in root:
            if xf.tag != f"{{{FORMLIST_NS}}}xform":
                continue
            values = {c.tag.split("}")[1]: (c.text or "") for c in xf
                      if c.tag.startswith(f"{{{FORMLIST_NS}}}")}
            for required in ("formID", "name", "downloadUrl"):
                if not values.get(required):
                    raise CollectError(f"form list entry without {required}: the whole list "
                                       "is rejected")
            hash_ = values.get("hash")
            if hash_ is not None and not hash_.startswith("md5:"):
                hash_ = None
            self._absolute_same_host(values["downloadUrl"])
            if values.get("manifestUrl"):
                self._absolute_same_host(values["manifestUrl"])
            out.append(FormEntry(values["formID"], values["name"], values.get("version") or None,
                                 hash_, values["downloadUrl"], values.get("manifestUrl")))
        return out

    def download_form(self, entry: FormEntry) -> bytes:
        content = self.get(entry.download_url).content
        md5 = "md5:" + hashlib.md5(content).hexdigest()
        if entry.hash != md5:
            raise CollectError(f"downloaded form md5 {md5} differs from the list's {entry.hash}")
        return content

    def manifest(self, entry: FormEntry) -> list[dict[str, str]]:
        assert entry.manifest_url
        root = ET.fromstring(self.get(entry.manifest_url).content)
        if root.tag != f"{{{MANIFEST_NS}}}manifest":
            raise CollectError(f"manifest root is {root.tag}")
        files = []
        for mf in root:
            values = {c.tag.split("}")[1]: (c.text or "") for c in mf}
            for required in ("filename", "hash", "downloadUrl"):
                if not values.get(required):
                    raise CollectError(f"mediaFile without {required}: manifest rejected")
            name = values["filename"]
            if "/" in name or name.startswith("..") or Path(name).name != name:
                raise CollectError(f"rooted or relative media file name {name!r}")
            self._absolute_same_host(values["downloadUrl"])
            files.append(values)
        return files

    def download_media(self, media: dict[str, str]) -> bytes:
        content = self.get(media["downloadUrl"], xml=False).content
        if "md5:" + hashlib.md5(content).hexdigest() != media["hash"]:
            raise CollectError(f"media {media['filename']}: md5 differs from the manifest")
        return content

    def head_submission(self) -> str:
        """OpenRosaServerInstanceUploader step 1: HEAD must answer 204 (any other 2xx is a
        hard failure); read X-OpenRosa-Accept-Content-Length."""
        url = self.server.rstrip("/") + "/submission"
        r = self.session.head(url, params=self._params(), headers=self._headers(), timeout=60)
        if r.status_code == 204:
            self.accept_length = min(int(r.headers.get("X-OpenRosa-Accept-Content-Length",
                                                       10_000_000)), self.cap or 10**12)
            return url
        if 200 <= r.status_code < 300:
            raise CollectError(f"HEAD /submission answered {r.status_code}: not an OpenRosa "
                               "submission endpoint")
        raise CollectError(f"HEAD /submission answered {r.status_code}")

    def submit(self, xml: bytes, files: dict[str, bytes] | None = None,
               xml_name: str = "instance.xml", max_files: int = 100) -> list[requests.Response]:
        """POST(s) the way OkHttpConnection.uploadSubmissionAndFiles splits them."""
        url = self.head_submission()
        pending = list((files or {}).items())
        responses = []
        while True:
            parts: list[tuple[str, tuple[str, bytes, str]]] = [
                ("xml_submission_file", (xml_name, xml, "text/xml"))]
            size = len(xml)
            batch: list[tuple[str, bytes]] = []
            while pending and len(batch) < max_files and (
                    not batch or size + len(pending[0][1]) <= self.accept_length):
                name, content = pending.pop(0)
                batch.append((name, content))
                size += len(content)
            for name, content in batch:
                parts.append((name, (name, content, "image/jpeg")))
            data = {"*isIncomplete*": "yes"} if pending else None
            r = self.session.post(url, params=self._params(), files=parts, data=data,
                                  headers=self._headers(), timeout=60)
            responses.append(r)
            if r.status_code not in (201, 202):
                return responses
            if "OpenRosaResponse" not in r.text:
                raise CollectError(f"{r.status_code} without an OpenRosaResponse body")
            if not pending:
                return responses


def message(response: requests.Response) -> str:
    """The first <message> of an OpenRosaResponse (what Collect shows)."""
    root = ET.fromstring(response.content)
    assert root.tag == f"{{{RESPONSE_NS}}}OpenRosaResponse", root.tag
    node = root.find(f"{{{RESPONSE_NS}}}message")
    return "" if node is None else (node.text or "")


def digest_header(method: str, uri: str, user: str, password: str, challenge: str,
                  algorithm: str = "MD5") -> str:
    """A Digest ``Authorization`` header answering ``challenge`` (nc 1, a fixed cnonce)."""
    fields = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge))
    h = (lambda s: hashlib.sha256(s.encode()).hexdigest()) if algorithm == "SHA-256" else (
        lambda s: hashlib.md5(s.encode()).hexdigest())
    ha1 = h(f"{user}:{fields['realm']}:{password}")
    ha2 = h(f"{method}:{uri}")
    cnonce, nc = "0a4f113b", "00000001"
    response = h(f"{ha1}:{fields['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{user}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", '
            f'uri="{uri}", algorithm={algorithm}, qop=auth, nc={nc}, cnonce="{cnonce}", '
            f'response="{response}", opaque="{fields["opaque"]}"')
