"""The COPY text of a first push: a registry's units and territories as the lines PostgreSQL's
``COPY … FROM STDIN`` (text format) reads, formatted by the registry's own database.

On SQLite the common geometry (little-endian 2D WKB, what Georeg writes) is rewritten to hex
EWKB in SQL — GeoPackage header stripped, SRID flag and SRID put in — and text is escaped in
SQL; Python only adds each unit's central key and path (``sync.postgis_push._copy_batch``).
Rare geometries (big-endian, Z/M) come back raw and go through shapely (``_ewkb_from``),
which sends them 2D like everything else (the central columns are 2D).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import shapely
from sqlalchemy import Connection

from storage import geometry
from storage.backends import Backend

#: rows per ``copy.write`` (one string of ~2-3 MB)
_COPY_CHUNK = 10_000


def _ewkb_hex(wkb: bytes | None) -> str | None:
    """ISO WKB → hex EWKB with the registry's SRID, what PostGIS reads from COPY.

    Always 2D: the central columns refuse a Z, and a 3D point an older registry holds
    (or any Z/M/EWKB flavour) is sent flat rather than failing the whole push."""
    if wkb is None:
        return None
    order = "<" if wkb[0] == 1 else ">"
    (gtype,) = struct.unpack(order + "I", wkb[1:5])
    if gtype >= 1000:  # Z/M (ISO or EWKB flags) flavours: shapely writes it, flat
        flat = geometry.flat(shapely.from_wkb(wkb))
        return str(shapely.to_wkb(shapely.set_srid(flat, geometry.SRID),
                                  hex=True, byte_order=1, include_srid=True))
    return (wkb[:1] + struct.pack(order + "II", gtype | 0x20000000, geometry.SRID)
            + wkb[5:]).hex().upper()


_AFTER = " AND (u.depth > :d OR (u.depth = :d AND u.fid > :f))"
_UPTO = " AND (u.depth < :d2 OR (u.depth = :d2 AND u.fid <= :f2))"
#: positions in the rows of ``_local_lines``
_FID, _DEPTH, _UUID, _UKEY, _PKEY, _GEOM, _ODD, _REST = range(8)
_NULL = "\\N"


def _copy_text(backend: Backend, column: str) -> str:
    """SQL for a text column as a COPY (text format) field: escaped, NULL as ``\\N``."""
    tab, nl, cr = ("char(9)", "char(10)", "char(13)") if backend is not Backend.POSTGIS else (
        "chr(9)", "chr(10)", "chr(13)")
    escaped = (f"replace(replace(replace(replace({column}, '\\', '\\\\'), {tab}, '\\t'), "
               f"{nl}, '\\n'), {cr}, '\\r')")
    if backend is Backend.POSTGIS:
        return f"COALESCE({escaped}, '\\N')"
    # SQLite: most values need no escaping, and one GLOB says so faster than four replace()
    return (f"CASE WHEN {column} IS NULL THEN '\\N' WHEN {column} GLOB "
            f"'*[' || char(92, 9, 10, 13) || ']*' THEN {escaped} ELSE {column} END")


def _copy_geometry(backend: Backend, column: str, w: str = "w") -> tuple[str, str, str]:
    """SQL for (the geometry's WKB, to be selected as ``w`` by the caller; from ``w``, the
    hex EWKB with the registry's SRID — what PostGIS reads from COPY — or NULL where Python
    must convert it; the geometry for those only, as ``_ewkb_from`` reads it).

    On SQLite the common case (little-endian 2D WKB: the points and polygons Georeg
    writes) is rewritten in SQL: GeoPackage header stripped, SRID flag and SRID put in;
    anything else (big-endian, Z/M) goes through shapely."""
    if backend is Backend.POSTGIS:
        return ("NULL", f"upper(encode(ST_AsEWKB(ST_SetSRID({column}, {geometry.SRID})), "
                "'hex'))", "NULL")
    if backend is Backend.GEOPACKAGE:
        # header: 8 bytes + an envelope whose size is coded in bits 1-3 of the flags byte
        code = (f"((instr('0123456789ABCDEF', substr(hex(substr({column}, 4, 1)), 2, 1)) - 1)"
                " / 2)")
        wkb = (f"substr({column}, 9 + CASE {code} WHEN 0 THEN 0 WHEN 1 THEN 32 "
               "WHEN 2 THEN 48 WHEN 3 THEN 48 WHEN 4 THEN 64 END)")
    else:
        wkb = f"AsBinary({column})"
    srid = struct.pack("<I", geometry.SRID).hex().upper()
    plain = (f"substr({w}, 1, 1) = x'01' AND substr({w}, 3, 3) = x'000000' AND "
             f"substr({w}, 2, 1) BETWEEN x'01' AND x'07'")
    fast = (f"CASE WHEN {plain} THEN '01' || hex(substr({w}, 2, 1)) || '000020{srid}' || "
            f"hex(substr({w}, 6)) END")
    odd = (f"CASE WHEN {w} IS NOT NULL AND NOT ({plain}) THEN "
           f"{geometry.select_sql(backend, column)} END")
    return wkb, fast, odd


def _ewkb_from(backend: Backend, value: Any) -> str:
    """Hex EWKB of a geometry as ``geometry.select_sql`` reads it (the rare cases)."""
    blob = bytes(value)
    return _ewkb_hex(geometry.gpkg_wkb(blob) if backend is Backend.GEOPACKAGE else blob) or _NULL


def _local_lines(backend: Backend, type_map: dict[int, int | None], after: bool) -> str:
    """The local units of a version, parents first, as COPY text: (fid, depth, uuid,
    unit_key, parent_key, hex EWKB, odd geometry, the rest of the COPY line)."""
    wkb, geom, odd = _copy_geometry(backend, "u.location", "k.w")
    types = " ".join(f"WHEN {int(k)} THEN '{int(v)}'" for k, v in type_map.items()
                     if v is not None)
    type_sql = f"CASE u.type_id {types} ELSE '\\N' END" if types else "'\\N'"
    if backend is Backend.POSTGIS:
        date = "COALESCE(CAST({} AS text), '\\N')"
        jsn = "CAST({} AS text)"
        cat = " || chr(9) || "
        status = "COALESCE(NULLIF(u.validation_status, ''), 'valid')"
    else:
        date = "COALESCE(NULLIF(substr({}, 1, 10), ''), '\\N')"
        jsn = "{}"
        cat = " || char(9) || "
        status = "COALESCE(NULLIF(u.validation_status, ''), 'valid')"
    rest = cat.join([
        _copy_text(backend, "u.uuid"), _copy_text(backend, "u.source_ref"),
        _copy_text(backend, "u.name"), _copy_text(backend, "u.code"), type_sql,
        "CAST(u.depth AS text)", status, date.format("u.opening_date"),
        date.format("u.closed_date"), _copy_text(backend, jsn.format("u.aliases")),
        _copy_text(backend, jsn.format("u.extra_fields")),
    ])
    # Only the keys are sorted (k); each row is formatted as it is read, so on SQLite (a
    # CROSS JOIN keeps k the outer loop, in its order) the first rows come at once and
    # the COPY starts while SQLite formats the rest.
    # (the geometry's WKB is cut out there too, once per row)
    keys = (f"SELECT u.fid, u.depth, {wkb} AS w FROM org_unit u WHERE u.version_id = :v"
            f"{_AFTER if after else ''} ORDER BY u.depth, u.fid LIMIT :n")
    join, order = ("JOIN", " ORDER BY u.depth, u.fid") if backend is Backend.POSTGIS else (
        "CROSS JOIN", "")
    return (f"SELECT u.fid, u.depth, u.uuid, u.unit_key, u.parent_key, {geom}, {odd}, {rest} "
            f"FROM ({keys}) k {join} org_unit u ON u.fid = k.fid{order}")


#: the columns of ``_local_lines`` rows, as COPY receives them
_UNIT_COPY = ("COPY org_unit (fid, unit_key, parent_key, path, version_id, location, uuid, "
              "source_ref, name, code, type_id, depth, validation_status, opening_date, "
              "closed_date, aliases, extra_fields) FROM STDIN")


def _fetch(conn: Connection, sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
    """Rows as plain tuples (on SQLite straight from the driver: 100k rows a second faster
    than through SQLAlchemy's Row objects)."""
    raw = conn.connection.driver_connection
    assert raw is not None
    if conn.dialect.name == "sqlite":
        cur = raw.cursor()
        try:
            return cur.execute(sql, params).fetchall()
        finally:
            cur.close()
    with raw.cursor() as pcur:
        return pcur.execute(re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql), params).fetchall()


def _stream(conn: Connection, sql: str, params: dict[str, Any]
            ) -> Iterator[Sequence[Sequence[Any]]]:
    """``_fetch`` in chunks of ``_COPY_CHUNK`` rows, read as they are consumed."""
    raw = conn.connection.driver_connection
    assert raw is not None
    if conn.dialect.name == "sqlite":
        cur = raw.cursor()
        try:
            cur.execute(sql, params)
            while chunk := cur.fetchmany(_COPY_CHUNK):
                yield chunk
        finally:
            cur.close()
        return
    with raw.cursor() as pcur:
        pcur.execute(re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql), params)
        while chunk := pcur.fetchmany(_COPY_CHUNK):
            yield chunk
