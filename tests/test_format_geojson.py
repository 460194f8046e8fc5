"""GeoJSON FeatureCollections: write → read round trips, bad files, streaming, registry round trip."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import Transformer
from shapely import MultiPolygon, Point, Polygon, box

from storage.bulk import UnitRecord
from storage.errors import InvalidInput
from storage.registry import Registry
from storage.versions import VersionRef
from sync.exchange import ExportUnit, GroupDef, ReadOptions, TypeDef, VersionData, read_version
from sync.formats import geojson
from sync.importing import import_payload, validate

VERSION = VersionRef(id=1, source_id=1, source="Test", number=1, status="draft")


def export_unit(**kw: Any) -> ExportUnit:
    base: dict[str, Any] = dict(
        uuid="0190c0de-0000-7000-8000-000000000001", ref="R", source_ref="R", name="Unit",
        parent_ref=None, type=None, depth=1, code=None, opening_date=None, closed_date=None,
        validation_status="valid", aliases=[], extra_fields={}, location=None, territory=None,
        groups=[], ancestors=[])
    base.update(kw)
    return ExportUnit(**base)


def write(path: Path, units: list[ExportUnit], types: list[TypeDef] | None = None,
          groups: list[GroupDef] | None = None) -> dict[str, Any]:
    data = VersionData(VERSION, types or [], groups or [], iter(units), len(units))
    return geojson.write_file(data, path, ReadOptions())


def read(path: Path, opts: ReadOptions | None = None) -> list[UnitRecord]:
    """The file's records, plain points (handed over as ``(x, y)`` pairs, see
    ``UnitRecord.location``) made Points to be compared."""
    out = list(geojson.read_file(path, opts).units)
    for rec in out:
        if isinstance(rec.location, tuple):
            assert len(rec.location) == 2
            rec.location = Point(rec.location)
    return out


def dump(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def fc(*features: dict[str, Any], **members: Any) -> dict[str, Any]:
    return {"type": "FeatureCollection", **members, "features": list(features)}


def feat(props: dict[str, Any] | None, geom: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "Feature", "properties": props, "geometry": geom}


# --- round trip (hypothesis) --------------------------------------------------------------

text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30).map(
    str.strip).filter(bool)
lon = st.floats(-180, 180, allow_nan=False)
lat = st.floats(-90, 90, allow_nan=False)
dates = st.dates().map(lambda d: d.isoformat())
json_scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | text | st.floats(
    allow_nan=False, allow_infinity=False)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(text, inner, max_size=3), max_leaves=6)


@st.composite
def shapes(draw: Any) -> tuple[Point | None, Any]:
    kind = draw(st.sampled_from(["none", "point", "square", "holed", "multi", "both"]))
    x, y = draw(st.floats(-170, 170)), draw(st.floats(-80, 80))
    size = draw(st.floats(0.001, 5))
    square = box(x, y, x + size, y + size)
    holed = Polygon(square.exterior.coords, [box(x + size / 4, y + size / 4, x + size / 2,
                                                 y + size / 2).exterior.coords])
    far = box(x + 2 * size, y, x + 3 * size, y + size)
    point = Point(draw(lon), draw(lat))
    return {
        "none": (None, None), "point": (point, None), "square": (None, square),
        "holed": (None, holed), "multi": (None, MultiPolygon([holed, far])),
        "both": (point, MultiPolygon([square])),
    }[kind]


@st.composite
def versions(draw: Any) -> tuple[list[ExportUnit], list[GroupDef]]:
    groups = [GroupDef(f"G{i}", draw(text), draw(st.none() | text), draw(st.none() | text))
              for i in range(draw(st.integers(0, 3)))]
    units: list[ExportUnit] = []
    for i in range(draw(st.integers(1, 8))):
        location, territory = draw(shapes())
        parent = draw(st.sampled_from(units)) if units and draw(st.booleans()) else None
        units.append(export_unit(
            uuid=f"0190c0de-0000-7000-8000-{i:012d}", ref=f"{draw(text)}#{i}",
            name=draw(text), parent_ref=parent.ref if parent else None,
            depth=parent.depth + 1 if parent else 1,
            type=draw(st.none() | st.sampled_from(["Région", 'Dist"rict', "CSPS"])),
            code=draw(st.none() | text), opening_date=draw(st.none() | dates),
            closed_date=draw(st.none() | dates),
            validation_status=draw(st.sampled_from(["new", "valid", "rejected"])),
            aliases=draw(st.lists(text, max_size=3)),
            extra_fields=draw(st.dictionaries(text, json_values, max_size=3)),
            location=location, territory=territory,
            groups=sorted(draw(st.sets(st.sampled_from([g.ref for g in groups])))
                          if groups else []),
        ))
    return units, groups


def same_shape(a: Any, b: Any) -> bool:
    if isinstance(a, tuple):  # a plain point as the reader hands it over
        a = Point(a)
    if a is None or b is None:
        return a is b
    return a.geom_type == b.geom_type and bool(shapely.equals_exact(a, b, 0))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(versions())
def test_write_then_read_gives_back_every_field(tmp_path: Path,
                                                 version: tuple[list[ExportUnit], list[GroupDef]]
                                                 ) -> None:
    units, groups = version
    path = tmp_path / "round.geojson"
    summary = write(path, units, [TypeDef("Région", 1, "Rég."), TypeDef('Dist"rict', 2)], groups)
    assert summary["features"] == len(units)
    json.loads(path.read_text(encoding="utf-8"))  # plain, valid JSON
    payload = geojson.read_file(path)
    got = list(payload.units)
    assert payload.total == len(got) == len(units)
    for want, rec in zip(units, got, strict=True):
        assert (rec.name, rec.source_ref, rec.parent_ref, rec.type_name, rec.code) == (
            want.name, want.ref, want.parent_ref, want.type, want.code)
        assert (rec.opening_date, rec.closed_date, rec.uuid, rec.validation_status) == (
            want.opening_date, want.closed_date, want.uuid, want.validation_status)
        assert (rec.aliases or []) == want.aliases and (rec.groups or []) == want.groups
        assert (rec.extra_fields or {}) == want.extra_fields
        assert same_shape(rec.location, want.location)
        assert same_shape(rec.territory, want.territory)
    assert {(g.ref, g.name, g.short_name, g.code) for g in payload.groups} == {
        (g.ref, g.name, g.short_name, g.code) for g in groups}
    types = {t.name: (t.depth, t.short_name) for t in payload.types}
    assert types["Région"] == (1, "Rég.") and types['Dist"rict'] == (2, None)


def test_point_and_territory_stay_one_plain_polygon_feature(tmp_path: Path) -> None:
    path = tmp_path / "both.geojson"
    territory = MultiPolygon([box(-11.8, 7.9, -11.7, 8.0)])
    write(path, [export_unit(location=Point(-11.74, 7.96), territory=territory),
                 export_unit(ref="P", location=Point(1, 2))])
    doc = json.loads(path.read_text(encoding="utf-8"))
    both, point = doc["features"]
    assert both["geometry"]["type"] == "MultiPolygon"
    assert both["properties"]["location"] == [-11.74, 7.96]
    assert point["geometry"] == {"type": "Point", "coordinates": [1.0, 2.0]}
    assert point["properties"]["location"] is None
    assert doc["type"] == "FeatureCollection" and doc["name"] == "Test v1"
    assert list(doc)[-1] == "features"  # foreign members first, for streaming readers
    a, b = read(path)
    assert a.location == Point(-11.74, 7.96) and same_shape(a.territory, territory)
    assert b.location == Point(1, 2) and b.territory is None


def test_each_feature_is_the_json_of_its_dict_whatever_the_text(tmp_path: Path) -> None:
    """The writer puts features together from column texts; each line must be exactly
    ``json.dumps`` of the feature as a dict, for plain columns, columns that need
    escaping (quotes, backslashes, control characters), columns with nulls and
    columns of a few repeated values."""
    odd = ['He said "hi"', "back\\slash", "tab\tand\nnewline", "Ségou é", "\u0001x",
           "plain", "plain", "plain"]
    units = [export_unit(ref=f"R{i}", name=name, code=None if i % 3 else name,
                         type=["Région", None][i % 2], opening_date="2001-02-03",
                         closed_date=None if i else "2020-01-01",
                         validation_status="valid", aliases=[name] if i == 1 else [],
                         extra_fields={"k": name} if i == 2 else {},
                         groups=["G1"] if i == 3 else [],
                         location=Point(i, -i) if i % 2 else None,
                         territory=box(0, 0, 1, 1) if i == 5 else None)
             for i, name in enumerate(odd * 4)]
    path = tmp_path / "odd.geojson"
    write(path, units)
    lines = path.read_text(encoding="utf-8").split("\n")
    features = [line.rstrip(",") for line in lines if line.startswith('{"type":"Feature"')]
    assert features == [json.dumps(geojson.feature(u), ensure_ascii=False,
                                   separators=(",", ":")) for u in units]
    assert [r.name for r in read(path)] == odd * 4


def test_geometry_collection_and_location_variants_are_read(tmp_path: Path) -> None:
    path = dump(tmp_path / "gc.geojson", fc(
        feat({"name": "gc", "ref": "a"}, {"type": "GeometryCollection", "geometries": [
            {"type": "Point", "coordinates": [0.5, 0.5]},
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}]}),
        feat({"name": "moved", "ref": "b", "location": [9, 9]},
             {"type": "Point", "coordinates": [1, 1, 30]}),
        feat({"name": "prop", "ref": "c", "location": {"type": "Point", "coordinates": [2, 3]}},
             {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}),
    ))
    gc, moved, prop = read(path)
    assert gc.location == Point(0.5, 0.5) and gc.territory is not None
    assert moved.location == Point(1, 1)  # the geometry wins over a stale property; 2-D
    assert prop.location == Point(2, 3)


def test_legacy_crs_member_is_reprojected(tmp_path: Path) -> None:
    utm = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32628"}}
    x, y = Transformer.from_crs(4326, 32628, always_xy=True).transform(-11.74, 7.96)
    path = dump(tmp_path / "utm.geojson", fc(
        feat({"name": "H"}, {"type": "Point", "coordinates": [x, y]}), crs=utm))
    (rec,) = read(path)
    assert rec.location is not None and rec.location.distance(Point(-11.74, 7.96)) < 1e-9
    crs84 = {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}}
    path = dump(tmp_path / "crs84.geojson", fc(
        feat({"name": "H"}, {"type": "Point", "coordinates": [-11.7, 7.9]}), crs=crs84))
    assert read(path)[0].location == Point(-11.7, 7.9)


def test_group_refs_without_a_groups_member_become_groups(tmp_path: Path) -> None:
    path = dump(tmp_path / "g.geojson", fc(
        feat({"name": "A", "ref": "a", "groups": ["CHC", "Public"]}),
        feat({"name": "B", "ref": "b", "groups": "Public;Rural"}),
        groups=[{"ref": "CHC", "name": "Centres de santé"}]))
    payload = geojson.read_file(path)
    assert [(g.ref, g.name) for g in payload.groups] == [("CHC", "Centres de santé")]
    assert [u.groups for u in payload.units] == [["CHC", "Public"], ["Public", "Rural"]]
    # groups named only by features are learned as the units stream (one pass)
    assert [(g.ref, g.name) for g in payload.groups] == [
        ("CHC", "Centres de santé"), ("Public", "Public"), ("Rural", "Rural")]
    assert "Public, Rural are not in member 'groups'" in payload.warnings[0]


# --- bad files -----------------------------------------------------------------------------


def test_not_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text('{"type": "FeatureCollection",\n "features": [\n  {"type": "Feature",, }\n]}')
    with pytest.raises(InvalidInput, match=r"bad.geojson: not valid JSON \(line 3, column 22"):
        geojson.read_file(path)
    path.write_text("")
    with pytest.raises(InvalidInput, match=r"not valid JSON \(line 1, column 1: Expecting value"):
        geojson.read_file(path)
    good = tmp_path / "good.geojson"
    write(good, [export_unit(ref=f"r{i}", territory=box(i, 0, i + 1, 1)) for i in range(300)])
    cut = tmp_path / "cut.geojson"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InvalidInput, match=r"cut.geojson: not valid JSON \(line \d+, column"):
        read(cut)  # found as the units stream
    with pytest.raises(InvalidInput, match="nope.geojson: file not found"):
        geojson.read_file(tmp_path / "nope.geojson")
    latin = tmp_path / "latin.geojson"
    latin.write_bytes('{"type": "FeatureCollection", "features": [], "name": "é"}'.encode("latin-1"))
    with pytest.raises(InvalidInput, match="latin.geojson: not UTF-8"):
        geojson.read_file(latin)


def test_not_a_feature_collection(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="expected a GeoJSON FeatureCollection"):
        geojson.read_file(dump(tmp_path / "a.json", [1, 2]))
    with pytest.raises(InvalidInput, match="not a GeoJSON FeatureCollection .* 'Feature'"):
        geojson.read_file(dump(tmp_path / "f.json", feat({"name": "x"})))
    with pytest.raises(InvalidInput, match="member 'features' must be an array"):
        geojson.read_file(dump(tmp_path / "n.json", {"type": "FeatureCollection",
                                                     "features": None}))
    with pytest.raises(InvalidInput, match=r"x.json, feature 2: expected a GeoJSON Feature"):
        read(dump(tmp_path / "x.json", fc(feat({"name": "a"}), {"name": "b"})))
    with pytest.raises(InvalidInput, match=r"p.json, feature 1: field 'properties' must be"):
        read(dump(tmp_path / "p.json", fc(feat([1]))))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="p2.json: no features"):
        geojson.read_file(dump(tmp_path / "p2.json", fc()))


def test_features_without_names_are_rejected_per_row_by_the_job(tmp_path: Path) -> None:
    path = dump(tmp_path / "units.geojson", fc(
        feat({"name": "ok", "ref": "a"}),
        feat({"ref": "b"}, {"type": "Point", "coordinates": [8.4, 200]}),
        feat({"name": "  ", "ref": "c"}),
        feat({"name": "late", "ref": "d", "opening_date": "yesterday"}),
    ))
    recs = read(path)
    messages = []
    for rec in recs[1:]:
        with pytest.raises(InvalidInput) as err:
            validate(rec)
        messages.append(err.value.message)
    assert messages == [
        "units.geojson, feature 2 (ref b): field 'name' is missing or empty.",
        "units.geojson, feature 3 (ref c): field 'name' is missing or empty.",
        "units.geojson, feature 4 (ref d): field 'opening_date': 'yesterday' is not a date "
        "(expected YYYY-MM-DD).",
    ]
    recs[1].name = "named"
    with pytest.raises(InvalidInput, match=r"feature 2 \(ref b\): field 'latitude' is 200"):
        validate(recs[1])


def test_no_name_at_all_suggests_a_mapping(tmp_path: Path) -> None:
    path = dump(tmp_path / "admin.geojson", fc(
        feat({"ADM1_EN": "Bo", "ADM1_PCODE": "SL01"},
             {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]})))
    with pytest.raises(InvalidInput, match=r"no feature has a 'name' property \(properties "
                       r"here: ADM1_EN, ADM1_PCODE\)\. For other column names give --mapping"):
        read(path)  # known once every feature is read
    (rec,) = read(path, ReadOptions(mapping={"name": "ADM1_EN", "ref": "ADM1_PCODE"}))
    assert (rec.name, rec.source_ref) == ("Bo", "SL01") and rec.territory is not None


def test_bad_geometries_name_the_feature(tmp_path: Path) -> None:
    path = dump(tmp_path / "l.geojson", fc(
        feat({"name": "road", "ref": "r"}, {"type": "LineString", "coordinates": [[0, 0], [1, 1]]})))
    with pytest.raises(InvalidInput, match=r"l.geojson, feature 1 \(ref r\): field 'geometry' is "
                                           "a LineString"):
        read(path)
    path = dump(tmp_path / "g.geojson", fc(feat({"name": "x"}, {"type": "Polygon",
                                                                "coordinates": "nope"})))
    with pytest.raises(InvalidInput, match=r"g.geojson, feature 1: field 'geometry' is not valid"):
        read(path)
    path = dump(tmp_path / "bow.geojson", fc(feat({"name": "bow"}, {
        "type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]})))
    (rec,) = read(path)  # invalid polygons are for the job to judge (or fix)
    assert rec.territory is not None and not rec.territory.is_valid


# --- streaming -------------------------------------------------------------------------------


def test_members_after_features_and_odd_layout_are_read(tmp_path: Path) -> None:
    path = tmp_path / "odd.geojson"
    features = ",".join(json.dumps(feat({"name": f"n{i}", "ref": i, "level": 1, "type": "T"}))
                        for i in range(5000))
    path.write_text('\ufeff { "features" : [ ' + features + ' ] , "groups":[{"ref":"g","name":'
                    '"G"}],"type" :"FeatureCollection" }\n', encoding="utf-8")
    geojson._JsonStream.CHUNK = 1000  # every feature straddles a buffer edge somewhere
    try:
        payload = geojson.read_file(path)
        got = list(payload.units)
    finally:
        geojson._JsonStream.CHUNK = 1 << 20
    assert [u.source_ref for u in got] == [str(i) for i in range(5000)]
    assert [(g.ref, g.name) for g in payload.groups] == [("g", "G")]
    assert [(t.name, t.depth) for t in payload.types] == [("T", 1)]


@pytest.mark.slow
def test_100k_features_stream_through_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.geojson"
    n = 100_000
    units = (export_unit(uuid=f"u{i}", ref=f"r{i}", name=f"Unité {i}",
                         parent_ref=f"r{i // 10}" if i else None, type="T",
                         location=Point(-12 + i * 1e-5, 8.0) if i % 2 else None,
                         territory=None if i % 2 else box(-12, 8, -11.9, 8.1))
             for i in range(n))
    start = time.perf_counter()
    geojson.write_file(VersionData(VERSION, [], [], units, n), path)
    wrote = time.perf_counter() - start
    start = time.perf_counter()
    payload = geojson.read_file(path)
    count = sum(1 for _ in payload.units)
    took = time.perf_counter() - start
    assert count == payload.total == n
    tracemalloc.start()
    sum(1 for _ in geojson.read_file(path).units)  # streams through a bounded buffer
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"100k features, {path.stat().st_size / 1e6:.0f} MB: write {wrote:.1f}s, "
          f"read {took:.1f}s, read peak {peak / 1e6:.0f} MB")
    assert peak < 0.25 * path.stat().st_size  # speed: benchmarks/bench_formats.py


# --- with a registry -------------------------------------------------------------------------


def test_registry_round_trip(demo: Registry, tmp_path: Path) -> None:
    path = tmp_path / "sl.geojson"
    before = read_version(demo, "SL")
    summary = geojson.write_file(before, path)
    assert summary["features"] == before.count
    report = import_payload(demo, geojson.read_file(path), source="Copy")
    assert report["created"] == before.count and report["rejected"] == 0
    a = {u.uuid: u for u in read_version(demo, "SL").units}
    b = {u.uuid: u for u in read_version(demo, "Copy").units}
    assert a.keys() == b.keys()
    for uuid, x in a.items():
        y = b[uuid]
        assert (y.ref, y.name, y.parent_ref, y.type, y.depth, y.code, y.opening_date,
                y.closed_date, y.groups, y.aliases, y.extra_fields, y.validation_status) == (
            x.ref, x.name, x.parent_ref, x.type, x.depth, x.code, x.opening_date,
            x.closed_date, x.groups, x.aliases, x.extra_fields, x.validation_status)
        assert same_shape(y.location, x.location) and same_shape(y.territory, x.territory)
    copy = read_version(demo, "Copy")
    assert [(g.ref, g.name) for g in copy.groups] == [(g.ref, g.name) for g in before.groups]
    assert [(t.name, t.depth) for t in copy.types] == [(t.name, t.depth) for t in before.types]


# --- one pass: what the features tell is learned as the units stream ---------------------------

POLY = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
TREE = [
    feat({"name": "Top", "ref": "top", "level": 1, "type": "Country"}, POLY),
    feat({"name": "R1", "ref": "r1", "parent_ref": "top", "level": 2, "type": "Region",
          "groups": ["G1", "Only"]}),
    feat({"name": "R2", "ref": "r2", "parent_ref": "top", "level": 2, "type": "Region"}),
    feat({"name": "D1", "ref": "d1", "parent_ref": "r1", "level": 3, "type": "District",
          "groups": "G2;Late"}),
    feat({"name": "X1", "ref": "x1", "parent_ref": "d1", "level": 4, "type": "Mixed"},
         {"type": "Point", "coordinates": [0.5, 0.5]}),
    feat({"name": "X2", "ref": "x2", "parent_ref": "r2", "level": 3, "type": "Mixed"},
         {"type": "Point", "coordinates": [0.2, 0.3]}),
    feat({"name": "F1", "ref": "f1", "parent_ref": "x1", "level": 5, "type": "Facility",
          "groups": ["G1"]}, {"type": "Point", "coordinates": [0.1, 0.1]}),
]
DECLARED = {"types": [{"name": "Region", "depth": 2, "short_name": "Rég"},
                      {"name": "Unused", "depth": 9}],
            "groups": [{"ref": "G1", "name": "Group one", "code": "C1"},
                       {"ref": "G2", "name": "Group two"}]}
#: what the two-pass reader (before the one-pass one) gave for TREE with DECLARED
TREE_REGISTRY = {
    "types": [("Country", 1, None), ("District", 3, None), ("Facility", 5, None),
              ("Mixed", None, None), ("Region", 2, "Rég"), ("Unused", 9, None)],
    "groups": [("G1", "Group one", None, "C1"), ("G2", "Group two", None, None),
               ("Late", "Late", None, None), ("Only", "Only", None, None)],
    "members": [("G1", "f1"), ("G1", "r1"), ("G2", "d1"), ("Late", "d1"), ("Only", "r1")],
    "units": [("d1", "D1", "r1", "District", 3), ("f1", "F1", "x1", "Facility", 5),
              ("r1", "R1", "top", "Region", 2), ("r2", "R2", "top", "Region", 2),
              ("top", "Top", None, "Country", 1), ("x1", "X1", "d1", "Mixed", 4),
              ("x2", "X2", "r2", "Mixed", 3)],
}


def tree_file(path: Path, before: dict[str, Any], after: dict[str, Any],
              features: list[dict[str, Any]] | None = None,
              kind: str | None = "FeatureCollection") -> Path:
    """A FeatureCollection (``"type": kind`` first, unless None) with ``before`` members
    ahead of ``features`` and ``after`` behind."""
    head = json.dumps({"type": kind, **before} if kind else before)[1:-1]
    tail = json.dumps(after)[1:-1]
    path.write_text("{" + head + (", " if head else "") + '"features": '
                    + json.dumps(TREE if features is None else features)
                    + (", " + tail if tail else "") + "}", encoding="utf-8")
    return path


def contents(reg: Registry, source: str) -> dict[str, list[tuple[Any, ...]]]:
    """Types (all: they are shared), and the source's groups, memberships and units."""
    from sqlalchemy import text

    with reg.read() as conn:
        v = {"s": source}
        version = ("SELECT v.fid FROM source_version v JOIN data_source s ON s.fid = v.source_id "
                   "WHERE s.name = :s")
        return {
            "types": sorted(tuple(r) for r in conn.execute(text(
                "SELECT name, depth, short_name FROM org_unit_type"))),
            "groups": sorted(tuple(r) for r in conn.execute(text(
                "SELECT source_ref, name, short_name, code FROM org_unit_group "
                f"WHERE version_id IN ({version})"), v)),
            "members": sorted(tuple(r) for r in conn.execute(text(
                "SELECT g.source_ref, u.source_ref FROM group_membership m "
                "JOIN org_unit_group g ON g.group_key = m.group_key AND g.version_id = m.version_id "
                "JOIN org_unit u ON u.unit_key = m.unit_key AND u.version_id = m.version_id "
                f"WHERE m.version_id IN ({version})"), v)),
            "units": sorted(tuple(r) for r in conn.execute(text(
                "SELECT u.source_ref, u.name, p.source_ref, t.name, u.depth FROM org_unit u "
                "LEFT JOIN org_unit p ON p.unit_key = u.parent_key AND p.version_id = u.version_id "
                "LEFT JOIN org_unit_type t ON t.fid = u.type_id "
                f"WHERE u.version_id IN ({version})"), v)),
        }


