"""DHIS2 pull and push against the fake DHIS2 (2.36 and 2.41), on every registry backend.

Acceptance (issue 6, DHIS2 half): the pull gives the Sierra Leone tree; a push of
an edited version sends the expected metadata and leaves DHIS2 equal to the
registry; a 409 reaches the user with unit names; a dry run changes nothing; a
connection dropped mid-push then a new push creates nothing twice; 1,000 new
units take at most 10 HTTP requests.  Plus the client on its own (auth,
envelopes, retries, paging), the fake's fields and filters, and the CLI.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from shapely.geometry import Point, Polygon
from sqlalchemy import text

from georeg.cli_dhis2 import dhis2_group, render_push
from storage import geometry
from storage import units as U
from storage.bulk import UnitRecord
from storage.errors import ConflictError, GeoregError, InvalidInput
from storage.registry import Registry, json_value
from storage.tree import counts
from storage.versions import create_version, publish_version
from sync.dhis2_client import Dhis2Client, is_uid, parse_import_report
from sync.dhis2_sync import (
    geometry_of,
    parse_since,
    pull,
    push,
    push_history,
    same_geometry,
)
from sync.exchange import ImportPayload, read_version
from sync.importing import ImportJob
from tests.dhis2_helpers import PASSWORD, client_for
from tests.fake_dhis2 import VERSIONS, FakeDhis2

BO, BADJIA, KAKUA = "O6uvpzGd5pu", "YuQRtpLP10I", "U6Kr7Gtpidn"
ADONKIA, AFRO_ARAB, AGAPE, AHAMADYYA = "Rp268JB6Ne4", "cDw53Ej8rju", "GvFqTavdpGE", "plnHVbJR6p4"
CHP_GROUP, URBAN_GROUP = "uYxK4wmcPqA", "f25dqv3Y7Z0"


@pytest.fixture(params=VERSIONS)
def fake(request: pytest.FixtureRequest) -> Iterator[FakeDhis2]:
    with FakeDhis2(request.param, tokens={"d2pat_testtoken0123456789": "admin"}) as server:
        yield server


@pytest.fixture
def paired_fake(backend: str) -> Iterator[FakeDhis2]:
    """Registry tests pair backends and versions (2.36 on SpatiaLite, 2.41 on the others):
    every backend and every version is covered without running the whole product."""
    with FakeDhis2("2.36" if backend == "spatialite" else "2.41") as server:
        yield server


def metadata_posts(fake: FakeDhis2) -> list[dict[str, Any]]:
    return [r.body for r in fake.posts() if r.param("importMode") == "COMMIT"]


def assert_fake_matches_registry(fake: FakeDhis2, reg: Registry, source: str,
                                 number: int | None = None) -> None:
    """Every unit of the version is in DHIS2 as the registry has it; DHIS2's other units
    below the same root are closed; group members agree."""
    data = read_version(reg, source, number)
    units = list(data.units)
    uid = {u.ref: u.source_ref for u in units}
    s = fake.state
    for u in units:
        assert u.source_ref and is_uid(u.source_ref), u.name
        f = s.units[u.source_ref]
        assert f["name"].strip() == u.name
        assert f.get("parent") == (uid[u.parent_ref] if u.parent_ref else None), u.name
        assert (f.get("closedDate") or "")[:10] == (u.closed_date or ""), u.name
        if u.opening_date:
            assert f["openingDate"][:10] == u.opening_date
        assert (f.get("code") or None) == (u.code or None)
        assert same_geometry(geometry_of(u), geometry.from_geojson(f.get("geometry"))), u.name
    ours = {str(v) for v in uid.values()}
    for other, f in s.units.items():
        if other not in ours:
            assert f.get("closedDate"), f"{f['name']} is not in the registry but still open"
    members: dict[str, set[str]] = {}
    for u in units:
        for ref in u.groups:
            members.setdefault(ref, set()).add(str(uid[u.ref]))
    for group in data.groups:
        gid = group.ref if is_uid(group.ref) else None
        with reg.read() as conn:
            gid = gid or conn.execute(text("SELECT source_ref FROM org_unit_group WHERE "
                                           "version_id = :v AND name = :n"),
                                      {"v": data.version.id, "n": group.name}).scalar()
        assert gid in s.groups, group.name
        assert set(s.groups[gid]["organisationUnits"]) & ours == members.get(group.ref, set()), \
            group.name


# --- the client on its own ---------------------------------------------------------------------


def test_basic_auth_tokens_and_no_secret_in_messages(fake: FakeDhis2) -> None:
    client = client_for(fake)
    assert client.version == (2, int(fake.version.split(".")[1]))
    assert client.me()["username"] == "admin"
    assert PASSWORD not in repr(client)
    bad = client_for(fake, password="wrong-secret")
    with pytest.raises(InvalidInput) as err:
        bad.system_info()
    assert "HTTP 401" in err.value.message and "wrong-secret" not in err.value.message
    token = client_for(fake, token="d2pat_testtoken0123456789")
    assert "d2pat" not in repr(token)
    if fake.version == "2.36":  # personal access tokens arrived in 2.37
        with pytest.raises(InvalidInput, match="2.37"):
            token.system_info()
    else:
        assert token.me()["username"] == "admin"
        assert fake.requests[-1].auth == "token"
    with pytest.raises(InvalidInput, match="not in the URL"):
        Dhis2Client(fake.url.replace("http://", "http://admin:district@"), username="a",
                    password="b")


def test_paging_follows_page_numbers_not_the_servers_links(fake: FakeDhis2) -> None:
    client = client_for(fake, page_size=500)
    units = client.get_all("organisationUnits", "organisationUnits", fields="id,name")
    assert len(units) == 1332 and len({u["id"] for u in units}) == 1332
    pages = [r.param("page") for r in fake.requests if r.path == "/api/organisationUnits"]
    assert pages == ["1", "2", "3"]
    # the pager's links name the host the recorded server thought it had
    doc = client.get("organisationUnits", {"pageSize": 500})
    assert doc["pager"]["nextPage"].startswith("http://localhost:8080/api/organisationUnits?page=2")


def test_fields_syntax_and_filters(fake41: FakeDhis2) -> None:
    client = client_for(fake41)
    doc = client.get("organisationUnits", {"fields": "id,name,parent[id,name],!path",
                                           "filter": f"id:in:[{ADONKIA},{BO}]",
                                           "paging": "false"})
    by_id = {u["id"]: u for u in doc["organisationUnits"]}
    assert by_id[ADONKIA]["parent"] == {"id": "qtr8GGlm4gg", "name": "Rural Western Area"}
    assert "parent" in by_id[BO] and "path" not in by_id[BO]
    owner = client.get(f"organisationUnits/{AGAPE}", {"fields": ":owner"})
    assert owner["shortName"] == "Agape CHP" and owner["parent"] == {"id": KAKUA}
    assert owner["openingDate"].startswith("1970-01-01")
    level3 = client.get("organisationUnits", {"filter": ["level:eq:3", "name:like:Bad"],
                                              "fields": "id", "paging": "false"})
    assert {u["id"] for u in level3["organisationUnits"]} == {BADJIA}
    groups = client.get("organisationUnitGroups", {"fields": "id,name,organisationUnits~size"})
    assert groups["pager"]["total"] == 18
    with pytest.raises(InvalidInput, match="HTTP 400"):
        client.get("organisationUnits", {"filter": "nosuchproperty:eq:1"})


def test_import_report_envelopes_by_version(fake: FakeDhis2) -> None:
    client = client_for(fake)
    bad = {"organisationUnits": [
        {"id": "BadUnit0001", "name": "No opening date", "shortName": "No opening date",
         "parent": {"id": BO}},
        {"id": "BadUnit0002", "name": "Long short name", "shortName": "x" * 60,
         "openingDate": "2020-01-01", "parent": {"id": "NoSuchUnit1"}},
    ]}
    result = client.import_metadata(bad)
    if fake.version == "2.36":
        assert (result.http_status, result.envelope) == (200, "plain")
    else:
        assert (result.http_status, result.envelope) == (409, "wrapped")
    assert result.status == "ERROR" and not result.ok
    found = {(e.uid, e.property, e.error_code) for e in result.errors}
    assert found == {("BadUnit0001", "openingDate", "E4000"),
                     ("BadUnit0002", "shortName", "E4001"),
                     ("BadUnit0002", "parent", "E5002")}
    assert all(e.klass == "OrganisationUnit" for e in result.errors)
    assert result.stats["created"] == 0 and "BadUnit0001" not in fake.state.units
    # an API version below 38 in the URL keeps the bare report on 2.38+ too
    api = "36" if fake.version == "2.36" else "37"
    resp = client.request("POST", f"{api}/metadata", json=bad, accept=(409,))
    assert resp.status_code == 200 and "typeReports" in resp.json()
    good = {"organisationUnits": [{"id": "GoodUnit001", "name": "Good", "shortName": "Good",
                                   "openingDate": "2020-01-01", "parent": {"id": BO}}]}
    ok = client.import_metadata(good, import_mode="VALIDATE")
    assert ok.ok and "GoodUnit001" not in fake.state.units
    ok = client.import_metadata(good)
    assert ok.ok and ok.stats["created"] == 1 and fake.state.units["GoodUnit001"]["parent"] == BO


def test_parse_import_report_shapes() -> None:
    wrapped = {"httpStatus": "Conflict", "httpStatusCode": 409, "status": "WARNING",
               "message": "One or more errors occurred, please see full details in import "
                          "report.",
               "response": {"responseType": "ImportReport", "status": "ERROR",
                            "stats": {"created": 0, "updated": 0, "deleted": 0, "ignored": 1,
                                      "total": 1},
                            "typeReports": [{"klass": "org.hisp.dhis.organisationunit."
                                             "OrganisationUnit", "stats": {"ignored": 1},
                                             "objectReports": [{"uid": "abcdefghijk", "index": 0,
                                                                "errorReports": [{
                                                                    "message": "Missing required "
                                                                    "property `shortName`.",
                                                                    "errorCode": "E4000",
                                                                    "errorProperty": "shortName"
                                                                }]}]}]}}
    r = parse_import_report(wrapped, 409)
    assert (r.envelope, r.status, r.stats["ignored"]) == ("wrapped", "ERROR", 1)
    assert r.errors[0].to_dict() | {} == {"klass": "OrganisationUnit", "uid": "abcdefghijk",
                                          "index": 0, "property": "shortName",
                                          "message": "Missing required property `shortName`.",
                                          "error_code": "E4000", "value": None}
    plain: dict[str, Any] = dict(wrapped["response"])  # type: ignore[call-overload]
    plain.pop("responseType")
    assert parse_import_report(plain, 200).errors == r.errors
    bare_conflict = {"httpStatus": "Conflict", "httpStatusCode": 409, "status": "ERROR",
                     "message": "Conflict"}
    assert parse_import_report(bare_conflict, 409).errors[0].message == "Conflict"


@pytest.fixture
def redirector(fake41: FakeDhis2) -> Iterator[str]:
    """An nginx-style front answering every request with 301 to the same path on the
    fake (``return 301 https://$host$request_uri``: the usual http → https rule)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Moved(BaseHTTPRequestHandler):
        def _moved(self) -> None:
            self.send_response(301)
            self.send_header("Location", fake41.url + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = do_DELETE = _moved

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Moved)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_redirected_address_is_refused_with_the_one_to_use(demo: Registry, fake41: FakeDhis2,
                                                             redirector: str) -> None:
    """Followed, the redirect would turn each POST /api/metadata into a GET (a metadata
    export, read as "OK, nothing changed"): the push must stop and say which URL to give."""
    edit_demo(demo)
    client = Dhis2Client(redirector, username="admin", password=PASSWORD, retries=0)
    with pytest.raises(InvalidInput, match=rf"give {re.escape(fake41.url)} as the DHIS2 URL"):
        push(demo, client, "SL", 1)
    assert not fake41.requests  # nothing reached DHIS2 by the back door
    with pytest.raises(GeoregError, match="not an import report"):
        parse_import_report({"system": {"id": "x"}, "organisationUnits": []}, 200)


def test_group_put_as_iaso_does(fake: FakeDhis2) -> None:
    client = client_for(fake)
    group = client.get(f"organisationUnitGroups/{CHP_GROUP}", {"fields": ":owner"})
    group["organisationUnits"].append({"id": AGAPE})
    assert client.put_object(f"organisationUnitGroups/{CHP_GROUP}", group).ok
    assert AGAPE in fake.state.groups[CHP_GROUP]["organisationUnits"]
    group["organisationUnits"].append({"id": "NoSuchUnit1"})
    result = client.put_object(f"organisationUnitGroups/{CHP_GROUP}", group)
    assert not result.ok and result.errors[0].error_code == "E5002"
    assert result.http_status == (200 if fake.version == "2.36" else 409)


def test_retries_with_backoff_are_bounded(fake41: FakeDhis2) -> None:
    client = client_for(fake41, retries=3)
    fake41.inject("error500", count=2, method="GET")
    fake41.inject("drop", count=1, method="GET")
    assert client.system_info()["version"].startswith("2.41")
    assert client.request_count == 4
    fake41.inject("drop_mid", count=1, method="GET")
    assert len(client.get_all("organisationUnitGroups", "organisationUnitGroups")) == 18
    slow = client_for(fake41, retries=1, timeout=(1.0, 0.3))
    fake41.inject("timeout", count=1, method="GET", seconds=0.8)
    assert slow.ping()
    fake41.inject("error500", count=10, method="GET")
    with pytest.raises(GeoregError) as err:
        client_for(fake41, retries=2).me()
    assert "tried 3 times" in err.value.message and "HTTP 500" in err.value.message
    fake41.faults.clear()
    fake41.inject("conflict409", count=1, method="GET")  # a 409 is an answer: no retry
    with pytest.raises(ConflictError, match="HTTP 409"):
        client.me()
    dead = Dhis2Client("http://127.0.0.1:9", username="admin", password=PASSWORD, retries=1,
                       backoff=0.01)
    with pytest.raises(GeoregError, match="connection refused"):
        dead.system_info()
    # a POST without uids is not retried (it could create twice)
    fake41.inject("error500", count=1, method="POST")
    n = len(fake41.requests)
    with pytest.raises(GeoregError):
        client.import_metadata({"organisationUnits": []}, idempotent=False)
    assert len(fake41.requests) == n + 1


# --- pull ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_pull_gives_the_sierra_leone_tree(registry: Registry, version: str) -> None:
    with FakeDhis2(version) as server:
        result = pull(registry, client_for(server), "SL")
    assert (result["units"], result["levels"], result["groups"], result["group_sets"]) == \
        (1332, 4, 18, 4)
    assert result["version"]["number"] == 1 and result["version"]["status"] == "draft"
    # info, levels, 2 unit pages, the ids (checking the pages missed none), groups, group sets
    assert result["requests"] == 7
    c = counts(registry, "SL")
    assert c["total"] == 1332
    assert [(lvl["level"], lvl["units"]) for lvl in c["levels"]] == [(1, 1), (2, 13), (3, 152),
                                                                      (4, 1166)]
    assert sum(lvl["territories"] for lvl in c["levels"]) == 165
    assert sum(lvl["points"] for lvl in c["levels"]) == 601
    assert [t["type"] for t in c["types"]] == ["National", "District", "Chiefdom", "Facility"]
    with registry.read() as conn:
        groups = conn.execute(text("SELECT count(*) FROM org_unit_group")).scalar_one()
        sets = conn.execute(text("SELECT count(*) FROM group_set")).scalar_one()
        members = conn.execute(text("SELECT count(*) FROM group_membership")).scalar_one()
        unit = conn.execute(text("SELECT name, opening_date, extra_fields FROM org_unit "
                                 "WHERE source_ref = :r"), {"r": AGAPE}).one()
        log = conn.execute(text("SELECT after FROM change_log WHERE entity = 'dhis2_pull'")
                           ).scalar_one()
    assert (groups, sets, members) == (18, 4, 3692)  # every membership DHIS2 has
    assert str(unit[1])[:10] == "1970-01-01" and json_value(unit[2]) == {"shortName": "Agape CHP"}
    assert json_value(log)["dhis2_version"].startswith(version)


def test_since_with_an_offset_is_read_in_the_servers_time_zone() -> None:
    """DHIS2 reads lastUpdated:gt:<time> in its own zone (serverTimeZoneId)."""
    assert parse_since("2024-05-01T10:00:00+01:00", "America/Bogota") == \
        "2024-05-01T04:00:00.000"  # 09:00 UTC is 04:00 in Bogotá
    assert parse_since("2024-05-01T10:00:00Z", "Africa/Freetown") == "2024-05-01T10:00:00.000"
    assert parse_since("2024-05-01T10:00:00", "America/Bogota") == "2024-05-01T10:00:00.000"
    assert parse_since("2024-05-01T10:00:00+02:00", "No/Such_Zone") == "2024-05-01T08:00:00.000"
    assert parse_since("2024-05-01") == "2024-05-01"


@pytest.mark.parametrize("edit", ["deleted", "created"])
def test_a_pull_misses_no_unit_edited_in_dhis2_between_two_pages(registry: Registry,
                                                                 edit: str) -> None:
    """DHIS2 pages by offset: a unit deleted (or created) before the reading point while
    the pages are read shifts the next pages — one unit would never be read (or one
    twice).  The pull still gets every unit DHIS2 has."""
    with FakeDhis2("2.41") as server:
        first_page = list(server.state.units)[:200]
        victim = next(uid for uid in first_page
                      if not any(u.get("parent") == uid for u in server.state.units.values()))

        def meanwhile(fake: FakeDhis2) -> None:
            units = fake.state.units
            if edit == "deleted":
                units.pop(victim)
            else:  # a new facility whose name sorts first
                new = dict(units[victim]) | {"id": "Aaaaaaaaaa1", "name": "Aaa new CHP",
                                             "code": None}
                fake.state.units = {"Aaaaaaaaaa1": new} | units

        server.page_hooks.append(("organisationUnits", 1, meanwhile))
        result = pull(registry, client_for(server, page_size=200), "SL")
        now = set(server.state.units)
    with registry.read() as conn:
        pulled = set(conn.execute(text("SELECT source_ref FROM org_unit")).scalars())
    assert now <= pulled  # every unit DHIS2 has; the deleted one was read before it went
    assert result["units"] == (1332 if edit == "deleted" else 1333)


def test_incremental_pull_upserts_what_changed_upstream(registry: Registry) -> None:
    with FakeDhis2("2.41") as server:
        client = client_for(server)
        pull(registry, client, "SL")
        publish_version(registry, "SL", 1)
        before = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")
        agape = client.get(f"organisationUnits/{AGAPE}", {"fields": ":owner"})
        agape["name"] = "Agape CHP (upgraded)"
        chp = client.get(f"organisationUnitGroups/{CHP_GROUP}", {"fields": ":owner"})
        chp["organisationUnits"] = [m for m in chp["organisationUnits"] if m["id"] != ADONKIA]
        chp["organisationUnits"].append({"id": "IncrNew0001"})
        new = {"id": "IncrNew0001", "name": "Brand new MCHP", "shortName": "Brand new MCHP",
               "openingDate": "2024-02-01", "parent": {"id": BADJIA},
               "geometry": {"type": "Point", "coordinates": [-11.5, 7.9]}}
        assert client.import_metadata({"organisationUnits": [agape, new],
                                       "organisationUnitGroups": [chp]}).ok
        server.clear_log()
        result = pull(registry, client, "SL", since=before)
        unit_reads = [r for r in server.requests if r.path == "/api/organisationUnits"]
        assert unit_reads[0].param("filter") == f"lastUpdated:gt:{before}.000"
    assert result["incremental"] and result["units"] == 2
    assert result["version"]["number"] == 2  # v1 is published: a new draft was made
    assert (result["import"]["created"], result["import"]["updated"]) == (1, 1)
    assert result["group_changes"]["members_added"] == 1
    assert U.get_unit(registry, "SL", AGAPE, 2)["name"] == "Agape CHP (upgraded)"
    added = U.get_unit(registry, "SL", "IncrNew0001", 2)
    assert added["parent_ref"] == BADJIA and added["opening_date"] == "2024-02-01"
    assert "CHP" in added["groups"] and U.get_unit(registry, "SL", AGAPE, 1)["name"] == "Agape CHP"
    again = pull(registry, client, "SL", since="last")  # since the server date of the last pull
    assert again["version"]["number"] == 2 and again["import"]["updated"] == 0
    with pytest.raises(InvalidInput, match="no earlier DHIS2 pull"):
        pull(registry, client, "Other", since="last")



def test_an_incremental_pull_follows_a_unit_made_a_root_in_dhis2(registry: Registry) -> None:
    """DHIS2 gives each unit whole: a unit with no parent there is a root (a partial
    spreadsheet's empty parent cell keeps the registry's parent; DHIS2's does not)."""
    with FakeDhis2("2.41") as server:
        client = client_for(server)
        pull(registry, client, "SL")
        before = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")
        bo = client.get(f"organisationUnits/{BO}", {"fields": ":owner"})
        bo.pop("parent", None)
        assert client.import_metadata({"organisationUnits": [bo]}).ok
        result = pull(registry, client, "SL", since=before)
    assert result["import"]["updated"] >= 1
    assert U.get_unit(registry, "SL", BO, result["version"]["number"])["parent_ref"] is None


# --- push --------------------------------------------------------------------------------------------


def edit_demo(reg: Registry) -> dict[str, str]:
    """New chiefdom with a new facility, a new facility with a long name, a rename, a
    move, a closure, a deletion and group changes — in the demo's draft v1."""
    square = Polygon([(-11.9, 7.6), (-11.8, 7.6), (-11.8, 7.7), (-11.9, 7.7)])
    chiefdom = U.add_unit(reg, "SL", number=1, name="Georeg Chiefdom", parent=BO,
                          type="Chiefdom", territory=square, opening_date="2024-01-01")
    chp = U.add_unit(reg, "SL", number=1, name="Georeg Chiefdom CHP", parent=chiefdom["uuid"],
                     type="Facility", location=Point(-11.85, 7.65))
    long_name = "Maternal and Child Health Post of the Upper Badjia River Valley"
    mchp = U.add_unit(reg, "SL", number=1, name=long_name, parent=BADJIA, type="Facility",
                      code="GEOREG_MCHP_1")
    U.rename_unit(reg, "SL", ADONKIA, "Adonkia Community Health Post", number=1)
    U.move_unit(reg, "SL", AFRO_ARAB, BADJIA, number=1)
    U.close_unit(reg, "SL", AGAPE, "2024-05-01", number=1)
    U.delete_unit(reg, "SL", AHAMADYYA, number=1)
    U.set_group_membership(reg, "SL", chp["uuid"], CHP_GROUP, True, number=1)
    U.set_group_membership(reg, "SL", ADONKIA, URBAN_GROUP, False, number=1)
    U.add_group(reg, "SL", "Georeg pilot", number=1)
    U.set_group_membership(reg, "SL", mchp["uuid"], "Georeg pilot", True, number=1)
    return {"chiefdom": chiefdom["uuid"], "chp": chp["uuid"], "mchp": mchp["uuid"],
            "long_name": long_name}


@pytest.mark.parametrize("backend", ["gpkg"], indirect=True)
def test_codes_that_move_between_units_are_released_first(demo: Registry,
                                                          fake41: FakeDhis2) -> None:
    """DHIS2 checks a code against those stored before the import: two facilities that
    swap codes, and a new facility taking the code of one that is dropped, would be
    refused (E5003) in one import — and every push after it.  The holders let go of
    their codes in a first batch."""
    parents = {u.get("parent") for u in fake41.state.units.values()}
    a, b, gone = [uid for uid in fake41.state.units if uid not in parents][:3]
    code = {uid: f"FAC_{n}" for n, uid in enumerate((a, b, gone))}
    client = client_for(fake41)
    for uid in (a, b, gone):  # the facilities have codes, in DHIS2 too
        U.edit_unit(demo, "SL", uid, code=code[uid], number=1)
    assert push(demo, client, "SL", 1)["ok"] and fake41.state.units[a]["code"] == code[a]
    U.edit_unit(demo, "SL", a, code=code[b], number=1)
    U.edit_unit(demo, "SL", b, code=code[a], number=1)
    parent = fake41.state.units[gone]["parent"]
    U.delete_unit(demo, "SL", gone, number=1)
    new = U.add_unit(demo, "SL", number=1, name="Replacement CHP", parent=parent,
                     type="Facility", code=code[gone])
    dry = push(demo, client, "SL", 1, dry_run=True)
    assert dry["ok"] and dry["planned"]["codes_released"] == 3, dry["errors"]
    report = push(demo, client, "SL", 1)
    assert report["ok"] and report["planned"]["codes_released"] == 3
    units = fake41.state.units
    assert (units[a]["code"], units[b]["code"]) == (code[b], code[a])
    assert units[ref_of(demo, new["uuid"])]["code"] == code[gone]
    assert units[gone].get("closedDate") and not units[gone].get("code")
    assert_fake_matches_registry(fake41, demo, "SL", 1)


def ref_of(reg: Registry, uuid: str) -> str:
    with reg.read() as conn:
        return str(conn.execute(text("SELECT source_ref FROM org_unit WHERE uuid = :u"),
                                {"u": uuid}).scalar_one())


def test_push_of_an_edited_version_sends_the_expected_metadata(demo: Registry,
                                                               paired_fake: FakeDhis2) -> None:
    fake = paired_fake
    new = edit_demo(demo)
    client = client_for(fake)
    report = push(demo, client, "SL", 1)
    assert report["ok"] and report["planned"] == {
        "create": 3, "update": 3, "close": 1, "delete": 0, "groups_create": 1,
        "groups_update": 2, "unchanged": 1328, "codes_released": 0}
    assert report["uids_stored"] == 4  # 3 units and 1 group, stored before sending
    chiefdom, chp, mchp = (ref_of(demo, new[k]) for k in ("chiefdom", "chp", "mchp"))
    assert all(is_uid(u) for u in (chiefdom, chp, mchp))
    [sent] = metadata_posts(fake)  # everything in one /api/metadata request
    units = sent["organisationUnits"]
    ids = [u["id"] for u in units]
    assert ids[:3] == [chiefdom, chp, mchp]  # creates first, parents before children
    by_id = {u["id"]: u for u in units}
    assert by_id[chiefdom] | {"geometry": None} == {
        "id": chiefdom, "name": "Georeg Chiefdom", "shortName": "Georeg Chiefdom",
        "openingDate": "2024-01-01", "parent": {"id": BO}, "geometry": None}
    assert by_id[chiefdom]["geometry"]["type"] == "Polygon"
    assert by_id[chp]["parent"] == {"id": chiefdom} and by_id[chp]["openingDate"] == "1970-01-01"
    assert by_id[chp]["geometry"] == {"type": "Point", "coordinates": [-11.85, 7.65]}
    assert by_id[mchp]["shortName"] == new["long_name"][:50].rstrip()
    assert by_id[mchp]["code"] == "GEOREG_MCHP_1"
    # updates are whole DHIS2 objects (DHIS2 replaces what it is sent) with our changes
    assert by_id[ADONKIA]["name"] == "Adonkia Community Health Post"
    assert by_id[ADONKIA]["shortName"] == "Adonkia Community Health Post"
    assert by_id[ADONKIA]["openingDate"].startswith("1970-01-01") and "created" in by_id[ADONKIA]
    assert by_id[AFRO_ARAB]["parent"] == {"id": BADJIA}
    assert by_id[AGAPE]["closedDate"] == "2024-05-01"
    assert by_id[AHAMADYYA]["closedDate"] == dt.date.today().isoformat()  # deleted → closed
    groups = {g["id"]: g for g in sent["organisationUnitGroups"]}
    assert {"id": chp} in groups[CHP_GROUP]["organisationUnits"]
    assert {"id": ADONKIA} not in groups[URBAN_GROUP]["organisationUnits"]
    assert len(groups[URBAN_GROUP]["organisationUnits"]) == 867
    pilot = next(g for g in groups.values() if g["name"] == "Georeg pilot")
    assert pilot["organisationUnits"] == [{"id": mchp}] and pilot["shortName"] == "Georeg pilot"
    assert_fake_matches_registry(fake, demo, "SL", 1)
    assert (fake.unit(chp, "level,path") or {})["path"] == f"/ImspTQPwCqd/{BO}/{chiefdom}/{chp}"
    # nothing left to send
    fake.clear_log()
    again = push(demo, client, "SL", 1)
    assert again["planned"]["create"] == again["planned"]["update"] == 0
    assert not fake.posts() and again["uids_stored"] == 0
    [stored] = push_history(demo, "SL", limit=1)
    assert stored["op"] == "push" and stored["report"]["ok"]


@pytest.mark.parametrize("backend", ["gpkg"], indirect=True)
def test_push_of_a_merged_version(demo: Registry, fake41: FakeDhis2) -> None:
    """Two drafts of the pulled version, edited apart, combined by the 3-way merge: the
    merged draft's push sends exactly both sides' changes, and DHIS2 then equals it."""
    from storage.merging import merge_three_way

    publish_version(demo, "SL", 1)
    create_version(demo, "SL", copy_from=1)  # v2: the district office
    create_version(demo, "SL", copy_from=1)  # v3: the field team
    U.rename_unit(demo, "SL", ADONKIA, "Adonkia Community Health Post", number=2)
    new = U.add_unit(demo, "SL", number=2, name="Merged New CHP", parent=BADJIA,
                     type="Facility", location=Point(-11.7, 7.8), opening_date="2024-02-01")
    U.move_unit(demo, "SL", AFRO_ARAB, BADJIA, number=3)
    U.close_unit(demo, "SL", AGAPE, "2024-05-01", number=3)
    report = merge_three_way(demo, "SL:1", "SL:2", "SL:3")
    assert not report["conflicts"]
    with demo.read() as conn:
        merged = int(conn.execute(text(
            "SELECT max(v.number) FROM source_version v JOIN data_source s ON s.fid = "
            "v.source_id WHERE s.name = 'SL'")).scalar_one())
    assert merged == 4
    pushed = push(demo, client_for(fake41), "SL", merged)
    assert pushed["ok"] and pushed["planned"] | {"unchanged": 0} == {
        "create": 1, "update": 3, "close": 0, "delete": 0, "groups_create": 0,
        "groups_update": 0, "unchanged": 0, "codes_released": 0}
    [sent] = metadata_posts(fake41)
    by_id = {u["id"]: u for u in sent["organisationUnits"]}
    assert by_id[ADONKIA]["name"] == "Adonkia Community Health Post"
    assert by_id[AFRO_ARAB]["parent"] == {"id": BADJIA}
    assert by_id[AGAPE]["closedDate"] == "2024-05-01"
    [made] = fake41.units_named("Merged New CHP")
    assert made["parent"]["id"] == BADJIA and made["id"] == _ref_in(demo, new["uuid"], merged)
    assert set(by_id) == {ADONKIA, AFRO_ARAB, AGAPE, made["id"]}  # nothing else sent
    assert_fake_matches_registry(fake41, demo, "SL", merged)


def _ref_in(reg: Registry, uuid: str, number: int) -> str:
    """The unit's ref in version ``number`` (the uid the push stored before sending)."""
    with reg.read() as conn:
        return str(conn.execute(text(
            "SELECT u.source_ref FROM org_unit u JOIN source_version v ON v.fid = u.version_id "
            "WHERE u.uuid = :u AND v.number = :n"), {"u": uuid, "n": number}).scalar_one())


def test_dhis2_refusal_reaches_the_user_with_unit_names(demo: Registry,
                                                       paired_fake: FakeDhis2) -> None:
    fake = paired_fake
    U.add_unit(demo, "SL", number=1, name="Too Long Short Name CHP", parent=BADJIA,
               extra_fields={"shortName": "S" * 60})
    U.add_unit(demo, "SL", number=1, name="Clashing Code MCHP", parent=BADJIA, code="DUP")
    U.edit_unit(demo, "SL", AGAPE, number=1, code="DUP")
    U.rename_unit(demo, "SL", ADONKIA, "Adonkia renamed", number=1)
    with pytest.raises(ConflictError) as err:
        push(demo, client_for(fake), "SL", 1)
    message = err.value.message
    assert "Too Long Short Name CHP" in message and "short name" in message
    assert "Maximum length of property `shortName`is 50, but given length was 60" in message
    assert "E4001" in message and "E5003" in message
    assert "'Clashing Code MCHP'" in message or "'Agape CHP'" in message
    assert ", in Sierra Leone / Bo / Badjia)" in message
    report = err.value.details["report"]
    assert not report["ok"] and {e["error_code"] for e in report["errors"]} == {"E4001", "E5003"}
    # atomic batch: nothing of it landed
    assert fake.state.units[ADONKIA]["name"] == "Adonkia CHP"
    assert not fake.units_named("Too Long Short Name CHP")
    [stored] = push_history(demo, "SL", limit=1)
    assert stored["op"] == "push_failed" and any("Too Long Short Name CHP" in e
                                                 for e in stored["report"]["errors"])


def test_dry_run_changes_nothing(demo: Registry, fake41: FakeDhis2) -> None:
    new = edit_demo(demo)
    state = copy.deepcopy((fake41.state.units, fake41.state.groups))
    report = push(demo, client_for(fake41), "SL", 1, dry_run=True)
    assert report["ok"] and report["dry_run"] and report["planned"]["create"] == 3
    assert (fake41.state.units, fake41.state.groups) == state
    posts = fake41.posts()
    assert posts and all(p.param("importMode") == "VALIDATE" for p in posts)
    with demo.read() as conn:
        assert conn.execute(text("SELECT source_ref FROM org_unit WHERE uuid = :u"),
                            {"u": new["chp"]}).scalar() is None  # no uid stored
    assert push_history(demo, "SL") == []
    # batch by batch, a reference to a unit an earlier batch would create is no error
    fake41.clear_log()
    small = push(demo, client_for(fake41), "SL", 1, dry_run=True, batch_size=2)
    assert small["ok"] and len(fake41.posts()) == 5 and small["planned"] == report["planned"]
    assert (fake41.state.units, fake41.state.groups) == state
    # what the dry run showed is what the push makes: the same uids
    previewed = {c["uid"] for c in report["changes"] if c["action"] == "create"}
    pushed = push(demo, client_for(fake41), "SL", 1)
    assert {c["uid"] for c in pushed["changes"] if c["action"] == "create"} == previewed
    assert ref_of(demo, new["chp"]) in previewed


def test_dropped_connection_then_new_push_creates_nothing_twice(demo: Registry,
                                                                fake41: FakeDhis2) -> None:
    new = edit_demo(demo)
    client = client_for(fake41, retries=1)
    # DHIS2 commits, then the answer is cut off — twice, so the retry fails too
    fake41.inject("drop_mid", count=2, method="POST", path="/api/metadata")
    with pytest.raises(GeoregError) as err:
        push(demo, client, "SL", 1)
    assert "run the push again" in err.value.message
    assert "cut in the middle" in err.value.message
    chp = ref_of(demo, new["chp"])  # the uid was stored before sending
    assert len(fake41.units_named("Georeg Chiefdom CHP")) == 1
    fake41.clear_log()
    report = push(demo, client, "SL", 1)
    assert report["ok"] and report["planned"]["create"] == 0 and report["uids_stored"] == 0
    assert len(fake41.units_named("Georeg Chiefdom CHP")) == 1
    assert fake41.units_named("Georeg Chiefdom CHP")[0]["id"] == chp
    assert_fake_matches_registry(fake41, demo, "SL", 1)
    assert [h["op"] for h in push_history(demo, "SL")] == ["push", "push_failed"]
    # dropped before DHIS2 saw anything: nothing landed; the next push sends it all, once
    U.add_unit(demo, "SL", number=1, name="Late CHP", parent=BADJIA)
    fake41.inject("drop", count=1, method="POST")
    with pytest.raises(GeoregError, match="closed the connection"):
        push(demo, client_for(fake41, retries=0), "SL", 1)
    assert not fake41.units_named("Late CHP")
    assert push(demo, client, "SL", 1)["planned"]["create"] == 1
    assert len(fake41.units_named("Late CHP")) == 1


def add_new_units(reg: Registry, n: int) -> None:
    """n new facilities (no DHIS2 uid yet) spread over the chiefdoms, all in group CHP."""
    chiefdoms = [BADJIA, KAKUA, "vWbkYPRmKyS", "dGheVylzol6"]
    records = [UnitRecord(name=f"Bulk CHP {i:04d}", source_ref=f"tmp{i}",
                          parent_ref=chiefdoms[i % len(chiefdoms)], type_name="Facility",
                          location=Point(-11.5 + i / 10000, 7.9), groups=[CHP_GROUP],
                          where=f"row {i}") for i in range(n)]
    ImportJob(reg, ImportPayload(units=records), source="SL", number=1).run()
    with reg.write() as conn:
        conn.execute(text("UPDATE org_unit SET source_ref = NULL WHERE source_ref LIKE 'tmp%'"))


def test_push_of_1000_new_units_takes_at_most_10_requests(demo: Registry,
                                                          fake41: FakeDhis2) -> None:
    add_new_units(demo, 1000)
    client = client_for(fake41)
    fake41.clear_log()
    report = push(demo, client, "SL", 1)
    assert report["planned"]["create"] == 1000 and report["planned"]["groups_update"] == 1
    assert len(fake41.requests) <= 10, [(r.method, r.path) for r in fake41.requests]
    assert report["requests"] == len(fake41.requests)
    assert [len(p["organisationUnits"]) for p in metadata_posts(fake41)
            if "organisationUnits" in p] == [500, 500]
    assert len(fake41.state.units) == 2332
    assert len(fake41.state.groups[CHP_GROUP]["organisationUnits"]) == 1223
    with demo.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM org_unit WHERE source_ref IS NULL")
                            ).scalar_one() == 0


