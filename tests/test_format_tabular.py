"""CSV and XLSX, one row per unit: what a GIS officer's spreadsheet looks like, read and written.

Reader tests consume ``payload.units`` directly (no registry); the round trips write a
hand-built version and read it back; the last test exports a registry to CSV and
imports the file again, on every backend.
"""

from __future__ import annotations

import csv
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Point, box

from storage import tree
from storage.bulk import ROW_PROBLEMS, UnitRecord
from storage.errors import InvalidInput
from storage.registry import Registry
from storage.versions import VersionRef
from sync.exchange import ExportUnit, GroupDef, ReadOptions, TypeDef, VersionData, read_version
from sync.formats import tabular
from sync.importing import import_payload


def units_of(path: Path, **opts: Any) -> list[UnitRecord]:
    return list(tabular.read_file(path, ReadOptions(**opts)).units)


def by_ref(records: list[UnitRecord]) -> dict[str | None, UnitRecord]:
    return {r.source_ref: r for r in records}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


ENGLISH = (
    "ref,name,type,level,parent_ref,code,latitude,longitude,wkt,opening_date,closed_date,"
    "validation_status,uuid,aliases,groups,population\n"
    "CD,République démocratique du Congo,Pays,1,,COD,,,"
    "\"POLYGON ((12 -13, 31 -13, 31 5, 12 5, 12 -13))\",1960-06-30,,valid,"
    "0191e0a5-7a1c-7d2e-8b3f-2a4b5c6d7e8f,RDC;Congo-Kinshasa,,\n"
    "KN,Kinshasa,Province,2,CD,,-4.325,15.322,,,,new,,,urban;capital,17000000\n"
    "LK,\"Lukunga, \"\"ville\"\"; nord\",Zone de santé,3,KN,ZS-01,-4.31,15.29,,,"
    "31/12/2023,rejected,,,urban,\n"
)


# --- reading --------------------------------------------------------------------------


def test_english_headers_give_every_field(tmp_path: Path) -> None:
    payload = tabular.read_file(write(tmp_path / "units.csv", ENGLISH))
    assert [(t.name, t.depth) for t in payload.types] == [
        ("Pays", 1), ("Province", 2), ("Zone de santé", 3)]
    assert [g.ref for g in payload.groups] == ["urban", "capital"]
    assert payload.total == 3 and payload.warnings == []
    u = by_ref(list(payload.units))
    cd, kn, lk = u["CD"], u["KN"], u["LK"]
    assert cd.name == "République démocratique du Congo" and cd.parent_ref is None
    assert cd.territory is not None and cd.territory.geom_type == "MultiPolygon"
    assert cd.location is None and cd.code == "COD" and cd.opening_date == "1960-06-30"
    assert cd.uuid == "0191e0a5-7a1c-7d2e-8b3f-2a4b5c6d7e8f"
    assert cd.aliases == ["RDC", "Congo-Kinshasa"]
    assert kn.parent_ref == "CD" and kn.location == Point(15.322, -4.325)
    assert kn.groups == ["urban", "capital"] and kn.validation_status == "new"
    assert kn.extra_fields == {"population": "17000000"}
    assert lk.name == 'Lukunga, "ville"; nord' and lk.parent_ref == "KN"
    assert lk.closed_date == "2023-12-31"  # dd/mm/yyyy, as spreadsheets write it
    assert lk.validation_status == "rejected" and lk.where == "units.csv, row 4"


def test_semicolon_and_comma_files_read_the_same(tmp_path: Path) -> None:
    rows = [["ref", "name", "parent_ref", "latitude", "longitude"],
            ["A", "Nord; Sud", "", "1.5", "2.5"], ["B", "Ouest, Est", "A", "", ""]]
    found = []
    for delimiter in (",", ";"):
        path = tmp_path / f"d{ord(delimiter)}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh, delimiter=delimiter).writerows(rows)
        found.append([(r.source_ref, r.name, r.parent_ref, r.location)
                      for r in units_of(path)])
    assert found[0] == found[1] == [("A", "Nord; Sud", None, Point(2.5, 1.5)),
                                    ("B", "Ouest, Est", "A", None)]


