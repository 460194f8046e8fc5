"""Push a registry to a central PostGIS schema, and pull the central changes back.

The central side is an ordinary Georeg registry (created through the storage layer
with ``Registry.create`` on ``postgresql://…?schema=S``), so its own triggers keep
paths right, refuse edits of published versions and log every change — with origin
``sync`` and an operation id ``push:<client>:…`` for ours, so they are never
mistaken for edits made there.  A version sent whole into an empty central version is
the exception: it is COPYed with the row triggers off and logged as one ``version`` row
(``PUSH_OP``, with counts), as a version copy is — the units' history is in the pushing
registry; pulls and conflict checks read that row as a change of every unit of it.

Identity across registries (row ids and unit keys are local to each registry):

* a **source** by its name, a **version** by (source name, version number);
* a **unit** by its uuid within its version; its parent by the parent's uuid;
* a **type** by its name; a **group** (or group set) by its source ref, or by its
  name when it has none; a membership by (group identity, unit uuid).

What a push sends is found in the local ``change_log`` (``fid > sync_state.
last_change_id``); what is sent is the unit's *current* state (state-based, not a
replay), written with upserts keyed on those identities.  Sending a state twice
changes nothing, which is what makes an interrupted push safe: the remote batch
commits first, the local marker second, so after a ``kill -9`` the next push sends
at most one batch again.  Versions never pushed before are sent whole, in batches
ordered by depth (parents first) with a resume cursor.

A pull reads the central ``change_log`` after ``sync_state.last_pull_marker``,
skipping our own pushes.  A unit changed on both sides since the last sync is a
**conflict**: it is reported field by field (local value, central value) and
nothing is changed for it — on pull, and on push too (the unit is *held* and sent
again by later pushes until the two sides agree, or until ``prefer`` says which
side wins).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import json
import re
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import psycopg
import shapely
from psycopg.copy import QueuedLibpqWriter
from shapely.geometry.base import BaseGeometry
from sqlalchemy import Connection, bindparam, create_engine, exc, text

from storage import audit_sql, geometry
from storage.backends import Backend, Location, is_pg_url, join_pg_url, split_pg_url
from storage.errors import (
    Cancelled,
    ConflictError,
    GeoregError,
    InvalidInput,
    NotFound,
    RegistryNotFound,
)
from storage.jobs import Job, gc_paused
from storage.registry import Registry, json_value
from sync.postgis_copytext import (
    _AFTER,
    _COPY_CHUNK,
    _DEPTH,
    _FID,
    _GEOM,
    _NULL,
    _ODD,
    _PKEY,
    _REST,
    _UKEY,
    _UNIT_COPY,
    _UPTO,
    _UUID,
    _copy_geometry,
    _copy_text,
    _ewkb_from,
    _fetch,
    _local_lines,
    _stream,
)

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
CONNECT_TIMEOUT = 10
_IN_CHUNK = 900
#: from this many new units in one batch, PostgreSQL receives them by COPY
COPY_FROM = 200
MAX_LISTED = 200
#: the central change-log ``op`` of a version sent whole into an empty central version:
#: one ``entity = 'version'`` row per COPY batch instead of one row per unit (the units'
#: own history stays in the pushing registry; see docs/sync-postgis.md, "Change log")
PUSH_OP = "push"


class UpstreamUnavailable(GeoregError):
    """The central database cannot be reached (down, wrong address, refused)."""

    code = "upstream_unavailable"
    exit_code = 1
    http_status = 502


ProgressFn = Callable[[dict[str, Any]], None]


# --- locations -----------------------------------------------------------------------


def central_location(url: str, schema: str | None = None) -> str:
    """``url`` with ``schema`` put into its query (``?schema=S``) and a connect timeout."""
    if not is_pg_url(url):
        raise InvalidInput(
            f"--url {url!r} is not a PostgreSQL URL (postgresql://user@host:port/database)."
        )
    parts = split_pg_url(url)
    query = dict(parse_qsl(parts.query))
    if schema:
        query["schema"] = schema
    query.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    # TCP keepalives: a long push keeps one connection idle (the lock's); firewalls and
    # NAT routers drop connections silent for a few minutes
    for name, value in (("keepalives", "1"), ("keepalives_idle", "60"),
                        ("keepalives_interval", "10"), ("keepalives_count", "6")):
        query.setdefault(name, value)
    return join_pg_url(parts.scheme, parts, query)


def target_name(location: str) -> str:
    """The stable name of a central schema in ``sync_state`` (no user, no password)."""
    loc = Location.parse(location)
    parts = urlsplit(loc.url or "")
    query = dict(parse_qsl(parts.query))  # postgresql:///db?host=…&port=… names it there
    host = parts.hostname or query.get("host") or "localhost"
    port = parts.port or query.get("port")
    return f"postgis://{host}{f':{port}' if port else ''}{parts.path}?schema={loc.schema}"


def _short(target: str) -> str:
    return hashlib.sha1(target.encode()).hexdigest()[:12]


def _probe(location: str) -> tuple[bool, bool]:
    """(schema exists, holds a registry) — and a clear error when unreachable."""
    loc = Location.parse(location)
    engine = create_engine(loc.url or "", future=True)
    try:
        with engine.connect() as conn:
            schema = conn.execute(
                text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :s"),
                {"s": loc.schema},
            ).first()
            reg = conn.execute(
                text("SELECT to_regclass(format('%I.georeg_schema_version', CAST(:s AS text)))"),
                {"s": loc.schema},
            ).scalar()
            return schema is not None, reg is not None
    except exc.DBAPIError as error:
        msg = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        if re.search(r"password authentication failed|role .* does not exist|"
                     r"database .* does not exist|no pg_hba.conf entry|permission denied",
                     msg):
            raise InvalidInput(f"{loc.display()} refused the connection: {msg}") from error
        raise UpstreamUnavailable(f"Cannot reach {loc.display()}: {msg}") from error
    finally:
        engine.dispose()


def open_central(location: str, *, create: bool) -> tuple[Registry, bool]:
    """The central registry (upgraded to this schema version); (registry, created now)."""
    _schema, has_registry = _probe(location)
    if has_registry:
        return Registry.open(location), False
    if not create:
        raise RegistryNotFound(
            f"{Location.parse(location).display()} holds no registry yet: push to it first."
        )
    return Registry.create(location), True


@contextmanager
def exclusive(central: Registry, client: str) -> Iterator[None]:
    """One push or pull at a time per registry and central schema (a session-level
    advisory lock: a killed process releases it with its connection)."""
    key = int(hashlib.sha1(f"georeg-sync:{client}".encode()).hexdigest()[:15], 16)
    conn = central.engine.connect()
    try:
        # the lock's connection is idle for the whole push: a DBA's idle_session_timeout
        # (PostgreSQL 14+) would end it — and the lock with it — half-way
        conn.execute(text("SELECT set_config(name, '0', false) FROM pg_settings "
                          "WHERE name = 'idle_session_timeout'"))
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        conn.commit()
        if not got:
            raise ConflictError(
                "Another push or pull between this registry and the central schema is "
                "running; try again when it has finished."
            )
        try:
            yield
        finally:
            # a connection cut meanwhile (a firewall dropping idle connections) took the
            # lock with it: nothing to release, and the work done stands
            with contextlib.suppress(exc.DBAPIError):
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    finally:
        with contextlib.suppress(exc.DBAPIError):
            conn.close()


# --- local bookkeeping --------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class SyncState:
    """One ``sync_state`` row: what was pushed to / pulled from one target."""

    target: str
    kind: str = "postgis"
    last_change_id: int | None = None
    last_pull_marker: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    updated_at: str | None = None
    exists: bool = False

    @classmethod
    def load(cls, reg: Registry, target: str) -> SyncState:
        with reg.read() as conn:
            row = conn.execute(
                text(
                    "SELECT kind, last_change_id, last_pull_marker, details, updated_at "
                    "FROM sync_state WHERE target = :t"
                ),
                {"t": target},
            ).first()
        if row is None:
            return cls(target)
        return cls(target, row[0], row[1], row[2], json_value(row[3]) or {}, row[4], True)

    def save(self, reg: Registry) -> None:
        now = _now()
        params: dict[str, Any] = {
            "t": self.target,
            "k": self.kind,
            "c": self.last_change_id,
            "m": self.last_pull_marker,
            "d": json.dumps(self.details, ensure_ascii=False, default=str),
            "u": now,
        }
        with reg.write(origin=SYNC_ORIGIN, audit=False) as conn:
            if self.exists:
                conn.execute(
                    text(
                        "UPDATE sync_state SET kind = :k, last_change_id = :c, "
                        "last_pull_marker = :m, details = :d, updated_at = :u WHERE target = :t"
                    ),
                    params,
                )
            else:
                conn.execute(
                    text(
                        "INSERT INTO sync_state (target, kind, last_change_id, last_pull_marker, "
                        "details, updated_at) VALUES (:t, :k, :c, :m, :d, :u)"
                    ),
                    params,
                )
                self.exists = True
        self.updated_at = now

    @property
    def client_id(self) -> str:
        if "client_id" not in self.details:
            self.details["client_id"] = uuidlib.uuid4().hex[:16]
        return str(self.details["client_id"])

    @property
    def versions(self) -> dict[str, Any]:
        return self.details.setdefault("versions", {})  # type: ignore[no-any-return]

    @property
    def held(self) -> set[tuple[int, str]]:
        return {(int(v), str(u)) for v, u in self.details.get("held", [])}

    @held.setter
    def held(self, value: set[tuple[int, str]]) -> None:
        self.details["held"] = sorted([v, u] for v, u in value)


def sync_states(reg: Registry) -> list[dict[str, Any]]:
    with reg.read() as conn:
        rows = conn.execute(
            text(
                "SELECT target, kind, last_change_id, last_pull_marker, updated_at, details "
                "FROM sync_state ORDER BY target"
            )
        ).all()
    out = []
    for r in rows:
        details = json_value(r.details) or {}
        out.append(
            {
                "target": r.target,
                "kind": r.kind,
                "last_change_id": r.last_change_id,
                "last_pull_marker": r.last_pull_marker,
                "updated_at": r.updated_at,
                "held": len(details.get("held", [])),
                "resuming": details.get("cursor") is not None,
                "last_push": details.get("last_push"),
                "last_pull": details.get("last_pull"),
            }
        )
    return out


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


@dataclass
class Figures:
    """What one push or pull sent and changed (shown to the user, kept in the history)."""

    units_sent: int = 0
    units_inserted: int = 0
    units_updated: int = 0
    units_moved: int = 0
    units_deleted: int = 0
    territories_sent: int = 0
    territories_changed: int = 0
    memberships_sent: int = 0
    memberships_added: int = 0
    memberships_removed: int = 0
    groups_changed: int = 0
    types_changed: int = 0
    versions_created: int = 0
    versions_updated: int = 0
    versions_published: int = 0
    versions_deleted: int = 0
    batches: int = 0
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        # a unit held in one phase of a push (a version sent whole) is looked at again
        # in the next (held units): one row per unit and field
        conflicts = list({(c["source"], c["version"], c["uuid"], c["field"]): c
                          for c in self.conflicts}.values())
        out["conflicts"] = conflicts[:MAX_LISTED]
        out["conflict_count"] = len(conflicts)
        out["conflicting_units"] = len({(c["source"], c["version"], c["uuid"])
                                        for c in conflicts})
        out["refused"] = self.refused[:MAX_LISTED]
        out["warnings"] = self.warnings[:MAX_LISTED]
        return out


class UnitWriter:
    """Upserts units into one version of a registry, inside an open write transaction."""

    def __init__(self, reg: Registry, conn: Connection, version_id: int, figures: Figures):
        self.reg = reg
        self.conn = conn
        self.version_id = version_id
        self.fig = figures
        self.backend = reg.backend
        #: (unit_key, path, depth) of units looked up by ``present``
        self._known: dict[str, tuple[int, str, int]] = {}
        self._types: dict[str, int] = {
            r.name: r.fid for r in conn.execute(text("SELECT fid, name FROM org_unit_type"))
        }
        loc = geometry.bind_sql(self.backend, "location")
        self._insert = text(
            "INSERT INTO org_unit (fid, location, version_id, unit_key, uuid, source_ref, name, "
            "code, type_id, parent_key, path, depth, validation_status, opening_date, "
            "closed_date, aliases, extra_fields) VALUES (:fid, "
            f"{loc}, :v, :fid, :uuid, :source_ref, :name, :code, :type_id, :parent_key, :path, "
            ":depth, :validation_status, :opening_date, :closed_date, :aliases, :extra_fields)"
        )
        self._update = text(
            f"UPDATE org_unit SET location = {loc}, source_ref = :source_ref, name = :name, "
            "code = :code, type_id = :type_id, validation_status = :validation_status, "
            "opening_date = :opening_date, closed_date = :closed_date, aliases = :aliases, "
            "extra_fields = :extra_fields WHERE fid = :fid"
        )

    # ids and types
    def _next_fids(self, n: int) -> list[int]:
        if n == 0:
            return []
        if self.backend.is_sqlite:
            start = self.conn.execute(
                text(
                    "SELECT max(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'org_unit'),"
                    " 0), COALESCE((SELECT max(fid) FROM org_unit), 0)) + 1"
                )
            ).scalar_one()
            return list(range(int(start), int(start) + n))
        return [int(r) for r in self.conn.execute(
            text("SELECT nextval('org_unit_fid_seq') FROM generate_series(1, :n)"), {"n": n}
        ).scalars()]

    def _type_id(self, name: str | None) -> int | None:
        if not name:
            return None
        if name not in self._types:
            self._types[name] = int(self.conn.execute(
                text("INSERT INTO org_unit_type (name) VALUES (:n) RETURNING fid"), {"n": name}
            ).scalar_one())
        return self._types[name]

    def _params(self, u: Unit, with_location: bool = True) -> dict[str, Any]:
        val = u.values
        return {
            "v": self.version_id,
            "uuid": u.uuid,
            "source_ref": val["source_ref"],
            "name": val["name"],
            "code": val["code"],
            "type_id": self._type_id(val["type"]),
            "validation_status": val["validation_status"] or "valid",
            "opening_date": val["opening_date"],
            "closed_date": val["closed_date"],
            "aliases": None if val["aliases"] is None
            else json.dumps(val["aliases"], ensure_ascii=False),
            "extra_fields": None if val["extra_fields"] is None
            else json.dumps(val["extra_fields"], ensure_ascii=False),
            "location": geometry.encode(self.backend, val["location"]) if with_location
            else None,
        }

    def _tree_info(self, uuids: Iterable[str]) -> dict[str, tuple[int, str, int]]:
        return {r.uuid: (int(r.unit_key), r.path, int(r.depth)) for r in _in_rows(
            self.conn, "SELECT uuid, unit_key, path, depth FROM org_unit WHERE version_id = :v "
            "AND uuid IN :u", "u", uuids, {"v": self.version_id})}

    def present(self, uuids: set[str]) -> set[str]:
        """Which of ``uuids`` exist on this side; their keys and paths are kept for the
        upsert that follows in the same transaction (the parents it needs: one lookup)."""
        info = self._tree_info(uuids)
        self._known.update(info)
        return set(info)

    # the upsert
    def upsert(
        self,
        units: list[Unit],
        *,
        territory_for: set[str] | None = None,
        groups_for: set[str] | None = None,
        everything: bool = False,
        fresh: bool = False,
        releasable: Callable[[dict[str, str]], set[str]] | None = None,
    ) -> None:
        """Insert or update ``units`` (read from the other side, parents first).

        ``fresh``: the version was created on this side by this run, so none of these
        units can exist here yet (saves looking them up).  ``releasable``: given the
        units here that hold a ref one of ``units`` takes ({uuid: ref}), which of them
        the other side has deleted or re-referenced (``_released_on``) — those let go of
        their refs first.
        """
        if not units:
            return
        fig = self.fig
        fig.units_sent += len(units)
        uuids = {u.uuid for u in units}
        if not fresh and releasable is not None:
            self._free_refs(units, releasable)
        # territories and memberships are compared only where asked for (new units get
        # theirs whole)
        existing = {} if fresh else {
            u.uuid: u
            for u in read_units(self.reg, self.conn, self.version_id, uuids=uuids,
                                territory_for=uuids if everything else territory_for,
                                groups_for=uuids if everything else groups_for)
        }
        parents = {u.values["parent_uuid"] for u in units if u.values["parent_uuid"]}
        tree = {u.uuid: (int(u.unit_key or 0), u.path or "", u.depth)
                for u in existing.values()}
        wanted = parents - set(tree)
        tree |= {p: self._known[p] for p in wanted if p in self._known}
        tree |= self._tree_info(wanted - set(tree))
        new = [u for u in units if u.uuid not in existing]
        fids = self._next_fids(len(new))
        copy = self.backend is Backend.POSTGIS and len(new) >= COPY_FROM
        rows = []
        for u, fid in zip(new, fids, strict=True):
            parent = u.values["parent_uuid"]
            if parent is None:
                path, depth, parent_key = f"/{fid}/", 1, None
            elif parent in tree:
                parent_key, ppath, pdepth = tree[parent]
                path, depth = f"{ppath}{fid}/", pdepth + 1
            else:
                raise ConflictError(
                    f"Unit {u.values['name']!r} ({u.uuid}): its parent {parent} is on neither "
                    "side of the sync; nothing was written for this batch."
                )
            tree[u.uuid] = (fid, path, depth)
            u_row = self._params(u, not copy) | {"fid": fid, "parent_key": parent_key,
                                                 "path": path, "depth": depth}
            rows.append(u_row)
            existing_new = Unit(u.uuid, depth, u.values, fid, fid, path, None, set())
            existing[u.uuid] = existing_new
        copied: set[str] = set()
        if copy:
            self._copy_new(new, rows)
            copied = {u.uuid for u in new}
        elif rows:
            self.conn.execute(self._insert, rows)
        fig.units_inserted += len(rows)
        inserted = {u.uuid for u in new}
        _canon_locations(itertools.chain.from_iterable(
            (u, existing[u.uuid]) for u in units if u.uuid not in inserted))
        updates, moves = [], []
        for u in units:
            if u.uuid in inserted:
                continue
            old = existing[u.uuid]
            mine, theirs = u.compared(), old.compared()
            if any(mine[k] != theirs[k] for k in FIELDS if k != "parent_uuid"):
                updates.append(self._params(u, False) | {"fid": old.fid, "_unit": u})
            if mine["parent_uuid"] != theirs["parent_uuid"]:
                moves.append(u)
        if updates:
            geoms = [row.pop("_unit").values["location"] for row in updates]
            blobs = (_wkb_many(geoms) if self.backend is Backend.POSTGIS
                     else [geometry.encode(self.backend, g) for g in geoms])
            for row, blob in zip(updates, blobs, strict=True):
                row["location"] = blob
            if self.backend is Backend.POSTGIS:
                self._update_set(updates)
            else:
                self.conn.execute(self._update, updates)
            fig.units_updated += len(updates)
        moved: list[dict[str, Any]] = []
        for u in sorted(moves, key=lambda m: m.depth):
            parent = u.values["parent_uuid"]
            if parent is not None and parent not in tree:
                raise ConflictError(
                    f"Unit {u.values['name']!r} ({u.uuid}) moves under {parent}, which is "
                    "missing on the receiving side."
                )
            moved.append({"p": tree[parent][0] if parent else None, "f": existing[u.uuid].fid})
        if moved:
            paths = [str(existing[u.uuid].path or "") for u in sorted(moves, key=lambda m: m.depth)]
            targets = [tree[u.values["parent_uuid"]][1] for u in moves if u.values["parent_uuid"]]
            if self.backend is Backend.POSTGIS and _apart(paths, targets):
                # no moved unit is below another or below a new parent: each move's
                # subtree update is independent of the others, so one statement moves all
                self.conn.execute(
                    text("UPDATE org_unit u SET parent_key = n.p FROM unnest(CAST(:p AS bigint[]), "
                         "CAST(:f AS bigint[])) AS n(p, f) WHERE u.fid = n.f"),
                    {"p": [m["p"] for m in moved], "f": [m["f"] for m in moved]})
            else:  # one statement per move, in this order, sent together
                self.conn.execute(text("UPDATE org_unit SET parent_key = :p WHERE fid = :f"),
                                  moved)
            fig.units_moved += len(moved)
        ter = [u for u in units if u.uuid not in copied and (
            everything or u.uuid in inserted
            or (territory_for is not None and u.uuid in territory_for))]
        self._territories(ter, existing)
        grp = [u for u in units if u.uuid not in copied and (
            everything or u.uuid in inserted
            or (groups_for is not None and u.uuid in groups_for))]
        self._memberships(grp, existing)

    def _free_refs(self, units: list[Unit],
                   releasable: Callable[[dict[str, str]], set[str]]) -> None:
        """Refs these units take from other units here let go of first.

        A unit deleted and made again with the same DHIS2 id, two units swapping refs, a
        feature deleted and digitised again in QGIS: a version's refs are unique after
        every statement, not only at the end, so writing the new holder first failed —
        in every push (or pull) after it.  A holder the other side has deleted or given
        another ref has its ref cleared now (logged like any change).  A holder the
        other side never had is another registry's unit: that stops the batch."""
        wanted = {str(u.values["source_ref"]): u for u in units if u.values.get("source_ref")}
        if not wanted:
            return
        holders = {uuid: str(ref) for uuid, ref in _in_rows(
            self.conn, "SELECT uuid, source_ref FROM org_unit WHERE version_id = :v "
            "AND source_ref IN :r", "r", wanted, {"v": self.version_id})
            if wanted[str(ref)].uuid != uuid}
        if not holders:
            return
        free = releasable(holders)
        stuck = sorted(set(holders) - free)
        if stuck:
            ref = holders[stuck[0]]
            raise ConflictError(
                f"Unit {wanted[ref].values['name']!r} ({wanted[ref].uuid}) has ref {ref}, "
                f"which unit {stuck[0]} holds on the receiving side — a unit the sending "
                f"side never had{f' (and {len(stuck) - 1} more like it)' if len(stuck) > 1 else ''}"
                ". Is another registry pushing the same source and version to this schema? "
                "Each registry needs a schema of its own. If the two units are one (made "
                "twice, once on each side), push with --prefer-local (or pull with "
                "--prefer-central) to let the sending side's unit have the ref. Nothing of "
                "this batch was written.")
        stmt = text("UPDATE org_unit SET source_ref = NULL WHERE version_id = :v "
                    "AND uuid IN :u").bindparams(bindparam("u", expanding=True))
        for part in _chunks(sorted(free)):
            self.conn.execute(stmt, {"v": self.version_id, "u": part})

    #: (column, PostgreSQL type) of the set-wise update of units
    _SET_COLUMNS = (("fid", "bigint"), ("location", "bytea"), ("source_ref", "text"),
                    ("name", "text"), ("code", "text"), ("type_id", "bigint"),
                    ("validation_status", "text"), ("opening_date", "date"),
                    ("closed_date", "date"), ("aliases", "jsonb"), ("extra_fields", "jsonb"))

    def _update_set(self, updates: list[dict[str, Any]]) -> None:
        """PostgreSQL: every update in one statement — the rows travel as arrays
        (``unnest``).  The central ``org_unit`` triggers are statement-level (migration
        0006): one published-version check, one ``INSERT … SELECT`` into the change log
        (before/after, only for units whose values changed) and one territory-name
        update for the whole statement, so the pusher leaves the logging to them."""
        cols = self._SET_COLUMNS
        sets = ", ".join(
            f"{c} = ST_GeomFromWKB(n.{c}, {geometry.SRID})" if c == "location" else f"{c} = n.{c}"
            for c, _t in cols if c != "fid")
        arrays = ", ".join(f"CAST(:{c} AS {t}[])" for c, t in cols)
        names = ", ".join(c for c, _t in cols)
        self.conn.execute(
            text(f"UPDATE org_unit u SET {sets} FROM unnest({arrays}) AS n({names}) "
                 "WHERE u.fid = n.fid"),
            {c: [row[c] for row in updates] for c, _t in cols})

    def _copy_new(self, new: list[Unit], rows: list[dict[str, Any]]) -> None:
        """Many new units on PostgreSQL: COPY them (with their territories and memberships)
        with the per-row audit off, then write the same change-log rows set-wise — as
        ``storage.bulk`` does for imports."""
        conn, fig, v = self.conn, self.fig, self.version_id
        self.reg.set_audit(conn, False)
        keys = self._group_keys()
        raw = conn.connection.driver_connection
        assert raw is not None
        territories: list[tuple[Any, ...]] = []
        members: list[tuple[Any, ...]] = []
        locations = _ewkb_many([u.values["location"] for u in new])
        with raw.cursor() as cur:
            with cur.copy(
                "COPY org_unit (fid, location, version_id, unit_key, uuid, source_ref, name, "
                "code, type_id, parent_key, path, depth, validation_status, opening_date, "
                "closed_date, aliases, extra_fields) FROM STDIN"
            ) as copy:
                for u, r, loc in zip(new, rows, locations, strict=True):
                    copy.write_row((
                        r["fid"], loc, v, r["fid"], r["uuid"],
                        r["source_ref"], r["name"], r["code"], r["type_id"], r["parent_key"],
                        r["path"], r["depth"], r["validation_status"], r["opening_date"],
                        r["closed_date"], r["aliases"], r["extra_fields"],
                    ))
                    if u.territory is not None and not u.territory.is_empty:
                        territories.append((_ewkb(geometry.as_multipolygon(u.territory)),
                                            r["fid"], v, r["name"]))
                    if u.groups:
                        fig.memberships_sent += 1
                        for ident in sorted(u.groups):
                            if ident in keys:
                                members.append((v, keys[ident], r["fid"]))
                            else:
                                fig.warnings.append(
                                    f"Unit {r['name']!r}: group {ident} does not exist on the "
                                    "receiving side; membership left out.")
            if territories:
                with cur.copy("COPY org_unit_territory (territory, unit_fid, version_id, name) "
                              "FROM STDIN") as copy:
                    for row in territories:
                        copy.write_row(row)
            if members:
                with cur.copy("COPY group_membership (version_id, group_key, unit_key) "
                              "FROM STDIN") as copy:
                    for row in members:
                        copy.write_row(row)
        fig.territories_sent += len(territories)
        fig.territories_changed += len(territories)
        fig.memberships_added += len(members)
        fids = [r["fid"] for r in rows]
        _join, ctx = audit_sql.context_columns(Backend.POSTGIS)
        cols = audit_sql.LOG_COLUMNS
        conn.execute(text(
            f"INSERT INTO change_log ({cols}) SELECT u.version_id, 'org_unit', 'insert', u.uuid, "
            f"u.unit_key, u.fid, NULL, {audit_sql.unit_json(Backend.POSTGIS, 'u')}, {ctx} "
            "FROM org_unit u WHERE u.fid = ANY(:f) ORDER BY u.fid"), {"f": fids})
        if territories:
            conn.execute(text(
                f"INSERT INTO change_log ({cols}) SELECT u.version_id, 'territory', 'insert', "
                f"u.uuid, u.unit_key, t.fid, NULL, "
                f"{audit_sql.territory_json(Backend.POSTGIS, 't')}, {ctx} "
                "FROM org_unit_territory t JOIN org_unit u ON u.fid = t.unit_fid "
                "WHERE t.unit_fid = ANY(:f) ORDER BY t.fid"), {"f": fids})
        if members:
            conn.execute(text(
                f"INSERT INTO change_log ({cols}) SELECT m.version_id, 'group_membership', "
                "'insert', u.uuid, u.unit_key, m.fid, NULL, "
                f"jsonb_build_object('group_key', m.group_key, 'group', g.name), {ctx} "
                "FROM group_membership m JOIN org_unit u ON u.version_id = m.version_id "
                "AND u.unit_key = m.unit_key JOIN org_unit_group g ON g.version_id = "
                "m.version_id AND g.group_key = m.group_key WHERE m.version_id = :v "
                "AND m.unit_key = ANY(:f) ORDER BY m.fid"), {"v": v, "f": fids})
        self.reg.set_audit(conn, True)

    def _group_keys(self) -> dict[str, int]:
        return {
            group_identity(r.source_ref, r.name): r.group_key
            for r in self.conn.execute(
                text("SELECT group_key, source_ref, name FROM org_unit_group WHERE version_id = :v"),
                {"v": self.version_id},
            )
        }

    def _territories(self, units: list[Unit], existing: dict[str, Unit]) -> None:
        bind = geometry.bind_sql(self.backend, "g")
        for u in units:
            old = existing[u.uuid]
            want, have = _wkb(u.territory), _wkb(old.territory)
            if want is None and have is None:
                continue
            self.fig.territories_sent += 1
            if want == have:
                continue
            if want is None:
                self.conn.execute(
                    text("DELETE FROM org_unit_territory WHERE unit_fid = :f"), {"f": old.fid}
                )
            else:
                blob = geometry.encode(self.backend, geometry.as_multipolygon(u.territory))
                sql = (
                    f"UPDATE org_unit_territory SET territory = {bind} WHERE unit_fid = :f"
                    if have is not None
                    else f"INSERT INTO org_unit_territory (territory, unit_fid) VALUES ({bind}, :f)"
                )
                self.conn.execute(text(sql), {"g": blob, "f": old.fid})
            self.fig.territories_changed += 1

    def _memberships(self, units: list[Unit], existing: dict[str, Unit]) -> None:
        if not units:
            return
        keys = self._group_keys()
        add, remove = [], []
        for u in units:
            old = existing[u.uuid]
            want, have = set(u.groups or ()), set(old.groups or ())
            if not want and not have:
                continue
            self.fig.memberships_sent += 1
            for ident in sorted(want - have):
                if ident not in keys:
                    self.fig.warnings.append(
                        f"Unit {u.values['name']!r}: group {ident} does not exist on the "
                        "receiving side; membership left out."
                    )
                    continue
                add.append({"v": self.version_id, "g": keys[ident], "u": old.unit_key})
            for ident in sorted(have - want):
                remove.append({"v": self.version_id, "g": keys[ident], "u": old.unit_key})
        if add:
            self.conn.execute(
                text(
                    "INSERT INTO group_membership (version_id, group_key, unit_key) "
                    "VALUES (:v, :g, :u)"
                ),
                add,
            )
        if remove:
            self.conn.execute(
                text(
                    "DELETE FROM group_membership WHERE version_id = :v AND group_key = :g "
                    "AND unit_key = :u"
                ),
                remove,
            )
        self.fig.memberships_added += len(add)
        self.fig.memberships_removed += len(remove)

    def delete(self, uuids: Iterable[str]) -> None:
        wanted = sorted(set(uuids))
        if not wanted:
            return
        stmt = text("DELETE FROM org_unit WHERE version_id = :v AND uuid IN :u").bindparams(
            bindparam("u", expanding=True)
        )
        for part in _chunks(wanted):
            self.fig.units_deleted += self.conn.execute(
                stmt, {"v": self.version_id, "u": part}
            ).rowcount


