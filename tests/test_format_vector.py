"""Generic vector files through GDAL: column mapping, CRS, bad files, parents by location, export.

The parent-by-location tests build a small country the way ministries ship one:
regions, districts, health areas and facilities in four files of four formats,
one of them in UTM, digitised sloppily so that neighbours overlap a little; every
unit must still land in the unit that really contains it.
"""

from __future__ import annotations

import datetime as dt
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import pyogrio
import pytest
import shapely
from shapely import MultiPolygon, Point, Polygon, box

from storage.bulk import ROW_PROBLEMS, UnitRecord
from storage.errors import InvalidInput
from storage.registry import Registry
from sync.exchange import ImportPayload, ReadOptions, read_version
from sync.formats import vector
from sync.importing import import_payload, validate

WGS84 = "EPSG:4326"
UTM28 = "EPSG:32628"


def units(payload: ImportPayload) -> list[UnitRecord]:
    return list(payload.units)


def write(path: Path, rows: list[dict[str, Any]], geoms: list[Any], crs: str | None = WGS84,
          **kw: Any) -> Path:
    gdf = gpd.GeoDataFrame(rows, geometry=gpd.GeoSeries(geoms, crs=WGS84), crs=WGS84)
    if crs is None:
        gdf = gdf.set_crs(None, allow_override=True)
    elif crs != WGS84:
        gdf = gdf.to_crs(crs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'crs' was not provided")
        pyogrio.write_dataframe(gdf, path, **kw)
    return path


# --- columns and mapping ----------------------------------------------------------------


def test_usual_column_names_need_no_mapping(tmp_path: Path) -> None:
    path = write(tmp_path / "units.gpkg", [
        {"NAME": "Sierra Leone", "ID": "SL", "PARENT_ID": None, "Level": 1, "Code": "SL"},
        {"NAME": "Bo", "ID": "BO", "PARENT_ID": "SL", "Level": 2, "Code": None},
    ], [box(-13.3, 6.9, -10.3, 10.0), Point(-11.74, 7.96)])
    payload = vector.read_file(path, ReadOptions())
    got = units(payload)
    assert [(u.name, u.source_ref, u.parent_ref, u.type_name, u.code) for u in got] == [
        ("Sierra Leone", "SL", None, "Level 1", "SL"), ("Bo", "BO", "SL", "Level 2", None)]
    assert got[0].territory is not None and got[0].location is None
    assert got[1].location == Point(-11.74, 7.96) and got[1].territory is None
    assert [(t.name, t.depth) for t in payload.types] == [("Level 1", 1), ("Level 2", 2)]
    assert payload.total == 2 and got[1].where == "units.gpkg, row 2"


def test_mapping_names_columns_and_constants(tmp_path: Path) -> None:
    path = write(tmp_path / "districts.shp", [
        {"NAME_2": "Bo ", "GID_2": "SLE.1.1", "GID_1": "SLE.1", "HASC_2": "SL.BO",
         "VARNAME_2": "Bo Town; Bo City", "OPENED": "1961-04-27", "POP": 575478, "X": "x"},
        {"NAME_2": "Kenema", "GID_2": "SLE.1.2", "GID_1": "SLE.1", "HASC_2": None,
         "VARNAME_2": None, "OPENED": None, "POP": None, "X": "y"},
    ], [box(-12, 7, -11, 8), box(-11, 7, -10.5, 8.5)])
    mapping = {"name": "NAME_2", "ref": "GID_2", "parent_ref": "GID_1", "code": "HASC_2",
               "aliases": "VARNAME_2", "opening_date": "OPENED", "type_name": "District",
               "depth": 3, "extra_fields": ["POP"]}
    payload = vector.read_file(path, ReadOptions(mapping=mapping))
    bo, kenema = units(payload)
    assert (bo.name, bo.source_ref, bo.parent_ref, bo.code, bo.type_name) == (
        "Bo", "SLE.1.1", "SLE.1", "SL.BO", "District")
    assert bo.aliases == ["Bo Town", "Bo City"] and bo.opening_date == "1961-04-27"
    assert bo.extra_fields == {"POP": 575478} and kenema.extra_fields is None
    assert kenema.aliases is None and kenema.opening_date is None
    assert [(t.name, t.depth) for t in payload.types] == [("District", 3)]
    assert isinstance(bo.territory, Polygon)


def test_mapping_column_lists_and_extra_star(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fgb", [{"NAME_1": "Bo", "GID_1": "B", "POP": 3, "AREA": 1.5}],
                 [Point(-11.7, 7.9)])
    got = units(vector.read_file(path, ReadOptions(mapping={
        "name": ["NAME_2", "NAME_1"], "ref": ["GID_2", "GID_1"], "extra_fields": "*"})))
    assert (got[0].name, got[0].source_ref) == ("Bo", "B")
    assert got[0].extra_fields == {"POP": 3, "AREA": 1.5}


def test_missing_name_column_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "x.gpkg", [{"ADM2_EN": "Bo", "ADM2_PCODE": "SL0101"}],
                 [Point(-11.7, 7.9)])
    with pytest.raises(InvalidInput) as err:
        vector.read_file(path, ReadOptions())
    assert "x.gpkg: no name column" in err.value.message
    assert "ADM2_EN, ADM2_PCODE" in err.value.message and "--mapping" in err.value.message
    with pytest.raises(InvalidInput, match="column 'NAME_2' for 'name'.*ADM2_EN, ADM2_PCODE"):
        vector.read_file(path, ReadOptions(mapping={"name": "NAME_2"}))
    with pytest.raises(InvalidInput, match="unknown key.*'nmae'"):
        vector.read_file(path, ReadOptions(mapping={"nmae": "ADM2_EN"}))
    got = units(vector.read_file(path, ReadOptions(mapping={"name": "adm2_en",
                                                            "ref": "ADM2_PCODE"})))
    assert (got[0].name, got[0].source_ref) == ("Bo", "SL0101")


