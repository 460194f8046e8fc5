"""GeoPackages written and read with plain SQLite (sync/formats/gpkg_sql.py).

The Iaso GeoPackage export is written without GDAL: these tests hold it to what GDAL
writes — GDAL's own validator, ogrinfo and QGIS open it, its R-trees are sound and
answer spatial queries like a scan does, and GDAL edits afterwards keep them right.
The reader's own failure modes (a damaged geometry blob) name the file, layer, row
and field.  And the column batches ``read_version`` hands the writers give the same
files as the unit-by-unit path.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely

from storage.errors import InvalidInput
from storage.registry import Registry
from sync.dhis2_json import import_dhis2_files
from sync.exchange import ReadOptions, VersionData, read_version, unit_batches
from sync.formats import geojson, gpkg_sql, iaso_gpkg
from tests.conftest import DEMO_FILES
from tests.qgis_helpers import qgis_layers

VALIDATE_GPKG = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")
DATA = Path(__file__).parent / "data" / "iaso_gpkg"


@pytest.fixture(scope="module")
def demo_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpkg_sql") / "demo.gpkg"
    with Registry.create(path) as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
    return path


@pytest.fixture(scope="module")
def export(demo_registry: Path) -> Path:
    out = demo_registry.with_name("iaso.gpkg")
    with Registry.open(demo_registry) as reg:
        iaso_gpkg.write_file(read_version(reg, "SL"), out, ReadOptions())
    return out


def layer_names(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute(
            "SELECT table_name FROM gpkg_contents WHERE data_type = 'features' ORDER BY rowid")]


@pytest.mark.gdal
def test_the_export_passes_gdal_validate_gpkg(export: Path) -> None:
    run = subprocess.run([sys.executable, str(VALIDATE_GPKG), str(export)],
                         capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "" and run.stderr.strip() == "", (
        run.stdout + run.stderr)


def test_ogrinfo_reads_every_layer_and_count(export: Path) -> None:
    run = subprocess.run(["ogrinfo", "-ro", "-al", "-so", str(export)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr and "ERROR" not in run.stderr, run.stderr
    with sqlite3.connect(export) as conn:
        for name in [*layer_names(export), "groups"]:
            count = conn.execute(f"SELECT count(*) FROM {gpkg_sql.quote(name)}").fetchone()[0]
            assert f"Layer name: {name}\n" in run.stdout
            block = run.stdout.split(f"Layer name: {name}\n", 1)[1].split("Layer name:", 1)[0]
            assert f"Feature Count: {count}\n" in block
        assert conn.execute("SELECT sum(feature_count) FROM gpkg_ogr_contents").fetchone()[0] \
            == 1332 + conn.execute("SELECT count(*) FROM groups").fetchone()[0]


def boxes_in(path: Path, layer: str, window: tuple[float, float, float, float]) -> set[int]:
    """Feature ids whose geometry's bounds meet the window, found by scanning every row."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(f'SELECT fid, geom FROM {gpkg_sql.quote(layer)} '
                            "WHERE geom IS NOT NULL").fetchall()
    geoms = gpkg_sql.decode_blobs([r[1] for r in rows])
    b = shapely.bounds(geoms)
    x0, y0, x1, y1 = window
    hit = (b[:, 0] <= x1) & (b[:, 2] >= x0) & (b[:, 1] <= y1) & (b[:, 3] >= y0)
    return {r[0] for r, h in zip(rows, hit.tolist(), strict=True) if h}


def rtree_in(path: Path, layer: str, window: tuple[float, float, float, float]) -> set[int]:
    x0, y0, x1, y1 = window
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute(
            f'SELECT id FROM {gpkg_sql.quote(f"rtree_{layer}_geom")} WHERE minx <= ? AND '
            "maxx >= ? AND miny <= ? AND maxy >= ?", (x1, x0, y1, y0))}


