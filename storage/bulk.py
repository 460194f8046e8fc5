"""Set-based loading of many units into one draft version, for every importer.

Incoming records are checked and encoded in batches (nothing but the current
batch is held in Python).  On SQLite a unit whose parent is already written —
the common case: inputs nearly always list parents first — goes straight into
``org_unit`` with its final parent key, path and depth; the others (and, on
PostgreSQL, every unit, with ``COPY``) are *staged* in a temporary table.
``finish`` then checks the staged units at once (duplicate refs, unknown
parents, cycles — in ``collect`` mode, every problem row, taken out of the load
with the rows below it, instead of the first problem raised: see ``_settle``),
places them with one recursive query, writes them with one
``INSERT … SELECT`` (parents before children, final paths, no ``UPDATE``),
then group memberships and the audit trail, set-wise.  The database's own rules
(published versions, unique refs and uuids, foreign keys) check these rows as
they check any other; only GDAL's R-tree insert triggers and the secondary
indexes are set aside during the load and put back by ``finish``, inside the
transaction.  Everything happens inside the caller's write transaction, so a
failure — or a killed process — leaves no partial version.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy import Connection, exc, text

from storage import audit_sql, geometry
from storage.backends import Backend
from storage.errors import CycleError, GeoregError, InvalidInput, PublishedVersionError
from storage.ids import uuid7_many
from storage.jobs import gc_paused
from storage.migrations.schema_0001 import PUBLISHED_MSG
from storage.registry import Registry, translate_db_error
from storage.versions import log_version

VALIDATION_STATUSES = ("new", "valid", "rejected")
DEFER_INDEXES_BELOW = 20_000  # units already in the registry

#: staged columns, in the order of the rows handed to the driver
_STAGE_COLUMNS = (
    "fid", "ref", "parent_ref", "src", "uuid", "name", "code", "type_id", "status",
    "opening_date", "closed_date", "aliases", "extra", "location", "tfid", "territory",
)
#: per-row triggers on org_unit inserts that a load sets aside (see ``_set_aside``)
_ROW_TRIGGERS = ("org_unit_insert_published", "org_unit_audit_insert", "org_unit_fill")
#: the spatial indexes' per-row insert triggers a load sets aside, and the indexes they fill
#: (SpatiaLite: ``gii_*`` calls ``RTreeAlign`` per row, ``tmi_*`` stamps the insert time)
_RTREE_TRIGGERS = {
    Backend.GEOPACKAGE: ("rtree_org_unit_location_insert",
                         "rtree_org_unit_territory_territory_insert"),
    Backend.SPATIALITE: ("gii_org_unit_location", "gii_org_unit_territory_territory",
                         "tmi_org_unit_location", "tmi_org_unit_territory_territory"),
}
_RTREES = {
    Backend.GEOPACKAGE: ("rtree_org_unit_location", "rtree_org_unit_territory_territory"),
    Backend.SPATIALITE: ("idx_org_unit_location", "idx_org_unit_territory_territory"),
}
_TEMP_TABLES = ("georeg_load", "georeg_load_member", "georeg_tree", "georeg_src",
                "georeg_batch", "georeg_lbox", "georeg_tbox", "georeg_parents", "georeg_reject")
_GPKG_POINT = struct.pack("<2sBBi", b"GP", 0, 0b00000001, geometry.SRID)
_GPKG_ENVELOPE = struct.pack("<2sBBi", b"GP", 0, 0b00000011, geometry.SRID)
_GPKG_EMPTY = struct.pack("<2sBBi", b"GP", 0, 0b00010001, geometry.SRID)


@dataclass
class UnitRecord:
    """One incoming unit, as any importer describes it."""

    name: str
    source_ref: str | None = None
    parent_ref: str | None = None
    type_name: str | None = None
    code: str | None = None
    opening_date: str | dt.date | None = None
    closed_date: str | dt.date | None = None
    aliases: list[str] | None = None
    extra_fields: dict[str, Any] | None = None
    #: a shapely Point, or a point as an ``(x, y)`` pair of floats (longitude, latitude)
    #: — cheaper for big imports: no geometry object is made per unit
    location: BaseGeometry | tuple[float, float] | None = None
    territory: BaseGeometry | None = None
    validation_status: str = "valid"
    uuid: str | None = None
    #: refs of the groups the unit belongs to (groups added with ``add_group``)
    groups: list[str] | None = None
    #: where the record came from, for messages: "organisationUnits page 2, item 17"
    where: str = ""
    #: what is wrong with the row, when its reader could not make sense of it (a cell
    #: that is not WKT, a geometry that is not GeoJSON …): the import job rejects the
    #: row with this message, as it rejects rows its own checks refuse, so one bad cell
    #: does not stop the reading of the rest of the file
    problem: str | None = None


#: True while the import job reads a payload's units: a reader then hands a row it cannot
#: make sense of (a cell that is not WKT, a geometry that is not GeoJSON …) over as a
#: :class:`UnitRecord` with ``problem``, for the job to reject with the other rows'
#: problems.  Otherwise — a reader used on its own, whose caller may not look at
#: ``problem`` — the reader raises, as a record with a ``problem`` must never be loaded
#: as a unit.
ROW_PROBLEMS: ContextVar[bool] = ContextVar("georeg_row_problems", default=False)

#: the columns, in this order, of a :class:`FileRows` query
FILE_ROW_COLUMNS = ("ord", "location", "uuid", "ref", "name", "code", "parent_ref", "status",
                    "opening_date", "closed_date")
#: the first 13 bytes of a plain point blob in a GeoPackage registry — header (no
#: envelope, EPSG:4326) and little-endian WKB Point type; 29 bytes in all (``point_blobs``)
PLAIN_POINT_HEAD = _GPKG_POINT + b"\x01\x01\x00\x00\x00"


@dataclass
class FileRows:
    """Units kept in a table of an SQLite file (a GeoPackage layer), handed to the
    loader as a query instead of one record each: ``BulkLoader`` copies them with one
    ``INSERT … SELECT`` over the attached file — no row goes through Python.

    ``select`` runs with the file attached under the schema name ``{src}`` (formatted
    in) and returns :data:`FILE_ROW_COLUMNS` in file order (``ord``: a sort key), each
    value already what the import's checks would make of the row's record: texts
    stripped and blank ones NULL, a known status, ISO dates, ``location`` a GeoPackage
    point blob or NULL.  The reader vouches for that by checking each row in the
    query itself: a row that is not so calls ``georeg_not_plain()``, which ends the
    copy.  That, and what only the load can see — a parent not written yet, a uuid
    used twice, a point that is not a plain longitude/latitude pair — rolls the copy
    back and sends the rows to ``records`` instead, the same units as
    :class:`UnitRecord` s (``validated``: as the import job checks them).
    """

    path: str  # the file as SQLite attaches it: a path or a ``file:`` URI (``?mode=ro``)
    select: str
    count: int
    type_name: str | None
    records: Callable[[], Iterable[UnitRecord]]
    #: (group ref, unit ref) pairs of these rows
    memberships: Callable[[], Iterable[tuple[str, str]]] = lambda: ()
    #: every row gets this status (``import --set-status``) instead of its own
    validation_status: str | None = None
    #: the records as checked by the import job (set by it; default: as they come)
    validated: Callable[[], Iterable[UnitRecord]] | None = None
    #: when the ``ord`` values are ``count`` consecutive integers, the first: the loader
    #: then numbers the rows from it instead of sorting them by a window function
    first_ord: int | None = None


class _NotCopied(Exception):
    """FileRows that must go the records way after all (see ``BulkLoader._copy_rows``)."""


def _not_plain() -> None:
    """Called by a :class:`FileRows` query on a row that is not plain: ends the copy."""
    raise _NotCopied


def _with_status(rec: UnitRecord, status: str) -> UnitRecord:
    rec.validation_status = status
    return rec


def _uuid_source() -> Iterator[str]:
    """New uuids, made 5,000 at a time as they are asked for."""
    while True:
        yield from uuid7_many(5000)


@dataclass
class LoadStats:
    units: int = 0
    locations: int = 0
    territories: int = 0
    groups: int = 0
    memberships: int = 0
    types: int = 0
    #: units copied from their file in SQL (``FileRows``), not record by record
    copied: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "locations": self.locations,
            "territories": self.territories,
            "groups": self.groups,
            "memberships": self.memberships,
            "types": self.types,
            "copied": self.copied,
            "warnings": self.warnings,
        }


def parse_date(value: str | dt.date | None, what: str) -> str | None:
    """A date as ``YYYY-MM-DD``, or refused naming ``what`` (row and field).

    Takes ISO 8601 as ``datetime.fromisoformat`` reads it — a date (``2020-01-31``,
    ``20200131``, the week date ``2020-W05-5``) or a date-time, of which the date part
    as written is kept (DHIS2 sends ``1970-01-01T00:00:00.000``) — and ``date`` /
    ``datetime`` objects.  Anything else is refused, trailing text included: keeping
    the first ten characters of ``2020-01-01garbage`` would hide a broken cell.
    Slash dates (``31/12/2020``) are the readers' to settle (day or month first
    depends on the file: ``sync.formats.tabular``).
    """
    if value is None or value == "":
        return None
    if type(value) is str:
        if len(value) == 10 and value[4] == "-" and value[7] == "-":  # already YYYY-MM-DD
            try:
                dt.date.fromisoformat(value)
                return value
            except ValueError:
                pass
    elif isinstance(value, dt.datetime):
        return value.date().isoformat()
    elif isinstance(value, dt.date):
        return value.isoformat()
    try:
        return dt.datetime.fromisoformat(str(value).strip()).date().isoformat()
    except ValueError:
        raise InvalidInput(f"{what}: {value!r} is not a date (expected YYYY-MM-DD).") from None


def encode_geometries(backend: Backend, geoms: Sequence[BaseGeometry | None]) -> list[bytes | None]:
    """A batch of geometries → what the backend's insert takes, vectorised.

    GeoPackage: GeoPackage blobs (header, envelope except for points, ISO WKB, as GDAL
    writes them) built from one shapely WKB pass and one bounds array; SpatiaLite and
    PostGIS: ISO WKB for their ``GeomFromWKB``.
    """
    n = len(geoms)
    out: list[bytes | None] = [None] * n
    if n == 0:
        return out
    arr = np.empty(n, dtype=object)
    arr[:] = geoms
    present = ~shapely.is_missing(arr)
    if not present.any():
        return out
    idx = np.flatnonzero(present)
    sub = arr[idx]
    wkbs = shapely.to_wkb(sub, byte_order=1, flavor="iso", include_srid=False).tolist()
    if backend is not Backend.GEOPACKAGE:
        for i, w in zip(idx.tolist(), wkbs, strict=True):
            out[i] = w
        return out
    types = shapely.get_type_id(sub)
    empty = shapely.is_empty(sub)
    if not empty.any() and (types == 0).all():  # the common case: a batch of points
        for i, w in zip(idx.tolist(), wkbs, strict=True):
            out[i] = _GPKG_POINT + w
        return out
    env = np.ascontiguousarray(shapely.bounds(sub)[:, [0, 2, 1, 3]], dtype="<f8").tobytes()
    for k, (i, w) in enumerate(zip(idx.tolist(), wkbs, strict=True)):
        if empty[k]:
            out[i] = _GPKG_EMPTY + w
        elif types[k] == 0:  # points carry no envelope, as GDAL writes them
            out[i] = _GPKG_POINT + w
        else:
            out[i] = _GPKG_ENVELOPE + env[32 * k : 32 * k + 32] + w
    return out


_WKB_POINT = [("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8")]
_POINT_ROWS = {True: np.dtype([("head", "V8"), *_WKB_POINT]), False: np.dtype(_WKB_POINT)}


def point_blobs(backend: Backend, xy: np.ndarray) -> list[bytes]:
    """``(n, 2)`` coordinates → what the backend's insert takes for points, as
    :func:`encode_geometries` makes it from shapely points (GeoPackage blob without
    envelope, or ISO WKB), packed by numpy in one pass."""
    gpkg = backend is Backend.GEOPACKAGE
    rows = np.empty(len(xy), dtype=_POINT_ROWS[gpkg])
    if gpkg:
        rows["head"] = np.void(_GPKG_POINT)
    rows["order"], rows["type"] = 1, 1  # little-endian, Point
    rows["x"], rows["y"] = xy[:, 0], xy[:, 1]
    return rows.view(f"V{rows.itemsize}").tolist()  # type: ignore[no-any-return]


def point_pairs(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``[(x, y), …]`` → an ``(n, 2)`` float array and, per pair, whether it is two finite
    numbers (not bools, not texts numpy would read as numbers); the others are NaN."""
    n = len(values)
    numbers = (float, int)
    ok = np.fromiter((len(p) == 2 and type(p[0]) in numbers and type(p[1]) in numbers
                      for p in values), dtype=bool, count=n)
    xy = np.full((n, 2), np.nan)
    good = np.flatnonzero(ok)
    if len(good):
        xy[good] = np.array(values if len(good) == n else [values[i] for i in good],
                            dtype=np.float64)
    ok &= np.isfinite(xy).all(axis=1)
    return xy, ok


