"""Geometry in and out of each backend, as shapely geometries.

GeoPackage blobs are written here in Python (a GPKG header, then ISO WKB) so
bulk loads need no SQL function per row; SpatiaLite and PostGIS take WKB
through their own SQL functions.  Everything is EPSG:4326 (lon, lat).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from storage.backends import Backend
from storage.errors import InvalidInput

SRID = 4326
_GPKG_HEADER = struct.Struct("<2sBBi")
_ENVELOPE_SIZES = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}


def to_gpkg_blob(geom: BaseGeometry | None) -> bytes | None:
    """Encode one geometry as a GeoPackage binary blob (little endian)."""
    if geom is None:
        return None
    return to_gpkg_blobs([geom])[0]


def flat(geom: BaseGeometry | None) -> BaseGeometry | None:
    """The geometry without Z/M.  The registry is 2D: a GPS point with an altitude is
    ordinary input, but the central PostGIS columns are 2D and refuse a Z, so every
    geometry is stored (and read, and sent) flat."""
    if geom is None or shapely.get_coordinate_dimension(geom) <= 2:
        return geom
    return shapely.force_2d(geom)


def _flat_array(arr: Any) -> Any:
    """``flat`` over an array of geometries (one vectorised check; most are 2D already)."""
    deep = shapely.get_coordinate_dimension(arr) > 2
    if deep.any():
        arr = arr.copy()
        arr[deep] = shapely.force_2d(arr[deep])
    return arr


def to_gpkg_blobs(geoms: Iterable[BaseGeometry | None]) -> list[bytes | None]:
    """Vectorised encoder: one WKB pass through shapely for the whole batch (2D out)."""
    arr = np.asarray(list(geoms), dtype=object)
    out: list[bytes | None] = [None] * len(arr)
    if len(arr) == 0:
        return out
    present = np.array([g is not None for g in arr], dtype=bool)
    if not present.any():
        return out
    sub = _flat_array(arr[present])
    wkbs = shapely.to_wkb(sub, byte_order=1, flavor="iso", include_srid=False)
    empties = shapely.is_empty(sub)
    types = shapely.get_type_id(sub)
    bounds = shapely.bounds(sub)
    idx = np.flatnonzero(present)
    for k, i in enumerate(idx):
        wkb = wkbs[k]
        if empties[k]:
            flags = 0b00010001  # empty, no envelope, little endian
            out[i] = _GPKG_HEADER.pack(b"GP", 0, flags, SRID) + wkb
        elif types[k] == 0:  # points carry no envelope, as GDAL writes them
            out[i] = _GPKG_HEADER.pack(b"GP", 0, 0b00000001, SRID) + wkb
        else:
            b = bounds[k]
            env = struct.pack("<4d", b[0], b[2], b[1], b[3])
            out[i] = _GPKG_HEADER.pack(b"GP", 0, 0b00000011, SRID) + env + wkb
    return out


def gpkg_wkb(blob: bytes) -> bytes:
    """Strip the GeoPackage header, leaving the WKB (2D: see ``flat_wkb``)."""
    if len(blob) < 8 or blob[:2] != b"GP":
        raise InvalidInput("Not a GeoPackage geometry blob (no 'GP' magic).")
    flags = blob[3]
    envelope = (flags >> 1) & 0b111
    if envelope not in _ENVELOPE_SIZES:
        raise InvalidInput(f"GeoPackage geometry has an invalid envelope code {envelope}.")
    return flat_wkb(blob[8 + _ENVELOPE_SIZES[envelope] :])


def flat_wkb(wkb: bytes) -> bytes:
    """WKB without Z/M.  What Georeg writes (2D ISO WKB) comes back as is, after a look
    at the type word; a 3D geometry an older registry or another tool stored is read
    as 2D, so it compares and syncs like the 2D one the central PostGIS holds."""
    if len(wkb) >= 5:
        if wkb[0] == 1:
            plain = 1 <= wkb[1] <= 7 and wkb[2:5] == b"\0\0\0"
        else:
            plain = wkb[1:4] == b"\0\0\0" and 1 <= wkb[4] <= 7
        if plain:
            return wkb
    geom = shapely.from_wkb(wkb)
    if shapely.get_coordinate_dimension(geom) <= 2:
        return wkb
    return bytes(shapely.to_wkb(shapely.force_2d(geom), byte_order=1, flavor="iso"))


def from_gpkg_blob(blob: bytes | None) -> BaseGeometry | None:
    if blob is None:
        return None
    return shapely.from_wkb(gpkg_wkb(bytes(blob)))


def from_wkb(data: bytes | memoryview | None) -> BaseGeometry | None:
    if data is None:
        return None
    return flat(shapely.from_wkb(bytes(data)))


def from_geojson(obj: dict[str, Any] | None) -> BaseGeometry | None:
    """A GeoJSON geometry dict → shapely (2-D, as DHIS2 and Iaso send them)."""
    if not obj:
        return None
    geom = shapely.geometry.shape(obj)
    if shapely.get_coordinate_dimension(geom) > 2:
        geom = shapely.force_2d(geom)
    return geom


def as_multipolygon(geom: BaseGeometry | None) -> BaseGeometry | None:
    """Territories are stored as MultiPolygon whatever shape they arrive in."""
    if geom is None:
        return None
    if geom.geom_type == "Polygon":
        return shapely.MultiPolygon([geom])
    if geom.geom_type == "MultiPolygon":
        return geom
    if geom.geom_type == "GeometryCollection":
        polys = [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        parts: list[Any] = []
        for p in polys:
            parts.extend(p.geoms if p.geom_type == "MultiPolygon" else [p])
        if parts:
            return shapely.MultiPolygon(parts)
    raise InvalidInput(f"A territory must be a polygon or multipolygon, not a {geom.geom_type}.")


def split_location_territory(
    geom: BaseGeometry | None,
) -> tuple[BaseGeometry | None, BaseGeometry | None]:
    """A single incoming geometry → (point location, territory)."""
    if geom is None:
        return None, None
    if geom.geom_type == "Point":
        return geom, None
    if geom.geom_type == "MultiPoint" and len(geom.geoms) == 1:
        return geom.geoms[0], None
    return None, as_multipolygon(geom)


# --- per-backend SQL fragments -------------------------------------------------


def bind_sql(backend: Backend, param: str) -> str:
    """SQL that turns a bound parameter (as produced by ``encode``) into a geometry."""
    if backend is Backend.GEOPACKAGE:
        return f":{param}"
    if backend is Backend.SPATIALITE:
        return f"GeomFromWKB(:{param}, {SRID})"
    return f"ST_GeomFromWKB(:{param}, {SRID})"


def select_sql(backend: Backend, column: str) -> str:
    """SQL that reads a geometry column as something ``decode`` understands."""
    if backend is Backend.GEOPACKAGE:
        return column
    if backend is Backend.SPATIALITE:
        return f"AsBinary({column})"
    return f"ST_AsBinary({column})"


def encode(backend: Backend, geom: BaseGeometry | None) -> bytes | None:
    """A geometry as ``bind_sql`` takes it; always 2D (Z/M dropped: see ``flat``)."""
    if geom is None:
        return None
    if backend is Backend.GEOPACKAGE:
        return to_gpkg_blob(geom)
    return shapely.to_wkb(flat(geom), byte_order=1, flavor="iso")


def encode_many(backend: Backend, geoms: list[BaseGeometry | None]) -> list[bytes | None]:
    """``encode`` of many geometries (2D out)."""
    if backend is Backend.GEOPACKAGE:
        return to_gpkg_blobs(geoms)
    return [None if g is None else shapely.to_wkb(flat(g), byte_order=1, flavor="iso")
            for g in geoms]


def decode(backend: Backend, value: Any) -> BaseGeometry | None:
    if value is None:
        return None
    if backend is Backend.GEOPACKAGE:
        return from_gpkg_blob(value)
    return from_wkb(value)


def decode_audit_hex(backend: Backend, text: str | None) -> BaseGeometry | None:
    """Geometry captured by an audit trigger as hex (GPKG blob or WKB)."""
    if not text:
        return None
    raw = bytes.fromhex(text)
    if raw[:2] == b"GP":
        return from_gpkg_blob(raw)
    return from_wkb(raw)