def test_given_delimiter_wins(tmp_path: Path) -> None:
    path = write(tmp_path / "pipe.csv", "ref|name\nA|Alpha, Beta\n")
    assert [r.name for r in units_of(path, delimiter="|")] == ["Alpha, Beta"]


def test_utf8_with_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.csv", "\ufeffref;name\nA;Kéré\n")
    assert [(r.source_ref, r.name) for r in units_of(path)] == [("A", "Kéré")]


def test_latin1_needs_encoding_and_then_reads(tmp_path: Path) -> None:
    path = write(tmp_path / "latin.csv", "ref;name\nA;Kéré\nB;Ségou\n", "latin-1")
    with pytest.raises(InvalidInput) as err:
        units_of(path)
    assert "latin.csv, row 2: field 'name'" in err.value.message
    assert "--encoding latin-1" in err.value.message
    assert [r.name for r in units_of(path, encoding="latin-1")] == ["Kéré", "Ségou"]
    assert [r.name for r in units_of(path, encoding="cp1252")] == ["Kéré", "Ségou"]


def test_a_broken_utf8_byte_names_file_row_field_and_byte(tmp_path: Path) -> None:
    good = "ref,name,code\nA,Kéré,1\n".encode()
    path = tmp_path / "broken.csv"
    path.write_bytes(good + b"B,Bamako,X\xe9Y\nC,Mopti,3\n")
    with pytest.raises(InvalidInput) as err:
        units_of(path)
    msg = err.value.message
    assert msg.startswith("broken.csv, row 3: field 'code' is not valid UTF-8")
    assert "0xE9" in msg and f"at byte offset {len(good) + 10} of the file" in msg
    assert err.value.details["row"] == 3


def test_broken_byte_with_utf8_given_has_no_latin1_hint(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_bytes(b"ref,name\nA,Caf\xe9\n")
    with pytest.raises(InvalidInput, match=r"broken.csv, row 2: field 'name'") as err:
        units_of(path, encoding="utf-8")
    assert "--encoding" not in err.value.message


def test_unknown_encoding_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "ref,name\nA,B\n")
    with pytest.raises(InvalidInput, match="Unknown encoding 'klingon'"):
        units_of(path, encoding="klingon")


def test_decimal_comma_with_semicolons(tmp_path: Path) -> None:
    path = write(tmp_path / "fr.csv", "ref;name;latitude;longitude\nA;Bouaké;7,69;-5,03\n"
                                      "B;Abidjan;5.35;-4.01\nC;Yamoussoukro;NULL;NULL\n")
    locs = [r.location for r in units_of(path)]
    assert locs == [Point(-5.03, 7.69), Point(-4.01, 5.35), None]


def test_bad_coordinates_are_listed_together(tmp_path: Path) -> None:
    """Read on its own, the file is refused before its first unit, every row with
    unreadable coordinates listed; in the import job each is a rejected row
    (tests/test_import_bad_rows.py)."""
    path = write(tmp_path / "bad.csv", "ref,name,latitude,longitude\nA,a,abc,1\nB,b,1,2\n"
                                       "C,c,5,\n")
    payload = tabular.read_file(path)  # the file itself is readable
    with pytest.raises(InvalidInput) as err:
        list(payload.units)
    msg = err.value.message
    assert msg.startswith("2 row(s) of bad.csv have unreadable coordinates")
    assert "bad.csv, row 2: field 'latitude' is 'abc', not a number" in msg
    assert "bad.csv, row 4: field 'longitude' is empty but 'latitude' is given" in msg
    token = ROW_PROBLEMS.set(True)  # as in the import job: records with their problem
    try:
        recs = list(tabular.read_file(path).units)
    finally:
        ROW_PROBLEMS.reset(token)
    assert [(r.source_ref, r.location) for r in recs] == [("A", None), ("B", Point(2, 1)),
                                                          ("C", None)]
    assert [r.problem for r in recs] == [
        "bad.csv, row 2: field 'latitude' is 'abc', not a number (e.g. 12.5 or 12,5).", None,
        "bad.csv, row 4: field 'longitude' is empty but 'latitude' is given; give both "
        "coordinates or neither."]


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"\r\n\r\n  \n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=r"^empty.csv is empty\.$"):
        tabular.read_file(path)