def test_numbers_become_text_refs_and_code_stands_in_for_a_ref(tmp_path: Path) -> None:
    path = write(tmp_path / "f.gpkg", [{"name": "A", "code": 101, "parent_id": 7.0},
                                       {"name": "B", "code": 102, "parent_id": None}],
                 [None, None])
    payload = vector.read_file(path, ReadOptions())
    a, b = units(payload)
    assert (a.source_ref, a.code, a.parent_ref, b.parent_ref) == ("101", "101", "7", None)
    assert a.location is None and a.territory is None
    assert any("'code' is used as ref" in w for w in payload.warnings)


def test_zipped_shapefile_and_date_columns(tmp_path: Path) -> None:
    shp = write(tmp_path / "hf.shp", [
        {"name": "A", "opened": dt.date(1999, 12, 31), "closed": dt.date(2021, 5, 6)},
        {"name": "B", "opened": None, "closed": None}], [Point(-11.7, 7.9), Point(-11.8, 8.0)])
    archive = tmp_path / "hf.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for part in tmp_path.glob("hf.*"):
            if part != archive:
                zf.write(part, part.name)
    mapping = {"opening_date": "opened", "closed_date": "closed"}
    for path in (shp, archive):
        a, b = units(vector.read_file(path, ReadOptions(mapping=mapping)))
        assert (a.opening_date, a.closed_date) == ("1999-12-31", "2021-05-06")
        assert (b.opening_date, b.closed_date) == (None, None)
        assert a.where == f"{path.name}, row 1"
    stamped = write(tmp_path / "t.gpkg", [{"name": "A", "closed": dt.datetime(2021, 5, 6, 7, 8)}],
                    [None])
    (a,) = units(vector.read_file(stamped, ReadOptions(mapping=mapping | {"opening_date": None})))
    assert a.closed_date == "2021-05-06"


def test_layers_are_chosen_or_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "admin.gpkg"
    write(path, [{"name": "R1"}], [box(0, 0, 1, 1)], layer="regions")
    write(path, [{"name": "D1"}], [box(0, 0, 0.5, 0.5)], layer="districts")
    with pytest.raises(InvalidInput, match=r"2 layers \(regions, districts\); give --layer"):
        vector.read_file(path, ReadOptions())
    got = units(vector.read_file(path, ReadOptions(layer="districts")))
    assert got[0].name == "D1" and got[0].where == "admin.gpkg, layer districts, row 1"
    with pytest.raises(InvalidInput, match="no layer 'areas'; layers: regions, districts"):
        vector.read_file(path, ReadOptions(layer="areas"))