class BulkLoader:
    """Load units into a draft version inside an open write transaction.

    Use: ``add_type``/``add_group`` as needed, ``add_units`` (any iterable, in any
    order: children may come before their parents; it may be called several times),
    ``add_memberships``, then ``finish()`` which checks the whole load, writes it and
    returns :class:`LoadStats`.  Between the loader's creation and ``finish()``, write
    units of this transaction only through the loader (on SQLite it sets the R-tree
    insert triggers and the secondary indexes of ``org_unit`` aside until ``finish``).
    """

    def __init__(
        self,
        reg: Registry,
        conn: Connection,
        version_id: int,
        *,
        batch_size: int = 5000,
        progress: Callable[[int], None] | None = None,
        new_version: bool = False,
        log_details: dict[str, Any] | None = None,
        collect: bool = False,
    ) -> None:
        """``new_version``: the caller created ``version_id`` in this same transaction
        for this load (an import into a new version).  The load is then logged as one
        ``version import`` change-log row (counts, and ``log_details`` such as the file)
        instead of one row per unit, territory and membership: the after-snapshot of
        every unit *is* the row just written (until a later edit, whose own log row keeps
        the value before it), so storing it twice would only double the file — as a
        version copy or a sync push is logged.  Nobody can have seen the version before
        this transaction commits, so nothing that reads the change log (history, sync)
        misses a change.  Refused when the version already holds units.

        ``collect`` (with ``new_version``): a row the load cannot take — a ref or uuid
        used twice, a parent that is not in the load, a cycle of parent refs, a value
        ``finish`` would refuse — does not stop the load; ``finish`` leaves it out with
        every unit below it (never making one a root) and lists it in :attr:`rejected`,
        so the caller can show every problem at once and either roll back or commit the
        rest.  The rows go into the database by the fast load as usual; only when a
        problem was seen (a row refused on its way in, or the staged rows' set-based
        checks failing) does ``finish`` read the load once to find every row concerned
        and delete them set-wise, inside the same transaction (see ``_settle``).  A
        load without problems does no more work than without ``collect``.
        """
        self.reg = reg
        self.backend = reg.backend
        self.conn = conn
        self.version_id = version_id
        self.batch_size = batch_size
        self.progress = progress
        self.stats = LoadStats()
        self._types: dict[str, int] = {
            r.name: r.fid for r in conn.execute(text("SELECT fid, name FROM org_unit_type"))
        }
        self._undescribed: set[int] = set()  # types this load created without a depth
        self._attached: dict[Any, str] = {}  # files of FileRows, by path: schema name
        self._batch: list[UnitRecord] = []
        self._given_uuids = 0
        self._staged = 0
        self._extents: dict[str, tuple[int, float, float]] = {}
        self._existing = int(conn.execute(
            text("SELECT count(*) FROM org_unit WHERE version_id = :v"), {"v": version_id}
        ).scalar_one())
        if new_version and self._existing:
            raise ValueError(f"version {version_id} already holds {self._existing} units: "
                             "new_version=True is for a version created for this load")
        if collect and not new_version:
            raise ValueError("collect=True is for a load into a new version")
        self._collect = collect
        #: rows left out by a ``collect`` load: where, ref, name, message, kind
        #: ("cycle" for a unit on a cycle of parent refs, else "row"), in file order
        self.rejected: list[dict[str, Any]] = []
        #: collect: rows refused before reaching the database (fid, ref, uuid, parent
        #: ref, name, where, message — None for a ref or uuid another row has)
        self._dropped: list[tuple[Any, ...]] = []
        #: collect: refs of rows the caller rejected before the load (ref: where)
        self._lost: dict[str, str] = {}
        #: one change-log row per unit, territory and membership (else one for the load)
        self._log_rows = not new_version
        self._log_details = dict(log_details or {})
        #: the per-row audit triggers stay quiet for the load; ``finish`` writes the same
        #: change-log rows set-wise
        reg.set_audit(conn, False)
        sqlite = self.backend.is_sqlite
        #: SQLite: a unit whose parent is already written goes straight into org_unit
        #: (see ``_write_direct``); PostgreSQL stages every unit (COPY) for ``finish``
        self._direct = sqlite
        self._first_fid: int | None = None
        if sqlite:
            self._next_fid = self._first_fid = self._sqlite_next_fid("org_unit")
            self._next_tfid = self._sqlite_next_fid("org_unit_territory")
        on_commit = "" if sqlite else " ON COMMIT DROP"
        int_, blob = ("INTEGER", "BLOB") if sqlite else ("BIGINT", "BYTEA")
        date, js = ("TEXT", "TEXT") if sqlite else ("DATE", "JSONB")
        for name in _TEMP_TABLES:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE georeg_load (fid {int_} PRIMARY KEY, ref TEXT, parent_ref TEXT, "
            f"src TEXT, uuid TEXT, name TEXT, code TEXT, type_id {int_}, status TEXT, "
            f"opening_date {date}, closed_date {date}, aliases {js}, extra {js}, "
            f"location {blob}, tfid {int_}, territory {blob}){on_commit}"
        )
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE georeg_load_member (group_ref TEXT, unit_ref TEXT){on_commit}"
        )
        cols = ", ".join(_STAGE_COLUMNS)
        self._stage_sql = (
            f"INSERT INTO georeg_load ({cols}) VALUES ({', '.join('?' * len(_STAGE_COLUMNS))})"
        )
        self._stage_copy = f"COPY georeg_load ({cols}) FROM STDIN"
        self._deferred_indexes: list[str] = []
        self._triggers: list[tuple[str, str]] = []
        if sqlite:
            # where each row came from (only rows that say), for messages naming two rows
            conn.exec_driver_sql("CREATE TEMP TABLE georeg_src (fid INTEGER PRIMARY KEY, src TEXT)")
            conn.exec_driver_sql(
                "CREATE TEMP TABLE georeg_lbox (id INTEGER PRIMARY KEY, x REAL, y REAL)")
            conn.exec_driver_sql(
                "CREATE TEMP TABLE georeg_tbox (id INTEGER PRIMARY KEY, minx REAL, "
                "maxx REAL, miny REAL, maxy REAL)")
            # one batch of units whose parent is in place, on its way into org_unit
            conn.exec_driver_sql(
                "CREATE TEMP TABLE georeg_batch (fid INTEGER PRIMARY KEY, location BLOB, "
                "uuid TEXT, ref TEXT, name TEXT, code TEXT, type_id INTEGER, parent_key INTEGER, "
                "path TEXT, depth INTEGER, status TEXT, opening_date TEXT, closed_date TEXT, "
                "aliases TEXT, extra TEXT, tfid INTEGER, territory BLOB)")
            loc = _geom_from(self.backend, "b.location")
            ter = _geom_from(self.backend, "b.territory")
            self._unit_sql = (
                "INSERT INTO org_unit (fid, location, version_id, unit_key, uuid, source_ref, "
                "name, code, type_id, parent_key, path, depth, validation_status, "
                "opening_date, closed_date, aliases, extra_fields) "
                f"SELECT b.fid, {loc}, ?, b.fid, b.uuid, b.ref, b.name, b.code, b.type_id, "
                "b.parent_key, b.path, b.depth, b.status, b.opening_date, b.closed_date, "
                "b.aliases, b.extra FROM georeg_batch b ORDER BY b.fid"
            )
            self._ter_sql = (
                "INSERT INTO org_unit_territory (fid, territory, unit_fid, version_id, name) "
                f"SELECT b.tfid, {ter}, b.fid, ?, b.name FROM georeg_batch b "
                "WHERE b.tfid IS NOT NULL ORDER BY b.tfid"
            )
            join, ctx = audit_sql.context_columns(self.backend)
            cols = audit_sql.LOG_COLUMNS
            self._audit_units_sql = (
                f"INSERT INTO change_log ({cols}) SELECT u.version_id, 'org_unit', 'insert', "
                f"u.uuid, u.unit_key, u.fid, NULL, {audit_sql.unit_json(self.backend, 'u')}, "
                f"{ctx} FROM org_unit u{join} WHERE u.fid BETWEEN ? AND ? ORDER BY u.fid"
            )
            self._audit_ters_sql = (
                f"INSERT INTO change_log ({cols}) SELECT u.version_id, 'territory', 'insert', "
                f"u.uuid, u.unit_key, t.fid, NULL, "
                f"{audit_sql.territory_json(self.backend, 't')}, {ctx} FROM org_unit_territory t "
                f"JOIN org_unit u ON u.fid = t.unit_fid{join} WHERE t.fid BETWEEN ? AND ? "
                "ORDER BY t.fid"
            )
            self._set_aside()

    def _set_aside(self) -> None:
        """SQLite: what ``finish`` puts back, dropped inside this transaction.

        Into an (almost) empty registry the secondary indexes of ``org_unit`` are built
        once at the end — a sort is much cheaper than maintaining them row by row; with
        many units already there, rebuilding would cost more than it saves, so they stay.
        GeoPackage: GDAL's per-row R-tree insert triggers (``ST_IsEmpty``, ``ST_MinX`` …
        on every blob) were the costliest part of the write; ``finish`` fills the R-trees
        set-wise from the staged boxes and re-creates the triggers from their own SQL.
        SpatiaLite likewise: its ``gii_*`` triggers (one ``RTreeAlign`` R-tree insertion
        per row, ~0.9 s of a 3.1 s load of 100k units) and ``tmi_*`` (one update of
        ``geometry_columns_time`` per row; ``finish`` stamps it once).  The boxes are the
        ones ``RTreeAlign`` stores: the geometry's bounds rounded outwards to float32 (as
        SQLite's R-tree rounds them).  Its ``ggi_*`` geometry-type check stays in place.
        Three of our own per-row insert triggers on ``org_unit`` (~20% of the insert) are
        set aside too, their work done once for the load: the published-version guard
        (checked here and before each batch is written), the insert audit (already quiet
        for the load; ``finish`` writes those rows set-wise) and the identity/path fill
        (every row of the load comes with its key, uuid, path and depth).
        DDL is transactional in SQLite and we hold the write lock: no other connection
        ever sees them missing, and an error or a killed process rolls the drop back.
        """
        conn = self.conn
        existing = conn.exec_driver_sql("SELECT count(*) FROM org_unit").scalar_one()
        if existing < DEFER_INDEXES_BELOW:
            for name, sql in conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND "
                "tbl_name = 'org_unit' AND sql IS NOT NULL").all():
                conn.exec_driver_sql(f'DROP INDEX "{name}"')
                self._deferred_indexes.append(sql)
        names = _ROW_TRIGGERS + _RTREE_TRIGGERS.get(self.backend, ())
        self._triggers = [(r[0], r[1]) for r in conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN "
            f"({', '.join(repr(n) for n in names)})")]
        for name, _sql in self._triggers:
            conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
        self._check_draft()

    def _check_draft(self) -> None:
        """What ``org_unit_insert_published`` checks per row, once (see ``_set_aside``)."""
        row = self._driver().execute("SELECT status FROM source_version WHERE fid = ?",
                                     (self.version_id,)).fetchone()
        status = row[0] if row else None
        if status == "published":
            raise PublishedVersionError(PUBLISHED_MSG.split(":", 2)[2].strip())

    def _put_back(self) -> None:
        """SQLite: fill the R-trees from the staged boxes, re-create what was set aside."""
        conn = self.conn
        aside = {name for name, _sql in self._triggers}
        points, areas = _RTREES[self.backend]
        # (no extent known: none staged, or rows were left out since — counted by
        # ``fill_rtree`` then)
        if _RTREE_TRIGGERS[self.backend][0] in aside:
            fill_rtree(self._driver(), points, "SELECT id, x, x, y, y FROM georeg_lbox",
                       self._extents.get("location"))
        if _RTREE_TRIGGERS[self.backend][1] in aside:
            fill_rtree(self._driver(), areas, "SELECT id, minx, maxx, miny, maxy FROM georeg_tbox",
                       self._extents.get("territory"))
        for table, column, rows in (("org_unit", "location", self.stats.units),
                                    ("org_unit_territory", "territory", self.stats.territories)):
            if f"tmi_{table}_{column}" in aside and rows:
                conn.execute(text(
                    "UPDATE geometry_columns_time SET last_insert = "
                    "strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE Lower(f_table_name) = :t "
                    "AND Lower(f_geometry_column) = :c"), {"t": table, "c": column})
        for _name, sql in self._triggers:
            conn.exec_driver_sql(sql)
        for sql in self._deferred_indexes:
            conn.exec_driver_sql(sql)
        self._triggers, self._deferred_indexes = [], []


    # --- types and groups -----------------------------------------------------------

    def add_type(
        self, name: str, depth: int | None = None, short_name: str | None = None
    ) -> int:
        name = name.strip()
        if name in self._types:
            fid = self._types[name]
            if fid in self._undescribed and (depth is not None or short_name is not None):
                # first met on a unit (a reader that learns types while its units stream):
                # its depth and short name arrive now
                self.conn.execute(text("UPDATE org_unit_type SET depth = :d, short_name = :s "
                                       "WHERE fid = :f"), {"d": depth, "s": short_name, "f": fid})
                self._undescribed.discard(fid)
            return fid
        fid = self.conn.execute(
            text(
                "INSERT INTO org_unit_type (name, short_name, depth) VALUES (:n, :s, :d) "
                "RETURNING fid"
            ),
            {"n": name, "s": short_name, "d": depth},
        ).scalar_one()
        self._types[name] = int(fid)
        if depth is None and short_name is None:
            self._undescribed.add(int(fid))
        self.stats.types += 1
        return int(fid)

    def add_group(
        self, source_ref: str | None, name: str, short_name: str | None = None,
        code: str | None = None,
    ) -> int:
        if not (name or "").strip():
            raise InvalidInput(f"Group {source_ref!r}: field 'name' is empty.")
        key = self.conn.execute(
            text(
                "INSERT INTO org_unit_group (version_id, source_ref, name, short_name, code) "
                "VALUES (:v, :r, :n, :s, :c) RETURNING fid"
            ),
            {"v": self.version_id, "r": source_ref, "n": name.strip(), "s": short_name, "c": code},
        ).scalar_one()
        return int(key)  # a new group's key is its fid (set by a trigger)

    def add_group_set(
        self, source_ref: str | None, name: str, group_refs: Iterable[str], *,
        short_name: str | None = None, compulsory: bool = False, belonging: str = "multiple",
    ) -> int:
        """A group set whose groups (by source ref) must already be added."""
        if not (name or "").strip():
            raise InvalidInput(f"Group set {source_ref!r}: field 'name' is empty.")
        fid = self.conn.execute(
            text(
                "INSERT INTO group_set (version_id, source_ref, name, short_name, belonging, "
                "compulsory) VALUES (:v, :r, :n, :s, :b, :c) RETURNING fid"
            ),
            {"v": self.version_id, "r": source_ref, "n": name.strip(), "s": short_name,
             "b": belonging, "c": compulsory},
        ).scalar_one()
        for ref in dict.fromkeys(group_refs):
            added = self.conn.execute(
                text(
                    "INSERT INTO group_set_member (version_id, set_key, group_key) "
                    "SELECT :v, s.set_key, g.group_key FROM group_set s JOIN org_unit_group g "
                    "ON g.version_id = s.version_id AND g.source_ref = :g WHERE s.fid = :f"
                ),
                {"v": self.version_id, "g": ref, "f": fid},
            ).rowcount
            if not added:
                self.stats.warnings.append(
                    f"Group set {name!r}: group {ref!r} is not in this import; left out."
                )
        return int(fid)

    def add_memberships(self, pairs: Iterable[tuple[str, str]]) -> None:
        """(group source_ref, unit source_ref) pairs, resolved in ``finish``."""
        rows = [(g, u) for g, u in pairs]
        if rows:
            self._stage_members(rows)

    # --- units ---------------------------------------------------------------------

    def add_units(self, records: Iterable[UnitRecord | FileRows]) -> None:
        with gc_paused():
            batch, size = self._batch, self.batch_size
            for rec in records:
                if type(rec) is FileRows:
                    self._flush()
                    if not self._copy_rows(rec):
                        self.add_units(self._fallback(rec))
                    batch = self._batch
                    continue
                batch.append(rec)  # type: ignore[arg-type]
                if len(batch) >= size:
                    self._flush()
                    batch = self._batch
            self._flush()

    @staticmethod
    def _fallback(rows: FileRows) -> Iterable[UnitRecord]:
        records = (rows.validated or rows.records)()
        status = rows.validation_status
        if status is None:
            return records
        return (_with_status(rec, status) for rec in records)

    def _copy_rows(self, rows: FileRows) -> bool:
        """GeoPackage registry, direct loads: ``rows`` copied from their file into
        ``org_unit`` with one ``INSERT … SELECT`` (parents joined from the units already
        written, new uuids made by a function the query calls), their R-tree boxes staged
        as any batch's.  False, with nothing changed, when they cannot be: the caller
        then loads ``rows.records`` one by one, which says what is wrong, if anything.
        """
        if not (self._direct and rows.count and self.backend is Backend.GEOPACKAGE):
            return False
        conn = self._driver()
        if rows.path not in self._attached:
            alias = f"georeg_file_{id(self):x}_{len(self._attached)}"
            try:  # detached when the connection goes back to the pool (storage.backends)
                conn.execute(f"ATTACH DATABASE ? AS {alias}", (str(rows.path),))
            except sqlite3.Error:
                return False
            self._attached[rows.path] = alias
        alias = self._attached[rows.path]
        conn.create_function("georeg_new_uuid", 0, _uuid_source().__next__)
        conn.create_function("georeg_not_plain", 0, _not_plain)
        type_id = self._type_id(rows.type_name) if rows.type_name else None
        self._check_draft()
        first, saved = self._next_fid, dict(self._extents)
        status = "s.status" if rows.validation_status is None else ":status"
        numbered = ("ord + :base" if rows.first_ord is not None
                    else ":base + row_number() OVER (ORDER BY ord)")
        params = {"status": rows.validation_status,
                  "base": first - (rows.first_ord if rows.first_ord is not None else 1)}
        cur = conn.cursor()
        cur.execute("SAVEPOINT georeg_copy")
        try:
            # the parents: units this load has written, in a small table of their own
            # (looked up 100k times, the unique index org_unit is filling is slower)
            cur.execute("DROP TABLE IF EXISTS georeg_parents")
            cur.execute("CREATE TEMP TABLE georeg_parents (source_ref TEXT PRIMARY KEY, "
                        "unit_key INTEGER, path TEXT, depth INTEGER) WITHOUT ROWID")
            cur.execute("INSERT INTO georeg_parents SELECT source_ref, unit_key, path, depth "
                        "FROM org_unit WHERE version_id = ? AND fid >= ? AND source_ref IS "
                        "NOT NULL", (self.version_id, self._first_fid or 0))
            cur.execute(
                "INSERT INTO org_unit (fid, location, version_id, unit_key, uuid, source_ref, "
                "name, code, type_id, parent_key, path, depth, validation_status, "
                "opening_date, closed_date) "
                f"SELECT f, s.location, {int(self.version_id)}, f, "
                "COALESCE(s.uuid, georeg_new_uuid()), s.ref, s.name, s.code, "
                f"{'NULL' if type_id is None else int(type_id)}, p.unit_key, "
                "CASE WHEN s.parent_ref IS NULL THEN '/' || f || '/' WHEN p.path IS NOT NULL "
                "THEN p.path || f || '/' ELSE georeg_not_plain() END, "  # (parent not in)
                f"CASE WHEN s.parent_ref IS NULL THEN 1 ELSE p.depth + 1 END, {status}, "
                "s.opening_date, s.closed_date FROM "
                f"(SELECT {numbered} AS f, * FROM "
                f"({rows.select.format(src=alias)})) s LEFT JOIN georeg_parents p ON "
                "p.source_ref = s.parent_ref", params)  # (in file order: f ascending)
            n = cur.rowcount
            last = first + n - 1
            if n != rows.count:
                raise _NotCopied  # a row changed since it was counted
            # the points' R-tree boxes, staged as any batch's — read from the blobs by
            # SpatiaLite (loaded on every registry connection: GDAL's R-tree triggers
            # call it); a blob that is not a plain point (29 bytes, the header and WKB
            # type ``point_blobs`` write) gets no x, which the count below refuses
            cur.execute("INSERT INTO georeg_lbox (id, x, y) SELECT fid, CASE WHEN "
                        "length(location) = 29 AND substr(location, 1, 13) = ? THEN "
                        "ST_MinX(location) END, ST_MinY(location) FROM org_unit WHERE fid "
                        "BETWEEN ? AND ? AND location IS NOT NULL",
                        (PLAIN_POINT_HEAD, first, last))
            boxes, x0, x1, bad = cur.execute(
                "SELECT count(*), min(x), max(x), count(*) FILTER (WHERE NOT (x BETWEEN -180 "
                "AND 180 AND y BETWEEN -90 AND 90) OR x IS NULL OR y IS NULL) FROM georeg_lbox "
                "WHERE id BETWEEN ? AND ?", (first, last)).fetchone()
            if bad:  # (NaN reads as NULL)
                raise _NotCopied
            if boxes:
                self._grow("location", boxes, x0, x1)
            if self._log_rows:
                cur.execute(self._audit_units_sql, (first, last))
        except (_NotCopied, sqlite3.DatabaseError):
            # (a uuid or ref used twice, a row that is not plain, a damaged file: the
            # records way names the row and what is wrong with it)
            cur.execute("ROLLBACK TO georeg_copy")
            cur.execute("RELEASE georeg_copy")
            cur.close()
            self._extents = saved
            return False
        cur.execute("RELEASE georeg_copy")
        cur.close()
        self._next_fid = first + n
        pairs = list(rows.memberships())
        if pairs:
            self._stage_members(pairs)
        self.stats.units += n
        self.stats.copied += n
        self.stats.locations += boxes
        if self.progress:
            self.progress(self.stats.units)
        return True

    def _sqlite_next_fid(self, table: str) -> int:
        return int(self.conn.exec_driver_sql(
            f"SELECT max(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0), "
            f"COALESCE((SELECT max(fid) FROM {table}), 0)) + 1"
        ).scalar_one())

    def _take_fids(self, n: int, table: str) -> list[int]:
        """Row ids for the next ``n`` rows (we hold the write lock: nobody else takes them)."""
        if n == 0:
            return []
        if self.backend.is_sqlite:
            attr = "_next_fid" if table == "org_unit" else "_next_tfid"
            start = getattr(self, attr)
            setattr(self, attr, start + n)
            return list(range(start, start + n))
        rows = self.conn.execute(
            text(f"SELECT nextval('{table}_fid_seq') FROM generate_series(1, :n)"), {"n": n}
        ).scalars()
        return [int(r) for r in rows]

    def _type_id(self, name: str) -> int:
        fid = self._types.get(name)
        if fid is None:
            fid = self._types.get(name.strip()) or self.add_type(name)
            self._types[name] = fid
        return fid

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        n = len(batch)
        fids = self._take_fids(n, "org_unit")
        # geometry first, vectorised for the batch: type check, blobs, R-tree boxes
        loc_blobs, at, xs, ys = self._locations(batch)
        ter_geoms = [None if rec.territory is None else geometry.as_multipolygon(rec.territory)
                     for rec in batch]
        ter_blobs = encode_geometries(self.backend, ter_geoms)
        ter_at = [i for i, t in enumerate(ter_blobs) if t is not None]
        tfids = self._take_fids(len(ter_at), "org_unit_territory")
        tfid_col: list[int | None] = [None] * n
        for i, t in zip(ter_at, tfids, strict=True):
            tfid_col[i] = t
        boxes = (self._boxes(fids, at, xs, ys, ter_geoms, ter_at, tfids)
                 if self.backend.is_sqlite else ([], []))
        rows: list[tuple[Any, ...]] = []
        srcs: list[tuple[int, str]] = []
        members: list[tuple[str, str]] = []
        statuses = VALIDATION_STATUSES
        types = self._types
        dates: dict[Any, str | None] = {}  # this batch's dates, each parsed once
        new_uuids = iter(uuid7_many(sum(1 for rec in batch if rec.uuid is None)))
        dumps = json.dumps
        direct = self._direct
        if direct:  # parents written by earlier batches (see ``_write_direct``)
            refs_here = {rec.source_ref for rec in batch}
            placed = self._placed({p for rec in batch if (p := rec.parent_ref) is not None
                                   and p not in refs_here})
            here: dict[str, tuple[int, str, int]] = {}
        units: list[tuple[Any, ...]] = []  # direct: the batch table's columns
        for rec, fid, loc, tfid, ter in zip(batch, fids, loc_blobs, tfid_col, ter_blobs,
                                            strict=True):
            name = rec.name
            uuid = rec.uuid
            if uuid is None:
                uuid = next(new_uuids)
            try:  # (free in CPython 3.11+ when nothing is raised)
                if rec.problem is not None:  # (see ROW_PROBLEMS)
                    raise InvalidInput(rec.problem)
                if type(name) is str:
                    name = name.strip()
                if not name:
                    raise InvalidInput(f"{_where(rec)}: field 'name' is missing or empty.")
                status = rec.validation_status
                if status not in statuses:
                    raise InvalidInput(
                        f"{_where(rec)}: field 'validation_status' is {status!r}; "
                        f"expected one of {', '.join(statuses)}."
                    )
                od, cd = rec.opening_date, rec.closed_date
                if od is not None:
                    od = dates[od] if od in dates else _date(dates, od, rec, "opening_date")
                if cd is not None:
                    cd = dates[cd] if cd in dates else _date(dates, cd, rec, "closed_date")
                    if od is not None and cd is not None and cd < od:
                        raise _closed_before(rec, od, cd)
            except InvalidInput as error:
                if not self._collect:
                    raise
                self._dropped.append((fid, rec.source_ref, rec.uuid, rec.parent_ref,
                                      str(name or ""), rec.where or None, error.message))
                continue
            if rec.uuid is not None:
                self._given_uuids += 1
            tname = rec.type_name
            type_id = (types.get(tname) or self._type_id(tname)) if tname else None
            src = rec.where or None
            if src is not None:
                srcs.append((fid, src))
            ref, pref = rec.source_ref, rec.parent_ref
            if rec.groups and ref:
                members.extend((g, ref) for g in rec.groups)
            aliases = dumps(rec.aliases, ensure_ascii=False) if rec.aliases else None
            extra = dumps(rec.extra_fields, ensure_ascii=False) if rec.extra_fields else None
            if direct:
                if pref is None:
                    key, path, depth = None, f"/{fid}/", 1
                else:
                    parent = here.get(pref) or placed.get(pref)
                    if parent is not None:
                        key, ppath, pdepth = parent
                        path, depth = f"{ppath}{fid}/", pdepth + 1
                if pref is None or parent is not None:
                    if ref is not None:
                        here[ref] = (fid, path, depth)
                    units.append((fid, loc, uuid, ref, name, rec.code, type_id, key, path,
                                  depth, status, od, cd, aliases, extra, tfid, ter))
                    continue
            rows.append((fid, ref, pref, src, uuid, name, rec.code, type_id, status, od, cd,
                         aliases, extra, loc, tfid, ter))
        if direct:
            self._write_batch(units, rows, srcs, members, boxes)
        else:
            if members:
                self._stage_members(members)
            self._stage(rows)
            self._staged += len(rows)
        self.stats.units += n
        self.stats.locations += sum(1 for b in loc_blobs if b is not None)
        self.stats.territories += len(ter_at)
        if self.progress:
            self.progress(self.stats.units)

    def _write_batch(self, units: list[tuple[Any, ...]], staged: list[tuple[Any, ...]],
                     srcs: list[tuple[int, str]], members: list[tuple[str, str]],
                     boxes: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]) -> None:
        """SQLite: a prepared batch — R-tree boxes, memberships, units (``_write_direct``).

        (Writing it in a second thread while this one prepares the next batch was
        measured: SQLite's per-row ``executemany`` holds the GIL, and the two threads
        cost more CPU than they overlap — slower on the 2-core benchmark machine.)
        """
        cur = self._driver().cursor()
        try:
            if boxes[0]:
                cur.executemany("INSERT INTO georeg_lbox (id, x, y) VALUES (?, ?, ?)", boxes[0])
            if boxes[1]:
                cur.executemany("INSERT INTO georeg_tbox (id, minx, maxx, miny, maxy) "
                                "VALUES (?, ?, ?, ?, ?)", boxes[1])
            if members:
                cur.executemany("INSERT INTO georeg_load_member VALUES (?, ?)", members)
        finally:
            cur.close()
        self._write_direct(units, staged, srcs)

    def _write_direct(self, units: list[tuple[Any, ...]], staged: list[tuple[Any, ...]],
                      srcs: list[tuple[int, str]]) -> None:
        """SQLite: write the batch's units whose parent is already in place.

        Inputs nearly always list parents first.  A unit whose parent was written by an
        earlier batch (``_flush`` finds them with one indexed query per batch on
        ``(version_id, source_ref)``, the unique index ``org_unit`` has anyway) or comes
        earlier in this one gets its final parent key, path and depth in ``_flush`` and
        goes here into ``org_unit``, and its
        territory into ``org_unit_territory``: the batch is handed to SQLite with one
        ``executemany`` into a small temporary table, then one ``INSERT … SELECT`` per
        table (row by row, each insert would be a statement of its own, with its own
        statement journal and trigger set-up: twice the cost).  Only units whose parent
        has not arrived yet are staged for ``finish``'s recursive query.  Memory holds
        this batch only.  The unique indexes refuse a ref or uuid used twice;
        :meth:`_explain` then names both rows.
        """
        self._check_draft()
        cur = self._driver().cursor()
        try:
            if srcs:
                cur.executemany("INSERT INTO georeg_src (fid, src) VALUES (?, ?)", srcs)
            if units:
                cur.executemany(
                    f"INSERT INTO georeg_batch VALUES ({', '.join('?' * 17)})", units)
                try:
                    self._move_batch(cur, units, (units[0][0], units[-1][0]))
                except sqlite3.IntegrityError as error:
                    if not self._collect:
                        raise self._explain(error, units, dict(srcs)) from error
                    self._set_apart(cur, units, dict(srcs), error)
        finally:
            cur.close()
        if staged:
            self._stage(staged)
            self._staged += len(staged)

    def _move_batch(self, cur: sqlite3.Cursor, units: list[tuple[Any, ...]] | None,
                    fids: tuple[int, int]) -> None:
        """The batch table (units ``fids[0]``..``fids[1]``) into ``org_unit`` and
        ``org_unit_territory``, with their audit rows when the load logs rows.
        A unique index's refusal of a unit comes out as ``sqlite3.IntegrityError``."""
        v = (self.version_id,)
        cur.execute(self._unit_sql, v)
        try:
            cur.execute(self._ter_sql, v)
        except sqlite3.IntegrityError as error:
            raise translate_db_error(error) from error
        cur.execute("DELETE FROM georeg_batch")
        if self._log_rows:
            # their audit rows, while the pages are warm (staged units: in ``finish``)
            cur.execute(self._audit_units_sql, fids)
            tfids = [u[15] for u in units or () if u[15] is not None]
            if tfids:
                cur.execute(self._audit_ters_sql, (tfids[0], tfids[-1]))

    def _set_apart(self, cur: sqlite3.Cursor, units: list[tuple[Any, ...]],
                   srcs: dict[int, str | None], error: sqlite3.IntegrityError) -> None:
        """Collect: a batch refused by a unique index (the failed statement wrote
        nothing).  The rows whose ref or uuid another row of the batch, or a unit
        already written, also has are taken out of the batch (``_dropped``: ``finish``
        rejects every row sharing that ref or uuid, and what is below them); the rest
        of the batch goes in.  Only a load with such a row pays for this."""
        seen: dict[tuple[int, Any], int] = {}
        for u in units:
            for col in (3, 2):  # ref, uuid
                if u[col] is not None:
                    seen[(col, u[col])] = seen.get((col, u[col]), 0) + 1
        clash = {key for key, n in seen.items() if n > 1}
        for col, column in ((3, "source_ref"), (2, "uuid")):
            values = [u[col] for u in units if u[col] is not None]
            for i in range(0, len(values), 500):
                part = values[i : i + 500]
                cur.execute(f"SELECT {column} FROM org_unit WHERE version_id = ? AND "
                            f"{column} IN ({', '.join('?' * len(part))})",
                            (self.version_id, *part))
                clash.update((col, r[0]) for r in cur.fetchall())
        out = [u for u in units if (3, u[3]) in clash or (2, u[2]) in clash]
        if not out:
            raise translate_db_error(error) from error
        cur.executemany("DELETE FROM georeg_batch WHERE fid = ?", [(u[0],) for u in out])
        for u in out:  # (the parent ref is not needed: a written row's parent is placed)
            self._dropped.append((u[0], u[3], u[2], None, u[4], srcs.get(u[0]), None))
        gone = {u[0] for u in out}
        kept = [u for u in units if u[0] not in gone]
        if not kept:
            cur.execute("DELETE FROM georeg_batch")
            return
        try:
            self._move_batch(cur, kept, (kept[0][0], kept[-1][0]))
        except sqlite3.IntegrityError as again:
            raise self._explain(again, kept, srcs) from again

    def _placed(self, refs: set[str]) -> dict[str, tuple[int, str, int]]:
        """Units of this load already in ``org_unit``, by ref: (unit key, path, depth)."""
        out: dict[str, tuple[int, str, int]] = {}
        if not refs:
            return out
        wanted = list(refs)
        cur = self._driver().cursor()
        try:
            for i in range(0, len(wanted), 500):
                part = wanted[i : i + 500]
                cur.execute(
                    "SELECT source_ref, unit_key, path, depth FROM org_unit WHERE version_id = ? "
                    f"AND source_ref IN ({', '.join('?' * len(part))}) AND fid >= ?",
                    (self.version_id, *part, self._first_fid))
                for ref, key, path, depth in cur:
                    out[ref] = (key, path, depth)
        finally:
            cur.close()
        return out

    def _explain(self, error: sqlite3.IntegrityError, units: list[tuple[Any, ...]],
                 srcs: dict[int, str | None]) -> GeoregError:
        """The row (and the other row) behind a unique-index refusal, in the user's terms.

        ``units``: the batch refused as a whole (fid, location, uuid, ref, name, …).
        """
        seen: dict[tuple[str, str], tuple[int, str | None, str]] = {}
        for u in units:  # two rows of this batch
            fid, uuid, ref, name = u[0], u[2], u[3], u[4]
            for what, value in (("source ref", ref), ("uuid", uuid)):
                if value is None:
                    continue
                other = seen.setdefault((what, value), (fid, ref, name))
                if other[0] != fid:
                    return self._used_twice(what, value, (fid, srcs.get(fid) or
                                                          f"unit {ref or name!r}"), other,
                                            (other[0], srcs.get(other[0])))
        db = self._driver()
        for u in units:  # a row of this batch and one already in org_unit
            fid, uuid, ref, name = u[0], u[2], u[3], u[4]
            for what, column, value in (("source ref", "source_ref", ref), ("uuid", "uuid", uuid)):
                if value is None:
                    continue
                found = db.execute(
                    f"SELECT fid, source_ref, name FROM org_unit WHERE version_id = ? AND "
                    f"{column} = ?", (self.version_id, value)).fetchone()
                if found is not None:
                    here = srcs.get(fid) or f"unit {ref or name!r}"
                    return self._used_twice(what, value, (fid, here), found)
        return translate_db_error(error)

    def _src_of(self, fid: int, ref: str | None, name: str) -> str:
        row = self._driver().execute("SELECT src FROM georeg_src WHERE fid = ?",
                                     (fid,)).fetchone()
        return row[0] if row else f"unit {ref or name!r}"

    def _used_twice(self, what: str, value: str, this: tuple[int, str],
                    other: tuple[int, str | None, str],
                    known: tuple[int, str | None] | None = None) -> InvalidInput:
        """``this`` (fid, where) clashes with ``other`` (fid, ref, name).

        ``known``: (fid, where) of ``other`` when the caller has it at hand.
        """
        fid, here = this
        ofid, oref, oname = other
        if self._first_fid is not None and ofid >= self._first_fid:  # both in this load
            there = (_who(known[1], oref, oname) if known is not None
                     else self._src_of(ofid, oref, oname))
            first, second = (here, there) if fid < ofid else (there, here)
            own = "ref" if what == "source ref" else "uuid"
            return InvalidInput(f"{second}: {what} {value!r} is used twice (also by {first}); "
                                f"each unit needs its own {own}.")
        if what == "uuid":
            return InvalidInput(f"{here}: uuid {value!r} is already used by {oname!r} in this "
                                "version.")
        return InvalidInput(f"{here}: source ref {value!r} is already used by {oname!r} in this "
                            "version; each unit needs its own ref.")

    def _locations(self, batch: list[UnitRecord]
                   ) -> tuple[list[bytes | None], np.ndarray, np.ndarray, np.ndarray]:
        """The batch's locations: the blobs to write, and where the non-empty points are
        (batch positions, x, y) for the R-tree.

        A batch whose points all come as ``(x, y)`` pairs (what readers of plain
        coordinates hand over) is packed straight into blobs by numpy: no geometry
        object is made per unit.  Otherwise shapely points (pairs among them made into
        points) go through :func:`encode_geometries`.
        """
        locs = [rec.location for rec in batch]
        n = len(locs)
        at = [i for i, loc in enumerate(locs) if loc is not None]
        pairs = [i for i in at if type(locs[i]) is tuple]
        xy, ok = point_pairs([locs[i] for i in pairs])
        if not ok.all():
            i = pairs[int(np.flatnonzero(~ok)[0])]
            raise InvalidInput(f"{_where(batch[i])}: field 'location' must be a point: two "
                               f"finite numbers (x, y), not {locs[i]!r}.")
        if len(pairs) == len(at):
            blobs: list[bytes | None] = [None] * n
            for i, blob in zip(at, point_blobs(self.backend, xy), strict=True):
                blobs[i] = blob
            return blobs, np.asarray(at, dtype=np.int64), xy[:, 0], xy[:, 1]
        arr = np.fromiter(locs, dtype=object, count=n)
        if pairs:
            arr[pairs] = shapely.points(xy)
        present = ~shapely.is_missing(arr)
        bad = np.flatnonzero(present & (shapely.get_type_id(arr) != 0))
        if len(bad):
            rec = batch[int(bad[0])]
            raise InvalidInput(f"{_where(rec)}: field 'location' must be a point, not a "
                               f"{rec.location.geom_type}.")  # type: ignore[union-attr]
        usable = present.copy()
        usable[usable] = ~shapely.is_empty(arr[usable])
        idx = np.flatnonzero(usable)
        return (encode_geometries(self.backend, arr.tolist()), idx,
                shapely.get_x(arr[idx]), shapely.get_y(arr[idx]))

    def _boxes(self, fids: list[int], at: np.ndarray, xs: np.ndarray, ys: np.ndarray,
               territories: list[BaseGeometry | None], ter_at: list[int],
               tfids: list[int]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """SQLite: the R-tree boxes of the batch's points and territories.

        ``finish`` fills the R-trees from them — the same boxes GDAL's per-row R-tree
        trigger computes with ``ST_MinX`` & co. (SpatiaLite's with ``RTreeAlign``), a
        fraction of the cost.  Empty geometries get no entry, as with the triggers.
        PostGIS maintains its spatial index itself.
        """
        points: list[tuple[Any, ...]] = []
        areas: list[tuple[Any, ...]] = []
        if len(at):
            self._extend("location", xs, xs)
            points = list(zip((at + fids[0]).tolist(), xs.tolist(), ys.tolist(), strict=True))
        if ter_at:
            ter = np.empty(len(ter_at), dtype=object)
            ter[:] = [territories[i] for i in ter_at]
            bounds = shapely.bounds(ter)  # NaN for an empty territory
            self._extend("territory", bounds[:, 0], bounds[:, 2])
            areas = [(t, b[0], b[2], b[1], b[3])
                     for t, b in zip(tfids, bounds.tolist(), strict=True) if b[0] == b[0]]
        return points, areas

    def _extend(self, kind: str, mins: np.ndarray, maxs: np.ndarray) -> None:
        """Count and x-range of the R-tree boxes staged so far (for ``fill_rtree``)."""
        present = ~np.isnan(mins)
        count = int(present.sum())
        if count:
            self._grow(kind, count, float(mins[present].min()), float(maxs[present].max()))

    def _grow(self, kind: str, count: int, x0: float, x1: float) -> None:
        n, low, high = self._extents.get(kind, (0, np.inf, -np.inf))
        self._extents[kind] = (n + count, min(low, x0), max(high, x1))

    def _driver(self) -> Any:
        return self.conn.connection.driver_connection  # type: ignore[union-attr]

    def _stage(self, rows: list[tuple[Any, ...]]) -> None:
        """Straight to the driver: sqlite3 executemany, or PostgreSQL COPY."""
        if self.backend.is_sqlite:
            cursor = self._driver().cursor()
            cursor.executemany(self._stage_sql, rows)
            cursor.close()
            return
        with self._driver().cursor() as cur, cur.copy(self._stage_copy) as copy:
            for row in rows:
                copy.write_row(row)

    def _stage_members(self, rows: list[tuple[str, str]]) -> None:
        if self.backend.is_sqlite:
            cursor = self._driver().cursor()
            cursor.executemany("INSERT INTO georeg_load_member VALUES (?, ?)", rows)
            cursor.close()
            return
        with self._driver().cursor() as cur, cur.copy(
            "COPY georeg_load_member (group_ref, unit_ref) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)

    # --- checks, tree, writing, audit ----------------------------------------------

    def lost(self, refs: dict[str, str]) -> None:
        """Collect: refs of rows the caller rejected before they reached the loader
        (ref: where).  ``finish`` rejects the rows below them, and a row with the same
        ref (which of the two is right cannot be told)."""
        self._lost.update(refs)

    def finish(self) -> LoadStats:
        with gc_paused():
            self._flush()
            conn = self.conn
            if self._staged:
                conn.exec_driver_sql("CREATE INDEX georeg_load_ref ON georeg_load (ref)")
                conn.exec_driver_sql("CREATE INDEX georeg_load_parent ON georeg_load (parent_ref)")
            if self._collect and (self._dropped or self._lost):
                self._settle()
            if self._staged:
                try:
                    self._check_refs()
                    self._build_tree()
                except (InvalidInput, CycleError):
                    if not self._collect:
                        raise
                    conn.exec_driver_sql("DROP TABLE IF EXISTS georeg_tree")
                    self._settle()
                    if self._staged:
                        self._check_refs()
                        self._build_tree()
            if self._staged:
                if self._direct:
                    self._check_draft()
                self._write_staged()
            if self.rejected:
                self._recount()
            if self._direct:
                self._put_back()
            self._write_memberships()
            self._write_audit()
            self.reg.set_audit(conn, True)
            for name in _TEMP_TABLES:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        return self.stats

    def _settle(self) -> None:
        """Collect: find every row the load cannot take, and take it out with every
        unit below it — only when a problem was seen (a row refused on its way in, a
        row the caller rejected, or the staged units' checks failing).

        The whole load is read once (the units already written: fid, ref, uuid, parent
        key; the staged ones: fid, ref, uuid, parent ref; the refused ones), which is
        cheap next to the load and keeps the rules in one readable place: a ref or uuid
        used by several rows rejects all of them (which one is right cannot be told); a
        parent ref naming no row of the load rejects the row; the rows on a cycle of
        parent refs are rejected; and every row below a rejected one is rejected too,
        as its place in the tree is unknown (making it a root would be a silent guess).
        The rejected rows are then deleted set-wise (units written, their territories,
        staged rows, R-tree boxes) inside the transaction."""
        conn = self.conn
        rows: dict[int, list[Any]] = {}  # fid -> [ref, uuid, parent ref, name, where, parent fid]
        if self._direct:
            for fid, ref, uuid, pkey, name, src in conn.execute(text(
                    "SELECT u.fid, u.source_ref, u.uuid, u.parent_key, u.name, s.src FROM "
                    f"org_unit u LEFT JOIN georeg_src s ON s.fid = u.fid WHERE {self._ours('u')}"),
                    {"v": self.version_id}):
                rows[fid] = [ref, uuid, None, name, _who(src, ref, name), pkey]
        staged: set[int] = set()
        for fid, ref, uuid, pref, name, src in conn.execute(text(
                "SELECT fid, ref, uuid, parent_ref, name, src FROM georeg_load")):
            rows[fid] = [ref, uuid, pref, name, _who(src, ref, name), None]
            staged.add(fid)
        why: dict[int, tuple[str, str]] = {}  # rejected fid -> (message, kind)
        for fid, ref, uuid, pref, name, src, message in self._dropped:
            rows[fid] = [ref, uuid, pref, name, _who(src, ref, name), None]
            if message is not None:
                why[fid] = (message, "row")
        # a ref or uuid used twice (rows the caller rejected count for refs)
        for col, what, own in ((0, "source ref", "ref"), (1, "uuid", "uuid")):
            uses: dict[Any, list[int]] = {}
            for fid, row in rows.items():
                if row[col] is not None:
                    uses.setdefault(row[col], []).append(fid)
            lost = self._lost if col == 0 else {}
            for value, fids in uses.items():
                n = len(fids) + (value in lost)
                if n < 2:
                    continue
                wheres = [rows[f][4] for f in sorted(fids)] + (
                    [f"{lost[value]}, rejected"] if value in lost else [])
                times = "twice" if n == 2 else f"{n} times"
                for f in fids:
                    if f in why:
                        continue
                    others = ", ".join(w for w in wheres if w != rows[f][4])
                    why[f] = (f"{rows[f][4]}: {what} {value!r} is used {times} (also by "
                              f"{others}); none of these rows is imported, as which one is "
                              f"right cannot be told (each unit needs its own {own}).", "row")
        by_ref: dict[str, list[int]] = {}
        for fid, row in rows.items():
            if row[0] is not None:
                by_ref.setdefault(row[0], []).append(fid)
        children: dict[int, list[int]] = {}  # parent fid -> fids below it
        lost_below: dict[str, list[int]] = {}  # a ref the caller rejected -> rows below
        for fid, row in rows.items():
            pref, pkey = row[2], row[5]
            if pkey is not None:
                children.setdefault(pkey, []).append(fid)
            elif pref is not None:
                if pref in by_ref:
                    for p in by_ref[pref]:
                        children.setdefault(p, []).append(fid)
                elif pref in self._lost:
                    lost_below.setdefault(pref, []).append(fid)
                elif fid not in why:
                    why[fid] = (f"{row[4]}: parent {pref!r} not found; every parent ref must "
                                "name a unit of the same import.", "row")
        # below a rejected row: rejected too, and so on down
        todo: list[tuple[int, str, str]] = []  # (row, its parent's ref, where the parent is)
        for ref, fids in lost_below.items():
            todo.extend((f, ref, f"{self._lost[ref]} was rejected") for f in fids)

        def below(fid: int) -> None:
            ref = rows[fid][0] or rows[fid][3]
            todo.extend((c, ref, f"{rows[fid][4]} was rejected") for c in children.get(fid, ()))

        for fid in list(why):
            below(fid)

        def drain() -> None:
            while todo:
                fid, pref, there = todo.pop()
                if fid in why:
                    continue
                why[fid] = (f"{rows[fid][4]}: its parent {pref!r} is not imported ({there}), "
                            "so neither is this row.", "row")
                below(fid)

        drain()
        # cycles: staged rows that no chain of parents links to a root
        placed = {f for f, row in rows.items() if f not in why and f not in staged}
        for fid in staged:
            if fid in why or fid in placed:
                continue
            chain_: list[int] = []
            on_chain: set[int] = set()
            at: int | None = fid
            while at is not None and at not in placed and at not in why and at not in on_chain:
                chain_.append(at)
                on_chain.add(at)
                pref = rows[at][2]
                at = by_ref[pref][0] if pref is not None else None
            if at is None or at in placed:
                placed.update(chain_)
            elif at in on_chain:  # ``at`` starts a cycle: chain_[index(at):]
                loop = chain_[chain_.index(at):]
                for f in loop:
                    p = rows[f][2]
                    why[f] = (f"{rows[f][4]}: the parent refs form a cycle through "
                              f"{rows[f][0]!r} (parent {p!r}): these units would be their "
                              "own ancestors.", "cycle")
                for f in loop:
                    below(f)
                drain()
            # (else ``at`` was rejected: its rows were rejected by ``drain`` already)
        for fid in sorted(why):
            row = rows[fid]
            message, kind = why[fid]
            self.rejected.append({"where": row[4], "ref": row[0], "name": row[3],
                                  "message": message, "kind": kind})
        self._remove(sorted(why), staged)
        self._dropped, self._lost = [], {}

    def _remove(self, fids: list[int], staged: set[int]) -> None:
        """Delete the rejected rows (``fids``) from the load, set-wise."""
        conn = self.conn
        conn.exec_driver_sql("DROP TABLE IF EXISTS georeg_reject")
        conn.exec_driver_sql("CREATE TEMP TABLE georeg_reject (fid BIGINT PRIMARY KEY)"
                             + ("" if self.backend.is_sqlite else " ON COMMIT DROP"))
        if fids:
            conn.execute(text("INSERT INTO georeg_reject (fid) VALUES (:f)"),
                         [{"f": f} for f in fids])
        gone = "SELECT fid FROM georeg_reject"
        if self._direct:
            # the deferred indexes first: each deleted unit has the foreign keys of its
            # children checked, a scan of the whole table without ``org_unit_parent_idx``
            # (~0.2 s a row at 100k units); they are built once here instead of in
            # ``_put_back`` — the same work, done earlier
            for sql in self._deferred_indexes:
                conn.exec_driver_sql(sql)
            self._deferred_indexes = []
            conn.exec_driver_sql(f"DELETE FROM org_unit_territory WHERE unit_fid IN ({gone})")
            conn.exec_driver_sql(f"DELETE FROM org_unit WHERE fid IN ({gone})")
        taken = sum(1 for f in fids if f in staged)
        if taken:
            conn.exec_driver_sql(f"DELETE FROM georeg_load WHERE fid IN ({gone})")
            self._staged -= taken
        if self.backend.is_sqlite:  # R-tree boxes of rows no longer in the load
            conn.exec_driver_sql(
                "DELETE FROM georeg_lbox WHERE id NOT IN (SELECT fid FROM georeg_load) AND "
                "id NOT IN (SELECT fid FROM org_unit WHERE fid >= "
                f"{int(self._first_fid or 0)})")
            conn.exec_driver_sql(
                "DELETE FROM georeg_tbox WHERE id NOT IN (SELECT tfid FROM georeg_load WHERE "
                "tfid IS NOT NULL) AND id NOT IN (SELECT fid FROM org_unit_territory)")
            self._extents = {}  # (recounted by ``fill_rtree``)
        conn.exec_driver_sql("DROP TABLE georeg_reject")

    def _recount(self) -> None:
        """After rows were left out: the load's counts, from what it wrote."""
        units, locations = self.conn.execute(text(
            "SELECT count(*), count(location) FROM org_unit WHERE version_id = :v"),
            {"v": self.version_id}).one()
        self.stats.units, self.stats.locations = int(units), int(locations)
        self.stats.territories = int(self.conn.execute(text(
            "SELECT count(*) FROM org_unit_territory WHERE version_id = :v"),
            {"v": self.version_id}).scalar_one())
        self.stats.copied = min(self.stats.copied, self.stats.units)

    def _ours(self, alias: str) -> str:
        """SQL: the ``org_unit`` row (``alias``) was written by this load (SQLite only)."""
        return f"{alias}.version_id = :v AND {alias}.fid >= {int(self._first_fid or 0)}"

    def _check_refs(self) -> None:
        """Staged units: duplicate refs or uuids, refs already in the version, unknown parents.

        On SQLite the units written directly are in ``org_unit`` already (their own
        duplicates were refused as they were written); the staged ones are checked
        against each other and against ``org_unit``.
        """
        conn, v = self.conn, {"v": self.version_id}
        for what, column, wanted in (("source ref", "ref", True),
                                     ("uuid", "uuid", bool(self._given_uuids))):
            if not wanted:
                continue
            dup = conn.execute(text(
                f"SELECT {column} FROM georeg_load WHERE {column} IS NOT NULL GROUP BY {column} "
                "HAVING count(*) > 1 ORDER BY min(fid) LIMIT 1")).first()
            if dup:
                first, second = (_who(*r) for r in conn.execute(text(
                    f"SELECT src, ref, name FROM georeg_load WHERE {column} = :x "
                    "ORDER BY fid LIMIT 2"), {"x": dup[0]}).all())
                own = "ref" if what == "source ref" else "uuid"
                raise InvalidInput(f"{second}: {what} {dup[0]!r} is used twice (also by "
                                   f"{first}); each unit needs its own {own}.")
            if self._existing or self._direct:
                unit_col = "source_ref" if column == "ref" else "uuid"
                clash = conn.execute(text(
                    f"SELECT s.fid, s.src, s.ref, s.name, s.{column}, u.fid, u.source_ref, "
                    f"u.name FROM georeg_load s JOIN org_unit u ON u.version_id = :v AND "
                    f"u.{unit_col} = s.{column} ORDER BY s.fid LIMIT 1"), v).first()
                if clash:
                    raise self._used_twice(what, clash[4], (clash[0], _who(*clash[1:4])),
                                           (clash[5], clash[6], clash[7]))
        placed = (f" AND NOT EXISTS (SELECT 1 FROM org_unit p WHERE {self._ours('p')} "
                  "AND p.source_ref = s.parent_ref)") if self._direct else ""
        orphans = conn.execute(
            text(
                "SELECT s.src, s.ref, s.name, s.parent_ref FROM georeg_load s "
                "WHERE s.parent_ref IS NOT NULL AND NOT EXISTS "
                f"(SELECT 1 FROM georeg_load p WHERE p.ref = s.parent_ref){placed} "
                "ORDER BY s.fid LIMIT 5"
            ), v
        ).all()
        if orphans:
            lines = "; ".join(f"{_who(*o[:3])}: parent {o[3]!r} not found" for o in orphans)
            raise InvalidInput(
                f"Unknown parent: {lines}. Every parent ref must name a unit of the same import."
            )

    def _build_tree(self) -> None:
        """Parent key, path and depth of every staged unit: one recursive query.

        It starts from the staged roots and, on SQLite, from the staged units whose
        parent this load has already written.  The tree table is filled in the query's
        breadth-first order (``ord``), so units written in that order always come after
        their parent.
        """
        conn = self.conn
        cast = "CAST(c.fid AS TEXT)"
        if self.backend.is_sqlite:
            conn.exec_driver_sql(
                "CREATE TEMP TABLE georeg_tree (ord INTEGER PRIMARY KEY, fid INTEGER, "
                "parent_key INTEGER, path TEXT, depth INTEGER)")
        else:
            conn.exec_driver_sql(
                "CREATE TEMP TABLE georeg_tree (ord BIGSERIAL PRIMARY KEY, fid BIGINT, "
                "parent_key BIGINT, path TEXT, depth BIGINT) ON COMMIT DROP")
        below_placed = (
            "  UNION ALL"
            f"  SELECT c.fid, c.ref, p.unit_key, p.path || {cast} || '/', p.depth + 1"
            f"  FROM georeg_load c JOIN org_unit p ON {self._ours('p')} "
            "AND p.source_ref = c.parent_ref"
        ) if self._direct else ""
        placed = conn.execute(text(
            "INSERT INTO georeg_tree (fid, parent_key, path, depth) "
            "WITH RECURSIVE t(fid, ref, parent_key, path, depth) AS ("
            "  SELECT c.fid, c.ref, CAST(NULL AS BIGINT), "
            f"        '/' || {cast} || '/', 1 FROM georeg_load c WHERE c.parent_ref IS NULL"
            f"{below_placed}"
            "  UNION ALL"
            f"  SELECT c.fid, c.ref, t.fid, t.path || {cast} || '/', t.depth + 1"
            "  FROM georeg_load c JOIN t ON c.parent_ref = t.ref"
            ") SELECT fid, parent_key, path, depth FROM t"
        ), {"v": self.version_id}).rowcount
        if placed != self._staged:
            stuck = conn.execute(
                text(
                    "SELECT src, ref, name, parent_ref FROM georeg_load WHERE fid NOT IN "
                    "(SELECT fid FROM georeg_tree) ORDER BY ref LIMIT 5"
                )
            ).all()
            lines = "; ".join(f"{_who(*s[:3])} ({s[1]!r} → parent {s[3]!r})" for s in stuck)
            raise CycleError(
                f"{self._staged - placed} units are their own ancestors (a cycle in the "
                f"parent refs): {lines}."
            )

    def _write_staged(self) -> None:
        """Staged units, then their territories: one ``INSERT … SELECT`` each.

        Units go in the tree's breadth-first order — parents before children, so the
        deferred foreign key on ``parent_key`` never counts a pending violation — with
        their final paths (no ``UPDATE``).
        """
        conn, b = self.conn, self.backend
        loc = _geom_from(b, "s.location")
        ter = _geom_from(b, "s.territory")
        try:
            conn.execute(
                text(
                    "INSERT INTO org_unit (fid, location, version_id, unit_key, uuid, source_ref, "
                    "name, code, type_id, parent_key, path, depth, validation_status, "
                    "opening_date, closed_date, aliases, extra_fields) "
                    f"SELECT s.fid, {loc}, :v, s.fid, s.uuid, s.ref, s.name, s.code, s.type_id, "
                    "t.parent_key, t.path, t.depth, s.status, s.opening_date, s.closed_date, "
                    "s.aliases, s.extra FROM georeg_tree t JOIN georeg_load s ON s.fid = t.fid "
                    "ORDER BY t.ord"
                ),
                {"v": self.version_id},
            )
            conn.execute(
                text(
                    "INSERT INTO org_unit_territory (fid, territory, unit_fid, version_id, "
                    f"name) SELECT s.tfid, {ter}, s.fid, :v, s.name FROM georeg_load s "
                    "WHERE s.tfid IS NOT NULL ORDER BY s.fid"
                ),
                {"v": self.version_id},
            )
        except (exc.IntegrityError, sqlite3.IntegrityError) as error:
            raise translate_db_error(error) from error

    def _write_memberships(self) -> None:
        conn, v = self.conn, {"v": self.version_id}
        self.stats.memberships = conn.execute(
            text(
                "INSERT INTO group_membership (version_id, group_key, unit_key) "
                "SELECT DISTINCT :v, g.group_key, u.unit_key FROM georeg_load_member m "
                "JOIN org_unit_group g ON g.version_id = :v AND g.source_ref = m.group_ref "
                "JOIN org_unit u ON u.version_id = :v AND u.source_ref = m.unit_ref"
            ),
            v,
        ).rowcount
        requested = conn.execute(text("SELECT count(*) FROM georeg_load_member")).scalar_one()
        if requested > self.stats.memberships:
            self.stats.warnings.append(
                f"{requested - self.stats.memberships} group memberships name a group or unit "
                "that is not in this import; they were left out."
            )
        self.stats.groups = conn.execute(
            text("SELECT count(*) FROM org_unit_group WHERE version_id = :v"), v
        ).scalar_one()

    def _write_audit(self) -> None:
        """The same change-log rows the per-row triggers would have written, set-wise
        (or, for a new version, the one ``version import`` row: see ``__init__``)."""
        if not self._log_rows:
            stats = self.stats.to_dict()
            del stats["warnings"]
            log_version(self.conn, self.version_id, "import", stats | self._log_details)
            return
        b = self.backend
        join, ctx = audit_sql.context_columns(b)
        cols = audit_sql.LOG_COLUMNS
        v = {"v": self.version_id}
        # staged units (on SQLite, the others got theirs batch by batch)
        units = f"georeg_load s JOIN org_unit u ON u.fid = s.fid{join} ORDER BY s.fid"
        ters = ("georeg_load s JOIN org_unit u ON u.fid = s.fid "
                f"JOIN org_unit_territory t ON t.fid = s.tfid{join} "
                "WHERE s.tfid IS NOT NULL ORDER BY s.tfid")
        if self._direct:
            ours = f" AND u.fid >= {int(self._first_fid or 0)}"
        else:
            ours = " AND EXISTS (SELECT 1 FROM georeg_load s WHERE s.fid = u.fid)"
        if self._staged:
            self.conn.execute(
                text(
                    f"INSERT INTO change_log ({cols}) SELECT u.version_id, 'org_unit', 'insert', "
                    f"u.uuid, u.unit_key, u.fid, NULL, {audit_sql.unit_json(b, 'u')}, {ctx} "
                    f"FROM {units}"
                ), v
            )
        if self._staged and self.stats.territories:
            self.conn.execute(
                text(
                    f"INSERT INTO change_log ({cols}) SELECT u.version_id, 'territory', "
                    f"'insert', u.uuid, u.unit_key, t.fid, NULL, "
                    f"{audit_sql.territory_json(b, 't')}, {ctx} FROM {ters}"
                ), v
            )
        if self.stats.memberships:
            fn = "jsonb_build_object" if b is Backend.POSTGIS else "json_object"
            self.conn.execute(
                text(
                    f"INSERT INTO change_log ({cols}) SELECT m.version_id, 'group_membership', "
                    f"'insert', u.uuid, u.unit_key, m.fid, NULL, "
                    f"{fn}('group_key', m.group_key, 'group', g.name), {ctx} "
                    "FROM group_membership m JOIN org_unit u ON u.version_id = m.version_id "
                    f"AND u.unit_key = m.unit_key{ours} "
                    "JOIN org_unit_group g ON g.version_id = m.version_id "
                    f"AND g.group_key = m.group_key{join} WHERE m.version_id = :v ORDER BY m.fid"
                ),
                v,
            )


def _where(rec: UnitRecord) -> str:
    """Where a record came from, for messages (built only when a message needs it)."""
    return rec.where or f"unit {rec.source_ref or rec.name!r}"


def _date(known: dict[Any, str | None], value: Any, rec: UnitRecord, name: str) -> str | None:
    """:func:`parse_date`, remembered in ``known``; the message built only on an error."""
    try:
        known[value] = out = parse_date(value, "")
    except InvalidInput:
        raise InvalidInput(f"{_where(rec)}: field '{name}': {value!r} is not a date "
                           "(expected YYYY-MM-DD).") from None
    return out


def _closed_before(rec: UnitRecord, opening: str, closed: str) -> InvalidInput:
    """The error for a unit closed before it opened (``unit edit`` refuses it too)."""
    return InvalidInput(f"{_where(rec)}: field 'closed_date': {closed} is before opening_date "
                        f"{opening}.")


def _who(src: str | None, ref: str | None, name: str | None) -> str:
    """A staged row's ``where`` (or its default, as :func:`_where` builds it)."""
    return src or f"unit {ref or name!r}"


def _geom_from(backend: Backend, column: str) -> str:
    """SQL turning a staged column (as :func:`encode_geometries` made it) into a geometry."""
    if backend is Backend.GEOPACKAGE:
        return column
    fn = "GeomFromWKB" if backend is Backend.SPATIALITE else "ST_GeomFromWKB"
    return f"{fn}({column}, {geometry.SRID})"


# --- R-tree bulk loading ----------------------------------------------------------------

_RTREE_CELL = np.dtype([("id", ">i8"), ("minx", ">f4"), ("maxx", ">f4"), ("miny", ">f4"),
                        ("maxy", ">f4")])
_RND_TOWARDS = 1.0 - 1.0 / 8388608.0
_RND_AWAY = 1.0 + 1.0 / 8388608.0


def _f32_down(d: np.ndarray) -> np.ndarray:
    """SQLite's ``rtreeValueDown``: the float32 at or below each double."""
    f = d.astype(np.float32)
    over = f.astype(np.float64) > d
    if over.any():
        f[over] = (d[over] * np.where(d[over] < 0, _RND_AWAY, _RND_TOWARDS)).astype(np.float32)
    return f


def _f32_up(d: np.ndarray) -> np.ndarray:
    """SQLite's ``rtreeValueUp``: the float32 at or above each double."""
    f = d.astype(np.float32)
    under = f.astype(np.float64) < d
    if under.any():
        f[under] = (d[under] * np.where(d[under] < 0, _RND_TOWARDS, _RND_AWAY)).astype(np.float32)
    return f


def _cells(rows: list[tuple[Any, ...]]) -> np.ndarray:
    data = np.array(rows, dtype=np.float64)
    cells = np.empty(len(rows), dtype=_RTREE_CELL)
    cells["id"] = data[:, 0].astype(np.int64)
    cells["minx"], cells["maxx"] = _f32_down(data[:, 1]), _f32_up(data[:, 2])
    cells["miny"], cells["maxy"] = _f32_down(data[:, 3]), _f32_up(data[:, 4])
    return cells


def _node(depth: int, cells: np.ndarray, size: int) -> bytes:
    return (struct.pack(">HH", depth, len(cells)) + cells.tobytes()).ljust(size, b"\0")


def _box(no: int, cells: np.ndarray) -> tuple[int, float, float, float, float]:
    return (no, cells["minx"].min(), cells["maxx"].max(), cells["miny"].min(),
            cells["maxy"].max())


#: a non-empty R-tree takes fewer boxes than this by plain ``INSERT … SELECT``
GRAFT_FROM = 2000


def fill_rtree(db: sqlite3.Connection, rtree: str, query: str,
               extent: tuple[int, float, float] | None = None) -> int:
    """Insert the boxes ``query`` yields (id, minx, maxx, miny, maxy) into an R-tree.

    The boxes are bulk-loaded, as GDAL does for a new layer: packed bottom-up
    (sort-tile-recursive: slices by x, leaves by y, full nodes) and the nodes written
    straight into the R-tree's own tables, in SQLite's node format — instead of one
    R-tree insertion, with its node splits, per box (~7 µs a box into a tree of 10⁵).
    SQLite sorts the boxes (spilling to disk if it must) by vertical slice of equal
    width, then by y; the leaves are packed and written as the sorted rows stream, so
    memory holds one chunk of boxes plus one box per leaf (1/50 of them).

    Into an empty R-tree the packed tree becomes the whole tree.  Into a non-empty one
    (a second import, a copied version) the packed subtree is grafted under the root
    (see :func:`_graft`); fewer than ``GRAFT_FROM`` boxes get one ``INSERT … SELECT``.
    Either way the result is an ordinary SQLite R-tree (``rtreecheck`` passes) that
    SQLite then maintains row by row as usual.

    ``extent``: (count, min x, max x) of the boxes when the caller knows them.
    """
    cur = db.cursor()
    try:
        empty = cur.execute(f'SELECT 1 FROM "{rtree}_rowid" LIMIT 1').fetchone() is None
        if extent is None:
            row = cur.execute(f"WITH b(id, minx, maxx, miny, maxy) AS ({query}) "
                              "SELECT count(*), min(minx), max(maxx) FROM b").fetchone()
            extent = (int(row[0]), row[1], row[2])
        n = extent[0]
        if n == 0:
            return 0
        if not empty and n < GRAFT_FROM:
            cur.execute(f'INSERT INTO "{rtree}" {query}')
            return cur.rowcount
        node_size = int(cur.execute(
            f'SELECT length(data) FROM "{rtree}_node" WHERE nodeno = 1').fetchone()[0])
        first = 2 if empty else int(cur.execute(
            f'SELECT max(nodeno) FROM "{rtree}_node"').fetchone()[0]) + 1
        packed = _Packer(db, cur, rtree, node_size, first)
        level, height = packed.pack(query, extent)
        if empty:
            _write_root(cur, rtree, _node(height, level, node_size))
            packed.link(level, 1, height)
        else:
            _graft(packed, level, height)
        return n
    finally:
        cur.close()


class _Packer:
    """Writes packed nodes into an R-tree's shadow tables, numbering them from ``first``."""

    def __init__(self, db: sqlite3.Connection, cur: sqlite3.Cursor, rtree: str,
                 node_size: int, first: int) -> None:
        self.db, self.cur, self.rtree = db, cur, rtree
        self.node_size = node_size
        self.fanout = (node_size - 4) // _RTREE_CELL.itemsize
        self.next_no = first

    def write(self, groups: list[np.ndarray], height: int) -> np.ndarray:
        """New nodes of ``height`` holding ``groups``; returns one cell (box) per node."""
        numbers = range(self.next_no, self.next_no + len(groups))
        self.next_no += len(groups)
        self.cur.executemany(
            f'INSERT INTO "{self.rtree}_node" (nodeno, data) VALUES (?, ?)',
            ((no, _node(0, g, self.node_size)) for no, g in zip(numbers, groups, strict=True)))
        ids = np.concatenate([g["id"] for g in groups]).astype(np.int64)
        holders = np.repeat(np.arange(numbers.start, numbers.stop), [len(g) for g in groups])
        self._links(ids.tolist(), holders.tolist(), height)
        return np.array([_box(no, g) for no, g in zip(numbers, groups, strict=True)],
                        dtype=_RTREE_CELL)

    def link(self, cells: np.ndarray, holder: int, height: int) -> None:
        """Point the entries in ``cells`` at the node ``holder`` (of ``height``) holding them."""
        self._links(cells["id"].astype(np.int64).tolist(), [holder] * len(cells), height)

    def _links(self, ids: list[int], holders: list[int], height: int) -> None:
        """Leaf entries (``height`` 0) → %_rowid, child nodes → %_parent."""
        table, column = ("rowid", "rowid") if height == 0 else ("parent", "nodeno")
        column2 = "nodeno" if height == 0 else "parentnode"
        self.cur.executemany(
            f'INSERT INTO "{self.rtree}_{table}" ({column}, {column2}) VALUES (?, ?)',
            zip(ids, holders, strict=True))

    def pack(self, query: str, extent: tuple[int, float, float]) -> tuple[np.ndarray, int]:
        """Leaves and inner nodes for the boxes of ``query``, all but the top node.

        Returns the top node's cells (at most ``fanout``) and its height (0: the boxes
        themselves fit in one node).
        """
        n, x0, x1 = extent
        fanout = self.fanout
        if n <= fanout:
            return _cells(self.cur.execute(query).fetchall()), 0
        slices = max(1, int(np.ceil(np.sqrt(-(-n // fanout)))))
        scale = slices / (2 * (x1 - x0)) if x1 > x0 else 0.0
        reader = self.db.cursor()
        reader.execute(
            f"WITH b(id, minx, maxx, miny, maxy) AS ({query}) SELECT id, minx, maxx, miny, "
            f"maxy FROM b ORDER BY CAST((minx + maxx - {2 * x0!r}) * {scale!r} AS INTEGER), "
            "miny + maxy")
        boxes: list[np.ndarray] = []
        while True:
            rows = reader.fetchmany(fanout * 200)  # whole leaves
            if not rows:
                break
            cells = _cells(rows)
            boxes.append(self.write([cells[i : i + fanout] for i in range(0, len(cells), fanout)],
                                    0))
        reader.close()
        level = _cat(boxes)
        height = 1
        while len(level) > fanout:  # inner levels, in memory: one box per node below
            level = self.write(_str_pack(level, fanout), height)
            height += 1
        return level, height


def _graft(packed: _Packer, level: np.ndarray, height: int) -> None:
    """Hang packed cells (``level``, for a node of ``height``) under a non-empty root.

    Every leaf of an R-tree sits at the root's depth D.  Cells for a node lower than D
    are lifted by one-cell nodes; then they join the root's cells if they fit there, and
    otherwise the old root moves to a new node and a new root, one level up, holds both
    halves.  Copies of a version thus become one subtree each under the root, the tree
    growing by one level only when the root is full.
    """
    cur, rtree = packed.cur, packed.rtree
    data = cur.execute(f'SELECT data FROM "{rtree}_node" WHERE nodeno = 1').fetchone()[0]
    depth, count = struct.unpack(">HH", data[:4])
    root = np.frombuffer(data[4 : 4 + count * _RTREE_CELL.itemsize], dtype=_RTREE_CELL)
    while height < depth:
        level, height = packed.write([level], height), height + 1
    if height == depth and count + len(level) <= packed.fanout:
        _write_root(cur, rtree, _node(depth, _cat([root, level]), packed.node_size))
        packed.link(level, 1, depth)
        return
    # a new root: the old one moves to a new node; both halves lifted to the same height
    moved = packed.next_no
    packed.next_no += 1
    cur.execute(f'INSERT INTO "{rtree}_node" (nodeno, data) VALUES (?, ?)',
                (moved, _node(0, root, packed.node_size)))
    table, column = ("rowid", "nodeno") if depth == 0 else ("parent", "parentnode")
    cur.execute(f'UPDATE "{rtree}_{table}" SET {column} = ? WHERE {column} = 1', (moved,))
    old = np.array([_box(moved, root)], dtype=_RTREE_CELL)
    new = packed.write([level], height)
    top = max(depth, height) + 1
    for h in range(depth + 1, top):
        old = packed.write([old], h)
    for h in range(height + 1, top):
        new = packed.write([new], h)
    both = _cat([old, new])
    _write_root(cur, rtree, _node(top, both, packed.node_size))
    packed.link(both, 1, top)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    """Cells joined, kept big-endian (``np.concatenate`` may give native byte order)."""
    return np.concatenate(parts).astype(_RTREE_CELL, copy=False)


def _write_root(cur: sqlite3.Cursor, rtree: str, data: bytes) -> None:
    cur.execute(f'UPDATE "{rtree}_node" SET data = ? WHERE nodeno = 1', (data,))


def _str_pack(cells: np.ndarray, fanout: int) -> list[np.ndarray]:
    """Sort-tile-recursive packing: full nodes of nearby boxes."""
    n = len(cells)
    leaves = -(-n // fanout)
    slices = max(1, int(np.ceil(np.sqrt(leaves))))
    per_slice = slices * fanout
    cx = (cells["minx"].astype(np.float64) + cells["maxx"]) / 2
    cy = (cells["miny"].astype(np.float64) + cells["maxy"]) / 2
    by_x = np.argsort(cx, kind="stable")
    groups: list[np.ndarray] = []
    for start in range(0, n, per_slice):
        part = by_x[start : start + per_slice]
        part = part[np.argsort(cy[part], kind="stable")]
        groups.extend(cells[part[i : i + fanout]] for i in range(0, len(part), fanout))
    return groups
