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
    assert [(g.ref, g.name) for g in payload.groups] == [
        ("CHC", "Centres de santé"), ("Public", "Public"), ("Rural", "Rural")]
    assert "Public, Rural are not in member 'groups'" in payload.warnings[0]
    assert [u.groups for u in payload.units] == [["CHC", "Public"], ["Public", "Rural"]]


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
        geojson.read_file(cut)
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
        geojson.read_file(dump(tmp_path / "x.json", fc(feat({"name": "a"}), {"name": "b"})))
    with pytest.raises(InvalidInput, match=r"p.json, feature 1: field 'properties' must be"):
        geojson.read_file(dump(tmp_path / "p.json", fc(feat([1]))))  # type: ignore[arg-type]
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
        geojson.read_file(path)
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
    geojson._scan(path)  # the whole file streams through a bounded buffer
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"100k features, {path.stat().st_size / 1e6:.0f} MB: write {wrote:.1f}s, "
          f"read {took:.1f}s, scan peak {peak / 1e6:.0f} MB")
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