def test_kml_names_and_3d_coordinates(tmp_path: Path) -> None:
    path = write(tmp_path / "f.kml", [{"Name": "Clinic é", "Description": "x"}],
                 [Point(-11.7, 7.9, 12.0)], driver="KML")
    got = units(vector.read_file(path, ReadOptions()))
    assert got[0].name == "Clinic é" and got[0].location == Point(-11.7, 7.9)
    assert not shapely.has_z(got[0].location)


# --- CRS ---------------------------------------------------------------------------------


def test_projected_file_is_reprojected_to_wgs84(tmp_path: Path) -> None:
    district = Polygon([(-11.9, 7.6), (-11.5, 7.6), (-11.5, 8.0), (-11.9, 8.1)])
    path = write(tmp_path / "utm.gpkg", [{"name": "Bo", "ref": "BO"}, {"name": "H", "ref": "H"}],
                 [district, Point(-11.74, 7.96)], crs=UTM28)
    raw = pyogrio.read_dataframe(path)
    assert raw.crs.to_epsg() == 32628 and raw.geometry[1].x > 100_000  # metres on disk
    bo, h = units(vector.read_file(path, ReadOptions()))
    assert h.location is not None and h.location.distance(Point(-11.74, 7.96)) < 1e-9
    assert bo.territory is not None
    assert shapely.equals_exact(shapely.normalize(bo.territory), shapely.normalize(district),
                                1e-9)


def test_file_without_crs_needs_crs_option(tmp_path: Path) -> None:
    utm = gpd.GeoSeries([Point(-11.74, 7.96)], crs=WGS84).to_crs(UTM28)[0]
    path = write(tmp_path / "noprj.shp", [{"name": "H"}], [utm], crs=None)
    assert not (tmp_path / "noprj.prj").exists()
    with pytest.raises(InvalidInput) as err:
        vector.read_file(path, ReadOptions())
    assert err.value.message == "noprj.shp has no CRS: give --crs (e.g. EPSG:32628)."
    got = units(vector.read_file(path, ReadOptions(crs="EPSG:32628")))
    assert got[0].location is not None and got[0].location.distance(Point(-11.74, 7.96)) < 1e-9
    with pytest.raises(InvalidInput, match="--crs 'EPSG:999999' is not a CRS"):
        vector.read_file(path, ReadOptions(crs="EPSG:999999"))
    degrees = write(tmp_path / "deg.shp", [{"name": "H"}], [Point(-11.7, 7.9)], crs=None)
    with pytest.raises(InvalidInput, match="look like degrees: give --crs EPSG:4326"):
        vector.read_file(degrees, ReadOptions())


def test_crs_option_overrides_a_wrong_prj_with_a_warning(tmp_path: Path) -> None:
    utm = gpd.GeoSeries([Point(-11.74, 7.96)], crs=WGS84).to_crs(UTM28)[0]
    path = write(tmp_path / "wrong.gpkg", [{"name": "H"}], [utm], crs=None)
    gdf = pyogrio.read_dataframe(path).set_crs("EPSG:32629", allow_override=True)
    pyogrio.write_dataframe(gdf, path)
    payload = vector.read_file(path, ReadOptions(crs=UTM28))
    assert units(payload)[0].location.distance(Point(-11.74, 7.96)) < 1e-9  # type: ignore[union-attr]
    assert any("--crs EPSG:32628 was used instead" in w for w in payload.warnings)


# --- bad files ---------------------------------------------------------------------------


