"""Pull: what changed centrally since the last pull, into the registry — conflicts
reported, never overwritten; see ``sync.postgis_sync`` for the model."""

from __future__ import annotations

import shlex
import time
import uuid as uuidlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, text

from storage.errors import ConflictError, InvalidInput, NotFound
from storage.jobs import Job
from storage.registry import Registry
from storage.versions import create_version
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
    _in_rows,
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
    started = time.monotonic()  # the figure reported includes opening the central schema
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
               set(sources) if sources is not None else None, started=started)
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
    published_over: list[tuple[dict[str, Any], dict[str, Any]]] = []
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
            if _pull_version_changes(run, cmeta, lmeta, cflags):
                published_over.append((cmeta, lmeta))
    # Versions published centrally while units of them changed here were not sent, with
    # --prefer-central: those edits are first copied to a new draft (numbered after every
    # version, central ones included, now all here), then the version takes the central
    # state — nothing made here is lost by choosing the central side.
    for cmeta, lmeta in published_over:
        pending = _pending_local(run, lmeta["fid"])
        created = create_version(reg, cmeta["source"], copy_from=lmeta["number"],
                                 description=f"Edits made here to v{lmeta['number']} before "
                                 "it was published centrally (kept by a pull)",
                                 origin=SYNC_ORIGIN)
        _take_central_version(run, cmeta, lmeta, pending, created)
    name_parents(reg, fig.conflicts, central)
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
                          cflags: dict[str, set[str]]) -> bool:
    """Apply one version's central changes here.  Returns True when the version was
    published centrally while units of it changed here were not sent, and
    ``--prefer-central`` asks for the central side: the caller keeps those edits in a new
    draft first, then :func:`_take_central_version` (versions numbered after every
    central one, pulled in the same run)."""
    fig = run.fig
    lvid = lmeta["fid"]
    if cflags and lmeta["status"] == "published":
        _report_published_here(run, cmeta, lmeta, cflags)
        return False
    published_there = cmeta["status"] == "published" and lmeta["status"] != "published"
    pending = _pending_local(run, lvid)
    if published_there and pending:
        # the units changed here are settled below, all together, never one by one
        # (--prefer-central must not overwrite them before they are kept elsewhere)
        cflags = {u: e for u, e in cflags.items() if u not in pending}
    _apply_central_units(run, cmeta, lmeta, cflags, run.prefer == "central", pending)
    if published_there:
        if not pending:
            with run.reg.write(origin=SYNC_ORIGIN, operation=run.op()) as conn:
                _publish(conn, _is_pg(run.reg), lvid, cmeta)
            fig.versions_published += 1
            return False
        kept = _kept_in(run, lmeta)
        if kept is not None:  # the edits live on in a draft copied from it: nothing lost
            _take_central_version(run, cmeta, lmeta, pending, kept)
            return False
        if run.prefer == "central":
            return True
        names = _names(run.reg, lvid, pending)
        fig.conflicts.append({
            "source": cmeta["source"], "version": cmeta["number"], "uuid": None,
            "name": None, "field": "(status)", "kind": "version",
            "local": f"draft with {len(pending)} unit(s) changed here, not sent",
            "central": "published", "changed_locally": True, "changed_centrally": True,
            "units_changed_here": len(pending), "unit_names": names,
            "remedy": (
                "It was published centrally while it is a draft here, and a published "
                "version does not change: 'push --prefer-local' cannot send these units. "
                "Keep them in a new draft first: georeg version new REG --source "
                f"{shlex.quote(cmeta['source'])} --from {cmeta['number']}, then pull again "
                f"(v{cmeta['number']} here becomes the central published version; the new "
                "draft keeps the edits, for the next push). 'pull --prefer-central' does "
                "both in one go."),
        })
    return False