def test_header_without_rows(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="has a header but no rows"):
        tabular.read_file(write(tmp_path / "h.csv", "ref,name\n\n"))


def test_missing_name_column_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "noname.csv", "ref;label;parent_ref\nA;Alpha;\n")
    with pytest.raises(InvalidInput) as err:
        tabular.read_file(path)
    assert err.value.message == ("noname.csv: no 'name' (or Iaso's 'Nom') column; columns "
                                 "found: 'ref', 'label', 'parent_ref'.")


def test_mapping_names_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "id;label;lat;lon\nA;Alpha;1;2\n")
    [rec] = units_of(path, mapping={"ref": "id", "name": "Label"})
    assert (rec.source_ref, rec.name, rec.location) == ("A", "Alpha", Point(2, 1))
    with pytest.raises(InvalidInput, match="no such column"):
        units_of(path, mapping={"name": "nom"})
    with pytest.raises(InvalidInput, match="unknown field"):
        units_of(path, mapping={"nme": "label"})


def test_tree_from_parent_names_only(tmp_path: Path) -> None:
    """No refs at all: units are found by name path; missing ancestors are made."""
    path = write(tmp_path / "names.csv",
                 "name,type,parent_1_name,parent_2_name\n"
                 "Gombe,Commune,Lukunga,Kinshasa\n"
                 "Lukunga,District,Kinshasa,\n"
                 "Barumbu,Commune,Lukunga,Kinshasa\n"
                 "Limete,Commune,Mont Amba,Kinshasa\n")
    payload = tabular.read_file(path)
    recs = list(payload.units)
    u = by_ref(recs)
    assert set(u) == {"Kinshasa", "Kinshasa/Lukunga", "Kinshasa/Lukunga/Gombe",
                      "Kinshasa/Lukunga/Barumbu", "Kinshasa/Mont Amba",
                      "Kinshasa/Mont Amba/Limete"}
    assert u["Kinshasa/Lukunga"].type_name == "District"  # the row itself, not a copy
    assert u["Kinshasa/Lukunga"].parent_ref == "Kinshasa"
    assert u["Kinshasa/Lukunga/Gombe"].parent_ref == "Kinshasa/Lukunga"
    assert u["Kinshasa/Mont Amba"].type_name is None  # made from the names
    assert "made from the parent names" in u["Kinshasa/Mont Amba"].where
    assert payload.total == len(recs) == 6
    assert [(t.name, t.depth) for t in payload.types] == [("District", 2), ("Commune", 3)]
    assert "built from the parent names" in payload.warnings[0]


IASO = (
    "ID,Nom,Type,Latitude,Longitude,Code,Date d'ouverture,Date de fermeture,"
    "Date de création,Date de modification,Créé par,Source,Validé,Référence externe,"
    "parent 1,parent 2,Ref Ext parent 1,Ref Ext parent 2,Total de soumissions Form A,"
    "Total de soumissions,Hôpitaux,Urbain,Remarque\n"
    "101,Région du Centre,Région,,,,,,2020-01-01,2021-01-01,admin,SNIS,VALID,REG-C,,,,,0,0,0,1,\n"
    "102,District Sud,District,,,,2019-02-03,,2020-01-01,,admin,SNIS,NEW,,Région du Centre,,"
    "REG-C,,0,0,0,0,à vérifier\n"
    "103,CSI Garga,CSI,\"4,4\",\"13,9\",C1,,,2020-01-01,,admin,SNIS,REJECTED,iaso#103,"
    "District Sud,Région du Centre,iaso:102,REG-C,3,3,1,1,\n"
)


