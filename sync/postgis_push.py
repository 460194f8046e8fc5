"""Push: a registry's versions sent whole once (COPY, resumable), then the units changed
since the last push — see ``sync.postgis_sync`` for the model."""

from __future__ import annotations

import hashlib
import itertools
import json
import shlex
import time
import uuid as uuidlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.copy import QueuedLibpqWriter
from sqlalchemy import Connection, bindparam, exc, text

from storage.errors import Cancelled, ConflictError, GeoregError, InvalidInput
from storage.jobs import Job, gc_paused
from storage.registry import Registry, json_value
from sync.postgis_central import central_location, exclusive, open_central, target_name
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
from sync.sync_run import (
    ProgressFn,
    _advance_pull_marker,
    _analyze,
    _below,
    _central_went_back,
    _changed_fields,
    _conflict_rows,
    _ensure_version,
    _local_present,
    _log_version,
    _own_push_like,
    _publish,
    _pull_like,
    _pushed_whole,
    _Run,
    _set_defaults,
)
from sync.sync_state import SyncState, _now
from sync.unit_snapshots import (
    DEFAULT_BATCH,
    FULL_BATCH,
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
    _new_groups,
    _safe_max,
    _types,
    _versions,
    group_identity,
    read_units,
)
from sync.unit_writer import Figures, UnitWriter, _close_ancestors, _released_on


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
    started = time.monotonic()  # the figure reported includes making the central schema
    if prefer not in (None, "local"):
        raise InvalidInput("push: prefer must be 'local' or nothing.")
    location = central_location(url, schema)
    target = target_name(location)
    state = SyncState.load(reg, target)
    client = state.client_id
    central, created = open_central(location, create=True)
    fig = Figures()
    run = _Run(reg, central, state, fig, max(1, batch_size), prefer, progress, job,
               f"push:{client}:{uuidlib.uuid4().hex[:12]}", full_batch=max(1, full_batch_size),
               started=started)
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
        cmap_deleted = _delete_gone_versions(run, cconn, local_versions)
    if cmap_deleted:
        state.save(reg)
    _push_groups(run, local_versions, cmap)
    for meta in local_versions:
        if str(meta["fid"]) not in state.versions:
            _push_full(run, meta, cmap[meta["fid"]], high)
    _push_changes(run, local_versions, cmap, high)
    for meta in local_versions:
        cvid, cstatus = cmap[meta["fid"]]
        if meta["status"] == "published" and cstatus != "published":
            _publish_when_settled(run, meta, cvid)
    with central.write(origin=SYNC_ORIGIN, operation=run.op()) as cconn:
        fig.versions_updated += _set_defaults(cconn, local_versions)
    _advance_pull_marker(run)
    state.details["marker_at_push"] = state.last_pull_marker
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


def _publish_when_settled(run: _Run, meta: dict[str, Any], cvid: int) -> None:
    """Publish centrally a version published here — only once the central draft holds
    exactly what this registry holds for every unit in question.

    Publishing freezes the central version for good: done while a unit of it is held
    by a conflict, or while it holds central edits never brought here (the version is
    published here, so a pull cannot bring them), it would leave two different
    "published" copies of one version, forever.  Such a version stays a draft centrally,
    its differing units are held and reported, and a later push publishes it once they
    agree.  ``--prefer-local`` makes them agree: this registry's published values are
    sent first."""
    state, fig = run.state, run.fig
    lvid = meta["fid"]
    if run.prefer == "local":
        with run.central.read() as cconn:
            differing = _unsettled(run, meta, cconn, cvid)
        if differing:
            flags = {u: set(UNIT_ENTITIES) for u in differing}
            still = _push_version_changes(run, meta, (cvid, "draft"), flags)
            state.held = {h for h in state.held if not (h[0] == lvid and h[1] in flags)} | still
            state.save(run.reg)
    with run.central.write(origin=SYNC_ORIGIN, operation=run.op()) as cconn:
        # the version row locked: no one else publishes it meanwhile
        cconn.execute(text("SELECT 1 FROM source_version WHERE fid = :v FOR UPDATE"),
                      {"v": cvid})
        differing = _unsettled(run, meta, cconn, cvid)
        if not differing:
            _publish(cconn, True, cvid, meta)
            fig.versions_published += 1
            return
    with run.reg.read() as conn:
        for uuid, (lu, cu) in sorted(differing.items()):
            local_changed = _changed_fields(conn, lvid, uuid, state.last_change_id,
                                            _pull_like(state.target))
            with run.central.read() as cconn:
                central_changed = _changed_fields(cconn, cvid, uuid, 0,
                                                  _own_push_like(state.client_id))
            # published here: a pull cannot settle these, only --prefer-local (or the
            # central units made equal) — the advice shown with them says so
            fig.conflicts.extend(row | {"published_here": True, "published_centrally": False}
                                 for row in _conflict_rows(meta, lu, cu, local_changed,
                                                           central_changed))
    state.held = state.held | {(lvid, u) for u in differing}
    state.save(run.reg)
    fig.versions_not_published += 1
    # (what settles them is said with the conflict rows, marked published_here)
    fig.refused.append(
        f"{meta['source']} v{meta['number']} not published centrally: {len(differing)} "
        "unit(s) held (changed centrally, different from here). It stays a draft there "
        "until a push finds both sides equal: push --prefer-local, or make the central "
        "units equal to these.")