def _released_on(reg: Registry, version_id: int, sender_wins: bool = False
                 ) -> Callable[[dict[str, str]], set[str]]:
    """For ``UnitWriter.upsert``: which holders of a ref ({uuid: ref} on the receiving
    side) the sending side ``reg`` has given another ref, or deleted (its change log
    says so) — as opposed to units it never had.  ``sender_wins`` (--prefer-local on a
    push, --prefer-central on a pull): all of them."""
    def released(holders: dict[str, str]) -> set[str]:
        if sender_wins:
            return set(holders)
        with reg.read() as conn:
            present = {r.uuid: r.source_ref for r in _in_rows(
                conn, "SELECT uuid, source_ref FROM org_unit WHERE version_id = :v "
                "AND uuid IN :u", "u", holders, {"v": version_id})}
            absent = set(holders) - set(present)
            deleted = {r.unit_uuid for r in _in_rows(
                conn, "SELECT DISTINCT unit_uuid FROM change_log WHERE version_id = :v "
                "AND entity = 'org_unit' AND op = 'delete' AND unit_uuid IN :u", "u", absent,
                {"v": version_id})} if absent else set()
        return {u for u, ref in present.items() if ref != holders[u]} | deleted
    return released


def _apart(moved: list[str], targets: list[str]) -> bool:
    """Whether no path in ``moved`` is an ancestor of another of them or of a path in
    ``targets`` (materialised paths ``/1/7/42/``; an empty path is unknown: not apart)."""
    if not all(moved):
        return False
    mine = set(moved)
    if len(mine) != len(moved):
        return False
    for path in [*moved, *targets]:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            if "/" + "/".join(parts[:i]) + "/" in mine:
                return False
    return not (set(targets) & mine)