@pytest.mark.parametrize("flag", [False, True])
def test_iaso_french_headers(tmp_path: Path, flag: bool) -> None:
    payload = tabular.read_file(write(tmp_path / "iaso.csv", IASO),
                                ReadOptions(iaso_headers=flag))
    assert [(g.ref, g.name) for g in payload.groups] == [("Hôpitaux", "Hôpitaux"),
                                                         ("Urbain", "Urbain")]
    assert [(t.name, t.depth) for t in payload.types] == [("Région", 1), ("District", 2),
                                                          ("CSI", 3)]
    u = by_ref(list(payload.units))
    assert set(u) == {"REG-C", "iaso:102", "iaso:103"}
    reg, dist, csi = u["REG-C"], u["iaso:102"], u["iaso:103"]
    assert reg.name == "Région du Centre" and reg.parent_ref is None
    assert reg.validation_status == "valid" and reg.groups == ["Urbain"]
    assert reg.extra_fields == {"iaso_id": "101"}
    assert dist.parent_ref == "REG-C" and dist.opening_date == "2019-02-03"
    assert dist.validation_status == "new" and dist.groups == []
    assert dist.extra_fields == {"iaso_id": "102", "Remarque": "à vérifier"}
    assert csi.parent_ref == "iaso:102" and csi.location == Point(13.9, 4.4)
    assert csi.code == "C1" and csi.validation_status == "rejected"
    assert csi.groups == ["Hôpitaux", "Urbain"]


def test_xlsx_reads_a_sheet(tmp_path: Path) -> None:
    path = tmp_path / "book.xlsx"
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Notes"
    ws.append(["nothing here"])
    data = wb.create_sheet("Unités")
    data.append(["ref", "name", "parent_ref", "latitude", "longitude", "code", "opening_date"])
    data.append(["A", "Kéré", None, 12.5, -1.25, 7, dt.datetime(2020, 5, 17)])
    data.append([])
    data.append(["B", "Ségou", "A", None, None, "007", None])
    wb.save(path)
    [a, b] = units_of(path, layer="Unités")
    assert (a.name, a.location, a.code, a.opening_date) == ("Kéré", Point(-1.25, 12.5), "7",
                                                           "2020-05-17")
    assert (b.name, b.parent_ref, b.code, b.where) == ("Ségou", "A", "007", "book.xlsx, row 4")
    with pytest.raises(InvalidInput, match=r"no 'name' .* columns found: 'nothing here'"):
        units_of(path)  # the first sheet
    with pytest.raises(InvalidInput, match="no sheet 'Units'; sheets: Notes, Unités"):
        units_of(path, layer="Units")


def test_not_a_workbook(tmp_path: Path) -> None:
    path = write(tmp_path / "fake.xlsx", "ref,name\n")
    with pytest.raises(InvalidInput, match="fake.xlsx: not a readable Excel .xlsx workbook"):
        tabular.read_file(path)


# --- writing and reading back ------------------------------------------------------------

VERSION = VersionRef(id=1, source_id=1, source="Test", number=1, status="draft")
GROUPS = [GroupDef("G1", "Hôpitaux"), GroupDef("G2", "Urbain; rural"), GroupDef("G3", "Écoles")]
GROUPS_ORDER = [g.ref for g in GROUPS]
TYPES = ["Pays", "Région", "District", "Aire de santé"]