def test_bad_files_are_refused_with_the_file_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.fgb"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInput, match="empty.fgb: the file is empty"):
        vector.read_file(empty, ReadOptions())
    good = write(tmp_path / "good.fgb", [{"name": f"U{i}"} for i in range(200)],
                 [box(i, 0, i + 1, 1) for i in range(200)])
    cut = tmp_path / "cut.fgb"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(InvalidInput, match="cut.fgb"):
        units(vector.read_file(cut, ReadOptions()))
    noise = tmp_path / "noise.shp"
    noise.write_bytes(b"this is not a shapefile" * 10)
    with pytest.raises(InvalidInput, match="noise.shp: not a vector file GDAL can read"):
        vector.read_file(noise, ReadOptions())
    with pytest.raises(InvalidInput, match="missing.gpkg: file not found"):
        vector.read_file(tmp_path / "missing.gpkg", ReadOptions())
    write(tmp_path / "none.gpkg", [{"name": "x"}], [Point(0, 0)])
    gdf = pyogrio.read_dataframe(tmp_path / "none.gpkg").iloc[:0]
    pyogrio.write_dataframe(gdf, tmp_path / "zero.gpkg")
    with pytest.raises(InvalidInput, match="zero.gpkg: no features"):
        vector.read_file(tmp_path / "zero.gpkg", ReadOptions())


def test_lines_and_bad_levels_are_the_rows_problems(tmp_path: Path) -> None:
    """A line, several points or a level that is no number reject their row in the
    import job (tests/test_import_bad_rows.py); read on its own, the file is refused
    before its first unit, every such row listed."""
    path = write(tmp_path / "roads.gpkg",
                 [{"name": "ok", "level": "1"}, {"name": "road", "level": "2"},
                  {"name": "wells", "level": "2"}, {"name": "x", "level": "two"},
                  {"name": "both", "level": "2.5"}],
                 [Point(0, 0), shapely.LineString([(0, 0), (1, 1)]),
                  shapely.MultiPoint([(0, 0), (1, 1)]), Point(1, 1),
                  shapely.LineString([(0, 0), (2, 2)])])
    payload = vector.read_file(path, ReadOptions())  # the file itself is readable
    with pytest.raises(InvalidInput) as err:
        units(payload)
    assert err.value.message.splitlines() == [
        "roads.gpkg, row 2: field 'geometry' is a LineString; a unit takes a Point, a "
        "Polygon or a MultiPolygon.",
        "roads.gpkg, row 3: field 'geometry' is a MultiPoint of 2 points; a unit takes a "
        "Point, a Polygon or a MultiPolygon.",
        "roads.gpkg, row 4: field 'level' is 'two'; expected a whole number.",
        "roads.gpkg, row 5: field 'geometry' is a LineString; a unit takes a Point, a "
        "Polygon or a MultiPolygon. Also field 'level' is '2.5'; expected a whole number."]
    token = ROW_PROBLEMS.set(True)  # as in the import job: records with their problem
    try:
        recs = units(vector.read_file(path, ReadOptions()))
    finally:
        ROW_PROBLEMS.reset(token)
    assert [(r.name, r.location, r.problem is not None) for r in recs] == [
        ("ok", Point(0, 0), False), ("road", None, True), ("wells", None, True),
        ("x", None, True), ("both", None, True)]
    assert recs[3].where == "roads.gpkg, row 4"


def test_out_of_range_and_invalid_values_pass_to_the_import_job(tmp_path: Path) -> None:
    """Consistent with every reader: row values are judged by the job, all rows at once."""
    bowtie = Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    path = write(tmp_path / "bad.gpkg", [{"name": "swapped"}, {"name": "bowtie"},
                                         {"name": ""}, {"name": "date", "opened": "31/12/2020"}],
                 [Point(8.4, 200), bowtie, Point(0, 0), Point(1, 1)])
    recs = units(vector.read_file(path, ReadOptions(mapping={"opening_date": "opened"})))
    assert recs[0].location == Point(8.4, 200)
    assert recs[1].territory is not None and not recs[1].territory.is_valid
    messages = []
    for rec in recs:
        with pytest.raises(InvalidInput) as err:
            validate(rec)
        messages.append(err.value.message)
    assert messages[0].startswith("bad.gpkg, row 1: field 'latitude' is 200")
    assert messages[1].startswith("bad.gpkg, row 2: field 'territory' is not a valid polygon")
    assert messages[2] == "bad.gpkg, row 3: field 'name' is missing or empty."
    assert messages[3].startswith("bad.gpkg, row 4: field 'opening_date'")
    assert validate(recs[1], fix_geometry=True).territory.is_valid  # type: ignore[union-attr]