def test_subtree_version_and_allow_delete(demo: Registry, fake41: FakeDhis2) -> None:
    # a version holding only Bo: Bo keeps its DHIS2 parent, nothing outside Bo is closed
    U.move_unit(demo, "SL", BO, None, number=1)
    U.delete_unit(demo, "SL", "ImspTQPwCqd", number=1, recursive=True)
    client = client_for(fake41)
    report = push(demo, client, "SL", 1)
    assert report["planned"]["update"] == report["planned"]["close"] == 0
    assert not fake41.posts() and fake41.state.units[BO]["parent"] == "ImspTQPwCqd"
    # deleting units upstream, leaves first, only with allow_delete
    kids = [u for u, f in fake41.state.units.items() if f.get("parent") == BADJIA]
    U.delete_unit(demo, "SL", BADJIA, number=1, recursive=True)
    report = push(demo, client, "SL", 1, allow_delete=True)
    assert report["planned"]["delete"] == len(kids) + 1
    deletes = [r for r in fake41.posts() if r.param("importStrategy") == "DELETE"]
    assert len(deletes) == 1
    sent = [u["id"] for u in deletes[0].body["organisationUnits"]]
    assert sent[-1] == BADJIA and set(sent[:-1]) == set(kids)
    assert BADJIA not in fake41.state.units and not set(kids) & set(fake41.state.units)


