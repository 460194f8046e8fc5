"""Pull: what changed centrally since the last pull, into the registry — conflicts
reported, never overwritten; see ``sync.postgis_sync`` for the model."""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import text

from storage.errors import ConflictError, InvalidInput, NotFound
from storage.jobs import Job
from storage.registry import Registry
from sync.postgis_central import _short, central_location, exclusive, open_central, target_name
from sync.sync_run import (
    ProgressFn,
    _analyze,
    _below,
    _central_went_back,
    _changed_fields,
    _conflict_rows,
    _ensure_version,
    _local_present,
    _own_push_like,
    _publish,
    _pull_like,
    _Run,
    _set_defaults,
    _set_marker,
)
from sync.sync_state import SyncState, _now
from sync.unit_snapshots import (
    DEFAULT_BATCH,
    PUSH_OP,
    SYNC_ORIGIN,
    UNIT_ENTITIES,
    Unit,
    _add_group_members,
    _apply_groups,
    _apply_types,
    _chunks,
    _existing_uuids,
    _group_members,
    _groups,
    _is_pg,
    _safe_max,
    _strip,
    _types,
    _versions,
    read_units,
)
from sync.unit_writer import Figures, UnitWriter, _close_ancestors, _released_on

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