# --- parents by location -----------------------------------------------------------------


def split(rng: random.Random, lo: float, hi: float, n: int) -> list[tuple[float, float]]:
    """``n`` uneven slices of [lo, hi], none narrower than a third of the average."""
    step = (hi - lo) / n
    cuts = [lo + step * (k + rng.uniform(-0.33, 0.33)) for k in range(1, n)]
    edges = [lo, *cuts, hi]
    return list(zip(edges[:-1], edges[1:], strict=True))


def sloppy(rng: random.Random, cell: Polygon) -> Polygon:
    """A cell as a careless digitiser draws it: wobbly corners that overlap the neighbours."""
    x0, y0, x1, y1 = cell.bounds
    d = min(x1 - x0, y1 - y0) * 0.04

    def j() -> float:
        return rng.uniform(-d, d)

    return Polygon([(x0 + j(), y0 + j()), ((x0 + x1) / 2, y0 + j()), (x1 + j(), y0 + j()),
                    (x1 + j(), y1 + j()), (x0 + j(), y1 + j())])


def country(seed: int) -> dict[str, list[dict[str, Any]]]:
    """3 regions → 2-3 districts each → 4 areas each → 2-3 facilities each, with true parents."""
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {"regions": [], "districts": [], "areas": [],
                                            "facilities": []}
    for r, (x0, x1) in enumerate(split(rng, -13.3, -10.3, 3), start=1):
        region = box(x0, 6.9, x1, 10.0)
        rref = f"R{r}"
        out["regions"].append({"ref": rref, "name": f"Région {r}", "geom": region,
                               "parent": None})
        for d, (y0, y1) in enumerate(split(rng, 6.9, 10.0, rng.choice([2, 3])), start=1):
            dref = f"{rref}-D{d}"
            cell = box(x0, y0, x1, y1)
            geom: Any = sloppy(rng, cell)
            if d == 1:  # a lake with an island: a multipolygon with a hole
                cx, cy, h = (x0 + x1) / 2, (y0 + y1) / 2, min(x1 - x0, y1 - y0) / 10
                geom = MultiPolygon([geom.difference(box(cx - h, cy - h, cx + h, cy + h)),
                                     box(cx - h / 2, cy - h / 2, cx + h / 2, cy + h / 2)])
            out["districts"].append({"ref": dref, "name": f"District {r}.{d}", "geom": geom,
                                     "parent": rref, "cell": cell})
            for a, (ax0, ax1) in enumerate(split(rng, x0, x1, 2), start=1):
                for b, (ay0, ay1) in enumerate(split(rng, y0, y1, 2), start=1):
                    aref = f"{dref}-A{a}{b}"
                    acell = box(ax0, ay0, ax1, ay1)
                    out["areas"].append({"ref": aref, "name": f"Aire {aref}",
                                         "geom": sloppy(rng, acell), "parent": dref})
                    mx, my = (ax1 - ax0) * 0.15, (ay1 - ay0) * 0.15
                    for f in range(rng.choice([2, 3])):
                        pt = Point(rng.uniform(ax0 + mx, ax1 - mx), rng.uniform(ay0 + my, ay1 - my))
                        out["facilities"].append({"ref": None, "name": f"CSPS {aref}/{f}",
                                                  "geom": pt, "parent": aref})
    return out


def write_country(tmp_path: Path, data: dict[str, list[dict[str, Any]]]) -> list[Path]:
    """Four files, four formats; districts in UTM with its ref in a 'code' column."""
    regions = write(tmp_path / "regions.shp",
                    [{"NAME": u["name"], "ID": u["ref"]} for u in data["regions"]],
                    [u["geom"] for u in data["regions"]])
    districts = write(tmp_path / "districts.gpkg",
                      [{"nom": u["name"], "code": u["ref"]} for u in data["districts"]],
                      [u["geom"] for u in data["districts"]], crs=UTM28)
    areas = write(tmp_path / "areas.geojson",
                  [{"name": u["name"], "ref": u["ref"]} for u in data["areas"]],
                  [u["geom"] for u in data["areas"]])
    facilities = write(tmp_path / "facilities.fgb",
                       [{"name": u["name"]} for u in data["facilities"]],
                       [u["geom"] for u in data["facilities"]])
    return [regions, districts, areas, facilities]


