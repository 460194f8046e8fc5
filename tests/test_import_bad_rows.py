"""A bad row in a shapefile or a spreadsheet is that row's problem, not the file's.

A GIS officer imports a GeoPackage of districts where someone digitised one road as a
line and typed "two" in the LEVEL column of another row, or a facility list where a
latitude reads ``abc``.  QGIS and ogr2ogr skip such features and say which; Georeg used
to stop the whole file at them (the vector reader at the first line or bad level, the
CSV/XLSX reader before the import job even started), so ``--skip-invalid`` could not
skip them and the job's other problems (a swapped latitude, an unknown parent) came one
run later.  Now each such row is a rejected row like any other: without
``--skip-invalid`` the import is refused with every problem of the file listed at once
and nothing written; with it the good rows are imported (never a child of a skipped row,
which is skipped too) and the report lists the skipped ones.  Into a new version and
into an existing draft, through the command line, as the user runs it.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import openpyxl
import pyogrio
import pytest
from click.testing import CliRunner, Result
from shapely import LineString, MultiPoint, Point, box

from georeg.cli import main
from tests.test_import_safety import snapshot
from tests.test_import_skip_invalid_new_version import units_of


def georeg(*args: Any) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def flat(result: Result) -> str:
    return " ".join(result.output.split())


def write_layer(path: Path, rows: list[dict[str, Any]], geoms: list[Any]) -> Path:
    """A vector file as QGIS would save it (through GDAL), in WGS 84."""
    gdf = gpd.GeoDataFrame(rows, geometry=gpd.GeoSeries(geoms, crs="EPSG:4326"),
                           crs="EPSG:4326")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'crs' was not provided")
        pyogrio.write_dataframe(gdf, path)
    return path


def write_sheet(path: Path, rows: list[list[Any]]) -> Path:
    """A CSV, or an Excel workbook (what the officer's colleague sends)."""
    if path.suffix == ".xlsx":
        wb = openpyxl.Workbook()
        ws = wb.active
        for row in rows:
            ws.append(row)
        wb.save(path)
    else:
        with path.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)
    return path


def rejected(report: dict[str, Any]) -> dict[str, str]:
    """where → message of every rejected row of a JSON report."""
    rows = report.get("rows") or report.get("rejected") or []
    return {r["where"]: r["message"] for r in rows if r.get("status", "rejected") == "rejected"}


@pytest.fixture
def reg(location: str) -> str:
    assert georeg("init", location).exit_code == 0
    return location


# --- vector files (GDAL) ------------------------------------------------------------------

DISTRICTS = [
    {"ref": "SL", "name": "Sierra Leone", "parent_ref": None, "LEVEL": 1},
    {"ref": "BO", "name": "Bo", "parent_ref": "SL", "LEVEL": 2},
    {"ref": "RD", "name": "Bo-Kenema road", "parent_ref": "SL", "LEVEL": 2},  # a line
    {"ref": "RD1", "name": "Checkpoint on the road", "parent_ref": "RD", "LEVEL": 3},
    {"ref": "KE", "name": "Kenema", "parent_ref": "SL", "LEVEL": "two"},  # not a number
    {"ref": "KE1", "name": "Kenema town", "parent_ref": "KE", "LEVEL": 3},
    {"ref": "WA", "name": "Wells", "parent_ref": "SL", "LEVEL": 2},  # several points
    {"ref": "BO1", "name": "Bo town", "parent_ref": "BO", "LEVEL": 3},
    {"ref": "XX", "name": "Swapped", "parent_ref": "BO", "LEVEL": 3},  # the job's check
]
GEOMETRIES = [
    box(-13.3, 6.9, -10.3, 10.0), box(-12.2, 7.4, -11.4, 8.2),
    LineString([(-11.74, 7.96), (-11.19, 7.88)]), Point(-11.5, 7.9),
    box(-11.4, 7.5, -10.6, 8.4), Point(-11.19, 7.88),
    MultiPoint([(-12.0, 8.0), (-12.1, 8.1)]), Point(-11.74, 7.96), Point(7.96, -111.74),
]
#: where → a piece of the message, for every row the file's import rejects
DISTRICT_PROBLEMS = {
    "districts.gpkg, row 3": "field 'geometry' is a LineString; a unit takes a Point, a "
                             "Polygon or a MultiPolygon.",
    "districts.gpkg, row 4": "its parent 'RD' is not imported (districts.gpkg, row 3 was "
                             "rejected)",
    "districts.gpkg, row 5": "field 'LEVEL' is 'two'; expected a whole number.",
    "districts.gpkg, row 6": "its parent 'KE' is not imported (districts.gpkg, row 5 was "
                             "rejected)",
    "districts.gpkg, row 7": "field 'geometry' is a MultiPoint of 2 points; a unit takes a "
                             "Point, a Polygon or a MultiPolygon.",
    "districts.gpkg, row 9": "field 'latitude' is -111.74",
}


