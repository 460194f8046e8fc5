"""One push or pull run: its bookkeeping of versions on the receiving side, conflicts
found, and the pull marker (how far the central change log has been read)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from storage.jobs import Job
from storage.registry import Registry, json_value
from sync.postgis_central import _short
from sync.sync_state import SyncState, _now
from sync.unit_snapshots import (
    COMPARED,
    FIELDS,
    FULL_BATCH,
    PUSH_OP,
    Unit,
    _existing_uuids,
    _in_rows,
    _safe_max,
)
from sync.unit_writer import Figures

ProgressFn = Callable[[dict[str, Any]], None]


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
    #: (local version, unit held: gone centrally) -> units below it changed here, held
    held_below: dict[tuple[int, str], set[str]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    batch_no: int = 0
    #: local version -> its changed units not sent because it is published centrally
    published_skipped: dict[int, set[str]] = field(default_factory=dict)

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


def _local_present(reg: Registry, lvid: int, uuids: set[str]) -> set[str]:
    with reg.read() as conn:
        return _existing_uuids(conn, lvid, uuids)


def _analyze(conn: Connection) -> None:
    """Fresh planner statistics (PostgreSQL) while a version is loaded batch by batch."""
    for table in ("org_unit", "org_unit_territory", "group_membership"):
        conn.exec_driver_sql(f"ANALYZE {table}")


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
