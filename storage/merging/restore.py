"""Units deleted in a version's line, read back from the change log: told apart, restored.

Links and earlier merges name units by uuid.  When such a uuid is not in the version
any more, two very different things may have happened:

* the unit was **deleted** in the version, or in a version it was copied from (its
  *line*, :func:`storage.merging.job.version_line`): the change log keeps that delete,
  with the unit's values at the time (``org_unit`` / ``delete``, ``before``), and the
  versions it was copied from may still hold it;
* the uuid **never existed** in that line: the links were made for other versions
  (a list imported again gets new uuids).

:func:`gone_from_line` tells them apart, so a merge drops the links of deleted units
(a clean-up of closed facilities is legitimate) and stops only for the second case.
:func:`restorable_units` rebuilds a deleted unit as it was when deleted (row values,
location, parent, groups, territory), so ``--re-add-deleted`` brings back *that* unit,
with its uuid — its history, change requests, submissions and DHIS2 id still point at
it — rather than a stranger with a new uuid.  :func:`log_restores` writes the
``restore`` entry of the change log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, text

from storage import audit_sql, geometry
from storage.backends import Backend
from storage.errors import NotFound
from storage.merging.snapshot import Snapshot, UnitState
from storage.registry import json_value
from storage.versions import VersionRef, version_by_id

CHUNK = 500  # uuids per query (SQLite's bound-parameter limit is far above)


def _in(prefix: str, values: list[Any]) -> tuple[str, dict[str, Any]]:
    names = ", ".join(f":{prefix}{i}" for i in range(len(values)))
    return names, {f"{prefix}{i}": v for i, v in enumerate(values)}


def line_windows(conn: Connection, lineage: list[int]) -> tuple[str, dict[str, Any]]:
    """A SQL condition on ``version_id`` and ``fid``: the change-log rows of LINEAGE's content.

    A version of the line counts up to the moment the next one was copied from it (its
    ``create`` entry): what happened in an ancestor after that copy is not in the
    versions made from it.
    """
    parts, params = [], {}
    child: int | None = None
    for i, vid in enumerate(lineage):
        params[f"lv{i}"] = vid
        upper = None
        if child is not None:
            upper = conn.execute(
                text("SELECT min(fid) FROM change_log WHERE entity = 'version' AND op = 'create' "
                     "AND version_id = :v"), {"v": child}).scalar()
        if upper is None:
            parts.append(f"version_id = :lv{i}")
        else:
            params[f"lf{i}"] = int(upper)
            parts.append(f"(version_id = :lv{i} AND fid < :lf{i})")
        child = vid
    return "(" + " OR ".join(parts or ["1 = 0"]) + ")", params


def deletes_in_line(conn: Connection, lineage: list[int], uuids: Iterable[str]
                    ) -> dict[str, dict[str, Any]]:
    """uuid → the newest change-log delete of that unit in LINEAGE's content.

    Each value holds the log row's ``fid``, ``version_id``, ``at``, ``author``,
    ``operation`` and ``before`` (the unit's row as it was, a dict).  A uuid without a
    logged delete in the line is absent.
    """
    wanted = list(dict.fromkeys(uuids))
    out: dict[str, dict[str, Any]] = {}
    if not wanted or not lineage:
        return out
    window, w_params = line_windows(conn, lineage)
    for i in range(0, len(wanted), CHUNK):
        names, u_params = _in("u", wanted[i:i + CHUNK])
        rows = conn.execute(
            text("SELECT fid, version_id, at, author, operation, unit_uuid, before "
                 "FROM change_log WHERE entity = 'org_unit' AND op = 'delete' "
                 f"AND unit_uuid IN ({names}) AND {window} ORDER BY fid"),
            u_params | w_params).all()
        for r in rows:  # oldest first: the newest delete of a uuid wins
            before = json_value(r.before)
            out[r.unit_uuid] = {"fid": int(r.fid), "version_id": int(r.version_id), "at": r.at,
                                "author": r.author, "operation": r.operation,
                                "before": before if isinstance(before, dict) else {}}
    return out


class LineDeletes:
    """:func:`deletes_in_line` for one line, each uuid looked up once per merge (the link
    check, :func:`storage.merging.job.deleted_here` and the restore ask about the same
    units)."""

    def __init__(self, conn: Connection, lineage: list[int]) -> None:
        self.conn, self.lineage = conn, lineage
        self._known: dict[str, dict[str, Any] | None] = {}

    def of(self, uuids: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = list(dict.fromkeys(uuids))
        missing = [u for u in wanted if u not in self._known]
        if missing:
            found = deletes_in_line(self.conn, self.lineage, missing)
            for u in missing:
                self._known[u] = found.get(u)
        return {u: d for u in wanted if (d := self._known[u]) is not None}


def held_by_ancestors(conn: Connection, lineage: list[int], uuids: Iterable[str]) -> set[str]:
    """The uuids a version LINEAGE's first version was copied from (directly or not) holds."""
    wanted = list(dict.fromkeys(uuids))
    ancestors = lineage[1:]
    found: set[str] = set()
    if not wanted or not ancestors:
        return found
    versions_in, v_params = _in("v", ancestors)
    for i in range(0, len(wanted), CHUNK):
        names, u_params = _in("u", wanted[i:i + CHUNK])
        found.update(r[0] for r in conn.execute(
            text(f"SELECT DISTINCT uuid FROM org_unit WHERE uuid IN ({names}) "
                 f"AND version_id IN ({versions_in})"), u_params | v_params))
    return found


def gone_from_line(conn: Connection, lineage: list[int], uuids: Iterable[str],
                   deletes: LineDeletes | None = None) -> set[str]:
    """The uuids (none of them in LINEAGE's first version) that were deleted on the way.

    Deleted means: the change log has a delete of the unit in a version of the line
    (the version itself included), or a version the first one was copied from still
    holds it (so it went missing after the copy).  Any other uuid never was in the
    line: whatever names it (a link) was made for another version.
    """
    wanted = list(dict.fromkeys(uuids))
    gone = set((deletes or LineDeletes(conn, lineage)).of(wanted))
    return gone | held_by_ancestors(conn, lineage, [u for u in wanted if u not in gone])


def _json_field(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) or None
        except ValueError:
            return None
    return value or None


def _date(value: Any) -> str | None:
    return str(value)[:10] if value else None


def restorable_units(conn: Connection, backend: Backend, lineage: list[int], target: Snapshot,
                     uuids: Iterable[str], line_deletes: LineDeletes | None = None,
                     ) -> tuple[dict[str, UnitState], dict[str, dict[str, Any]]]:
    """The deleted units UUIDS as they were when deleted in TARGET's line, ready to insert.

    Returns (uuid → :class:`UnitState` with the old ``unit_key``, uuid → its delete in
    the change log).  Values come from the delete's ``before`` (the row as it was);
    the groups from the memberships the same operation deleted; the territory from the
    unit's last territory change logged before the delete, else from the newest version
    of the line that still holds it.  ``parent`` is the old parent's uuid when that
    parent is in TARGET or is one of UUIDS itself (keys are stable along a line), else
    None: the merge then places the unit under the target-side match of its source
    parent.  A uuid whose delete the change log does not hold is left out (it cannot
    be restored as it was).
    """
    deletes = (line_deletes or LineDeletes(conn, lineage)).of(uuids)
    key_to_uuid = {int(d["before"]["unit_key"]): u for u, d in deletes.items()
                   if d["before"].get("unit_key") is not None}
    key_to_uuid.update(target.key_to_uuid)  # a unit still in the target wins
    groups = _deleted_memberships(conn, deletes, target)
    territories = _territories(conn, backend, lineage, deletes)
    out: dict[str, UnitState] = {}
    for uuid, d in deletes.items():
        b = d["before"]
        key = int(b["unit_key"]) if b.get("unit_key") is not None else None
        parent_key = b.get("parent_key")
        out[uuid] = UnitState(uuid, key, {
            "name": b.get("name"),
            "code": b.get("code"),
            "source_ref": b.get("source_ref"),
            "type": b.get("type_id"),
            "parent": key_to_uuid.get(int(parent_key)) if parent_key is not None else None,
            "validation_status": b.get("validation_status"),
            "opening_date": _date(b.get("opening_date")),
            "closed_date": _date(b.get("closed_date")),
            "aliases": _json_field(b.get("aliases")),
            "extra_fields": _json_field(b.get("extra_fields")),
            "location": geometry.decode_audit_hex(backend, b.get("location")),
            "territory": territories.get(uuid),
            "groups": frozenset(groups.get(uuid, ())),
        })
    return out, deletes


def _deleted_memberships(conn: Connection, deletes: dict[str, dict[str, Any]],
                         target: Snapshot) -> dict[str, set[int]]:
    """uuid → the group keys its delete removed (the memberships the same operation
    deleted in the same version, logged by unit key), for the groups TARGET still has."""
    by_key: dict[tuple[int, str | None, int], str] = {}
    for uuid, d in deletes.items():
        key = d["before"].get("unit_key")
        if key is not None:
            by_key[(d["version_id"], d["operation"], int(key))] = uuid
    out: dict[str, set[int]] = {}
    keys = sorted({k for _v, _o, k in by_key})
    versions_in, v_params = _in("v", sorted({v for v, _o, _k in by_key}))
    for i in range(0, len(keys), CHUNK):
        names, k_params = _in("k", keys[i:i + CHUNK])
        for vid, operation, unit_key, before in conn.execute(
                text("SELECT version_id, operation, unit_key, before FROM change_log WHERE "
                     "entity = 'group_membership' AND op = 'delete' AND "
                     f"unit_key IN ({names}) AND version_id IN ({versions_in})"),
                k_params | v_params):
            owner = by_key.get((int(vid), operation, int(unit_key)))
            group = (json_value(before) or {}).get("group_key")
            if owner is not None and group is not None and int(group) in target.groups:
                out.setdefault(owner, set()).add(int(group))
    return out


def _territories(conn: Connection, backend: Backend, lineage: list[int],
                 deletes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """uuid → the territory the unit had when deleted: its last territory change logged
    in the line before the delete (not the delete's own removal of it), else — a unit
    that arrived with a whole version (import, copy), never changed since — as the
    newest version of the line that holds it has it."""
    window, w_params = line_windows(conn, lineage)
    uuids = list(deletes)
    out: dict[str, Any] = {}
    logged: set[str] = set()
    for i in range(0, len(uuids), CHUNK):
        names, u_params = _in("u", uuids[i:i + CHUNK])
        for uuid, fid, op, operation, after in conn.execute(
                text("SELECT unit_uuid, fid, op, operation, after FROM change_log WHERE "
                     f"entity = 'territory' AND unit_uuid IN ({names}) AND {window} "
                     "ORDER BY fid"), u_params | w_params):
            d = deletes[uuid]
            if fid >= d["fid"] or (op == "delete" and operation == d["operation"]):
                continue  # after the delete, or the delete's own removal of the territory
            logged.add(uuid)
            out[uuid] = (None if op == "delete" else geometry.decode_audit_hex(
                backend, (json_value(after) or {}).get("territory")))
    rest = [u for u in uuids if u not in logged]
    rank = {vid: i for i, vid in enumerate(lineage)}
    found: dict[str, int] = {}
    versions_in, v_params = _in("v", lineage)
    ter_sql = geometry.select_sql(backend, "t.territory")
    for i in range(0, len(rest), CHUNK):
        names, u_params = _in("u", rest[i:i + CHUNK])
        for uuid, vid, blob in conn.execute(
                text(f"SELECT u.uuid, u.version_id, {ter_sql} FROM org_unit_territory t "
                     f"JOIN org_unit u ON u.fid = t.unit_fid WHERE u.uuid IN ({names}) "
                     f"AND u.version_id IN ({versions_in})"), u_params | v_params):
            if uuid not in found or rank[int(vid)] < found[uuid]:
                found[uuid] = rank[int(vid)]
                out[uuid] = geometry.decode(backend, blob)
    return out


def log_restores(conn: Connection, backend: Backend, version: VersionRef,
                 restored: list[dict[str, Any]], deletes: dict[str, dict[str, Any]]) -> None:
    """One ``restore`` entry per restored unit, after the ``insert`` the trigger logged.

    The insert row keeps its meaning for every reader of the log (sync, history); the
    restore row says which delete it undoes (``restores``: that change's id, version,
    time and author), so the unit's history reads: deleted …, restored by a merge.
    """
    join, ctx = audit_sql.context_columns(backend)
    cast = "CAST(:{0} AS jsonb)" if backend is Backend.POSTGIS else ":{0}"
    labels: dict[int, str] = {}
    rows = []
    for r in restored:
        d = deletes[r["uuid"]]
        vid = d["version_id"]
        if vid not in labels:
            try:
                labels[vid] = version_by_id(conn, vid).label
            except NotFound:  # a version deleted since: say so, do not fail
                labels[vid] = "(deleted version)"
        what = (f"change #{d['fid']}: deleted in {labels[vid]} at {d['at']}"
                + (f" by {d['author']}" if d.get("author") else ""))
        rows.append({"v": version.id, "u": r["uuid"],
                     "b": json.dumps({"name": r["name"]}, ensure_ascii=False),
                     "a": json.dumps({"name": r["name"], "restores": what}, ensure_ascii=False)})
    if rows:
        conn.execute(
            text(f"INSERT INTO change_log ({audit_sql.LOG_COLUMNS}) SELECT u.version_id, "
                 f"'org_unit', 'restore', u.uuid, u.unit_key, u.fid, {cast.format('b')}, "
                 f"{cast.format('a')}, {ctx} FROM org_unit u{join} "
                 "WHERE u.version_id = :v AND u.uuid = :u"), rows)