def _report_published_here(run: _Run, cmeta: dict[str, Any], lmeta: dict[str, Any],
                           cflags: dict[str, set[str]]) -> None:
    """Central changes to a version published here: nothing can be written into it, so
    they are reported — but only for units whose two states differ.  The change log
    flags units the central side changed at some time since the last pull, and a later
    ``push --prefer-local`` (or the ministry putting a value back) may have made the two
    equal since: reporting those would be a conflict no one can settle.

    The rows are field by field (as for any unit) and marked ``published_here`` — and
    ``published_centrally`` when the central version is published too — so that the
    advice is one that works: a pull cannot change a version published here; only a
    push with --prefer-local (while it is a draft centrally) or making the central units
    equal settles them.  They are not held here: the push looks at such a version's
    differing units itself before publishing it centrally."""
    lvid, cvid = lmeta["fid"], cmeta["fid"]
    state = run.state
    for part in _chunks(sorted(cflags), run.batch_size):
        wanted = set(part)
        with run.central.read() as cconn, run.reg.read() as conn:
            central_units = {u.uuid: u for u in read_units(run.central, cconn, cvid,
                                                           uuids=wanted, everything=True)}
            local_units = {u.uuid: u for u in read_units(run.reg, conn, lvid, uuids=wanted,
                                                         everything=True)}
            for uuid in part:
                lu, cu = local_units.get(uuid), central_units.get(uuid)
                if lu is None and cu is None:
                    continue
                if lu is not None and cu is not None and lu.compared() == cu.compared():
                    continue
                local_changed = _changed_fields(conn, lvid, uuid, state.last_change_id,
                                                _pull_like(state.target))
                central_changed = _changed_fields(cconn, cvid, uuid,
                                                  int(state.last_pull_marker or 0),
                                                  _own_push_like(state.client_id))
                for row in _conflict_rows(lmeta, lu, cu, local_changed, central_changed):
                    row["published_here"] = True
                    row["published_centrally"] = cmeta["status"] == "published"
                    run.fig.conflicts.append(row)


def _names(reg: Registry, lvid: int, uuids: set[str], limit: int = 10) -> list[str]:
    """Names of some units of a version here (those deleted here: by uuid)."""
    picked = sorted(uuids)[:limit]
    with reg.read() as conn:
        known = {u.uuid: u.values["name"] for u in read_units(reg, conn, lvid, uuids=picked)}
    return [known.get(u) or f"(deleted here) {u}" for u in picked]


def _kept_in(run: _Run, lmeta: dict[str, Any]) -> dict[str, Any] | None:
    """The newest draft here copied from ``lmeta``'s version after the last edit made
    here to that version: it holds those edits (as they were, and whatever was done to
    the draft since), so the version can take the central state without losing them."""
    with run.reg.read() as conn:
        drafts = {m["fid"]: m for m in _versions(conn) if m["source"] == lmeta["source"]
                  and m["copied_from"] == lmeta["number"] and m["status"] != "published"}
        if not drafts:
            return None
        last_edit = conn.execute(
            text(
                "SELECT COALESCE(max(fid), 0) FROM change_log WHERE version_id = :v AND "
                "entity IN ('org_unit', 'territory', 'group_membership') AND NOT "
                "(origin = 'sync' AND COALESCE(operation, '') LIKE :p)"
            ),
            {"v": lmeta["fid"], "p": _pull_like(run.state.target)},
        ).scalar_one()
        made = conn.execute(
            # made here, not pulled (a central copy holds none of the edits made here)
            text("SELECT version_id, min(fid) AS fid FROM change_log WHERE entity = 'version' "
                 "AND op = 'create' AND version_id IN :d AND NOT (origin = 'sync' AND "
                 "COALESCE(operation, '') LIKE :p) GROUP BY version_id")
            .bindparams(bindparam("d", expanding=True)),
            {"d": sorted(drafts), "p": _pull_like(run.state.target)},
        ).all()
    after = [drafts[int(r.version_id)] for r in made if int(r.fid) > int(last_edit)]
    return max(after, key=lambda m: int(m["number"])) if after else None