def table_counts(reg: Registry) -> dict[str, int]:
    from sqlalchemy import text

    tables = ("data_source", "source_version", "org_unit", "org_unit_territory", "org_unit_type",
              "org_unit_group", "group_membership", "change_log")
    with reg.read() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}


MIXED = "type 'Mixed' has features at levels 3, 4; it is given no depth."
UNNAMED = "group(s) Only, Late are not in member 'groups'; named by their ref."


def test_one_pass_gives_the_registry_the_two_passes_gave(registry: Registry,
                                                          tmp_path: Path) -> None:
    path = tree_file(tmp_path / "tree.geojson", {"name": "x", "foo": {"bar": 1}, **DECLARED}, {})
    payload = geojson.read_file(path)
    # before the units: what the header declares (types learned from features, groups
    # named only by features come as the units stream)
    assert [(t.name, t.depth, t.short_name) for t in payload.types] == [
        ("Region", 2, "Rég"), ("Unused", 9, None)]
    assert [g.ref for g in payload.groups] == ["G1", "G2"]
    report = import_payload(registry, payload, source="S")
    assert report["created"] == 7 and report["rejected"] == 0
    assert report["warnings"] == [f"tree.geojson: {MIXED}", f"tree.geojson: {UNNAMED}"]
    assert contents(registry, "S") == TREE_REGISTRY