def expected_parents(data: dict[str, list[dict[str, Any]]]) -> dict[str, str | None]:
    """name → parent ref (facilities have synthetic refs 'facilities:<row>')."""
    return {u["name"]: u["parent"] for level in data.values() for u in level}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parent_by_location_finds_the_containing_unit(tmp_path: Path, seed: int) -> None:
    data = country(seed)
    paths = write_country(tmp_path, data)
    payload = vector.read_files(paths, ReadOptions(parent_by_location=True))
    got = units(payload)
    assert len(got) == sum(len(v) for v in data.values()) == payload.total
    want = expected_parents(data)
    assert {u.name: u.parent_ref for u in got} == want
    facilities = [u for u in got if u.where.startswith("facilities.fgb")]
    assert [u.source_ref for u in facilities] == [
        f"facilities:{i}" for i in range(1, len(facilities) + 1)]
    assert [(t.name, t.depth) for t in payload.types] == [
        ("regions", 1), ("districts", 2), ("areas", 3), ("facilities", 4)]
    # every unit really lies in its parent (its point, or most of its area)
    shapes = {u.source_ref: u.territory for u in got if u.territory is not None}
    for u in got:
        if u.parent_ref is None:
            continue
        parent = shapes[u.parent_ref]
        if u.location is not None:
            assert parent.contains(u.location)
        else:
            assert u.territory is not None
            assert parent.intersection(u.territory).area > 0.5 * u.territory.area
    assert not [w for w in payload.warnings if "% of its area" in w]


def test_parent_by_location_with_depth_per_file_in_any_order(tmp_path: Path) -> None:
    data = country(7)
    regions, districts, areas, facilities = write_country(tmp_path, data)
    mapping = {"files": {"facilities.fgb": {"depth": 4, "type_name": "Facility"},
                         "areas": {"depth": 3}, "districts": {"depth": 2},
                         "regions": {"depth": 1, "type_name": "Region"}}}
    payload = vector.read_files([facilities, areas, regions, districts],
                                ReadOptions(parent_by_location=True, mapping=mapping))
    got = units(payload)
    assert {u.name: u.parent_ref for u in got} == expected_parents(data)
    assert got[0].where.startswith("regions.shp")  # parents first
    assert [(t.name, t.depth) for t in payload.types][:2] == [("Region", 1), ("districts", 2)]


def test_geojson_files_with_parent_by_location_go_through_gdal(tmp_path: Path) -> None:
    from sync.formats import geojson

    regions = write(tmp_path / "r.geojson", [{"NOM": "Nord", "PCODE": "N"}], [box(0, 0, 1, 1)])
    sites = write(tmp_path / "s.geojson", [{"NOM": "CSPS", "PCODE": "S1"}], [Point(0.5, 0.5)])
    payload = geojson.read_files([regions, sites], ReadOptions(
        parent_by_location=True, mapping={"name": "NOM", "ref": "PCODE"}))
    assert [(u.name, u.parent_ref) for u in units(payload)] == [("Nord", None), ("CSPS", "N")]


def test_parent_by_location_refuses_units_outside_every_parent(tmp_path: Path) -> None:
    regions = write(tmp_path / "regions.gpkg", [{"name": "R1", "ref": "R1"}], [box(0, 0, 1, 1)])
    sites = write(tmp_path / "sites.gpkg", [{"name": "in"}, {"name": "at sea"}, {"name": "none"}],
                  [Point(0.5, 0.5), Point(5, 5), None])
    with pytest.raises(InvalidInput) as err:
        vector.read_files([regions, sites], ReadOptions(parent_by_location=True))
    msg = err.value.message
    assert "sites.gpkg, row 2 ('at sea'): its point lies in no territory of regions.gpkg" in msg
    assert "sites.gpkg, row 3 ('none'): it has no geometry" in msg
    assert "row 1" not in msg


