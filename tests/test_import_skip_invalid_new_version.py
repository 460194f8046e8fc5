"""Importing into a NEW version: every problem is found, and --skip-invalid skips it.

A ref used twice, a parent that is not in the file, a cycle of parent refs, a cell
that is not WKT, a geometry that is not GeoJSON: the bulk loader used to stop at the
first one, so ``--skip-invalid`` could not skip it and the user saw one problem per
run.  Now every such row is listed (one error, the registry left exactly as it was),
and ``--skip-invalid`` imports the rest — never a child of a skipped row as a root.
Also: control characters inside extra fields are refused at import, as in names.
Through the command line, as a user runs it, on every backend.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from georeg.cli import main
from storage.registry import Registry
from tests.test_import_safety import snapshot

BAD_CSV = """ref,name,parent_ref,latitude,longitude,wkt
R,Root,,,,
A,Alpha,R,8,-12,
B,Beta,R,8.1,-12,
B,Beta again,R,8.2,-12,
C,Below the twice-used B,B,8.3,-12,
D,Orphan,NOPE,8.4,-12,
E,Below the orphan,D,8.5,-12,
X,Cycle X,Y,8.6,-12,
Y,Cycle Y,X,8.7,-12,
Z,Below the cycle,X,8.8,-12,
W,Bad WKT,R,,,POLYGON((0 0
V,Below the bad WKT,W,8.9,-12,
G,Good,A,9,-12,
"""

#: row -> a piece of its message
EXPECTED = {
    "f.csv, row 4": "source ref 'B' is used twice (also by f.csv, row 5)",
    "f.csv, row 5": "source ref 'B' is used twice (also by f.csv, row 4)",
    "f.csv, row 6": "its parent 'B' is not imported",
    "f.csv, row 7": "parent 'NOPE' not found",
    "f.csv, row 8": "its parent 'D' is not imported (f.csv, row 7 was rejected)",
    "f.csv, row 9": "the parent refs form a cycle",
    "f.csv, row 10": "the parent refs form a cycle",
    "f.csv, row 11": "its parent 'X' is not imported",
    "f.csv, row 12": "field 'wkt' is not valid WKT",
    "f.csv, row 13": "its parent 'W' is not imported (f.csv, row 12 was rejected)",
}


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args])


def flat(result: Any) -> str:
    return " ".join(result.output.split())


def units_of(location: str, source: str = "S") -> dict[str, tuple[str | None, int]]:
    """ref -> (parent ref, depth) of the source's only version."""
    with Registry.open(location) as reg, reg.read() as conn:
        rows = conn.execute(text(
            "SELECT u.source_ref, p.source_ref, u.depth, u.path, u.unit_key FROM org_unit u "
            "JOIN source_version v ON v.fid = u.version_id JOIN data_source s ON s.fid = v.source_id "
            "LEFT JOIN org_unit p ON p.version_id = u.version_id AND p.unit_key = u.parent_key "
            "WHERE s.name = :s"), {"s": source}).all()
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture
def reg(location: str) -> str:
    assert cli("init", location).exit_code == 0
    return location


def test_every_problem_is_listed_and_nothing_is_written(reg: str, tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text(BAD_CSV.replace("W,Bad WKT,R,,,POLYGON((0 0", "W,Fine WKT,R,,,POINT(1 2)"))
    before = snapshot(reg)
    result = cli("import", reg, path, "-s", "S")
    # a cycle among the problems: a conflict (exit 5), as before
    assert result.exit_code == 5, result.output
    out = flat(result)
    assert "8 row(s) rejected (2 units are their own ancestors" in out
    assert "nothing was imported" in out and "Traceback" not in out
    for where, message in EXPECTED.items():
        if where not in ("f.csv, row 12", "f.csv, row 13"):
            assert f"{where}: {message}" in out, (where, out)
    assert "row 12" not in out and "row 13" not in out
    assert snapshot(reg) == before
    # a row that fails its own checks (here: not WKT) no longer stops the reading: it is
    # listed in the same round as the tree's problems (and the rows below it with it)
    path.write_text(BAD_CSV)
    result = cli("import", reg, path, "-s", "S")
    assert result.exit_code == 5, result.output
    out = flat(result)
    assert "10 row(s) rejected" in out
    for where, message in EXPECTED.items():
        assert f"{where}: {message}" in out, (where, out)
    assert snapshot(reg) == before  # no half version: exactly as it was


def test_skip_invalid_imports_the_rest_and_reports_every_skipped_row(
        reg: str, tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text(BAD_CSV)
    result = cli("import", reg, path, "-s", "S", "--skip-invalid", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["created"], data["rejected"]) == (3, 10)
    rejected = {r["where"]: r for r in data["rows"] if r["status"] == "rejected"}
    assert set(rejected) == set(EXPECTED)
    for where, message in EXPECTED.items():
        assert message in rejected[where]["message"]
        assert rejected[where]["ref"]
    assert data["loaded"]["units"] == 3 and data["loaded"]["locations"] == 2
    # the good rows in their place; nothing below a skipped row became a root
    assert units_of(reg) == {"R": (None, 1), "A": ("R", 2), "G": ("A", 3)}
    assert cli("check", reg, "-s", "S").exit_code in (0, 1)


def test_skip_invalid_with_no_valid_row_is_an_error_not_an_empty_draft(
        reg: str, tmp_path: Path) -> None:
    """A district file whose parents are in another file: every row refers to a parent
    that is not there.  Before, each try exited 0 and left one more empty draft."""
    path = tmp_path / "districts.csv"
    path.write_text("ref,name,parent_ref\nD1,Bo,SL\nD2,Kenema,SL\nD3,Kailahun,SL\n")
    before = snapshot(reg)
    for _attempt in range(2):
        result = cli("import", reg, path, "-s", "Districts", "--skip-invalid")
        assert result.exit_code == 2, result.output
        out = flat(result)
        assert "All 3 row(s) rejected: no row to import" in out, out
        assert "nothing was imported" in out and "districts.csv, row 2: " in out
        assert "parent 'SL' not found" in out
        assert snapshot(reg) == before  # no empty draft, no new source
    # into an existing draft: the same (nothing was written there either)
    country = tmp_path / "country.csv"
    country.write_text("ref,name,parent_ref\nSL,Sierra Leone,\n")
    assert cli("import", reg, country, "-s", "Districts").exit_code == 0
    nowhere = tmp_path / "nowhere.csv"
    nowhere.write_text("ref,name,parent_ref\nD9,Nowhere,NOPE\n")
    result = cli("import", reg, nowhere, "-s", "Districts", "-v", "1", "--skip-invalid")
    assert result.exit_code == 2 and "All 1 row(s) rejected" in flat(result), result.output
    assert set(units_of(reg, "Districts")) == {"SL"}


def test_a_ref_used_again_many_rows_later_skips_both_and_all_below(
        location: str, tmp_path: Path) -> None:
    """The first row was written batches earlier (the fast path writes as it goes):
    it is taken out again, with the rows already written under it."""
    assert cli("init", location).exit_code == 0
    lines = ["ref,name,parent_ref,latitude,longitude", "ROOT,Root,,,", "D1,District,ROOT,,"]
    lines += [f"F{i},Facility {i},D1,{8 + i / 10000},-12" for i in range(6000)]
    lines += ["D2,District 2,ROOT,,", "K,Kept,D2,8,-11"]
    lines += ["D1,District again,ROOT,,", "L,Late child of D1,D1,8,-11"]
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    before = snapshot(location)
    refused = cli("import", location, path, "-s", "S")
    assert refused.exit_code == 2, refused.output
    out = flat(refused)
    assert "6003 row(s) rejected" in out
    assert "big.csv, row 3: source ref 'D1' is used twice (also by big.csv, row 6006)" in out
    assert "… and 5953 more" in out
    assert snapshot(location) == before
    result = cli("import", location, path, "-s", "S", "--skip-invalid", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["created"], data["rejected"]) == (3, 6003)
    assert data["loaded"]["locations"] == 1
    assert units_of(location) == {"ROOT": (None, 1), "D2": ("ROOT", 2), "K": ("D2", 3)}
    if location.endswith(".gpkg"):  # the R-tree holds the units kept, and only them
        db = sqlite3.connect(location)
        try:
            assert db.execute("SELECT count(*) FROM rtree_org_unit_location").fetchone() == (1,)
            check = db.execute("SELECT rtreecheck('rtree_org_unit_location')").fetchone()
            assert check == ("ok",)
        finally:
            db.close()
    # the version is usable: a later import into it (an upsert) works
    more = tmp_path / "more.csv"
    more.write_text("ref,name,parent_ref\nN,New,K\n")
    assert cli("import", location, more, "-s", "S", "-v", "1").exit_code == 0


def test_geojson_bad_geometry_uuid_twice_and_rows_rejected_by_the_checks(
        reg: str, tmp_path: Path) -> None:
    uid = "0190a000-0000-7000-8000-000000000001"

    def feat(ref: str, parent: str | None, geometry: Any = None, **props: Any) -> Any:
        return {"type": "Feature", "geometry": geometry,
                "properties": {"ref": ref, "name": f"Unit {ref}", "parent_ref": parent,
                               **props}}

    point = {"type": "Point", "coordinates": [-12, 8]}
    features = [
        feat("R", None),
        feat("A", "R", {"type": "Bogus", "coordinates": [1, 2]}),
        feat("A1", "A", point),  # below the bad geometry
        feat("B", "R", point, uuid=uid),
        feat("C", "R", point, uuid=uid),  # the same uuid
        feat("L", "R", {"type": "Point", "coordinates": [-12, 200]}),  # latitude
        feat("L1", "L", point),  # below a row the job's checks rejected
        feat("L", "R", point),  # the ref of a rejected row: which is right?
        feat("E", "R", point, extra_fields="not an object"),
        feat("OK", "R", point),
    ]
    path = tmp_path / "f.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    before = snapshot(reg)
    refused = cli("import", reg, path, "-s", "S")
    assert refused.exit_code == 2, refused.output
    out = flat(refused)
    assert "8 row(s) rejected" in out  # the rows' own problems and the tree's, at once
    for message in ("f.geojson, feature 2 (ref A): field 'geometry' is not valid GeoJSON",
                    "f.geojson, feature 3 (ref A1): its parent 'A' is not imported",
                    "f.geojson, feature 6 (ref L): field 'latitude' is 200",
                    "f.geojson, feature 9 (ref E): field 'extra_fields' must be a JSON object"):
        assert message in out, (message, out)
    assert snapshot(reg) == before
    result = cli("import", reg, path, "-s", "S", "--skip-invalid", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["created"], data["rejected"]) == (2, 8)
    out = " ".join(r["message"] for r in data["rows"] if r["status"] == "rejected")
    for message in ("f.geojson, feature 2 (ref A): field 'geometry' is not valid GeoJSON",
                    "f.geojson, feature 3 (ref A1): its parent 'A' is not imported",
                    f"f.geojson, feature 4 (ref B): uuid '{uid}' is used twice",
                    f"f.geojson, feature 5 (ref C): uuid '{uid}' is used twice",
                    "f.geojson, feature 6 (ref L): field 'latitude' is 200",
                    "f.geojson, feature 7 (ref L1): its parent 'L' is not imported",
                    "f.geojson, feature 8 (ref L): source ref 'L' is used twice (also by "
                    "f.geojson, feature 6 (ref L), rejected)",
                    "f.geojson, feature 9 (ref E): field 'extra_fields' must be a JSON object"):
        assert message in out, (message, out)
    assert units_of(reg) == {"R": (None, 1), "OK": ("R", 2)}


def test_many_problems_show_the_first_fifty_and_the_count(reg: str, tmp_path: Path) -> None:
    lines = ["ref,name,parent_ref"] + [f"U{i},Unit {i},MISSING{i}" for i in range(120)]
    path = tmp_path / "f.csv"
    path.write_text("\n".join(lines) + "\n")
    report = tmp_path / "report.json"
    result = cli("import", reg, path, "-s", "S", "--report", report)
    assert result.exit_code == 2, result.output
    out = flat(result)
    assert "120 row(s) rejected" in out and "… and 70 more (listed by --report FILE)" in out
    rows = json.loads(report.read_text())["rejected"]
    assert [r["where"] for r in rows] == [f"f.csv, row {n}" for n in range(2, 122)]
    assert "f.csv, row 51: parent 'MISSING49' not found" in out
    assert "f.csv, row 52:" not in out


@pytest.mark.parametrize("char, what", [("\x00", "a NUL character"),
                                        ("\x1b", "the control character U+001B (escape)")])
def test_control_characters_in_extra_fields_are_refused(reg: str, tmp_path: Path, char: str,
                                                        what: str) -> None:
    sheet = tmp_path / "f.csv"
    sheet.write_text(f"ref,name,note\nA,Alpha,fine\nB,Beta,bad{char}note\n")
    before = snapshot(reg)
    result = cli("import", reg, sheet, "-s", "S")
    assert result.exit_code == 2, result.output
    assert f"f.csv, row 3: field 'extra_fields' (key 'note') contains {what}" in flat(result)
    assert snapshot(reg) == before
    gj = tmp_path / "f.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": None, "properties": {
            "ref": "A", "name": "Alpha", "extra_fields": {"deep": {"list": ["ok", f"x{char}"]}}}},
    ]}))
    result = cli("import", reg, gj, "-s", "S")
    assert result.exit_code == 2, result.output
    assert ("f.geojson, feature 1 (ref A): field 'extra_fields' (key 'deep', key 'list', "
            f"item 2) contains {what}") in flat(result)
    # and into an existing version (an upsert) too
    good = tmp_path / "good.csv"
    good.write_text("ref,name,note\nA,Alpha,fine\n")
    assert cli("import", reg, good, "-s", "S").exit_code == 0
    result = cli("import", reg, sheet, "-s", "S", "-v", "1")
    assert result.exit_code == 2, result.output
    assert f"f.csv, row 3: field 'extra_fields' (key 'note') contains {what}" in flat(result)
    # tabs and line breaks stay allowed
    tabs = tmp_path / "tabs.csv"
    tabs.write_text('ref,name,note\nT,Tab,"a\tb\nc"\n')
    assert cli("import", reg, tabs, "-s", "T").exit_code == 0
