"""Bad and hostile input against a real server on 127.0.0.1: malformed multipart, XXE and
entity expansion, oversized bodies, path tricks in attachment names, unknown forms,
missing or wrong credentials, a collector outside their area, parallel duplicates, and
``kill -9`` in the middle of a burst."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.auth import HTTPBasicAuth, HTTPDigestAuth

from local_server import submissions
from storage.registry import Registry
from tests.openrosa_helpers import (
    FORM_ID,
    Setup,
    SyntheticCollect,
    build_registry,
    digest_header,
    instance_xml,
    message,
    process_server,
    thread_server,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return build_registry(tmp_path_factory.mktemp("security") / "registry.gpkg")


@pytest.fixture(scope="module")
def server(setup: Setup) -> Iterator[str]:
    with thread_server(setup.path, max_body=2 * 1024 * 1024) as base:
        yield base


@pytest.fixture
def auth(setup: Setup) -> HTTPDigestAuth:
    return HTTPDigestAuth("kofi", setup.passwords["kofi"])


def all_subs(setup: Setup) -> list[dict]:
    with Registry.open(setup.path) as reg:
        return list(submissions.list_submissions(reg, limit=100_000,
                                                 include_superseded=True)["results"])


def post(server: str, auth: object, xml: bytes, files: dict[str, bytes] | None = None
         ) -> requests.Response:
    parts = [("xml_submission_file", ("i.xml", xml, "text/xml"))]
    parts += [(n, (n, c, "image/jpeg")) for n, c in (files or {}).items()]
    return requests.post(server + "/submission?deviceID=t", files=parts, auth=auth, timeout=60)


def test_malformed_multipart(server: str, auth: HTTPDigestAuth) -> None:
    body = b"--xyz\r\nContent-Disposition: form-data; name=\"xml_submission_file\"; filena"
    r = requests.post(server + "/submission", data=body, auth=auth, timeout=30,
                      headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 400
    assert "xml_submission_file" in message(r)
    r = requests.post(server + "/submission", data=b"<data/>", auth=auth, timeout=30,
                      headers={"Content-Type": "text/xml"})
    assert r.status_code == 400 and "multipart" in message(r)
    r = post(server, auth, b"<data id='x'><unclosed></data>")
    assert r.status_code == 400 and "well-formed" in message(r)


def test_external_entities_refused(server: str, auth: HTTPDigestAuth, setup: Setup) -> None:
    before = len(all_subs(setup))
    xxe = (b'<?xml version="1.0"?><!DOCTYPE data [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b'<data id="facility_visit"><remarks>&x;</remarks><meta><instanceID>uuid:xxe'
           b"</instanceID></meta></data>")
    r = post(server, auth, xxe)
    assert r.status_code == 400 and "root:" not in r.text
    assert "entities" in message(r)
    lol = b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">' + b"".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode()
        for i in range(9)) + b']><data id="facility_visit"><remarks>&j;</remarks></data>'
    started = time.perf_counter()
    r = post(server, auth, lol)
    assert r.status_code == 400 and time.perf_counter() - started < 5
    assert len(all_subs(setup)) == before


def test_oversized_body_413(server: str, auth: HTTPDigestAuth, setup: Setup) -> None:
    xml, iid = instance_xml(setup.inside)
    r = post(server, auth, xml, {"big.jpg": b"x" * (3 * 1024 * 1024)})
    assert r.status_code == 413
    assert r.headers["X-OpenRosa-Version"] == "1.0"
    assert iid not in {s["instance_id"] for s in all_subs(setup)}


def test_attachment_names_neutralised(server: str, auth: HTTPDigestAuth, setup: Setup) -> None:
    xml, iid = instance_xml(setup.inside)
    r = post(server, auth, xml, {"../../etc/evil.jpg": b"a", "..\\..\\win.jpg": b"b",
                                 "odd name;$(rm).jpg": b"c"})
    assert r.status_code == 201
    (sub,) = [s for s in all_subs(setup) if s["instance_id"] == iid]
    names = sorted(a["filename"] for a in sub["attachments"])
    assert names == ["evil.jpg", "odd name__(rm).jpg", "win.jpg"]
    assert all("/" not in n and "\\" not in n and not n.startswith(".") for n in names)


def test_unknown_form_404(server: str, auth: HTTPDigestAuth) -> None:
    r = requests.get(server + "/forms/nope/form.xml", auth=auth, timeout=30)
    assert r.status_code == 404
    r = requests.get(server + "/forms/nope/manifest", auth=auth, timeout=30)
    assert r.status_code == 404
    xml = (b'<data id="nope"><meta><instanceID>uuid:' + uuid.uuid4().hex.encode()
           + b"</instanceID></meta></data>")
    r = post(server, auth, xml)
    assert r.status_code == 404 and "nope" in message(r)


def test_credentials(server: str, setup: Setup) -> None:
    for a in (None, HTTPDigestAuth("kofi", "wrong-password"), HTTPDigestAuth("nobody", "x")):
        r = requests.get(server + "/formList", auth=a, timeout=30)
        assert r.status_code == 401
        challenge = r.headers["WWW-Authenticate"]
        assert challenge.startswith("Digest ") and 'qop="auth"' in challenge
        assert "realm=" in challenge and "nonce=" in challenge
    # Basic is not answered over plain http (as Collect never offers it there)
    r = requests.get(server + "/formList", auth=HTTPBasicAuth("kofi", setup.passwords["kofi"]),
                     timeout=30)
    assert r.status_code == 401


def test_digest_sha256_and_tampering(server: str, setup: Setup) -> None:
    for algorithm in ("SHA-256", "MD5"):
        challenge = requests.get(server + "/formList", timeout=30).headers["WWW-Authenticate"]
        header = digest_header("GET", "/formList", "kofi", setup.passwords["kofi"], challenge,
                         algorithm)
        r = requests.get(server + "/formList", headers={"Authorization": header}, timeout=30)
        assert r.status_code == 200, algorithm
    # the answer for one URI does not open another
    r = requests.get(server + f"/forms/{FORM_ID}/form.xml", headers={"Authorization": header},
                     timeout=30)
    assert r.status_code == 401
    # a forged nonce is refused
    forged = challenge.replace('nonce="', 'nonce="AAAA')
    header = digest_header("GET", "/formList", "kofi", setup.passwords["kofi"], forged, "MD5")
    r = requests.get(server + "/formList", headers={"Authorization": header}, timeout=30)
    assert r.status_code == 401


def test_a_replayed_digest_answer_is_refused(server: str, setup: Setup) -> None:
    """Someone on the Wi-Fi who captured a request cannot send it again."""
    challenge = requests.get(server + "/formList", timeout=30).headers["WWW-Authenticate"]
    header = digest_header("GET", "/formList", "kofi", setup.passwords["kofi"], challenge, "MD5")
    first = requests.get(server + "/formList", headers={"Authorization": header}, timeout=30)
    again = requests.get(server + "/formList", headers={"Authorization": header}, timeout=30)
    assert first.status_code == 200
    assert again.status_code == 401 and again.headers["WWW-Authenticate"].startswith("Digest ")
    # an honest client counting up under the same nonce goes on working
    session = requests.Session()
    session.auth = HTTPDigestAuth("kofi", setup.passwords["kofi"])
    assert all(session.get(server + "/formList", timeout=30).status_code == 200
               for _ in range(3))


def test_collector_outside_area_403(server: str, setup: Setup) -> None:
    amina = HTTPDigestAuth("amina", setup.passwords["amina"])
    xml, iid = instance_xml(setup.outside)
    r = post(server, amina, xml)
    assert r.status_code == 403 and "outside" in message(r)
    assert iid not in {s["instance_id"] for s in all_subs(setup)}
    xml, iid = instance_xml(setup.inside)
    assert post(server, amina, xml).status_code == 201


def test_unknown_unit_refused(server: str, auth: HTTPDigestAuth) -> None:
    xml, _ = instance_xml("not-a-unit")
    r = post(server, auth, xml)
    assert r.status_code == 400 and "not-a-unit" in message(r)


def test_five_identical_in_parallel_make_one(server: str, auth: HTTPDigestAuth,
                                             setup: Setup) -> None:
    xml, iid = instance_xml(setup.inside)
    barrier = threading.Barrier(5)

    def send(_: int) -> int:
        barrier.wait()
        return post(server, auth, xml, {"photo.jpg": b"same"}).status_code

    with ThreadPoolExecutor(5) as pool:
        codes = list(pool.map(send, range(5)))
    assert all(c in (201, 202) for c in codes), codes
    assert [s["instance_id"] for s in all_subs(setup)].count(iid) == 1


@pytest.mark.slow
def test_kill_9_keeps_every_acknowledged_submission(tmp_path: Path) -> None:
    setup = build_registry(tmp_path / "registry.gpkg")
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    with process_server(setup.path) as (base, proc):
        collect = SyntheticCollect(base, "kofi", setup.passwords["kofi"])
        collect.head_submission()

        def burst() -> None:
            session = requests.Session()
            session.auth = HTTPDigestAuth("kofi", setup.passwords["kofi"])
            while not stop.is_set():
                xml, iid = instance_xml(setup.inside)
                try:
                    r = session.post(base + "/submission", timeout=10, files=[
                        ("xml_submission_file", ("i.xml", xml, "text/xml")),
                        ("photo.jpg", ("photo.jpg", os.urandom(20_000), "image/jpeg"))])
                except requests.RequestException:
                    return
                if r.status_code == 201:
                    with lock:
                        acknowledged.append(iid)

        threads = [threading.Thread(target=burst) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(2.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(15)
    assert len(acknowledged) > 10
    with Registry.open(setup.path) as reg:
        held = {s["instance_id"]: s for s in submissions.list_submissions(
            reg, limit=100_000)["results"]}
    missing = [i for i in acknowledged if i not in held]
    assert not missing, f"{len(missing)} acknowledged submission(s) lost"
    assert all(held[i]["attachments"] for i in acknowledged)


def test_stale_nonce_gets_stale_challenge(setup: Setup) -> None:
    with thread_server(setup.path, nonce_seconds=1) as base:
        challenge = requests.get(base + "/formList", timeout=30).headers["WWW-Authenticate"]
        time.sleep(2.2)
        header = digest_header("GET", "/formList", "kofi", setup.passwords["kofi"], challenge, "MD5")
        r = requests.get(base + "/formList", headers={"Authorization": header}, timeout=30)
        assert r.status_code == 401 and "stale=true" in r.headers["WWW-Authenticate"]
        # requests answers the fresh challenge on its own
        r = requests.get(base + "/formList", timeout=30,
                         auth=HTTPDigestAuth("kofi", setup.passwords["kofi"]))
        assert r.status_code == 200


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(xml=st.binary(max_size=400) | st.text(max_size=300).map(str.encode),
       name=st.text(max_size=40), incomplete=st.sampled_from(["yes", "no", "", "\x00"]))
def test_fuzz_submission_never_500(server: str, auth: HTTPDigestAuth, xml: bytes, name: str,
                                   incomplete: str) -> None:
    parts = [("xml_submission_file", ("i.xml", xml, "text/xml"))]
    if name:
        parts.append((name, (name, b"x", "application/octet-stream")))
    r = requests.post(server + "/submission", files=parts, data={"*isIncomplete*": incomplete},
                      auth=auth, timeout=30)
    assert r.status_code in (201, 202, 400, 403, 404, 409), (r.status_code, r.text)
    assert "Traceback" not in r.text


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
       method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]))
def test_fuzz_paths_never_500(server: str, auth: HTTPDigestAuth, path: str, method: str) -> None:
    from urllib.parse import quote

    for prefix in ("/forms/", "/forms/facility_visit/media/", "/formList?formID=",
                   "/submission?deviceID="):
        r = requests.request(method, server + prefix + quote(path, safe="/?=&"), auth=auth,
                             timeout=30)
        assert r.status_code < 500, (method, prefix, path, r.status_code)
