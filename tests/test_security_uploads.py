"""Uploads that touch another user's data, against a real server on 127.0.0.1.

* The Iaso app's two calls are paired per user: metadata naming another user's file or
  instance never lands on their submission, and two phones sending the same file name
  each keep their own unit and GPS (review finding 1).
* Resending someone else's submission (same instanceID, same bytes) cannot replace or add
  its attachments, nor can an edit (deprecatedID) supersede it; restricted collectors
  only see their own submissions among those with no org unit (finding 6).
* Deeply nested XML and any DOCTYPE are refused with 400 on ``/submission`` and on the
  Iaso ``/sync/form_upload/`` (findings 9 and 11), while the real Collect/Iaso
  submissions of the test data carry no DOCTYPE and still parse.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.auth import HTTPDigestAuth
from sqlalchemy import text

from local_server import submissions, users
from tests import server_helpers as sh
from tests.openrosa_helpers import instance_xml

DATA = Path(__file__).parent / "data" / "iaso_mobile"
APP = sh.APP_ID
BO = "O6uvpzGd5pu"  # a district outside Western Area: bob's area
FACILITY = "kbGqmM6ZWWV"  # Allen Town Health Post, in Western Area: amina's
REGISTRATION = next(DATA.glob("disasi_only/*/20_56_*.xml")).read_bytes()
REGISTRATION_IID = "uuid:63e653b6-bca1-4a6d-93d9-6db455c342db"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sh.LiveServer]:
    """The demo server (kofi reviewer, amina collector in Western Area) with the Iaso
    forms, plus bob (collector in Bo) and ada (admin)."""
    with sh.demo_server(tmp_path_factory.mktemp("secup"), forms=sorted(DATA.glob("forms/*.xml"))
                        ) as live:
        for name, role, roots in (("bob", "collector", [BO]), ("ada", "admin", [])):
            live.passwords[name] = secrets.token_urlsafe(12)
            users.add_user(live.registry, name, live.passwords[name], role=role, roots=roots)
        yield live


def _token(live: sh.LiveServer, user: str) -> dict[str, str]:
    r = requests.post(f"{live.base}/api/token/",
                      json={"username": user, "password": live.passwords[user]}, timeout=30)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access']}"}


def _xml(instance_id: str, note: str = "") -> bytes:
    """The app's registration submission with another instanceID (and a marker)."""
    out = REGISTRATION.replace(REGISTRATION_IID.encode(), instance_id.encode())
    assert out != REGISTRATION
    return out.replace(b"<last_name>Makulo</last_name>",
                       f"<last_name>Makulo{note}</last_name>".encode())


def _meta(live: sh.LiveServer, user: str, item: dict[str, Any]) -> requests.Response:
    return requests.post(f"{live.base}/api/instances/?app_id={APP}", json=[item],
                         headers=_token(live, user), timeout=30)


def _upload(live: sh.LiveServer, user: str, file_name: str, xml: bytes,
            files: dict[str, bytes] | None = None) -> requests.Response:
    parts = [("xml_submission_file", (file_name, xml, "text/xml"))]
    parts += [(n, (n, c, "image/jpeg")) for n, c in (files or {}).items()]
    return requests.post(f"{live.base}/sync/form_upload/?app_id={APP}", files=parts,
                         headers=_token(live, user), timeout=60)


def _submit(live: sh.LiveServer, user: str, xml: bytes,
            files: dict[str, bytes] | None = None) -> requests.Response:
    parts = [("xml_submission_file", ("submission.xml", xml, "text/xml"))]
    parts += [(n, (n, c, "image/jpeg")) for n, c in (files or {}).items()]
    return requests.post(f"{live.base}/submission", files=parts, timeout=60,
                         auth=HTTPDigestAuth(user, live.passwords[user]))


def _stored(live: sh.LiveServer, instance_id: str) -> dict[str, Any]:
    return submissions.get_submission(live.registry, instance_id)


def _listed(live: sh.LiveServer, user: str) -> set[str]:
    r = requests.get(f"{live.base}/api/v1/submissions?limit=1000", headers=_token(live, user),
                     timeout=30)
    assert r.status_code == 200, r.text
    return {s["instance_id"] for s in r.json()["submissions"]}


