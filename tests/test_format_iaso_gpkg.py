"""Iaso's GeoPackage, read and written: Iaso's own fixtures, then round trips.

A GIS officer receives the GeoPackage Iaso exported (or the one a colleague edited in
QGIS): Georeg accepts exactly the files Iaso accepts, refuses the others naming the
file, layer, row and field to fix, and what Georeg writes comes back unchanged —
through the reader, and through a whole registry import.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pyogrio
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely import MultiPolygon, Point, Polygon, box

from storage import units as unit_api
from storage.bulk import UnitRecord
from storage.errors import InvalidInput
from storage.registry import Registry
from sync.exchange import (
    ExportUnit,
    GroupDef,
    ImportPayload,
    ReadOptions,
    TypeDef,
    VersionData,
    internal_ref,
    read_version,
)
from sync.formats.iaso_gpkg import read_file, write_file
from sync.importing import import_payload

DATA = Path(__file__).parent / "data" / "iaso_gpkg"

DS, AS, FOSA = ("cdd3e94c-3c2a-4ab1-8900-be97f82347de", "cc5421f2-2003-4f01-be4f-5f64463ab456",
                "3c24c6ca-3012-4d38-abe8-6d620fe1deb8")
CAMEROON = {DS: None, AS: DS, FOSA: AS}  # the tree of Iaso's "minimal" files
CAMEROON_TYPES = [("DS", 3), ("AS", 4), ("FOSA", 5)]
BURKINA = {
    "iaso:6688": None,  # written "iaso#6688" (legacy internal ref)
    "awG7snlrjVy": "iaso:6688",  # its parent_ref is written "iaso#6688" too
    "B4Ra7K6HuCE": "awG7snlrjVy",
    "cfke3S7Q8Vo": "B4Ra7K6HuCE",
    "O8KHatHm4dw": "cfke3S7Q8Vo",
    "iaso:178465": "cfke3S7Q8Vo",  # written "iaso#178465"
    "iaso:178466": "cfke3S7Q8Vo",
}
BURKINA_TYPES = [("Country/Pays - COUN", 1), ("Region/Région - REG", 2),
                 ("District/Zone de santé - DIST", 3), ("Health area/Aire de santé - AREA", 4),
                 ("Health facility/Formation sanitaire - HF", 5)]


def accepted(parents: dict[str, str | None], types: list[tuple[str, int]],
             groups: list[str]) -> dict[str, Any]:
    return {"parents": parents, "types": types, "groups": groups}


def refused(*parts: str) -> dict[str, Any]:
    return {"refused": parts}


AB = ["group_a", "group_b"]
#: what Iaso does with each of its fixtures (see tests/data/iaso_gpkg/README.md)
OUTCOMES: dict[str, dict[str, Any]] = {
    "minimal.gpkg": accepted(CAMEROON, CAMEROON_TYPES, AB),
    "minimal_all_optional.gpkg": accepted(CAMEROON, CAMEROON_TYPES, AB),
    "minimal_simplified.gpkg": accepted(CAMEROON | {"empty_geom": None}, CAMEROON_TYPES, AB),
    "minimal_simplified_group.gpkg": accepted(CAMEROON | {"empty_geom": None}, CAMEROON_TYPES,
                                              AB),
    "missing_column_parent_ref.gpkg": accepted(CAMEROON, CAMEROON_TYPES, AB),
    "empty_parent_ref.gpkg": accepted(CAMEROON, CAMEROON_TYPES, AB),
    "null_parent_ref.gpkg": accepted(CAMEROON, CAMEROON_TYPES, AB),
    "blank_parent_ref.gpkg": accepted(CAMEROON, CAMEROON_TYPES, AB),
    "empty_name.gpkg": accepted(CAMEROON, CAMEROON_TYPES, AB),  # its names are all filled
    "multiple-internal-ref-formats.gpkg": accepted(
        BURKINA, BURKINA_TYPES, ["FnGKoaZpj4u", "iaso:49591", "iaso:49592"]),
    "blank_name.gpkg": refused("'level-3-DS'", "row 1", "field 'name'", "blank"),
    "null_name.gpkg": refused("'level-3-DS'", "row 1", "field 'name'", "null"),
    "blank_ref.gpkg": refused("'level-3-DS'", "row 1", "field 'ref'", "blank"),
    "empty_ref.gpkg": refused("'level-3-DS'", "row 1", "field 'ref'", "empty"),
    "null_ref.gpkg": refused("'level-3-DS'", "row 1", "field 'ref'", "null"),
    "missing_column_name.gpkg": refused("'level-3-DS'", "column 'name' is missing"),
    "missing_column_ref.gpkg": refused("'level-3-DS'", "column 'ref' is missing"),
    "missing_ref.gpkg": refused("empty file"),
}


def read_all(path: Path, opts: ReadOptions | None = None) -> tuple[ImportPayload,
                                                                   list[UnitRecord]]:
    payload = read_file(path, opts or ReadOptions())
    return payload, list(payload.units)


def test_every_fixture_has_an_expected_outcome() -> None:
    assert sorted(p.name for p in DATA.glob("*.gpkg")) == sorted(OUTCOMES)
    assert (DATA / "LICENSE.iaso").exists() and "BLSQ/iaso" in (DATA / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_iaso_fixture(name: str) -> None:
    expected = OUTCOMES[name]
    path = DATA / name
    if "refused" in expected:
        with pytest.raises(InvalidInput) as caught:
            read_all(path)
        message = caught.value.message
        assert name in message
        for part in expected["refused"]:
            assert part in message
        return
    payload, records = read_all(path)
    assert {r.source_ref: r.parent_ref for r in records} == expected["parents"]
    assert len(records) == len(expected["parents"]) == payload.total
    assert [(t.name, t.depth) for t in payload.types] == expected["types"]
    assert sorted(g.ref for g in payload.groups) == expected["groups"]
    for rec in records:
        assert rec.where.startswith(f"{name}, layer 'level-") and ", row " in rec.where
        assert rec.type_name in {t for t, _ in expected["types"]}
        assert f"-{rec.type_name}', row " in rec.where


def test_what_the_minimal_file_holds() -> None:
    payload, records = read_all(DATA / "minimal.gpkg")
    by_ref = {r.source_ref: r for r in records}
    district, facility = by_ref[DS], by_ref[FOSA]
    assert district.name == "District Betare Oya" and district.type_name == "DS"
    assert (district.opening_date, district.closed_date) == ("2020-01-01", "2021-12-31")
    assert district.territory is not None and district.territory.geom_type == "MultiPolygon"
    assert district.location is None and district.groups == []
    assert facility.location is not None and facility.territory is None
    assert facility.location == (13.9993, 5.1795)  # a layer of plain points: (x, y) pairs
    assert facility.code == "ES0025" and facility.groups == ["group_b", "group_a"]
    assert by_ref[AS].code is None  # '' in the file
    assert [(g.ref, g.name) for g in payload.groups] == [("group_a", "Group A"),
                                                         ("group_b", "Group B")]


def test_legacy_and_new_internal_refs_are_one_ref() -> None:
    payload, records = read_all(DATA / "multiple-internal-ref-formats.gpkg")
    by_ref = {r.source_ref: r for r in records}
    assert by_ref["iaso:6688"].name == "Burkina Faso"
    old, new = by_ref["iaso:178465"], by_ref["iaso:178466"]
    assert old.name == "org unit - old internal ref" and new.name == "org unit - new internal ref"
    assert old.groups == new.groups == ["FnGKoaZpj4u", "iaso:49591", "iaso:49592"]
    assert {g.ref: g.name for g in payload.groups}["iaso:49591"] == "group - old internal ref"
    point = by_ref["O8KHatHm4dw"].location  # a 3-D point in the file
    assert point is not None and not point.has_z
    assert old.location is None and old.territory is None


def test_one_layer_can_be_read_alone() -> None:
    payload, records = read_all(DATA / "minimal.gpkg", ReadOptions(layer="level-5-FOSA"))
    assert [(r.source_ref, r.parent_ref) for r in records] == [(FOSA, AS)]
    assert [t.name for t in payload.types] == ["FOSA"]
    with pytest.raises(InvalidInput, match="no layer 'level-9-X'; its level-N-Type layers are"):
        read_file(DATA / "minimal.gpkg", ReadOptions(layer="level-9-X"))


def test_a_group_missing_from_the_groups_table_is_a_warning() -> None:
    payload, _ = read_all(DATA / "minimal_simplified_group.gpkg")
    assert any("group_not_in_gpkg" in w and "'level-5-FOSA', row 1" in w
               for w in payload.warnings)


@pytest.mark.parametrize("content", [b"", b"hello, not a geopackage\n",
                                     b'{"type": "FeatureCollection", "features": []}'])
def test_a_file_that_is_not_a_geopackage_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "units.gpkg"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=r"^units\.gpkg: .*GeoPackage"):
        read_file(path, ReadOptions())


@pytest.mark.parametrize("keep", [1024, 100_000])
def test_a_truncated_file_is_named(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "cut.gpkg"
    path.write_bytes((DATA / "minimal.gpkg").read_bytes()[:keep])
    with pytest.raises(InvalidInput, match=r"cut\.gpkg.*(truncated|damaged)"):
        read_all(path)


def test_a_file_without_level_layers_is_not_an_iaso_file(tmp_path: Path) -> None:
    import geopandas as gpd

    path = tmp_path / "roads.gpkg"
    pyogrio.write_dataframe(gpd.GeoDataFrame({"name": ["a"]}, geometry=[Point(1, 2)],
                                             crs="EPSG:4326"), path, layer="roads")
    with pytest.raises(InvalidInput, match="roads.gpkg: no layer named level-<depth>-<type>"):
        read_file(path, ReadOptions())


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_other_crs_are_reprojected_and_a_missing_crs_needs_one(tmp_path: Path) -> None:
    import geopandas as gpd

    wgs = gpd.GeoDataFrame({"ref": ["a", "b"], "name": ["A", "B"], "parent_ref": [None, "a"]},
                           geometry=[box(-13.3, 8.4, -13.2, 8.5), Point(-13.25, 8.45)],
                           crs="EPSG:4326")
    utm = tmp_path / "utm.gpkg"
    pyogrio.write_dataframe(wgs.iloc[[0]].to_crs("EPSG:32628"), utm, layer="level-1-Country")
    pyogrio.write_dataframe(wgs.iloc[[1]].to_crs("EPSG:32628"), utm, layer="level-2-Site")
    _, records = read_all(utm)
    by_ref = {r.source_ref: r for r in records}
    assert by_ref["a"].territory is not None
    assert by_ref["a"].territory.equals_exact(MultiPolygon([box(-13.3, 8.4, -13.2, 8.5)]), 1e-6)
    assert by_ref["b"].location is not None
    assert by_ref["b"].location.equals_exact(Point(-13.25, 8.45), 1e-6)

    bare = tmp_path / "bare.gpkg"
    pyogrio.write_dataframe(wgs.to_crs("EPSG:32628").set_crs(None, allow_override=True),
                            bare, layer="level-1-Country")
    with pytest.raises(InvalidInput, match="layer 'level-1-Country': .*no coordinate reference"):
        read_file(bare, ReadOptions())
    _, records = read_all(bare, ReadOptions(crs="EPSG:32628"))
    assert records[1].location is not None
    assert records[1].location.equals_exact(Point(-13.25, 8.45), 1e-6)


def test_unsupported_geometry_names_the_row(tmp_path: Path) -> None:
    import geopandas as gpd

    path = tmp_path / "lines.gpkg"
    pyogrio.write_dataframe(gpd.GeoDataFrame(
        {"ref": ["r1"], "name": ["Road"]}, geometry=[shapely.LineString([(0, 0), (1, 1)])],
        crs="EPSG:4326"), path, layer="level-1-Road")
    with pytest.raises(InvalidInput, match=r"lines.gpkg, layer 'level-1-Road', row 1: field "
                                           r"'geometry' is a LineString"):
        read_all(path)


def test_duplicate_refs_and_every_bad_row_are_listed(tmp_path: Path) -> None:
    import geopandas as gpd

    path = tmp_path / "dup.gpkg"
    for layer, refs, names in (("level-3-DS", [DS], ["District"]),
                               ("level-4-AS", [AS, DS], ["Area", None])):
        pyogrio.write_dataframe(gpd.GeoDataFrame(
            {"ref": refs, "name": names}, geometry=[None] * len(refs), crs="EPSG:4326"),
            path, layer=layer, geometry_type="Point")
    with pytest.raises(InvalidInput) as caught:
        read_all(path)
    message = caught.value.message
    assert message.startswith("dup.gpkg: 2 problems; nothing was imported")
    assert f"dup.gpkg, layer 'level-4-AS', row 2: field 'ref' '{DS}' is also the ref of " \
           "layer 'level-3-DS', row 1" in message
    assert "dup.gpkg, layer 'level-4-AS', row 2: field 'name' is empty (null)" in message


# --- importing Iaso's files into a registry -------------------------------------------------


def test_iaso_file_with_both_internal_ref_forms_imports_as_one_tree(registry: Registry) -> None:
    report = import_payload(registry, read_file(DATA / "multiple-internal-ref-formats.gpkg",
                                                ReadOptions()), source="BF")
    assert report["created"] == 7 and report["loaded"]["memberships"] == 6
    data = read_version(registry, "BF")
    got = {u.ref: u for u in data.units}
    assert {ref: u.parent_ref for ref, u in got.items()} == BURKINA
    assert got["iaso:178465"].ancestors == ["Burkina Faso", "Boucle du Mouhoun", "DS Nouna",
                                            "Madouba"]
    assert {(t.name, t.depth) for t in data.types} == set(BURKINA_TYPES)


def test_iaso_file_naming_an_unknown_group_imports_with_a_warning(registry: Registry) -> None:
    report = import_payload(registry, read_file(DATA / "minimal_simplified_group.gpkg",
                                                ReadOptions()), source="CM")
    assert report["created"] == 4
    assert any("group_not_in_gpkg" in w for w in report["warnings"])


# --- writing, and reading back --------------------------------------------------------------

TYPES = [TypeDef("Région", 2), TypeDef("Health facility/Formation sanitaire - HF", 5),
         TypeDef("Zone \"A\" l'été", None)]
GROUPS = [GroupDef("g-1", "Hôpitaux publics"), GroupDef("iaso:49592", "Group 'B' \"quoted\""),
          GroupDef("FnGKoaZpj4u", "Rural – «zone»")]


def export_unit(uuid: str, ref: str | None, name: str, parent: ExportUnit | None,
                **kw: Any) -> ExportUnit:
    values: dict[str, Any] = {
        "type": None, "code": None, "opening_date": None, "closed_date": None,
        "validation_status": "valid", "aliases": [], "extra_fields": {}, "location": None,
        "territory": None, "groups": []} | kw
    return ExportUnit(
        uuid=uuid, ref=ref or internal_ref(uuid), source_ref=ref, name=name,
        parent_ref=parent.ref if parent else None,
        depth=parent.depth + 1 if parent else 1,
        ancestors=[*parent.ancestors, parent.name] if parent else [], **values)


def version_data(units: list[ExportUnit], types: list[TypeDef] = TYPES,
                 groups: list[GroupDef] = GROUPS) -> VersionData:
    return VersionData(version=None, types=types, groups=groups,  # type: ignore[arg-type]
                       units=iter(units), count=len(units))


def same_geometry(a: Any, b: Any) -> bool:
    a, b = (shapely.Point(g) if isinstance(g, tuple) else g for g in (a, b))
    if a is None or b is None:
        return a is None and b is None
    return bool(shapely.equals_exact(shapely.normalize(a), shapely.normalize(b), 1e-9))


def assert_round_trip(units: list[ExportUnit], payload: ImportPayload,
                      records: list[UnitRecord], groups: list[GroupDef] = GROUPS) -> None:
    assert len(records) == len(units) == payload.total
    got = {r.source_ref: r for r in records}
    depth_of = {t.name: t.depth for t in payload.types}
    assert {(g.ref, g.name) for g in payload.groups} == {(g.ref, g.name) for g in groups}
    for u in units:
        rec = got[u.ref]
        assert rec.name == u.name
        assert rec.parent_ref == u.parent_ref
        assert rec.type_name == u.type
        if u.type is not None:
            assert depth_of[u.type] == {t.name: t.depth for t in TYPES}[u.type]
        assert (rec.code, rec.opening_date, rec.closed_date) == (u.code, u.opening_date,
                                                                 u.closed_date)
        assert rec.validation_status == u.validation_status
        assert (rec.aliases or []) == u.aliases and (rec.extra_fields or {}) == u.extra_fields
        assert rec.uuid == u.uuid
        assert sorted(rec.groups or []) == sorted(u.groups)
        assert same_geometry(rec.location, u.location), (u.name, rec.location, u.location)
        assert same_geometry(rec.territory, u.territory), (u.name, rec.territory, u.territory)


def write_and_read(units: list[ExportUnit], folder: Path, **kw: Any) -> tuple[
        dict[str, Any], ImportPayload, list[UnitRecord]]:
    out = folder / "export.gpkg"
    summary = write_file(version_data(units, **kw), out, ReadOptions())
    payload, records = read_all(out)
    return summary, payload, records


HOLED = Polygon([(0, 0), (4, 0), (4, 4), (0, 4)], [[(1, 1), (3, 1), (3, 3), (1, 3)]])


def handmade_units() -> list[ExportUnit]:
    country = export_unit("0190c0de-0000-7000-8000-000000000001", "SL", "Sierra Léone", None,
                          type="Région", territory=MultiPolygon([HOLED]), groups=["g-1"],
                          aliases=["Salone", "«SL»"], extra_fields={"iso": "SLE", "n": 3})
    district = export_unit("0190c0de-0000-7000-8000-000000000002", None,
                           "Bo \"District\" l'été", country, type="Région",
                           territory=MultiPolygon([box(10, 10, 11, 11), box(12, 12, 13, 14)]),
                           location=Point(10.5, 10.5), code="BO-01",
                           opening_date="1961-04-27", closed_date="2021-12-31",
                           validation_status="new", groups=["iaso:49592", "FnGKoaZpj4u"])
    return [
        country,
        district,
        export_unit("0190c0de-0000-7000-8000-000000000003", "HF-1", "Poste de santé d'Été",
                    district, type="Health facility/Formation sanitaire - HF",
                    location=Point(-13.2345678901234, 8.4567890123456)),
        export_unit("0190c0de-0000-7000-8000-000000000004", "HF-2", "No geometry", district,
                    type="Health facility/Formation sanitaire - HF", validation_status="rejected"),
        # a point-only unit in a type whose layer also has a polygon
        export_unit("0190c0de-0000-7000-8000-000000000005", "Z-1", "Zone point", country,
                    type="Zone \"A\" l'été", location=Point(1.25, 2.5)),
        export_unit("0190c0de-0000-7000-8000-000000000006", "Z-2", "Zone polygon", country,
                    type="Zone \"A\" l'été", territory=MultiPolygon([box(1, 2, 3, 4)])),
        export_unit("0190c0de-0000-7000-8000-000000000007", "U-1", "No type", country),
    ]


def test_write_then_read_gives_every_field_back(tmp_path: Path) -> None:
    units = handmade_units()
    summary, payload, records = write_and_read(units, tmp_path)
    assert summary == {"layers": 4, "units": 7, "file": str(tmp_path / "export.gpkg")}
    assert_round_trip(units, payload, records)
    assert not list(tmp_path.glob("*.part*"))


def test_the_written_file_is_shaped_like_iasos_export(tmp_path: Path) -> None:
    out = tmp_path / "export.gpkg"
    write_file(version_data(handmade_units()), out, ReadOptions())
    layers = {str(n): g for n, g in pyogrio.list_layers(out)}
    assert layers == {
        "level-2-Région": "MultiPolygon",
        "level-5-Health facility/Formation sanitaire - HF": "Point",
        "level-999-Zone \"A\" l'été": "MultiPolygon",
        "level-999-Unknown": "Point",
        "groups": None,
    }
    info = pyogrio.read_info(out, layer="level-2-Région")
    assert info["crs"] == "EPSG:4326"
    fields = list(info["fields"])
    for column in ("name", "ref", "parent", "parent_ref", "group_refs", "group_names", "uuid",
                   "opening_date", "closed_date", "code"):
        assert column in fields
    with sqlite3.connect(out) as conn:
        assert conn.execute("SELECT data_type FROM gpkg_contents WHERE table_name = 'groups'"
                            ).fetchone() == ("attributes",)
        assert conn.execute("SELECT ref, name FROM groups ORDER BY fid").fetchall() == [
            (g.ref, g.name) for g in GROUPS]
        row = conn.execute(
            "SELECT ref, parent, parent_ref, group_refs, group_names, longitude, latitude "
            "FROM \"level-2-Région\" WHERE name LIKE 'Bo %'").fetchone()
    assert row[0] == internal_ref("0190c0de-0000-7000-8000-000000000002")
    assert row[1:5] == ("Sierra Léone (Région)", "SL", "iaso:49592, FnGKoaZpj4u",
                        "Group 'B' \"quoted\", Rural – «zone»")
    assert row[5:] == (10.5, 10.5)  # its point, besides the polygon Iaso would keep


def test_an_empty_version_writes_a_file_with_only_groups(tmp_path: Path) -> None:
    out = tmp_path / "empty.gpkg"
    assert write_file(version_data([], groups=[]), out, ReadOptions())["layers"] == 0
    assert [str(n) for n, _ in pyogrio.list_layers(out)] == ["groups"]


def test_a_group_ref_with_a_comma_cannot_be_written(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="comma"):
        write_file(version_data([], groups=[GroupDef("a,b", "AB")]), tmp_path / "x.gpkg",
                   ReadOptions())


# --- property: any small tree survives write → read ------------------------------------------

TEXT = st.text(
    alphabet=st.one_of(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
                       st.sampled_from("éèàçÔ'\"«»-/ ,;:")),
    min_size=1, max_size=16,
).map(str.strip).filter(bool)
COORD = st.floats(min_value=-170, max_value=170, allow_nan=False, allow_infinity=False)
LAT = st.floats(min_value=-80, max_value=80, allow_nan=False, allow_infinity=False)
SIZE = st.floats(min_value=0.001, max_value=5, allow_nan=False, allow_infinity=False)


@st.composite
def territories(draw: st.DrawFn) -> MultiPolygon:
    x, y, w, h = draw(COORD), draw(LAT), draw(SIZE), draw(SIZE)
    shell = box(x, y, x + w, y + h)
    kind = draw(st.sampled_from(["box", "hole", "multi"]))
    if kind == "hole":
        shell = Polygon(shell.exterior.coords, [box(x + w / 4, y + h / 4, x + w / 2,
                                                    y + h / 2).exterior.coords])
    if kind == "multi":
        return MultiPolygon([shell, box(x + 2 * w, y, x + 3 * w, y + h)])
    return MultiPolygon([shell])


@st.composite
def trees(draw: st.DrawFn) -> list[ExportUnit]:
    n = draw(st.integers(min_value=1, max_value=8))
    units: list[ExportUnit] = []
    for i in range(n):
        parent_index = draw(st.none() | st.integers(min_value=0, max_value=i - 1)) if i else None
        kind = draw(st.sampled_from(["text", "internal", "none"]))
        ref = {"text": f"{i}{draw(TEXT)}", "internal": f"iaso:{1000 + i}", "none": None}[kind]
        units.append(export_unit(
            f"0190c0de-0000-7000-8000-{i:012d}", ref, draw(TEXT),
            units[parent_index] if parent_index is not None else None,
            type=draw(st.sampled_from([None, *(t.name for t in TYPES)])),
            code=draw(st.none() | TEXT),
            opening_date=draw(st.none() | st.dates().map(lambda d: d.isoformat())),
            closed_date=draw(st.none() | st.dates().map(lambda d: d.isoformat())),
            validation_status=draw(st.sampled_from(["new", "valid", "rejected"])),
            aliases=draw(st.lists(TEXT, max_size=3)),
            extra_fields=draw(st.dictionaries(TEXT, TEXT | st.integers(-999, 999) | st.booleans(),
                                              max_size=3)),
            location=draw(st.none() | st.builds(Point, COORD, LAT)),
            territory=draw(st.none() | territories()),
            groups=sorted(draw(st.sets(st.sampled_from([g.ref for g in GROUPS])))),
        ))
    return units


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(trees())
def test_any_small_tree_survives_write_then_read(units: list[ExportUnit]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _, payload, records = write_and_read(units, Path(folder))
        assert_round_trip(units, payload, records)


# --- a registry version, exported and imported again ------------------------------------------


def comparable(u: ExportUnit) -> tuple[Any, ...]:
    return (u.uuid, u.ref, u.name, u.parent_ref, u.type, u.depth, u.code, u.opening_date,
            u.closed_date, u.validation_status, u.aliases, u.extra_fields, u.groups,
            u.ancestors)


def test_registry_round_trip_through_an_iaso_geopackage(demo: Registry, tmp_path: Path) -> None:
    added = unit_api.add_unit(demo, "SL", name="Clinique «Été» d'O'Brien", parent="O6uvpzGd5pu",
                              location=Point(-11.74, 7.96),
                              territory=MultiPolygon([box(-11.75, 7.95, -11.73, 7.97)]))
    before = read_version(demo, "SL")
    out = tmp_path / "sl.gpkg"
    summary = write_file(before, out, ReadOptions())
    assert summary["units"] == before.count == 1333
    report = import_payload(demo, read_file(out, ReadOptions()), source="SL-copy")
    assert report["created"] == 1333 and report["rejected"] == 0
    original = {u.ref: u for u in read_version(demo, "SL").units}
    copied = {u.ref: u for u in read_version(demo, "SL-copy").units}
    assert copied.keys() == original.keys()
    for ref, u in original.items():
        c = copied[ref]
        assert comparable(c) == comparable(u)
        assert same_geometry(c.location, u.location) and same_geometry(c.territory, u.territory)
    # the unit without a source ref keeps its uuid; its georeg: ref becomes its source ref
    ref = internal_ref(added["uuid"])
    assert original[ref].source_ref is None and copied[ref].source_ref == ref
    assert copied[ref].location is not None and copied[ref].territory is not None
    copy_groups = read_version(demo, "SL-copy").groups
    assert {(g.ref, g.name) for g in copy_groups} == {(g.ref, g.name) for g in before.groups}