def _take_central_version(run: _Run, cmeta: dict[str, Any], lmeta: dict[str, Any],
                          pending: set[str], kept: dict[str, Any]) -> None:
    """A version published centrally, its edits made here kept in draft ``kept``: the
    units changed here take their central state, the version is published here, and the
    push counts it as in step (its change-log rows so far are not sent again)."""
    lvid = lmeta["fid"]
    names = _names(run.reg, lvid, pending)
    _apply_central_units(run, cmeta, lmeta, {u: set(UNIT_ENTITIES) for u in pending}, True,
                         pending)
    with run.reg.write(origin=SYNC_ORIGIN, operation=run.op()) as conn:
        _publish(conn, _is_pg(run.reg), lvid, cmeta)
        high = conn.execute(text("SELECT max(fid) FROM change_log")).scalar()
    run.fig.versions_published += 1
    run.state.held = {h for h in run.state.held if h[0] != lvid}
    info = run.state.versions.setdefault(str(lvid), {"source": cmeta["source"],
                                                     "number": cmeta["number"]})
    info["full_at"] = max(int(info.get("full_at") or 0), int(high or 0))
    shown = ", ".join(names) + (", …" if len(pending) > len(names) else "")
    run.fig.warnings.append(
        f"{cmeta['source']} v{cmeta['number']} was published centrally while "
        f"{len(pending)} unit(s) changed here were not in it ({shown}): v{cmeta['number']} "
        f"here is now the central published version, and those edits are kept in draft "
        f"v{kept['number']} (the next push sends it).")


def _apply_central_units(run: _Run, cmeta: dict[str, Any], lmeta: dict[str, Any],
                         cflags: dict[str, set[str]], prefer_central: bool,
                         pending: set[str]) -> None:
    """The central state of the flagged units, written here; units also changed here
    (``pending``) are conflicts (held), unless ``prefer_central``."""
    fig = run.fig
    lvid, cvid = lmeta["fid"], cmeta["fid"]
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
                    if prefer_central:
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
                          releasable=_released_on(run.central, cvid, prefer_central))
            writer.delete(gone)
        if prefer_central:
            run.state.held = {h for h in run.state.held if not (h[0] == lvid and h[1] in clash)}
        run.tick(phase="pull", version=f"{cmeta['source']} v{cmeta['number']}",
                 message="Pulling changes")


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


def name_parents(reg: Registry, conflicts: list[dict[str, Any]],
                 central: Registry | None = None) -> None:
    """Conflict rows on ``parent`` carry parent uuids (the identity across registries);
    add the parents' names and refs (``local_parent_name``, ``local_parent_ref``, and the
    same for ``central``), read here and, when given, centrally — a person reads names,
    a script keeps the uuids."""
    rows = [c for c in conflicts if c.get("field") == "parent"]
    if not rows:
        return
    wanted: dict[tuple[str, int], set[str]] = {}
    for c in rows:
        wanted.setdefault((c["source"], c["version"]), set()).update(
            v for v in (c["local"], c["central"]) if isinstance(v, str))
    sql = ("SELECT u.uuid, u.name, u.source_ref FROM org_unit u JOIN source_version v ON "
           "v.fid = u.version_id JOIN data_source s ON s.fid = v.source_id WHERE s.name = :s "
           "AND v.number = :n AND u.uuid IN :u")

    def names(side: Registry) -> dict[tuple[str, int, str], tuple[str, str | None]]:
        found: dict[tuple[str, int, str], tuple[str, str | None]] = {}
        with side.read() as conn:
            for (source, number), uuids in wanted.items():
                for r in _in_rows(conn, sql, "u", uuids, {"s": source, "n": number}):
                    found[(source, number, r.uuid)] = (r.name, r.source_ref)
        return found

    here = names(reg)
    there = names(central) if central is not None else {}
    for c in rows:
        for side, first, second in (("local", here, there), ("central", there, here)):
            key = (c["source"], c["version"], c[side])
            name, ref = first.get(key) or second.get(key) or (None, None)
            c[f"{side}_parent_name"], c[f"{side}_parent_ref"] = name, ref