def _wkb_many(geoms: list[BaseGeometry | None]) -> list[bytes | None]:
    """``geometry.encode`` (PostgreSQL, SpatiaLite: ISO WKB) of many geometries at once."""
    present = [i for i, g in enumerate(geoms) if g is not None]
    out: list[bytes | None] = [None] * len(geoms)
    if present:
        arr = np.asarray([geoms[i] for i in present], dtype=object)
        for i, value in zip(present, shapely.to_wkb(arr, byte_order=1, flavor="iso"), strict=True):
            out[i] = bytes(value)
    return out


def _ewkb_many(geoms: list[BaseGeometry | None]) -> list[str | None]:
    """Hex EWKB of many geometries at once (None stays None)."""
    present = [i for i, g in enumerate(geoms) if g is not None]
    out: list[str | None] = [None] * len(geoms)
    if present:
        arr = shapely.set_srid(np.asarray([geoms[i] for i in present], dtype=object),
                               geometry.SRID)
        for i, value in zip(present, shapely.to_wkb(arr, hex=True, byte_order=1,
                                                     include_srid=True), strict=True):
            out[i] = str(value)
    return out


def _ewkb(geom: BaseGeometry | None) -> str | None:
    """Hex EWKB with the SRID: what PostGIS reads from COPY."""
    if geom is None:
        return None
    return str(shapely.to_wkb(shapely.set_srid(geom, geometry.SRID), hex=True, byte_order=1,
                              include_srid=True))


def _close_ancestors(
    reg: Registry,
    conn: Connection,
    version_id: int,
    units: list[Unit],
    present_on_target: Callable[[set[str]], set[str]],
) -> list[Unit]:
    """Add the parents the receiving side lacks (e.g. a unit moved under a new unit)."""
    have = {u.uuid for u in units}
    while True:
        parents = {u.values["parent_uuid"] for u in units if u.values["parent_uuid"]} - have
        if not parents:
            break
        missing = parents - present_on_target(parents)
        if not missing:
            break
        extra = read_units(reg, conn, version_id, uuids=missing, everything=True)
        if not extra:
            break
        units = units + extra
        have |= {u.uuid for u in extra}
    units.sort(key=lambda u: (u.depth, u.fid or 0))
    return units


# --- version bookkeeping on the receiving side ---------------------------------------------


def _log_version(conn: Connection, pg: bool, version_id: int, op: str, after: dict[str, Any]
                 ) -> None:
    """One change-log row for a whole-version operation (as storage.versions writes it)."""
    if pg:
        conn.execute(
            text(
                "INSERT INTO change_log (version_id, entity, op, after, origin, author, operation) "
                "VALUES (:v, 'version', :op, CAST(:after AS jsonb), "
                "COALESCE(NULLIF(current_setting('georeg.origin', true), ''), 'external'), "
                "NULLIF(current_setting('georeg.author', true), ''), "
                "NULLIF(current_setting('georeg.operation', true), ''))"
            ),
            {"v": version_id, "op": op, "after": json.dumps(after)},
        )
    else:
        conn.execute(
            text(
                "INSERT INTO change_log (version_id, entity, op, after, origin, author, operation) "
                "SELECT :v, 'version', :op, :after, origin, author, operation FROM edit_context "
                "WHERE fid = 1"
            ),
            {"v": version_id, "op": op, "after": json.dumps(after)},
        )


def _ensure_version(conn: Connection, pg: bool, meta: dict[str, Any], fig: Figures
                    ) -> tuple[int, str]:
    """The receiving side's version for (source, number), created as a draft if missing."""
    src = conn.execute(
        text("SELECT fid FROM data_source WHERE name = :n"), {"n": meta["source"]}
    ).scalar()
    if src is None:
        src = conn.execute(
            text("INSERT INTO data_source (name, description) VALUES (:n, :d) RETURNING fid"),
            {"n": meta["source"], "d": meta.get("source_description")},
        ).scalar_one()
    row = conn.execute(
        text(
            "SELECT fid, status, description FROM source_version WHERE source_id = :s "
            "AND number = :n"
        ),
        {"s": src, "n": meta["number"]},
    ).first()
    if row is not None:
        if row.description != meta.get("description"):
            conn.execute(
                text("UPDATE source_version SET description = :d WHERE fid = :f"),
                {"d": meta.get("description"), "f": row.fid},
            )
            fig.versions_updated += 1
        return int(row.fid), str(row.status)
    copied = None
    if meta.get("copied_from") is not None:
        copied = conn.execute(
            text("SELECT fid FROM source_version WHERE source_id = :s AND number = :n"),
            {"s": src, "n": meta["copied_from"]},
        ).scalar()
    vid = int(conn.execute(
        text(
            "INSERT INTO source_version (source_id, number, description, copied_from_id, "
            "created_at, created_by) VALUES (:s, :n, :d, :c, :at, :by) RETURNING fid"
        ),
        {"s": src, "n": meta["number"], "d": meta.get("description"), "c": copied,
         "at": meta.get("created_at") or _now(), "by": meta.get("created_by")},
    ).scalar_one())
    _log_version(conn, pg, vid, "create", {"number": meta["number"], "synced": True})
    fig.versions_created += 1
    return vid, "draft"


def _publish(conn: Connection, pg: bool, version_id: int, meta: dict[str, Any]) -> None:
    conn.execute(
        text(
            "UPDATE source_version SET status = 'published', published_at = :at, "
            "published_by = :by WHERE fid = :v"
        ),
        {"v": version_id, "at": meta.get("published_at") or _now(),
         "by": meta.get("published_by")},
    )
    _log_version(conn, pg, version_id, "publish", {"number": meta["number"], "synced": True})


def _set_defaults(conn: Connection, versions: list[dict[str, Any]]) -> int:
    changed = 0
    for meta in versions:
        src = conn.execute(
            text("SELECT fid, description, default_version_id FROM data_source WHERE name = :n"),
            {"n": meta["source"]},
        ).first()
        if src is None:
            continue
        if src.description != meta.get("source_description"):
            conn.execute(text("UPDATE data_source SET description = :d WHERE fid = :f"),
                         {"d": meta.get("source_description"), "f": src.fid})
        if meta["is_default"]:
            vid = conn.execute(
                text("SELECT fid FROM source_version WHERE source_id = :s AND number = :n"),
                {"s": src.fid, "n": meta["number"]},
            ).scalar()
            if vid is not None and vid != src.default_version_id:
                conn.execute(text("UPDATE data_source SET default_version_id = :v WHERE fid = :f"),
                             {"v": vid, "f": src.fid})
                changed += 1
    return changed


# --- conflicts ---------------------------------------------------------------------------


def _display(name: str, value: Any) -> Any:
    if name in ("location", "territory"):
        if value is None:
            return None
        wkt = value.wkt
        return wkt if len(wkt) <= 120 else wkt[:117] + "..."
    if name == "groups":
        return sorted(value or [])
    return value


