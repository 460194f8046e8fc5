"""Field review #1, #6, #10: over real HTTP (a live ``georeg serve``) and the real CLI.

* #1 — a unit made on a phone and approved by a reviewer lives in the draft until it is
  published: Iaso submissions for it must still pass the area check (as ODK Collect's
  do), and one refused instance of a bulk zip must not keep the others from being
  stored; refusals are reported per item, with a true reason.
* #6 — ``forms add --org-unit-field`` refuses a question the form does not have (naming
  the candidates), says when the setting changed, and does not warn about media the
  stored version already holds.
* #10 — a change-request uuid another user already used is a 409 that reveals nothing of
  that request, and stores nothing.
"""

from __future__ import annotations

import io
import json
import secrets
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from requests.auth import HTTPDigestAuth
from sqlalchemy import text

from georeg.cli import main
from local_server import forms as core_forms
from local_server import users
from storage import change_requests as cr
from storage.registry import Registry
from tests import server_helpers as sh
from tests.openrosa_helpers import instance_xml, write_test_form

APP = sh.APP_ID
FREETOWN = "C9uduqDZr9d"  # a chiefdom in Western Area (amina's area)
BO = "O6uvpzGd5pu"  # a district outside it (bob's area)
FACILITY = "kbGqmM6ZWWV"  # Allen Town Health Post, in Freetown


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sh.LiveServer]:
    tmp = tmp_path_factory.mktemp("field")
    with sh.demo_server(tmp) as server:
        core_forms.add_form(server.registry, write_test_form(tmp / "forms"), project=APP,
                            org_unit_field="facility")
        server.passwords["bob"] = secrets.token_urlsafe(12)
        users.add_user(server.registry, "bob", server.passwords["bob"], role="collector",
                       roots=[BO])
        yield server


def _token(live: sh.LiveServer, user: str) -> dict[str, str]:
    r = requests.post(f"{live.base}/api/token/",
                      json={"username": user, "password": live.passwords[user]}, timeout=30)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access']}"}


def _uuid_of(live: sh.LiveServer, ref: str) -> str:
    with live.registry.read() as conn:
        return str(conn.execute(text("SELECT uuid FROM org_unit WHERE source_ref = :r "
                                     "ORDER BY version_id LIMIT 1"), {"r": ref}).scalar_one())


def _facility_type(live: sh.LiveServer) -> int:
    with live.registry.read() as conn:
        return int(conn.execute(text("SELECT fid FROM org_unit_type WHERE name = 'Facility'")
                                ).scalar_one())


def _stored(live: sh.LiveServer, instance_id: str) -> list[Any]:
    with live.registry.read() as conn:
        return list(conn.execute(text("SELECT org_unit_uuid FROM submission WHERE "
                                      "instance_id = :i"), {"i": instance_id}).all())


def _approved_phone_unit(live: sh.LiveServer, name: str) -> str:
    """A unit amina makes on her phone under Freetown, approved by kofi: it is written
    to the draft (version 2); phones still download version 1, which lacks it."""
    unit = str(uuid.uuid4())
    r = requests.post(f"{live.base}/api/mobile/orgunits/?app_id={APP}",
                      headers=_token(live, "amina"), timeout=30,
                      json=[{"id": unit, "name": name, "parentId": FREETOWN,
                             "orgUnitTypeId": _facility_type(live), "latitude": 8.45,
                             "longitude": -13.2, "created_at": 1.7e9}])
    assert r.status_code == 200, r.text
    made = cr.get_change_request(live.registry, r.json()[0]["change_request_id"])
    cr.approve_change_request(live.registry, made["id"], reviewer="kofi",
                              fields=["name", "parent", "type"])
    with live.registry.read() as conn:
        where = conn.execute(text("SELECT v.number FROM org_unit u JOIN source_version v ON "
                                  "v.fid = u.version_id WHERE u.uuid = :u"), {"u": unit}).all()
    assert [w[0] for w in where] == [2]  # only in the draft
    return unit


def test_iaso_submission_for_an_approved_phone_unit_keeps_its_unit(live: sh.LiveServer) -> None:
    unit = _approved_phone_unit(live, "New Vacc Post")
    auth = _token(live, "amina")
    xml, iid = instance_xml(unit)
    name = f"fv_{uuid.uuid4().hex}.xml"
    meta = requests.post(f"{live.base}/api/instances/?app_id={APP}", headers=auth, timeout=30,
                         json=[{"id": iid[5:], "file": f"/sdcard/odk/instances/{name}",
                                "formId": "1", "orgUnitId": unit, "latitude": 8.45,
                                "longitude": -13.2, "created_at": 3}])
    assert meta.status_code == 200, meta.text
    up = requests.post(f"{live.base}/sync/form_upload/?app_id={APP}", headers=auth, timeout=30,
                       files=[("xml_submission_file", (name, xml, "text/xml"))])
    assert up.status_code == 201, up.text
    assert _stored(live, iid) == [(unit,)]
    # ODK Collect follows the same rule for the same unit
    xml2, iid2 = instance_xml(unit)
    collect = requests.post(f"{live.base}/submission", timeout=30,
                            auth=HTTPDigestAuth("amina", live.passwords["amina"]),
                            headers={"X-OpenRosa-Version": "1.0"},
                            files=[("xml_submission_file", ("s.xml", xml2, "text/xml"))])
    assert collect.status_code == 201, collect.text
    assert _stored(live, iid2) == [(unit,)]


