"""Re-importing a corrected list into an existing draft: an upsert by ref with a report.

The ministry sends the same DHIS2 export again with a renamed facility, a moved
chiefdom, a new health post and a corrected point. The GIS officer first looks at a
dry run, then imports; everything else stays as it was, validation statuses included.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from shapely import Point, Polygon

from storage import tree, units
from storage.audit import history
from storage.bulk import UnitRecord
from storage.errors import CycleError, InvalidInput
from storage.registry import Registry
from sync.dhis2_json import read_files
from sync.exchange import ImportPayload
from sync.importing import import_payload
from tests.conftest import DEMO_DATA, DEMO_FILES

FACILITY = "kbGqmM6ZWWV"  # Allen Town Health Post
CHIEFDOM = "vWbkYPRmKyS"  # Baoma, in Bo
BO, KENEMA = "O6uvpzGd5pu", "kJq2mPyFEHo"


def corrected_pages(tmp_path: Path) -> list[Path]:
    pages = []
    for path in DEMO_FILES:
        doc: Any = json.loads(path.read_text())
        if isinstance(doc, dict) and "organisationUnits" in doc and doc["pager"]["page"] == 1:
            doc = copy.deepcopy(doc)
            for unit in doc["organisationUnits"]:
                if unit["id"] == FACILITY:
                    unit["name"] = "Allen Town Health Centre"
                    unit["geometry"] = {"type": "Point", "coordinates": [-13.1551, 8.4177]}
                if unit["id"] == CHIEFDOM:
                    unit["path"] = f"/ImspTQPwCqd/{KENEMA}/{CHIEFDOM}"
            doc["organisationUnits"].append({
                "id": "NEWHP000001", "name": "Baoma New Health Post", "level": 4,
                "path": f"/ImspTQPwCqd/{KENEMA}/{CHIEFDOM}/NEWHP000001",
                "geometry": {"type": "Point", "coordinates": [-11.9, 7.8]}})
        out = tmp_path / path.name
        out.write_text(json.dumps(doc))
        pages.append(out)
    return pages


def test_dry_run_shows_the_changes_and_writes_nothing(demo: Registry, tmp_path: Path) -> None:
    before = tree.counts(demo, "SL")
    report = import_payload(demo, read_files(corrected_pages(tmp_path)), source="SL", number=1,
                            dry_run=True)
    assert report["dry_run"] and (report["created"], report["updated"]) == (1, 2)
    assert report["unchanged"] == 1332 - 2
    rows = {r["ref"]: r for r in report["rows"]}
    assert rows[FACILITY]["changes"]["name"] == ["Allen Town Health Post",
                                                  "Allen Town Health Centre"]
    assert "location" in rows[FACILITY]["changes"]
    assert rows[CHIEFDOM]["changes"]["parent_ref"] == [BO, KENEMA]
    assert rows["NEWHP000001"]["status"] == "created"
    assert tree.counts(demo, "SL") == before
    assert units.get_unit(demo, "SL", FACILITY)["name"] == "Allen Town Health Post"


def test_upsert_applies_only_the_differences(demo: Registry, tmp_path: Path) -> None:
    units.edit_unit(demo, "SL", FACILITY, validation_status="new")
    baoma_subtree = {u["uuid"] for u in tree.subtree(demo, "SL", CHIEFDOM)}
    report = import_payload(demo, read_files(corrected_pages(tmp_path)), source="SL", number=1,
                            origin="import")
    assert (report["created"], report["updated"], report["rejected"]) == (1, 2, 0)
    facility = units.get_unit(demo, "SL", FACILITY)
    assert facility["name"] == "Allen Town Health Centre"
    assert facility["location"] == [-13.1551, 8.4177]
    assert facility["validation_status"] == "new"  # kept: the file does not speak of it
    assert facility["groups"]  # memberships untouched by a file that does not list groups
    moved = {u["uuid"] for u in tree.subtree(demo, "SL", KENEMA)}
    assert baoma_subtree <= moved  # the whole chiefdom moved, with its facilities
    new = units.get_unit(demo, "SL", "NEWHP000001")
    assert new["parent_ref"] == CHIEFDOM and new["validation_status"] == "new"
    assert new["type"] == "Facility" and new["depth"] == 4
    log = history(demo, unit=facility["uuid"], limit=1)[0]
    assert log["origin"] == "import" and set(log["changes"]) == {"name", "location"}
    again = import_payload(demo, read_files(corrected_pages(tmp_path)), source="SL", number=1)
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 1333)


def test_set_status_on_reimport(demo: Registry, tmp_path: Path) -> None:
    report = import_payload(demo, read_files(corrected_pages(tmp_path)), source="SL", number=1,
                            set_status="valid")
    assert report["updated"] == 2  # the status already was 'valid' for the others
    assert units.get_unit(demo, "SL", "NEWHP000001")["validation_status"] == "valid"


def test_reimport_refuses_bad_rows_and_keeps_the_version(demo: Registry) -> None:
    before = tree.counts(demo, "SL")
    payload = ImportPayload(units=[
        UnitRecord(name="Fine", source_ref="OK1", parent_ref=BO, where="f.csv, row 2"),
        UnitRecord(name="Lost", source_ref="OK2", parent_ref="nowhere", where="f.csv, row 3"),
        UnitRecord(name="Far", source_ref="OK3", parent_ref=BO, location=Point(10, 200),
                   where="f.csv, row 4"),
        UnitRecord(name="Bow tie", source_ref="OK4", parent_ref=BO, where="f.csv, row 5",
                   territory=Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])),
        UnitRecord(name=" ", source_ref="OK5", where="f.csv, row 6"),
    ])
    with pytest.raises(InvalidInput) as caught:
        import_payload(demo, payload, source="SL", number=1)
    message = caught.value.message
    assert "4 row(s) rejected; nothing was imported" in message
    assert "f.csv, row 3: parent 'nowhere' is neither in the file nor in SL v1" in message
    assert "f.csv, row 4: field 'latitude' is 200" in message
    assert "f.csv, row 5: field 'territory' is not a valid polygon (Self-intersection" in message
    assert "f.csv, row 6: field 'name' is missing or empty" in message
    assert tree.counts(demo, "SL") == before


def test_skip_invalid_imports_the_good_rows_and_reports_the_rest(demo: Registry) -> None:
    payload = ImportPayload(units=[
        UnitRecord(name="Fine", source_ref="OK1", parent_ref=BO, where="row 2"),
        UnitRecord(name="Far", source_ref="OK3", parent_ref=BO, location=Point(10, 200),
                   where="row 3"),
        UnitRecord(name="Bow tie", source_ref="OK4", parent_ref=BO, where="row 4",
                   territory=Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])),
    ])
    report = import_payload(demo, payload, source="SL", number=1, skip_invalid=True,
                            fix_geometry=True)
    assert (report["created"], report["rejected"]) == (2, 1)
    assert units.get_unit(demo, "SL", "OK4")["has_territory"]  # repaired with --fix-geometry


def test_a_cycle_in_the_file_is_refused(demo: Registry) -> None:
    payload = ImportPayload(units=[
        UnitRecord(name="A", source_ref="A", parent_ref="B", where="row 2"),
        UnitRecord(name="B", source_ref="B", parent_ref="A", where="row 3"),
    ])
    with pytest.raises(CycleError):
        import_payload(demo, payload, source="SL", number=1)


def test_importing_into_a_published_version_is_refused(demo: Registry) -> None:
    from storage.errors import PublishedVersionError
    from storage.versions import publish_version

    publish_version(demo, "SL", 1)
    with pytest.raises(PublishedVersionError, match="version new"):
        import_payload(demo, ImportPayload(units=[]), source="SL", number=1)


def test_new_version_import_of_the_demo_keeps_the_invalid_dhis2_polygon(
        registry: Registry) -> None:
    report = import_payload(registry, read_files(DEMO_FILES), source="SL")
    assert report["created"] == 1332 and report["loaded"]["territories"] == 165
    assert any("Sittia" in w or "g8DdBm7EmUt" in w for w in report["warnings"])
    assert (DEMO_DATA / "README.md").exists()


def test_our_own_export_reimported_into_the_same_version_changes_nothing(
        demo: Registry, tmp_path: Path) -> None:
    """Units without a ref travel as georeg:<uuid> and are matched back by uuid."""
    from sync.exchange import ReadOptions, read_version
    from sync.formats import iaso_gpkg

    units.add_unit(demo, "SL", name="No-ref CHP", parent=CHIEFDOM, type="Facility",
                   location=Point(-11.8, 7.9))
    out = tmp_path / "export.gpkg"
    iaso_gpkg.write_file(read_version(demo, "SL"), out, ReadOptions())
    report = import_payload(demo, iaso_gpkg.read_file(out, ReadOptions()), source="SL", number=1)
    assert (report["created"], report["updated"], report["rejected"]) == (0, 0, 0)
    assert report["unchanged"] == 1333


def test_an_import_into_a_new_version_is_one_log_entry_and_history_still_shows_each_unit(
        registry: Registry) -> None:
    """The import is logged as one 'version import' row (its units' values are the rows
    just written); a unit's history still starts with what it was when imported, then
    each later edit — and a unit added afterwards has its own insert row instead."""
    from sqlalchemy import text

    report = import_payload(registry, read_files(DEMO_FILES), source="SL")
    vid = report["version"]["id"]
    with registry.read() as conn:
        rows = conn.execute(text(
            "SELECT entity, op, after FROM change_log WHERE version_id = :v ORDER BY fid"),
            {"v": vid}).all()
    assert [(r.entity, r.op) for r in rows] == [("version", "import")]
    counts = json.loads(rows[0].after) if isinstance(rows[0].after, str) else rows[0].after
    assert (counts["units"], counts["territories"]) == (1332, 165)

    facility = units.get_unit(registry, "SL", FACILITY)
    assert history(registry, unit=facility["uuid"])[0]["changes"]["name"] == [
        None, "Allen Town Health Post"]
    units.edit_unit(registry, "SL", FACILITY, name="Allen Town Health Centre")
    units.set_geometry(registry, "SL", FACILITY, location=Point(-13.1551, 8.4177))
    log = history(registry, unit=facility["uuid"])
    assert [e["op"] for e in log] == ["update", "update", "import"]
    imported = log[-1]
    assert imported["changes"]["name"] == [None, "Allen Town Health Post"]
    was = imported["changes"]["location"][1]
    assert was.startswith("POINT") and "-13.1551" not in was  # the location before the move
    assert log[1]["changes"]["name"] == ["Allen Town Health Post", "Allen Town Health Centre"]

    added = units.add_unit(registry, "SL", name="Kakua New CHP", parent=CHIEFDOM,
                           type="Facility")
    assert [e["op"] for e in history(registry, unit=added["uuid"])] == ["insert"]
