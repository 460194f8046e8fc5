"""The REST API as a notebook uses it: filters, GeoJSON, paging, diff, links, change
requests — over real HTTP to ``georeg serve`` on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from requests.auth import HTTPDigestAuth
from sqlalchemy import text

from storage import change_requests as cr
from storage import units
from storage.registry import Registry
from tests import server_helpers as sh

FACILITY = "kbGqmM6ZWWV"  # Allen Town Health Post
BO = "O6uvpzGd5pu"
WESTERN_AREA = "at6UHUQatSo"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sh.LiveServer]:
    with sh.demo_server(tmp_path_factory.mktemp("rest")) as live:
        yield live


def _session(live: sh.LiveServer, user: str) -> requests.Session:
    s = requests.Session()
    r = s.post(f"{live.base}/api/token/",
               json={"username": user, "password": live.passwords[user]}, timeout=30)
    assert r.status_code == 200, r.text
    s.headers["Authorization"] = f"Bearer {r.json()['access']}"
    return s


def test_sources_and_versions(server: sh.LiveServer) -> None:
    s = _session(server, "kofi")
    assert [x["name"] for x in s.get(f"{server.base}/api/v1/sources").json()["sources"]] == ["SL"]
    vs = s.get(f"{server.base}/api/v1/sources/SL/versions").json()["versions"]
    assert [(v["number"], v["status"], v["default"]) for v in vs] == [
        (1, "published", True), (2, "draft", False)]
    missing = s.get(f"{server.base}/api/v1/sources/Nowhere/versions")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_org_unit_filters(server: sh.LiveServer) -> None:
    s = _session(server, "kofi")
    url = f"{server.base}/api/v1/orgunits"
    districts = s.get(url, params={"level": 2, "limit": 50}).json()
    assert districts["count"] == 13 and {u["type"] for u in districts["org_units"]} == {"District"}
    assert districts["version"]["label"] == "SL v1"
    clinics = s.get(url, params={"type": "Facility", "q": "CLINIC", "limit": 500}).json()
    assert clinics["count"] > 10
    assert all("clinic" in u["name"].lower() for u in clinics["org_units"])
    kids = s.get(url, params={"parent": BO, "limit": 100}).json()
    assert kids["count"] == 15 and all(u["parent_ref"] == BO for u in kids["org_units"])
    paged = s.get(url, params={"limit": 10, "page": 2}).json()
    assert (paged["count"], paged["page"], paged["pages"], len(paged["org_units"])) == (
        1332, 2, 134, 10)
    box = (-13.30, 8.40, -13.10, 8.50)  # Freetown and around
    inside = s.get(url, params={"bbox": ",".join(map(str, box)), "type": "Facility",
                                "limit": 1000}).json()
    assert inside["count"] > 5
    for u in inside["org_units"]:
        lon, lat = u["location"]
        assert box[0] <= lon <= box[2] and box[1] <= lat <= box[3]
    v2 = s.get(url, params={"version": 2, "q": "allen town"}).json()
    assert v2["version"]["number"] == 2 and v2["count"] >= 1


def test_geojson_and_one_unit(server: sh.LiveServer) -> None:
    s = _session(server, "kofi")
    r = s.get(f"{server.base}/api/v1/orgunits", params={"level": 2, "format": "geojson",
                                                        "limit": 20})
    assert r.headers["Content-Type"].startswith("application/geo+json")
    fc = r.json()
    assert fc["type"] == "FeatureCollection" and fc["count"] == 13
    assert {f["geometry"]["type"] for f in fc["features"]} == {"MultiPolygon"}
    one = s.get(f"{server.base}/api/v1/orgunits/{FACILITY}").json()
    assert one["name"] == "Allen Town Health Post" and one["territory"] is None
    assert s.get(f"{server.base}/api/v1/orgunits/{BO}").json()["territory"]["type"] == \
        "MultiPolygon"


def test_bad_parameters_are_400_with_the_parameter_named(server: sh.LiveServer) -> None:
    s = _session(server, "kofi")
    for params, name in [({"bbox": "1,2"}, "bbox"), ({"limit": "0"}, "limit"),
                         ({"limit": "lots"}, "limit"), ({"format": "kml"}, "format"),
                         ({"level": "-1"}, "level"), ({"validation_status": "maybe"},
                                                      "validation_status")]:
        r = s.get(f"{server.base}/api/v1/orgunits", params=params)
        assert r.status_code == 400, params
        body = r.json()
        assert body["error"] == "invalid_input" and name in body["message"]
    assert s.get(f"{server.base}/api/v1/orgunits", params={"parent": "nope"}).status_code == 404
    assert s.get(f"{server.base}/api/v1/diff", params={"left": "SL:1"}).status_code == 400


def test_digest_authentication(server: sh.LiveServer) -> None:
    url = f"{server.base}/api/v1/orgunits"
    digest = requests.get(url, params={"limit": 1}, timeout=30,
                          auth=HTTPDigestAuth("kofi", server.passwords["kofi"]))
    assert digest.status_code == 200 and digest.json()["count"] == 1332
    wrong = requests.get(url, timeout=30, auth=HTTPDigestAuth("kofi", "not-it"))
    assert wrong.status_code == 401 and "Digest" in wrong.headers.get("WWW-Authenticate", "")


def test_bearer_authentication_and_subtree(server: sh.LiveServer) -> None:
    url = f"{server.base}/api/v1/orgunits"
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer x.y.z"},
                        timeout=30).status_code == 401
    amina = _session(server, "amina")
    mine = amina.get(url, params={"limit": 1}).json()
    assert 0 < mine["count"] < 1332
    assert amina.get(f"{server.base}/api/v1/orgunits/{BO}").status_code == 404


def test_diff_between_versions(server: sh.LiveServer) -> None:
    units.rename_unit(server.registry, "SL", FACILITY, "Allen Town CHC", number=2)
    s = _session(server, "kofi")
    d = s.get(f"{server.base}/api/v1/diff", params={"left": "SL:1", "right": "SL:2"}).json()
    assert d["left"]["label"] == "SL v1" and d["right"]["label"] == "SL v2"
    assert "Allen Town CHC" in str(d)


def test_links_are_listed(server: sh.LiveServer) -> None:
    with server.registry.write(origin="test") as conn:
        run = conn.execute(text(
            "INSERT INTO algorithm_run (kind, left_version_id, right_version_id) "
            "VALUES ('name', 1, 2) RETURNING fid")).scalar_one()
        uuid = conn.execute(text("SELECT uuid FROM org_unit WHERE version_id = 1 AND "
                                 "source_ref = :r"), {"r": FACILITY}).scalar_one()
        conn.execute(text(
            "INSERT INTO link (run_id, left_version_id, left_unit_uuid, right_version_id, "
            "right_unit_uuid, score, status) VALUES (:r, 1, :u, 2, :u, 0.93, 'review')"),
            {"r": run, "u": uuid})
    s = _session(server, "kofi")
    links = s.get(f"{server.base}/api/v1/links", params={"run": run}).json()
    assert links["count"] == 1
    link = links["links"][0]
    assert link["left"]["name"] == "Allen Town Health Post" and link["score"] == 0.93


def test_change_requests_listed_approved_and_rejected(server: sh.LiveServer) -> None:
    a = cr.create_change_request(server.registry, "SL", unit=FACILITY, created_by="amina",
                                 values={"code": "AT-01", "opening_date": "2001-02-03"})
    b = cr.create_change_request(server.registry, "SL", unit=BO, created_by="amina",
                                 values={"name": "Bo Town"})
    kofi, amina = _session(server, "kofi"), _session(server, "amina")
    listed = kofi.get(f"{server.base}/api/v1/changes", params={"status": "new"}).json()
    assert {a["id"], b["id"]} <= {c["id"] for c in listed["change_requests"]}
    # the collector's area is Western Area: Bo's request is not theirs to see
    theirs = amina.get(f"{server.base}/api/v1/changes").json()
    assert a["id"] in {c["id"] for c in theirs["change_requests"]}
    assert b["id"] not in {c["id"] for c in theirs["change_requests"]}
    assert amina.post(f"{server.base}/api/v1/changes/{a['id']}/approve", json={}
                      ).status_code == 403
    bad = kofi.post(f"{server.base}/api/v1/changes/{a['id']}/approve", json={"fields": ["x"]})
    assert bad.status_code == 400
    ok = kofi.post(f"{server.base}/api/v1/changes/{a['id']}/approve", json={"fields": ["code"]})
    assert ok.status_code == 200 and ok.json()["applied_to"] == "SL v2"
    assert ok.json()["approved_fields"] == ["code"]
    assert units.get_unit(server.registry, "SL", FACILITY, 2)["code"] == "AT-01"
    twice = kofi.post(f"{server.base}/api/v1/changes/{a['id']}/approve", json={})
    assert twice.status_code == 409
    no_comment = kofi.post(f"{server.base}/api/v1/changes/{b['id']}/reject", json={})
    assert no_comment.status_code == 400
    rejected = kofi.post(f"{server.base}/api/v1/changes/{b['uuid']}/reject",
                         json={"comment": "Not a rename: a new town"})
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    shown = kofi.get(f"{server.base}/api/v1/changes/{b['id']}").json()
    assert shown["rejection_comment"] == "Not a rename: a new town"


def test_filters_and_streaming_on_every_backend(demo: Registry) -> None:
    """The bbox filter (R-tree / SpatiaLite index / GiST) and the Iaso stream, per backend."""
    import json

    from local_server.iaso_api import stream_org_units
    from local_server.rest_api import list_org_units
    from storage.versions import resolve_version

    with demo.read() as conn:
        version = resolve_version(conn, "SL")
        count, found = list_org_units(demo, conn, version, bbox=(-13.30, 8.40, -13.10, 8.50),
                                      type_name="Facility", limit=1000)
        assert count == len(found) > 5
        assert any(u["source_ref"] == FACILITY for u in found)
        districts, _ = list_org_units(demo, conn, version, bbox=(-13.30, 8.40, -13.10, 8.50),
                                      level=2, limit=50)
        assert districts >= 1  # Western Area's territory meets the box
    body = json.loads(b"".join(stream_org_units(demo, version, paths=None, roots=[])))
    assert len(body["orgUnits"]) == 1332
    allen = next(u for u in body["orgUnits"] if u["name"] == "Allen Town Health Post")
    assert (allen["longitude"], allen["latitude"]) == pytest.approx((-13.155, 8.4176))
    assert allen["groups"] and allen["parent_id"] is not None


def test_the_schedule_is_shown_to_reviewers_and_not_to_collectors(server: sh.LiveServer
                                                                   ) -> None:
    """The docs said the REST API showed the schedule: it had no route for it; and the
    status page showed every signed-in collector the runs' errors (naming the central
    database's user and host)."""
    from sync.scheduler import add_job, remove_job

    add_job(server.registry, "postgis-push", every="1h", target="ministry", name="nightly")
    try:
        kofi = _session(server, "kofi")  # a reviewer
        data = kofi.get(f"{server.base}/api/v1/schedule").json()
        assert [(j["name"], j["schedule"]) for j in data["jobs"]] == [("nightly", "every 1h")]
        assert data["jobs"][0]["next_run"] and data["runs"] == []
        amina = _session(server, "amina")  # a collector
        assert amina.get(f"{server.base}/api/v1/schedule").status_code == 403

        def page(user: str) -> str:
            s = requests.Session()
            r = s.post(f"{server.base}/login", data={
                "username": user, "password": server.passwords[user]}, timeout=30)
            assert r.status_code == 200, r.text
            return s.get(f"{server.base}/", timeout=30).text

        assert "Scheduled jobs" in page("kofi") and "nightly" in page("kofi")
        collector_page = page("amina")
        assert "Field server status" in collector_page
        assert "nightly" not in collector_page and "Registry:" not in collector_page
    finally:
        remove_job(server.registry, "nightly")