def test_types_groups_and_foreign_members_after_the_features(registry: Registry,
                                                              tmp_path: Path) -> None:
    """Members after ``features`` are read at the end; a type first met on a unit (Region
    here) gets its depth and short name then."""
    path = tree_file(tmp_path / "late.geojson", {"name": "x"}, {"foo": [1, 2], **DECLARED})
    payload = geojson.read_file(path)
    assert payload.types == [] and payload.groups == []
    report = import_payload(registry, payload, source="S")
    assert report["warnings"] == [f"late.geojson: {MIXED}", f"late.geojson: {UNNAMED}"]
    assert contents(registry, "S") == TREE_REGISTRY


def test_types_learned_from_levels_and_a_type_at_two_levels(tmp_path: Path) -> None:
    path = tree_file(tmp_path / "bare.geojson", {}, {})
    payload = geojson.read_file(path)
    assert payload.types == [] and payload.groups == [] and payload.warnings == []
    assert len(list(payload.units)) == 7
    assert [(t.name, t.depth) for t in payload.types] == [
        ("Country", 1), ("Region", 2), ("District", 3), ("Facility", 5), ("Mixed", None)]
    assert [(g.ref, g.name) for g in payload.groups] == [
        ("G1", "G1"), ("Only", "Only"), ("G2", "G2"), ("Late", "Late")]
    assert payload.warnings == [f"bare.geojson: {MIXED}"]  # groups: none declared, no warning


