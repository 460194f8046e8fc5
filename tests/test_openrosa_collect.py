"""A synthetic ODK Collect walks the whole OpenRosa conversation with a real server on
127.0.0.1: form list → download (md5) → manifest → media → HEAD → POST with attachments →
duplicate → 409 → *isIncomplete* split → edit (deprecatedID)."""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from requests.auth import HTTPDigestAuth

from local_server import forms, submissions
from storage.registry import Registry
from tests.openrosa_helpers import (
    FORM_ID,
    Setup,
    SyntheticCollect,
    build_registry,
    instance_xml,
    message,
    thread_server,
    write_test_form,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return build_registry(tmp_path_factory.mktemp("openrosa") / "registry.gpkg",
                          [Path(__file__).parent / "data" / "xlsform" / "sample_form.xlsx"])


@pytest.fixture(scope="module")
def server(setup: Setup) -> Iterator[str]:
    with thread_server(setup.path) as base:
        yield base


@pytest.fixture
def collect(server: str, setup: Setup) -> SyntheticCollect:
    return SyntheticCollect(server, "kofi", setup.passwords["kofi"])


def stored(setup: Setup, instance_id: str) -> dict:
    with Registry.open(setup.path) as reg:
        return submissions.get_submission(reg, instance_id)


def count(setup: Setup, instance_id: str) -> int:
    with Registry.open(setup.path) as reg:
        rows = submissions.list_submissions(reg, limit=10_000, include_superseded=True)
    return sum(1 for s in rows["results"] if s["instance_id"] == instance_id)


def test_collect_walk(collect: SyntheticCollect, setup: Setup) -> None:
    listed = {f.form_id: f for f in collect.form_list()}
    assert set(listed) == {FORM_ID, "SAMPLE_FORM_new5"}
    entry = listed[FORM_ID]
    assert entry.version == "1" and entry.name == "Facility visit"
    assert entry.manifest_url, "the form uses orgunits.csv: a manifest must be listed"
    assert listed["SAMPLE_FORM_new5"].manifest_url is None  # no media → no manifest
    xform = collect.download_form(entry)
    assert b"jr://file-csv/orgunits.csv" in xform
    media = {m["filename"]: m for m in collect.manifest(entry)}
    assert set(media) == {"logo.png", "orgunits.csv"}
    assert collect.download_media(media["logo.png"]).startswith(b"\x89PNG")
    units = list(csv.DictReader(io.StringIO(collect.download_media(media["orgunits.csv"])
                                            .decode())))
    assert {"name", "label"} <= set(units[0])
    assert setup.inside in {u["name"] for u in units}

    xml, iid = instance_xml(setup.inside)
    photo = b"\xff\xd8" + bytes(range(256)) * 40
    first = collect.submit(xml, {"photo.jpg": photo})
    assert [r.status_code for r in first] == [201]
    assert "received" in message(first[0])
    got = stored(setup, iid)
    assert got["org_unit_uuid"] == setup.inside
    assert (got["latitude"], got["longitude"]) == (8.48, -13.23)
    assert got["data"]["visit"] == [{"patients": "10"}, {"patients": "11"}]
    assert got["attachments"][0]["md5"] == hashlib.md5(photo).hexdigest()
    assert got["device_id"] == collect.device_id and got["submitted_by"] == "kofi"

    # Collect retries after a lost answer: success, and still one record
    again = collect.submit(xml, {"photo.jpg": photo})
    assert again[-1].status_code in (201, 202)
    assert count(setup, iid) == 1

    # the same instanceID with other XML: 409 with a message Collect shows
    changed = xml.replace(b"<remarks>ok</remarks>", b"<remarks>changed</remarks>")
    conflict = collect.submit(changed)
    assert conflict[-1].status_code == 409
    assert "already exists" in message(conflict[-1])
    assert stored(setup, iid)["data"]["remarks"] == "ok"


def test_form_list_filter_and_hash_stable(collect: SyntheticCollect) -> None:
    only = collect.form_list(FORM_ID)
    assert [f.form_id for f in only] == [FORM_ID]
    assert collect.form_list("no_such_form") == []
    again = collect.form_list(FORM_ID)
    assert again[0].hash == only[0].hash
    assert collect.download_form(again[0]) == collect.download_form(only[0])


def test_absolute_urls_follow_the_host_used(server: str, setup: Setup) -> None:
    port = server.rsplit(":", 1)[1]
    lan = SyntheticCollect(f"http://localhost:{port}", "kofi", setup.passwords["kofi"])
    entry = lan.form_list(FORM_ID)[0]
    assert entry.download_url.startswith(f"http://localhost:{port}/")


def test_is_incomplete_split(collect: SyntheticCollect, setup: Setup) -> None:
    files = {f"p{i}.jpg": bytes([i]) * 60_000 for i in range(5)}
    xml, iid = instance_xml(setup.inside, photo="p0.jpg")
    collect.cap = 130_000  # two files per POST
    responses = collect.submit(xml, files)
    assert len(responses) == 3 and all(r.status_code == 201 for r in responses)
    got = stored(setup, iid)
    assert sorted(a["filename"] for a in got["attachments"]) == sorted(files)
    assert got["status"] == "complete"
    assert count(setup, iid) == 1


def test_incomplete_then_rest_later(collect: SyntheticCollect, setup: Setup) -> None:
    xml, iid = instance_xml(setup.inside)
    url = collect.head_submission()
    r = collect.session.post(url, files=[("xml_submission_file", ("i.xml", xml, "text/xml"))],
                             data={"*isIncomplete*": "yes"})
    assert r.status_code == 201
    assert stored(setup, iid)["status"] == "incomplete"
    rest = collect.submit(xml, {"photo.jpg": b"jpeg"})
    assert rest[-1].status_code == 201
    got = stored(setup, iid)
    assert got["status"] == "complete" and len(got["attachments"]) == 1


def test_edit_with_deprecated_id(collect: SyntheticCollect, setup: Setup) -> None:
    xml, iid = instance_xml(setup.inside)
    assert collect.submit(xml, {"photo.jpg": b"one"})[-1].status_code == 201
    edited, new_id = instance_xml(setup.inside, remarks="fixed", deprecated_id=iid)
    assert collect.submit(edited)[-1].status_code == 201
    assert stored(setup, iid)["status"] == "superseded"
    new = stored(setup, new_id)
    assert new["data"]["remarks"] == "fixed" and new["deprecated_id"] == iid
    assert [a["filename"] for a in new["attachments"]] == ["photo.jpg"]  # carried over
    again, _ = instance_xml(setup.inside, remarks="twice", deprecated_id=iid)
    assert collect.submit(again)[-1].status_code == 409


def test_encrypted_submission_stored_as_is(collect: SyntheticCollect, setup: Setup) -> None:
    iid = f"uuid:{uuid.uuid4()}"
    manifest = (f'<data xmlns="http://opendatakit.org/submissions" id="{FORM_ID}" '
                f'version="1" encrypted="yes" xmlns:orx="http://openrosa.org/xforms">'
                "<base64EncryptedKey>a2V5</base64EncryptedKey>"
                "<encryptedXmlFile>submission.xml.enc</encryptedXmlFile>"
                f"<orx:meta><orx:instanceID>{iid}</orx:instanceID></orx:meta></data>").encode()
    blob = bytes(range(256)) * 8
    r = collect.submit(manifest, {"submission.xml.enc": blob}, xml_name="submission.xml")
    assert r[-1].status_code == 201
    got = stored(setup, iid)
    assert got["encrypted"] and got["data"] is None
    assert got["attachments"][0]["md5"] == hashlib.md5(blob).hexdigest()


def test_org_unit_list_follows_the_user_and_changes(server: str, setup: Setup,
                                                    tmp_path: Path) -> None:
    amina = SyntheticCollect(server, "amina", setup.passwords["amina"])
    entry = amina.form_list(FORM_ID)[0]
    media = {m["filename"]: m for m in amina.manifest(entry)}
    names = {r["name"] for r in csv.DictReader(io.StringIO(
        amina.download_media(media["orgunits.csv"]).decode()))}
    assert setup.inside in names and setup.outside not in names
    kofi = SyntheticCollect(server, "kofi", setup.passwords["kofi"])
    before = {m["filename"]: m["hash"] for m in kofi.manifest(kofi.form_list(FORM_ID)[0])}
    assert before["orgunits.csv"] != media["orgunits.csv"]["hash"]

    # a new form version (re-added) is a new hash in the list
    with Registry.open(setup.path) as reg:
        out = forms.add_form(reg, write_test_form(tmp_path, version="2"))
    assert out["created"] and out["version"] == "2"
    after = kofi.form_list(FORM_ID)[0]
    assert after.version == "2" and after.hash != entry.hash
    kofi.download_form(after)
    # the media were carried over to the new version
    assert {m["filename"] for m in kofi.manifest(after)} == {"logo.png", "orgunits.csv"}


def test_every_response_has_openrosa_headers(server: str, setup: Setup) -> None:
    auth = HTTPDigestAuth("kofi", setup.passwords["kofi"])
    for method, path in [("GET", "/formList"), ("GET", "/nowhere"), ("HEAD", "/submission"),
                         ("GET", f"/forms/{FORM_ID}/form.xml?deviceID=x&other=1"),
                         ("POST", "/submission")]:
        for a in (None, auth):
            r = requests.request(method, server + path, auth=a, timeout=30)
            assert r.headers.get("X-OpenRosa-Version") == "1.0", (method, path, r.status_code)
            assert r.headers.get("Date"), (method, path)
            assert r.status_code != 500


def test_org_unit_list_hash_changes_with_the_registry(server: str, setup: Setup) -> None:
    """A new default version with a renamed facility → a new manifest hash and list."""
    from storage import units, versions

    kofi = SyntheticCollect(server, "kofi", setup.passwords["kofi"])
    entry = kofi.form_list(FORM_ID)[0]
    before = {m["filename"]: m for m in kofi.manifest(entry)}["orgunits.csv"]
    with Registry.open(setup.path) as reg:
        versions.create_version(reg, "SL", copy_from=1)
        units.rename_unit(reg, "SL", setup.inside, "Renamed clinic", number=2)
        versions.publish_version(reg, "SL", 2, make_default=True)
    after = {m["filename"]: m for m in kofi.manifest(entry)}["orgunits.csv"]
    assert after["hash"] != before["hash"]
    rows = {r["name"]: r["label"] for r in csv.DictReader(io.StringIO(
        kofi.download_media(after).decode()))}
    assert rows[setup.inside] == "Renamed clinic"