def test_a_geopackage_with_a_line_and_a_bad_level_is_refused_with_every_problem_listed(
        reg: str, tmp_path: Path) -> None:
    path = write_layer(tmp_path / "districts.gpkg", DISTRICTS, GEOMETRIES)
    before = snapshot(reg)
    refused = georeg("import", reg, path, "-s", "Boundaries")
    assert refused.exit_code == 2, refused.output
    out = flat(refused)
    assert "6 row(s) rejected; nothing was imported" in out
    for where, message in DISTRICT_PROBLEMS.items():
        assert f"{where}: {message}" in out, (where, out)
    assert "--skip-invalid" in out
    assert snapshot(reg) == before  # nothing written, not even an empty version


def test_skip_invalid_imports_the_good_features_and_reports_the_others(
        reg: str, tmp_path: Path) -> None:
    path = write_layer(tmp_path / "districts.gpkg", DISTRICTS, GEOMETRIES)
    report = tmp_path / "report.json"
    result = georeg("import", reg, path, "-s", "Boundaries", "--skip-invalid",
                    "--report", report, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["created"], data["rejected"]) == (3, 6)
    skipped = rejected(json.loads(report.read_text()))
    assert set(skipped) == set(DISTRICT_PROBLEMS)
    for where, message in DISTRICT_PROBLEMS.items():
        assert message in skipped[where], (where, skipped[where])
    # the good rows in their place; nothing below a skipped row became a root
    assert units_of(reg, "Boundaries") == {"SL": (None, 1), "BO": ("SL", 2),
                                           "BO1": ("BO", 3)}


