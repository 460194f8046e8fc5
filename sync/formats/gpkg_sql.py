"""GeoPackage files read and written with plain SQLite: no GDAL in the loop.

A GeoPackage is an SQLite database with a few metadata tables (OGC 12-128r18):
``gpkg_spatial_ref_sys``, ``gpkg_contents``, ``gpkg_geometry_columns`` and, for a
spatial index, ``gpkg_extensions`` + an R-tree per geometry column.  Going
through GDAL (pyogrio) costs a per-feature trip through OGR and the import of
pyogrio, which pulls in pandas and geopandas; for the Iaso format's 100k-unit
files that was more than ``ogr2ogr``'s whole copy.  Here rows go in with one
``executemany`` per table, geometries are encoded vectorised (shapely WKB + the
GPKG header), the R-tree is filled from the bounds computed in numpy, and the
R-tree triggers are created afterwards — the file is what GDAL 3.6 writes (same
tables, triggers, ``gpkg_ogr_contents`` counts and extents), checked by GDAL's
``validate_gpkg.py``, ``ogrinfo`` and QGIS in ``tests/test_format_gpkg_sql.py``.

Reading: :func:`decode_blobs` turns GPKG geometry blobs into shapely geometries
in one ``shapely.from_wkb`` call; :func:`layers` lists the tables a GeoPackage
registers, with their geometry column and CRS.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from storage.errors import InvalidInput

APPLICATION_ID = 0x47504B47  # "GPKG"
USER_VERSION = 10200  # GeoPackage 1.2, as GDAL 3.6 writes
WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,'
    'AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,'
    'AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],'
    'AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]'
)
RTREE_EXTENSION = "http://www.geopackage.org/spec120/#extension_rtree"

_CORE = [
    "CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL,srs_id INTEGER NOT NULL PRIMARY "
    "KEY,organization TEXT NOT NULL,organization_coordsys_id INTEGER NOT NULL,definition  TEXT "
    "NOT NULL,description TEXT)",
    "CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY,data_type TEXT NOT NULL,"
    "identifier TEXT UNIQUE,description TEXT DEFAULT '',last_change DATETIME NOT NULL DEFAULT "
    "(strftime('%Y-%m-%dT%H:%M:%fZ','now')),min_x DOUBLE, min_y DOUBLE,max_x DOUBLE, max_y "
    "DOUBLE,srs_id INTEGER,CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES "
    "gpkg_spatial_ref_sys(srs_id))",
    "CREATE TABLE gpkg_ogr_contents(table_name TEXT NOT NULL PRIMARY KEY,feature_count INTEGER "
    "DEFAULT NULL)",
    "CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL,column_name TEXT NOT NULL,"
    "geometry_type_name TEXT NOT NULL,srs_id INTEGER NOT NULL,z TINYINT NOT NULL,m TINYINT NOT "
    "NULL,CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),CONSTRAINT "
    "uk_gc_table_name UNIQUE (table_name),CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) "
    "REFERENCES gpkg_contents(table_name),CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES "
    "gpkg_spatial_ref_sys (srs_id))",
    "CREATE TABLE gpkg_tile_matrix_set (table_name TEXT NOT NULL PRIMARY KEY,srs_id INTEGER NOT "
    "NULL,min_x DOUBLE NOT NULL,min_y DOUBLE NOT NULL,max_x DOUBLE NOT NULL,max_y DOUBLE NOT "
    "NULL,CONSTRAINT fk_gtms_table_name FOREIGN KEY (table_name) REFERENCES "
    "gpkg_contents(table_name),CONSTRAINT fk_gtms_srs FOREIGN KEY (srs_id) REFERENCES "
    "gpkg_spatial_ref_sys (srs_id))",
    "CREATE TABLE gpkg_tile_matrix (table_name TEXT NOT NULL,zoom_level INTEGER NOT NULL,"
    "matrix_width INTEGER NOT NULL,matrix_height INTEGER NOT NULL,tile_width INTEGER NOT NULL,"
    "tile_height INTEGER NOT NULL,pixel_x_size DOUBLE NOT NULL,pixel_y_size DOUBLE NOT NULL,"
    "CONSTRAINT pk_ttm PRIMARY KEY (table_name, zoom_level),CONSTRAINT fk_tmm_table_name "
    "FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name))",
    "CREATE TABLE gpkg_extensions (table_name TEXT,column_name TEXT,extension_name TEXT NOT NULL,"
    "definition TEXT NOT NULL,scope TEXT NOT NULL,CONSTRAINT ge_tce UNIQUE (table_name, "
    "column_name, extension_name))",
]
for _col, _what, _cond in (("zoom_level", "zoom_level cannot be less than 0", "NEW.zoom_level < 0"),
                           ("matrix_width", "matrix_width cannot be less than 1",
                            "NEW.matrix_width < 1"),
                           ("matrix_height", "matrix_height cannot be less than 1",
                            "NEW.matrix_height < 1"),
                           ("pixel_x_size", "pixel_x_size must be greater than 0",
                            "NOT (NEW.pixel_x_size > 0)"),
                           ("pixel_y_size", "pixel_y_size must be greater than 0",
                            "NOT (NEW.pixel_y_size > 0)")):
    for _op, _on in (("insert", "INSERT"), ("update", f"UPDATE OF {_col}")):
        _CORE.append(
            f"CREATE TRIGGER 'gpkg_tile_matrix_{_col}_{_op}' BEFORE {_on} ON 'gpkg_tile_matrix' "
            f"FOR EACH ROW BEGIN SELECT RAISE(ABORT, '{_op} on table ''gpkg_tile_matrix'' "
            f"violates constraint: {_what}') WHERE ({_cond}); END")

_SRS = [
    ("Undefined Cartesian SRS", -1, "NONE", -1, "undefined",
     "undefined Cartesian coordinate reference system"),
    ("Undefined geographic SRS", 0, "NONE", 0, "undefined",
     "undefined geographic coordinate reference system"),
    ("WGS 84 geodetic", 4326, "EPSG", 4326, WGS84_WKT,
     "longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid"),
]

_RTREE_TRIGGERS = [
    ("insert", 'AFTER INSERT ON {t} WHEN (new.{g} NOT NULL AND NOT ST_IsEmpty(NEW.{g})) BEGIN '
     'INSERT OR REPLACE INTO {r} VALUES (NEW.{f},ST_MinX(NEW.{g}), ST_MaxX(NEW.{g}),'
     'ST_MinY(NEW.{g}), ST_MaxY(NEW.{g})); END'),
    ("update1", 'AFTER UPDATE OF {g} ON {t} WHEN OLD.{f} = NEW.{f} AND (NEW.{g} NOTNULL AND NOT '
     'ST_IsEmpty(NEW.{g})) BEGIN INSERT OR REPLACE INTO {r} VALUES (NEW.{f},ST_MinX(NEW.{g}), '
     'ST_MaxX(NEW.{g}),ST_MinY(NEW.{g}), ST_MaxY(NEW.{g})); END'),
    ("update2", 'AFTER UPDATE OF {g} ON {t} WHEN OLD.{f} = NEW.{f} AND (NEW.{g} ISNULL OR '
     'ST_IsEmpty(NEW.{g})) BEGIN DELETE FROM {r} WHERE id = OLD.{f}; END'),
    ("update3", 'AFTER UPDATE ON {t} WHEN OLD.{f} != NEW.{f} AND (NEW.{g} NOTNULL AND NOT '
     'ST_IsEmpty(NEW.{g})) BEGIN DELETE FROM {r} WHERE id = OLD.{f}; INSERT OR REPLACE INTO {r} '
     'VALUES (NEW.{f},ST_MinX(NEW.{g}), ST_MaxX(NEW.{g}),ST_MinY(NEW.{g}), ST_MaxY(NEW.{g})); '
     'END'),
    ("update4", 'AFTER UPDATE ON {t} WHEN OLD.{f} != NEW.{f} AND (NEW.{g} ISNULL OR '
     'ST_IsEmpty(NEW.{g})) BEGIN DELETE FROM {r} WHERE id IN (OLD.{f}, NEW.{f}); END'),
    ("delete", 'AFTER DELETE ON {t} WHEN old.{g} NOT NULL BEGIN DELETE FROM {r} WHERE id = '
     'OLD.{f}; END'),
]


def quote(name: str) -> str:
    """An SQL identifier, double-quoted (layer names have spaces and dashes)."""
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# --- opening for reading ----------------------------------------------------------------


def _wal_mode(path: Path) -> bool:
    """Whether the SQLite header says WAL (bytes 18-19 are 2 for WAL, 1 for rollback)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(20)
    except OSError:
        return False
    return len(head) == 20 and head[:16] == b"SQLite format 3\x00" and head[18] == 2