def test_several_files_keep_the_first_definition_of_a_type(registry: Registry,
                                                          tmp_path: Path) -> None:
    """As when each file was read whole first: a type learned from the first file's
    features wins over the second file's declaration; a group named by its ref in the
    first file takes the name the second declares."""
    first = dump(tmp_path / "a.geojson", fc(
        feat({"name": "A", "ref": "a", "level": 1, "type": "Region", "groups": ["G"]})))
    second = dump(tmp_path / "b.geojson", fc(
        feat({"name": "B", "ref": "b", "parent_ref": "a", "level": 2, "type": "District"}),
        types=[{"name": "Region", "depth": 7}], groups=[{"ref": "G", "name": "Named"}]))
    payload = geojson.read_files([first, second])
    import_payload(registry, payload, source="S")
    assert payload.total == 2
    got = contents(registry, "S")
    assert got["types"] == [("District", 2, None), ("Region", 1, None)]
    assert got["groups"] == [("G", "Named", None, None)] and got["members"] == [("G", "a")]


def test_a_failure_while_the_units_stream_leaves_the_registry_unchanged(
        registry: Registry, tmp_path: Path) -> None:
    """Found only after units were written (more than a loader batch): the import's one
    transaction rolls back — no version, unit, type or group is left, new or upserted."""
    import_payload(registry, geojson.read_file(tree_file(tmp_path / "t.geojson", DECLARED, {})),
                   source="S")
    before = table_counts(registry)
    many = [feat({"name": f"N{i}", "ref": f"n{i}", "level": 1, "type": "Brand new",
                  "groups": ["NEWG"]}, {"type": "Point", "coordinates": [1, 2]})
            for i in range(6000)]
    good = tree_file(tmp_path / "many.geojson", {}, {}, many)
    cut = tmp_path / "cut.geojson"
    cut.write_bytes(good.read_bytes()[:-200])
    late_type = tree_file(tmp_path / "topo.geojson", {}, {"type": "Topology"}, many, None)
    late_crs = tree_file(tmp_path / "crs.geojson", {}, {"crs": {
        "type": "name", "properties": {"name": "EPSG:32628"}}}, many)
    for path, number, error in (
            (cut, None, "cut.geojson: not valid JSON"),
            (cut, 1, "cut.geojson: not valid JSON"),
            (late_type, None, "not a GeoJSON FeatureCollection .*'Topology'"),
            (late_crs, 1, "member 'crs' comes after 'features'")):
        payload = geojson.read_file(path)  # the header and the first feature are fine
        with pytest.raises(InvalidInput, match=error):
            import_payload(registry, payload, source="S", number=number)
        assert table_counts(registry) == before, path.name
    assert contents(registry, "S") == TREE_REGISTRY