def test_push_of_a_published_version_keeps_its_uids_in_the_change_log(
        demo: Registry, fake41: FakeDhis2) -> None:
    U.add_unit(demo, "SL", number=1, name="Published CHP", parent=BADJIA)
    publish_version(demo, "SL", 1)
    client = client_for(fake41)
    report = push(demo, client, "SL", 1)
    assert report["ok"] and report["uids_stored"] == 1
    [created] = fake41.units_named("Published CHP")
    again = push(demo, client, "SL", 1)
    assert again["planned"]["create"] == 0 and len(fake41.units_named("Published CHP")) == 1
    # a draft made from it gets the same uid as its ref when pushed
    create_version(demo, "SL", copy_from=1)
    push(demo, client, "SL", 2)
    assert U.get_unit(demo, "SL", created["id"], 2)["name"] == "Published CHP"
    assert len(fake41.units_named("Published CHP")) == 1


def test_refs_that_are_not_dhis2_uids_are_refused_before_sending(registry: Registry,
                                                                 fake41: FakeDhis2) -> None:
    create_version(registry, "Files", create_source_if_missing=True)
    U.add_unit(registry, "Files", name="Odd ref", source_ref="not-a-uid")
    with pytest.raises(InvalidInput, match="'Odd ref' \\(ref not-a-uid\\)"):
        push(registry, client_for(fake41), "Files", 1)
    assert not fake41.posts()