def test_parent_by_location_weak_overlap_warns_and_points_need_polygons(tmp_path: Path) -> None:
    regions = write(tmp_path / "r.gpkg", [{"name": "West", "ref": "W"}, {"name": "East",
                                          "ref": "E"}], [box(0, 0, 1, 1), box(1, 0, 2, 1)])
    straddling = write(tmp_path / "d.gpkg", [{"name": "Across", "ref": "A"}],
                       [box(0.6, 0.2, 1.2, 0.4)])
    payload = vector.read_files([regions, straddling], ReadOptions(parent_by_location=True))
    assert units(payload)[-1].parent_ref == "W"  # 2/3 of its area
    payload = vector.read_files([regions, write(tmp_path / "d2.gpkg", [{"name": "X", "ref": "X"}],
                                                [box(0.2, 0.5, 1.9, 3)])],
                                ReadOptions(parent_by_location=True))
    assert units(payload)[-1].parent_ref == "E"
    assert any("d2.gpkg, row 1: only" in w and "'E'" in w for w in payload.warnings)
    points = write(tmp_path / "p.gpkg", [{"name": "P", "ref": "P"}], [Point(0.5, 0.5)])
    with pytest.raises(InvalidInput, match="p.gpkg has no territories"):
        vector.read_files([points, straddling], ReadOptions(parent_by_location=True))


def test_parent_by_location_refs_must_be_unique_across_files(tmp_path: Path) -> None:
    regions = write(tmp_path / "r.gpkg", [{"name": "R", "id": 1}], [box(0, 0, 1, 1)])
    districts = write(tmp_path / "d.gpkg", [{"name": "D", "id": 1}], [box(0, 0, 1, 1)])
    with pytest.raises(InvalidInput, match=r"d.gpkg, row 1: ref '1' is also the ref of r.gpkg"):
        vector.read_files([regions, districts], ReadOptions(parent_by_location=True))
    payload = vector.read_files([regions, districts], ReadOptions(
        parent_by_location=True, mapping={"ref": None}))
    assert [(u.source_ref, u.parent_ref) for u in units(payload)] == [("r:1", None),
                                                                     ("d:1", "r:1")]


def test_parent_by_location_survives_invalid_polygons(tmp_path: Path) -> None:
    bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])  # self-intersecting region
    regions = write(tmp_path / "r.gpkg", [{"name": "Bow", "ref": "B"}, {"name": "Ok", "ref": "O"}],
                    [bowtie, box(3, 0, 4, 2)])
    kids = write(tmp_path / "k.gpkg", [{"name": "k1", "ref": "k1"}, {"name": "k2", "ref": "k2"},
                                       {"name": "k3", "ref": "k3"}],
                 [Polygon([(0.1, 0.3), (0.6, 1), (0.1, 1.7)]), Point(3.5, 1),
                  Polygon([(3.1, 0.1), (3.9, 1.9), (3.9, 0.1), (3.1, 1.9)])])
    got = units(vector.read_files([regions, kids], ReadOptions(parent_by_location=True)))
    assert [u.parent_ref for u in got] == [None, None, "B", "O", "O"]
    assert got[0].territory is not None and not got[0].territory.is_valid  # left for the job


def test_parent_by_location_import_end_to_end(registry: Registry, tmp_path: Path) -> None:
    data = country(11)
    payload = vector.read_files(write_country(tmp_path, data),
                                ReadOptions(parent_by_location=True))
    report = import_payload(registry, payload, source="X")
    assert report["created"] == sum(len(v) for v in data.values())
    assert report["loaded"]["territories"] == len(data["regions"]) + len(data["districts"]) + len(
        data["areas"])
    exported = list(read_version(registry, "X").units)
    by_ref = {u.ref: u for u in exported}
    want = expected_parents(data)
    for u in exported:
        assert u.parent_ref == want[u.name]
        assert u.depth == {"regions": 1, "districts": 2, "areas": 3, "facilities": 4}[
            u.type or ""]
        if u.parent_ref and u.location is not None:
            assert by_ref[u.parent_ref].territory.contains(u.location)  # type: ignore[union-attr]


# --- export ------------------------------------------------------------------------------


def test_output_paths() -> None:
    assert vector.output_paths(Path("x/sl.gpkg")) == [Path("x/sl.gpkg")]
    assert vector.output_paths(Path("sl.shp")) == [Path("sl.shp"), Path("sl_locations.shp")]
    with pytest.raises(InvalidInput, match="no vector format for '.txt'"):
        vector.output_paths(Path("sl.txt"))