def export_unit(i: int, name: str, ref: str, parent: ExportUnit | None, **kw: Any
                ) -> ExportUnit:
    depth = parent.depth + 1 if parent else 1
    fields: dict[str, Any] = dict(
        uuid=f"0191e0a5-0000-7000-8000-{i:012d}", ref=ref, source_ref=ref, name=name,
        parent_ref=parent.ref if parent else None, type=TYPES[depth - 1], depth=depth,
        code=None, opening_date=None, closed_date=None, validation_status="valid", aliases=[],
        extra_fields={}, location=None, territory=None, groups=[],
        ancestors=[*parent.ancestors, parent.name] if parent else [])
    fields.update(kw)
    return ExportUnit(**fields)


def version_data(units: list[ExportUnit]) -> VersionData:
    types = [TypeDef(t, d) for d, t in enumerate(TYPES, 1)]
    return VersionData(VERSION, types, GROUPS, iter(units), len(units))


NAME_CHARS = st.sampled_from(list("abcXYZ éèàçÉôœß'\",;=[]/-#\n") + ["Kéré", "Ségou", "ñ"])
names = st.lists(NAME_CHARS, min_size=1, max_size=12).map("".join).map(str.strip).filter(bool)
coords = st.tuples(st.floats(-180, 180), st.floats(-90, 90))


@st.composite
def trees(draw: st.DrawFn) -> list[ExportUnit]:
    """A random tree in path order (depth first), up to four levels."""
    count = draw(st.integers(1, 12))
    parents: list[int | None] = [None]
    for i in range(1, count):
        parents.append(draw(st.one_of(st.none(), st.integers(0, i - 1))))
    depth = {}
    for i, p in enumerate(parents):
        depth[i] = 1 if p is None else depth[p] + 1
        if depth[i] > 4:
            parents[i], depth[i] = None, 1
    children: dict[int | None, list[int]] = {}
    for i, p in enumerate(parents):
        children.setdefault(p, []).append(i)
    out: list[ExportUnit] = []

    def visit(i: int, parent: ExportUnit | None) -> None:
        loc = draw(st.one_of(st.none(), coords))
        ter = None
        if draw(st.booleans()):
            x, y = draw(coords)
            ter = MultiPolygon([box(x, y, x + draw(st.floats(1e-6, 1)), y + 0.5)])
        unit = export_unit(
            i, draw(names), f"R{i}-{draw(names)}".replace("\n", " ").strip(), parent,
            code=draw(st.one_of(st.none(), names)),
            opening_date=draw(st.one_of(st.none(), st.dates().map(dt.date.isoformat))),
            closed_date=draw(st.one_of(st.none(), st.dates().map(dt.date.isoformat))),
            validation_status=draw(st.sampled_from(["valid", "new", "rejected"])),
            aliases=draw(st.lists(names, max_size=3, unique=True)),
            groups=sorted(draw(st.sets(st.sampled_from([g.ref for g in GROUPS])))),
            extra_fields=draw(st.dictionaries(
                st.sampled_from(["shortName", "status", "parent_1_name", "Remarque"]),
                names, max_size=2)),
            location=Point(*loc) if loc else None, territory=ter)
        out.append(unit)
        for c in children.get(i, []):
            visit(c, unit)

    for root in children[None]:
        visit(root, None)
    return out