def _changed_fields(conn: Connection, version_id: int, uuid: str, after: int | None,
                    exclude_like: str | None) -> set[str]:
    """Fields a side's change log says changed for one unit after ``after``."""
    sql = ("SELECT entity, before, after FROM change_log WHERE version_id = :v "
           "AND unit_uuid = :u AND fid > :a")
    params: dict[str, Any] = {"v": version_id, "u": uuid, "a": after or 0}
    if exclude_like:
        sql += " AND NOT (origin = 'sync' AND COALESCE(operation, '') LIKE :x)"
        params["x"] = exclude_like
    out: set[str] = set()
    if _pushed_whole(conn, version_id, after or 0, exclude_like):
        out.update((*FIELDS, "territory", "groups"))  # every unit arrived with that push
    for entity, before, after_ in conn.execute(text(sql), params):
        if entity == "territory":
            out.add("territory")
        elif entity == "group_membership":
            out.add("groups")
        else:
            b, a = json_value(before) or {}, json_value(after_) or {}
            if not b or not a:
                out.update(FIELDS)
                continue
            for key in set(a) | set(b):
                if a.get(key) != b.get(key):
                    out.add({"type_id": "type", "parent_key": "parent_uuid"}.get(key, key))
    return out


def _pushed_whole(conn: Connection, version_id: int, after: int, exclude_like: str | None
                  ) -> bool:
    """Whether a version was sent whole (``PUSH_OP`` row) after ``after``, by someone
    other than ``exclude_like``: each of its units then arrived (was 'changed') then."""
    sql = ("SELECT 1 FROM change_log WHERE entity = 'version' AND op = :op "
           "AND version_id = :v AND fid > :a")
    params: dict[str, Any] = {"op": PUSH_OP, "v": version_id, "a": after}
    if exclude_like:
        sql += " AND NOT (origin = 'sync' AND COALESCE(operation, '') LIKE :x)"
        params["x"] = exclude_like
    return conn.execute(text(sql + " LIMIT 1"), params).first() is not None


def _conflict_rows(meta: dict[str, Any], local: Unit | None, central: Unit | None,
                   local_changed: set[str], central_changed: set[str]) -> list[dict[str, Any]]:
    """One row per field where the two sides differ (a deleted side counts as one row)."""
    base = {"source": meta["source"], "version": meta["number"],
            "uuid": (local or central).uuid,  # type: ignore[union-attr]
            "name": (local or central).values["name"]}  # type: ignore[union-attr]
    if local is None or central is None:
        return [base | {"field": "(unit)", "local": "deleted" if local is None else "present",
                        "central": "deleted" if central is None else "present",
                        "changed_locally": True, "changed_centrally": True}]
    mine, theirs = local.compared(), central.compared()
    rows = []
    for key in COMPARED:
        if mine[key] == theirs[key]:
            continue
        lv = local.territory if key == "territory" else (
            local.groups if key == "groups" else local.values.get(key))
        cv = central.territory if key == "territory" else (
            central.groups if key == "groups" else central.values.get(key))
        rows.append(base | {
            "field": "parent" if key == "parent_uuid" else key,
            "local": _display(key, lv), "central": _display(key, cv),
            "changed_locally": key in local_changed, "changed_centrally": key in central_changed,
        })
    return rows


# --- push --------------------------------------------------------------------------------


@dataclass
class _Run:
    reg: Registry
    central: Registry
    state: SyncState
    fig: Figures
    batch_size: int
    prefer: str | None
    progress: ProgressFn | None
    job: Job[Any] | None
    op_prefix: str
    sources: set[str] | None = None
    full_batch: int = FULL_BATCH
    fresh: set[int] = field(default_factory=set)  # versions created by this run
    started: float = field(default_factory=time.monotonic)
    batch_no: int = 0

    def op(self) -> str:
        self.batch_no += 1
        return f"{self.op_prefix}:{self.batch_no}"

    def tick(self, **info: Any) -> None:
        self.fig.batches += 1
        if self.progress:
            self.progress(info | {"batches": self.fig.batches})
        if self.job is not None:
            self.job.report(message=info.get("message"))


def _own_push_like(client: str) -> str:
    return f"push:{client}:%"


def _pull_like(target: str) -> str:
    return f"pull:{_short(target)}:%"


def push(
    reg: Registry,
    url: str,
    schema: str | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
    prefer: str | None = None,
    progress: ProgressFn | None = None,
    job: Job[Any] | None = None,
    full_batch_size: int = FULL_BATCH,
) -> dict[str, Any]:
    """Push the registry to the central schema: everything once, then what changed.

    ``prefer="local"`` sends units changed on both sides anyway (local wins);
    otherwise they are held and reported as conflicts.  ``batch_size``: units per
    central transaction for changes; ``full_batch_size``: for a version sent whole into
    an empty central version (by COPY; each batch commits, so a push interrupted there
    resumes after the last batch that committed).
    """
    if prefer not in (None, "local"):
        raise InvalidInput("push: prefer must be 'local' or nothing.")
    location = central_location(url, schema)
    target = target_name(location)
    state = SyncState.load(reg, target)
    client = state.client_id
    central, created = open_central(location, create=True)
    fig = Figures()
    run = _Run(reg, central, state, fig, max(1, batch_size), prefer, progress, job,
               f"push:{client}:{uuidlib.uuid4().hex[:12]}", full_batch=max(1, full_batch_size))
    try:
        with exclusive(central, client), gc_paused():
            return _push(run, created)
    except (exc.DBAPIError, psycopg.Error, GeoregError) as error:
        _explain_nul(reg, error)
        raise
    finally:
        central.close()


#: what PostgreSQL says of a NUL character in text (COPY, a parameter) or in jsonb
_NUL_WORDS = ("0x00", "nul (0x00)", "\\u0000", "unsupported unicode escape sequence")


def _explain_nul(reg: Registry, error: BaseException) -> None:
    """PostgreSQL refused a NUL character: name the units that hold one, and say what to
    do (the edit API refuses them, but an import, QGIS or an older Georeg may have put
    one in the registry)."""
    said = str(error).lower()
    if not any(word in said for word in _NUL_WORDS) or _is_pg(reg):
        return
    cols = ("name", "code", "source_ref", "aliases", "extra_fields")
    test = " OR ".join(f"instr({c}, char(0)) > 0 OR instr({c}, '\\u0000') > 0" for c in cols)
    with reg.read() as conn:
        rows = conn.execute(text(f"SELECT uuid, name, {', '.join(cols)} FROM org_unit "
                                 f"WHERE {test} LIMIT 20")).all()
    if not rows:
        return
    where = "; ".join(
        f"{str(r.name).replace(chr(0), '?')!r} ({r.uuid}): "
        + ", ".join(c for c in cols if getattr(r, c) is not None and (
            "\0" in str(getattr(r, c)) or "\\u0000" in str(getattr(r, c))))
        for r in rows)
    raise InvalidInput(
        f"PostgreSQL cannot store a NUL character (\\x00, often left by pasted or exported "
        f"text), and these units hold one: {where}. Remove it (in QGIS or with georeg "
        "unit edit) and push again; nothing of the batch that met it was sent.") from error


def _push(run: _Run, created: bool) -> dict[str, Any]:
    reg, central, state, fig = run.reg, run.central, run.state, run.fig
    target = state.target
    resumed = state.details.get("cursor") is not None
    if created:
        state.details["central_created"] = True
    if not state.exists or created:
        state.save(reg)
    with reg.read() as conn:
        high = _safe_max(conn, _is_pg(reg), state.last_change_id or 0)
        local_versions = _versions(conn)
        types = _types(conn)
    with reg.read() as conn:
        top = int(conn.execute(text("SELECT COALESCE(max(fid), 0) FROM change_log")).scalar_one())
    generation = int(state.details.get("generation") or 0)
    central_generation = _client_generation(central, state.client_id)
    state.details["generation"] = max(generation, central_generation) + 1
    state.save(reg)
    if central_generation > generation or top < (state.last_change_id or 0):
        fig.warnings.append(
            "This registry's change log is behind what was pushed from it (restored from a "
            "backup?): everything is sent again."
        )
        state.versions.clear()
        state.details["cursor"] = None
        state.last_change_id = None
        high = top
    elif state.exists and (state.versions or state.last_pull_marker is not None) and (
            created or _central_went_back(central, state)):
        fig.warnings.append(
            "The central schema does not hold what this registry last synced with it "
            "(made anew, or restored from a backup?): everything is sent again; central "
            "units edited there by others since that differ from this registry's are held "
            "as conflicts, not overwritten."
        )
        state.versions.clear()
        state.details["cursor"] = None
        state.last_change_id = None
        state.last_pull_marker = None
        state.details["marker_print"] = None
        high = top
    cursor = state.details.get("cursor")
    if cursor and cursor.get("version") not in {m["fid"] for m in local_versions}:
        state.details["cursor"] = None  # the version was deleted before the push resumed
        resumed = False
    with central.write(origin=SYNC_ORIGIN, operation=run.op()) as cconn:
        fig.types_changed += _apply_types(cconn, types)
        cmap = {}
        for meta in local_versions:
            created_before = fig.versions_created
            cmap[meta["fid"]] = _ensure_version(cconn, True, meta, fig)
            if fig.versions_created > created_before:
                run.fresh.add(cmap[meta["fid"]][0])
                if state.versions.pop(str(meta["fid"]), None) is not None:
                    # sent before, gone centrally since (deleted there): all of it again
                    fig.warnings.append(
                        f"{meta['source']} v{meta['number']} had been deleted centrally: it "
                        "was made again there and sent whole.")
        cmap_deleted = _delete_gone_versions(cconn, state, local_versions, fig)
    if cmap_deleted:
        state.save(reg)
    _push_groups(run, local_versions, cmap)
    for meta in local_versions:
        if str(meta["fid"]) not in state.versions:
            _push_full(run, meta, cmap[meta["fid"]], high)
    _push_changes(run, local_versions, cmap, high)
    with central.write(origin=SYNC_ORIGIN, operation=run.op()) as cconn:
        for meta in local_versions:
            cvid, cstatus = cmap[meta["fid"]]
            if meta["status"] == "published" and cstatus != "published":
                _publish(cconn, True, cvid, meta)
                fig.versions_published += 1
        fig.versions_updated += _set_defaults(cconn, local_versions)
    _advance_pull_marker(run)
    _record_client(run, reg)
    result = fig.to_dict() | {
        "target": target, "created_central": created, "resumed": resumed,
        "last_change_id": state.last_change_id, "held": len(state.held),
        "seconds": round(time.monotonic() - run.started, 3),
    }
    state.details["last_push"] = {k: result[k] for k in (
        "units_sent", "units_deleted", "conflict_count", "seconds", "last_change_id")} | {
        "at": _now()}
    state.save(reg)
    return result


def _client_generation(central: Registry, client: str) -> int:
    """How many pushes the central side has seen complete from this registry."""
    with central.read() as cconn:
        details = cconn.execute(
            text("SELECT details FROM sync_state WHERE target = :t"), {"t": f"client:{client}"}
        ).scalar()
    return int((json_value(details) or {}).get("generation") or 0)


def _record_client(run: _Run, reg: Registry) -> None:
    """The central side's note of this registry's last complete push (no credentials).

    A registry restored from a backup has an older generation than the central side
    remembers: its next push then sends everything again, so central follows it back.
    """
    state = run.state
    details = {"generation": state.details["generation"], "registry": reg.location.display(),
               "last_change_id": state.last_change_id}
    with run.central.write(origin=SYNC_ORIGIN, audit=False) as cconn:
        params = {"t": f"client:{state.client_id}", "c": state.last_change_id,
                  "d": json.dumps(details), "u": _now()}
        updated = cconn.execute(
            text("UPDATE sync_state SET last_change_id = :c, details = CAST(:d AS jsonb), "
                 "updated_at = :u WHERE target = :t"), params).rowcount
        if not updated:
            cconn.execute(
                text("INSERT INTO sync_state (target, kind, last_change_id, details, updated_at) "
                     "VALUES (:t, 'client', :c, CAST(:d AS jsonb), :u)"), params)


def _delete_gone_versions(cconn: Connection, state: SyncState, local_versions: list[dict[str, Any]],
                          fig: Figures) -> bool:
    """Local versions deleted since the last push: delete their central drafts too."""
    here = {str(m["fid"]) for m in local_versions}
    gone = [k for k in state.versions if k not in here]
    for key in gone:
        info = state.versions.pop(key)
        row = cconn.execute(
            text(
                "SELECT v.fid, v.status FROM source_version v JOIN data_source s "
                "ON s.fid = v.source_id WHERE s.name = :s AND v.number = :n"
            ),
            {"s": info["source"], "n": info["number"]},
        ).first()
        if row is None:
            continue
        if row.status == "published":
            fig.refused.append(
                f"{info['source']} v{info['number']} was deleted here but is published "
                "centrally; published versions are kept."
            )
            continue
        cconn.execute(text("UPDATE data_source SET default_version_id = NULL "
                           "WHERE default_version_id = :v"), {"v": row.fid})
        cconn.execute(text("SELECT set_config('georeg.audit', '0', true)"))
        cconn.execute(text("DELETE FROM source_version WHERE fid = :v"), {"v": row.fid})
        cconn.execute(text("SELECT set_config('georeg.audit', '1', true)"))
        _log_version(cconn, True, int(row.fid), "delete", {"number": info["number"],
                                                           "synced": True})
        fig.versions_deleted += 1
    return bool(gone)