def readonly_uris(path: Path) -> list[str]:
    """The ``file:`` URIs :func:`open_readonly` tries, in order (also what a registry
    attaches to copy a layer: ``storage.bulk.FileRows``)."""
    path = Path(path)
    uri = path.resolve().as_uri()
    if _wal_mode(path) and not Path(f"{path}-wal").exists():
        return [uri + "?immutable=1"]  # mode=ro could see no more, and would leave files
    return [uri + "?mode=ro", uri + "?immutable=1"]


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection that leaves the user's file, and its folder, as they were.

    A file in WAL mode (GDAL and Iaso write those) opened ``mode=ro`` gets a
    ``-wal`` and ``-shm`` created next to it, so when no ``-wal`` is pending it is
    opened ``immutable`` only (SQLite then creates nothing, even when the file turns
    out to be damaged); with a pending ``-wal`` (another program has the file open)
    ``mode=ro`` sees that program's last commit, and a read-only folder falls back to
    ``immutable``.  Raises the last ``sqlite3.Error`` when no way opens it.
    """
    last: sqlite3.Error | None = None
    for uri in readonly_uris(path):
        try:
            conn = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as error:
            last = error
            continue
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as error:
            conn.close()
            last = error
            continue
        return conn
    assert last is not None
    raise last


# --- writing ----------------------------------------------------------------------------


class Writer:
    """A new GeoPackage file, written table by table in one transaction.

    ``with Writer(path) as w: w.features(...); w.attributes(...)`` — the file is
    complete (committed) when the block ends without an error.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        cur = self.conn.cursor()
        cur.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        cur.execute(f"PRAGMA user_version = {USER_VERSION}")
        cur.execute("BEGIN")
        for sql in _CORE:
            cur.execute(sql)
        cur.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", _SRS)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        try:
            if kind is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")
        finally:
            self.conn.close()

    def _table(self, name: str, columns: Sequence[tuple[str, str]], geom: str | None,
               geometry_type: str | None) -> str:
        parts = ['"fid" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL']
        if geom is not None:
            parts.append(f"{quote(geom)} {(geometry_type or 'GEOMETRY').upper()}")
        parts += [f"{quote(c)} {kind}" for c, kind in columns]
        self.conn.execute(f"CREATE TABLE {quote(name)} ( {', '.join(parts)})")
        return ", ".join(quote(c) for c, _ in columns)

    def _counts(self, name: str, n: int) -> None:
        self.conn.execute("INSERT INTO gpkg_ogr_contents (table_name, feature_count) "
                          "VALUES (?, ?)", (name, n))
        t, lit = quote(name), _literal(name)
        self.conn.execute(
            f'CREATE TRIGGER {quote("trigger_insert_feature_count_" + name)} AFTER INSERT ON '
            f"{t} BEGIN UPDATE gpkg_ogr_contents SET feature_count = feature_count + 1 WHERE "
            f"lower(table_name) = lower({lit}); END")
        self.conn.execute(
            f'CREATE TRIGGER {quote("trigger_delete_feature_count_" + name)} AFTER DELETE ON '
            f"{t} BEGIN UPDATE gpkg_ogr_contents SET feature_count = feature_count - 1 WHERE "
            f"lower(table_name) = lower({lit}); END")

    def attributes(self, name: str, columns: Sequence[tuple[str, str]],
                   rows: Sequence[Sequence[Any]]) -> None:
        """A table without geometry (``data_type`` 'attributes'); columns (name, SQL type)."""
        cols = self._table(name, columns, None, None)
        if rows:
            marks = ", ".join("?" * len(columns))
            self.conn.executemany(f"INSERT INTO {quote(name)} ({cols}) VALUES ({marks})", rows)
        self.conn.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, "
                          "description, srs_id) VALUES (?, 'attributes', ?, '', 0)",
                          (name, name))
        self._counts(name, len(rows))

    def features(self, name: str, columns: Sequence[tuple[str, str]],
                 rows: Sequence[Sequence[Any]], geoms: np.ndarray,
                 geometry_type: str, geom: str = "geom") -> None:
        """A feature table in EPSG:4326 with its R-tree.

        ``rows``: one sequence of values per feature (in the order of ``columns``);
        ``geoms``: shapely geometries (object array; None for no geometry).
        """
        n = len(geoms)
        cols = self._table(name, columns, geom, geometry_type)
        blobs, bounds, present = encode_blobs(geoms)
        fids = range(1, n + 1)
        marks = ", ".join("?" * (len(columns) + 2))
        self.conn.executemany(
            f"INSERT INTO {quote(name)} (fid, {quote(geom)}{', ' if cols else ''}{cols}) "
            f"VALUES ({marks})",
            ((fid, blob, *row) for fid, blob, row in zip(fids, blobs, rows, strict=True)))
        extent: tuple[float | None, ...] = (None, None, None, None)
        if present.any():
            b = bounds[present]
            extent = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()),
                      float(b[:, 3].max()))
        self.conn.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, "
                          "description, min_x, min_y, max_x, max_y, srs_id) "
                          "VALUES (?, 'features', ?, '', ?, ?, ?, ?, 4326)",
                          (name, name, *extent))
        self.conn.execute("INSERT INTO gpkg_geometry_columns VALUES (?, ?, ?, 4326, 0, 0)",
                          (name, geom, geometry_type.upper()))
        self._counts(name, n)
        # the spatial index: filled from the bounds, then the triggers that keep it up to
        # date on later edits (they call ST_* functions GDAL, QGIS and SpatiaLite provide)
        rtree = f"rtree_{name}_{geom}"
        self.conn.execute(f"CREATE VIRTUAL TABLE {quote(rtree)} USING rtree(id, minx, maxx, "
                          "miny, maxy)")
        idx = np.flatnonzero(present)
        if len(idx):
            pack_rtree(self.conn, rtree, idx + 1, bounds[idx])
        for suffix, body in _RTREE_TRIGGERS:
            self.conn.execute(f"CREATE TRIGGER {quote(rtree + '_' + suffix)} " + body.format(
                t=quote(name), g=quote(geom), r=quote(rtree), f='"fid"'))
        self.conn.execute("INSERT INTO gpkg_extensions VALUES (?, ?, 'gpkg_rtree_index', ?, "
                          "'write-only')", (name, geom, RTREE_EXTENSION))


