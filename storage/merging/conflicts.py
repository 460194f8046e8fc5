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
edit_delete        the side that deleted → the unit, what that side deleted below it and
                   what the other side added there go; units the other side *moved in*
                   (they have a place elsewhere) go back where the deleting side has them
                   (see :func:`_delete_for_deleting_side`); the other side (or base) → the
                   unit gets that side's values
duplicate_new      ours → keep our unit, theirs' goes (its children move to ours); theirs →
                   the other way round; ``both`` → they are different places, keep both;
                   base → neither (children move to their parent)
=================  ==========================================================================

:class:`BulkResolveJob` (``resolve_conflicts``) applies one ``take`` to every open
conflict of a version (optionally of one kind) in one transaction; a conflict the
take does not fit, or that is refused, is skipped with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, exc, text

from storage.errors import ConflictError, GeoregError, InvalidInput, NotFound
from storage.jobs import Job
from storage.merging.apply import Writer
from storage.merging.job import _now, jsonb, resolve
from storage.merging.snapshot import FIELDS, from_json
from storage.merging.three_way import CONFLICT_KINDS
from storage.registry import Registry, json_value, translate_db_error
from storage.versions import VersionRef, require_draft, version_by_id

TAKES = ("ours", "theirs", "base", "value", "both")
#: what a bulk resolution may take: ``value`` is one typed value, for one conflict
BULK_TAKES = ("ours", "theirs", "base", "both")
ORIGIN = "merge"
_COLUMNS = ("fid, merge_run_id, version_id, unit_uuid, other_uuid, kind, field, base_value, "
            "ours_value, theirs_value, message, status, resolution, resolved_value, resolver, "
            "resolved_at, created_at")
_CHUNK = 500  # uuids per IN (…) list: well under every backend's bound-parameter limit


def open_conflict_count(conn: Connection, version_id: int) -> int:
    """How many unresolved merge conflicts a version has (publishing needs 0)."""
    return int(conn.execute(
        text("SELECT count(*) FROM merge_conflict WHERE version_id = :v AND status = 'open'"),
        {"v": version_id},
    ).scalar_one())


# --- reading ---------------------------------------------------------------------------


def _run_versions(conn: Connection, run_id: int | None) -> dict[str, int]:
    """The versions a merge read (``base``, ``ours``, ``theirs``), by their ids."""
    if run_id is None:
        return {}
    row = conn.execute(
        text("SELECT target_version_id, source_version_id, theirs_version_id FROM merge_run "
             "WHERE fid = :r"), {"r": run_id}).first()
    if row is None:
        return {}
    return {k: int(v) for k, v in zip(("base", "ours", "theirs"), row, strict=True)
            if v is not None}


def _unit_info(conn: Connection, uuid: str, version_ids: list[int]) -> dict[str, Any] | None:
    """Name, ref and place (ancestors' names) of a unit, from the first version holding it.

    A conflict stores parents as uuids (stable across versions, what a script needs);
    a person needs the name, and where two units share that name, the ref or place.
    """
    for version_id in version_ids:
        row = conn.execute(
            text("SELECT name, source_ref, path FROM org_unit WHERE version_id = :v AND "
                 "uuid = :u"), {"v": version_id, "u": uuid}).first()
        if row is None:
            continue
        keys = [int(k) for k in (row.path or "").strip("/").split("/") if k][:-1]
        names = {int(k): n for k, n in conn.execute(
            text("SELECT unit_key, name FROM org_unit WHERE version_id = :v AND unit_key IN "
                 f"({', '.join(str(k) for k in keys) or 'NULL'})"), {"v": version_id})}
        shared = int(conn.execute(
            text("SELECT count(*) FROM org_unit WHERE version_id = :v AND name = :n"),
            {"v": version_id, "n": row.name}).scalar_one()) > 1
        return {"uuid": uuid, "name": row.name, "ref": row.source_ref,
                "place": "/".join(names.get(k, "?") for k in keys), "name_shared": shared}
    return None


def unit_label(info: dict[str, Any] | None, uuid: str | None = None) -> str:
    """How text output names a unit: its name, with its ref (or place) when not unique."""
    if info is None:
        return "—" if uuid is None else f"unit {uuid[:13]}… (not in these versions)"
    label = str(info["name"])
    if info.get("name_shared"):
        label += f" (ref {info['ref']})" if info.get("ref") else f" (in {info['place'] or '/'})"
    return label