def _unsettled(run: _Run, meta: dict[str, Any], cconn: Connection, cvid: int
               ) -> dict[str, tuple[Unit | None, Unit | None]]:
    """Units of a version (local, central) that differ between the two sides among
    those that could: held here, or changed centrally by others at any time (not only
    since the last pull — a pull cannot bring edits into a version published here, yet
    moves its marker past them).  Ours are only written by our pushes: equal."""
    lvid = meta["fid"]
    own = _own_push_like(run.state.client_id)
    candidates = {u for v, u in run.state.held if v == lvid}
    if _pushed_whole(cconn, cvid, 0, own):
        # another registry sent the version whole: any unit of it may differ
        candidates |= set(cconn.execute(text("SELECT uuid FROM org_unit WHERE version_id = :v"),
                                        {"v": cvid}).scalars())
        with run.reg.read() as conn:
            candidates |= set(conn.execute(
                text("SELECT uuid FROM org_unit WHERE version_id = :v"), {"v": lvid}).scalars())
    else:
        candidates |= set(cconn.execute(text(
            "SELECT DISTINCT unit_uuid FROM change_log WHERE version_id = :v AND entity IN "
            "('org_unit', 'territory', 'group_membership') AND unit_uuid IS NOT NULL AND NOT "
            "(origin = 'sync' AND COALESCE(operation, '') LIKE :own)"),
            {"v": cvid, "own": own}).scalars())
    candidates = {str(u) for u in candidates}
    if not candidates:
        return {}
    central_units = {u.uuid: u for u in read_units(run.central, cconn, cvid, uuids=candidates,
                                                   everything=True)}
    with run.reg.read() as conn:
        local_units = {u.uuid: u for u in read_units(run.reg, conn, lvid, uuids=candidates,
                                                     everything=True)}
    out: dict[str, tuple[Unit | None, Unit | None]] = {}
    for uuid in candidates:
        lu, cu = local_units.get(uuid), central_units.get(uuid)
        if lu is None and cu is None:
            continue
        if lu is not None and cu is not None and lu.compared() == cu.compared():
            continue
        out[uuid] = (lu, cu)
    return out


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