def _uuid(live: sh.LiveServer, ref: str) -> str:
    with live.registry.read() as conn:
        return str(conn.execute(text("SELECT uuid FROM org_unit WHERE source_ref = :r LIMIT 1"),
                                {"r": ref}).scalar_one())


def _content(live: sh.LiveServer, instance_id: str, name: str) -> bytes:
    return submissions.attachment_content(live.registry, _stored(live, instance_id)["id"],
                                          name)[0]


# --- finding 1: the Iaso two-call upload ------------------------------------------------


def test_metadata_with_another_users_file_name_leaves_their_submission_alone(
        server: sh.LiveServer) -> None:
    """The review's reproduction: bob re-tags amina's upload into Bo with her file name."""
    iid, name = f"uuid:{uuid.uuid4()}", f"reg_{secrets.token_hex(4)}.xml"
    assert _upload(server, "amina", name, _xml(iid, "private")).status_code == 201
    r = _meta(server, "amina", {"id": str(uuid.uuid4()), "file": f"/sdcard/odk/{name}",
                                "orgUnitId": FACILITY, "latitude": 8.4, "longitude": -13.2})
    assert r.status_code == 200, r.text
    # bob's metadata under the same file name is his own (still waiting for his XML)
    r = _meta(server, "bob", {"id": str(uuid.uuid4()), "file": name, "orgUnitId": BO,
                              "latitude": 9.0, "longitude": -12.0})
    assert r.status_code == 200, r.text
    sub = _stored(server, iid)
    assert sub["org_unit_uuid"] == _uuid(server, FACILITY)
    assert (sub["latitude"], sub["longitude"]) == (8.4, -13.2)
    assert iid in _listed(server, "amina")
    assert iid not in _listed(server, "bob")


def test_metadata_sent_first_by_another_user_is_not_applied_to_my_upload(
        server: sh.LiveServer) -> None:
    iid, name = f"uuid:{uuid.uuid4()}", f"reg_{secrets.token_hex(4)}.xml"
    r = _meta(server, "bob", {"id": str(uuid.uuid4()), "file": name, "orgUnitId": BO,
                              "latitude": 9.0, "longitude": -12.0})
    assert r.status_code == 200, r.text
    assert _upload(server, "amina", name, _xml(iid)).status_code == 201
    sub = _stored(server, iid)
    assert sub["org_unit_uuid"] is None and sub["latitude"] is None
    assert sub["submitted_by"] == "amina"


@pytest.mark.parametrize("xml_first", [False, True])
def test_two_phones_with_the_same_file_name_keep_their_own_metadata(
        server: sh.LiveServer, xml_first: bool) -> None:
    """collide.py: both users send ``<form>_<time>.xml``; each keeps their unit and GPS,
    with each user's two calls in either order (and the two phones interleaved)."""
    name = f"reg_2026-11-29_11-00-00_{int(xml_first)}_{secrets.token_hex(3)}.xml"
    sent = {"amina": (f"uuid:{uuid.uuid4()}", FACILITY, 8.45),
            "bob": (f"uuid:{uuid.uuid4()}", BO, 7.9)}

    def send_xml(user: str) -> None:
        r = _upload(server, user, name, _xml(sent[user][0], user))
        assert r.status_code == 201, r.text

    def send_meta(user: str) -> None:
        _, unit, lat = sent[user]
        r = _meta(server, user, {"id": str(uuid.uuid4()), "file": f"/sdcard/odk/x/{name}",
                                 "orgUnitId": unit, "latitude": lat, "longitude": -12.5})
        assert r.status_code == 200, r.text

    if xml_first:  # both phones' XML, then both metadata
        for step in (send_xml, send_meta):
            for user in sent:
                step(user)
    else:  # one phone after the other, metadata first
        for user in sent:
            send_meta(user)
            send_xml(user)
    for user, (iid, unit, lat) in sent.items():
        sub = _stored(server, iid)
        assert sub["submitted_by"] == user
        assert sub["org_unit_uuid"] == _uuid(server, unit), user
        assert sub["latitude"] == lat, user
        assert iid in _listed(server, user)
    assert sent["amina"][0] not in _listed(server, "bob")
    assert sent["bob"][0] not in _listed(server, "amina")