def test_text_coordinates_are_rejected_per_row_with_the_other_rows(registry: Registry,
                                                                    tmp_path: Path) -> None:
    path = dump(tmp_path / "pts.geojson", fc(
        feat({"name": "ok", "ref": "a"}, {"type": "Point", "coordinates": [12.5, 8]}),
        feat({"name": "text", "ref": "b"}, {"type": "Point", "coordinates": ["12.5", 8]}),
        feat({"name": "far", "ref": "c"}, {"type": "Point", "coordinates": [8.4, 200]}),
        feat({"name": " ", "ref": "d"}),
        feat({"name": "bool", "ref": "e"}, {"type": "Point", "coordinates": [True, 8]}),
        feat({"name": "poly", "ref": "f"}, POLY),
    ))
    with pytest.raises(InvalidInput) as caught:
        import_payload(registry, geojson.read_file(path), source="S")
    message = caught.value.message
    assert "4 row(s) rejected; nothing was imported" in message
    for line in ("pts.geojson, feature 2 (ref b): field 'location' must be a point: two "
                 "numbers (longitude, latitude), not ('12.5', 8)",
                 "pts.geojson, feature 3 (ref c): field 'latitude' is 200",
                 "pts.geojson, feature 4 (ref d): field 'name' is missing or empty",
                 "pts.geojson, feature 5 (ref e): field 'location' must be a point"):
        assert line in message
    report = import_payload(registry, geojson.read_file(path), source="S", skip_invalid=True)
    assert (report["created"], report["rejected"]) == (2, 4)
    # with a CRS to reproject from, too
    utm = {"type": "name", "properties": {"name": "EPSG:32628"}}
    path = dump(tmp_path / "utm.geojson", fc(
        feat({"name": "text"}, {"type": "Point", "coordinates": [500000, "900000"]}), crs=utm))
    (rec,) = list(geojson.read_file(path).units)
    assert rec.location == (500000, "900000")