def test_parent_by_location_skips_a_line_instead_of_calling_it_unplaced(
        reg: str, tmp_path: Path) -> None:
    """One file per level: the line in the district file is not 'a unit without a
    parent' (which stops the file): it is rejected with its row, the rest is placed."""
    regions = write_layer(tmp_path / "regions.shp", [{"name": "South", "ref": "S"}],
                          [box(-13.3, 6.9, -10.3, 8.5)])
    districts = write_layer(
        tmp_path / "districts.gpkg",
        [{"name": "Bo", "ref": "BO"}, {"name": "A road", "ref": "RD"},
         {"name": "Kenema", "ref": "KE"}],
        [box(-12.2, 7.4, -11.4, 8.2), LineString([(-11.7, 7.9), (-11.2, 7.8)]),
         box(-11.4, 7.5, -10.6, 8.4)])
    refused = georeg("import", reg, regions, districts, "-s", "B", "--parent-by-location")
    assert refused.exit_code == 2, refused.output
    out = flat(refused)
    assert ("1 row(s) rejected; nothing was imported: - districts.gpkg, row 2: field "
            "'geometry' is a LineString") in out
    assert "without a parent" not in out
    result = georeg("import", reg, regions, districts, "-s", "B", "--parent-by-location",
                    "--skip-invalid", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rejected"] == 1
    assert units_of(reg, "B") == {"S": (None, 1), "BO": ("S", 2), "KE": ("S", 2)}


def test_an_upsert_of_a_geopackage_with_a_line_lists_it_and_skips_it(tmp_path: Path) -> None:
    reg = str(tmp_path / "registry.gpkg")
    assert georeg("init", reg).exit_code == 0
    base = write_layer(tmp_path / "base.gpkg", DISTRICTS[:2], GEOMETRIES[:2])
    assert georeg("import", reg, base, "-s", "Boundaries").exit_code == 0
    edits = write_layer(
        tmp_path / "edits.gpkg",
        [{"ref": "BO", "name": "Bo District", "parent_ref": "SL", "LEVEL": 2},
         {"ref": "RD", "name": "A road", "parent_ref": "SL", "LEVEL": 2},
         {"ref": "KE", "name": "Kenema", "parent_ref": "SL", "LEVEL": "2nd"},
         {"ref": "NEW", "name": "New district", "parent_ref": "SL", "LEVEL": 2}],
        [box(-12.2, 7.4, -11.4, 8.2), LineString([(-11.7, 7.9), (-11.2, 7.8)]),
         box(-11.4, 7.5, -10.6, 8.4), box(-11.0, 8.5, -10.5, 9.0)])
    before = snapshot(reg)
    refused = georeg("import", reg, edits, "-s", "Boundaries", "-v", "1")
    assert refused.exit_code == 2, refused.output
    out = flat(refused)
    assert "2 row(s) rejected; nothing was imported" in out
    assert "edits.gpkg, row 2: field 'geometry' is a LineString" in out
    assert "edits.gpkg, row 3: field 'LEVEL' is '2nd'; expected a whole number." in out
    assert snapshot(reg) == before
    result = georeg("import", reg, edits, "-s", "Boundaries", "-v", "1", "--skip-invalid",
                    "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["created"], data["updated"], data["rejected"]) == (1, 1, 2)
    assert set(rejected(data)) == {"edits.gpkg, row 2", "edits.gpkg, row 3"}
    assert set(units_of(reg, "Boundaries")) == {"SL", "BO", "NEW"}


# --- CSV and XLSX -----------------------------------------------------------------------

FACILITIES = [
    ["ref", "name", "parent_ref", "latitude", "longitude"],
    ["D1", "Bo District", "", "", ""],
    ["F1", "Bo Hospital", "D1", "abc", "-11.74"],  # not a number
    ["F1a", "Bo Hospital annex", "F1", "7.96", "-11.74"],  # below it
    ["F2", "Ngolala CHC", "D1", "7.9", ""],  # a latitude without longitude
    ["F3", "Tikonko MCHP", "D1", "200", "7.9"],  # out of range: the job's check
    ["F4", "Gerihun CHP", "D1", "7.93", "-11.83"],
    ["F5", "Sumbuya CHC", "NOWHERE", "7.64", "-11.95"],  # an unknown parent
]


def facility_problems(name: str) -> dict[str, str]:
    return {
        f"{name}, row 3": "field 'latitude' is 'abc', not a number (e.g. 12.5 or 12,5).",
        f"{name}, row 4": f"its parent 'F1' is not imported ({name}, row 3 was rejected)",
        f"{name}, row 5": "field 'longitude' is empty but 'latitude' is given; give both "
                          "coordinates or neither.",
        f"{name}, row 6": "field 'latitude' is 200; a latitude must be within -90..90",
        f"{name}, row 8": "parent 'NOWHERE' not found",
    }


@pytest.mark.parametrize("name", ["facilities.csv", "facilities.xlsx"])
def test_a_spreadsheet_with_unreadable_coordinates_lists_every_problem_at_once(
        reg: str, tmp_path: Path, name: str) -> None:
    """The coordinates used to stop the file on their own, before the job's checks:
    the swapped latitude and the unknown parent came one run later."""
    path = write_sheet(tmp_path / name, FACILITIES)
    before = snapshot(reg)
    refused = georeg("import", reg, path, "-s", "Facilities")
    assert refused.exit_code == 2, refused.output
    out = flat(refused)
    assert "5 row(s) rejected; nothing was imported" in out
    for where, message in facility_problems(name).items():
        assert f"{where}: {message}" in out, (where, out)
    assert snapshot(reg) == before
    report = tmp_path / "report.json"
    result = georeg("import", reg, path, "-s", "Facilities", "--skip-invalid",
                    "--report", report, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["created"], data["rejected"]) == (2, 5)
    skipped = rejected(json.loads(report.read_text()))
    assert set(skipped) == set(facility_problems(name))
    for where, message in facility_problems(name).items():
        assert message in skipped[where], (where, skipped[where])
    assert units_of(reg, "Facilities") == {"D1": (None, 1), "F4": ("D1", 2)}


def test_an_upsert_of_a_csv_with_unreadable_coordinates(tmp_path: Path) -> None:
    reg = str(tmp_path / "registry.gpkg")
    assert georeg("init", reg).exit_code == 0
    base = write_sheet(tmp_path / "base.csv", FACILITIES[:2] + FACILITIES[6:7])
    assert georeg("import", reg, base, "-s", "Facilities").exit_code == 0
    edits = write_sheet(tmp_path / "edits.csv", [
        ["ref", "name", "parent_ref", "latitude", "longitude"],
        ["F4", "Gerihun CHP", "D1", "7,93", "N/A -11.83"],  # a typo in a known unit
        ["F6", "Jembe CHC", "D1", "7.85", "-11.62"],
        ["F7", "Baoma MCHP", "F6", "7.84", "-11.61"],
        ["F8", "Niagorehun", "D1", "", "-11.7"],
    ])
    before = snapshot(reg)
    refused = georeg("import", reg, edits, "-s", "Facilities", "-v", "1")
    assert refused.exit_code == 2, refused.output
    out = flat(refused)
    assert "2 row(s) rejected; nothing was imported" in out
    assert "edits.csv, row 2: field 'longitude' is 'N/A -11.83', not a number" in out
    assert ("edits.csv, row 5: field 'latitude' is empty but 'longitude' is given; give "
            "both coordinates or neither.") in out
    assert snapshot(reg) == before
    result = georeg("import", reg, edits, "-s", "Facilities", "-v", "1", "--skip-invalid",
                    "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["created"], data["rejected"]) == (2, 2)
    assert set(rejected(data)) == {"edits.csv, row 2", "edits.csv, row 5"}
    assert units_of(reg, "Facilities") == {"D1": (None, 1), "F4": ("D1", 2),
                                           "F6": ("D1", 2), "F7": ("F6", 3)}
