"""Units, types and groups as both sides of a sync read and compare them, by identity
(uuid, names, source refs — row ids and unit keys are local to each registry)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy import Connection, bindparam, text

from storage import geometry
from storage.backends import Backend
from storage.registry import Registry, json_value

SYNC_ORIGIN = "sync"
UNIT_ENTITIES = ("org_unit", "territory", "group_membership")
FIELDS = (
    "source_ref",
    "name",
    "code",
    "type",
    "validation_status",
    "opening_date",
    "closed_date",
    "aliases",
    "extra_fields",
    "parent_uuid",
    "location",
)
#: fields compared for conflicts (unit fields + what hangs off the unit)
COMPARED = (*FIELDS, "territory", "groups")
DEFAULT_BATCH = 2000
#: units per transaction when a version is sent whole into an empty central version (COPY)
FULL_BATCH = 100_000
#: a gap in a PostgreSQL change log (an id taken by a transaction not yet committed)
#: holds the marker back; a gap older than this is taken for a rolled-back transaction
GAP_GRACE_SECONDS = 3600
_IN_CHUNK = 900
#: from this many new units in one batch, PostgreSQL receives them by COPY
COPY_FROM = 200
MAX_LISTED = 200
#: the central change-log ``op`` of a version sent whole into an empty central version:
#: one ``entity = 'version'`` row per COPY batch instead of one row per unit (the units'
#: own history stays in the pushing registry; see docs/sync-postgis.md, "Change log")
PUSH_OP = "push"


# --- small helpers ----------------------------------------------------------------------


def _chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _in_rows(conn: Connection, sql: str, name: str, values: Iterable[Any],
             params: dict[str, Any] | None = None) -> Iterator[Any]:
    """Rows of ``sql``, whose ``… IN :name`` holds ``values``: on PostgreSQL one statement
    with an array (one round trip, and one query text psycopg parses once); on SQLite in
    chunks of expanding ``IN`` lists.

    PostgreSQL gets the array as ``IN (SELECT unnest(…))``, not ``= ANY(…)``: for
    ``= ANY`` of a thousand values the planner prices a thousand index probes above a
    (parallel) scan of the whole table, which is ten times slower once the table is
    cached; a set of unknown size (``unnest``) is joined through the index."""
    wanted = sorted(set(values))
    if not wanted:
        return
    params = params or {}
    if conn.dialect.name == "postgresql":
        kind = "bigint[]" if all(isinstance(v, int) for v in wanted) else "text[]"
        stmt = text(sql.replace(f" IN :{name}", f" IN (SELECT unnest(CAST(:{name} AS {kind})))"))
        yield from conn.execute(stmt, params | {name: wanted}).all()
        return
    stmt = text(sql).bindparams(bindparam(name, expanding=True))
    for part in _chunks(wanted):
        yield from conn.execute(stmt, params | {name: list(part)}).all()


def _is_pg(reg: Registry) -> bool:
    return reg.backend is Backend.POSTGIS


def _date(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.date):
        return value.isoformat()[:10]
    return str(value)[:10]


def _json(value: Any) -> Any:
    value = json_value(value)
    return None if value in (None, "", [], {}) else value


def _wkb(geom: BaseGeometry | None) -> str | None:
    if geom is None or geom.is_empty:
        return None
    return str(shapely.to_wkb(geom, hex=True, byte_order=1, flavor="iso"))


def canon(name: str, value: Any) -> Any:
    """A value in a form that compares equal across backends."""
    if name in ("location", "territory"):
        return _wkb(value)
    if name in ("aliases", "extra_fields"):
        value = _json(value)
        return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)
    if name == "groups":
        return sorted(value or [])
    if name in ("opening_date", "closed_date"):
        return _date(value)
    return value


def group_identity(source_ref: str | None, name: str) -> str:
    return f"ref:{source_ref}" if source_ref else f"name:{name}"


def _safe_max(conn: Connection, pg: bool, after: int) -> int:
    """The highest change-log id up to which every row is visible (no pending gap)."""
    if not pg:
        top = conn.execute(text("SELECT max(fid) FROM change_log")).scalar()
        return max(int(top or 0), after)
    fids = [int(f) for f in conn.execute(
        text("SELECT fid FROM change_log WHERE fid > :a ORDER BY fid"), {"a": after}
    ).scalars()]
    expected = after + 1
    for fid in fids:
        if fid != expected:
            # a gap is an id taken by a transaction not committed yet — or rolled back:
            # taken for rolled back only once old AND no other session is writing the
            # change log (a QGIS edit session or a psql BEGIN left open for hours holds
            # its lock until it commits)
            young = conn.execute(
                text(
                    "SELECT CAST(at AS timestamptz) > now() - make_interval(secs => :g) "
                    "OR EXISTS (SELECT 1 FROM pg_locks l WHERE l.relation = "
                    "to_regclass('change_log') AND l.mode = 'RowExclusiveLock' "
                    "AND l.pid <> pg_backend_pid() AND l.granted) "
                    "FROM change_log WHERE fid = :f"
                ),
                {"f": fid, "g": GAP_GRACE_SECONDS},
            ).scalar()
            if young:
                return expected - 1
        expected = fid + 1
    return expected - 1


# --- snapshots of versions, types, groups ------------------------------------------------


def _versions(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(
            "SELECT v.fid, s.name AS source, s.description AS source_description, v.number, "
            "v.status, v.description, v.created_at, v.created_by, v.published_at, "
            "v.published_by, c.number AS copied_from, "
            "CASE WHEN s.default_version_id = v.fid THEN 1 ELSE 0 END AS is_default "
            "FROM source_version v JOIN data_source s ON s.fid = v.source_id "
            "LEFT JOIN source_version c ON c.fid = v.copied_from_id ORDER BY s.name, v.number"
        )
    ).all()
    return [dict(r._mapping) for r in rows]


def _types(conn: Connection) -> dict[str, dict[str, Any]]:
    rows = conn.execute(text("SELECT name, short_name, depth, category FROM org_unit_type"))
    return {r.name: dict(r._mapping) for r in rows}


def _apply_types(conn: Connection, wanted: dict[str, dict[str, Any]]) -> int:
    have = _types(conn)
    changed = 0
    for name, row in wanted.items():
        if name not in have:
            conn.execute(
                text(
                    "INSERT INTO org_unit_type (name, short_name, depth, category) "
                    "VALUES (:name, :short_name, :depth, :category)"
                ),
                row,
            )
            changed += 1
        elif have[name] != row:
            conn.execute(
                text(
                    "UPDATE org_unit_type SET short_name = :short_name, depth = :depth, "
                    "category = :category WHERE name = :name"
                ),
                row,
            )
            changed += 1
    return changed


@dataclass
class GroupSnapshot:
    groups: dict[str, dict[str, Any]]  # identity -> fields
    sets: dict[str, dict[str, Any]]  # identity -> fields
    set_members: set[tuple[str, str]]  # (set identity, group identity)


def _groups(conn: Connection, version_id: int) -> GroupSnapshot:
    v = {"v": version_id}
    groups = {
        group_identity(r.source_ref, r.name): {
            "source_ref": r.source_ref, "name": r.name, "short_name": r.short_name,
            "code": r.code, "key": r.group_key,
        }
        for r in conn.execute(
            text(
                "SELECT group_key, source_ref, name, short_name, code FROM org_unit_group "
                "WHERE version_id = :v"
            ),
            v,
        )
    }
    sets = {
        group_identity(r.source_ref, r.name): {
            "source_ref": r.source_ref, "name": r.name, "short_name": r.short_name,
            "belonging": r.belonging, "compulsory": bool(r.compulsory), "key": r.set_key,
        }
        for r in conn.execute(
            text(
                "SELECT set_key, source_ref, name, short_name, belonging, compulsory "
                "FROM group_set WHERE version_id = :v"
            ),
            v,
        )
    }
    members = {
        (group_identity(r[0], r[1]), group_identity(r[2], r[3]))
        for r in conn.execute(
            text(
                "SELECT s.source_ref, s.name, g.source_ref, g.name FROM group_set_member m "
                "JOIN group_set s ON s.version_id = m.version_id AND s.set_key = m.set_key "
                "JOIN org_unit_group g ON g.version_id = m.version_id AND g.group_key = m.group_key "
                "WHERE m.version_id = :v"
            ),
            v,
        )
    }
    return GroupSnapshot(groups, sets, members)


def _strip(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "key"}


def _group_members(conn: Connection, version_id: int, identities: set[str]
                   ) -> dict[str, set[str]]:
    """Unit uuids of the members of some groups (by group identity)."""
    out: dict[str, set[str]] = {i: set() for i in identities}
    if not identities:
        return out
    rows = conn.execute(
        text(
            "SELECT g.source_ref, g.name, u.uuid FROM group_membership m "
            "JOIN org_unit_group g ON g.version_id = m.version_id AND g.group_key = m.group_key "
            "JOIN org_unit u ON u.version_id = m.version_id AND u.unit_key = m.unit_key "
            "WHERE m.version_id = :v"
        ),
        {"v": version_id},
    )
    for ref, name, uuid in rows:
        ident = group_identity(ref, name)
        if ident in out:
            out[ident].add(uuid)
    return out


def _add_group_members(conn: Connection, version_id: int, members: dict[str, set[str]]
                       ) -> int:
    """Memberships of groups that are new on this side (a renamed group without a ref
    is a new group here, and its members do not show in the change log)."""
    wanted = [(g, u) for g, units in members.items() for u in units]
    if not wanted:
        return 0
    keys = {group_identity(r.source_ref, r.name): r.group_key for r in conn.execute(
        text("SELECT group_key, source_ref, name FROM org_unit_group WHERE version_id = :v"),
        {"v": version_id})}
    units: dict[str, int] = {r[0]: r[1] for r in conn.execute(
        text("SELECT uuid, unit_key FROM org_unit WHERE version_id = :v"), {"v": version_id})}
    have: set[tuple[int, int]] = {(r[0], r[1]) for r in conn.execute(
        text("SELECT group_key, unit_key FROM group_membership WHERE version_id = :v"),
        {"v": version_id})}
    rows = [{"v": version_id, "g": keys[g], "u": units[u]} for g, u in wanted
            if g in keys and u in units and (keys[g], units[u]) not in have]
    if rows:
        conn.execute(text("INSERT INTO group_membership (version_id, group_key, unit_key) "
                          "VALUES (:v, :g, :u)"), rows)
    return len(rows)


def _new_groups(conn: Connection, version_id: int, want: GroupSnapshot) -> set[str]:
    return set(want.groups) - set(_groups(conn, version_id).groups)


def _apply_groups(
    conn: Connection, version_id: int, want: GroupSnapshot, *, delete_extra: bool
) -> int:
    """Make the groups and group sets of ``version_id`` match ``want``; returns changes."""
    have = _groups(conn, version_id)
    changed = 0
    for ident, row in want.groups.items():
        params = _strip(row) | {"v": version_id}
        if ident not in have.groups:
            conn.execute(
                text(
                    "INSERT INTO org_unit_group (version_id, source_ref, name, short_name, code) "
                    "VALUES (:v, :source_ref, :name, :short_name, :code)"
                ),
                params,
            )
            changed += 1
        elif _strip(have.groups[ident]) != _strip(row):
            conn.execute(
                text(
                    "UPDATE org_unit_group SET source_ref = :source_ref, name = :name, "
                    "short_name = :short_name, code = :code WHERE version_id = :v "
                    "AND group_key = :k"
                ),
                params | {"k": have.groups[ident]["key"]},
            )
            changed += 1
    for ident, row in want.sets.items():
        params = _strip(row) | {"v": version_id}
        if ident not in have.sets:
            conn.execute(
                text(
                    "INSERT INTO group_set (version_id, source_ref, name, short_name, belonging, "
                    "compulsory) VALUES (:v, :source_ref, :name, :short_name, :belonging, "
                    ":compulsory)"
                ),
                params,
            )
            changed += 1
        elif _strip(have.sets[ident]) != _strip(row):
            conn.execute(
                text(
                    "UPDATE group_set SET source_ref = :source_ref, name = :name, "
                    "short_name = :short_name, belonging = :belonging, compulsory = :compulsory "
                    "WHERE version_id = :v AND set_key = :k"
                ),
                params | {"k": have.sets[ident]["key"]},
            )
            changed += 1
    if delete_extra:
        for ident in set(have.sets) - set(want.sets):
            conn.execute(
                text("DELETE FROM group_set WHERE version_id = :v AND set_key = :k"),
                {"v": version_id, "k": have.sets[ident]["key"]},
            )
            changed += 1
        for ident in set(have.groups) - set(want.groups):
            conn.execute(
                text("DELETE FROM org_unit_group WHERE version_id = :v AND group_key = :k"),
                {"v": version_id, "k": have.groups[ident]["key"]},
            )
            changed += 1
    now = _groups(conn, version_id)
    wanted_members = {m for m in want.set_members if m[0] in now.sets and m[1] in now.groups}
    for s, g in wanted_members - now.set_members:
        conn.execute(
            text(
                "INSERT INTO group_set_member (version_id, set_key, group_key) VALUES (:v, :s, :g)"
            ),
            {"v": version_id, "s": now.sets[s]["key"], "g": now.groups[g]["key"]},
        )
        changed += 1
    if delete_extra:
        for s, g in now.set_members - wanted_members:
            conn.execute(
                text(
                    "DELETE FROM group_set_member WHERE version_id = :v AND set_key = :s "
                    "AND group_key = :g"
                ),
                {"v": version_id, "s": now.sets[s]["key"], "g": now.groups[g]["key"]},
            )
            changed += 1
    return changed


# --- units: read on one side, write on the other -------------------------------------------


@dataclass
class Unit:
    """A unit's state as it travels between registries (identities, not row ids)."""

    uuid: str
    depth: int
    values: dict[str, Any]
    fid: int | None = None
    unit_key: int | None = None
    path: str | None = None
    territory: BaseGeometry | None = None
    groups: set[str] | None = None
    #: ``canon("location", …)``, when already computed for a whole batch (``_canon_locations``)
    location_wkb: str | None = None
    location_ready: bool = False

    def compared(self) -> dict[str, Any]:
        out = {k: canon(k, self.values.get(k)) for k in FIELDS if k != "location"}
        out["location"] = self.location_wkb if self.location_ready else canon(
            "location", self.values.get("location"))
        out["territory"] = canon("territory", self.territory)
        out["groups"] = canon("groups", self.groups)
        return out


