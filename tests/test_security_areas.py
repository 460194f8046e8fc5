"""A user limited to an area stays in it, over real HTTP to ``georeg serve`` on 127.0.0.1.

From the security review of the LAN server: a collector and a reviewer of one area
could together move a unit into another area (checked when the phone asks, and again
when the request is reviewed, through the REST API and the web page); the diff and the
links answered for the whole registry; ``?ids=`` told a collector which units exist
outside their area; and the Iaso bulk-upload zip could unpack past the body limit or
crash (500) on a damaged member, leaving part of it stored.
"""

from __future__ import annotations

import io
import json
import re
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.auth import HTTPDigestAuth
from sqlalchemy import text

from local_server import users
from storage import change_requests as cr
from storage import units
from storage.errors import NotFound
from storage.registry import Registry
from tests import server_helpers as sh
from tests.openrosa_helpers import thread_server

APP = sh.APP_ID
WESTERN_AREA = "at6UHUQatSo"
BOMBALI = "fdc6uOvgoji"
MAX_BODY = 1024 * 1024
SIMPLE_FORM = """<?xml version="1.0"?>
<h:html xmlns="http://www.w3.org/2002/xforms" xmlns:h="http://www.w3.org/1999/xhtml"
 xmlns:jr="http://openrosa.org/javarosa"><h:head><h:title>Simple</h:title><model><instance>
<data id="simple" version="1"><note/><meta><instanceID/></meta></data></instance>
<bind nodeset="/data/note" type="string"/>
<bind nodeset="/data/meta/instanceID" type="string" readonly="true()" jr:preload="uid"/>
</model></h:head><h:body><input ref="/data/note"><label>Note</label></input></h:body></h:html>
"""


