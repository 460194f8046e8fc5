"""Set-based loading of many units into one draft version, for every importer.

Rows stream in batches (nothing but the current batch is held in Python); the
hierarchy, paths, group memberships and the audit trail are then built in SQL
in a handful of statements.  Everything happens inside the caller's write
transaction, so a failure — or a killed process — leaves no partial version.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy import Connection, exc, text

from storage import audit_sql, geometry
from storage.backends import Backend
from storage.errors import CycleError, InvalidInput
from storage.ids import uuid7
from storage.registry import Registry, translate_db_error

VALIDATION_STATUSES = ("new", "valid", "rejected")
PLACED_CACHE = 250_000  # units whose tree position is remembered during a load
DEFER_INDEXES_BELOW = 20_000  # units already in the registry


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
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        return dt.date.fromisoformat(str(value).strip()[:10]).isoformat()
    except ValueError:
        raise InvalidInput(f"{what}: {value!r} is not a date (expected YYYY-MM-DD).") from None


class BulkLoader:
    """Load units into a draft version inside an open write transaction.

    Use: ``add_type``/``add_group`` as needed, ``add_units`` (any iterable, in any
    order: children may come before their parents), ``add_memberships``, then
    ``finish()`` which builds the tree and returns :class:`LoadStats`.
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
        #: ref -> (key, path, depth) of units already placed in the tree: a child whose
        #: parent came first gets its path at insert time (bounded: the rest is placed
        #: by the recursive query in ``finish``)
        self._placed: dict[str, tuple[int, str, int]] = {}
        reg.set_audit(conn, False)
        #: GeoPackage: the per-row triggers are dropped for the load and re-created, from
        #: their own saved SQL, in ``finish`` — inside this transaction, so no other
        #: connection ever sees them missing and a failure restores them.  What they do
        #: is done set-wise instead: keys, paths, audit, R-tree (filled from Python).
        self._suspended: list[tuple[str, str]] = []
        if self.backend is Backend.GEOPACKAGE:
            self._suspended = [
                (r[0], r[1]) for r in conn.exec_driver_sql(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN "
                    "('org_unit', 'org_unit_territory')")
            ]
            for name, _sql in self._suspended:
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
        #: Into an (almost) empty registry, the secondary indexes are built once at the
        #: end — a sort is much cheaper than maintaining them row by row.  With many units
        #: already there, rebuilding would cost more than it saves, so they stay.
        self._deferred_indexes: list[str] = []
        if self.backend.is_sqlite:
            existing = conn.exec_driver_sql("SELECT count(*) FROM org_unit").scalar_one()
            if existing < DEFER_INDEXES_BELOW:
                rows = conn.exec_driver_sql(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND "
                    "tbl_name = 'org_unit' AND sql IS NOT NULL").all()
                for name, sql in rows:
                    conn.exec_driver_sql(f'DROP INDEX "{name}"')
                    self._deferred_indexes.append(sql)
        temp = "TEMP TABLE" if self.backend.is_sqlite else "TEMP TABLE"
        on_commit = "" if self.backend.is_sqlite else " ON COMMIT DROP"
        conn.exec_driver_sql("DROP TABLE IF EXISTS georeg_load")
        conn.exec_driver_sql("DROP TABLE IF EXISTS georeg_load_member")
        conn.exec_driver_sql(
            f"CREATE {temp} georeg_load (fid BIGINT PRIMARY KEY, unit_key BIGINT, ref TEXT, "
            f"parent_ref TEXT, src TEXT){on_commit}"
        )
        conn.exec_driver_sql(
            f"CREATE {temp} georeg_load_member (group_ref TEXT, unit_ref TEXT){on_commit}"
        )
        loc = geometry.bind_sql(self.backend, "location")
        ter = geometry.bind_sql(self.backend, "territory")
        self._unit_sql = text(
            "INSERT INTO org_unit (fid, location, version_id, unit_key, uuid, source_ref, name, "
            "code, type_id, parent_key, path, depth, validation_status, opening_date, "
            "closed_date, aliases, extra_fields) VALUES (:fid, "
            f"{loc}, :version_id, :fid, :uuid, :source_ref, :name, :code, :type_id, :parent_key, "
            ":path, :depth, "
            ":validation_status, :opening_date, :closed_date, :aliases, :extra_fields)"
        )
        self._territory_sql = text(
            f"INSERT INTO org_unit_territory (fid, territory, unit_fid, version_id, name) "
            f"VALUES (:tfid, {ter}, :fid, :version_id, :name)"
        )
        self._member_sql = text(
            "INSERT INTO georeg_load_member (group_ref, unit_ref) VALUES (:g, :u)"
        )
        self._stage_sql = text(
            "INSERT INTO georeg_load (fid, unit_key, ref, parent_ref, src) "
            "VALUES (:fid, :fid, :source_ref, :parent_ref, :src)"
        )

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
        rows = [{"g": g, "u": u} for g, u in pairs]
        if rows:
            self.conn.execute(self._member_sql, rows)

    # --- units ---------------------------------------------------------------------

    def add_units(self, records: Iterable[UnitRecord]) -> None:
        for rec in records:
            self._batch.append(rec)
            if len(self._batch) >= self.batch_size:
                self._flush()
        self._flush()

    def _next_fids(self, n: int, table: str = "org_unit") -> list[int]:
        """Row ids for the next ``n`` rows (we hold the write lock, so nobody else takes them)."""
        if n == 0:
            return []
        if self.backend.is_sqlite:
            start = self.conn.execute(
                text(
                    f"SELECT max(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{table}'),"
                    f" 0), COALESCE((SELECT max(fid) FROM {table}), 0)) + 1"
                )
            ).scalar_one()
            return list(range(int(start), int(start) + n))
        rows = self.conn.execute(
            text(f"SELECT nextval('{table}_fid_seq') FROM generate_series(1, :n)"), {"n": n}
        ).scalars()
        return [int(r) for r in rows]

    def _row(self, rec: UnitRecord, fid: int) -> dict[str, Any]:
        where = rec.where or f"unit {rec.source_ref or rec.name!r}"
        name = (rec.name or "").strip() if isinstance(rec.name, str) else rec.name
        if not name:
            raise InvalidInput(f"{where}: field 'name' is missing or empty.")
        if rec.validation_status not in VALIDATION_STATUSES:
            raise InvalidInput(
                f"{where}: field 'validation_status' is {rec.validation_status!r}; "
                f"expected one of {', '.join(VALIDATION_STATUSES)}."
            )
        type_id = None
        if rec.type_name:
            if rec.type_name not in self._types:
                self.add_type(rec.type_name)
            type_id = self._types[rec.type_name.strip()]
        if rec.location is not None and rec.location.geom_type != "Point":
            raise InvalidInput(
                f"{where}: field 'location' must be a point, not a {rec.location.geom_type}."
            )
        parent_key, path, depth = None, None, 0
        if rec.parent_ref is None:
            path, depth = f"/{fid}/", 1
        else:
            known = self._placed.get(rec.parent_ref)
            if known is not None:
                parent_key, path, depth = known[0], f"{known[1]}{fid}/", known[2] + 1
        if path is not None and rec.source_ref is not None and len(self._placed) < PLACED_CACHE:
            self._placed[rec.source_ref] = (fid, path, depth)
        return {
            "fid": fid,
            "parent_key": parent_key,
            "path": path,
            "depth": depth,
            "version_id": self.version_id,
            "uuid": rec.uuid or uuid7(),
            "source_ref": rec.source_ref,
            "parent_ref": rec.parent_ref,
            "src": where,
            "name": name,
            "code": rec.code,
            "type_id": type_id,
            "validation_status": rec.validation_status,
            "opening_date": parse_date(rec.opening_date, f"{where}: field 'opening_date'"),
            "closed_date": parse_date(rec.closed_date, f"{where}: field 'closed_date'"),
            "aliases": json.dumps(rec.aliases, ensure_ascii=False) if rec.aliases else None,
            "extra_fields": (
                json.dumps(rec.extra_fields, ensure_ascii=False) if rec.extra_fields else None
            ),
        }

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        fids = self._next_fids(len(batch))
        rows = [self._row(rec, fid) for rec, fid in zip(batch, fids, strict=True)]
        locations = geometry.encode_many(self.backend, [r.location for r in batch])
        territories = geometry.encode_many(
            self.backend,
            [geometry.as_multipolygon(r.territory) if r.territory is not None else None
             for r in batch],
        )
        for row, loc in zip(rows, locations, strict=True):
            row["location"] = loc
        ter_rows = [
            {"territory": ter, "fid": row["fid"], "version_id": self.version_id, "name": row["name"]}
            for row, ter in zip(rows, territories, strict=True)
            if ter is not None
        ]
        members = [
            {"g": g, "u": rec.source_ref}
            for rec in batch if rec.groups and rec.source_ref
            for g in rec.groups
        ]
        ter_fids = self._next_fids(len(ter_rows), "org_unit_territory")
        for row, tfid in zip(ter_rows, ter_fids, strict=True):
            row["tfid"] = tfid
        savepoint = self.conn.begin_nested()
        try:
            if members:
                self._executemany(self._member_sql, members)
            self._executemany(self._stage_sql, rows)
            self._executemany(self._unit_sql, rows)
            if ter_rows:
                self._executemany(self._territory_sql, ter_rows)
            if self._suspended:
                self._fill_rtrees(batch, rows, ter_rows)
        except exc.IntegrityError as error:
            savepoint.rollback()
            raise self._explain_integrity(rows, error) from error
        except sqlite3.IntegrityError as error:
            savepoint.rollback()
            raise self._explain_integrity(rows, exc.IntegrityError("", {}, error)) from error
        savepoint.commit()
        self.stats.units += len(rows)
        self.stats.locations += sum(1 for x in locations if x is not None)
        self.stats.territories += len(ter_rows)
        if self.progress:
            self.progress(self.stats.units)

    def _executemany(self, sql: Any, rows: list[dict[str, Any]]) -> None:
        """SQLite: straight to the driver (the hot path); PostgreSQL: through SQLAlchemy."""
        if self.backend.is_sqlite:
            cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.executemany(str(sql), rows)
            cursor.close()
        else:
            self.conn.execute(sql, rows)

    def _fill_rtrees(self, batch: list[UnitRecord], rows: list[dict[str, Any]],
                     ter_rows: list[dict[str, Any]]) -> None:
        located = [(row["fid"], rec.location) for rec, row in zip(batch, rows, strict=True)
                   if rec.location is not None and not rec.location.is_empty]
        xs = shapely.get_x([g for _, g in located]).tolist() if located else []
        ys = shapely.get_y([g for _, g in located]).tolist() if located else []
        points = [(fid, x, x, y, y) for (fid, _), x, y in zip(located, xs, ys, strict=True)]
        cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.executemany('INSERT INTO "rtree_org_unit_location" VALUES (?, ?, ?, ?, ?)', points)
        if ter_rows:
            by_fid = {row["fid"]: rec for rec, row in zip(batch, rows, strict=True)}
            boxes = []
            for t in ter_rows:
                geom = by_fid[t["fid"]].territory
                if geom is not None and not geom.is_empty:
                    x0, y0, x1, y1 = geom.bounds
                    boxes.append((t["tfid"], x0, x1, y0, y1))
            cursor.executemany(
                'INSERT INTO "rtree_org_unit_territory_territory" VALUES (?, ?, ?, ?, ?)', boxes)
        cursor.close()

    def _explain_integrity(self, rows: list[dict[str, Any]], error: exc.IntegrityError) -> Exception:
        refs = [r["source_ref"] for r in rows if r["source_ref"] is not None]
        seen: dict[str, str] = {}
        for r in rows:
            ref = r["source_ref"]
            if ref is None:
                continue
            if ref in seen:
                return InvalidInput(
                    f"{r['src']}: source ref {ref!r} is used twice (also by {seen[ref]}); "
                    "each unit needs its own ref."
                )
            seen[ref] = r["src"]
        if refs:
            clash = self.conn.execute(
                text(
                    "SELECT source_ref, name FROM org_unit WHERE version_id = :v AND source_ref IN "
                    "(" + ", ".join(f":r{i}" for i in range(len(refs))) + ") LIMIT 1"
                ),
                {"v": self.version_id} | {f"r{i}": ref for i, ref in enumerate(refs)},
            ).first()
            if clash:
                where = next(r["src"] for r in rows if r["source_ref"] == clash[0])
                return InvalidInput(
                    f"{where}: source ref {clash[0]!r} is already used by {clash[1]!r} "
                    "in this version; each unit needs its own ref."
                )
        return translate_db_error(error)

    # --- tree, memberships, audit --------------------------------------------------

    def finish(self) -> LoadStats:
        self._flush()
        conn, v = self.conn, {"v": self.version_id}
        for sql in self._deferred_indexes:
            conn.exec_driver_sql(sql)
        self._deferred_indexes = []
        conn.exec_driver_sql("CREATE INDEX georeg_load_ref ON georeg_load (ref)")
        conn.exec_driver_sql("CREATE INDEX georeg_load_parent ON georeg_load (parent_ref)")
        orphans = conn.execute(
            text(
                "SELECT s.src, s.ref, s.parent_ref FROM georeg_load s "
                "WHERE s.parent_ref IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM georeg_load p WHERE p.ref = s.parent_ref) LIMIT 5"
            )
        ).all()
        if orphans:
            lines = "; ".join(f"{o.src}: parent {o.parent_ref!r} not found" for o in orphans)
            raise InvalidInput(
                f"Unknown parent: {lines}. Every parent ref must name a unit of the same import."
            )
        cast = "CAST(c.unit_key AS TEXT)"
        conn.exec_driver_sql("DROP TABLE IF EXISTS georeg_tree")
        on_commit = "" if self.backend.is_sqlite else " ON COMMIT DROP"
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE georeg_tree{on_commit} AS "
            "WITH RECURSIVE t(fid, unit_key, ref, parent_key, path, depth) AS ("
            "  SELECT c.fid, c.unit_key, c.ref, CAST(NULL AS BIGINT), "
            f"        '/' || {cast} || '/', 1 FROM georeg_load c WHERE c.parent_ref IS NULL"
            "  UNION ALL"
            f"  SELECT c.fid, c.unit_key, c.ref, t.unit_key, t.path || {cast} || '/', t.depth + 1"
            "  FROM georeg_load c JOIN t ON c.parent_ref = t.ref"
            ") SELECT fid, parent_key, path, depth FROM t"
        )
        loaded = conn.execute(text("SELECT count(*) FROM georeg_load")).scalar_one()
        placed = conn.execute(text("SELECT count(*) FROM georeg_tree")).scalar_one()
        if placed != loaded:
            stuck = conn.execute(
                text(
                    "SELECT src, ref, parent_ref FROM georeg_load WHERE fid NOT IN "
                    "(SELECT fid FROM georeg_tree) ORDER BY ref LIMIT 5"
                )
            ).all()
            lines = "; ".join(f"{s.src} ({s.ref!r} → parent {s.parent_ref!r})" for s in stuck)
            raise CycleError(
                f"{loaded - placed} units are their own ancestors (a cycle in the parent refs): "
                f"{lines}."
            )
        conn.execute(
            text(
                "UPDATE org_unit SET parent_key = t.parent_key, path = t.path, depth = t.depth "
                "FROM georeg_tree t WHERE org_unit.fid = t.fid AND org_unit.path IS NULL"
            )
        )
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
        self._write_audit()
        for _name, sql in self._suspended:
            conn.exec_driver_sql(sql)
        self._suspended = []
        self.reg.set_audit(conn, True)
        for name in ("georeg_load", "georeg_load_member", "georeg_tree"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        return self.stats

    def _write_audit(self) -> None:
        """The same change-log rows the per-row triggers would have written, set-wise."""
        b = self.backend
        join, ctx = audit_sql.context_columns(b)
        cols = audit_sql.LOG_COLUMNS
        self.conn.execute(
            text(
                f"INSERT INTO change_log ({cols}) SELECT u.version_id, 'org_unit', 'insert', "
                f"u.uuid, u.unit_key, u.fid, NULL, {audit_sql.unit_json(b, 'u')}, {ctx} "
                f"FROM georeg_load s JOIN org_unit u ON u.fid = s.fid{join} ORDER BY u.fid"
            )
        )
        self.conn.execute(
            text(
                f"INSERT INTO change_log ({cols}) SELECT u.version_id, 'territory', 'insert', "
                f"u.uuid, u.unit_key, t.fid, NULL, {audit_sql.territory_json(b, 't')}, {ctx} "
                "FROM georeg_load s JOIN org_unit u ON u.fid = s.fid "
                f"JOIN org_unit_territory t ON t.unit_fid = u.fid{join} ORDER BY t.fid"
            )
        )
        fn = "jsonb_build_object" if b is Backend.POSTGIS else "json_object"
        self.conn.execute(
            text(
                f"INSERT INTO change_log ({cols}) SELECT m.version_id, 'group_membership', "
                f"'insert', u.uuid, u.unit_key, m.fid, NULL, "
                f"{fn}('group_key', m.group_key, 'group', g.name), {ctx} "
                "FROM group_membership m JOIN org_unit u ON u.version_id = m.version_id "
                "AND u.unit_key = m.unit_key JOIN georeg_load s ON s.fid = u.fid JOIN org_unit_group g ON g.version_id = m.version_id "
                f"AND g.group_key = m.group_key{join} WHERE m.version_id = :v"
            ),
            {"v": self.version_id},
        )