def _canon_locations(units: Iterable[Unit]) -> None:
    """``canon("location", …)`` of many units in one vectorised call (the units' compare
    is otherwise one WKB encoding per unit and side)."""
    todo = [u for u in units if not u.location_ready]
    if not todo:
        return
    geoms = np.asarray([u.values.get("location") for u in todo], dtype=object)
    present = shapely.is_geometry(geoms) & ~shapely.is_empty(geoms)
    hexes = np.full(len(todo), None, dtype=object)
    if present.any():
        hexes[present] = shapely.to_wkb(geoms[present], hex=True, byte_order=1, flavor="iso")
    for u, value in zip(todo, hexes, strict=True):
        u.location_wkb = None if value is None else str(value)
        u.location_ready = True


def _unit_sql(reg: Registry) -> str:
    loc = geometry.select_sql(reg.backend, "u.location")
    return (
        "SELECT u.fid, u.uuid, u.unit_key, u.path, u.depth, u.source_ref, u.name, u.code, "
        "t.name AS type_name, u.validation_status, u.opening_date, u.closed_date, u.aliases, "
        f"u.extra_fields, {loc} AS location, p.uuid AS parent_uuid FROM org_unit u "
        "LEFT JOIN org_unit_type t ON t.fid = u.type_id LEFT JOIN org_unit p ON "
        "p.version_id = u.version_id AND p.unit_key = u.parent_key WHERE u.version_id = :v"
    )


