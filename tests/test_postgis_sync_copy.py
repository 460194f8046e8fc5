"""The first push's COPY text is made by SQLite: its GeoPackage blob → hex EWKB rewrite and
its text escaping must give exactly what PostGIS expects, for every header and geometry
kind (the rare ones through shapely).  Real SQLite, no PostgreSQL needed; the round trip
through PostGIS is covered by tests/test_postgis_sync.py (checksums after a push)."""

from __future__ import annotations

import sqlite3
import struct

import pytest
import shapely

from storage import geometry
from storage.backends import Backend
from sync.postgis_copytext import _copy_geometry, _copy_text, _ewkb_from

GEOMS = [
    shapely.Point(-11.75, 8.25),
    shapely.box(-12, 8, -11.9, 8.1),
    shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(2, 2, 3, 3)]),
    shapely.LineString([(0, 0), (1, 1)]),
    shapely.Point(1, 2, 3),  # Z: through shapely
]


def _blob(geom: shapely.Geometry, envelope: int, big_endian_wkb: bool = False) -> bytes:
    """A GeoPackage blob with the given envelope code (0-4) in its header."""
    wkb = shapely.to_wkb(geom, byte_order=0 if big_endian_wkb else 1, flavor="iso")
    size = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[envelope]
    flags = (envelope << 1) | 1
    return b"GP\x00" + bytes([flags]) + struct.pack("<i", geometry.SRID) + b"\x00" * size + wkb


def _expected(geom: shapely.Geometry) -> shapely.Geometry:
    return shapely.set_srid(geom, geometry.SRID)


@pytest.mark.parametrize("envelope", [0, 1, 2, 4])
@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: g.geom_type + ("Z" if g.has_z else ""))
def test_gpkg_blob_to_ewkb_in_sql(geom: shapely.Geometry, envelope: int) -> None:
    wkb, fast, odd = _copy_geometry(Backend.GEOPACKAGE, "g")
    db = sqlite3.connect(":memory:")
    for big in (False, True):
        blob = _blob(geom, envelope, big_endian_wkb=big)
        row = db.execute(f"SELECT {fast}, {odd} FROM (SELECT g, {wkb} AS w FROM "
                         "(SELECT ? AS g))", (blob,)).fetchone()
        text = row[0] if row[0] is not None else _ewkb_from(Backend.GEOPACKAGE, row[1])
        # the SQL rewrite covers little-endian 2D geometries; the rest goes through shapely
        assert (row[0] is not None) == (not big and not geom.has_z)
        back = shapely.from_wkb(bytes.fromhex(text))
        assert shapely.get_srid(back) == geometry.SRID
        # PostGIS columns are 2D: a Z/M geometry an old registry holds goes up flat
        assert shapely.equals_exact(back, shapely.force_2d(geom)) and not back.has_z
        if row[0] is not None:
            assert text == shapely.to_wkb(_expected(geom), hex=True, byte_order=1,
                                          include_srid=True)


def test_null_geometry_is_null() -> None:
    wkb, fast, odd = _copy_geometry(Backend.GEOPACKAGE, "g")
    row = sqlite3.connect(":memory:").execute(
        f"SELECT {fast}, {odd} FROM (SELECT g, {wkb} AS w FROM (SELECT NULL AS g))").fetchone()
    assert row == (None, None)


@pytest.mark.parametrize(("value", "expected"), [
    ("a\\b\tc\nd\re — é", "a\\\\b\\tc\\nd\\re — é"),
    ("plain [x] *y* ?", "plain [x] *y* ?"),
    ("", ""),
    ('{"a": "q\\"t"}', '{"a": "q\\\\"t"}'),
])
def test_text_is_escaped_for_copy(value: str, expected: str) -> None:
    out = sqlite3.connect(":memory:").execute(
        f"SELECT {_copy_text(Backend.GEOPACKAGE, 'x')}, {_copy_text(Backend.GEOPACKAGE, 'y')} "
        "FROM (SELECT ? AS x, NULL AS y)", (value,)).fetchone()
    assert out == (expected, "\\N")