def test_metadata_naming_another_users_instance_is_refused(server: sh.LiveServer) -> None:
    iaso_id = str(uuid.uuid4())
    iid, name = f"uuid:{iaso_id}", f"reg_{secrets.token_hex(4)}.xml"
    assert _upload(server, "amina", name, _xml(iid)).status_code == 201
    assert _meta(server, "amina", {"id": iaso_id, "file": name, "orgUnitId": FACILITY}
                 ).status_code == 200
    for file in (name, "other.xml"):
        r = _meta(server, "bob", {"id": iaso_id, "file": file, "orgUnitId": BO,
                                  "latitude": 9.0, "longitude": -12.0})
        assert r.status_code == 403, r.text
        assert "another user" in r.json()["message"]
    # the app's own id for amina's instance (not the XML's instanceID): bob's metadata
    # with it can only wait for bob's own upload of that file
    app_id, name2 = str(uuid.uuid4()), f"reg_{secrets.token_hex(4)}.xml"
    iid2 = f"uuid:{uuid.uuid4()}"
    assert _upload(server, "amina", name2, _xml(iid2)).status_code == 201
    assert _meta(server, "amina", {"id": app_id, "file": name2, "orgUnitId": FACILITY}
                 ).status_code == 200
    r = _meta(server, "bob", {"id": app_id, "file": name2, "orgUnitId": BO})
    assert r.status_code == 200, r.text
    assert _stored(server, iid2)["org_unit_uuid"] == _uuid(server, FACILITY)
    sub = _stored(server, iid)
    assert sub["org_unit_uuid"] == _uuid(server, FACILITY) and sub["latitude"] is None


def test_rows_from_before_the_per_user_key_still_pair(server: sh.LiveServer) -> None:
    """A pair half done before the upgrade (a row keyed by the file name alone) completes
    for the user who wrote it; one the old code had paired with another user's submission
    is left alone and the user starts a row of their own."""
    pending, polluted = f"old_{secrets.token_hex(4)}.xml", f"old_{secrets.token_hex(4)}.xml"
    bobs = f"uuid:{uuid.uuid4()}"
    assert _submit(server, "bob", _xml(bobs)).status_code == 201
    with server.registry.write(origin="test", author="test") as conn:
        for name, sub in ((pending, None), (polluted, _stored(server, bobs)["id"])):
            conn.execute(text(
                "INSERT INTO iaso_upload (file_name, instance_uuid, metadata, submission_id, "
                "received_by) VALUES (:f, :u, :m, :s, 'amina')"),
                {"f": name, "u": str(uuid.uuid4()), "s": sub,
                 "m": json.dumps({"orgUnitId": _uuid(server, FACILITY), "latitude": 8.3})})
    first, second = f"uuid:{uuid.uuid4()}", f"uuid:{uuid.uuid4()}"
    assert _upload(server, "amina", pending, _xml(first)).status_code == 201
    sub = _stored(server, first)
    assert (sub["org_unit_uuid"], sub["latitude"]) == (_uuid(server, FACILITY), 8.3)
    assert _meta(server, "amina", {"file": polluted, "orgUnitId": FACILITY, "latitude": 8.2}
                 ).status_code == 200
    assert _upload(server, "amina", polluted, _xml(second)).status_code == 201
    assert _stored(server, second)["latitude"] == 8.2
    assert _stored(server, bobs)["latitude"] is None


def test_iaso_resend_of_another_users_xml_is_refused(server: sh.LiveServer) -> None:
    iid, name = f"uuid:{uuid.uuid4()}", f"reg_{secrets.token_hex(4)}.xml"
    xml = _xml(iid)
    assert _upload(server, "amina", name, xml, {"photo.jpg": b"REAL"}).status_code == 201
    r = _upload(server, "bob", name, xml, {"photo.jpg": b"FORGED"})
    assert r.status_code == 403 and "another user" in r.json()["message"], r.text
    assert _meta(server, "bob", {"file": name, "orgUnitId": BO}).status_code == 200
    sub = _stored(server, iid)
    assert sub["org_unit_uuid"] is None and sub["submitted_by"] == "amina"
    assert _content(server, iid, "photo.jpg") == b"REAL"