def _push_groups(run: _Run, local_versions: list[dict[str, Any]],
                 cmap: dict[int, tuple[int, str]]) -> None:
    with run.reg.read() as conn:
        snaps = {m["fid"]: _groups(conn, m["fid"]) for m in local_versions}
    with run.central.write(origin=SYNC_ORIGIN, operation=run.op()) as cconn:
        for meta in local_versions:
            cvid, cstatus = cmap[meta["fid"]]
            if cstatus == "published":
                continue
            new = _new_groups(cconn, cvid, snaps[meta["fid"]])
            run.fig.groups_changed += _apply_groups(cconn, cvid, snaps[meta["fid"]],
                                                    delete_extra=True)
            if new and str(meta["fid"]) in run.state.versions:
                with run.reg.read() as conn:
                    members = _group_members(conn, meta["fid"], new)
                run.fig.memberships_added += _add_group_members(cconn, cvid, members)


def _check_cancel(run: _Run) -> None:
    if run.job is not None and run.job.cancelled:
        raise Cancelled(
            "Push cancelled. What was sent so far is recorded; the next push continues "
            "from there."
        )


def _push_full(run: _Run, meta: dict[str, Any], central_version: tuple[int, str], high: int
               ) -> None:
    """Send a whole version (never pushed before), resumable batch by batch."""
    state, fig = run.state, run.fig
    lvid = meta["fid"]
    cvid, cstatus = central_version
    cursor = state.details.get("cursor")
    if not cursor or cursor.get("version") != lvid:
        cursor = {"version": lvid, "after": None, "started_at": high}
    if cstatus == "published":
        # Published centrally: its content was sent before it was published (insert-once).
        if meta["status"] != "published":
            fig.refused.append(
                f"{meta['source']} v{meta['number']} is published centrally but a draft here; "
                "its units were not sent."
            )
        state.versions[str(lvid)] = {"source": meta["source"], "number": meta["number"],
                                     "full_at": cursor["started_at"]}
        state.details["cursor"] = None
        state.save(run.reg)
        return
    with run.central.read() as cconn:
        empty = cconn.execute(text("SELECT NOT EXISTS (SELECT 1 FROM org_unit WHERE "
                                   "version_id = :v)"), {"v": cvid}).scalar_one()
    if empty or cursor["after"] is not None:
        # Nothing of it centrally yet (or a bulk load to resume): COPY, batch by batch.
        if _copy_version(run, meta, cvid, cursor):
            state.versions[str(lvid)] = {"source": meta["source"], "number": meta["number"],
                                         "full_at": cursor["started_at"]}
            state.details["cursor"] = None
            state.save(run.reg)
            return
    loaded = 0
    # units held back by a conflict (found by a pull) are not overwritten: the change
    # push below looks at them again
    held = {u for v, u in state.held if v == lvid} if run.prefer != "local" else set()
    while True:
        _check_cancel(run)
        after = tuple(cursor["after"]) if cursor["after"] else None
        with run.reg.read() as conn:
            units = read_units(run.reg, conn, lvid, after=after, limit=run.batch_size,  # type: ignore[arg-type]
                               everything=True)
        if not units:
            break
        last = units[-1]
        units = [u for u in units if u.uuid not in held]
        with run.central.write(origin=SYNC_ORIGIN, operation=run.op()) as cconn:
            if loaded in (1, 4) or loaded % 16 == 0:
                _analyze(cconn)  # a growing table: keep the planner on the uuid index
            fresh = cvid in run.fresh
            if not fresh and run.prefer != "local":
                # central units others changed since the last pull — ever, when this
                # registry never pulled from there — that differ from ours are held as
                # conflicts, never overwritten
                uuids = {u.uuid for u in units}
                known = (_foreign_changed(cconn, cvid, uuids, state, ever=True)
                         if state.last_pull_marker is None else set())
                stopped = {u for _, u in _hold_conflicts(run, meta, cconn, cvid, uuids, known)}
                if stopped:
                    held |= stopped
                    state.held = state.held | {(lvid, u) for u in stopped}
                    units = [u for u in units if u.uuid not in stopped]
            UnitWriter(run.central, cconn, cvid, fig).upsert(
                units, everything=True, fresh=fresh,
                releasable=None if fresh else _released_on(run.reg, lvid, run.prefer == "local"))
        loaded += 1
        cursor["after"] = [last.depth, last.fid]
        state.details["cursor"] = cursor
        state.save(run.reg)
        run.tick(phase="full", version=f"{meta['source']} v{meta['number']}", sent=len(units),
                 message=f"Pushing {meta['source']} v{meta['number']}")
    # Units that exist centrally but not here (left over from an earlier life of the
    # version there): removed, unless changed centrally since the last pull.
    with run.reg.read() as conn:
        local_uuids = set(conn.execute(
            text("SELECT uuid FROM org_unit WHERE version_id = :v"), {"v": lvid}
        ).scalars())
    with run.central.write(origin=SYNC_ORIGIN, operation=run.op()) as cconn:
        central_uuids = set(cconn.execute(
            text("SELECT uuid FROM org_unit WHERE version_id = :v"), {"v": cvid}
        ).scalars())
        extra = central_uuids - local_uuids
        if extra and state.last_pull_marker is None and run.prefer != "local" \
                and cvid not in run.fresh:
            # never pulled from there: these may be another registry's units (two pushing
            # to one schema) or central additions — not this registry's to delete
            fig.warnings.append(
                f"{len(extra)} unit(s) of {meta['source']} v{meta['number']} exist centrally "
                "but not in this registry, which has never pulled from the central schema: "
                "they were not deleted. Pull first (they are then added here), or push with "
                "--prefer-local to make the central version follow this registry. If "
                "another registry pushes to the same schema, give each its own schema.")
            extra = set()
        if extra and state.last_pull_marker is not None and run.prefer != "local":
            foreign = _foreign_changed(cconn, cvid, extra, state)
            for uuid in sorted(foreign):
                fig.conflicts.append({"source": meta["source"], "version": meta["number"],
                                      "uuid": uuid, "name": None, "field": "(unit)",
                                      "local": "absent", "central": "changed centrally",
                                      "changed_locally": False, "changed_centrally": True})
            extra -= foreign
        UnitWriter(run.central, cconn, cvid, fig).delete(extra)
    state.versions[str(lvid)] = {"source": meta["source"], "number": meta["number"],
                                 "full_at": cursor["started_at"]}
    state.details["cursor"] = None
    state.save(run.reg)


def _owns(cconn: Connection, table: str) -> bool:
    return bool(cconn.execute(text(
        "SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c "
        "WHERE c.oid = to_regclass(:t)"), {"t": table}).scalar())


def _plain_indexes(cconn: Connection, table: str) -> list[tuple[str, str]]:
    """(name, definition) of a table's indexes that back no constraint."""
    return [(r.indexname, r.indexdef) for r in cconn.execute(text(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i JOIN pg_class c ON c.relname = "
        "i.indexname AND c.relnamespace = to_regnamespace(i.schemaname) "
        "WHERE i.schemaname = current_schema() AND i.tablename = :t AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint k WHERE k.conindid = c.oid)"), {"t": table})]


def _copy_version(run: _Run, meta: dict[str, Any], cvid: int, cursor: dict[str, Any]) -> bool:
    """Send a whole version into an empty central version: per batch, one transaction that
    COPYs units, territories and memberships (keys, paths and depths computed here), logs
    one ``PUSH_OP`` version row and records the cursor.  Row triggers are off meanwhile
    (when the central tables are ours), and on a first push into an empty table the plain
    indexes are built after the load.  False when a batch to resume is already partly
    central (the caller then upserts unit by unit)."""
    reg, lvid = run.reg, meta["fid"]
    backend = reg.backend
    with reg.read() as conn:
        local_types = {int(r.fid): r.name for r in conn.execute(
            text("SELECT fid, name FROM org_unit_type"))}
        groups = {int(r.group_key): group_identity(r.source_ref, r.name) for r in conn.execute(
            text("SELECT group_key, source_ref, name FROM org_unit_group WHERE version_id = :v"),
            {"v": lvid})}
    with run.central.read() as cconn:
        ctypes = {r.name: int(r.fid) for r in cconn.execute(
            text("SELECT fid, name FROM org_unit_type"))}
        ckeys = {group_identity(r.source_ref, r.name): int(r.group_key) for r in cconn.execute(
            text("SELECT group_key, source_ref, name FROM org_unit_group WHERE version_id = :v"),
            {"v": cvid})}
    type_map = {k: ctypes.get(name) for k, name in local_types.items()}
    tree: dict[int, tuple[int, str]] = {}  # local unit_key -> (central fid, central path)
    first = True
    while True:
        _check_cancel(run)
        after = cursor["after"]
        params: dict[str, Any] = {"v": lvid, "n": run.full_batch + 1}
        if after:
            params |= {"d": after[0], "f": after[1]}
        rows: list[Sequence[Any]] | None = None
        with reg.read() as conn:
            if after:
                # a later batch (or a resumed load): read it first, it may need parents
                # sent earlier looked up centrally
                rows = _fetch(conn, _local_lines(backend, type_map, True), params)
                count = len(rows)
                rows = rows[:run.full_batch]
            else:
                count = int(conn.execute(text(
                    "SELECT count(*) FROM (SELECT 1 FROM org_unit WHERE version_id = :v "
                    "LIMIT :n) c"), params).scalar_one())
        if not count:
            return True
        last_batch = count <= run.full_batch
        n = min(count, run.full_batch)
        with run.central.write(origin=SYNC_ORIGIN, operation=run.op()) as cconn:
            if first and rows and _existing_uuids(cconn, cvid, [rows[0][_UUID]]):
                return False  # this batch committed centrally before the marker here: upsert
            status = cconn.execute(text("SELECT status FROM source_version WHERE fid = :v "
                                        "FOR UPDATE"), {"v": cvid}).scalar()
            if status == "published":
                raise ConflictError(f"{meta['source']} v{meta['number']} was published "
                                    "centrally during the push; run the push again.")
            hi = _copy_batch(run, meta, cconn=cconn, cvid=cvid, n=n, rows=rows,
                             lo=after, groups=groups, ckeys=ckeys, type_map=type_map,
                             tree=tree, whole=first and after is None and last_batch)
        first = False
        cursor["after"] = list(hi)
        run.state.details["cursor"] = cursor
        run.state.save(reg)
        run.tick(phase="full", version=f"{meta['source']} v{meta['number']}", sent=n,
                 message=f"Pushing {meta['source']} v{meta['number']}")
        if last_batch:
            return True