def _bulk_zip(instances: list[tuple[str, bytes, str, dict[str, Any]]],
              changes: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        items = []
        for iid, xml, unit, extra in instances:
            folder = iid[5:]
            items.append({"id": folder, "file": f"/sdcard/x/{folder}.xml", "formId": "1",
                          "orgUnitId": unit, "created_at": 5} | extra)
            z.writestr(f"{folder}/{folder}.xml", xml)
        z.writestr("instances.json", json.dumps(items))
        z.writestr("changeRequests.json", json.dumps(changes))
    return buf.getvalue()


def test_bulk_upload_stores_every_instance_it_can_and_reports_each_refusal(
        live: sh.LiveServer) -> None:
    new_unit = _approved_phone_unit(live, "Bulk Post")
    inside, outside = _uuid_of(live, FACILITY), _uuid_of(live, BO)
    xml_new, iid_new = instance_xml(new_unit)
    xml_out, iid_out = instance_xml(outside)
    xml_in, iid_in = instance_xml(inside)
    ghost = str(uuid.uuid4())
    xml_ghost, iid_ghost = instance_xml(inside)
    change = {"uuid": str(uuid.uuid4()), "org_unit_id": FACILITY, "new_name": "Allen Town HP"}
    data = _bulk_zip([(iid_new, xml_new, new_unit, {}), (iid_out, xml_out, outside, {}),
                      (iid_in, xml_in, inside, {}), (iid_ghost, xml_ghost, ghost, {})],
                     [change])
    for _attempt in range(2):  # the app sends the zip again: nothing doubles
        r = requests.post(f"{live.base}/api/mobile/bulkupload/?app_id={APP}", timeout=60,
                          headers=_token(live, "amina"),
                          files={"zip_file": ("b.zip", data, "application/zip")})
        assert r.status_code == 400, r.text  # a 403 and a 404 among the refusals
        body = r.json()
        assert body["error"] == "partly_refused"
        refused = {x["id"]: x for x in body["details"]["refused"]}
        assert set(refused) == {iid_out[5:], iid_ghost[5:]}
        assert refused[iid_out[5:]]["status"] == 403
        assert "outside your area" in refused[iid_out[5:]]["message"]
        assert "'Bo'" in refused[iid_out[5:]]["message"]
        # an unknown unit is not called "outside your area"
        assert refused[iid_ghost[5:]]["status"] == 404
        assert "outside" not in refused[iid_ghost[5:]]["message"]
        assert body["details"]["stored"] == {"org_units": 0, "instances": 2,
                                             "change_requests": 1}
    assert _stored(live, iid_new) == [(new_unit,)]
    assert _stored(live, iid_in) == [(inside,)]
    assert _stored(live, iid_out) == [] and _stored(live, iid_ghost) == []
    assert cr.get_change_request(live.registry, change["uuid"])["created_by"] == "amina"
    # a zip with nothing refused is still Iaso's 204
    xml_ok, iid_ok = instance_xml(new_unit)
    ok = requests.post(f"{live.base}/api/mobile/bulkupload/?app_id={APP}", timeout=60,
                       headers=_token(live, "amina"),
                       files={"zip_file": ("b.zip", _bulk_zip(
                           [(iid_ok, xml_ok, new_unit, {})], []), "application/zip")})
    assert ok.status_code == 204, ok.text
    assert _stored(live, iid_ok) == [(new_unit,)]


def test_single_instance_outside_the_area_names_the_unit(live: sh.LiveServer) -> None:
    outside = _uuid_of(live, BO)
    r = requests.post(f"{live.base}/api/instances/?app_id={APP}", timeout=30,
                      headers=_token(live, "amina"),
                      json=[{"id": str(uuid.uuid4()), "file": "/sdcard/x/o.xml",
                             "orgUnitId": outside}])
    assert r.status_code == 403 and "'Bo'" in r.json()["message"]
    assert "outside your area" in r.json()["message"]
    # in a list, the refused item does not keep the next one from being recorded
    ok_name = f"fv_{uuid.uuid4().hex}.xml"
    r = requests.post(f"{live.base}/api/instances/?app_id={APP}", timeout=30,
                      headers=_token(live, "amina"),
                      json=[{"id": str(uuid.uuid4()), "file": "/sdcard/x/o.xml",
                             "orgUnitId": outside},
                            {"id": str(uuid.uuid4()), "file": f"/sdcard/x/{ok_name}",
                             "orgUnitId": FACILITY}])
    assert r.status_code == 403 and r.json()["error"] == "partly_refused", r.text
    assert [x["index"] for x in r.json()["details"]["refused"]] == [1]
    with live.registry.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM iaso_upload WHERE file_name = :f"),
                            {"f": f"amina/{ok_name}"}).scalar_one() == 1


