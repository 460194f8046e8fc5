"""Merge conflicts: list them, resolve them (with audit), and the publish guard's question.

``resolve_conflict(reg, 12, take="theirs")`` applies the chosen value to the merged
draft in one write transaction (origin ``merge``, the resolver as author, so the
change log says who decided what) and marks the conflict resolved.  What ``take``
means per kind:

=================  ==========================================================================
kind               ours / theirs / base / value
=================  ==========================================================================
field, move_move,  set the field to that side's value (``value``: a value typed by the user,
cycle              read like ``georeg edit`` reads it; parent = uuid or ref)
edit_delete        the side that deleted → the unit and everything below it go; the other
                   side (or base) → the unit gets that side's values
duplicate_new      ours → keep our unit, theirs' goes (its children move to ours); theirs →
                   the other way round; ``both`` → they are different places, keep both;
                   base → neither (children move to their parent)
=================  ==========================================================================
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, text

from storage.errors import ConflictError, InvalidInput, NotFound
from storage.merging.apply import Writer
from storage.merging.job import _now, jsonb, resolve
from storage.merging.snapshot import FIELDS, from_json
from storage.registry import Registry, json_value
from storage.versions import VersionRef, require_draft, version_by_id

TAKES = ("ours", "theirs", "base", "value", "both")
ORIGIN = "merge"
_COLUMNS = ("fid, merge_run_id, version_id, unit_uuid, other_uuid, kind, field, base_value, "
            "ours_value, theirs_value, message, status, resolution, resolved_value, resolver, "
            "resolved_at, created_at")


def open_conflict_count(conn: Connection, version_id: int) -> int:
    """How many unresolved merge conflicts a version has (publishing needs 0)."""
    return int(conn.execute(
        text("SELECT count(*) FROM merge_conflict WHERE version_id = :v AND status = 'open'"),
        {"v": version_id},
    ).scalar_one())


def _conflict_dict(conn: Connection, row: Any) -> dict[str, Any]:
    version = version_by_id(conn, row.version_id)
    name = conn.execute(
        text("SELECT name FROM org_unit WHERE version_id = :v AND uuid = :u"),
        {"v": row.version_id, "u": row.unit_uuid},
    ).scalar()
    return {
        "id": int(row.fid),
        "merge_run": row.merge_run_id,
        "version": version.to_dict(),
        "unit_uuid": row.unit_uuid,
        "unit_name": name,
        "other_uuid": row.other_uuid,
        "kind": row.kind,
        "field": row.field,
        "base": json_value(row.base_value),
        "ours": json_value(row.ours_value),
        "theirs": json_value(row.theirs_value),
        "message": row.message,
        "status": row.status,
        "resolution": row.resolution,
        "resolved_value": json_value(row.resolved_value),
        "resolver": row.resolver,
        "resolved_at": row.resolved_at,
        "created_at": row.created_at,
    }


def list_conflicts(reg: Registry, version: str | VersionRef | None = None, *,
                   status: str | None = None) -> list[dict[str, Any]]:
    """Conflicts of one merged version (or of every version), oldest first."""
    if status not in (None, "open", "resolved"):
        raise InvalidInput(f"Conflict status must be 'open' or 'resolved', not {status!r}.")
    with reg.read() as conn:
        where: list[str] = []
        params: dict[str, Any] = {}
        if version is not None:
            where.append("version_id = :v")
            params["v"] = resolve(conn, version).id
        if status is not None:
            where.append("status = :s")
            params["s"] = status
        rows = conn.execute(
            text(f"SELECT {_COLUMNS} FROM merge_conflict"
                 + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY fid"),
            params,
        ).all()
        return [_conflict_dict(conn, r) for r in rows]


def get_conflict(reg: Registry, conflict_id: int) -> dict[str, Any]:
    with reg.read() as conn:
        return _conflict_dict(conn, _row(conn, conflict_id))


def _row(conn: Connection, conflict_id: int) -> Any:
    row = conn.execute(text(f"SELECT {_COLUMNS} FROM merge_conflict WHERE fid = :c"),
                       {"c": conflict_id}).first()
    if row is None:
        raise NotFound(f"No merge conflict {conflict_id}. List them with "
                       "'georeg conflicts list REG'.")
    return row


def resolve_conflict(reg: Registry, conflict_id: int, take: str, value: Any = None, *,
                     resolver: str | None = None, origin: str = ORIGIN) -> dict[str, Any]:
    """Apply ``take`` (ours | theirs | base | value | both) to the merged draft."""
    if take not in TAKES:
        raise InvalidInput(f"--take must be one of {', '.join(TAKES)}, not {take!r}.")
    if (take == "value") != (value is not None):
        raise InvalidInput("Give --value together with --take value (and only then).")
    with reg.write(origin=origin, author=resolver) as conn:
        row = _row(conn, conflict_id)
        if row.status != "open":
            raise ConflictError(f"Conflict {conflict_id} is already resolved ({row.resolution} "
                                f"by {row.resolver or 'unknown'} at {row.resolved_at}).")
        version = version_by_id(conn, row.version_id)
        require_draft(version)
        where = f"Conflict {conflict_id}"
        gone = not conn.execute(
            text("SELECT 1 FROM org_unit WHERE version_id = :v AND uuid IN (:u, :o)"),
            {"v": version.id, "u": row.unit_uuid, "o": row.other_uuid or row.unit_uuid},
        ).first()
        if take not in ("value", "both") and gone:
            take, chosen = "unit_deleted", {"unit_deleted": True}  # nothing left to decide
        elif row.kind == "duplicate_new":
            chosen = _resolve_duplicate(reg, conn, version, row, take, where)
        elif take == "both":
            raise InvalidInput(f"{where}: --take both only applies to two new units that may be "
                               "the same place (kind duplicate_new).")
        elif row.kind == "edit_delete":
            chosen = _resolve_edit_delete(reg, conn, version, row, take, where)
        else:
            chosen = _resolve_field(reg, conn, version, row, take, value, where)
        conn.execute(
            text("UPDATE merge_conflict SET status = 'resolved', resolution = :t, "
                 f"resolved_value = {jsonb(conn, 'val')}, resolver = :r, resolved_at = :at "
                 "WHERE fid = :c"),
            {"t": take, "val": json.dumps(chosen, ensure_ascii=False, default=str),
             "r": resolver if resolver is not None else _author(conn), "at": _now(),
             "c": conflict_id},
        )
        closed = _close_conflicts_of_deleted_units(conn, version, conflict_id, resolver)
        return _conflict_dict(conn, _row(conn, conflict_id)) | {"also_closed": closed}


def _close_conflicts_of_deleted_units(conn: Connection, version: VersionRef, by: int,
                                      resolver: str | None) -> list[int]:
    """Open conflicts about units this resolution deleted are moot: close them, saying why."""
    ids = [int(r[0]) for r in conn.execute(
        text("SELECT c.fid FROM merge_conflict c WHERE c.version_id = :v AND c.status = 'open' "
             "AND NOT EXISTS (SELECT 1 FROM org_unit u WHERE u.version_id = c.version_id AND "
             "u.uuid IN (c.unit_uuid, COALESCE(c.other_uuid, c.unit_uuid))) ORDER BY c.fid"),
        {"v": version.id})]
    for fid in ids:
        conn.execute(
            text("UPDATE merge_conflict SET status = 'resolved', resolution = 'unit_deleted', "
                 f"resolved_value = {jsonb(conn, 'val')}, resolver = :r, resolved_at = :at "
                 "WHERE fid = :c"),
            {"val": json.dumps({"unit_deleted": True, "by_conflict": by}),
             "r": resolver if resolver is not None else _author(conn), "at": _now(), "c": fid},
        )
    return ids


def _author(conn: Connection) -> str | None:
    from storage.versions import _author as author_of

    return author_of(conn)


def _writer(reg: Registry, conn: Connection, version: VersionRef) -> Writer:
    keys = {r[0]: int(r[1]) for r in conn.execute(
        text("SELECT uuid, unit_key FROM org_unit WHERE version_id = :v"), {"v": version.id})}
    return Writer(conn, reg.backend, version.id, keys)


def _stored(row: Any, take: str) -> Any:
    return json_value({"ours": row.ours_value, "theirs": row.theirs_value,
                       "base": row.base_value}[take])


def _require_unit(writer: Writer, uuid: str, version: VersionRef, where: str) -> None:
    if uuid not in writer.keys:
        raise NotFound(f"{where}: unit {uuid} is no longer in {version.label} (deleted since the "
                       "merge?). Re-create it or resolve with the side that deleted it.")


def _set_field(reg: Registry, conn: Connection, writer: Writer, version: VersionRef, uuid: str,
               name: str, value: Any, where: str) -> None:
    """Write one field (value in JSON form) on one unit of the merged draft."""
    if name.startswith("extra_fields."):
        key = name.split(".", 1)[1]
        current = json_value(conn.execute(
            text("SELECT extra_fields FROM org_unit WHERE version_id = :v AND uuid = :u"),
            {"v": version.id, "u": uuid}).scalar()) or {}
        current = dict(current)
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
        writer.update(uuid, {"extra_fields": current or None})
        return
    raw = from_json(name, value, conn, version, where)
    if name == "parent":
        if raw is not None and raw not in writer.keys:
            raise NotFound(f"{where}: the parent {raw} is not in {version.label}.")
        writer.move(uuid, raw)
    elif name == "groups":
        before = frozenset(int(r[0]) for r in conn.execute(
            text("SELECT group_key FROM group_membership WHERE version_id = :v AND unit_key = :k"),
            {"v": version.id, "k": writer.keys[uuid]}))
        writer.set_groups(uuid, before, raw)
    else:
        writer.update(uuid, {name: raw})


def _resolve_field(reg: Registry, conn: Connection, version: VersionRef, row: Any, take: str,
                   value: Any, where: str) -> Any:
    chosen = value if take == "value" else _stored(row, take)
    writer = _writer(reg, conn, version)
    _require_unit(writer, row.unit_uuid, version, where)
    _set_field(reg, conn, writer, version, row.unit_uuid, row.field, chosen, where)
    return chosen


def _delete_subtree(conn: Connection, version: VersionRef, uuid: str) -> int:
    path = conn.execute(text("SELECT path FROM org_unit WHERE version_id = :v AND uuid = :u"),
                        {"v": version.id, "u": uuid}).scalar()
    if path is None:
        return 0
    return int(conn.execute(
        text("DELETE FROM org_unit WHERE version_id = :v AND path >= :lo AND path < :hi"),
        {"v": version.id, "lo": path, "hi": path[:-1] + "0"},
    ).rowcount)


def _resolve_edit_delete(reg: Registry, conn: Connection, version: VersionRef, row: Any,
                         take: str, where: str) -> Any:
    if take == "value":
        raise InvalidInput(f"{where}: a unit deleted on one side and kept on the other is "
                           "resolved with --take ours, theirs or base (then edit it if needed).")
    snapshot = _stored(row, take)
    if snapshot is None:
        return {"deleted": _delete_subtree(conn, version, row.unit_uuid)}
    writer = _writer(reg, conn, version)
    _require_unit(writer, row.unit_uuid, version, where)
    for name in FIELDS:
        if name in snapshot:
            if name == "parent" and snapshot[name] is not None and snapshot[name] not in writer.keys:
                continue  # its old parent is gone: it stays where the merge put it
            _set_field(reg, conn, writer, version, row.unit_uuid, name, snapshot[name], where)
    return {"kept": take}


def _resolve_duplicate(reg: Registry, conn: Connection, version: VersionRef, row: Any,
                       take: str, where: str) -> Any:
    if take == "value":
        raise InvalidInput(f"{where}: two new units that may be the same place are resolved with "
                           "--take ours, theirs, both (different places) or base (neither).")
    if take == "both":
        return {"kept": [row.unit_uuid, row.other_uuid]}
    writer = _writer(reg, conn, version)
    ours, theirs = row.unit_uuid, row.other_uuid
    drop = {"ours": [theirs], "theirs": [ours], "base": [ours, theirs]}[take]
    keep = {"ours": ours, "theirs": theirs, "base": None}[take]
    for uuid in drop:
        if uuid not in writer.keys:
            continue
        new_parent = keep
        if new_parent is None:
            new_parent = conn.execute(
                text("SELECT p.uuid FROM org_unit u JOIN org_unit p ON p.version_id = u.version_id "
                     "AND p.unit_key = u.parent_key WHERE u.version_id = :v AND u.uuid = :u"),
                {"v": version.id, "u": uuid}).scalar()
        children = [r[0] for r in conn.execute(
            text("SELECT uuid FROM org_unit WHERE version_id = :v AND parent_key = :k"),
            {"v": version.id, "k": writer.keys[uuid]})]
        for child in children:
            if child not in drop:
                writer.move(child, new_parent)
        writer.delete([uuid])
    return {"kept": keep, "removed": drop}