def _copy_batch(run: _Run, meta: dict[str, Any], *, cconn: Connection, cvid: int, n: int,
                rows: list[Sequence[Any]] | None, lo: list[int] | None,
                groups: dict[int, str], ckeys: dict[str, int], type_map: dict[int, int | None],
                tree: dict[int, tuple[int, str]], whole: bool) -> tuple[int, int]:
    """One COPY batch of ``n`` units after ``lo``: ``rows`` when already read, else they
    are streamed from the registry into the COPY (SQLite formats the next chunk while
    PostgreSQL parses the last).  Returns the (depth, fid) of the last unit sent."""
    reg, fig = run.reg, run.fig
    lvid = meta["fid"]
    backend = reg.backend
    parent_uuids = {}
    if rows is not None:
        missing = {int(r[_PKEY]) for r in rows if r[_PKEY] is not None} - set(tree) - {
            int(r[_UKEY]) for r in rows}
        if missing:  # parents sent by an earlier push run (a resumed load): find them centrally
            with reg.read() as conn:
                stmt = text("SELECT unit_key, uuid FROM org_unit WHERE version_id = :v AND "
                            "unit_key IN :k").bindparams(bindparam("k", expanding=True))
                for part in _chunks(sorted(missing)):
                    parent_uuids.update({r.uuid: int(r.unit_key) for r in conn.execute(
                        stmt, {"v": lvid, "k": part})})
    if parent_uuids:
        stmt = text("SELECT uuid, fid, path FROM org_unit WHERE version_id = :v AND uuid IN :u"
                    ).bindparams(bindparam("u", expanding=True))
        for part in _chunks(sorted(parent_uuids)):
            for r in cconn.execute(stmt, {"v": cvid, "u": part}):
                tree[parent_uuids[r.uuid]] = (int(r.fid), str(r.path))
    fids = _take_fids(cconn, n)
    own = _owns(cconn, "org_unit") and _owns(cconn, "org_unit_territory") and \
        _owns(cconn, "group_membership")
    dropped: list[tuple[str, str]] = []
    fkeys: list[tuple[str, str, str]] = []
    if own:
        for table in ("org_unit", "org_unit_territory", "group_membership"):
            cconn.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        if whole and not cconn.execute(text("SELECT EXISTS (SELECT 1 FROM org_unit)")).scalar():
            # a first load into empty tables: indexes built after the load are faster
            dropped = _plain_indexes(cconn, "org_unit")
            for name, _sql in dropped:
                cconn.exec_driver_sql(f'DROP INDEX "{name}"')
            # foreign keys: one validating join after the load instead of a check per row
            fkeys = [(r.table, r.name, r.definition) for r in cconn.execute(text(
                "SELECT c.conrelid::regclass::text AS table, c.conname AS name, "
                "pg_get_constraintdef(c.oid) AS definition FROM pg_constraint c "
                "WHERE c.contype = 'f' AND c.conrelid IN (to_regclass('org_unit'), "
                "to_regclass('org_unit_territory'), to_regclass('group_membership'))"))]
            for table, name, _definition in fkeys:
                cconn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    run.central.set_audit(cconn, False)
    raw = cconn.connection.driver_connection
    assert raw is not None
    mem_rows: list[tuple[Any, ...]] = []
    with_groups: set[int] = set()
    ter_count = 0
    uuids = hashlib.sha256()
    last: tuple[int, int] | None = None  # the highest (depth, fid) sent
    with raw.cursor() as cur:
        # Lines are formatted from the text SQLite (or PostgreSQL) made and sent in chunks;
        # a queued writer sends in a thread, so the server parses while the next chunk is
        # read and formatted.
        with cur.copy(_UNIT_COPY, writer=QueuedLibpqWriter(cur)) as copy, \
                reg.read() as conn:
            if rows is not None:
                chunks: Iterator[Sequence[Sequence[Any]]] = iter(
                    [rows[i:i + _COPY_CHUNK] for i in range(0, len(rows), _COPY_CHUNK)])
            else:
                chunks = _stream(conn, _local_lines(backend, type_map, False),
                                 {"v": lvid, "n": n})
            sent = 0
            for chunk in chunks:
                lines: list[str] = []
                for unit, fid in zip(chunk, fids[sent:sent + len(chunk)], strict=True):
                    pkey = unit[_PKEY]
                    if pkey is None:
                        parent, path = _NULL, f"/{fid}/"
                    else:
                        pfid, ppath = tree[pkey]
                        parent, path = str(pfid), f"{ppath}{fid}/"
                    tree[unit[_UKEY]] = (fid, path)
                    point = unit[_GEOM]
                    if point is None:
                        point = _NULL if unit[_ODD] is None else _ewkb_from(backend, unit[_ODD])
                    lines.append(
                        f"{fid}\t{fid}\t{parent}\t{path}\t{cvid}\t{point}\t{unit[_REST]}\n")
                copy.write("".join(lines))
                uuids.update("".join(f"{unit[_UUID]}\n" for unit in chunk).encode())
                sent += len(chunk)
                top = max((int(unit[_DEPTH]), int(unit[_FID])) for unit in chunk)
                last = top if last is None else max(last, top)
        if last is None:  # deleted here since counted: nothing to send in this batch
            raise ConflictError("The registry changed during the push; run the push again.")
        n = sent  # (fewer than counted if units were deleted here meanwhile)
        hi = last
        range_params: dict[str, Any] = {"v": lvid, "d2": hi[0], "f2": hi[1]}
        cond = _UPTO
        if lo:
            range_params |= {"d": lo[0], "f": lo[1]}
            cond += _AFTER
        wkb, geom, odd = _copy_geometry(backend, "t.territory")
        with reg.read() as conn:
            territories = _fetch(conn, (
                f"SELECT t.unit_key, {geom}, {odd}, {_copy_text(backend, 't.name')} FROM "
                f"(SELECT u.unit_key, u.name, t.territory, {wkb} AS w FROM org_unit_territory t "
                f"JOIN org_unit u ON u.fid = t.unit_fid WHERE u.version_id = :v{cond}) t"),
                range_params)
            members = _fetch(conn, (
                "SELECT m.unit_key, m.group_key FROM group_membership m JOIN org_unit u ON "
                "u.version_id = m.version_id AND u.unit_key = m.unit_key "
                f"WHERE u.version_id = :v{cond}"), range_params)
        if territories:
            with cur.copy("COPY org_unit_territory (territory, unit_fid, version_id, name) "
                          "FROM STDIN", writer=QueuedLibpqWriter(cur)) as copy:
                lines = []
                for ukey, area, odd_area, name in territories:
                    if area is None:
                        area = _ewkb_from(backend, odd_area)
                    lines.append(f"{area}\t{tree[ukey][0]}\t{cvid}\t{name}\n")
                    if len(lines) >= _COPY_CHUNK:
                        copy.write("".join(lines))
                        lines = []
                if lines:
                    copy.write("".join(lines))
            ter_count = len(territories)
        for ukey, gkey in members:
            ident = groups.get(int(gkey))
            with_groups.add(int(ukey))
            if ident in ckeys:
                mem_rows.append((cvid, ckeys[ident], tree[ukey][0]))
            else:
                fig.warnings.append(f"Unit {int(ukey)}: group {ident} does not exist on "
                                    "the receiving side; membership left out.")
        if mem_rows:
            with cur.copy("COPY group_membership (version_id, group_key, unit_key) "
                          "FROM STDIN", writer=QueuedLibpqWriter(cur)) as copy:
                copy.write("".join(f"{v}\t{g}\t{u}\n" for v, g, u in mem_rows))
    _log_version(cconn, True, cvid, PUSH_OP, {
        "number": meta["number"], "client": run.state.client_id,
        "registry": reg.location.display(), "units": n, "territories": ter_count,
        "memberships": len(mem_rows), "units_sha256": uuids.hexdigest(),
        "history": "each unit's history before this push is in the pushing registry",
    })
    if own:
        # Run the pending foreign-key checks now: indexes and triggers cannot change on a
        # table with pending trigger events.
        cconn.exec_driver_sql("SET CONSTRAINTS ALL IMMEDIATE")
        if dropped:
            # Indexes are rebuilt only after a first load of one batch (<= FULL_BATCH
            # units): at that size starting parallel workers costs more than they save
            # (15-20 % slower on two cores, measured with 100k units).
            cconn.exec_driver_sql("SET LOCAL max_parallel_maintenance_workers = 0")
        for _name, sql in dropped:
            cconn.exec_driver_sql(sql)
        for table, name, definition in fkeys:
            cconn.exec_driver_sql(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        for table in ("org_unit", "org_unit_territory", "group_membership"):
            cconn.exec_driver_sql(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        cconn.exec_driver_sql("SET CONSTRAINTS ALL DEFERRED")
    run.central.set_audit(cconn, True)
    if n >= 1000:
        # fresh statistics, so the next push's lookups by uuid use the index; a small
        # sample is enough for that (autovacuum refines them later)
        cconn.exec_driver_sql("SET LOCAL default_statistics_target = 10")
        _analyze(cconn)
    fig.units_sent += n
    fig.units_inserted += n
    fig.territories_sent += ter_count
    fig.territories_changed += ter_count
    fig.memberships_sent += len(with_groups)
    fig.memberships_added += len(mem_rows)
    return hi


def _take_fids(cconn: Connection, n: int) -> Sequence[int]:
    """``n`` new unit ids from the central sequence.  They come back as a range when
    contiguous (as they are unless another session draws at the same moment), else as
    the list: 100k ids are then one row, not 100k rows to send and convert."""
    lo, hi, listed = cconn.execute(text(
        "SELECT min(f), max(f), CASE WHEN max(f) - min(f) + 1 = count(*) THEN NULL "
        "ELSE array_agg(f ORDER BY f) END FROM (SELECT nextval('org_unit_fid_seq') AS f "
        "FROM generate_series(1, :n)) s"), {"n": n}).one()
    if lo is None:
        return []
    return range(int(lo), int(hi) + 1) if listed is None else [int(f) for f in listed]


def _analyze(conn: Connection) -> None:
    """Fresh planner statistics (PostgreSQL) while a version is loaded batch by batch."""
    for table in ("org_unit", "org_unit_territory", "group_membership"):
        conn.exec_driver_sql(f"ANALYZE {table}")


def _foreign_changed(cconn: Connection, cvid: int, uuids: Iterable[str], state: SyncState,
                     *, ever: bool = False) -> set[str]:
    """Units changed centrally (not by our pushes) since the last pull — or, with
    ``ever`` (a registry that never pulled from there), at any time: the others hold
    only what this registry sent (a version it sent whole logs one row, not one per
    unit)."""
    if state.last_pull_marker is None and not ever:
        return set()
    after = 0 if ever else int(state.last_pull_marker or 0)
    own = _own_push_like(state.client_id)
    if _pushed_whole(cconn, cvid, after, own):
        # another registry sent the version whole since: every unit there came with it
        return _existing_uuids(cconn, cvid, uuids)
    return {r[0] for r in _in_rows(
        cconn,
        "SELECT DISTINCT unit_uuid FROM change_log WHERE fid > :m AND version_id = :v "
        "AND entity IN ('org_unit', 'territory', 'group_membership') AND unit_uuid IN :u "
        "AND NOT (origin = 'sync' AND COALESCE(operation, '') LIKE :own)", "u", uuids,
        {"m": after, "v": cvid, "own": own})}


def _log_chunks(reg: Registry, state: SyncState, after: int, high: int, size: int
                ) -> Iterator[tuple[int, list[Any]]]:
    """Change-log rows in (after, high], ``size`` at a time, without our own pulls."""
    pos = after
    pull_prefix = _pull_like(state.target)[:-1]
    while pos < high:
        with reg.read() as conn:
            rows = conn.execute(
                text(
                    "SELECT fid, version_id, entity, unit_uuid, origin, operation FROM change_log "
                    "WHERE fid > :a AND fid <= :h ORDER BY fid LIMIT :n"
                ),
                {"a": pos, "h": high, "n": size},
            ).all()
        if not rows:
            break
        pos = int(rows[-1].fid)
        kept = [
            r for r in rows
            if r.entity in UNIT_ENTITIES and r.unit_uuid is not None
            and not (r.origin == SYNC_ORIGIN and (r.operation or "").startswith(pull_prefix))
        ]
        yield pos, kept


def _below(conn: Connection, version_id: int, uuids: Iterable[str]) -> dict[str, set[str]]:
    """For each unit, the uuids of every unit below it (on the side of ``conn``)."""
    out: dict[str, set[str]] = {}
    for uuid, path in list(_in_rows(
            conn, "SELECT uuid, path FROM org_unit WHERE version_id = :v AND uuid IN :u", "u",
            uuids, {"v": version_id})):
        if not path:
            continue
        out[uuid] = set(conn.execute(
            text("SELECT uuid FROM org_unit WHERE version_id = :v AND path > :lo "
                 "AND path < :hi"),
            {"v": version_id, "lo": path, "hi": path[:-1] + "0"},
        ).scalars())
    return out


def _push_changes(run: _Run, local_versions: list[dict[str, Any]],
                  cmap: dict[int, tuple[int, str]], high: int) -> None:
    state = run.state
    metas = {m["fid"]: m for m in local_versions}
    start = state.last_change_id or 0
    # rows up to the oldest whole-version push are covered by it (or belong to no
    # version still here): no need to read them
    covered = min((int(v.get("full_at") or 0) for k, v in state.versions.items()
                   if int(k) in metas), default=high)
    start = max(start, min(covered, high))
    held = {h for h in state.held if h[0] in metas}
    chunks: Iterator[tuple[int, list[Any]]] = _log_chunks(run.reg, state, start, high,
                                                          run.batch_size)
    if held:  # units held back by conflicts are looked at again, with the first chunk
        first_chunk = next(chunks, (start, []))
        chunks = itertools.chain([first_chunk], chunks)
    first = True
    for pos, rows in chunks:
        _check_cancel(run)
        flags: dict[tuple[int, str], set[str]] = {}
        for r in rows:
            info = state.versions.get(str(r.version_id))
            if info is None or r.fid <= int(info.get("full_at") or 0):
                continue  # a version sent whole in this or an earlier push
            flags.setdefault((int(r.version_id), r.unit_uuid), set()).add(r.entity)
        if first:
            for key in held:
                flags.setdefault(key, set()).update(UNIT_ENTITIES)
            first = False
        by_version: dict[int, dict[str, set[str]]] = {}
        for (vid, uuid), ents in flags.items():
            by_version.setdefault(vid, {})[uuid] = ents
        new_held = {h for h in state.held if (h[0], h[1]) not in flags}
        for vid, units_flags in sorted(by_version.items()):
            new_held |= _push_version_changes(run, metas[vid], cmap[vid], units_flags)
        state.held = new_held
        state.last_change_id = max(pos, state.last_change_id or 0)
        state.save(run.reg)
        run.tick(phase="changes", upto=pos, message="Pushing changes")
    state.last_change_id = max(high, state.last_change_id or 0)


def _push_version_changes(run: _Run, meta: dict[str, Any], central_version: tuple[int, str],
                          units_flags: dict[str, set[str]]) -> set[tuple[int, str]]:
    """Send the current state of the flagged units of one version; returns units held."""
    fig = run.fig
    lvid = meta["fid"]
    cvid, cstatus = central_version
    if cstatus == "published":
        fig.refused.append(
            f"{meta['source']} v{meta['number']} is published centrally: "
            f"{len(units_flags)} changed unit(s) not sent (kept as held: make a new "
            "version for them)."
        )
        return {(lvid, u) for u in units_flags}
    uuids = set(units_flags)
    ter = {u for u, e in units_flags.items() if "territory" in e}
    grp = {u for u, e in units_flags.items() if "group_membership" in e}
    with run.reg.read() as conn:
        units = read_units(run.reg, conn, lvid, uuids=uuids, territory_for=ter, groups_for=grp)
    gone = uuids - {u.uuid for u in units}
    held: set[tuple[int, str]] = set()
    with run.central.write(origin=SYNC_ORIGIN, operation=run.op()) as cconn:
        if gone:
            # A subtree deleted here may be spread over several log chunks: the units
            # below a deleted one go with it, or move where they now are here.
            below = set().union(*_below(cconn, cvid, gone).values()) - uuids
            if below:
                present = _local_present(run.reg, lvid, below)
                gone |= below - present
                if present:
                    with run.reg.read() as conn:
                        units += read_units(run.reg, conn, lvid, uuids=present, everything=True)
        writer = UnitWriter(run.central, cconn, cvid, fig)
        with run.reg.read() as conn:
            units = _close_ancestors(run.reg, conn, lvid, units, writer.present)
        touched = {u.uuid for u in units} | gone
        known = {u for v, u in run.state.held if v == lvid} & touched
        if run.prefer != "local" and (run.state.last_pull_marker is not None or known):
            held = _hold_conflicts(run, meta, cconn, cvid, touched, known)
        if held:
            skip = {u for _, u in held}
            # a unit held back keeps its parent and its subtree where they are
            for tops in _below(cconn, cvid, skip & gone).values():
                skip |= tops
        else:
            skip = set()
        sent = [u for u in units if u.uuid not in skip]
        extra = {u.uuid for u in sent} - uuids
        writer.upsert(sent, territory_for=ter | extra, groups_for=grp | extra,
                      releasable=_released_on(run.reg, lvid, run.prefer == "local"))
        writer.delete(gone - skip)
    return held


def _hold_conflicts(run: _Run, meta: dict[str, Any], cconn: Connection, cvid: int,
                    uuids: set[str], known: set[str]) -> set[tuple[int, str]]:
    """Units changed centrally since the last pull (or in a conflict already reported)
    whose two states differ: report them and hold them back."""
    lvid = meta["fid"]
    for _row in _in_rows(cconn, "SELECT uuid FROM org_unit WHERE version_id = :v AND uuid IN :u "
                         "FOR UPDATE", "u", uuids, {"v": cvid}):
        pass
    foreign = _foreign_changed(cconn, cvid, uuids, run.state) | known
    if not foreign:
        return set()
    central_units = {u.uuid: u for u in read_units(run.central, cconn, cvid, uuids=foreign,
                                                   everything=True)}
    held: set[tuple[int, str]] = set()
    with run.reg.read() as conn:
        local_units = {u.uuid: u for u in read_units(run.reg, conn, lvid, uuids=foreign,
                                                     everything=True)}
        for uuid in sorted(foreign):
            lu, cu = local_units.get(uuid), central_units.get(uuid)
            if lu is None and cu is None:
                continue
            if lu is not None and cu is not None and lu.compared() == cu.compared():
                continue
            local_changed = _changed_fields(conn, lvid, uuid, run.state.last_change_id,
                                            _pull_like(run.state.target))
            central_changed = _changed_fields(cconn, cvid, uuid, int(run.state.last_pull_marker
                                                                     or 0),
                                              _own_push_like(run.state.client_id))
            run.fig.conflicts.extend(_conflict_rows(meta, lu, cu, local_changed,
                                                    central_changed))
            held.add((lvid, uuid))
    return held


def _advance_pull_marker(run: _Run) -> None:
    """Move the pull marker over central rows that are ours (never past others' rows)."""
    state = run.state
    if state.last_pull_marker is None and not state.details.get("central_created"):
        return
    marker = int(state.last_pull_marker or 0)
    with run.central.read() as cconn:
        high = _safe_max(cconn, True, marker)
        first_foreign = cconn.execute(
            text(
                "SELECT min(fid) FROM change_log WHERE fid > :m AND fid <= :h AND NOT "
                "(origin = 'sync' AND COALESCE(operation, '') LIKE :own)"
            ),
            {"m": marker, "h": high, "own": _own_push_like(state.client_id)},
        ).scalar()
        new = high if first_foreign is None else int(first_foreign) - 1
        _set_marker(state, cconn, max(new, marker))


def _marker_print(cconn: Connection, marker: int) -> str | None:
    """The central change-log row at the pull marker, as time and operation: change-log
    rows are never deleted or rewritten, so at the next sync the same row is there —
    unless the central schema went back in time (restored from a dump, made anew)."""
    if marker <= 0:
        return None
    row = cconn.execute(text("SELECT at, operation FROM change_log WHERE fid = :m"),
                        {"m": marker}).first()
    return None if row is None else f"{row.at}|{row.operation or ''}"


def _set_marker(state: SyncState, cconn: Connection, marker: int) -> None:
    state.last_pull_marker = str(marker)
    state.details["marker_print"] = _marker_print(cconn, marker)


def _central_went_back(central: Registry, state: SyncState) -> bool:
    """Whether the central change log lacks the row this registry last synced up to."""
    marker = int(state.last_pull_marker or 0)
    if marker <= 0:
        return False
    with central.read() as cconn:
        top = int(cconn.execute(text("SELECT COALESCE(max(fid), 0) FROM change_log")
                                ).scalar_one())
        if top < marker:
            return True
        seen = state.details.get("marker_print")
        return seen is not None and _marker_print(cconn, marker) != seen


# --- pull --------------------------------------------------------------------------------


def pull(
    reg: Registry,
    url: str,
    schema: str | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
    prefer: str | None = None,
    sources: Iterable[str] | None = None,
    progress: ProgressFn | None = None,
    job: Job[Any] | None = None,
) -> dict[str, Any]:
    """Bring back what changed centrally since the last pull (not our own pushes).

    A unit changed on both sides since the last sync is reported as a conflict
    (one row per differing field) and left alone, unless ``prefer="central"``.
    ``sources`` limits the pull to those data sources (default: every source there).
    """
    if prefer not in (None, "central"):
        raise InvalidInput("pull: prefer must be 'central' or nothing.")
    location = central_location(url, schema)
    target = target_name(location)
    state = SyncState.load(reg, target)
    client = state.client_id
    central, _created = open_central(location, create=False)
    fig = Figures()
    run = _Run(reg, central, state, fig, max(1, batch_size), prefer, progress, job,
               f"pull:{_short(target)}:{uuidlib.uuid4().hex[:12]}",
               set(sources) if sources is not None else None)
    try:
        with exclusive(central, client):
            return _pull(run)
    finally:
        central.close()


def _pull(run: _Run) -> dict[str, Any]:
    reg, central, state, fig, prefer = run.reg, run.central, run.state, run.fig, run.prefer
    client, target = state.client_id, state.target
    marker = int(state.last_pull_marker or 0)
    if _central_went_back(central, state):
        raise ConflictError(
            f"{target} does not hold what this registry last pulled from it (restored from "
            "a backup, or made anew?). Nothing was pulled. Push first: it sends everything "
            "again and holds the central units edited there since that differ as conflicts; "
            "pull after that.")
    with central.read() as cconn:
        high = _safe_max(cconn, True, marker)
        rows = cconn.execute(
            text(
                "SELECT version_id, entity, unit_uuid FROM change_log WHERE fid > :m "
                "AND fid <= :h AND entity IN ('org_unit', 'territory', 'group_membership') "
                "AND unit_uuid IS NOT NULL AND NOT (origin = 'sync' AND "
                "COALESCE(operation, '') LIKE :own)"
            ),
            {"m": marker, "h": high, "own": _own_push_like(client)},
        ).all()
        central_versions = _versions(cconn)
        types = _types(cconn)
        # versions another registry sent whole (one PUSH_OP row, no row per unit)
        whole = set(cconn.execute(
            text(
                "SELECT DISTINCT version_id FROM change_log WHERE fid > :m AND fid <= :h "
                "AND entity = 'version' AND op = :op AND NOT (origin = 'sync' AND "
                "COALESCE(operation, '') LIKE :own)"
            ),
            {"m": marker, "h": high, "op": PUSH_OP, "own": _own_push_like(client)},
        ).scalars())
        with reg.read() as conn:
            local_versions = _versions(conn)
        if run.sources is not None:
            known = {m["source"] for m in central_versions} | {m["source"]
                                                               for m in local_versions}
            unknown = sorted(set(run.sources) - known)
            if unknown:
                raise NotFound(
                    f"No source {', '.join(map(repr, unknown))} here or centrally; sources: "
                    f"{', '.join(sorted(known)) or 'none yet'}.")
        local_by_id = {(m["source"], m["number"]): m for m in local_versions}
        pushed_units: dict[int, list[str]] = {}
        for cmeta in central_versions:
            if cmeta["fid"] in whole and (cmeta["source"], cmeta["number"]) in local_by_id:
                pushed_units[cmeta["fid"]] = list(cconn.execute(
                    text("SELECT uuid FROM org_unit WHERE version_id = :v"),
                    {"v": cmeta["fid"]}).scalars())
    with reg.write(origin=SYNC_ORIGIN, operation=run.op()) as conn:
        fig.types_changed += _apply_types(conn, types)
    flags: dict[int, dict[str, set[str]]] = {}
    for r in rows:
        flags.setdefault(int(r.version_id), {}).setdefault(r.unit_uuid, set()).add(r.entity)
    for pushed_vid, uuids in pushed_units.items():
        for uuid in uuids:
            flags.setdefault(pushed_vid, {}).setdefault(uuid, set()).update(UNIT_ENTITIES)
    if prefer == "central":  # conflicts reported earlier: take the central side now
        central_by_id = {(m["source"], m["number"]): m["fid"] for m in central_versions}
        local_ids = {m["fid"]: (m["source"], m["number"]) for m in local_versions}
        for lvid, uuid in state.held:
            cvid = central_by_id.get(local_ids.get(lvid, ("", -1)))
            if cvid is not None:
                flags.setdefault(cvid, {}).setdefault(uuid, set()).update(UNIT_ENTITIES)
    pushed_from_here = {(v["source"], v["number"]) for v in state.versions.values()}
    for cmeta in central_versions:
        if run.sources is not None and cmeta["source"] not in run.sources:
            continue
        lmeta = local_by_id.get((cmeta["source"], cmeta["number"]))
        if lmeta is None:
            if (cmeta["source"], cmeta["number"]) in pushed_from_here:
                fig.warnings.append(
                    f"{cmeta['source']} v{cmeta['number']} was deleted here; the next push "
                    "deletes it centrally (if it is still a draft there)."
                )
                continue
            _pull_new_version(run, cmeta)
            continue
        cflags = flags.get(cmeta["fid"], {})
        if lmeta["status"] != "published":
            _pull_groups(run, cmeta["fid"], lmeta["fid"])
        if cflags or cmeta["status"] != lmeta["status"]:
            _pull_version_changes(run, cmeta, lmeta, cflags)
    with run.central.read() as cconn:
        _set_marker(state, cconn, high)
    result = fig.to_dict() | {
        "target": target, "last_pull_marker": state.last_pull_marker,
        "seconds": round(time.monotonic() - run.started, 3),
    }
    state.details["last_pull"] = {k: result[k] for k in (
        "units_inserted", "units_updated", "units_deleted", "conflict_count", "seconds")} | {
        "at": _now()}
    state.save(reg)
    return result


def _pull_new_version(run: _Run, cmeta: dict[str, Any]) -> None:
    """A version that exists only centrally: copy it here whole (one transaction)."""
    fig = run.fig
    pg = _is_pg(run.reg)
    with run.central.read() as cconn:
        snap = _groups(cconn, cmeta["fid"])
    with run.reg.write(origin=SYNC_ORIGIN, operation=run.op()) as conn:
        lvid, _status = _ensure_version(conn, pg, cmeta, fig)
        _apply_groups(conn, lvid, snap, delete_extra=False)
        writer = UnitWriter(run.reg, conn, lvid, fig)
        after: tuple[int, int] | None = None
        loaded = 0
        while True:
            with run.central.read() as cconn:
                units = read_units(run.central, cconn, cmeta["fid"], after=after,
                                   limit=run.batch_size, everything=True)
            if not units:
                break
            if pg and (loaded in (1, 4) or loaded % 16 == 0):
                _analyze(conn)
            writer.upsert(units, everything=True, fresh=True)
            loaded += 1
            after = (units[-1].depth, units[-1].fid or 0)
        if cmeta["status"] == "published":
            _publish(conn, pg, lvid, cmeta)
            fig.versions_published += 1
        _set_defaults(conn, [cmeta])
        high = conn.execute(text("SELECT max(fid) FROM change_log")).scalar()
    # Known to the push side: nothing of it needs sending back.
    run.state.versions[str(lvid)] = {"source": cmeta["source"], "number": cmeta["number"],
                                     "full_at": int(high or 0)}
    run.tick(phase="pull", version=f"{cmeta['source']} v{cmeta['number']}",
             message="Pulling a new version")


def _pending_local(run: _Run, lvid: int) -> set[str]:
    """Units of a local version changed here since the last push (and those held)."""
    with run.reg.read() as conn:
        pending = set(conn.execute(
            text(
                "SELECT DISTINCT unit_uuid FROM change_log WHERE fid > :a AND version_id = :v "
                "AND entity IN ('org_unit', 'territory', 'group_membership') "
                "AND unit_uuid IS NOT NULL AND NOT (origin = 'sync' AND "
                "COALESCE(operation, '') LIKE :p)"
            ),
            {"a": run.state.last_change_id or 0, "v": lvid, "p": _pull_like(run.state.target)},
        ).scalars())
    return pending | {u for v, u in run.state.held if v == lvid}


def _pull_version_changes(run: _Run, cmeta: dict[str, Any], lmeta: dict[str, Any],
                          cflags: dict[str, set[str]]) -> None:
    fig = run.fig
    lvid, cvid = lmeta["fid"], cmeta["fid"]
    pending = _pending_local(run, lvid)
    pg = _is_pg(run.reg)
    if cflags and lmeta["status"] == "published":
        for uuid in sorted(cflags):
            fig.conflicts.append({
                "source": cmeta["source"], "version": cmeta["number"], "uuid": uuid,
                "name": None, "field": "(version)", "local": "published here",
                "central": "changed centrally", "changed_locally": False,
                "changed_centrally": True,
            })
        return
    uuids = sorted(cflags)
    for part in _chunks(uuids, run.batch_size):
        part_set = set(part)
        ter = {u for u in part if "territory" in cflags[u]}
        grp = {u for u in part if "group_membership" in cflags[u]}
        clash = part_set & pending
        with run.central.read() as cconn:
            cunits = read_units(run.central, cconn, cvid, uuids=part_set,
                                territory_for=ter | clash, groups_for=grp | clash)
            cunits = _close_ancestors(
                run.central, cconn, cvid, cunits,
                lambda parents: _local_present(run.reg, lvid, parents),
            )
        by_uuid = {u.uuid: u for u in cunits}
        skip: set[str] = set()
        if clash:
            with run.reg.read() as conn:
                lunits = {u.uuid: u for u in read_units(run.reg, conn, lvid, uuids=clash,
                                                        everything=True)}
                for uuid in sorted(clash):
                    lu, cu = lunits.get(uuid), by_uuid.get(uuid)
                    if lu is None and cu is None:
                        skip.add(uuid)
                        continue
                    if lu is not None and cu is not None and lu.compared() == cu.compared():
                        skip.add(uuid)
                        continue
                    if run.prefer == "central":
                        ter.add(uuid)
                        grp.add(uuid)
                        continue
                    local_changed = _changed_fields(conn, lvid, uuid, run.state.last_change_id,
                                                    _pull_like(run.state.target))
                    with run.central.read() as cconn:
                        central_changed = _changed_fields(
                            cconn, cvid, uuid, int(run.state.last_pull_marker or 0),
                            _own_push_like(run.state.client_id))
                    fig.conflicts.extend(_conflict_rows(lmeta, lu, cu, local_changed,
                                                        central_changed))
                    run.state.held = run.state.held | {(lvid, uuid)}
                    skip.add(uuid)
        apply = [u for u in cunits if u.uuid not in skip]
        gone = part_set - set(by_uuid) - skip
        if gone:
            apply += _expand_central_deletions(run, lmeta, cvid, gone, part_set, pending,
                                               skip)
            apply.sort(key=lambda u: (u.depth, u.fid or 0))
        with run.reg.write(origin=SYNC_ORIGIN, operation=run.op()) as conn:
            writer = UnitWriter(run.reg, conn, lvid, fig)
            writer.upsert(apply, territory_for=ter | ({u.uuid for u in apply} - part_set),
                          groups_for=grp,
                          releasable=_released_on(run.central, cvid, run.prefer == "central"))
            writer.delete(gone)
        if run.prefer == "central":
            run.state.held = {h for h in run.state.held if not (h[0] == lvid and h[1] in clash)}
        run.tick(phase="pull", version=f"{cmeta['source']} v{cmeta['number']}",
                 message="Pulling changes")
    if cmeta["status"] == "published" and lmeta["status"] != "published":
        if _pending_local(run, lvid):
            fig.conflicts.append({
                "source": cmeta["source"], "version": cmeta["number"], "uuid": None,
                "name": None, "field": "(status)", "local": "draft with unpushed changes",
                "central": "published", "changed_locally": True, "changed_centrally": True,
            })
        else:
            with run.reg.write(origin=SYNC_ORIGIN, operation=run.op()) as conn:
                _publish(conn, pg, lvid, cmeta)
            fig.versions_published += 1


def _expand_central_deletions(run: _Run, lmeta: dict[str, Any], cvid: int, gone: set[str],
                              part: set[str], pending: set[str], kept: set[str]
                              ) -> list[Unit]:
    """Units deleted centrally take what is below them here along (``gone`` grows),
    except what still exists centrally (moved there: returned, to be applied) and
    subtrees holding local changes not pushed yet (a conflict: nothing is deleted)."""
    lvid = lmeta["fid"]
    with run.reg.read() as conn:
        below = _below(conn, lvid, gone)
        names = {u.uuid: u.values["name"] for u in read_units(run.reg, conn, lvid, uuids=gone)}
    extra: list[Unit] = []
    for top, units in below.items():
        # units below it changed here keep it — those the central side deleted too in
        # this batch only when they are kept (held as conflicts; with prefer=central they
        # go, and it with them)
        changed_here = ((units - part) | (units & kept)) & pending
        units = units - part
        if changed_here:
            gone.discard(top)
            # held, so that a later pull looks at it again (and --prefer-central deletes it)
            run.state.held = run.state.held | {(lvid, top)}
            run.fig.conflicts.append({
                "source": lmeta["source"], "version": lmeta["number"], "uuid": top,
                "name": names.get(top), "field": "(unit)",
                "local": f"{len(changed_here)} unit(s) below it changed here",
                "central": "deleted", "changed_locally": True, "changed_centrally": True,
            })
            continue
        if not units:
            continue
        with run.central.read() as cconn:
            moved = _existing_uuids(cconn, cvid, units)
            if moved:
                extra += read_units(run.central, cconn, cvid, uuids=moved, everything=True)
        gone |= units - moved
    return extra


def _pull_groups(run: _Run, cvid: int, lvid: int) -> None:
    """Groups and group sets added or changed centrally (none is deleted here)."""
    with run.central.read() as cconn:
        snap = _groups(cconn, cvid)
    with run.reg.read() as conn:
        have = _groups(conn, lvid)
    if all(i in have.groups and _strip(have.groups[i]) == _strip(g)
           for i, g in snap.groups.items()) and all(
           i in have.sets and _strip(have.sets[i]) == _strip(g) for i, g in snap.sets.items()
    ) and snap.set_members <= have.set_members:
        return
    with run.central.read() as cconn:
        members = _group_members(cconn, cvid, set(snap.groups) - set(have.groups))
    with run.reg.write(origin=SYNC_ORIGIN, operation=run.op()) as conn:
        run.fig.groups_changed += _apply_groups(conn, lvid, snap, delete_extra=False)
        run.fig.memberships_added += _add_group_members(conn, lvid, members)


def _local_present(reg: Registry, lvid: int, uuids: set[str]) -> set[str]:
    with reg.read() as conn:
        return _existing_uuids(conn, lvid, uuids)


# --- checksums and status ------------------------------------------------------------------


def checksums(reg: Registry, sources: Iterable[str] | None = None) -> dict[str, Any]:
    """sha256 per table over the synced columns, by identity (comparable across registries)."""
    wanted = set(sources) if sources is not None else None
    digests: dict[str, Any] = {}
    counts: dict[str, int] = {}

    def digest(name: str, rows: Iterable[Any]) -> None:
        lines = sorted(json.dumps(r, sort_keys=True, ensure_ascii=False, default=str)
                       for r in rows)
        counts[name] = len(lines)
        digests[name] = hashlib.sha256("\n".join(lines).encode()).hexdigest()

    with reg.read() as conn:
        versions = [m for m in _versions(conn) if wanted is None or m["source"] in wanted]
        digest("data_source", {(m["source"], m["source_description"]) for m in versions})
        digest("source_version", [(m["source"], m["number"], m["status"], m["description"],
                                   bool(m["is_default"])) for m in versions])
        digest("org_unit_type", [tuple(r.values()) for r in _types(conn).values()])
        units: list[Any] = []
        territories: list[Any] = []
        members: list[Any] = []
        groups: list[Any] = []
        sets: list[Any] = []
        set_members: list[Any] = []
        for m in versions:
            label = (m["source"], m["number"])
            after: tuple[int, int] | None = None
            while True:
                batch = read_units(reg, conn, m["fid"], after=after, limit=20000, everything=True)
                if not batch:
                    break
                for u in batch:
                    comp = u.compared()
                    territory, unit_groups = comp.pop("territory"), comp.pop("groups")
                    units.append((label, u.uuid, comp))
                    if territory is not None:
                        territories.append((label, u.uuid, territory))
                    members.extend((label, u.uuid, g) for g in unit_groups)
                after = (batch[-1].depth, batch[-1].fid or 0)
            snap = _groups(conn, m["fid"])
            groups.extend((label, k, _strip(v)) for k, v in snap.groups.items())
            sets.extend((label, k, _strip(v)) for k, v in snap.sets.items())
            set_members.extend((label, s, g) for s, g in snap.set_members)
        digest("org_unit", units)
        digest("org_unit_territory", territories)
        digest("group_membership", members)
        digest("org_unit_group", groups)
        digest("group_set", sets)
        digest("group_set_member", set_members)
    return {"tables": digests, "counts": counts}


def status(reg: Registry, url: str, schema: str | None = None, *, compare: bool = False
           ) -> dict[str, Any]:
    """Where the sync with one central schema stands; with ``compare``, checksums of both."""
    location = central_location(url, schema)
    target = target_name(location)
    state = SyncState.load(reg, target)
    with reg.read() as conn:
        top = int(conn.execute(text("SELECT COALESCE(max(fid), 0) FROM change_log")).scalar_one())
        unpushed = conn.execute(
            text("SELECT count(*) FROM change_log WHERE fid > :a AND entity IN "
                 "('org_unit', 'territory', 'group_membership')"),
            {"a": state.last_change_id or 0},
        ).scalar_one()
    out: dict[str, Any] = {
        "target": target,
        "pushed_before": state.exists,
        "last_change_id": state.last_change_id,
        "local_change_log_top": top,
        "unpushed_changes": int(unpushed),
        "last_pull_marker": state.last_pull_marker,
        "held": sorted(u for _, u in state.held),
        "resuming": state.details.get("cursor") is not None,
        "last_push": state.details.get("last_push"),
        "last_pull": state.details.get("last_pull"),
    }
    # versions never sent whole (a new draft, a DHIS2 pull's new version): their units
    # are not in the change-log count above
    with reg.read() as conn:
        held_uuids = sorted(u for _, u in state.held)[:MAX_LISTED]
        held_names = {r.uuid: (r.name, r.source, r.number) for r in _in_rows(
            conn, "SELECT u.uuid, u.name, s.name AS source, v.number FROM org_unit u "
            "JOIN source_version v ON v.fid = u.version_id JOIN data_source s ON "
            "s.fid = v.source_id WHERE u.uuid IN :u", "u", held_uuids)} if held_uuids else {}
        out["held_units"] = [
            {"uuid": u, "name": held_names.get(u, (None,))[0],
             "version": f"{held_names[u][1]} v{held_names[u][2]}" if u in held_names else None}
            for u in held_uuids]
        counts: dict[int, int] = {int(v): int(n) for v, n in conn.execute(text(
            "SELECT version_id, count(*) FROM org_unit GROUP BY version_id"))}
        out["versions_not_pushed"] = [
            {"source": m["source"], "number": m["number"], "units": counts.get(m["fid"], 0)}
            for m in _versions(conn) if str(m["fid"]) not in state.versions]
    # the central side itself: reachable, holding a registry (a typo in the URL or the
    # schema shows here rather than as "never pushed")
    try:
        schema_there, registry_there = _probe(location)
        out["central"] = ("holds a registry" if registry_there else
                          "reachable; the schema holds no registry yet" if schema_there else
                          "reachable; no such schema yet")
    except GeoregError as error:
        out["central"] = f"not reachable: {error.message}"
    if compare:
        central, _ = open_central(location, create=False)
        try:
            with reg.read() as conn:
                names = sorted({m["source"] for m in _versions(conn)})
            local_sums = checksums(reg, names)
            central_sums = checksums(central, names)
        finally:
            central.close()
        out["tables"] = {
            name: {"local": local_sums["counts"][name], "central": central_sums["counts"][name],
                   "equal": local_sums["tables"][name] == central_sums["tables"][name]}
            for name in local_sums["tables"]
        }
        out["equal"] = all(t["equal"] for t in out["tables"].values())
    return out


# --- jobs ----------------------------------------------------------------------------------


class _SyncJob(Job[dict[str, Any]]):
    def __init__(self, reg: Registry, url: str, schema: str | None = None, **options: Any
                 ) -> None:
        super().__init__()
        self.reg, self.url, self.schema, self.options = reg, url, schema, options

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled(
                f"{self.title}: cancelled. What was sent so far is recorded; running it "
                "again continues from there."
            )


class PushJob(_SyncJob):
    title = "Pushing to PostGIS"

    def execute(self) -> dict[str, Any]:
        return push(self.reg, self.url, self.schema, job=self, **self.options)


class PullJob(_SyncJob):
    title = "Pulling from PostGIS"

    def execute(self) -> dict[str, Any]:
        return pull(self.reg, self.url, self.schema, job=self, **self.options)