def check_round_trip(units: list[ExportUnit], back: list[UnitRecord], *, exact: bool) -> None:
    """CSV is exact; Excel stores numbers with 16 significant digits (openpyxl, as Excel)."""
    got = by_ref(back)
    assert set(got) == {u.ref for u in units}
    for u in units:
        r = got[u.ref]
        assert (r.name, r.parent_ref, r.type_name, r.code) == (u.name, u.parent_ref, u.type,
                                                               u.code)
        assert (r.opening_date, r.closed_date) == (u.opening_date, u.closed_date)
        assert (r.validation_status, r.uuid) == (u.validation_status, u.uuid)
        assert (r.aliases or []) == u.aliases and (r.groups or []) == u.groups
        assert (r.extra_fields or {}) == u.extra_fields
        if exact or u.location is None:
            assert r.location == u.location
        else:
            assert r.location is not None and shapely.equals_exact(r.location, u.location, 1e-12)
        if u.territory is None:
            assert r.territory is None
        else:
            assert r.territory is not None and shapely.equals_exact(r.territory, u.territory, 0)


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(units=trees())
def test_write_then_read_gives_the_same_units(suffix: str, units: list[ExportUnit]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"units{suffix}"
        summary = tabular.write_file(version_data(units), out)
        assert summary["units"] == len(units) and summary["warnings"] == []
        assert summary["parent_levels"] == max(u.depth for u in units) - 1
        payload = tabular.read_file(out)
        check_round_trip(units, list(payload.units), exact=suffix == ".csv")
        used = {g for u in units for g in u.groups}
        assert used <= {g.ref for g in payload.groups}


def small_tree() -> list[ExportUnit]:
    pays = export_unit(1, "Côte d'Ivoire", "CI", None,
                       territory=MultiPolygon([box(-8.6, 4.3, -2.5, 10.7)]),
                       groups=["G3"], aliases=["CIV"])
    region = export_unit(2, 'Vallée du "Bandama"', "VB", pays, groups=["G1", "G2"])
    district = export_unit(3, "Bouaké; Nord, Est", "BKN", region, code="=1+1",
                           location=Point(-5.03, 7.69))
    centre = export_unit(4, "CSU Dar-es-Salam", "CSU-1", district, location=Point(-5.02, 7.7),
                         extra_fields={"shortName": "CSU DES"})
    other = export_unit(5, "Abidjan", "ABJ", pays)
    return [pays, region, district, centre, other]


def test_parent_columns_are_nearest_first(tmp_path: Path) -> None:
    out = tmp_path / "units.csv"
    tabular.write_file(version_data(small_tree()), out)
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")  # BOM: Excel reads the accents
    with out.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:15] == list(tabular.COLUMNS)
    assert list(rows[0])[15:] == ["parent_1_name", "parent_1_ref", "parent_2_name",
                                  "parent_2_ref", "parent_3_name", "parent_3_ref", "shortName"]
    centre = rows[3]
    assert centre["name"] == "CSU Dar-es-Salam" and centre["level"] == "4"
    assert [centre[f"parent_{k}_name"] for k in (1, 2, 3)] == [
        "Bouaké; Nord, Est", 'Vallée du "Bandama"', "Côte d'Ivoire"]
    assert [centre[f"parent_{k}_ref"] for k in (1, 2, 3)] == ["BKN", "VB", "CI"]
    assert rows[4]["parent_1_ref"] == "CI" and rows[4]["parent_2_ref"] == ""
    assert rows[1]["groups"] == "G1;G2" and rows[0]["aliases"] == "CIV"
    assert rows[0]["wkt"].startswith("MULTIPOLYGON (((")


