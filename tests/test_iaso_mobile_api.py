"""The Iaso Android app against ``georeg serve``: a real server on 127.0.0.1, real HTTP.

The app's own bulk upload (``tests/data/iaso_mobile/disasi_only``) and the same data sent
through the two-call upload, in both orders, must end as the same submissions and the
unit made on the phone as one creation request.  Org-unit download: paging, shapes,
streaming order, the collector's subtree; token authentication.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from storage import change_requests as cr
from storage.errors import GeoregError
from tests import server_helpers as sh

DATA = Path(__file__).parent / "data" / "iaso_mobile"
FIXTURE = DATA / "disasi_only"
APP = sh.APP_ID
WESTERN_AREA = "at6UHUQatSo"
FREETOWN = "C9uduqDZr9d"  # a chiefdom in Western Area
BO = "O6uvpzGd5pu"  # a district outside it
FACILITY = "kbGqmM6ZWWV"  # Allen Town Health Post, in Freetown
PHONE_UNIT = "9dcb6991-c72c-416d-ba38-4556c62b400f"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sh.LiveServer]:
    with sh.demo_server(tmp_path_factory.mktemp("iaso"), forms=sorted(DATA.glob("forms/*.xml"))
                        ) as live:
        yield live


def _token(live: sh.LiveServer, user: str) -> dict[str, str]:
    r = requests.post(f"{live.base}/api/token/",
                      json={"username": user, "password": live.passwords[user]}, timeout=30)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access']}"}


def test_token_login_refresh_and_refusals(server: sh.LiveServer) -> None:
    bad = requests.post(f"{server.base}/api/token/",
                        json={"username": "amina", "password": "wrong"}, timeout=30)
    assert bad.status_code == 401 and "credentials" in bad.json()["detail"]
    missing = requests.post(f"{server.base}/api/token/", json={"username": "amina"}, timeout=30)
    assert missing.status_code == 400
    pair = requests.post(f"{server.base}/api/token/", timeout=30,
                         json={"username": "amina", "password": server.passwords["amina"]}).json()
    assert set(pair) == {"access", "refresh"}
    ok = requests.get(f"{server.base}/api/mobile/groups/?app_id={APP}", timeout=30,
                      headers={"Authorization": f"Bearer {pair['access']}"})
    assert ok.status_code == 200 and {"id", "name", "erased"} <= set(ok.json()[0])
    # the refresh token is not an access token, a forged one is refused, none is refused
    for header in (f"Bearer {pair['refresh']}", f"Bearer {pair['access'][:-2]}xx", None):
        r = requests.get(f"{server.base}/api/mobile/groups/?app_id={APP}", timeout=30,
                         headers={"Authorization": header} if header else {})
        assert r.status_code == 401, header
    fresh = requests.post(f"{server.base}/api/token/refresh/", json={"refresh": pair["refresh"]},
                          timeout=30)
    assert fresh.status_code == 200 and fresh.json()["access"] != pair["access"]


def test_org_unit_download_paging_and_shapes(server: sh.LiveServer) -> None:
    auth = _token(server, "kofi")
    full = requests.get(f"{server.base}/api/mobile/orgunits/?app_id={APP}", headers=auth,
                        timeout=60)
    assert full.status_code == 200 and full.headers["Content-Type"].startswith("application/json")
    units = full.json()["orgUnits"]
    assert len(units) == 1332 and full.json()["roots"] == []
    assert set(units[0]) >= {"name", "id", "parent_id", "org_unit_type_id", "org_unit_type_name",
                             "validation_status", "created_at", "updated_at", "latitude",
                             "longitude", "altitude", "uuid", "aliases", "groups",
                             "opening_date", "closed_date"}
    assert "geo_json" not in units[0]
    seen: set[int] = set()
    for u in units:  # parents come before their children (path order)
        assert u["parent_id"] is None or u["parent_id"] in seen
        seen.add(u["id"])
    facility = next(u for u in units if u["name"] == "Allen Town Health Post")
    assert facility["validation_status"] == "VALID" and facility["latitude"] == pytest.approx(8.4176)

    page = requests.get(f"{server.base}/api/mobile/orgunits/?app_id={APP}&page=3&limit=100",
                        headers=auth, timeout=60).json()
    assert {k: page[k] for k in ("count", "page", "pages", "limit", "has_next", "has_previous")} \
        == {"count": 1332, "page": 3, "pages": 14, "limit": 100, "has_next": True,
            "has_previous": True}
    assert [u["id"] for u in page["orgUnits"]] == [u["id"] for u in units[200:300]]
    assert "roots" not in page

    shapes = requests.get(
        f"{server.base}/api/mobile/orgunits/?app_id={APP}&shapes=true&limit=5000",
        headers=auth, timeout=60).json()
    assert shapes["limit"] == 1000 and len(shapes["orgUnits"]) == 1000
    district = next(u for u in shapes["orgUnits"] if u["org_unit_type_name"] == "District")
    assert district["geo_json"]["type"] in ("Polygon", "MultiPolygon")
    assert all(u["geo_json"] is None for u in shapes["orgUnits"] if u["latitude"] is not None)
    picked = requests.get(f"{server.base}/api/mobile/orgunits/?app_id={APP}&ids="
                          f"{district['id']},{facility['id']}", headers=auth, timeout=30).json()
    assert sorted(u["name"] for u in picked["orgUnits"]) == sorted(
        ["Allen Town Health Post", district["name"]])
    for bad in ("page=0&limit=10", "limit=abc", "ids=1,x"):
        r = requests.get(f"{server.base}/api/mobile/orgunits/?app_id={APP}&{bad}", headers=auth,
                         timeout=30)
        assert r.status_code == 400 and r.json()["error"] == "invalid_input", bad


def test_collector_sees_and_changes_only_their_subtree(server: sh.LiveServer) -> None:
    auth = _token(server, "amina")  # root: Western Area
    body = requests.get(f"{server.base}/api/mobile/orgunits/?app_id={APP}", headers=auth,
                        timeout=60).json()
    names = {u["name"] for u in body["orgUnits"]}
    assert "Western Area" in names and "Bo" not in names and "Sierra Leone" not in names
    assert len(body["roots"]) == 1
    top = next(u for u in body["orgUnits"] if u["name"] == "Western Area")
    assert body["roots"] == [top["id"]] and top["parent_id"] is None
    outside = requests.post(f"{server.base}/api/orgunits/changes/?app_id={APP}", headers=auth,
                            json={"uuid": "cr-outside", "org_unit_id": BO, "new_name": "X"},
                            timeout=30)
    assert outside.status_code == 403
    outside_new = requests.post(
        f"{server.base}/api/mobile/orgunits/?app_id={APP}", headers=auth, timeout=30,
        json=[{"id": "0c6a8d3e-0000-4000-8000-000000000001", "name": "Far away clinic",
               "parent_id": BO, "created_at": 1.7e9}])
    assert outside_new.status_code == 403
    assert cr.list_change_requests(server.registry, created_by="amina")["count"] == 0


def test_change_request_round_trip_from_the_phone(server: sh.LiveServer) -> None:
    auth = _token(server, "amina")
    body = {"uuid": "4b1e2c3d-1111-4222-8333-444455556666", "org_unit_id": FACILITY,
            "new_name": "Allen Town CHC",
            "new_location": {"latitude": 8.42, "longitude": -13.16, "altitude": 12.0},
            "new_location_accuracy": 8.5}
    first = requests.post(f"{server.base}/api/orgunits/changes/?app_id={APP}", json=body,
                          headers=auth, timeout=30)
    assert first.status_code == 201, first.text
    again = requests.post(f"{server.base}/api/orgunits/changes/?app_id={APP}", json=body,
                          headers=auth, timeout=30)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    bad = requests.post(f"{server.base}/api/orgunits/changes/?app_id={APP}", headers=auth,
                        json={"uuid": "x1", "org_unit_id": FACILITY, "new_opening_date": "soon"},
                        timeout=30)
    assert bad.status_code == 400 and "opening_date" in bad.json()["message"]
    made = cr.get_change_request(server.registry, body["uuid"])
    assert made["requested_fields"] == ["name", "location"]
    assert made["location_accuracy"] == 8.5 and made["created_by"] == "amina"
    cr.approve_change_request(server.registry, made["id"], reviewer="kofi", fields=["name"])
    mine = requests.get(f"{server.base}/api/mobile/orgunits/changes/?app_id={APP}"
                        "&last_sync=2020-01-01T00:00:00Z", headers=auth, timeout=30).json()
    entry = next(m for m in mine if m["uuid"] == body["uuid"])
    assert entry["status"] == "approved" and entry["approved_fields"] == ["new_name"]
    assert entry["new_location"]["latitude"] == pytest.approx(8.42)


# --- uploads: bulk zip and the two calls, in both orders ---------------------------------


def _phone_payloads(live: sh.LiveServer) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The fixture's JSON with the ids of this server (the phone got them at download)."""
    auth = _token(live, "amina")
    units = requests.get(f"{live.base}/api/mobile/orgunits/?app_id={APP}", headers=auth,
                         timeout=60).json()["orgUnits"]
    forms = requests.get(f"{live.base}/api/mobile/forms/?app_id={APP}", headers=auth,
                         timeout=30).json()["forms"]
    form_ids = {f["form_id"]: f["id"] for f in forms}
    types = {t["name"]: t["id"] for t in requests.get(
        f"{live.base}/api/orgunittypes/?app_id={APP}", headers=auth, timeout=30
    ).json()["orgUnitTypes"]}
    parent = next(u for u in units if u["name"] == "Freetown")
    org_units = json.loads((FIXTURE / "orgUnits.json").read_text())
    for u in org_units:
        u["parent_id"] = str(parent["id"])
        u["org_unit_type_id"] = str(types["Facility"])
    instances = json.loads((FIXTURE / "instances.json").read_text())
    by_name = {"CATT": "trypelim_CATT", "Enregistrement": "trypelim_registration"}
    for i in instances:
        i["formId"] = str(form_ids[by_name[i["name"]]])
    return org_units, instances


