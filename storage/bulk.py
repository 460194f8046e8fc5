"""Set-based loading of many units into one draft version, for every importer.

Incoming records are checked and encoded in batches (nothing but the current
batch is held in Python) and *staged*, every column of them, in a temporary
table.  ``finish`` then checks the whole load at once (duplicate refs, unknown
parents, cycles), computes every parent key, path and depth with one recursive
query, and writes each table once with one ``INSERT … SELECT``: units (parents
before children, final paths at insert, no ``UPDATE``), territories, group
memberships, and the audit trail.  No trigger is dropped: the database's own
rules (published versions, R-trees, foreign keys) check these rows as they
check any other.  Everything happens inside the caller's write transaction, so
a failure — or a killed process — leaves no partial version.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy import Connection, exc, text

from storage import audit_sql, geometry
from storage.backends import Backend
from storage.errors import CycleError, InvalidInput
from storage.ids import uuid7_many
from storage.registry import Registry, translate_db_error

VALIDATION_STATUSES = ("new", "valid", "rejected")
DEFER_INDEXES_BELOW = 20_000  # units already in the registry

#: staged columns, in the order of the rows handed to the driver
_STAGE_COLUMNS = (
    "fid", "ref", "parent_ref", "src", "uuid", "name", "code", "type_id", "status",
    "opening_date", "closed_date", "aliases", "extra", "location", "tfid", "territory",
    "lx", "ly", "tminx", "tmaxx", "tminy", "tmaxy",
)
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
    location: BaseGeometry | None = None
    territory: BaseGeometry | None = None
    validation_status: str = "valid"
    uuid: str | None = None
    #: refs of the groups the unit belongs to (groups added with ``add_group``)
    groups: list[str] | None = None
    #: where the record came from, for messages: "organisationUnits page 2, item 17"
    where: str = ""


@dataclass
class LoadStats:
    units: int = 0
    locations: int = 0
    territories: int = 0
    groups: int = 0
    memberships: int = 0
    types: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "locations": self.locations,
            "territories": self.territories,
            "groups": self.groups,
            "memberships": self.memberships,
            "types": self.types,
            "warnings": self.warnings,
        }


def parse_date(value: str | dt.date | None, what: str) -> str | None:
    """ISO date (DHIS2 sends ``1970-01-01T00:00:00.000``) → ``YYYY-MM-DD``."""
    if value is None or value == "":
        return None
    if type(value) is str and len(value) == 10:  # the common case: already YYYY-MM-DD
        try:
            dt.date.fromisoformat(value)
            return value
        except ValueError:
            pass
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        return dt.date.fromisoformat(str(value).strip()[:10]).isoformat()
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


class BulkLoader:
    """Load units into a draft version inside an open write transaction.

    Use: ``add_type``/``add_group`` as needed, ``add_units`` (any iterable, in any
    order: children may come before their parents; it may be called several times),
    ``add_memberships``, then ``finish()`` which checks the whole load, writes it and
    returns :class:`LoadStats`.
    """

    def __init__(
        self,
        reg: Registry,
        conn: Connection,
        version_id: int,
        *,
        batch_size: int = 5000,
        progress: Callable[[int], None] | None = None,
    ) -> None:
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
        self._batch: list[UnitRecord] = []
        self._given_uuids = 0
        self._extents: dict[str, tuple[int, float, float]] = {}
        self._existing = int(conn.execute(
            text("SELECT count(*) FROM org_unit WHERE version_id = :v"), {"v": version_id}
        ).scalar_one())
        #: the per-row audit triggers stay quiet for the load; ``finish`` writes the same
        #: change-log rows set-wise
        reg.set_audit(conn, False)
        sqlite = self.backend.is_sqlite
        if sqlite:
            self._next_fid = self._sqlite_next_fid("org_unit")
            self._next_tfid = self._sqlite_next_fid("org_unit_territory")
        on_commit = "" if sqlite else " ON COMMIT DROP"
        int_, blob = ("INTEGER", "BLOB") if sqlite else ("BIGINT", "BYTEA")
        date, js = ("TEXT", "TEXT") if sqlite else ("DATE", "JSONB")
        real = "REAL" if sqlite else "DOUBLE PRECISION"
        for name in ("georeg_load", "georeg_load_member", "georeg_tree"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE georeg_load (fid {int_} PRIMARY KEY, ref TEXT, parent_ref TEXT, "
            f"src TEXT, uuid TEXT, name TEXT, code TEXT, type_id {int_}, status TEXT, "
            f"opening_date {date}, closed_date {date}, aliases {js}, extra {js}, "
            f"location {blob}, tfid {int_}, territory {blob}, lx {real}, ly {real}, "
            f"tminx {real}, tmaxx {real}, tminy {real}, tmaxy {real}){on_commit}"
        )
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE georeg_load_member (group_ref TEXT, unit_ref TEXT){on_commit}"
        )
        cols = ", ".join(_STAGE_COLUMNS)
        self._stage_sql = (
            f"INSERT INTO georeg_load ({cols}) VALUES ({', '.join('?' * len(_STAGE_COLUMNS))})"
        )
        self._stage_copy = f"COPY georeg_load ({cols}) FROM STDIN"

    # --- types and groups -----------------------------------------------------------

    def add_type(
        self, name: str, depth: int | None = None, short_name: str | None = None
    ) -> int:
        name = name.strip()
        if name in self._types:
            return self._types[name]
        fid = self.conn.execute(
            text(
                "INSERT INTO org_unit_type (name, short_name, depth) VALUES (:n, :s, :d) "
                "RETURNING fid"
            ),
            {"n": name, "s": short_name, "d": depth},
        ).scalar_one()
        self._types[name] = int(fid)
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

    def add_units(self, records: Iterable[UnitRecord]) -> None:
        batch, size = self._batch, self.batch_size
        for rec in records:
            batch.append(rec)
            if len(batch) >= size:
                self._flush()
                batch = self._batch
        self._flush()

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
        fids = self._take_fids(len(batch), "org_unit")
        # geometry first, vectorised for the batch: type check, blobs, R-tree boxes
        loc_arr = np.empty(len(batch), dtype=object)
        loc_arr[:] = [rec.location for rec in batch]
        bad = np.flatnonzero(~shapely.is_missing(loc_arr) & (shapely.get_type_id(loc_arr) != 0))
        if len(bad):
            rec = batch[int(bad[0])]
            where = rec.where or f"unit {rec.source_ref or rec.name!r}"
            raise InvalidInput(f"{where}: field 'location' must be a point, not a "
                               f"{rec.location.geom_type}.")  # type: ignore[union-attr]
        ter_geoms = [None if rec.territory is None else geometry.as_multipolygon(rec.territory)
                     for rec in batch]
        loc_blobs = encode_geometries(self.backend, loc_arr.tolist())
        ter_blobs = encode_geometries(self.backend, ter_geoms)
        tfids = iter(self._take_fids(sum(1 for t in ter_blobs if t is not None),
                                     "org_unit_territory"))
        boxes = self._boxes(loc_arr, ter_geoms)
        rows: list[tuple[Any, ...]] = []
        members: list[tuple[str, str]] = []
        statuses = VALIDATION_STATUSES
        types = self._types
        new_uuids = iter(uuid7_many(sum(1 for rec in batch if rec.uuid is None)))
        for rec, fid, loc, ter, box in zip(batch, fids, loc_blobs, ter_blobs, boxes,
                                           strict=True):
            where = rec.where or f"unit {rec.source_ref or rec.name!r}"
            name = rec.name
            if isinstance(name, str):
                name = name.strip()
            if not name:
                raise InvalidInput(f"{where}: field 'name' is missing or empty.")
            status = rec.validation_status
            if status not in statuses:
                raise InvalidInput(
                    f"{where}: field 'validation_status' is {status!r}; "
                    f"expected one of {', '.join(statuses)}."
                )
            tname = rec.type_name
            type_id = (types.get(tname) or self._type_id(tname)) if tname else None
            uuid = rec.uuid
            if uuid is None:
                uuid = next(new_uuids)
            else:
                self._given_uuids += 1
            od, cd = rec.opening_date, rec.closed_date
            if od is not None:
                od = parse_date(od, f"{where}: field 'opening_date'")
            if cd is not None:
                cd = parse_date(cd, f"{where}: field 'closed_date'")
            rows.append((
                fid, rec.source_ref, rec.parent_ref, where, uuid, name, rec.code, type_id,
                status, od, cd,
                json.dumps(rec.aliases, ensure_ascii=False) if rec.aliases else None,
                json.dumps(rec.extra_fields, ensure_ascii=False) if rec.extra_fields else None,
                loc, None if ter is None else next(tfids), ter, *box,
            ))
            if rec.groups and rec.source_ref:
                members.extend((g, rec.source_ref) for g in rec.groups)
        if members:
            self._stage_members(members)
        self._stage(rows)
        self.stats.units += len(rows)
        self.stats.locations += sum(1 for x in loc_blobs if x is not None)
        self.stats.territories += sum(1 for x in ter_blobs if x is not None)
        if self.progress:
            self.progress(self.stats.units)

    def _boxes(self, locations: np.ndarray,
               territories: list[BaseGeometry | None]) -> list[tuple[float | None, ...]]:
        """GeoPackage: the R-tree boxes of each row's point and territory (None: no entry).

        ``finish`` fills the R-trees from them with one ``INSERT … SELECT`` each — the
        same boxes GDAL's per-row R-tree trigger computes with ``ST_MinX`` & co., a
        fraction of the cost.  Other backends maintain their spatial index themselves.
        """
        n = len(locations)
        if self.backend is not Backend.GEOPACKAGE:
            return [(None,) * 6] * n
        xs_arr, ys_arr = np.full(n, np.nan), np.full(n, np.nan)  # NaN: no point, or empty
        usable = ~shapely.is_missing(locations)
        usable[usable] = ~shapely.is_empty(locations[usable])
        if usable.any():
            xs_arr[usable] = shapely.get_x(locations[usable])
            ys_arr[usable] = shapely.get_y(locations[usable])
        self._extend("location", xs_arr, xs_arr)
        xs, ys = xs_arr.tolist(), ys_arr.tolist()
        if not any(t is not None for t in territories):
            return [(None if x != x else x, None if y != y else y, None, None, None, None)
                    for x, y in zip(xs, ys, strict=True)]
        ter = np.empty(n, dtype=object)
        ter[:] = territories
        bounds_arr = shapely.bounds(ter)  # NaN for a missing or empty territory
        self._extend("territory", bounds_arr[:, 0], bounds_arr[:, 2])
        bounds = bounds_arr.tolist()
        return [
            (None if x != x else x, None if y != y else y,
             *((None,) * 4 if b[0] != b[0] else (b[0], b[2], b[1], b[3])))
            for x, y, b in zip(xs, ys, bounds, strict=True)
        ]

    def _extend(self, kind: str, mins: np.ndarray, maxs: np.ndarray) -> None:
        """Count and x-range of the R-tree boxes staged so far (for ``fill_rtree``)."""
        present = ~np.isnan(mins)
        count = int(present.sum())
        if not count:
            return
        n, x0, x1 = self._extents.get(kind, (0, np.inf, -np.inf))
        self._extents[kind] = (n + count, min(x0, float(mins[present].min())),
                               max(x1, float(maxs[present].max())))

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

    def finish(self) -> LoadStats:
        self._flush()
        conn = self.conn
        conn.exec_driver_sql("CREATE INDEX georeg_load_ref ON georeg_load (ref)")
        conn.exec_driver_sql("CREATE INDEX georeg_load_parent ON georeg_load (parent_ref)")
        self._check_refs()
        self._build_tree()
        self._write_units()
        self._write_memberships()
        self._write_audit()
        self.reg.set_audit(conn, True)
        for name in ("georeg_load", "georeg_load_member", "georeg_tree"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        return self.stats

    def _check_refs(self) -> None:
        """Duplicate refs or uuids, refs already in the version, unknown parents."""
        conn, v = self.conn, {"v": self.version_id}
        dup = conn.execute(text(
            "SELECT ref FROM georeg_load WHERE ref IS NOT NULL GROUP BY ref "
            "HAVING count(*) > 1 ORDER BY min(fid) LIMIT 1")).first()
        if dup:
            first, second = conn.execute(text(
                "SELECT src FROM georeg_load WHERE ref = :r ORDER BY fid LIMIT 2"),
                {"r": dup[0]}).scalars().all()
            raise InvalidInput(f"{second}: source ref {dup[0]!r} is used twice (also by "
                               f"{first}); each unit needs its own ref.")
        if self._existing:
            clash = conn.execute(text(
                "SELECT s.src, s.ref, u.name FROM georeg_load s JOIN org_unit u "
                "ON u.version_id = :v AND u.source_ref = s.ref ORDER BY s.fid LIMIT 1"), v).first()
            if clash:
                raise InvalidInput(f"{clash[0]}: source ref {clash[1]!r} is already used by "
                                   f"{clash[2]!r} in this version; each unit needs its own ref.")
        if self._given_uuids:
            dup = conn.execute(text(
                "SELECT uuid FROM georeg_load GROUP BY uuid HAVING count(*) > 1 "
                "ORDER BY min(fid) LIMIT 1")).first()
            if dup:
                first, second = conn.execute(text(
                    "SELECT src FROM georeg_load WHERE uuid = :u ORDER BY fid LIMIT 2"),
                    {"u": dup[0]}).scalars().all()
                raise InvalidInput(f"{second}: uuid {dup[0]!r} is used twice (also by {first}); "
                                   "each unit needs its own uuid.")
            if self._existing:
                clash = conn.execute(text(
                    "SELECT s.src, s.uuid, u.name FROM georeg_load s JOIN org_unit u "
                    "ON u.version_id = :v AND u.uuid = s.uuid LIMIT 1"), v).first()
                if clash:
                    raise InvalidInput(f"{clash[0]}: uuid {clash[1]!r} is already used by "
                                       f"{clash[2]!r} in this version.")
        orphans = conn.execute(
            text(
                "SELECT s.src, s.ref, s.parent_ref FROM georeg_load s "
                "WHERE s.parent_ref IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM georeg_load p WHERE p.ref = s.parent_ref) ORDER BY s.fid LIMIT 5"
            )
        ).all()
        if orphans:
            lines = "; ".join(f"{o.src}: parent {o.parent_ref!r} not found" for o in orphans)
            raise InvalidInput(
                f"Unknown parent: {lines}. Every parent ref must name a unit of the same import."
            )

    def _build_tree(self) -> None:
        """Parent key, path and depth of every staged unit: one recursive query.

        The tree table is filled in the query's breadth-first order (``ord``), so units
        written in that order always come after their parent.
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
        placed = conn.exec_driver_sql(
            "INSERT INTO georeg_tree (fid, parent_key, path, depth) "
            "WITH RECURSIVE t(fid, ref, parent_key, path, depth) AS ("
            "  SELECT c.fid, c.ref, CAST(NULL AS BIGINT), "
            f"        '/' || {cast} || '/', 1 FROM georeg_load c WHERE c.parent_ref IS NULL"
            "  UNION ALL"
            f"  SELECT c.fid, c.ref, t.fid, t.path || {cast} || '/', t.depth + 1"
            "  FROM georeg_load c JOIN t ON c.parent_ref = t.ref"
            ") SELECT fid, parent_key, path, depth FROM t"
        ).rowcount
        if placed != self.stats.units:
            stuck = conn.execute(
                text(
                    "SELECT src, ref, parent_ref FROM georeg_load WHERE fid NOT IN "
                    "(SELECT fid FROM georeg_tree) ORDER BY ref LIMIT 5"
                )
            ).all()
            lines = "; ".join(f"{s.src} ({s.ref!r} → parent {s.parent_ref!r})" for s in stuck)
            raise CycleError(
                f"{self.stats.units - placed} units are their own ancestors (a cycle in the "
                f"parent refs): {lines}."
            )

    def _write_units(self) -> None:
        """Units, then territories: one ``INSERT … SELECT`` each, every trigger in place.

        Into an (almost) empty registry the secondary indexes of ``org_unit`` are built
        once afterwards — a sort is much cheaper than maintaining them row by row; with
        many units already there, rebuilding would cost more than it saves, so they stay.
        Dropped and re-created inside this transaction, they are never missing for anyone
        else.
        """
        conn, b = self.conn, self.backend
        deferred: list[str] = []
        if b.is_sqlite:
            existing = conn.exec_driver_sql("SELECT count(*) FROM org_unit").scalar_one()
            if existing < DEFER_INDEXES_BELOW:
                for name, sql in conn.exec_driver_sql(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND "
                    "tbl_name = 'org_unit' AND sql IS NOT NULL").all():
                    conn.exec_driver_sql(f'DROP INDEX "{name}"')
                    deferred.append(sql)
        #: GeoPackage: GDAL's per-row R-tree insert triggers (ST_IsEmpty, ST_MinX … on
        #: every blob) are the costliest part of the write; they are set aside for these
        #: two statements and the R-trees filled set-wise from the staged boxes, then the
        #: triggers are put back from their own SQL — all inside this transaction.
        rtree_triggers: list[tuple[str, str]] = []
        if b is Backend.GEOPACKAGE:
            rtree_triggers = [(r[0], r[1]) for r in conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN "
                "('rtree_org_unit_location_insert', 'rtree_org_unit_territory_territory_insert')"
            )]
            for name, _sql in rtree_triggers:
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
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
            if self.stats.territories:
                conn.execute(
                    text(
                        "INSERT INTO org_unit_territory (fid, territory, unit_fid, version_id, "
                        f"name) SELECT s.tfid, {ter}, s.fid, :v, s.name FROM georeg_load s "
                        "WHERE s.tfid IS NOT NULL ORDER BY s.fid"
                    ),
                    {"v": self.version_id},
                )
            if rtree_triggers:
                fill_rtree(self._driver(), "rtree_org_unit_location",
                           "SELECT fid, lx, lx, ly, ly FROM georeg_load WHERE lx IS NOT NULL",
                           self._extents.get("location", (0, 0.0, 0.0)))
                fill_rtree(self._driver(), "rtree_org_unit_territory_territory",
                           "SELECT tfid, tminx, tmaxx, tminy, tmaxy FROM georeg_load "
                           "WHERE tfid IS NOT NULL AND tminx IS NOT NULL",
                           self._extents.get("territory", (0, 0.0, 0.0)))
        except (exc.IntegrityError, sqlite3.IntegrityError) as error:
            raise translate_db_error(error) from error
        finally:
            for _name, sql in rtree_triggers:
                conn.exec_driver_sql(sql)
        for sql in deferred:
            conn.exec_driver_sql(sql)

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
        """The same change-log rows the per-row triggers would have written, set-wise."""
        b = self.backend
        join, ctx = audit_sql.context_columns(b)
        cols = audit_sql.LOG_COLUMNS
        self.conn.execute(
            text(
                f"INSERT INTO change_log ({cols}) SELECT u.version_id, 'org_unit', 'insert', "
                f"u.uuid, u.unit_key, u.fid, NULL, {audit_sql.unit_json(b, 'u')}, {ctx} "
                f"FROM georeg_load s JOIN org_unit u ON u.fid = s.fid{join} ORDER BY s.fid"
            )
        )
        if self.stats.territories:
            self.conn.execute(
                text(
                    f"INSERT INTO change_log ({cols}) SELECT u.version_id, 'territory', "
                    f"'insert', u.uuid, u.unit_key, t.fid, NULL, "
                    f"{audit_sql.territory_json(b, 't')}, {ctx} "
                    "FROM georeg_load s JOIN org_unit u ON u.fid = s.fid "
                    f"JOIN org_unit_territory t ON t.fid = s.tfid{join} "
                    "WHERE s.tfid IS NOT NULL ORDER BY s.tfid"
                )
            )
        if self.stats.memberships:
            fn = "jsonb_build_object" if b is Backend.POSTGIS else "json_object"
            self.conn.execute(
                text(
                    f"INSERT INTO change_log ({cols}) SELECT m.version_id, 'group_membership', "
                    f"'insert', u.uuid, u.unit_key, m.fid, NULL, "
                    f"{fn}('group_key', m.group_key, 'group', g.name), {ctx} "
                    "FROM group_membership m JOIN org_unit u ON u.version_id = m.version_id "
                    "AND u.unit_key = m.unit_key JOIN georeg_load s ON s.fid = u.fid "
                    "JOIN org_unit_group g ON g.version_id = m.version_id "
                    f"AND g.group_key = m.group_key{join} WHERE m.version_id = :v ORDER BY m.fid"
                ),
                {"v": self.version_id},
            )


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