def test_change_request_uuid_of_another_user_is_a_conflict(live: sh.LiveServer) -> None:
    shared = str(uuid.uuid4())
    amina = {"uuid": shared, "org_unit_id": FACILITY, "new_name": "Allen Town (secret)",
             "new_location": {"latitude": 8.41, "longitude": -13.21, "altitude": 0}}
    first = requests.post(f"{live.base}/api/orgunits/changes/?app_id={APP}", json=amina,
                          headers=_token(live, "amina"), timeout=30)
    assert first.status_code == 201, first.text
    bo_unit = _uuid_of(live, BO)
    bob = requests.post(f"{live.base}/api/orgunits/changes/?app_id={APP}", timeout=30,
                        headers=_token(live, "bob"),
                        json={"uuid": shared, "org_unit_id": bo_unit, "new_name": "Bo (bob)"})
    assert bob.status_code == 409, bob.text
    assert "another user" in bob.json()["message"] and "new uuid" in bob.json()["message"]
    assert "secret" not in bob.text and "8.41" not in bob.text
    assert cr.list_change_requests(live.registry, created_by="bob")["count"] == 0
    # its sender's own resend is still the idempotent no-op
    again = requests.post(f"{live.base}/api/orgunits/changes/?app_id={APP}", json=amina,
                          headers=_token(live, "amina"), timeout=30)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]


# --- #6: forms add --org-unit-field --------------------------------------------------------


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def _media_form(folder: Path) -> Path:
    """facility_visit-like XLSForm whose image question shows ``logo.png``."""
    from openpyxl import Workbook

    wb = Workbook()
    survey = wb.active
    survey.title = "survey"
    survey.append(["type", "name", "label", "media::image", "choice_filter"])
    survey.append(["select_one_from_file orgunits.csv", "district", "District", "", "level=2"])
    survey.append(["select_one_from_file orgunits.csv", "facility", "Facility", "",
                   "parent=${district}"])
    survey.append(["text", "status", "Vaccination status", "", ""])
    survey.append(["image", "photo", "Card photo", "logo.png", ""])
    settings = wb.create_sheet("settings")
    settings.append(["form_id", "form_title", "version"])
    settings.append(["vacc", "Vaccination", "1"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vacc.xlsx"
    wb.save(path)
    return path


def _field(reg: str) -> Any:
    with Registry.open(reg) as r, r.read() as conn:
        return conn.execute(text("SELECT org_unit_field FROM form WHERE form_id = 'vacc'")
                            ).scalar()


def test_forms_add_refuses_an_org_unit_field_the_form_does_not_have(tmp_path: Path) -> None:
    reg = str(tmp_path / "r.gpkg")
    Registry.create(reg).close()
    form = _media_form(tmp_path / "forms")
    media = tmp_path / "media"
    media.mkdir()
    (media / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 50)

    code, out = _run("forms", "add", reg, str(form), "--org-unit-field", "nosuchq")
    assert code == 2, out
    assert "'nosuchq' is not a question of this form" in out
    assert "'district', 'facility'" in out  # the candidates on the org-unit list
    assert _field(reg) is None  # nothing stored

    code, out = _run("forms", "add", reg, str(form), "--org-unit-field", "facility",
                     "--media", str(media))
    assert code == 0 and out.startswith("Added form vacc") and "Warning" not in out, out
    # a typo on a re-add is refused too: the stored setting stays
    code, out = _run("forms", "add", reg, str(form), "--org-unit-field", "facilty")
    assert code == 2 and "'facilty' is not a question" in out
    assert _field(reg) == "facility"
    # the same form again: unchanged, and logo.png is held already (no false warning)
    code, out = _run("forms", "add", reg, str(form))
    assert code == 0 and out.startswith("Unchanged: form vacc") and "Warning" not in out, out
    # a changed setting is said
    code, out = _run("forms", "add", reg, str(form), "--org-unit-field", "district")
    assert code == 0 and out.startswith("Updated: form vacc"), out
    assert "'district' (was 'facility')" in out and _field(reg) == "district"
    code, out = _run("forms", "add", reg, str(form), "--json", "--org-unit-field", "district")
    data = json.loads(out)
    assert data["org_unit_field"] == "district" and data["org_unit_field_changed"] is False
    assert data["missing_media"] == []


def test_forms_add_warns_when_a_unit_form_has_no_org_unit_question(tmp_path: Path) -> None:
    reg = str(tmp_path / "r.gpkg")
    Registry.create(reg).close()
    code, out = _run("forms", "add", reg, str(_media_form(tmp_path / "forms")))
    assert code == 0 and "picks units from orgunits.csv (district, facility)" in out, out
    assert "--org-unit-field" in out
    # the missing media are still named when the stored version does not hold them
    assert "media not supplied: logo.png" in out