def test_names_only_file_rebuilds_the_same_tree(tmp_path: Path) -> None:
    """Drop the ref columns of an export: the parent names alone rebuild the tree."""
    out = tmp_path / "units.csv"
    tabular.write_file(version_data(small_tree()), out)
    with out.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = ["name", "type"] + [f"parent_{k}_name" for k in (1, 2, 3)]
    names_only = tmp_path / "names.csv"
    with names_only.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, keep, extrasaction="ignore", delimiter=";")
        w.writeheader()
        w.writerows(rows)
    recs = units_of(names_only)
    parents = {r.name: by_ref(recs).get(r.parent_ref) for r in recs}
    assert {n: p.name if p else None for n, p in parents.items()} == {
        "Côte d'Ivoire": None, 'Vallée du "Bandama"': "Côte d'Ivoire",
        "Bouaké; Nord, Est": 'Vallée du "Bandama"', "CSU Dar-es-Salam": "Bouaké; Nord, Est",
        "Abidjan": "Côte d'Ivoire"}
    assert len(recs) == 5  # every ancestor is a row of its own: none is made up


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_iaso_headers_write_and_read_back(tmp_path: Path, suffix: str) -> None:
    units = small_tree()
    out = tmp_path / f"iaso{suffix}"
    summary = tabular.write_file(version_data(units), out, ReadOptions(iaso_headers=True))
    assert "territories are not written" in summary["warnings"][0]
    header = next(tabular.XlsxTable(out, None).rows())[1] if suffix == ".xlsx" else \
        out.read_text(encoding="utf-8-sig").splitlines()[0].split(",")
    assert header == [*tabular.IASO_COLUMNS, "parent 1", "parent 2", "parent 3",
                      "Ref Ext parent 1", "Ref Ext parent 2", "Ref Ext parent 3",
                      "Hôpitaux", "Urbain; rural", "Écoles"]
    payload = tabular.read_file(out)
    got = by_ref(list(payload.units))
    names = {g.ref: g.name for g in GROUPS}
    for u in units:
        r = got[u.ref]
        assert (r.name, r.parent_ref, r.type_name, r.uuid) == (u.name, u.parent_ref, u.type,
                                                               u.uuid)
        assert r.location == u.location and r.code == u.code
        assert r.groups == [names[g] for g in GROUPS_ORDER if g in u.groups]


def test_xlsx_keeps_formula_like_text_as_text(tmp_path: Path) -> None:
    out = tmp_path / "units.xlsx"
    tabular.write_file(version_data(small_tree()), out)
    wb = openpyxl.load_workbook(out)
    ws = wb.worksheets[0]
    assert ws.title == "org_units"
    cells = {c.value: c.data_type for row in ws.iter_rows() for c in row}
    assert cells["=1+1"] == "s"
    assert by_ref(units_of(out))["BKN"].code == "=1+1"


def test_territory_too_big_for_an_excel_cell(tmp_path: Path) -> None:
    ring = shapely.Point(0, 0).buffer(1, quad_segs=2000)
    unit = export_unit(1, "Big", "BIG", None, territory=MultiPolygon([ring]))
    out = tmp_path / "big.xlsx"
    summary = tabular.write_file(version_data([unit]), out)
    assert "longer than an Excel cell holds" in summary["warnings"][0]
    [rec] = units_of(out)
    assert rec.territory is None and rec.name == "Big"
    tabular.write_file(version_data([unit]), tmp_path / "big.csv")
    [rec] = units_of(tmp_path / "big.csv")  # CSV has no such limit
    assert rec.territory is not None and shapely.equals_exact(rec.territory, unit.territory, 0)


# --- with a registry ----------------------------------------------------------------------


def _counts(reg: Registry, source: str) -> list[tuple[int, int, int, int]]:
    return [(lv["level"], lv["units"], lv["points"], lv["territories"])
            for lv in tree.counts(reg, source)["levels"]]


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_export_and_import_again(demo: Registry, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"sl{suffix}"
    summary = tabular.write_file(read_version(demo, "SL"), out)
    assert summary["units"] == 1332 and summary["parent_levels"] == 3
    memberships = sum(len(u.groups) for u in read_version(demo, "SL").units)
    # the DHIS2 demo keeps one invalid polygon as DHIS2 has it; a file import refuses it
    report = import_payload(demo, tabular.read_file(out), source="SL again", fix_geometry=True)
    assert report["created"] == 1332 and report["rejected"] == 0
    assert report["loaded"]["memberships"] == memberships > 0
    before, after = _counts(demo, "SL"), _counts(demo, "SL again")
    if suffix == ".xlsx" and summary["warnings"]:  # territories too long for a cell
        dropped = int(summary["warnings"][0].split()[0])
        assert sum(r[3] for r in before) - sum(r[3] for r in after) == dropped
        before = [r[:3] for r in before]
        after = [r[:3] for r in after]
    assert after == before