def test_every_rtree_is_sound_and_answers_like_a_scan(export: Path) -> None:
    rng = random.Random(7)
    with sqlite3.connect(export) as conn:
        for layer in layer_names(export):
            rtree = f"rtree_{layer}_geom"
            assert conn.execute("SELECT rtreecheck(?)", (rtree,)).fetchone() == ("ok",)
            (n,) = conn.execute(f"SELECT count(*) FROM {gpkg_sql.quote(rtree)}").fetchone()
            (m,) = conn.execute(f"SELECT count(*) FROM {gpkg_sql.quote(layer)} WHERE geom IS "
                                "NOT NULL").fetchone()
            assert n == m
    facilities = point_layer(export)
    for _ in range(20):
        x, y = rng.uniform(-13.3, -10.3), rng.uniform(6.9, 10.0)
        window = (x, y, x + rng.uniform(0.05, 1), y + rng.uniform(0.05, 1))
        assert rtree_in(export, facilities, window) == boxes_in(export, facilities, window)


def point_layer(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute(
            "SELECT g.table_name FROM gpkg_geometry_columns g JOIN gpkg_ogr_contents c ON "
            "c.table_name = g.table_name WHERE g.geometry_type_name = 'POINT' "
            "ORDER BY c.feature_count DESC").fetchone()[0])


