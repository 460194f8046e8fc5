"""3-way merge of two drafts that descend from one base version, field by field.

Units are keyed by ``uuid`` (stable across the versions of a source).  For every
unit and field, with B the base value, O ours and T theirs:

* only one side changed it → that change is taken;
* both changed it to the same value → taken once;
* both changed it differently → a **conflict** (kind ``field``, or ``move_move``
  for the parent); the merged draft keeps the base value until it is resolved;
* group memberships merge as sets (a group added on either side is added, one
  removed on either side is removed): they never conflict;
* ``extra_fields`` merge key by key (a conflict names the key:
  ``extra_fields.<key>``).

Whole units:

* deleted on one side and edited (or moved, or given new or moved-in children) on
  the other → ``edit_delete``; the unit stays, with its base values, and so does
  everything that side deleted below it: the whole subtree's deletion is one
  decision, applied only when the conflict is resolved for the deleting side;
* new on one side only → added; new on both sides and *the same place* (same
  normalised name under the same parent, and within ``duplicate_distance_m`` when
  both have a point) → ``duplicate_new``; both stay until resolved;
* moves that each make sense alone but together make a cycle → ``cycle`` conflicts
  on the moves involved, which are held back (base parent kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from storage.checks import normalize_name
from storage.merging.snapshot import (
    FIELDS,
    GroupDef,
    Snapshot,
    UnitState,
    find_cycle,
    same,
)

DUPLICATE_DISTANCE_M = 1000.0
CONFLICT_KINDS = ("field", "edit_delete", "move_move", "duplicate_new", "cycle")


@dataclass
class Conflict:
    kind: str
    unit_uuid: str
    field: str | None
    base: Any = None
    ours: Any = None
    theirs: Any = None
    message: str = ""
    other_uuid: str | None = None


@dataclass
class ThreeWayPlan:
    desired: dict[str, UnitState]
    group_defs: dict[int, GroupDef]
    conflicts: list[Conflict] = field(default_factory=list)
    from_ours: int = 0  # units whose merged state took something from ours
    from_theirs: int = 0


def plan_three_way(base: Snapshot, ours: Snapshot, theirs: Snapshot, *,
                   duplicate_distance_m: float = DUPLICATE_DISTANCE_M) -> ThreeWayPlan:
    desired: dict[str, UnitState] = {}
    conflicts: list[Conflict] = []
    group_defs = dict(base.groups) | dict(ours.groups) | dict(theirs.groups)
    plan = ThreeWayPlan(desired, group_defs, conflicts)
    deleted_by: dict[str, str] = {}  # uuid → side that deleted it (not in conflict)
    touched_o: set[str] = set()
    touched_t: set[str] = set()

    for uuid, b in base.units.items():
        o, t = ours.units.get(uuid), theirs.units.get(uuid)
        if o is None and t is None:
            continue  # deleted on both sides
        if o is None or t is None:
            survivor, side, deleter = (t, "theirs", "ours") if o is None else (o, "ours", "theirs")
            assert survivor is not None
            changed = [f for f in FIELDS if not same(f, b.get(f), survivor.get(f))]
            if changed:
                conflicts.append(Conflict(
                    "edit_delete", uuid, None, base=b, ours=o, theirs=t,
                    message=f"{b.get('name')!r} was deleted in {deleter} but {side} changed "
                    f"{', '.join(changed)}."))
                desired[uuid] = b.copy()
                survivor_units = theirs.units if o is None else ours.units
                if b.get("parent") is not None and b.get("parent") not in survivor_units:
                    # its base parent is gone on the side that kept it: keep it where that
                    # side put it, not under a unit both sides deleted
                    desired[uuid].values["parent"] = survivor.get("parent")
            else:
                desired[uuid] = b.copy()
                deleted_by[uuid] = deleter
            continue
        merged = b  # copied on the first change: unchanged units stay the base's objects
        for name in FIELDS:
            bv, ov, tv = b.get(name), o.get(name), t.get(name)
            o_changed, t_changed = not same(name, bv, ov), not same(name, bv, tv)
            if not (o_changed or t_changed):
                continue
            if merged is b:
                merged = b.copy()
            if o_changed:
                touched_o.add(uuid)
            if t_changed:
                touched_t.add(uuid)
            if name == "groups":
                bg, og, tg = bv or frozenset(), ov or frozenset(), tv or frozenset()
                merged.values[name] = (bg | (og - bg) | (tg - bg)) - (bg - og) - (bg - tg)
            elif name == "extra_fields" and o_changed and t_changed:
                merged.values[name] = _merge_extra(uuid, b, bv, ov, tv, conflicts)
            elif o_changed and t_changed and not same(name, ov, tv):
                kind = "move_move" if name == "parent" else "field"
                what = "moved" if name == "parent" else f"changed {name!r}"
                conflicts.append(Conflict(
                    kind, uuid, name, base=bv, ours=ov, theirs=tv,
                    message=f"{b.get('name')!r}: both sides {what} differently."))
            else:
                merged.values[name] = ov if o_changed else tv
        desired[uuid] = merged

    new_o = [u for u in ours.units if u not in base.units]
    new_t = [u for u in theirs.units if u not in base.units]
    for uuid in new_o:
        desired[uuid] = ours.units[uuid].copy()
        touched_o.add(uuid)
    for uuid in new_t:
        t = theirs.units[uuid]
        touched_t.add(uuid)
        if uuid in desired:  # the same new unit on both sides (e.g. one change request)
            o = desired[uuid]
            for name in FIELDS:
                if not same(name, o.get(name), t.get(name)):
                    conflicts.append(Conflict(
                        "field", uuid, name, base=None, ours=o.get(name), theirs=t.get(name),
                        message=f"New unit {o.get('name')!r} added on both sides with different "
                        f"{name!r}."))
                    o.values[name] = None if name != "name" else o.get(name)
            continue
        desired[uuid] = t.copy()

    # A unit one side deleted cannot go while the merged tree still needs it: its
    # deletion becomes an ``edit_delete (children)`` conflict.
    for uuid in list(desired):
        if uuid in deleted_by:
            continue  # going anyway (unless held below): it needs no parent
        parent = desired[uuid].get("parent")
        while parent is not None and parent in deleted_by:
            b = base.units[parent]
            deleter = deleted_by.pop(parent)
            keeper = "theirs" if deleter == "ours" else "ours"
            conflicts.append(Conflict(
                "edit_delete", parent, "children", base=b,
                ours=None if deleter == "ours" else ours.units.get(parent),
                theirs=None if deleter == "theirs" else theirs.units.get(parent),
                message=f"{b.get('name')!r} was deleted in {deleter} but {keeper} added, moved "
                "or changed units below it."))
            parent = b.get("parent")
    _hold_conflicted_subtrees(base, conflicts, deleted_by)
    for uuid in deleted_by:
        del desired[uuid]

    _duplicates(desired, new_o, new_t, conflicts, duplicate_distance_m)
    _cycles(base, ours, theirs, desired, conflicts)
    plan.from_ours = len(touched_o)
    plan.from_theirs = len(touched_t)
    return plan


def _hold_conflicted_subtrees(base: Snapshot, conflicts: list[Conflict],
                              deleted_by: dict[str, str]) -> None:
    """Keep, while the conflict is open, what a side deleted below an ``edit_delete`` unit.

    A side that deleted a unit with ``--recursive`` deleted its whole subtree; the
    other side kept (and changed, or added below) it.  Deleting the untouched units of
    that subtree before anyone decides would make "keep the unit" a lie: it would come
    back without its children.  So the deletion of the whole subtree is part of the one
    conflict (as Kart or git treat a delete against a change: nothing of it is applied
    until it is resolved).  Taking the deleting side then deletes the unit, what that
    side deleted below it and what the other side added there (it has no place left:
    its parent is gone); units the other side moved in from elsewhere in the base were
    never deleted by anyone, so they go back where the deleting side has them
    (``storage.merging.conflicts._delete_for_deleting_side``).  Taking the side that
    kept it keeps the unit and all of its original units.  The units held stay with their base values (the draft starts
    as a copy of the base, so they are simply not deleted), and they are removed from
    ``deleted_by``.
    """
    roots = [c for c in conflicts if c.kind == "edit_delete"]
    if not roots or not deleted_by:
        return
    children: dict[str, list[str]] = {}
    for uuid, unit in base.units.items():
        parent = unit.get("parent")
        if parent is not None:
            children.setdefault(parent, []).append(uuid)
    going = set(deleted_by)
    for conflict in roots:
        held = 0
        stack = list(children.get(conflict.unit_uuid, ()))
        while stack:
            uuid = stack.pop()
            if uuid in going:
                held += 1
                deleted_by.pop(uuid, None)
            stack.extend(children.get(uuid, ()))
        deleter = "ours" if conflict.ours is None else "theirs"
        keeper = "theirs" if deleter == "ours" else "ours"
        kept = f", and the {held} unit(s) {deleter} deleted below it," if held else ""
        conflict.message += (
            f" Until resolved, it{kept} stays in the draft: taking {deleter} deletes it, what "
            f"{deleter} deleted below it and what {keeper} added there (units {keeper} moved in "
            f"go back where {deleter} has them); taking {keeper} or base keeps it and its units.")


def _merge_extra(uuid: str, b: UnitState, bv: Any, ov: Any, tv: Any,
                 conflicts: list[Conflict]) -> Any:
    bd, od, td = dict(bv or {}), dict(ov or {}), dict(tv or {})
    out = dict(bd)
    for key in sorted(set(bd) | set(od) | set(td)):
        bk, ok, tk = bd.get(key), od.get(key), td.get(key)
        o_changed, t_changed = ok != bk, tk != bk
        if o_changed and t_changed and ok != tk:
            conflicts.append(Conflict(
                "field", uuid, f"extra_fields.{key}", base=bk, ours=ok, theirs=tk,
                message=f"{b.get('name')!r}: both sides changed extra field {key!r} "
                "differently."))
            continue
        value = ok if o_changed else tk
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out or None


def _distance_m(a: Any, b: Any) -> float | None:
    if a is None or b is None or a.is_empty or b.is_empty:
        return None
    lat1, lat2 = math.radians(a.y), math.radians(b.y)
    dlat, dlon = lat2 - lat1, math.radians(b.x - a.x)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(h)))


def _duplicates(desired: dict[str, UnitState], new_o: list[str], new_t: list[str],
                conflicts: list[Conflict], max_m: float) -> None:
    index: dict[tuple[Any, str], list[str]] = {}
    for uuid in new_o:
        u = desired[uuid]
        index.setdefault((u.get("parent"), normalize_name(u.get("name") or "")), []).append(uuid)
    for uuid in new_t:
        if uuid in new_o:
            continue
        t = desired[uuid]
        for o_uuid in index.get((t.get("parent"), normalize_name(t.get("name") or "")), []):
            o = desired[o_uuid]
            d = _distance_m(o.get("location"), t.get("location"))
            if d is not None and d > max_m:
                continue
            where = f" {d:.0f} m apart" if d is not None else ""
            conflicts.append(Conflict(
                "duplicate_new", o_uuid, None, ours=o, theirs=t, other_uuid=uuid,
                message=f"Both sides added {o.get('name')!r} under the same parent{where}: "
                "probably the same place."))
            break


def _cycles(base: Snapshot, ours: Snapshot, theirs: Snapshot, desired: dict[str, UnitState],
            conflicts: list[Conflict]) -> None:
    while (cycle := find_cycle(desired)) is not None:
        for uuid in cycle:
            unit = desired[uuid]
            b = base.units.get(uuid)
            if b is None or same("parent", b.get("parent"), unit.get("parent")):
                continue
            o, t = ours.units.get(uuid), theirs.units.get(uuid)
            conflicts.append(Conflict(
                "cycle", uuid, "parent", base=b.get("parent"),
                ours=o.get("parent") if o else None, theirs=t.get("parent") if t else None,
                message=f"{unit.get('name')!r}: its move, combined with the other side's moves, "
                "would make a unit its own ancestor; the base parent is kept."))
            unit.values["parent"] = b.get("parent")