# --- the command line ------------------------------------------------------------------------------


def cli(*args: str, code: int = 0, input: str | None = None,
        env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(dhis2_group, [*args, "--json"], input=input, env=env)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert PASSWORD not in result.output and "d2pat_" not in result.output
    return json.loads(result.stdout if code == 0 else result.stderr)


def test_cli_pull_and_push(location: str, fake41: FakeDhis2) -> None:
    Registry.create(location).close()
    conn = ["--url", fake41.url, "--user", "admin", "--password-stdin", "--retries", "1"]
    pulled = cli("pull", location, "--source", "SL", *conn, input=f"{PASSWORD}\n")
    assert pulled["units"] == 1332 and pulled["version"]["number"] == 1
    with Registry.open(location) as reg:
        U.add_unit(reg, "SL", number=1, name="CLI CHP", parent=BADJIA)
        U.add_unit(reg, "SL", number=1, name="CLI bad CHP", parent=BADJIA,
                   extra_fields={"shortName": "y" * 55})
    failed = cli("push", location, "--source", "SL", "-v", "1", *conn, "--dry-run", code=5,
                 input=f"{PASSWORD}\n")
    assert failed["error"] == "conflict" and "'CLI bad CHP'" in failed["message"]
    assert failed["details"]["report"]["errors"][0]["field"].startswith("short name")
    assert not fake41.units_named("CLI CHP")
    with Registry.open(location) as reg:
        U.edit_unit(reg, "SL", _uuid(reg, "CLI bad CHP"), number=1,
                    extra_fields={"shortName": "CLI bad CHP"})
    done = cli("push", location, "--source", "SL", "-v", "1", *conn, input=f"{PASSWORD}\n")
    assert done["ok"] and done["planned"]["create"] == 2
    assert len(fake41.units_named("CLI CHP")) == 1
    shown = render_push(done)
    assert "Pushed SL v1 to DHIS2 2.41.0.1" in shown and "units: 2 new, 0 updated" in shown
    assert "create       CLI CHP (" in shown
    history = cli("history", location, "--source", "SL")
    assert [h["op"] for h in history] == ["push"]  # a dry run is not stored
    text_out = CliRunner().invoke(dhis2_group, ["history", location, "--source", "SL"])
    assert "v1 push by" in text_out.output and "2 new" in text_out.output


def _uuid(reg: Registry, name: str) -> str:
    with reg.read() as conn:
        return str(conn.execute(text("SELECT uuid FROM org_unit WHERE name = :n"),
                                {"n": name}).scalar_one())


def test_cli_credentials(fake: FakeDhis2, tmp_path: Any) -> None:
    base = ["info", "--url", fake.url]
    info = cli(*base, "--user", "admin", "--password-stdin", input=f"{PASSWORD}\n")
    assert info["version"].startswith(fake.version) and info["user"] == "admin"
    wrong = cli(*base, "--user", "admin", "--password-stdin", "--retries", "0", code=2,
                input="nope\n")
    assert "HTTP 401" in wrong["message"]
    missing = cli(*base, code=2, env={"GEOREG_DHIS2_TOKEN": ""})
    assert "No DHIS2 credentials" in missing["message"]
    via_env = cli(*base, "--user", "admin", env={"GEOREG_DHIS2_PASSWORD": PASSWORD})
    assert via_env["auth"] == "basic"
    token_env = {"GEOREG_DHIS2_TOKEN": "d2pat_testtoken0123456789"}
    if fake.version == "2.41":
        assert cli(*base, env=token_env)["auth"] == "token"
        assert cli(*base, "--token-stdin", input="d2pat_testtoken0123456789\n")["user"] == "admin"
    else:
        assert "2.37" in cli(*base, code=2, env=token_env)["message"]
    result = CliRunner().invoke(dhis2_group, ["info", "--url", fake.url, "--password", "x"])
    assert result.exit_code == 2  # there is no --password option: secrets never go in argv