def test_upsert_into_an_existing_draft_learns_types_and_groups(demo: Registry,
                                                              tmp_path: Path) -> None:
    """Into an existing draft the job reads the records first, then the types and groups
    the reader learned from them."""
    from sqlalchemy import text

    unit = next(u for u in read_version(demo, "SL").units if u.parent_ref and u.type)
    path = dump(tmp_path / "up.geojson", fc(
        feat({"ref": unit.ref, "name": unit.name + " (renamed)", "parent_ref": unit.parent_ref,
              "level": unit.depth, "type": unit.type}),
        feat({"ref": "NEW1", "name": "New kiosk", "parent_ref": unit.ref,
              "level": unit.depth + 1, "type": "Kiosk", "groups": ["NEWG"]},
             {"type": "Point", "coordinates": [-11.7, 8.1]})))
    report = import_payload(demo, geojson.read_file(path), source="SL", number=1)
    assert (report["created"], report["updated"], report["rejected"]) == (1, 1, 0)
    with demo.read() as conn:
        assert conn.execute(text("SELECT depth FROM org_unit_type WHERE name = 'Kiosk'")
                            ).scalar_one() == unit.depth + 1
    new = next(u for u in read_version(demo, "SL").units if u.ref == "NEW1")
    assert new.groups == ["NEWG"] and new.parent_ref == unit.ref and new.type == "Kiosk"