# --- finding 6: attachments and the listing ---------------------------------------------


def test_another_user_cannot_replace_or_add_attachments(server: sh.LiveServer) -> None:
    """The review's reproduction (OpenRosa): bob resends amina's exact XML with a forged
    file; then the sender and an admin may still complete it."""
    iid = f"uuid:{uuid.uuid4()}"
    xml = _xml(iid)
    r = _submit(server, "amina", xml, {"consent.jpg": b"REAL-SIGNATURE"})
    assert r.status_code == 201, r.text
    for files in ({"consent.jpg": b"FORGED"}, {"extra.jpg": b"MORE"}, {}):
        r = _submit(server, "bob", xml, files)
        assert r.status_code == 403, r.text
        assert "another user" in r.text
    sub = _stored(server, iid)
    assert [a["filename"] for a in sub["attachments"]] == ["consent.jpg"]
    assert _content(server, iid, "consent.jpg") == b"REAL-SIGNATURE"
    # the sender adds a file, an admin adds another: both accepted
    assert _submit(server, "amina", xml, {"second.jpg": b"2"}).status_code == 201
    assert _submit(server, "ada", xml, {"third.jpg": b"3"}).status_code == 201
    assert sorted(a["filename"] for a in _stored(server, iid)["attachments"]) == [
        "consent.jpg", "second.jpg", "third.jpg"]


def test_another_user_cannot_supersede_a_submission_with_an_edit(
        server: sh.LiveServer) -> None:
    iid = f"uuid:{uuid.uuid4()}"
    assert _submit(server, "amina", _xml(iid), {"consent.jpg": b"REAL"}).status_code == 201
    edit = _xml(f"uuid:{uuid.uuid4()}").replace(
        b"</instanceID>", f"</instanceID><deprecatedID>{iid}</deprecatedID>".encode(), 1)
    r = _submit(server, "bob", edit)
    assert r.status_code == 403 and "another user" in r.text, r.text
    assert _stored(server, iid)["status"] == "complete"
    assert _submit(server, "amina", edit).status_code == 201
    assert _stored(server, iid)["status"] == "superseded"


def test_restricted_users_see_only_their_own_submissions_without_a_unit(
        server: sh.LiveServer) -> None:
    mine, theirs = f"uuid:{uuid.uuid4()}", f"uuid:{uuid.uuid4()}"
    assert _submit(server, "bob", _xml(mine)).status_code == 201
    assert _submit(server, "amina", _xml(theirs, "private")).status_code == 201
    assert _stored(server, theirs)["org_unit_uuid"] is None
    bob = _listed(server, "bob")
    assert mine in bob and theirs not in bob
    amina = _listed(server, "amina")
    assert theirs in amina and mine not in amina
    for everyone in ("kofi", "ada"):  # a reviewer of the whole country, an admin
        assert {mine, theirs} <= _listed(server, everyone)


# --- findings 9 and 11: nesting and DOCTYPE ----------------------------------------------


def _both_routes(live: sh.LiveServer, xml: bytes) -> list[requests.Response]:
    return [_submit(live, "amina", xml), _upload(live, "amina", "bad.xml", xml)]


def test_deeply_nested_xml_is_a_400(server: sh.LiveServer) -> None:
    deep = (b'<data id="trypelim_registration">' + b"<a>" * 100_000 + b"</a>" * 100_000
            + b"<meta><instanceID>uuid:deep</instanceID></meta></data>")
    for r in _both_routes(server, deep):
        assert r.status_code == 400, (r.url, r.status_code, r.text[:300])
        assert "levels deep" in r.text
    # a reasonable depth is fine
    iid = f"uuid:{uuid.uuid4()}"
    nested = _xml(iid).replace(b"<post_name />", b"<g>" * 50 + b"x" + b"</g>" * 50)
    assert _submit(server, "amina", nested).status_code == 201
    assert _stored(server, iid)["data"]["Registration"]["g"]["g"]["g"]