def _delete_gone_versions(run: _Run, cconn: Connection, local_versions: list[dict[str, Any]]
                          ) -> bool:
    """Local versions deleted since the last push: delete their central drafts too —
    unless someone else changed units of one centrally since the last pull.

    Those edits were never brought here: deleting the version would destroy them
    without a word.  Such a version is kept centrally and held (``held_versions`` in
    the sync state: no longer one this registry pushed, so a pull copies it back here
    with the central edits); ``--prefer-local`` deletes it anyway."""
    state, fig = run.state, run.fig
    here = {str(m["fid"]) for m in local_versions}
    here_ids = {(m["source"], m["number"]) for m in local_versions}
    held_versions: dict[str, Any] = state.details.setdefault("held_versions", {})
    gone = [k for k in state.versions if k not in here]
    # central edits up to the pull marker were pulled into the version — unless a pull
    # ran after it was deleted here (it skips the version, and moves the marker on):
    # since the last push, then, to be safe
    at_push = state.details.get("marker_at_push", state.last_pull_marker)
    since = min(int(at_push or 0), int(state.last_pull_marker or 0))
    for key in gone:
        info = state.versions.pop(key)
        held_versions[f"{info['number']}:{info['source']}"] = {
            "source": info["source"], "number": info["number"], "since": since}
    changed = bool(gone)
    own = _own_push_like(state.client_id)
    for hkey, info in sorted(held_versions.items()):
        if (info["source"], info["number"]) in here_ids:
            del held_versions[hkey]  # here again (pulled back): nothing to delete
            changed = True
            continue
        row = cconn.execute(
            text(
                "SELECT v.fid, v.status FROM source_version v JOIN data_source s "
                "ON s.fid = v.source_id WHERE s.name = :s AND v.number = :n"
            ),
            {"s": info["source"], "n": info["number"]},
        ).first()
        label = f"{info['source']} v{info['number']}"
        if row is None:
            del held_versions[hkey]
            changed = True
            continue
        if row.status == "published":
            fig.refused.append(
                f"{label} was deleted here but is published centrally; published versions "
                "are kept."
            )
            del held_versions[hkey]
            changed = True
            continue
        if run.prefer != "local":
            edited = cconn.execute(text(
                "SELECT count(DISTINCT unit_uuid) FROM change_log WHERE version_id = :v AND "
                "fid > :m AND entity IN ('org_unit', 'territory', 'group_membership') AND "
                "unit_uuid IS NOT NULL AND NOT (origin = 'sync' AND "
                "COALESCE(operation, '') LIKE :own)"),
                {"v": row.fid, "m": int(info["since"]), "own": own}).scalar_one()
            if edited or _pushed_whole(cconn, int(row.fid), int(info["since"]), own):
                what = f"{edited} unit(s)" if edited else "all its units (pushed whole)"
                fig.versions_held += 1
                fig.conflicts.append({
                    "source": info["source"], "version": info["number"], "uuid": None,
                    "name": None, "field": "(version)", "kind": "version",
                    "local": "deleted here",
                    "central": f"{what} changed centrally, not pulled here",
                    "changed_locally": True, "changed_centrally": True,
                    "remedy": (
                        "Deleting it centrally would destroy those edits, so it was kept "
                        "there. 'sync postgis pull' brings it back here with them (delete "
                        "it again afterwards if it is not needed); 'sync postgis push "
                        "--prefer-local' deletes it centrally anyway.")})
                fig.refused.append(
                    f"{label} was deleted here, but {what} of it changed centrally and were "
                    "not pulled here before: it was kept centrally (its version conflict "
                    "says what settles it).")
                continue
        cconn.execute(text("UPDATE data_source SET default_version_id = NULL "
                           "WHERE default_version_id = :v"), {"v": row.fid})
        cconn.execute(text("SELECT set_config('georeg.audit', '0', true)"))
        cconn.execute(text("DELETE FROM source_version WHERE fid = :v"), {"v": row.fid})
        cconn.execute(text("SELECT set_config('georeg.audit', '1', true)"))
        _log_version(cconn, True, int(row.fid), "delete", {"number": info["number"],
                                                           "synced": True})
        fig.versions_deleted += 1
        del held_versions[hkey]
        changed = True
    if not held_versions:
        state.details.pop("held_versions", None)
    return changed


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
        else:
            _same_units_or_stop(run, meta, cvid)
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