def test_the_unit_count_is_estimated_while_reading_then_exact(registry: Registry,
                                                              tmp_path: Path) -> None:
    from sync.importing import ImportJob

    n = 5000
    path = tree_file(tmp_path / "n.geojson", {}, {}, [
        feat({"name": f"N{i}", "ref": f"n{i}"}, {"type": "Point", "coordinates": [1, 2]})
        for i in range(n)])
    payload = geojson.read_file(path)
    assert payload.total is not None and 0.8 * n < payload.total < 1.2 * n  # from feature 1
    job = ImportJob(registry, payload, source="S")
    seen: list[tuple[int, int | None]] = []
    job.on_progress(lambda p: seen.append((p.done, p.total)))
    job.run()
    assert len(seen) >= n // 1000
    assert all(total is not None and 0.8 * n < total < 1.2 * n for _, total in seen)
    assert all(done <= (total or 0) for done, total in seen)
    assert seen[-1][1] == payload.total == n


def test_a_polygon_with_a_text_coordinate_is_refused_naming_the_feature(
        registry: Registry, tmp_path: Path) -> None:
    ring = [[0, 0], [1, 0], ["1", 1], [0, 0]]
    for geom in ({"type": "Polygon", "coordinates": [ring]},
                 {"type": "MultiPolygon", "coordinates": [[ring]]},
                 {"type": "GeometryCollection", "geometries": [
                     {"type": "Polygon", "coordinates": [ring]}]}):
        path = dump(tmp_path / "poly.geojson", fc(
            feat({"name": "ok", "ref": "a"}, {"type": "Point", "coordinates": [12.5, 8]}),
            feat({"name": "area", "ref": "b"}, geom)))
        before = table_counts(registry)
        with pytest.raises(InvalidInput, match=r"poly.geojson, feature 2 \(ref b\): field "
                           r"'geometry' has a coordinate that is not a number \('1'\)"):
            import_payload(registry, geojson.read_file(path), source="S")
        assert table_counts(registry) == before