def _parents(conn: Connection, row: Any, version_ids: list[int]) -> dict[str, Any] | None:
    """Names of the parents a conflict's values give (None for conflicts about no parent)."""
    sides = ("base", "ours", "theirs")
    values = {s: json_value(getattr(row, f"{s}_value")) for s in sides}
    if row.kind in ("edit_delete", "duplicate_new"):
        uuids = {s: v.get("parent") if isinstance(v, dict) else None for s, v in values.items()}
    elif row.field == "parent":
        uuids = {s: v if isinstance(v, str) else None for s, v in values.items()}
    else:
        return None
    return {s: _unit_info(conn, u, version_ids) if u else None for s, u in uuids.items()}


def _conflict_dict(conn: Connection, row: Any) -> dict[str, Any]:
    version = version_by_id(conn, row.version_id)
    name = conn.execute(
        text("SELECT name FROM org_unit WHERE version_id = :v AND uuid = :u"),
        {"v": row.version_id, "u": row.unit_uuid},
    ).scalar()
    if name is None and row.kind in ("edit_delete", "duplicate_new"):  # gone since: as it was
        name = next((v.get("name") for v in (json_value(row.base_value),
                                             json_value(row.ours_value),
                                             json_value(row.theirs_value))
                     if isinstance(v, dict)), None)
    read = _run_versions(conn, row.merge_run_id)
    version_ids = [row.version_id, *(read[s] for s in ("base", "ours", "theirs") if s in read)]
    out = {
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
    parents = _parents(conn, row, version_ids)
    if parents is not None:
        out["parents"] = parents  # side → {uuid, name, ref, place, name_shared} or None
    return out


def _filters(conn: Connection, version: str | VersionRef | None, status: str | None,
             kind: str | None) -> tuple[str, dict[str, Any]]:
    if status not in (None, "open", "resolved"):
        raise InvalidInput(f"Conflict status must be 'open' or 'resolved', not {status!r}.")
    if kind is not None and kind not in CONFLICT_KINDS:
        raise InvalidInput(f"Conflict kind must be one of {', '.join(CONFLICT_KINDS)}, "
                           f"not {kind!r}.")
    where: list[str] = []
    params: dict[str, Any] = {}
    if version is not None:
        where.append("version_id = :v")
        params["v"] = resolve(conn, version).id
    if status is not None:
        where.append("status = :s")
        params["s"] = status
    if kind is not None:
        where.append("kind = :k")
        params["k"] = kind
    return (" WHERE " + " AND ".join(where) if where else ""), params


def list_conflicts(reg: Registry, version: str | VersionRef | None = None, *,
                   status: str | None = None, kind: str | None = None,
                   limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """Conflicts of one merged version (or of every version), oldest first.

    ``limit`` / ``offset`` page through them (a merge of two big drafts may have
    thousands); without ``limit`` every one is returned, as scripts expect.
    """
    if (limit is not None and limit < 1) or offset < 0:
        raise InvalidInput("--limit must be 1 or more and --offset 0 or more.")
    with reg.read() as conn:
        where, params = _filters(conn, version, status, kind)
        page = ""
        if limit is not None or offset:
            page = " LIMIT :lim OFFSET :off"
            params |= {"lim": limit if limit is not None else -1 if
                       conn.dialect.name == "sqlite" else None, "off": offset}
        rows = conn.execute(
            text(f"SELECT {_COLUMNS} FROM merge_conflict{where} ORDER BY fid{page}"), params,
        ).all()
        return [_conflict_dict(conn, r) for r in rows]


def conflict_summary(reg: Registry, version: str | VersionRef | None = None, *,
                     status: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """How many conflicts match, by status and by kind (the line above a listing)."""
    with reg.read() as conn:
        where, params = _filters(conn, version, status, kind)
        by_status: dict[str, int] = {}
        by_kind: dict[str, dict[str, int]] = {}
        for k, s, n in conn.execute(
            text(f"SELECT kind, status, count(*) FROM merge_conflict{where} "
                 "GROUP BY kind, status"), params):
            by_status[s] = by_status.get(s, 0) + int(n)
            by_kind.setdefault(k, {})[s] = int(n)
        return {"total": sum(by_status.values()), "by_status": by_status, "by_kind": by_kind}


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


# --- resolving -------------------------------------------------------------------------


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
        chosen, closed = _resolve_open(reg, conn, version, _writer(reg, conn, version), row,
                                       take, value, resolver)
        return _conflict_dict(conn, _row(conn, conflict_id)) | {"also_closed": closed,
                                                                "applied": chosen}


def _resolve_open(reg: Registry, conn: Connection, version: VersionRef, writer: Writer, row: Any,
                  take: str, value: Any, resolver: str | None) -> tuple[Any, list[int]]:
    """Resolve one open conflict inside the caller's transaction: the one place that does.

    Returns what was applied (stored as the conflict's ``resolved_value``) and the ids
    of the conflicts closed because their units went with it.  ``writer`` is the
    draft's, kept up to date (a bulk resolution shares one across thousands).
    """
    where = f"Conflict {row.fid}"
    gone = row.unit_uuid not in writer.keys and (row.other_uuid or row.unit_uuid) not in writer.keys
    if take not in ("value", "both") and gone:
        take, chosen = "unit_deleted", {"unit_deleted": True}  # nothing left to decide
    elif row.kind == "duplicate_new":
        chosen = _resolve_duplicate(reg, conn, writer, version, row, take, where)
    elif take == "both":
        raise InvalidInput(f"{where}: --take both only applies to two new units that may be "
                           "the same place (kind duplicate_new).")
    elif row.kind == "edit_delete":
        chosen = _resolve_edit_delete(reg, conn, writer, version, row, take, where)
    else:
        chosen = _resolve_field(reg, conn, writer, version, row, take, value, where)
    conn.execute(
        text("UPDATE merge_conflict SET status = 'resolved', resolution = :t, "
             f"resolved_value = {jsonb(conn, 'val')}, resolver = :r, resolved_at = :at "
             "WHERE fid = :c"),
        {"t": take, "val": json.dumps(chosen, ensure_ascii=False, default=str),
         "r": resolver if resolver is not None else _author(conn), "at": _now(),
         "c": row.fid},
    )
    closed: list[int] = []
    if row.kind in ("edit_delete", "duplicate_new"):  # the kinds whose resolution deletes
        closed = _close_conflicts_of_deleted_units(conn, version, int(row.fid), resolver)
    return chosen, closed


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


def _resolve_field(reg: Registry, conn: Connection, writer: Writer, version: VersionRef,
                   row: Any, take: str, value: Any, where: str) -> Any:
    chosen = value if take == "value" else _stored(row, take)
    _require_unit(writer, row.unit_uuid, version, where)
    _set_field(reg, conn, writer, version, row.unit_uuid, row.field, chosen, where)
    return chosen


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def _parents_in(conn: Connection, version_id: int | None, uuids: list[str]
                ) -> dict[str, tuple[str | None, str]]:
    """uuid → (parent uuid, path) of those of ``uuids`` that ``version_id`` holds."""
    out: dict[str, tuple[str | None, str]] = {}
    if version_id is None:
        return out
    for chunk in _chunks(uuids):
        binds = {f"u{i}": u for i, u in enumerate(chunk)}
        for uuid, parent, path in conn.execute(
            text("SELECT u.uuid, p.uuid, u.path FROM org_unit u LEFT JOIN org_unit p ON "
                 "p.version_id = u.version_id AND p.unit_key = u.parent_key WHERE "
                 f"u.version_id = :v AND u.uuid IN ({', '.join(':' + k for k in binds)})"),
            binds | {"v": version_id},
        ):
            out[uuid] = (parent, path)
    return out


def _delete_for_deleting_side(conn: Connection, writer: Writer, version: VersionRef, row: Any,
                              take: str) -> dict[str, Any]:
    """Take the side that deleted ``row.unit_uuid``: delete what that side deleted, only.

    In the draft the unit's subtree holds three kinds of units, and the 3-way
    semantics give each its own fate:

    * units that were below it in the base: the deleting side deleted them with it
      (``unit delete --recursive``) → they go;
    * units the other side *added* there: they exist on no side but that one, and only
      below a unit now deleted → they go (there is no place left for them);
    * units that existed elsewhere in the base (the other side *moved them in*), or
      that the deleting side still holds: the deleting side never deleted them → they
      stay, with what hangs below them, where the deleting side has them (else under
      their base parent, else under the deleted unit's parent).  Deleting them would
      lose units neither side deleted.
    """
    lo = conn.execute(text("SELECT path FROM org_unit WHERE version_id = :v AND uuid = :u"),
                      {"v": version.id, "u": row.unit_uuid}).scalar()
    if lo is None:
        return {"deleted": 0}
    hi = lo[:-1] + "0"  # '/' < digits: a subtree is one range of paths
    subtree = conn.execute(
        text("SELECT u.uuid, u.name, u.path, p.uuid AS parent FROM org_unit u LEFT JOIN "
             "org_unit p ON p.version_id = u.version_id AND p.unit_key = u.parent_key "
             "WHERE u.version_id = :v AND u.path >= :lo AND u.path < :hi ORDER BY u.path"),
        {"v": version.id, "lo": lo, "hi": hi},
    ).all()
    own_parent = next(r.parent for r in subtree if r.uuid == row.unit_uuid)
    below = [r for r in subtree if r.uuid != row.unit_uuid]
    read = _run_versions(conn, row.merge_run_id)
    uuids = [r.uuid for r in below]
    base = _parents_in(conn, read.get("base"), [row.unit_uuid, *uuids])
    deleter = _parents_in(conn, read.get(take), uuids)
    base_root = base.get(row.unit_uuid, (None, None))[1]

    def outside(uuid: str | None) -> bool:
        if uuid is None or uuid not in writer.keys:
            return False
        path = conn.execute(text("SELECT path FROM org_unit WHERE version_id = :v AND "
                                 "uuid = :u"), {"v": version.id, "u": uuid}).scalar()
        return path is not None and not (lo <= path < hi)

    moved_back: list[dict[str, Any]] = []
    skip_below: str | None = None
    for r in below:
        if skip_below is not None and r.path.startswith(skip_below):
            continue  # goes with its moved-back ancestor
        in_base = base.get(r.uuid)
        moved_in = in_base is not None and base_root is not None and \
            not in_base[1].startswith(base_root)
        if r.uuid not in deleter and not moved_in:
            continue
        candidates = [deleter.get(r.uuid, (None, ""))[0], (in_base or (None, ""))[0]]
        parent = next((c for c in candidates if outside(c)), own_parent)
        writer.move(r.uuid, parent)
        parent_name = None if parent is None else conn.execute(
            text("SELECT name FROM org_unit WHERE version_id = :v AND uuid = :u"),
            {"v": version.id, "u": parent}).scalar()
        moved_back.append({"uuid": r.uuid, "name": r.name, "parent": parent,
                           "parent_name": parent_name})
        skip_below = r.path
    gone = [r.uuid for r in conn.execute(
        text("SELECT uuid FROM org_unit WHERE version_id = :v AND path >= :lo AND path < :hi"),
        {"v": version.id, "lo": lo, "hi": hi})]
    conn.execute(text("DELETE FROM org_unit WHERE version_id = :v AND path >= :lo AND "
                      "path < :hi"), {"v": version.id, "lo": lo, "hi": hi})
    for uuid in gone:
        writer.keys.pop(uuid, None)
    added_there = sum(1 for u in gone if u not in base) if read.get("base") else None
    out: dict[str, Any] = {"deleted": len(gone), "moved_back": moved_back}
    if added_there is not None:
        out["deleted_added"] = added_there  # units only the other side had (added there)
    return out


def _resolve_edit_delete(reg: Registry, conn: Connection, writer: Writer, version: VersionRef,
                         row: Any, take: str, where: str) -> Any:
    if take == "value":
        raise InvalidInput(f"{where}: a unit deleted on one side and kept on the other is "
                           "resolved with --take ours, theirs or base (then edit it if needed).")
    snapshot = _stored(row, take)
    if snapshot is None:
        return _delete_for_deleting_side(conn, writer, version, row, take)
    _require_unit(writer, row.unit_uuid, version, where)
    for name in FIELDS:
        if name in snapshot:
            if name == "parent" and snapshot[name] is not None and snapshot[name] not in writer.keys:
                continue  # its old parent is gone: it stays where the merge put it
            _set_field(reg, conn, writer, version, row.unit_uuid, name, snapshot[name], where)
    return {"kept": take}


def _resolve_duplicate(reg: Registry, conn: Connection, writer: Writer, version: VersionRef,
                       row: Any, take: str, where: str) -> Any:
    if take == "value":
        raise InvalidInput(f"{where}: two new units that may be the same place are resolved with "
                           "--take ours, theirs, both (different places) or base (neither).")
    if take == "both":
        return {"kept": [row.unit_uuid, row.other_uuid]}
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


# --- bulk --------------------------------------------------------------------------------


def _bulk_skip(row: Any, take: str, kind: str | None) -> str | None:
    """Why a bulk ``take`` does not fit this conflict (None: it does)."""
    if take == "both" and row.kind != "duplicate_new":
        return "--take both only applies to duplicate_new conflicts"
    if row.kind == "duplicate_new" and kind != "duplicate_new":
        return ("two new units that may be the same place: whether they are is decided pair by "
                "pair ('georeg conflicts show'), or in bulk with --kind duplicate_new")
    return None


class BulkResolveJob(Job[dict[str, Any]]):
    """Resolve every open conflict of a merged draft (optionally of one kind) with one take.

    One transaction: all of it lands, or — on an error, Ctrl-C or a killed process —
    none of it.  Each conflict is resolved exactly as :func:`resolve_conflict` does,
    inside a savepoint, so that one the take does not fit (``both`` outside
    ``duplicate_new``) or that is refused (a move that would make a cycle, a parent
    gone) is skipped with its reason instead of failing the lot.  ``duplicate_new``
    conflicts are only resolved when ``kind`` names them: taking a side there deletes
    the other unit, a judgement about two places that "every conflict" should not make.
    """

    title = "Resolving conflicts"

    def __init__(self, reg: Registry, version: str | VersionRef, take: str, *,
                 kind: str | None = None, resolver: str | None = None,
                 origin: str = ORIGIN) -> None:
        super().__init__()
        if take == "value":
            raise InvalidInput("--take value needs a value per conflict: resolve those one at a "
                               "time (georeg conflicts resolve REG ID --take value --value …).")
        if take not in BULK_TAKES:
            raise InvalidInput(f"--take must be one of {', '.join(BULK_TAKES)}, not {take!r}.")
        if kind is not None and kind not in CONFLICT_KINDS:
            raise InvalidInput(f"--kind must be one of {', '.join(CONFLICT_KINDS)}, "
                               f"not {kind!r}.")
        self.reg, self.version, self.take, self.kind = reg, version, take, kind
        self.resolver, self.origin = resolver, origin

    def execute(self) -> dict[str, Any]:
        with self.reg.write(origin=self.origin, author=self.resolver) as conn:
            version = resolve(conn, self.version)
            require_draft(version)
            where, params = _filters(conn, version, "open", self.kind)
            rows = conn.execute(
                text(f"SELECT {_COLUMNS} FROM merge_conflict{where} ORDER BY fid"), params).all()
            self.report(0, len(rows), self.title)
            writer = _writer(self.reg, conn, version)
            resolver = self.resolver if self.resolver is not None else _author(conn)
            resolved: list[int] = []
            by_kind: dict[str, int] = {}
            also_closed: list[int] = []
            closed_set: set[int] = set()
            skipped: list[dict[str, Any]] = []
            for i, row in enumerate(rows):
                if i % 25 == 0:
                    self.report(i)  # (and stops here on a cancel: everything rolls back)
                fid = int(row.fid)
                if fid in closed_set:
                    continue  # closed by an earlier one: its unit went
                reason = _bulk_skip(row, self.take, self.kind)
                if reason is None:
                    try:
                        with conn.begin_nested():
                            _chosen, closed = _resolve_open(self.reg, conn, version, writer, row,
                                                            self.take, None, resolver)
                    except (GeoregError, exc.DBAPIError) as error:
                        ours = error if isinstance(error, GeoregError) else \
                            translate_db_error(error)
                        reason = f"refused: {ours}"
                        writer = _writer(self.reg, conn, version)  # undone: read it again
                    else:
                        resolved.append(fid)
                        by_kind[row.kind] = by_kind.get(row.kind, 0) + 1
                        also_closed += closed
                        closed_set.update(closed)
                if reason is not None:
                    skipped.append({"id": fid, "kind": row.kind, "unit_uuid": row.unit_uuid,
                                    "reason": reason})
            self.report(len(rows))
            return {
                "version": version.to_dict(),
                "take": self.take,
                "kind": self.kind,
                "resolved": len(resolved),
                "resolved_by_kind": by_kind,
                "resolved_ids": resolved,
                "also_closed": also_closed,
                "skipped": skipped,
                "open": open_conflict_count(conn, version.id),
            }


def resolve_conflicts(reg: Registry, version: str | VersionRef, take: str, **kw: Any
                      ) -> dict[str, Any]:
    """:class:`BulkResolveJob` run to the end (see there)."""
    return BulkResolveJob(reg, version, take, **kw).run()