def _same_units_or_stop(run: _Run, meta: dict[str, Any], cvid: int) -> None:
    """A version published on both sides, never sent from here: it can only be this
    registry's own version (sent before its sync state was lost, or pulled from there)
    if it holds the same units — else it is another registry's, and recording it as
    sent would leave the two different for good, with nothing said."""
    with run.central.read() as cconn:
        theirs = {str(u): n for u, n in cconn.execute(
            text("SELECT uuid, name FROM org_unit WHERE version_id = :v"), {"v": cvid})}
    with run.reg.read() as conn:
        mine = {str(u) for u in conn.execute(
            text("SELECT uuid FROM org_unit WHERE version_id = :v"), {"v": meta["fid"]}
        ).scalars()}
    foreign = sorted(set(theirs) - mine)
    lacking = len(mine - set(theirs))
    if not foreign and not lacking:
        return
    example = (f" (such as {theirs[foreign[0]]!r}, {foreign[0]})" if foreign else "")
    raise ConflictError(
        f"{meta['source']} v{meta['number']} is published here and centrally, but the central "
        f"one holds {len(foreign)} unit(s) this registry never had{example} and lacks "
        f"{lacking} of its units. Is another registry pushing the same source and version to "
        "this schema? Each registry needs a schema of its own. Nothing of this version was "
        "sent (a published version never changes).")


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
    run.published_skipped = {}
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
    for lvid, skipped in sorted(run.published_skipped.items()):
        meta = metas[lvid]  # one note per version, however many batches held its units
        run.fig.refused.append(
            f"{meta['source']} v{meta['number']} is published centrally: "
            f"{len(skipped)} changed unit(s) not sent (kept as held; a published "
            "version never changes, so --prefer-local cannot send them either). Keep them "
            "in a new draft: georeg version new REG --source "
            f"{shlex.quote(meta['source'])} --from {meta['number']}, then pull (or pull "
            "--prefer-central, which makes that draft itself); the next push sends the "
            "draft.")


def _push_version_changes(run: _Run, meta: dict[str, Any], central_version: tuple[int, str],
                          units_flags: dict[str, set[str]]) -> set[tuple[int, str]]:
    """Send the current state of the flagged units of one version; returns units held."""
    fig = run.fig
    lvid = meta["fid"]
    cvid, cstatus = central_version
    if cstatus == "published":  # said once per version, after the last batch
        run.published_skipped.setdefault(lvid, set()).update(units_flags)
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
            # units new or moved here under a held unit that is gone centrally (deleted
            # there) cannot go there: held too, everything else is sent
            blocked = _under_held(run, meta, writer, units, skip)
            held |= {(lvid, u) for u in blocked}
            skip |= blocked
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


def _under_held(run: _Run, meta: dict[str, Any], writer: UnitWriter, units: list[Unit],
                held: set[str]) -> set[str]:
    """Units (of ``units``, parents first) that would go under a held unit missing
    centrally — one deleted there while units below it were added or moved here — or
    under such a unit in turn.  They are reported as conflicts naming both units, and
    the held parent's row says how many units below it changed here (as a pull says)."""
    missing = held - writer.present(held)
    if not missing:
        return set()
    names = {u.uuid: u.values["name"] for u in units}
    parents = {u.uuid: u.values["parent_uuid"] for u in units}
    reach = set(missing)
    candidates: set[str] = set()
    for u in units:
        if parents[u.uuid] in reach:
            candidates.add(u.uuid)
            reach.add(u.uuid)
    if not candidates:
        return set()
    there = writer.present(candidates)
    blocked: set[str] = set()
    rows: list[dict[str, Any]] = []
    for u in units:
        parent = parents[u.uuid]
        if parent in missing or (parent in blocked and parent not in there):
            # (a held unit gone centrally below another one is part of that one's case)
            blocked.add(u.uuid)
    for u in units:
        if u.uuid not in blocked:
            continue
        parent = parents[u.uuid]
        top = parent
        while top in blocked:
            top = parents[top]
        run.held_below.setdefault((meta["fid"], top), set()).add(u.uuid)
        pname, tname = names.get(parent) or parent, names.get(top) or top
        rows.append({
            "source": meta["source"], "version": meta["number"], "uuid": u.uuid,
            "name": u.values["name"], "field": "(parent)",
            "local": (f"moved here under {pname}" if u.uuid in there
                      else f"under {pname} here"),
            "central": (f"{tname} deleted centrally" if u.uuid in there
                        else f"absent ({tname} deleted centrally)"),
            "changed_locally": True, "changed_centrally": True})
    fig = run.fig
    # a held child's own '(unit)' / 'parent' rows (from an earlier push) say less
    fig.conflicts[:] = [
        c for c in fig.conflicts
        if not (c["uuid"] in blocked and c["source"] == meta["source"]
                and c["version"] == meta["number"] and c["field"] in ("(unit)", "parent"))]
    for c in fig.conflicts:
        below = run.held_below.get((meta["fid"], c["uuid"]))
        if (below and c["source"] == meta["source"] and c["version"] == meta["number"]
                and c["field"] == "(unit)"):
            c["local"] = f"{len(below)} unit(s) below it changed here"
    fig.conflicts.extend(rows)
    return blocked


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