def fill_rtree(db: sqlite3.Connection, rtree: str, query: str,
               extent: tuple[int, float, float] | None = None) -> int:
    """Insert the boxes ``query`` yields (id, minx, maxx, miny, maxy) into an R-tree.

    Into an empty R-tree the tree is bulk-loaded, as GDAL does for a new layer: the
    boxes are packed bottom-up (sort-tile-recursive: slices by x, leaves by y, full
    nodes) and the nodes written straight into the R-tree's own tables, in SQLite's
    node format — instead of one R-tree insertion, with its node splits, per box.
    SQLite sorts the boxes (spilling to disk if it must) by vertical slice of equal
    width, then by y; the leaves are packed and written as the sorted rows stream, so
    memory holds one chunk of boxes plus one box per leaf (1/50 of them).  The result
    is an ordinary SQLite R-tree (``rtreecheck`` passes) that SQLite then maintains
    row by row as usual.  A non-empty R-tree gets one ``INSERT … SELECT``.

    ``extent``: (count, min x, max x) of the boxes when the caller knows them.
    """
    cur = db.cursor()
    try:
        if cur.execute(f'SELECT 1 FROM "{rtree}_rowid" LIMIT 1').fetchone() is not None:
            cur.execute(f'INSERT INTO "{rtree}" (id, minx, maxx, miny, maxy) {query}')
            return cur.rowcount
        if extent is None:
            row = cur.execute(f"WITH b(id, minx, maxx, miny, maxy) AS ({query}) "
                              "SELECT count(*), min(minx), max(maxx) FROM b").fetchone()
            extent = (int(row[0]), row[1], row[2])
        n, x0, x1 = extent
        if n == 0:
            return 0
        node_size = int(cur.execute(
            f'SELECT length(data) FROM "{rtree}_node" WHERE nodeno = 1').fetchone()[0])
        fanout = (node_size - 4) // _RTREE_CELL.itemsize
        if n <= fanout:  # one leaf: the root
            cells = _cells(cur.execute(query).fetchall())
            _write_root(cur, rtree, _node(0, cells, node_size))
            cur.executemany(f'INSERT INTO "{rtree}_rowid" (rowid, nodeno) VALUES (?, 1)',
                            ((int(i),) for i in cells["id"]))
            return n
        slices = max(1, int(np.ceil(np.sqrt(-(-n // fanout)))))
        scale = slices / (2 * (x1 - x0)) if x1 > x0 else 0.0
        reader = db.cursor()
        reader.execute(
            f"WITH b(id, minx, maxx, miny, maxy) AS ({query}) SELECT id, minx, maxx, miny, "
            f"maxy FROM b ORDER BY CAST((minx + maxx - {2 * x0!r}) * {scale!r} AS INTEGER), "
            "miny + maxy")
        boxes: list[tuple[int, float, float, float, float]] = []
        next_no = 2
        while True:
            rows = reader.fetchmany(fanout * 200)  # whole leaves
            if not rows:
                break
            cells = _cells(rows)
            groups = [cells[i : i + fanout] for i in range(0, len(cells), fanout)]
            numbers = range(next_no, next_no + len(groups))
            next_no += len(groups)
            cur.executemany(f'INSERT INTO "{rtree}_node" (nodeno, data) VALUES (?, ?)',
                            ((no, _node(0, g, node_size)) for no, g in zip(numbers, groups,
                                                                           strict=True)))
            cur.executemany(f'INSERT INTO "{rtree}_rowid" (rowid, nodeno) VALUES (?, ?)',
                            ((int(i), no) for no, g in zip(numbers, groups, strict=True)
                             for i in g["id"]))
            boxes.extend(_box(no, g) for no, g in zip(numbers, groups, strict=True))
        reader.close()
        level = np.array(boxes, dtype=_RTREE_CELL)
        depth = 1
        while len(level) > fanout:  # inner levels, in memory: one box per node below
            groups = _str_pack(level, fanout)
            numbers = range(next_no, next_no + len(groups))
            next_no += len(groups)
            cur.executemany(f'INSERT INTO "{rtree}_node" (nodeno, data) VALUES (?, ?)',
                            ((no, _node(0, g, node_size)) for no, g in zip(numbers, groups,
                                                                           strict=True)))
            cur.executemany(f'INSERT INTO "{rtree}_parent" (nodeno, parentnode) VALUES (?, ?)',
                            ((int(c), no) for no, g in zip(numbers, groups, strict=True)
                             for c in g["id"]))
            level = np.array([_box(no, g) for no, g in zip(numbers, groups, strict=True)],
                             dtype=_RTREE_CELL)
            depth += 1
        _write_root(cur, rtree, _node(depth, level, node_size))
        cur.executemany(f'INSERT INTO "{rtree}_parent" (nodeno, parentnode) VALUES (?, 1)',
                        ((int(c),) for c in level["id"]))
        return n
    finally:
        cur.close()


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
    groups = []
    for start in range(0, n, per_slice):
        part = by_x[start : start + per_slice]
        part = part[np.argsort(cy[part], kind="stable")]
        groups.extend(cells[part[i : i + fanout]] for i in range(0, len(part), fanout))
    return groups