@pytest.mark.parametrize("doctype", [
    b'<!DOCTYPE data SYSTEM "http://127.0.0.1:1/x.dtd">',
    b'<!DOCTYPE data PUBLIC "-//x//y" "file:///etc/passwd">',
    b"<!DOCTYPE data []>",
])
def test_any_doctype_is_refused(server: sh.LiveServer, doctype: bytes) -> None:
    iid = f"uuid:{uuid.uuid4()}"
    xml = _xml(iid).replace(b"<?xml version='1.0'?>", b"<?xml version='1.0'?>" + doctype, 1)
    assert doctype in xml
    for r in _both_routes(server, xml):
        assert r.status_code == 400, (r.url, r.status_code, r.text[:300])
        assert "DOCTYPE" in r.text
    with pytest.raises(Exception, match="No submission"):
        _stored(server, iid)


def test_real_collect_and_iaso_submissions_carry_no_doctype(tmp_path: Path) -> None:
    """What ODK Collect and the Iaso app send (the test data) parses under the rules."""
    samples = [p.read_bytes() for p in DATA.glob("disasi_only/*/*.xml")]
    samples.append(instance_xml("x")[0])
    assert len(samples) == 3
    for xml in samples:
        assert b"<!DOCTYPE" not in xml
        assert submissions.parse_xml(xml).get("id")


@pytest.mark.postgis
def test_iaso_pairing_is_per_user_on_postgresql(tmp_path: Path, postgis_url: str) -> None:
    """The same pairing on a PostgreSQL registry (jsonb metadata, the same SQL)."""
    from storage.registry import Registry
    from tests.openrosa_helpers import build_registry, thread_server

    setup = build_registry(tmp_path / "registry.gpkg", sorted(DATA.glob("forms/*.xml")),
                           location=f"{postgis_url}?schema=secup_{uuid.uuid4().hex[:10]}")
    with Registry.open(setup.path) as reg, thread_server(setup.path) as base:
        setup.passwords["bob"] = secrets.token_urlsafe(12)
        users.add_user(reg, "bob", setup.passwords["bob"], role="collector", roots=[BO])
        live = sh.LiveServer(base, reg, tmp_path, setup.passwords)
        name = "reg_2026-11-29_12-00-00.xml"
        sent = {"amina": (f"uuid:{uuid.uuid4()}", FACILITY, 8.45),
                "bob": (f"uuid:{uuid.uuid4()}", BO, 7.9)}
        for user, (iid, _, _) in sent.items():
            r = requests.post(f"{base}/sync/form_upload/", headers=_token(live, user),
                              files=[("xml_submission_file", (name, _xml(iid), "text/xml"))],
                              timeout=60)
            assert r.status_code == 201, r.text
        for user, (_, unit, lat) in sent.items():
            r = requests.post(f"{base}/api/instances/", headers=_token(live, user), timeout=30,
                              json=[{"id": user, "file": name, "orgUnitId": unit,
                                     "latitude": lat, "longitude": -12.5}])
            assert r.status_code == 200, r.text
        for user, (iid, unit, lat) in sent.items():
            sub = _stored(live, iid)
            assert (sub["org_unit_uuid"], sub["latitude"]) == (_uuid(live, unit), lat), user
        r = requests.post(f"{base}/api/instances/", headers=_token(live, "bob"), timeout=30,
                          json=[{"id": sent["amina"][0][5:], "file": name, "orgUnitId": BO}])
        assert r.status_code == 403, r.text


def test_an_admin_may_send_again_a_collectors_iaso_upload(server: sh.LiveServer) -> None:
    """Amina's phone sent the XML and lost the metadata call; the admin signs in on that
    phone and the app sends both again: the metadata reaches amina's submission (it was
    refused with 403 while the admin's resend of the XML was accepted)."""
    iaso_id = str(uuid.uuid4())
    instance, name = f"uuid:{iaso_id}", f"reg_{secrets.token_hex(4)}.xml"
    xml = _xml(instance)
    assert _upload(server, "amina", name, xml).status_code == 201
    assert _upload(server, "ada", name, xml).status_code in (200, 201)
    answer = _meta(server, "ada", {"id": iaso_id, "file": name, "orgUnitId": FACILITY})
    assert answer.status_code == 200, answer.text
    assert _stored(server, instance)["org_unit_uuid"] == _uuid(server, FACILITY)
