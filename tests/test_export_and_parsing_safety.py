"""Exports that cannot destroy data, imports that cannot be half-reported, and values
read the one way the file means them (review of the importers and exporters).

Everything runs the real command line on real files and registries.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from click.testing import CliRunner, Result

from georeg.cli import main
from sync.exchange import ReadOptions
from sync.formats import tabular
from sync.geojson_geometry import read_single_geometry

BASE_CSV = ("ref,name,parent_ref,groups,latitude,longitude,wkt\n"
            "C1,Country,,,,,\"POLYGON ((0 0, 1 0, 1 1, 0 1, 0 0))\"\n"
            "D1,District One,C1,,,,\n"
            "F1,Facility One,D1,G1;G2,8.5,-12.1,\n")


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def err(result: Result) -> str:
    """The error message, on one line (the terminal width wraps it)."""
    return " ".join(result.stderr.split())


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def reg(tmp_path: Path) -> Path:
    """A GeoPackage registry with source Base v1: C1 > D1 > F1 (groups G1, G2 on F1)."""
    path = tmp_path / "reg.gpkg"
    ok("init", path)
    ok("import", path, write(tmp_path / "base.csv", BASE_CSV), "-s", "Base")
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unit_count(reg: Path) -> int:
    conn = sqlite3.connect(reg)
    try:
        return int(conn.execute("SELECT count(*) FROM org_unit").fetchone()[0])
    finally:
        conn.close()


# --- #1: export --force -------------------------------------------------------------------


def test_export_onto_its_own_registry_is_refused_and_the_registry_kept(reg: Path) -> None:
    before = digest(reg)
    link = reg.parent / "link.gpkg"
    link.symlink_to(reg)
    for out in (reg, reg.parent / "sub" / ".." / reg.name, link):
        (reg.parent / "sub").mkdir(exist_ok=True)
        result = cli("export", reg, out, "-s", "Base", "--force")
        assert result.exit_code == 2, result.output
        assert "is the registry being exported" in err(result)
    result = cli("export", reg, f"{reg}-wal", "-s", "Base", "--format", "geojson", "--force")
    assert result.exit_code == 2
    assert "reg.gpkg-wal is the registry being exported" in err(result)
    assert reg.exists() and digest(reg) == before and unit_count(reg) == 3


def test_export_does_not_overwrite_another_registry(reg: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.gpkg"
    ok("init", other)
    before = digest(other)
    result = cli("export", reg, other, "-s", "Base", "--force")
    assert result.exit_code == 2 and "is a Georeg registry" in err(result)
    assert digest(other) == before


def test_a_failed_export_keeps_the_previous_file(reg: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gpkg"
    ok("export", reg, out, "-s", "Base")
    before = digest(out)
    # an unknown source: refused before anything is written
    result = cli("export", reg, out, "-s", "Typo", "--force")
    assert result.exit_code == 4, result.output
    assert digest(out) == before
    # a group ref Iaso's comma-separated list cannot hold: refused by the writer
    write(tmp_path / "comma.csv", 'ref,name,groups\nA,Alpha,"a,b"\n')
    ok("import", reg, tmp_path / "comma.csv", "-s", "Comma")
    result = cli("export", reg, out, "-s", "Comma", "--force")
    assert result.exit_code == 2 and "contains a comma" in err(result)
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if "part" in p.name) == []


def test_shapefile_export_replaces_its_files_and_leaves_no_stale_ones(
        reg: Path, tmp_path: Path) -> None:
    out = tmp_path / "sl.shp"
    first = ok("export", reg, out, "-s", "Base")
    assert first["files"] == [str(out), str(tmp_path / "sl_locations.shp")]
    assert (tmp_path / "sl_locations.dbf").exists()
    # a version with points only: sl.shp holds the locations, sl_locations.* must go
    write(tmp_path / "pts.csv", "ref,name,latitude,longitude\nP,Point,8.5,-12.1\n")
    ok("import", reg, tmp_path / "pts.csv", "-s", "Pts")
    second = ok("export", reg, out, "-s", "Pts", "--force")
    assert second["files"] == [str(out)]
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("sl", ".sl")))
    assert names == ["sl.cpg", "sl.dbf", "sl.prj", "sl.shp", "sl.shx"]


# --- #9: --report ------------------------------------------------------------------------


def test_an_unwritable_report_path_is_refused_before_importing(reg: Path,
                                                              tmp_path: Path) -> None:
    csv_path = write(tmp_path / "more.csv", "ref,name\nX,Extra\n")
    result = cli("import", reg, csv_path, "-s", "R2", "--report", tmp_path / "no" / "r.json")
    assert result.exit_code == 2, result.output
    assert "does not exist; nothing was imported" in err(result)
    assert cli("import", reg, csv_path, "-s", "R2", "--report", tmp_path).exit_code == 2
    assert cli("versions", reg, "-s", "R2").exit_code != 0  # no source R2: nothing imported
    assert unit_count(reg) == 3


def test_a_report_failing_after_the_commit_says_the_import_was_committed(
        reg: Path, tmp_path: Path) -> None:
    report = Path("/dev/full")  # writable, but every write fails (no space left)
    if not (report.exists() and os.access(report, os.W_OK)):
        pytest.skip("needs /dev/full")
    csv_path = write(tmp_path / "more.csv", "ref,name\nX,Extra\n")
    result = cli("import", reg, csv_path, "-s", "R2", "--report", report, "--json")
    assert result.exit_code == 0, result.output  # a retry would import the file twice
    assert "the import was committed" in json.loads(result.stdout)["warnings"][0]
    assert "do not import the file again" in err(result)
    assert unit_count(reg) == 4


# --- #6: unknown geometry types ----------------------------------------------------------


def test_an_unknown_geometry_type_is_an_error_naming_the_feature(reg: Path,
                                                                 tmp_path: Path) -> None:
    bogus = {"type": "Bogus", "coordinates": [1, 2]}
    gj = tmp_path / "bad.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"ref": "A", "name": "Alpha"},
         "geometry": {"type": "Point", "coordinates": [-12, 8]}},
        {"type": "Feature", "properties": {"ref": "B", "name": "Beta", "parent_ref": "A"},
         "geometry": bogus}]}))
    d2 = tmp_path / "d2.json"
    d2.write_text(json.dumps({"organisationUnits": [
        {"id": "AAAAAAAAAA1", "name": "A", "level": 1, "path": "/AAAAAAAAAA1"},
        {"id": "BBBBBBBBBB1", "name": "B", "level": 2, "path": "/AAAAAAAAAA1/BBBBBBBBBB1",
         "parent": {"id": "AAAAAAAAAA1"}, "geometry": bogus}]}))
    result = cli("import", reg, gj, "-s", "X")
    assert result.exit_code == 2, result.output
    flat = err(result)
    assert "bad.geojson, feature 2 (ref B): field 'geometry' is not valid GeoJSON" in flat
    assert "Unknown geometry type: 'bogus'" in flat
    # DHIS2's own data: the unit comes without the shape, named in a warning (DHIS2's apps
    # still show it; one bad shape must not stop the pull of a whole country)
    result = cli("import", reg, d2, "-s", "X")
    assert result.exit_code == 0, result.output
    assert ("DHIS2 org unit 'B' (id BBBBBBBBBB1, d2.json, item 2): its geometry cannot be "
            "read (not valid GeoJSON: Unknown geometry type: 'bogus')") in result.output, \
        result.output
    one = tmp_path / "one.geojson"
    one.write_text(json.dumps(bogus))
    with pytest.raises(Exception, match="one.geojson: not a valid GeoJSON geometry"):
        read_single_geometry(one)


# --- #10: dates --------------------------------------------------------------------------


def dates_of(reg: Path, source: str) -> dict[str, tuple[str | None, str | None]]:
    conn = sqlite3.connect(reg)
    try:
        rows = conn.execute(
            "SELECT u.source_ref, u.opening_date, u.closed_date FROM org_unit u "
            "JOIN source_version v ON v.fid = u.version_id "
            "JOIN data_source s ON s.fid = v.source_id "
            "WHERE s.name = ?", (source,)).fetchall()
    finally:
        conn.close()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_iso_dates_are_normalised_and_broken_ones_refused(reg: Path, tmp_path: Path) -> None:
    write(tmp_path / "iso.csv", "ref,name,opening_date,closed_date\n"
          "A,a,2020-W01-1,\nB,b,2020-01-01T10:00:00,2021-03-04T23:59:59Z\nC,c,20200101,\n")
    ok("import", reg, tmp_path / "iso.csv", "-s", "Iso")
    assert dates_of(reg, "Iso") == {"A": ("2019-12-30", None),
                                    "B": ("2020-01-01", "2021-03-04"),
                                    "C": ("2020-01-01", None)}
    write(tmp_path / "junk.csv", "ref,name,opening_date\nK,k,2020-01-01garbage\n")
    result = cli("import", reg, tmp_path / "junk.csv", "-s", "Junk")
    assert result.exit_code == 2
    assert ("junk.csv, row 2: field 'opening_date': '2020-01-01garbage' is not a date "
            "(expected YYYY-MM-DD)") in err(result)


def test_slash_dates_are_read_in_the_order_the_file_shows(reg: Path, tmp_path: Path) -> None:
    head = "ref,name,opening_date,closed_date\n"
    write(tmp_path / "alone.csv", head + "A,a,01/02/2003,\nB,b,05/05/2005,\n")
    result = cli("import", reg, tmp_path / "alone.csv", "-s", "Alone")
    assert result.exit_code == 2
    flat = err(result)
    assert "can be read day/month or month/day" in flat and "YYYY-MM-DD" in flat
    assert "alone.csv, row 2: field 'opening_date' is '01/02/2003'" in flat
    assert "row 3" not in flat  # 05/05/2005 reads one way

    write(tmp_path / "dmy.csv", head + "A,a,01/02/2003,31/12/2010\n")
    ok("import", reg, tmp_path / "dmy.csv", "-s", "DMY")
    assert dates_of(reg, "DMY") == {"A": ("2003-02-01", "2010-12-31")}
    write(tmp_path / "mdy.csv", head + "A,a,01/02/2003,12/31/2010\n")
    ok("import", reg, tmp_path / "mdy.csv", "-s", "MDY")
    assert dates_of(reg, "MDY") == {"A": ("2003-01-02", "2010-12-31")}
    write(tmp_path / "mixed.csv", head + "A,a,13/01/2003,\nB,b,01/13/2003,\n")
    result = cli("import", reg, tmp_path / "mixed.csv", "-s", "Mixed")
    assert result.exit_code == 2 and "mix day-first" in err(result)


def test_a_unit_closed_before_it_opened_is_refused(reg: Path, tmp_path: Path) -> None:
    write(tmp_path / "order.csv", "ref,name,opening_date,closed_date\n"
          "A,a,2020-01-01,2020-01-01\nD,d,2020-01-01,2019-01-01\n")
    result = cli("import", reg, tmp_path / "order.csv", "-s", "Order")
    assert result.exit_code == 2, result.output
    assert ("order.csv, row 3: field 'closed_date': 2019-01-01 is before opening_date "
            "2020-01-01") in err(result)


# --- #12: CSV formulas, UTF-16, workbooks, registries as input ----------------------------


def test_csv_export_guards_formulas_and_reads_back_the_same_values(
        reg: Path, tmp_path: Path) -> None:
    names = ["=SUM(1)", "+1", "-x", "@cmd", "'=already", "'plain", "O'Brien", "- dash"]
    features = [{"type": "Feature", "geometry": None,
                 "properties": {"ref": f"R{i}", "name": n, "code": "-12"}}
                for i, n in enumerate(names)]
    (tmp_path / "f.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                    "features": features}))
    ok("import", reg, tmp_path / "f.geojson", "-s", "F")
    out = tmp_path / "f_out.csv"
    ok("export", reg, out, "-s", "F")
    text = out.read_text(encoding="utf-8-sig")
    cells = {c for line in text.splitlines() for c in line.split(",")}
    assert {"'=SUM(1)", "'+1", "'-x", "'@cmd", "''=already", "'plain", "O'Brien",
            "'- dash", "'-12"} <= cells
    assert not any(c.startswith(("=", "+", "@")) or c.startswith("-") for c in cells)
    ok("import", reg, out, "-s", "F2")
    back = tabular.read_file(out, ReadOptions())
    assert sorted((u.name, u.code) for u in back.units) == sorted((n, "-12") for n in names)


def test_a_utf16_csv_is_read_by_its_bom(reg: Path, tmp_path: Path) -> None:
    text = "ref\tname\nA\tÉcole Saint-Joseph\n"
    for codec, bom in (("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE)):
        path = tmp_path / f"{codec}.csv"
        path.write_bytes(bom + text.encode(codec))
        got = list(tabular.read_file(path, ReadOptions()).units)
        assert [(u.source_ref, u.name) for u in got] == [("A", "École Saint-Joseph")]


def test_a_workbook_whose_first_sheet_is_notes_lists_its_sheets(tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    notes = wb.active
    notes.title = "Notes"
    notes.append(["This workbook holds facilities"])
    units = wb.create_sheet("Facilities")
    units.append(["ref", "name"])
    units.append(["A", "Alpha"])
    path = tmp_path / "multi.xlsx"
    wb.save(path)
    with pytest.raises(Exception, match=r"sheets are 'Notes', 'Facilities'.*--layer") as err:
        tabular.read_file(path, ReadOptions())
    assert "no 'name'" in str(err.value)
    got = list(tabular.read_file(path, ReadOptions(layer="Facilities")).units)
    assert [u.name for u in got] == ["Alpha"]


def test_a_registry_given_as_import_input_says_export_it_first(reg: Path,
                                                               tmp_path: Path) -> None:
    other = tmp_path / "other.gpkg"
    ok("init", other)
    result = cli("import", reg, other, "-s", "X")
    assert result.exit_code == 2
    flat = err(result)
    assert "is a Georeg registry, not a file to import" in flat and "georeg export" in flat


# --- a DHIS2 mirror's invalid polygon through a spreadsheet --------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_a_spreadsheet_export_of_the_demo_loads_back_with_keep_invalid_geometry(
        tmp_path: Path, suffix: str) -> None:
    """The demo mirrors DHIS2, whose 'Sittia' polygon is invalid and kept as DHIS2 has it.
    Exported to CSV/XLSX, edited in a spreadsheet and loaded back, the file was refused
    with only --fix-geometry (which changes the polygon the next push sends) as a way out."""
    reg, sl = tmp_path / "demo.gpkg", "Sierra Leone (DHIS2 demo)"
    ok("demo", reg)
    out = tmp_path / f"demo{suffix}"
    ok("export", reg, out, "-s", sl)
    before = digest(reg)
    refused = cli("import", reg, out, "-s", "Spreadsheet")
    assert refused.exit_code == 2 and digest(reg) == before
    assert "is not a valid polygon (Nested shells" in err(refused)
    assert "--keep-invalid-geometry to keep it as the file has it" in err(refused)
    data = ok("import", reg, out, "-s", "Spreadsheet", "--keep-invalid-geometry")
    assert data["created"] == 1332 and data["rejected"] == 0
    assert any("kept as the source has it" in w for w in data["warnings"])
    # into a draft of the demo itself (the edit-and-load-back case): nothing changes
    ok("version", "new", reg, "-s", sl, "--from", "1")
    data = ok("import", reg, out, "-s", sl, "-v", "2", "--keep-invalid-geometry")
    assert (data["created"], data["updated"], data["unchanged"]) == (0, 0, 1332)
    both = cli("import", reg, out, "-s", sl, "-v", "2", "--keep-invalid-geometry",
               "--fix-geometry")
    assert both.exit_code == 2 and "not both" in err(both)