_CELL = np.dtype([("id", ">i8"), ("minx", ">f4"), ("maxx", ">f4"), ("miny", ">f4"),
                  ("maxy", ">f4")])


def _down(d: np.ndarray) -> np.ndarray:
    """The float32 at or below each double (an R-tree box never shrinks)."""
    f = d.astype(np.float32)
    over = f.astype(np.float64) > d
    f[over] = np.nextafter(f[over], np.float32(-np.inf))
    return f


def _up(d: np.ndarray) -> np.ndarray:
    f = d.astype(np.float32)
    under = f.astype(np.float64) < d
    f[under] = np.nextafter(f[under], np.float32(np.inf))
    return f


def _str_order(cells: np.ndarray, fanout: int) -> np.ndarray:
    """Sort-tile-recursive order: vertical slices by x centre, then y centre in each."""
    n = len(cells)
    slices = max(1, int(np.ceil(np.sqrt(-(-n // fanout)))))
    cx = cells["minx"].astype(np.float64) + cells["maxx"]
    cy = cells["miny"].astype(np.float64) + cells["maxy"]
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(cx, kind="stable")] = np.arange(n)
    return np.lexsort((cy, rank // (slices * fanout)))


def pack_rtree(conn: sqlite3.Connection, rtree: str, ids: np.ndarray,
               bounds: np.ndarray) -> None:
    """Bulk-load an empty SQLite R-tree with boxes (minx, miny, maxx, maxy per id).

    As GDAL does for a new layer, the tree is packed bottom-up (sort-tile-recursive,
    full nodes) and its nodes written straight into the R-tree's tables in SQLite's
    node format (2-byte depth, 2-byte cell count, 24-byte big-endian cells), instead
    of one insertion — with its node splits — per box: ~0.05 s instead of ~0.8 s for
    100k boxes.  The result is an ordinary R-tree (``rtreecheck`` passes) that SQLite
    maintains row by row afterwards.
    """
    node_size = int(conn.execute(f'SELECT length(data) FROM {quote(rtree + "_node")} '
                                 "WHERE nodeno = 1").fetchone()[0])
    fanout = (node_size - 4) // _CELL.itemsize
    cells = np.empty(len(ids), dtype=_CELL)
    cells["id"] = ids
    cells["minx"], cells["maxx"] = _down(bounds[:, 0]), _up(bounds[:, 2])
    cells["miny"], cells["maxy"] = _down(bounds[:, 1]), _up(bounds[:, 3])
    nodes: list[tuple[int, bytes]] = []
    parents: list[tuple[int, int]] = []
    next_no, depth = 2, 0
    while len(cells) > fanout:
        cells = cells[_str_order(cells, fanout)]
        starts = np.arange(0, len(cells), fanout)
        numbers = np.arange(next_no, next_no + len(starts))
        next_no += len(starts)
        owner = np.repeat(numbers, fanout)[: len(cells)]
        if depth == 0:
            conn.executemany(f'INSERT INTO {quote(rtree + "_rowid")} (rowid, nodeno) '
                             "VALUES (?, ?)", zip(cells["id"].tolist(), owner.tolist(),
                                                  strict=True))
        else:
            parents.extend(zip(cells["id"].tolist(), owner.tolist(), strict=True))
        upper = np.empty(len(starts), dtype=_CELL)
        upper["id"] = numbers
        upper["minx"] = np.minimum.reduceat(cells["minx"], starts)
        upper["maxx"] = np.maximum.reduceat(cells["maxx"], starts)
        upper["miny"] = np.minimum.reduceat(cells["miny"], starts)
        upper["maxy"] = np.maximum.reduceat(cells["maxy"], starts)
        for no, start in zip(numbers.tolist(), starts.tolist(), strict=True):
            chunk = cells[start : start + fanout]
            nodes.append((no, (struct.pack(">HH", 0, len(chunk)) + chunk.tobytes())
                          .ljust(node_size, b"\0")))
        cells = upper
        depth += 1
    if depth == 0:
        conn.executemany(f'INSERT INTO {quote(rtree + "_rowid")} (rowid, nodeno) VALUES (?, 1)',
                         ((i,) for i in cells["id"].tolist()))
    else:
        parents.extend((i, 1) for i in cells["id"].tolist())
    conn.executemany(f'INSERT INTO {quote(rtree + "_node")} (nodeno, data) VALUES (?, ?)', nodes)
    conn.executemany(f'INSERT INTO {quote(rtree + "_parent")} (nodeno, parentnode) '
                     "VALUES (?, ?)", parents)
    root = (struct.pack(">HH", depth, len(cells)) + cells.tobytes()).ljust(node_size, b"\0")
    conn.execute(f'UPDATE {quote(rtree + "_node")} SET data = ? WHERE nodeno = 1', (root,))


_HEADER = struct.Struct("<2sBBi")
_POINT_HEADER = _HEADER.pack(b"GP", 0, 0b00000001, 4326)  # little endian, no envelope
_EMPTY_HEADER = _HEADER.pack(b"GP", 0, 0b00010001, 4326)  # empty, no envelope
_ENVELOPE_HEADER = _HEADER.pack(b"GP", 0, 0b00000011, 4326)  # xy envelope
_ENVELOPE = struct.Struct("<4d")


def encode_blobs(geoms: np.ndarray) -> tuple[list[bytes | None], np.ndarray, np.ndarray]:
    """GeoPackage blobs (as GDAL writes them: points without an envelope, other shapes
    with their xy envelope), the bounds (n × 4: minx, miny, maxx, maxy) and a mask of
    the geometries that go into the R-tree (present and not empty)."""
    n = len(geoms)
    blobs: list[bytes | None] = [None] * n
    missing = shapely.is_missing(geoms)
    empty = np.zeros(n, dtype=bool)
    empty[~missing] = shapely.is_empty(geoms[~missing])
    present = ~missing & ~empty
    bounds = shapely.bounds(geoms)
    if n == 0 or missing.all():
        return blobs, bounds, present
    has = np.flatnonzero(~missing)
    wkbs = shapely.to_wkb(geoms[has], byte_order=1, flavor="iso", include_srid=False).tolist()
    points = (shapely.get_type_id(geoms[has]) == 0).tolist()
    empties = empty[has].tolist()
    for i, wkb, point, is_empty in zip(has.tolist(), wkbs, points, empties, strict=True):
        if is_empty:
            blobs[i] = _EMPTY_HEADER + wkb
        elif point:
            blobs[i] = _POINT_HEADER + wkb
        else:
            b = bounds[i]
            blobs[i] = _ENVELOPE_HEADER + _ENVELOPE.pack(b[0], b[2], b[1], b[3]) + wkb
    return blobs, bounds, present


# --- reading ----------------------------------------------------------------------------

_ENVELOPE_BYTES = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}


class BadBlob(ValueError):
    """A geometry blob that is not a GeoPackage geometry; ``index`` is its position."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(why)
        self.index, self.why = index, why


_POINT_BLOB = 8 + 21  # a header without envelope + a 2-D WKB point
_POINT_WKB_HEAD = np.array([1, 1, 0, 0, 0], dtype=np.uint8)  # little-endian, type 1


def plain_points(blobs: Sequence[bytes | None]) -> np.ndarray | None:
    """The common layer of points (no null, no envelope, 2-D little-endian WKB), read
    with numpy for the whole column; None for anything else (the general way)."""
    xy = plain_xy(blobs)
    return None if xy is None else shapely.points(xy)  # type: ignore[no-any-return]


def plain_xy(blobs: Sequence[bytes | None]) -> np.ndarray | None:
    """:func:`plain_points`' coordinates, ``(n, 2)``, without making the points."""
    if not blobs or None in blobs or set(map(type, blobs)) != {bytes} \
            or set(map(len, blobs)) != {_POINT_BLOB}:  # type: ignore[arg-type]
        return None
    cells = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(-1, _POINT_BLOB)  # type: ignore[arg-type]
    plain = ((cells[:, 0] == 0x47) & (cells[:, 1] == 0x50)  # "GP"
             & (cells[:, 3] & 0b111110 == 0)  # no envelope, not empty, not extended
             & (cells[:, 8:13] == _POINT_WKB_HEAD).all(axis=1))
    if not plain.all():
        return None
    xy = cells[:, 13:].copy().view("<f8")
    if np.isnan(xy).any():
        return None
    return xy


def decode_blobs(blobs: Sequence[bytes | None]) -> np.ndarray:
    """GeoPackage geometry blobs → an object array of shapely geometries (None stays None).

    Raises :class:`BadBlob` naming the first blob that is not a standard GPKG geometry.
    """
    points = plain_points(blobs)
    if points is not None:
        return points
    out = np.empty(len(blobs), dtype=object)
    idx: list[int] = []
    wkbs: list[bytes] = []
    for i, blob in enumerate(blobs):
        if blob is None:
            continue
        if type(blob) is not bytes:
            if isinstance(blob, (memoryview, bytearray)):
                blob = bytes(blob)
            else:
                raise BadBlob(i, f"holds a {type(blob).__name__}, not a geometry")
        if len(blob) < 8 or blob[0] != 0x47 or blob[1] != 0x50:  # "GP"
            raise BadBlob(i, "is not a GeoPackage geometry (no 'GP' header)")
        flags = blob[3]
        env = (flags >> 1) & 0b111
        if env not in _ENVELOPE_BYTES:
            raise BadBlob(i, f"has an invalid envelope code {env}")
        if flags & 0b00100000:
            raise BadBlob(i, "is an extended GeoPackage geometry, which is not supported")
        idx.append(i)
        wkbs.append(blob[8 + _ENVELOPE_BYTES[env]:])
    if idx:
        arr = np.empty(len(wkbs), dtype=object)
        arr[:] = wkbs
        try:
            out[idx] = shapely.from_wkb(arr)
        except shapely.errors.GEOSException:
            for k, w in enumerate(wkbs):  # find the row
                try:
                    shapely.from_wkb(w)
                except shapely.errors.GEOSException as error:
                    raise BadBlob(idx[k], f"holds invalid WKB ({error})") from None
            raise
    return out


@dataclass
class TableInfo:
    name: str
    data_type: str  # features, attributes, or "" for a table gpkg_contents does not register
    geometry_column: str | None
    srs_id: int | None
    columns: list[tuple[str, str]]  # (name, declared type), without the fid and geometry
    fid: str  # the integer primary key ("rowid" when there is none)


def table_info(conn: sqlite3.Connection, name: str, data_type: str = "") -> TableInfo:
    geom = conn.execute("SELECT column_name, srs_id FROM gpkg_geometry_columns WHERE "
                        "table_name = ?", (name,)).fetchone()
    cols = conn.execute(f"PRAGMA table_info({quote(name)})").fetchall()
    fid = next((c[1] for c in cols if c[5] == 1 and str(c[2]).upper() == "INTEGER"), "rowid")
    geom_col = geom[0] if geom else None
    columns = [(str(c[1]), str(c[2] or "").upper()) for c in cols
               if c[1] != fid and (geom_col is None or c[1].lower() != geom_col.lower())]
    return TableInfo(name, data_type, geom_col, geom[1] if geom else None, columns, fid)


def srs(conn: sqlite3.Connection, srs_id: int | None) -> str | None:
    """The layer's CRS as ``EPSG:n`` or WKT; None when undefined (srs_id 0/-1 or absent)."""
    if srs_id is None:
        return None
    row = conn.execute("SELECT organization, organization_coordsys_id, definition FROM "
                       "gpkg_spatial_ref_sys WHERE srs_id = ?", (srs_id,)).fetchone()
    if row is None:
        raise InvalidInput(f"srs_id {srs_id} is not in gpkg_spatial_ref_sys")
    org, code, definition = row
    if str(org).upper() == "EPSG" and code is not None and int(code) > 0:
        return f"EPSG:{int(code)}"
    if definition and str(definition).strip().lower() != "undefined":
        return str(definition)
    return None