def test_export_through_gdal(demo: Registry, tmp_path: Path) -> None:
    data = read_version(demo, "SL")
    total = data.count
    all_units = list(data.units)
    with_territory = sum(u.territory is not None for u in all_units)
    facility = next(u for u in all_units if u.location is not None)
    for suffix in (".gpkg", ".shp", ".fgb", ".kml"):
        located = sum(u.location is not None or u.territory is None for u in all_units)
        out = tmp_path / f"sl{suffix}"
        data.units = iter(all_units)
        summary = vector.write_file(data, out, ReadOptions())
        if suffix == ".fgb":  # FlatGeobuf has no feature without geometry
            located = sum(u.location is not None for u in all_units)
            assert "left out" in summary["warnings"][0]
        assert summary["layers"] == {"territories": with_territory, "locations": located}
        layers: dict[str, tuple[Path, str | None]]
        if suffix in (".gpkg", ".kml"):
            assert summary["files"] == [str(out)]
            layers = {"territories": (out, "territories"), "locations": (out, "locations")}
        else:
            side = tmp_path / f"sl_locations{suffix}"
            assert summary["files"] == [str(out), str(side)]
            layers = {"territories": (out, None), "locations": (side, None)}
        frames = {k: pyogrio.read_dataframe(p, layer=lyr) for k, (p, lyr) in layers.items()}
        assert len(frames["territories"]) == with_territory
        assert len(frames["locations"]) == located
        if suffix != ".fgb":
            assert len(frames["territories"]) + len(frames["locations"]) >= total
        cols = {c.lower() for c in frames["locations"].columns}
        assert {"ref", "name", "parent_ref", "level", "type", "code", "uuid"} <= cols
        assert {"opening_date", "open_date", "opening_da"} & cols
        row = frames["locations"].set_index(
            "ref" if "ref" in frames["locations"].columns else "Ref").loc[facility.ref]
        assert row.geometry.distance(facility.location) < 1e-9
        name_col = "name" if "name" in frames["locations"].columns else "Name"
        assert row[name_col] == facility.name
        # and the generic reader takes the export back (one layer at a time)
        back = units(vector.read_file(layers["locations"][0],
                                      ReadOptions(layer=layers["locations"][1])))
        assert len(back) == located
        got = next(u for u in back if u.source_ref == facility.ref)
        assert (got.name, got.parent_ref, got.type_name, got.uuid) == (
            facility.name, facility.parent_ref, facility.type, facility.uuid)


def test_shapefile_export_reads_back_whole(demo: Registry, tmp_path: Path) -> None:
    """sl.shp (territories) + sl_locations.shp (points, and units without geometry)."""
    before = {u.uuid: u for u in read_version(demo, "SL").units}
    summary = vector.write_file(read_version(demo, "SL"), tmp_path / "sl.shp", ReadOptions())
    payload = vector.read_files([Path(f) for f in summary["files"]], ReadOptions())
    assert payload.total == len(before)
    assert any("read as one unit with both" in w for w in payload.warnings) == any(
        u.location is not None and u.territory is not None for u in before.values())
    report = import_payload(demo, payload, source="Back", fix_geometry=True)
    assert report["created"] == len(before)
    after = {u.uuid: u for u in read_version(demo, "Back").units}
    assert after.keys() == before.keys()
    for uuid, x in before.items():
        y = after[uuid]
        assert (y.ref, y.name, y.parent_ref, y.type, y.depth, y.code, y.opening_date,
                y.closed_date, y.groups, y.aliases, y.validation_status) == (
            x.ref, x.name, x.parent_ref, x.type, x.depth, x.code, x.opening_date,
            x.closed_date, x.groups, x.aliases, x.validation_status)
        assert (y.location is None) == (x.location is None)
        if x.location is not None:
            assert y.location.equals_exact(x.location, 0)  # type: ignore[union-attr]
        assert (y.territory is None) == (x.territory is None)
        if x.territory is not None and x.territory.is_valid:
            assert y.territory is not None and y.territory.equals(x.territory)