def _zip(org_units: list[Any], instances: list[Any]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("orgUnits.json", json.dumps(org_units))
        z.writestr("instances.json", json.dumps(instances))
        for xml in FIXTURE.glob("*/*.xml"):
            z.write(xml, f"{xml.parent.name}/{xml.name}")
    return buf.getvalue()


def _xml_for(instance: dict[str, Any]) -> Path:
    name = Path(instance["file"]).name
    return next(FIXTURE.glob(f"*/{name}"))


def _upload_two_calls(live: sh.LiveServer, org_units: list[Any], instances: list[Any],
                      xml_first: bool) -> None:
    auth = _token(live, "amina")
    r = requests.post(f"{live.base}/api/mobile/orgunits/?app_id={APP}", json=org_units,
                      headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    for item in instances:
        def meta(item: dict[str, Any] = item) -> None:
            m = requests.post(f"{live.base}/api/instances/?app_id={APP}", json=[item],
                              headers=auth, timeout=30)
            assert m.status_code == 200 and m.json() == {"res": "ok"}, m.text

        def xml(item: dict[str, Any] = item) -> None:
            path = _xml_for(item)
            x = requests.post(f"{live.base}/sync/form_upload/", headers=auth, timeout=30,
                              files={"xml_submission_file": (path.name, path.read_bytes(),
                                                             "text/xml")})
            assert x.status_code == 201 and x.json() == {"result": "success"}, x.text

        for step in ((xml, meta) if xml_first else (meta, xml)):
            step()


def _outcome(live: sh.LiveServer) -> dict[str, Any]:
    subs = sorted(sh.submissions(live), key=lambda s: s["instance_id"])
    creations = cr.list_change_requests(live.registry, kind="creation")["results"]
    return {
        "submissions": [
            {k: s.get(k) for k in ("form_id", "instance_id", "org_unit_uuid", "data", "status",
                                   "source", "submitted_by")}
            | {k: round(s[k], 6) if s.get(k) is not None else None
               for k in ("longitude", "latitude", "altitude", "accuracy")}
            for s in subs],
        "creations": [(c["unit_uuid"], c["new"]["name"], c["new_parent_name"], c["new"]["type"],
                       c["created_by"]) for c in creations],
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    forms = sorted(DATA.glob("forms/*.xml"))
    results: dict[str, dict[str, Any]] = {}
    for way in ("bulk", "meta_then_xml", "xml_then_meta"):
        with sh.demo_server(tmp_path_factory.mktemp(way), forms=forms) as live:
            org_units, instances = _phone_payloads(live)
            if way == "bulk":
                r = requests.post(f"{live.base}/api/mobile/bulkupload/?app_id={APP}&app_version=1",
                                  headers=_token(live, "amina"), timeout=60,
                                  files={"zip_file": ("upload.zip", _zip(org_units, instances),
                                                      "application/zip")})
                assert r.status_code == 204, r.text
                # the app retries after a lost answer: nothing doubles
                again = requests.post(
                    f"{live.base}/api/mobile/bulkupload/?app_id={APP}", timeout=60,
                    headers=_token(live, "amina"),
                    files={"zip_file": ("upload.zip", _zip(org_units, instances))})
                assert again.status_code == 204, again.text
            else:
                _upload_two_calls(live, org_units, instances, xml_first=way == "xml_then_meta")
            results[way] = _outcome(live)
    return results


def test_bulk_upload_makes_submissions_and_a_creation_request(
        outcomes: dict[str, dict[str, Any]]) -> None:
    bulk = outcomes["bulk"]
    assert bulk["creations"] == [(PHONE_UNIT, "New Org Unit", "Freetown", "Facility", "amina")]
    assert [s["form_id"] for s in bulk["submissions"]] == ["trypelim_registration",
                                                           "trypelim_CATT"] or \
        sorted(s["form_id"] for s in bulk["submissions"]) == ["trypelim_CATT",
                                                              "trypelim_registration"]
    assert len(bulk["submissions"]) == 2
    for s in bulk["submissions"]:
        assert s["org_unit_uuid"] == PHONE_UNIT and s["source"] == "iaso"
        assert s["submitted_by"] == "amina"
        assert s["latitude"] == pytest.approx(50.6429, abs=1e-3)
        assert s["accuracy"] is not None
    catt = next(s for s in bulk["submissions"] if s["form_id"] == "trypelim_CATT")
    assert catt["data"]["CATT"]["result"] == "positive"


@pytest.mark.parametrize("way", ["meta_then_xml", "xml_then_meta"])
def test_two_call_upload_in_either_order_equals_the_bulk_upload(
        outcomes: dict[str, dict[str, Any]], way: str) -> None:
    assert outcomes[way] == outcomes["bulk"]


def test_bad_uploads_are_refused_with_a_reason(server: sh.LiveServer) -> None:
    auth = _token(server, "amina")
    cases = [
        ("/api/mobile/bulkupload/", {"files": {"zip_file": ("x.zip", b"not a zip")}}),
        ("/api/mobile/bulkupload/", {"data": {"nothing": "here"}}),
        ("/api/instances/", {"json": [{"id": "x"}]}),
        ("/api/instances/", {"data": b"{not json", "headers": {"Content-Type":
                                                              "application/json"}}),
        ("/api/mobile/orgunits/", {"json": [{"name": "no id"}]}),
        ("/api/orgunits/changes/", {"json": {"uuid": "u"}}),
        ("/sync/form_upload/", {"files": {"other": ("a.txt", b"x")}}),
        ("/sync/form_upload/", {"files": {"xml_submission_file": ("a.xml", b"<not-xml")}}),
    ]
    for path, kw in cases:
        headers = dict(auth) | dict(kw.pop("headers", {}))  # type: ignore[arg-type]
        r = requests.post(f"{server.base}{path}?app_id={APP}", headers=headers, timeout=30,
                          **kw)  # type: ignore[arg-type]
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
    unknown_app = requests.get(f"{server.base}/api/mobile/forms/?app_id=no.such.app",
                               headers=auth, timeout=30)
    assert unknown_app.status_code == 404


def test_forms_and_form_versions(server: sh.LiveServer) -> None:
    auth = _token(server, "amina")
    forms = requests.get(f"{server.base}/api/mobile/forms/?app_id={APP}", headers=auth,
                         timeout=30).json()["forms"]
    assert sorted(f["form_id"] for f in forms) == ["trypelim_CATT", "trypelim_registration"]
    catt = next(f for f in forms if f["form_id"] == "trypelim_CATT")
    latest = catt["latest_form_version"]
    assert latest["version_id"] == "2024031801"
    xform = requests.get(latest["file"], headers=auth, timeout=30)
    assert xform.status_code == 200 and b'id="trypelim_CATT"' in xform.content
    versions = requests.get(f"{server.base}/api/formversions/?form_id={catt['id']}",
                            headers=auth, timeout=30).json()["form_versions"]
    assert [v["version_id"] for v in versions] == ["2024031801"]
    assert versions[0]["form_id"] == catt["id"]


def test_tokens_are_checked_strictly(tmp_path: Path) -> None:
    import base64

    from local_server import jwt

    key = jwt.load_or_create_key(tmp_path / "reg.gpkg.server-key")
    assert (tmp_path / "reg.gpkg.server-key").stat().st_mode & 0o077 == 0
    assert jwt.load_or_create_key(tmp_path / "reg.gpkg.server-key") == key
    pair = jwt.issue_pair("amina", key, now=1_000_000)
    assert jwt.decode(pair["access"], key, now=1_000_100)["username"] == "amina"
    with pytest.raises(jwt.InvalidToken, match="expired"):
        jwt.decode(pair["access"], key, now=1_000_000 + jwt.ACCESS_SECONDS + 1)
    with pytest.raises(jwt.InvalidToken, match="signature"):
        jwt.decode(pair["access"], b"another key of 32 bytes or more....", now=1_000_100)
    with pytest.raises(jwt.InvalidToken, match="access"):
        jwt.decode(pair["refresh"], key, now=1_000_100)
    head, body, _sig = pair["access"].split(".")
    none_alg = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidToken, match="HS256"):
        jwt.decode(f"{none_alg}.{body}.", key, now=1_000_100)
    (tmp_path / "shared.key").write_bytes(b"x" * 64)
    (tmp_path / "shared.key").chmod(0o644)
    with pytest.raises(GeoregError, match="chmod 600"):
        jwt.load_or_create_key(tmp_path / "shared.key")