def _to_unit(reg: Registry, r: Any) -> Unit:
    values = {
        "source_ref": r.source_ref,
        "name": r.name,
        "code": r.code,
        "type": r.type_name,
        "validation_status": r.validation_status,
        "opening_date": _date(r.opening_date),
        "closed_date": _date(r.closed_date),
        "aliases": _json(r.aliases),
        "extra_fields": _json(r.extra_fields),
        "parent_uuid": r.parent_uuid,
        "location": r.location,  # decoded for the whole batch by _decode_locations
    }
    return Unit(r.uuid, int(r.depth or 0), values, r.fid, r.unit_key, r.path)


def _decode_locations(reg: Registry, units: list[Unit]) -> list[Unit]:
    """Raw location values of a batch → shapely points, in one vectorised call."""
    raw = [u.values["location"] for u in units]
    present = [i for i, value in enumerate(raw) if value is not None]
    if present:
        if reg.backend is Backend.GEOPACKAGE:
            wkbs = [geometry.gpkg_wkb(bytes(raw[i])) for i in present]
        else:
            wkbs = [bytes(raw[i]) for i in present]
        for i, geom in zip(present, shapely.from_wkb(wkbs), strict=True):
            units[i].values["location"] = geom
    return units


def read_units(
    reg: Registry,
    conn: Connection,
    version_id: int,
    *,
    uuids: Iterable[str] | None = None,
    after: tuple[int, int] | None = None,
    limit: int | None = None,
    territory_for: set[str] | None = None,
    groups_for: set[str] | None = None,
    everything: bool = False,
) -> list[Unit]:
    """Units of a version, parents before children (by depth, then row id).

    ``uuids`` picks units; else ``after``/``limit`` page through the whole version.
    Territories and group memberships are read for the uuids in ``territory_for`` /
    ``groups_for`` (or for all with ``everything``).
    """
    units: list[Unit] = []
    base = _unit_sql(reg)
    if uuids is not None:
        units = [_to_unit(reg, r) for r in _in_rows(conn, base + " AND u.uuid IN :u", "u",
                                                     uuids, {"v": version_id})]
        units.sort(key=lambda u: (u.depth, u.fid or 0))
        _decode_locations(reg, units)
    else:
        sql = base
        params: dict[str, Any] = {"v": version_id}
        if after is not None:
            sql += " AND (u.depth > :d OR (u.depth = :d AND u.fid > :f))"
            params |= {"d": after[0], "f": after[1]}
        sql += " ORDER BY u.depth, u.fid"
        if limit:
            sql += f" LIMIT {int(limit)}"
        units = _decode_locations(reg, [_to_unit(reg, r) for r in conn.execute(text(sql), params)])
    want_ter = [u for u in units if everything or (territory_for and u.uuid in territory_for)]
    if want_ter:
        sel = geometry.select_sql(reg.backend, "territory")
        by_fid = {u.fid: u for u in want_ter}
        for fid, geom in _in_rows(
                conn, f"SELECT unit_fid, {sel} FROM org_unit_territory WHERE unit_fid IN :f",
                "f", by_fid):
            by_fid[fid].territory = geometry.decode(reg.backend, geom)
    want_groups = [u for u in units if everything or (groups_for and u.uuid in groups_for)]
    if want_groups:
        by_key = {u.unit_key: u for u in want_groups}
        for u in want_groups:
            u.groups = set()
        for key, ref, name in _in_rows(
                conn,
                "SELECT m.unit_key, g.source_ref, g.name FROM group_membership m "
                "JOIN org_unit_group g ON g.version_id = m.version_id "
                "AND g.group_key = m.group_key WHERE m.version_id = :v AND m.unit_key IN :k",
                "k", by_key, {"v": version_id}):
            groups = by_key[key].groups
            assert groups is not None
            groups.add(group_identity(ref, name))
    return units


def _existing_uuids(conn: Connection, version_id: int, uuids: Iterable[str]) -> set[str]:
    return {r[0] for r in _in_rows(
        conn, "SELECT uuid FROM org_unit WHERE version_id = :v AND uuid IN :u", "u", uuids,
        {"v": version_id})}
