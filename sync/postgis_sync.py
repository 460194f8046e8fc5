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

The work is spread over modules: ``postgis_central`` (where the central schema is, its
lock), ``sync_state`` (what the registry remembers of each target), ``unit_snapshots``
(units, types and groups read by identity), ``unit_writer`` (writing them), ``sync_run``
(a run's bookkeeping, conflicts, the pull marker), ``postgis_push`` and
``postgis_pull``.  This module is their front: push, pull, status, checksums and the
jobs the CLI, the server and the scheduler run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import text

from storage.errors import Cancelled, GeoregError
from storage.jobs import Job
from storage.registry import Registry
from sync.postgis_central import (
    UpstreamUnavailable,
    _probe,
    central_location,
    exclusive,
    open_central,
    target_name,
)
from sync.postgis_pull import name_parents, pull
from sync.postgis_push import push as _push
from sync.sync_run import _pull_like
from sync.sync_state import SyncState
from sync.unit_snapshots import MAX_LISTED, _groups, _in_rows, _strip, _types, _versions, read_units

__all__ = ["PullJob", "PushJob", "SyncState", "UpstreamUnavailable", "central_location",
           "checksums", "exclusive", "pull", "push", "status", "target_name"]


# --- push ----------------------------------------------------------------------------------


def push(reg: Registry, url: str, schema: str | None = None, **options: Any) -> dict[str, Any]:
    """``sync.postgis_push.push`` (see there), its conflicts on ``parent`` named: the
    rows keep the parents' uuids (the identity), and add their names for people."""
    result = _push(reg, url, schema, **options)
    name_parents(reg, result.get("conflicts") or [])
    return result


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
        # what our own pulls wrote is not for pushing (the push skips it too)
        unpushed = conn.execute(
            text("SELECT count(*) FROM change_log WHERE fid > :a AND entity IN "
                 "('org_unit', 'territory', 'group_membership') AND NOT (origin = 'sync' "
                 "AND COALESCE(operation, '') LIKE :p)"),
            {"a": state.last_change_id or 0, "p": _pull_like(target)},
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
        held = sorted(state.held, key=lambda h: (h[1], h[0]))[:MAX_LISTED]
        # a uuid is in every version copied from its first one: named in the held one
        held_rows = {(int(r.version_id), r.uuid): r for r in _in_rows(
            conn, "SELECT u.version_id, u.uuid, u.name FROM org_unit u WHERE u.uuid IN :u",
            "u", {u for _, u in held})} if held else {}
        here = _versions(conn)
        labels = {m["fid"]: (m["source"], m["number"]) for m in here}
        published_here = {m["fid"] for m in here if m["status"] == "published"}
        # a unit of a version published here cannot change here: only push --prefer-local
        # (or the central unit made equal) settles it — status says so apart
        out["held_units"] = [
            {"uuid": u, "name": held_rows[(v, u)].name if (v, u) in held_rows else None,
             "version": f"{labels[v][0]} v{labels[v][1]}" if v in labels else None,
             "source": labels[v][0] if v in labels else None,
             "number": labels[v][1] if v in labels else None,
             "published_here": v in published_here}
            for v, u in held]
        counts: dict[int, int] = {int(v): int(n) for v, n in conn.execute(text(
            "SELECT version_id, count(*) FROM org_unit GROUP BY version_id"))}
        out["versions_not_pushed"] = [
            {"source": m["source"], "number": m["number"], "units": counts.get(m["fid"], 0)}
            for m in here if str(m["fid"]) not in state.versions]
    # versions deleted here that a push kept centrally (units of them changed there and
    # were never pulled: deleting them would destroy those edits) — until a pull brings
    # them back (then they are here again) or a push --prefer-local deletes them
    present = {(m["source"], m["number"]) for m in here}
    out["held_versions"] = sorted(
        ({"source": str(v["source"]), "number": int(v["number"])}
         for v in (state.details.get("held_versions") or {}).values()
         if (v["source"], v["number"]) not in present),
        key=lambda v: (v["source"], v["number"]))
    # the central side itself: reachable, holding a registry (a typo in the URL or the
    # schema shows here rather than as "never pushed")
    registry_there = False
    try:
        schema_there, registry_there = _probe(location)
        out["central"] = ("holds a registry" if registry_there else
                          "reachable; the schema holds no registry yet" if schema_there else
                          "reachable; no such schema yet")
    except GeoregError as error:
        out["central"] = f"not reachable: {error.message}"
    out["central_reachable"] = not out["central"].startswith("not reachable")
    # held units of a version published centrally but a draft here: neither --prefer-local
    # (a published version never changes) nor a unit-by-unit settling applies to them
    if state.held and registry_there:
        central, _ = open_central(location, create=False)
        try:
            with central.read() as cconn:
                published = {(m["source"], m["number"]) for m in _versions(cconn)
                             if m["status"] == "published"}
        finally:
            central.close()
        for h in out["held_units"]:
            h["published_centrally"] = (h["source"], h["number"]) in published
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
