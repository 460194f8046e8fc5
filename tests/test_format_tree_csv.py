"""Iaso's tree-importer CSV: the schools of the DRC (Iaso's own test data) and small files.

``tests/data/iaso_testdata/schools.csv`` with its ``data_dict.json`` (BLSQ/iaso, MIT):
11 ProvincePoliAdmin → 22 Proved → 258 Sproved → 6,396 schools, 6,395 of them located.
Duplicate school names within one Sproved: **88** names (182 schools) as the names
are stored — stripped, as Iaso and Georeg both store them; 85 if the raw cells are
compared, trailing spaces and all (see the folder's README.md).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import Point

from storage import tree
from storage.bulk import UnitRecord
from storage.errors import InvalidInput
from storage.registry import Registry
from sync.exchange import ReadOptions
from sync.formats import tree_csv
from sync.importing import import_payload

DATA = Path(__file__).parent / "data" / "iaso_testdata"
SCHOOLS = DATA / "schools.csv"
DICT = DATA / "data_dict.json"
LEVELS = ["ProvincePoliAdmin", "Proved", "Sproved"]


def schools(**opts: Any) -> tuple[Any, list[UnitRecord]]:
    payload = tree_csv.read_file(SCHOOLS, ReadOptions(data_dict=str(DICT), **opts))
    return payload, list(payload.units)


def test_schools_give_a_four_level_tree() -> None:
    payload, units = schools(mapping={"leaf_type": "School"})
    assert [(t.name, t.depth) for t in payload.types] == [
        ("ProvincePoliAdmin", 1), ("Proved", 2), ("Sproved", 3), ("School", 4)]
    per_type = collections.Counter(u.type_name for u in units)
    assert per_type == {"ProvincePoliAdmin": 11, "Proved": 22, "Sproved": 258, "School": 6396}
    assert payload.total == len(units) == 6687
    leaves = [u for u in units if u.type_name == "School"]
    assert sum(1 for u in leaves if u.location is not None) == 6395
    refs = {u.source_ref for u in units}
    assert len(refs) == len(units)  # every unit has a ref of its own
    by_ref = {u.source_ref: u for u in units}
    depth = {t.name: t.depth for t in payload.types}
    for u in units:  # every parent is a unit of the file, one level up
        if u.type_name == "ProvincePoliAdmin":
            assert u.parent_ref is None
        else:
            assert depth[by_ref[u.parent_ref].type_name] == depth[u.type_name] - 1


def test_school_rows() -> None:
    _, units = schools()
    first = next(u for u in units if u.where == "schools.csv, row 2")
    assert first.name == "ECOLE PRIMAIRE KISOLOKELE" and first.type_name == "Unit"
    assert first.source_ref == "row:2"  # 'Numero SECOPE' is empty on every row
    assert first.parent_ref == "KONGO-CENTRAL/KONGO CENTRAL 1/BOMA"
    assert first.location == Point(13.059383984086399, -5.85027684637961)
    assert first.extra_fields == {"Cheflieux": "MATADI", "Territoire": "BOMA VILLE",
                                  "Groupement": "KIMBANGU", "Commune": "KALAMU",
                                  "GPS_altitude": "49.853656291011035", "GPS_precision": "4.0"}
    boma = next(u for u in units if u.source_ref == first.parent_ref)
    assert (boma.name, boma.type_name, boma.parent_ref) == (
        "BOMA", "Sproved", "KONGO-CENTRAL/KONGO CENTRAL 1")
    unlocated = [u for u in units if u.type_name == "Unit" and u.location is None]
    assert [u.where for u in unlocated] == ["schools.csv, row 6179"]
    quoted = next(u for u in units if u.where == "schools.csv, row 17")
    assert quoted.name == "E\nM \nMAMA \nMWILU ECOLE MATERNELLE"  # a quoted line break


def test_schools_duplicate_names_are_warnings_not_merges() -> None:
    payload, units = schools()
    dups = [w for w in payload.warnings if "not merged" in w]
    assert len(dups) == 88 and len(payload.warnings) == 88
    assert sum(int(w.split(": ")[1].split()[0]) for w in dups) == 182
    assert ("schools.csv: 2 units named 'MUNENE ECOLE MATERNELLE' under "
            "'KWILU/KWILU 3/KALO' (rows 35, 39); kept as separate units, not merged.") in dups
    leaves = collections.Counter((u.parent_ref, u.name) for u in units if u.type_name == "Unit")
    assert sum(1 for n in leaves.values() if n > 1) == 88
    assert sum(n for n in leaves.values() if n > 1) == 182


def test_schools_end_to_end(registry: Registry) -> None:
    payload = tree_csv.read_file(SCHOOLS, ReadOptions(data_dict=str(DICT),
                                                      mapping={"leaf_type": "School"}))
    report = import_payload(registry, payload, source="WB schools 2019")
    assert report["created"] == 6687 and report["rejected"] == 0
    assert sum("not merged" in w for w in report["warnings"]) == 88
    counts = tree.counts(registry, "WB schools 2019")
    assert [(lv["level"], lv["units"], lv["points"]) for lv in counts["levels"]] == [
        (1, 11, 0), (2, 22, 0), (3, 258, 0), (4, 6396, 6395)]
    assert {t["type"]: t["units"] for t in counts["types"]} == {
        "ProvincePoliAdmin": 11, "Proved": 22, "Sproved": 258, "School": 6396}


# --- small files ----------------------------------------------------------------------


def dd(tmp_path: Path, **extra: Any) -> str:
    path = tmp_path / "dict.json"
    doc = {"name": "Ecole", "parents": ["Province", "District", "Zone"],
           "latitude": "lat", "longitude": "lon", "source_ref": "code"} | extra
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


def read(tmp_path: Path, text: str, file_encoding: str = "utf-8", **opts: Any
         ) -> tuple[Any, list[UnitRecord]]:
    path = tmp_path / "tree.csv"
    path.write_bytes(text.encode(file_encoding))
    if "data_dict" not in opts:
        opts["data_dict"] = dd(tmp_path)
    payload = tree_csv.read_file(path, ReadOptions(**opts))
    return payload, list(payload.units)


HEADER = "Province;District;Zone;Ecole;lat;lon;code\n"


def test_neant_levels_are_skipped_with_a_warning(tmp_path: Path) -> None:
    payload, units = read(tmp_path, HEADER
                          + "Kasaï;Néant;Tshikapa;EP 1;;;A1\n"
                          + "Kasaï;NEANT;Tshikapa;EP 2;;;\n"
                          + "Kasaï;Kamonia;;EP 3;;;\n"
                          + ";néant;;EP 4;;;\n")
    by = {u.name: u for u in units}
    assert by["Tshikapa"].parent_ref == "Kasaï" and by["Tshikapa"].type_name == "Zone"
    assert by["EP 1"].parent_ref == by["EP 2"].parent_ref == "Kasaï/Tshikapa"
    assert (by["EP 1"].source_ref, by["EP 2"].source_ref) == ("A1", "row:3")
    assert by["EP 3"].parent_ref == "Kasaï/Kamonia"
    assert by["EP 4"].parent_ref is None
    assert "Néant" not in by and "NEANT" not in by
    assert sum(u.name == "Tshikapa" for u in units) == 1
    assert payload.warnings == [
        "tree.csv: column 'Province' is empty or 'néant' on 1 row(s) (rows 5); that level is "
        "skipped there and the levels below hang under the level above, as in Iaso.",
        "tree.csv: column 'District' is empty or 'néant' on 3 row(s) (rows 2, 3, 5); that "
        "level is skipped there and the levels below hang under the level above, as in Iaso.",
        "tree.csv: column 'Zone' is empty or 'néant' on 2 row(s) (rows 4, 5); that level is "
        "skipped there and the levels below hang under the level above, as in Iaso.",
        "tree.csv: 1 row(s) have no level name at all (rows 5); those units are placed at the "
        "top of the tree."]


def test_levels_are_one_unit_per_name_path(tmp_path: Path) -> None:
    _, units = read(tmp_path, HEADER
                    + "Kasaï;Kamonia;Centre;EP 1;;;\n"
                    + "Kasaï ;Kamonia;Centre;EP 2;;;\n"  # compared stripped
                    + "Kwango;Kamonia;Centre;EP 3;;;\n")  # same names, other province
    levels = sorted((u.source_ref, u.parent_ref) for u in units if u.type_name != "Unit")
    assert levels == [("Kasaï", None), ("Kasaï/Kamonia", "Kasaï"),
                      ("Kasaï/Kamonia/Centre", "Kasaï/Kamonia"), ("Kwango", None),
                      ("Kwango/Kamonia", "Kwango"), ("Kwango/Kamonia/Centre", "Kwango/Kamonia")]


def test_duplicate_leaves_are_kept_and_named(tmp_path: Path) -> None:
    payload, units = read(tmp_path, HEADER
                          + "K;D;Z;EP Mama;1;2;\nK;D;Z;EP Mama ;1;2;\nK;D;Y;EP Mama;;;\n")
    assert sum(u.name.strip() == "EP Mama" for u in units) == 3
    assert payload.warnings == ["tree.csv: 2 units named 'EP Mama' under 'K/D/Z' (rows 2, 3); "
                                "kept as separate units, not merged."]


def test_leaf_type_from_dict_or_mapping(tmp_path: Path) -> None:
    text = HEADER + "K;D;Z;EP;;;\n"
    payload, _ = read(tmp_path, text, data_dict=dd(tmp_path, type="Ecole primaire"))
    assert payload.types[-1].name == "Ecole primaire" and payload.types[-1].depth == 4
    payload, units = read(tmp_path, text, data_dict=dd(tmp_path, type="Ecole primaire"),
                          mapping={"leaf_type": "Maternelle"})
    assert payload.types[-1].name == "Maternelle" and units[-1].type_name == "Maternelle"


def test_optional_columns_may_be_left_out(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"name": "Ecole", "parents": ["Province"]}))
    _, units = read(tmp_path, "Province,Ecole\nK,EP\n", data_dict=str(path))
    assert [(u.name, u.source_ref, u.parent_ref, u.location) for u in units] == [
        ("K", "K", None, None), ("EP", "row:2", "K", None)]


def test_decimal_comma_bom_and_comma_delimiter(tmp_path: Path) -> None:
    _, units = read(tmp_path, "\ufeffProvince,District,Zone,Ecole,lat,lon,code\n"
                              'K,D,Z,EP,"-4,5","15,25",\n')
    assert units[-1].location == Point(15.25, -4.5)


def test_latin1(tmp_path: Path) -> None:
    text = HEADER + "Kasaï;D;Z;Ecole Sainte-Thérèse;;;\n"
    with pytest.raises(InvalidInput, match=r"tree.csv, row 2: field 'Province' is not valid "
                                           r"UTF-8 .*--encoding latin-1"):
        read(tmp_path, text, "latin-1")
    _, units = read(tmp_path, text, "latin-1", encoding="latin-1")
    assert units[-1].name == "Ecole Sainte-Thérèse"


def test_bad_coordinates(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"tree.csv, row 2: field 'lat' is 'north'"):
        read(tmp_path, HEADER + "K;D;Z;EP;north;2;\n")


def test_missing_columns_are_listed(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        read(tmp_path, "Province;Ecole;lat\nK;EP;1\n")
    assert err.value.message == (
        "tree.csv: column(s) 'District', 'Zone', 'lon', 'code' of the data dictionary are not "
        "in the file; columns found: 'Province', 'Ecole', 'lat'.")


def test_data_dict_is_required_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(HEADER)
    with pytest.raises(InvalidInput, match="needs its data dictionary"):
        tree_csv.read_file(path, ReadOptions())
    bad = tmp_path / "bad.json"
    bad.write_text('{"parents": ["A"]}')
    with pytest.raises(InvalidInput, match="'name' .* is missing"):
        tree_csv.read_file(path, ReadOptions(data_dict=str(bad)))
    bad.write_text("{nope")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        tree_csv.read_file(path, ReadOptions(data_dict=str(bad)))
    with pytest.raises(InvalidInput, match="file not found"):
        tree_csv.read_file(path, ReadOptions(data_dict=str(tmp_path / "none.json")))


def test_empty_and_header_only(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"^tree.csv is empty\.$"):
        read(tmp_path, "")
    with pytest.raises(InvalidInput, match="has a header but no rows"):
        read(tmp_path, HEADER)


def test_bad_coordinates_are_the_rows_problem_and_skip_invalid_skips_it(
        tmp_path: Path, location: str) -> None:
    """One school typed 'north' for its latitude: the import lists it (with every other
    problem) and writes nothing; --skip-invalid imports the other schools and their
    levels.  Before, the reading stopped, and --skip-invalid could not skip it."""
    from click.testing import CliRunner
    from sqlalchemy import text

    from georeg.cli import main

    path = tmp_path / "tree.csv"
    path.write_text(HEADER + "K;D;Z;EP Nord;north;2;S1\nK;D;Z;EP Sud;1.5;2;S2\n"
                    "K;D;Z2;EP Est;1.6;2.1;S3\n", encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(main, ["init", location]).exit_code == 0
    args = ["import", location, str(path), "-s", "Schools", "--data-dict", dd(tmp_path),
            "--json"]
    refused = runner.invoke(main, args)
    assert refused.exit_code == 2, refused.output
    assert "tree.csv, row 2: field 'lat' is 'north'" in refused.stderr
    with Registry.open(location) as reg, reg.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM org_unit")).scalar() == 0
    done = runner.invoke(main, [*args, "--skip-invalid"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert (data["created"], data["rejected"]) == (6, 1)  # K, D, Z, Z2 and two schools
    [row] = [r for r in data["rows"] if r["status"] == "rejected"]
    assert row["where"] == "tree.csv, row 2" and "'north'" in row["message"]