class Live:
    def __init__(self, base: str, registry: Registry, passwords: dict[str, str]) -> None:
        self.base, self.registry, self.passwords = base, registry, passwords


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The demo registry of ``server_helpers`` (v1 published, v2 the draft; kofi reviews
    the whole country, amina collects in Western Area) plus rita, a reviewer limited to
    Western Area, and bob, a collector in Bombali; served with a 1 MB body limit."""
    tmp = tmp_path_factory.mktemp("areas")
    form = tmp / "simple.xml"
    form.write_text(SIMPLE_FORM)
    reg, passwords = sh.build_demo_registry(tmp / "registry.gpkg", forms=[form])
    for name, role, root in (("rita", "reviewer", WESTERN_AREA), ("bob", "collector", BOMBALI)):
        passwords[name] = uuid.uuid4().hex
        users.add_user(reg, name, passwords[name], role=role, roots=[root])
    try:
        with thread_server(tmp / "registry.gpkg", max_body=MAX_BODY) as base:
            yield Live(base, reg, passwords)
    finally:
        reg.close()


def _token(live: Live, user: str) -> dict[str, str]:
    r = requests.post(f"{live.base}/api/token/", timeout=30,
                      json={"username": user, "password": live.passwords[user]})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access']}"}


def _digest(live: Live, user: str) -> HTTPDigestAuth:
    return HTTPDigestAuth(user, live.passwords[user])


def _one(live: Live, sql: str, **params: Any) -> Any:
    with live.registry.read() as conn:
        return conn.execute(text(sql), params).scalar()


def _facilities(live: Live, district: str, version: int = 1) -> list[str]:
    """Source refs of the facilities under a district, in tree order."""
    path = _one(live, "SELECT path FROM org_unit WHERE version_id = :v AND source_ref = :r",
                v=version, r=district)
    with live.registry.read() as conn:
        return [str(r[0]) for r in conn.execute(text(
            "SELECT source_ref FROM org_unit WHERE version_id = :v AND path LIKE :p AND "
            "depth = 4 ORDER BY path"), {"v": version, "p": path + "%"})]


def _chiefdoms(live: Live, district: str) -> list[str]:
    with live.registry.read() as conn:
        return [str(r[0]) for r in conn.execute(text(
            "SELECT c.source_ref FROM org_unit c JOIN org_unit d ON d.version_id = c.version_id "
            "AND d.unit_key = c.parent_key WHERE c.version_id = 1 AND d.source_ref = :r "
            "ORDER BY c.path"), {"r": district})]


def _parent_ref(live: Live, ref: str, version: int) -> str:
    return str(_one(live, "SELECT p.source_ref FROM org_unit u JOIN org_unit p ON "
                    "p.version_id = u.version_id AND p.unit_key = u.parent_key "
                    "WHERE u.version_id = :v AND u.source_ref = :r", v=version, r=ref))


def _stored(live: Live, request_uuid: str) -> bool:
    try:
        cr.get_change_request(live.registry, request_uuid)
    except NotFound:
        return False
    return True


# --- a move asked for from the phone ----------------------------------------------------


def test_a_collector_cannot_ask_to_move_a_unit_out_of_their_area(live: Live) -> None:
    unit = _facilities(live, WESTERN_AREA)[0]
    auth = _token(live, "amina")
    url = f"{live.base}/api/orgunits/changes/?app_id={APP}"
    bombali_key = _one(live, "SELECT unit_key FROM org_unit WHERE version_id = 1 AND "
                       "source_ref = :r", r=BOMBALI)
    for parent in (BOMBALI, bombali_key):  # a ref, or the Iaso id the phone sends
        ident = f"cr-{uuid.uuid4()}"
        r = requests.post(url, headers=auth, timeout=30,
                          json={"uuid": ident, "org_unit_id": unit, "new_parent_id": parent})
        assert r.status_code == 403, r.text
        assert "Bombali" in r.json()["message"] and "outside your area" in r.json()["message"]
        assert not _stored(live, ident)
    ident = f"cr-{uuid.uuid4()}"
    r = requests.post(url, headers=auth, timeout=30,
                      json={"uuid": ident, "org_unit_id": unit, "new_parent_id": None})
    assert r.status_code == 403 and "top level" in r.json()["message"]
    assert not _stored(live, ident)
    # the same move through the bulk zip
    ident = f"cr-{uuid.uuid4()}"
    r = _bulk(live, "amina", {}, changes=[{"uuid": ident, "org_unit_id": unit,
                                           "new_parent_id": BOMBALI}])
    assert r.status_code == 403 and "outside your area" in r.json()["message"]
    assert not _stored(live, ident)
    # a move inside the area is still a request like any other
    other = [c for c in _chiefdoms(live, WESTERN_AREA) if c != _parent_ref(live, unit, 1)][0]
    r = requests.post(url, headers=auth, timeout=30,
                      json={"uuid": f"cr-{uuid.uuid4()}", "org_unit_id": unit,
                            "new_parent_id": other})
    assert r.status_code == 201, r.text


# --- a move reviewed ---------------------------------------------------------------------


def _web_session(live: Live, user: str) -> requests.Session:
    s = requests.Session()
    r = s.post(f"{live.base}/login", timeout=30, allow_redirects=False,
               data={"username": user, "password": live.passwords[user]})
    assert r.status_code in (302, 303), r.text
    return s


def test_a_reviewer_cannot_approve_a_move_out_of_their_area(live: Live) -> None:
    """rita reviews Western Area only: a request moving one of its facilities into
    Bombali (sent by someone whose area has both) is refused to her on every route, and
    stays for a reviewer of both places."""
    facilities = _facilities(live, WESTERN_AREA)
    unit, fine = facilities[1], facilities[2]
    move = cr.create_change_request(live.registry, "SL", unit=unit, created_by="kofi",
                                    values={"parent": BOMBALI})
    rename = cr.create_change_request(live.registry, "SL", unit=fine, created_by="amina",
                                      values={"name": "Renamed in the area"})
    rita = _digest(live, "rita")
    for method, path, body in (("GET", "", None), ("POST", "/approve", {}),
                               ("POST", "/approve", {"fields": ["parent"]}),
                               ("POST", "/reject", {"comment": "no"})):
        r = requests.request(method, f"{live.base}/api/v1/changes/{move['id']}{path}",
                             json=body, auth=rita, timeout=30)
        assert r.status_code == 403, (path, r.text)
        assert "outside your area" in r.json()["message"] and "Bombali" in r.json()["message"]
    # the web page: the form's token (from a request rita may review) does not help
    web = _web_session(live, "rita")
    page = web.get(f"{live.base}/changes/{rename['id']}", timeout=30)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert page.status_code == 200 and token is not None
    assert web.get(f"{live.base}/changes/{move['id']}", timeout=30).status_code == 403
    r = web.post(f"{live.base}/changes/{move['id']}/approve", timeout=30,
                 allow_redirects=False, data={"csrf_token": token[1], "fields": "parent"})
    assert r.status_code == 403 and "outside your area" in r.text
    assert cr.get_change_request(live.registry, move["id"])["status"] == "new"
    assert _parent_ref(live, unit, 2) != BOMBALI
    # rita still reviews what is in her area; kofi (the whole country) approves the move
    r = requests.post(f"{live.base}/api/v1/changes/{rename['id']}/approve", json={},
                      auth=rita, timeout=30)
    assert r.status_code == 200, r.text
    r = requests.post(f"{live.base}/api/v1/changes/{move['id']}/approve", json={},
                      auth=_digest(live, "kofi"), timeout=30)
    assert r.status_code == 200, r.text
    assert _parent_ref(live, unit, 2) == BOMBALI


def test_a_reviewer_cannot_approve_into_a_parent_that_left_the_area_in_the_draft(
        live: Live) -> None:
    """The approval writes to the draft (v2): a parent inside the area in v1 but moved
    out of it in the draft since is outside the area there."""
    unit = _facilities(live, WESTERN_AREA)[3]
    chiefdom = [c for c in _chiefdoms(live, WESTERN_AREA) if c != _parent_ref(live, unit, 1)][-1]
    move = cr.create_change_request(live.registry, "SL", unit=unit, created_by="amina",
                                    values={"parent": chiefdom})
    rita = _digest(live, "rita")
    assert requests.get(f"{live.base}/api/v1/changes/{move['id']}", auth=rita,
                        timeout=30).status_code == 200
    units.move_unit(live.registry, "SL", chiefdom, BOMBALI, number=2)
    try:
        r = requests.post(f"{live.base}/api/v1/changes/{move['id']}/approve", json={},
                          auth=rita, timeout=30)
        assert r.status_code == 403 and "SL v2" in r.json()["message"], r.text
        assert cr.get_change_request(live.registry, move["id"])["status"] == "new"
    finally:
        units.move_unit(live.registry, "SL", chiefdom, WESTERN_AREA, number=2)


# --- what a restricted user reads ------------------------------------------------------


def _area_uuids(live: Live, version: int, district: str) -> set[str]:
    path = _one(live, "SELECT path FROM org_unit WHERE version_id = :v AND source_ref = :r",
                v=version, r=district)
    with live.registry.read() as conn:
        return {str(r[0]) for r in conn.execute(text(
            "SELECT uuid FROM org_unit WHERE version_id = :v AND path LIKE :p"),
            {"v": version, "p": path + "%"})}


def test_the_diff_is_limited_to_the_users_area(live: Live) -> None:
    inside, moved_out = _facilities(live, WESTERN_AREA)[5:7]
    outside = _facilities(live, BOMBALI)[0]
    units.rename_unit(live.registry, "SL", inside, "Renamed inside", number=2)
    units.rename_unit(live.registry, "SL", outside, "Renamed in Bombali", number=2)
    bombali_chiefdom = _chiefdoms(live, BOMBALI)[0]
    units.move_unit(live.registry, "SL", moved_out, bombali_chiefdom, number=2)
    url = f"{live.base}/api/v1/diff"
    params = {"left": "SL:1", "right": "SL:2"}
    everything = requests.get(url, params=params, auth=_digest(live, "kofi"), timeout=60).json()
    mine = requests.get(url, params=params, auth=_digest(live, "amina"), timeout=60).json()
    names = {u["name"] for u in everything["units"]}
    assert {"Renamed inside", "Renamed in Bombali"} <= names
    listed = {u["name"]: u["status"] for u in mine["units"]}
    assert listed.get("Renamed inside") == "modified"
    assert "Renamed in Bombali" not in listed and "Renamed in Bombali" not in json.dumps(mine)
    moved = [u for u in mine["units"] if u["source_ref"] == moved_out]
    assert [u["status"] for u in moved] == ["moved"]  # left the area: still shown, with where
    area = _area_uuids(live, 1, WESTERN_AREA) | _area_uuids(live, 2, WESTERN_AREA)
    assert all(u["uuid"] in area for u in mine["units"])
    # totals and counts describe the area, not the registry
    assert sum(mine["totals"].values()) == len(area) < sum(everything["totals"].values())
    assert sum(level["total"] for level in mine["by_level"]) == len(area)
    assert mine["counts"]["left_units"] == len(_area_uuids(live, 1, WESTERN_AREA))
    assert mine["totals"]["unchanged"] == len(area) - len(mine["units"])
    whole = requests.get(url, params=params | {"include_unchanged": "true"},
                         auth=_digest(live, "amina"), timeout=60).json()
    assert {u["uuid"] for u in whole["units"]} == area
    assert whole["include_unchanged"] is True and mine["include_unchanged"] is False
    for key in ("totals", "by_level", "counts"):  # counted in SQL, or from the listed pairs
        assert whole[key] == mine[key], key
    # a unit paired by its source ref (made again in v2, with another uuid): counted too
    again = _facilities(live, WESTERN_AREA)[7]
    parent = _parent_ref(live, again, 2)
    units.delete_unit(live.registry, "SL", again, number=2)
    units.add_unit(live.registry, "SL", name="Made again", number=2, parent=parent,
                   source_ref=again)
    mine = requests.get(url, params=params, auth=_digest(live, "amina"), timeout=60).json()
    whole = requests.get(url, params=params | {"include_unchanged": "true"},
                         auth=_digest(live, "amina"), timeout=60).json()
    assert mine["counts"]["paired_by_source_ref"] == 1
    for key in ("totals", "by_level", "counts"):
        assert whole[key] == mine[key], key
    assert all(u["uuid"] in _area_uuids(live, 1, BOMBALI) | _area_uuids(live, 2, BOMBALI)
               for u in requests.get(url, params=params | {"include_unchanged": "true"},
                                     auth=_digest(live, "bob"), timeout=60).json()["units"])


def test_links_are_limited_to_the_users_area(live: Live) -> None:
    west = _facilities(live, WESTERN_AREA)[8:10]
    bombali = _facilities(live, BOMBALI)[1:3]
    with live.registry.write(origin="test") as conn:
        run = conn.execute(text(
            "INSERT INTO algorithm_run (kind, left_version_id, right_version_id) "
            "VALUES ('name', 1, 2) RETURNING fid")).scalar_one()

        def uuid_of(ref: str, version: int) -> str:
            return str(conn.execute(text("SELECT uuid FROM org_unit WHERE version_id = :v AND "
                                         "source_ref = :r"), {"v": version, "r": ref}).scalar())

        pairs = {"west": (west[0], west[0]), "bombali": (bombali[0], bombali[0]),
                 "across": (west[1], bombali[1])}
        for kind, (left, right) in pairs.items():
            conn.execute(text(
                "INSERT INTO link (run_id, left_version_id, left_unit_uuid, right_version_id, "
                "right_unit_uuid, score, status, kind) VALUES (:r, 1, :a, 2, :b, 0.9, 'review', "
                ":k)"), {"r": run, "a": uuid_of(left, 1), "b": uuid_of(right, 2), "k": kind})
    url = f"{live.base}/api/v1/links"

    def kinds(user: str) -> tuple[int, list[str]]:
        body = requests.get(url, params={"run": run, "limit": 5000}, auth=_digest(live, user),
                            timeout=30).json()
        return body["count"], sorted(link["kind"] for link in body["links"])

    assert kinds("kofi") == (3, ["across", "bombali", "west"])
    assert kinds("amina") == (2, ["across", "west"])
    assert kinds("rita") == (2, ["across", "west"])
    assert kinds("bob") == (2, ["across", "bombali"])


def test_ids_outside_the_area_look_like_ids_that_do_not_exist(live: Live) -> None:
    bombali_key = _one(live, "SELECT unit_key FROM org_unit WHERE version_id = 1 AND "
                       "source_ref = :r", r=_facilities(live, BOMBALI)[0])
    inside_key = _one(live, "SELECT unit_key FROM org_unit WHERE version_id = 1 AND "
                      "source_ref = :r", r=_facilities(live, WESTERN_AREA)[0])
    url = f"{live.base}/api/mobile/orgunits/?app_id={APP}&ids="
    auth = _token(live, "amina")
    outside = requests.get(url + str(bombali_key), headers=auth, timeout=30)
    missing = requests.get(url + "987654321", headers=auth, timeout=30)
    assert outside.status_code == missing.status_code == 404
    assert outside.json() == missing.json()
    both = requests.get(url + f"{inside_key},{bombali_key}", headers=auth, timeout=30)
    assert both.status_code == 404
    mine = requests.get(url + str(inside_key), headers=auth, timeout=30)
    assert mine.status_code == 200 and [u["id"] for u in mine.json()["orgUnits"]] == [inside_key]
    kofi = requests.get(url + str(bombali_key), headers=_token(live, "kofi"), timeout=30)
    assert kofi.status_code == 200 and len(kofi.json()["orgUnits"]) == 1


# --- the bulk-upload zip -------------------------------------------------------------------


def _xml(instance: str, note: str = "bulk") -> bytes:
    return (f'<data id="simple" version="1"><note>{note}</note><meta><instanceID>uuid:'
            f"{instance}</instanceID></meta></data>").encode()


def _zip(members: dict[str, bytes], instances: list[dict[str, Any]],
         changes: list[dict[str, Any]] | None = None,
         compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        z.writestr("instances.json", json.dumps(instances))
        if changes is not None:
            z.writestr("changeRequests.json", json.dumps(changes))
        for name, content in members.items():
            z.writestr(name, content)
    return buf.getvalue()


def _bulk(live: Live, user: str, members: dict[str, bytes],
          instances: list[dict[str, Any]] | None = None,
          changes: list[dict[str, Any]] | None = None, data: bytes | None = None
          ) -> requests.Response:
    body = data if data is not None else _zip(members, instances or [], changes)
    return requests.post(f"{live.base}/api/mobile/bulkupload/?app_id={APP}",
                         headers=_token(live, user), timeout=120,
                         files={"zip_file": ("upload.zip", body, "application/zip")})


def _instance(ident: str) -> dict[str, Any]:
    return {"id": ident, "file": f"/sdcard/odk/instances/{ident}/{ident}.xml",
            "formId": "simple"}


def _stored_instances(live: Live, *idents: str) -> list[str]:
    with live.registry.read() as conn:
        return [str(r[0]) for r in conn.execute(text(
            "SELECT instance_id FROM submission WHERE instance_id IN ("
            + ", ".join(f"'uuid:{i}'" for i in idents) + ")"))]


def test_a_zip_that_unpacks_past_the_body_limit_is_refused(live: Live) -> None:
    a, b = f"bomb-{uuid.uuid4().hex}", f"bomb-{uuid.uuid4().hex}"
    zeros = b"\0" * (3 * MAX_BODY)
    data = _zip({f"{a}/{a}.xml": _xml(a), f"{b}/{b}.xml": _xml(b), f"{b}/big.jpg": zeros},
                [_instance(a), _instance(b)])
    assert len(data) < MAX_BODY // 20  # a small request ...
    r = _bulk(live, "amina", {}, data=data)  # ... that would store 3 MB
    assert r.status_code == 413, r.text
    assert "unpacks to" in r.json()["message"] and "nothing was stored" in r.json()["message"]
    # many files each under the limit, over it together
    parts = {f"{b}/p{i}.jpg": b"\0" * (MAX_BODY // 3) for i in range(4)}
    r = _bulk(live, "amina", {f"{b}/{b}.xml": _xml(b)} | parts, [_instance(b)])
    assert r.status_code == 413, r.text
    assert _stored_instances(live, a, b) == []
    with live.registry.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM attachment WHERE filename = 'big.jpg'")
                            ).scalar_one() == 0
    # a zip within the limit is stored as before
    photo = uuid.uuid4().bytes * (MAX_BODY // 64)  # incompressible enough, 256 kB
    r = _bulk(live, "amina", {f"{a}/{a}.xml": _xml(a), f"{a}/photo.jpg": photo}, [_instance(a)])
    assert r.status_code == 204, r.text
    assert _stored_instances(live, a) == [f"uuid:{a}"]


def test_a_corrupt_zip_is_a_400_and_stores_nothing(live: Live) -> None:
    a, b = f"crc-{uuid.uuid4().hex}", f"crc-{uuid.uuid4().hex}"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("instances.json", json.dumps([_instance(a), _instance(b)]))
        z.writestr(f"{a}/{a}.xml", _xml(a, "first, intact"))
        z.writestr(f"{b}/{b}.xml", _xml(b, "second, damaged"))
    data = bytearray(buf.getvalue())
    at = data.find(b"second, damaged")
    data[at] = ord("S")  # the CRC no longer matches
    r = _bulk(live, "amina", {}, data=bytes(data))
    assert r.status_code == 400, r.text
    assert "corrupt" in r.json()["message"] and "nothing was stored" in r.json()["message"]
    assert _stored_instances(live, a, b) == []


def test_the_body_limit_reaches_the_zip_check(tmp_path: Path) -> None:
    """The limit is the server's --max-body-mb, not a constant: what is refused at 1 MB
    passes on a server that accepts 8 MB."""
    form = tmp_path / "simple.xml"
    form.write_text(SIMPLE_FORM)
    reg, passwords = sh.build_demo_registry(tmp_path / "registry.gpkg", forms=[form])
    try:
        with thread_server(tmp_path / "registry.gpkg", max_body=8 * MAX_BODY) as base:
            big = Live(base, reg, passwords)
            a = f"big-{uuid.uuid4().hex}"
            r = _bulk(big, "kofi", {f"{a}/{a}.xml": _xml(a), f"{a}/big.jpg": b"\0" * (3 * MAX_BODY)},
                      [_instance(a)])
            assert r.status_code == 204, r.text
            assert _stored_instances(big, a) == [f"uuid:{a}"]
    finally:
        reg.close()