def test_ogr_spatial_filter_finds_the_same_features(export: Path) -> None:
    layer = point_layer(export)  # points: GDAL's filter is then exactly a box test
    window = (-12.0, 7.5, -11.0, 8.5)
    expected = boxes_in(export, layer, window)
    assert expected
    run = subprocess.run(["ogrinfo", "-ro", "-q", str(export), layer, "-spat",
                          *map(str, window)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    found = {int(line.rsplit(":", 1)[1]) for line in run.stdout.splitlines()
             if line.startswith("OGRFeature(")}
    assert found == expected


@pytest.mark.gdal
def test_gdal_edits_after_export_keep_the_rtree_right(export: Path, tmp_path: Path) -> None:
    from osgeo import ogr

    copy = tmp_path / "edited.gpkg"
    copy.write_bytes(export.read_bytes())
    layer_name = point_layer(copy)
    ds = ogr.Open(str(copy), update=1)
    layer = ds.GetLayerByName(layer_name)
    first = layer.GetNextFeature()
    first.SetGeometry(ogr.CreateGeometryFromWkt("POINT (-11.111 8.888)"))
    assert layer.SetFeature(first) == 0
    layer.ResetReading()
    layer.GetNextFeature()
    second = layer.GetNextFeature()
    assert layer.DeleteFeature(second.GetFID()) == 0
    new = ogr.Feature(layer.GetLayerDefn())
    new.SetField("name", "Digitised")
    new.SetField("ref", "NEW-1")
    new.SetGeometry(ogr.CreateGeometryFromWkt("POINT (-11.112 8.889)"))
    assert layer.CreateFeature(new) == 0
    ds = None
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT rtreecheck(?)", (f"rtree_{layer_name}_geom",)).fetchone() \
            == ("ok",)
        (count,) = conn.execute("SELECT feature_count FROM gpkg_ogr_contents WHERE "
                                "table_name = ?", (layer_name,)).fetchone()
        assert count == conn.execute(f"SELECT count(*) FROM {gpkg_sql.quote(layer_name)}"
                                     ).fetchone()[0]
    window = (-11.2, 8.8, -11.0, 9.0)
    assert rtree_in(copy, layer_name, window) == boxes_in(copy, layer_name, window)
    assert {r.source_ref for r in iaso_gpkg.read_file(copy).units} >= {"NEW-1"}


@pytest.mark.qgis
def test_qgis_loads_every_layer_of_the_export(export: Path, tmp_path: Path) -> None:
    names = layer_names(export)
    lines = qgis_layers(export, names, "layer.featureCount()", tmp_path)
    with sqlite3.connect(export) as conn:
        counts = [conn.execute(f"SELECT count(*) FROM {gpkg_sql.quote(n)}").fetchone()[0]
                  for n in names]
    assert lines == [[n, "True", str(c)] for n, c in zip(names, counts, strict=True)]


@pytest.mark.parametrize("n", [1, 3, 167, 168, 5000, 40_000])
def test_packed_rtree_is_sound_for_any_size(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    xy = rng.uniform(-180, 180, size=(n, 2))
    size = rng.exponential(0.5, size=(n, 2)) * (rng.random(n) < 0.3)[:, None]
    bounds = np.column_stack([xy, xy + size])
    with sqlite3.connect(tmp_path / "r.sqlite") as conn:
        conn.execute("CREATE VIRTUAL TABLE r USING rtree(id, minx, maxx, miny, maxy)")
        ids = rng.permutation(n) + 10
        gpkg_sql.pack_rtree(conn, "r", ids, bounds)
        assert conn.execute("SELECT rtreecheck('r')").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM r").fetchone() == (n,)
        for _ in range(10):
            x, y = rng.uniform(-180, 170), rng.uniform(-180, 170)
            w = (x, y, x + 10, y + 10)
            got = {r[0] for r in conn.execute(
                "SELECT id FROM r WHERE minx <= ? AND maxx >= ? AND miny <= ? AND maxy >= ?",
                (w[2], w[0], w[3], w[1]))}
            hit = ((bounds[:, 0] <= w[2]) & (bounds[:, 2] >= w[0]) & (bounds[:, 1] <= w[3])
                   & (bounds[:, 3] >= w[1]))
            assert got == set(ids[hit].tolist())
        conn.execute("INSERT INTO r VALUES (1, 0, 1, 0, 1)")  # SQLite maintains it after
        conn.execute("DELETE FROM r WHERE id = 10")
        assert conn.execute("SELECT rtreecheck('r')").fetchone() == ("ok",)


def test_a_damaged_geometry_names_the_file_layer_row_and_field(tmp_path: Path) -> None:
    path = tmp_path / "damaged.gpkg"
    path.write_bytes((DATA / "minimal.gpkg").read_bytes())
    with sqlite3.connect(path) as conn:
        for (trigger,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                       "AND name LIKE 'rtree_level-4-AS%'").fetchall():
            conn.execute(f"DROP TRIGGER {gpkg_sql.quote(trigger)}")  # they need ST_IsEmpty
        (fid,) = conn.execute('SELECT min(fid) FROM "level-4-AS"').fetchone()
        conn.execute('UPDATE "level-4-AS" SET geom = ? WHERE fid = ?', (b"not a blob", fid))
    with pytest.raises(InvalidInput, match=rf"damaged\.gpkg, layer 'level-4-AS', row {fid}: "
                                           r"field 'geometry' is not a GeoPackage geometry"):
        list(iaso_gpkg.read_file(path).units)


def test_bad_blobs_are_told_apart() -> None:
    point = gpkg_sql.encode_blobs(np.array([shapely.Point(1, 2)], dtype=object))[0][0]
    assert point is not None
    got = gpkg_sql.decode_blobs([None, point])
    assert got[0] is None and got[1].equals(shapely.Point(1, 2))
    cases: list[tuple[Any, str]] = [(b"GP\x00\x21" + point[4:], "extended"),
                                    (b"GP\x00\x0f" + point[4:], "envelope code 7"),
                                    (point[:8] + b"\x01\x01\x00", "invalid WKB"),
                                    ("text", "holds a str")]
    for blob, why in cases:
        with pytest.raises(gpkg_sql.BadBlob, match=why) as caught:
            gpkg_sql.decode_blobs([point, blob])
        assert caught.value.index == 1


def test_a_column_of_plain_points_reads_like_any_other() -> None:
    """Plain points are read with numpy for the whole column; a null, an empty point,
    a point with an envelope or a polygon in the column take the general way, with
    the same result."""
    points = [shapely.Point(x / 7, -x / 3) for x in range(50)]
    blobs = gpkg_sql.encode_blobs(np.array(points, dtype=object))[0]
    got = gpkg_sql.decode_blobs(blobs)
    assert gpkg_sql.plain_points(blobs) is not None
    assert all(g.equals_exact(p, 0) for g, p in zip(got, points, strict=True))
    empty = gpkg_sql.encode_blobs(np.array([shapely.Point()], dtype=object))[0][0]
    square = gpkg_sql.encode_blobs(np.array([shapely.box(0, 0, 1, 1)], dtype=object))[0][0]
    assert blobs[0] is not None and empty is not None
    with_envelope = blobs[0][:3] + bytes([blobs[0][3] | 0b10]) + blobs[0][4:8] + \
        bytes(32) + blobs[0][8:]  # a valid envelope (its values are not checked)
    for odd, want in [(None, None), (empty, shapely.Point()), (square, shapely.box(0, 0, 1, 1)),
                      (with_envelope, points[0])]:
        column = [*blobs[:10], odd]
        assert gpkg_sql.plain_points(column) is None
        got = gpkg_sql.decode_blobs(column)
        assert all(g.equals_exact(p, 0) for g, p in zip(got[:10], points, strict=False))
        assert (got[10] is None) if want is None else (got[10].equals(want)
                                                        or got[10].is_empty and want.is_empty)


def test_z_geometries_are_read_flat(tmp_path: Path) -> None:
    path = tmp_path / "z.gpkg"
    with gpkg_sql.Writer(path) as w:
        w.features("level-1-Site", [("ref", "TEXT"), ("name", "TEXT")],
                   [("a", "A"), ("b", "B")],
                   np.array([shapely.Point(1, 2, 3), shapely.box(0, 0, 1, 1)], dtype=object),
                   "Geometry")
    records = {r.source_ref: r for r in iaso_gpkg.read_file(path).units}
    assert records["a"].location is not None and not records["a"].location.has_z
    assert records["b"].territory is not None and records["b"].territory.geom_type == \
        "MultiPolygon"


def test_column_batches_write_the_same_files_as_units(demo_registry: Path,
                                                      tmp_path: Path) -> None:
    """The writers read ``read_version``'s column batches; hand-made data (units only)
    must give byte-for-byte the same GeoJSON and the same Iaso tables."""
    with Registry.open(demo_registry) as reg:
        data = read_version(reg, "SL", batch=100)
        assert data.batches is not None
        units = list(data.units)
        batched = sum(len(b) for b in unit_batches(read_version(reg, "SL", batch=100)))
        assert batched == len(units) == data.count
        geojson.write_file(read_version(reg, "SL", batch=100), tmp_path / "a.geojson")
        iaso_gpkg.write_file(read_version(reg, "SL", batch=100), tmp_path / "a.gpkg")
    plain = VersionData(data.version, data.types, data.groups, iter(units), len(units))
    geojson.write_file(plain, tmp_path / "b.geojson")
    assert (tmp_path / "a.geojson").read_bytes() == (tmp_path / "b.geojson").read_bytes()
    plain = VersionData(data.version, data.types, data.groups, iter(units), len(units))
    iaso_gpkg.write_file(plain, tmp_path / "b.gpkg")
    for name in [*layer_names(tmp_path / "a.gpkg"), "groups"]:
        rows = []
        for f in ("a.gpkg", "b.gpkg"):
            with sqlite3.connect(tmp_path / f) as conn:
                rows.append(conn.execute(f"SELECT * FROM {gpkg_sql.quote(name)} ORDER BY fid"
                                         ).fetchall())
        assert rows[0] == rows[1] and rows[0]


def test_reading_a_wal_mode_file_leaves_nothing_beside_it(tmp_path: Path) -> None:
    # Iaso's own fixtures are in WAL mode; a mode=ro open would create -wal and -shm
    source = tmp_path / "minimal.gpkg"
    source.write_bytes((DATA / "minimal.gpkg").read_bytes())
    assert source.read_bytes()[18] == 2  # WAL
    before = source.read_bytes()

    units = list(iaso_gpkg.read_file(source, ReadOptions()).units)

    assert units
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minimal.gpkg"]
    assert source.read_bytes() == before


def test_a_wal_file_another_program_is_writing_is_read_at_its_last_commit(
        tmp_path: Path) -> None:
    path = tmp_path / "busy.gpkg"
    path.write_bytes((DATA / "minimal.gpkg").read_bytes())
    writer = sqlite3.connect(path)
    for name in ("ST_IsEmpty", "ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY"):
        writer.create_function(name, 1, lambda _g: 0)  # the R-tree triggers name them
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        layer = layer_names(path)[0]
        writer.execute(f"UPDATE {gpkg_sql.quote(layer)} SET name = 'Renamed by QGIS'")
        writer.commit()
        assert Path(f"{path}-wal").exists()

        names = {u.name for u in iaso_gpkg.read_file(path, ReadOptions()).units}
    finally:
        writer.close()
    assert "Renamed by QGIS" in names


def test_a_truncated_wal_file_is_refused_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    source = tmp_path / "trunc.gpkg"
    source.write_bytes((DATA / "minimal.gpkg").read_bytes()[:20000])

    with pytest.raises(InvalidInput, match="trunc.gpkg.*truncated or damaged"):
        list(iaso_gpkg.read_file(source, ReadOptions()).units)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["trunc.gpkg"]
