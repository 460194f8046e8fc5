"""Merge by links and rules: a new draft of the target built from a target and a source.

``rules.toml`` says, field by field, where a matched unit's value comes from, and
what happens to units only one side has::

    name = "target"                 # the ministry's names
    code = "target"
    location = "source"             # the survey's coordinates
    territory = "target_non_empty"  # target's, or the source's when the target has none
    groups = "union"
    unmatched_source = "add_as_new" # survey-only units join the draft as 'new'
    unmatched_target = "keep"       # ministry-only units stay as they are

Every key is listed in :data:`RULE_HELP` (and in docs/merge.md); an unknown key or
value is an error naming the file and the key.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.errors import InvalidInput
from storage.ids import uuid7
from storage.merging.snapshot import (
    FIELDS,
    GroupDef,
    Snapshot,
    UnitState,
    depth_order,
    find_cycle,
    is_empty,
    same,
)

FIELD_RULES = ("target", "source", "target_non_empty", "source_non_empty", "union")
RULE_ALIASES = {"prefer_non_empty": "target_non_empty", "prefer_target": "target_non_empty",
                "prefer_source": "source_non_empty"}
UNION_FIELDS = ("aliases", "groups", "extra_fields")
UNMATCHED_SOURCE = ("add_as_new", "ignore")
UNMATCHED_TARGET = ("keep", "close", "reject")

#: (key, default, help) — the one list of settings of a rules file
RULE_HELP: list[tuple[str, str, str]] = [
    *[(f, "target", f"Where a matched unit's {f!r} comes from.") for f in FIELDS],
    ("unmatched_source", "add_as_new",
     "Source units with no link: 'add_as_new' (added with validation status 'new', under the "
     "target-side match of their source parent) or 'ignore'."),
    ("unmatched_target", "keep",
     "Target units with no link: 'keep', 'close' (closed date = today unless already closed) "
     "or 'reject' (validation status 'rejected')."),
]


@dataclass
class Rules:
    fields: dict[str, str] = field(default_factory=lambda: {f: "target" for f in FIELDS})
    unmatched_source: str = "add_as_new"
    unmatched_target: str = "keep"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.fields) | {"unmatched_source": self.unmatched_source,
                                    "unmatched_target": self.unmatched_target}

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str = "rules") -> Rules:
        rules = cls()
        known = [k for k, _d, _h in RULE_HELP]
        for key, value in data.items():
            if key not in known:
                raise InvalidInput(f"{where}: unknown key {key!r}; keys are {', '.join(known)}.")
            if not isinstance(value, str):
                raise InvalidInput(f"{where}: {key!r} must be a text value, got {value!r}.")
            value = RULE_ALIASES.get(value, value)
            if key == "unmatched_source":
                _one_of(where, key, value, UNMATCHED_SOURCE)
                rules.unmatched_source = value
            elif key == "unmatched_target":
                _one_of(where, key, value, UNMATCHED_TARGET)
                rules.unmatched_target = value
            else:
                allowed: tuple[str, ...] = (FIELD_RULES if key in UNION_FIELDS
                                            else FIELD_RULES[:-1])
                if key == "parent":
                    allowed = ("target", "source")
                _one_of(where, key, value, allowed)
                rules.fields[key] = value
        return rules

    @classmethod
    def from_file(cls, path: str | Path) -> Rules:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidInput(f"No rules file at {p}.") from None
        except tomllib.TOMLDecodeError as error:
            raise InvalidInput(f"{p}: not valid TOML ({error}).") from None
        if isinstance(data.get("fields"), dict):  # also accept a [fields] table
            data = {k: v for k, v in data.items() if k != "fields"} | data["fields"]
        return cls.from_mapping(data, str(p))


def _one_of(where: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidInput(f"{where}: {key} = {value!r} is not allowed; use one of "
                           f"{', '.join(repr(a) for a in allowed)}.")


@dataclass
class RulesPlan:
    desired: dict[str, UnitState]
    group_defs: dict[int, GroupDef]
    matched: int = 0
    added: list[dict[str, Any]] = field(default_factory=list)  # source uuid → new uuid
    #: source units without a link found in the target already (same uuid, or same ref at
    #: the same place): treated as matched, never added twice
    recognised: list[dict[str, Any]] = field(default_factory=list)
    #: source units without a link whose ref a target unit uses that cannot be theirs
    #: (paired with another source unit, or elsewhere in the tree): the merge stops
    ref_clashes: list[dict[str, Any]] = field(default_factory=list)
    unmatched_target: list[str] = field(default_factory=list)
    #: source units without a pair whose target unit was deleted since an earlier merge
    #: added it (or a link paired it): not added again — the newer decision stands
    deleted_here: list[dict[str, Any]] = field(default_factory=list)
    #: the same, added again because the merge was asked to (``re_add_deleted``):
    #: ``restored`` (same uuid, the unit as it was when deleted) or, with ``why``, added
    #: as a new unit
    re_added: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def plan_rules_merge(target: Snapshot, source: Snapshot, links: list[tuple[str, str]],
                     rules: Rules, also_linked: set[str] | frozenset[str] = frozenset(),
                     earlier: dict[str, str] | None = None,
                     rejected: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
                     deleted: dict[str, dict[str, str]] | None = None,
                     re_add_deleted: bool = False,
                     restorable: dict[str, UnitState] | None = None,
                     ) -> RulesPlan:
    """The desired state of the new draft: ``target`` with the rules applied.

    ``earlier`` pairs source units with the target units earlier merges of this list
    added (source uuid → target uuid); ``rejected`` holds the (target, source) uuid pairs
    a reviewer said are different places.  Both serve :func:`_recognise`.

    ``deleted`` (from :func:`storage.merging.job.deleted_here`) holds the source units
    whose target unit was deleted in the target's line since a merge added it or a link
    paired it.  Unless recognised in the target some other way, they are not added
    again (``plan.deleted_here``): the delete is newer than the add, and re-adding on
    every merge would undo it without anyone deciding so.  ``re_add_deleted`` adds
    them back (``plan.re_added``) — the explicit way back.

    Bringing back means *restoring*: ``restorable`` (from
    :func:`storage.merging.restore.restorable_units`) holds the deleted target units as
    they were when deleted, by uuid.  Such a unit comes back with its uuid (and key), so
    its history, change requests, submissions and DHIS2 id still point at it, under its
    old parent when that is in the draft (else under the target-side match of its
    source parent), and is then merged with its source unit like a matched pair: the
    rules apply.  A deleted unit that cannot be restored (the change log holds no delete
    of it, or another source unit already brought that uuid back) is added as a new
    unit, as before, and ``re_added`` says why."""
    deleted = deleted or {}
    restorable = restorable or {}
    desired = dict(target.units)  # a unit is copied before its first change (editable)
    group_defs: dict[int, GroupDef] = dict(target.groups)
    plan = RulesPlan(desired, group_defs)

    def editable(uuid: str) -> UnitState:
        if desired[uuid] is target.units.get(uuid):
            desired[uuid] = desired[uuid].copy()
        return desired[uuid]

    t_of_s: dict[str, str] = {}
    for t_uuid, s_uuid in links:
        if t_uuid in target.units and s_uuid in source.units:
            t_of_s[s_uuid] = t_uuid
    plan.matched = len(t_of_s)
    group_map = _group_map(target, source, group_defs)

    def translate(name: str, value: Any) -> Any:
        if name == "groups":
            return frozenset(group_map[k] for k in (value or ()))
        if name == "parent":
            return t_of_s.get(value) if value else None
        return value

    # units not added again, or restored (with their own ref, dropped when taken since),
    # are no ref clash: no unit is added under the source's ref for them
    _recognise(target, source, t_of_s, also_linked, plan, earlier or {}, rejected,
               {s for s, g in deleted.items() if not re_add_deleted or g["uuid"] in restorable})
    linked = dict(t_of_s)
    restored: dict[str, str] = {}  # source uuid → restored target uuid
    if rules.unmatched_source == "add_as_new":
        refs = {u.get("source_ref") for u in desired.values() if u.get("source_ref")}
        keys = {u.key for u in desired.values() if u.key is not None}
        clashing = {c["source_uuid"] for c in plan.ref_clashes}
        kept_out: set[str] = set()  # deleted here, not added again
        for s_uuid in depth_order(source.units):
            if s_uuid in t_of_s or s_uuid in also_linked or s_uuid in clashing:
                continue
            s_unit = source.units[s_uuid]
            gone = deleted.get(s_uuid)
            if gone is not None and not re_add_deleted:
                kept_out.add(s_uuid)
                plan.deleted_here.append({"source_uuid": s_uuid, "uuid": gone["uuid"],
                                          "by": gone["by"], "name": s_unit.get("name")})
                continue
            old = restorable.get(gone["uuid"]) if gone is not None else None
            why = None
            if gone is not None and old is None:
                why = "the change log holds no delete of it in this line"
            elif old is not None and old.uuid in desired:
                why = "another source unit already brought that uuid back"
                old = None
            sp = s_unit.get("parent")
            old_parent = old.get("parent") if old is not None else None
            if old_parent not in desired and sp and sp not in t_of_s:
                if sp in kept_out:
                    plan.warnings.append(
                        f"{s_unit.get('name')!r}: its source parent "
                        f"{source.units[sp].get('name')!r} was deleted here since it was "
                        "added or matched; not added (--re-add-deleted brings both back).")
                else:
                    plan.warnings.append(f"{s_unit.get('name')!r}: its source parent was not "
                                         "placed in the target; not added.")
                continue
            if old is not None and gone is not None:
                unit = UnitState(old.uuid, old.key if old.key not in keys else None,
                                 dict(old.values))
                if old_parent not in desired:
                    unit.values["parent"] = t_of_s.get(sp) if sp else None
                ref = unit.get("source_ref")
                if ref and ref in refs:
                    plan.warnings.append(
                        f"{unit.get('name')!r}: restored without its ref {ref!r}, which "
                        "another unit of the target uses now.")
                    unit.values["source_ref"] = None
                elif ref:
                    refs.add(ref)
                if unit.key is not None:
                    keys.add(unit.key)
                desired[unit.uuid] = unit
                t_of_s[s_uuid] = unit.uuid
                restored[s_uuid] = unit.uuid
                plan.added.append({"source_uuid": s_uuid, "uuid": unit.uuid,
                                   "name": unit.get("name"), "restored": True})
                plan.re_added.append({"source_uuid": s_uuid, "uuid": unit.uuid,
                                      "deleted_uuid": gone["uuid"], "by": gone["by"],
                                      "name": unit.get("name"), "restored": True})
                continue
            new = UnitState(uuid7(), None, {f: translate(f, s_unit.get(f)) for f in FIELDS})
            new.values["validation_status"] = "new"
            ref = new.get("source_ref")
            if ref and ref in refs:
                plan.warnings.append(f"{s_unit.get('name')!r}: source ref {ref!r} is already used "
                                     "in the target; added without a ref.")
                new.values["source_ref"] = None
            elif ref:
                refs.add(ref)
            desired[new.uuid] = new
            t_of_s[s_uuid] = new.uuid
            plan.added.append({"source_uuid": s_uuid, "uuid": new.uuid, "name": new.get("name")})
            if gone is not None:
                plan.re_added.append({"source_uuid": s_uuid, "uuid": new.uuid,
                                      "deleted_uuid": gone["uuid"], "by": gone["by"],
                                      "name": new.get("name"), "restored": False, "why": why})
    moved_by_rule: dict[str, str | None] = {}
    ref_owner = {u.get("source_ref"): u.uuid for u in desired.values() if u.get("source_ref")}
    # restored units are merged with their source unit like linked ones
    for s_uuid, t_uuid in [*linked.items(), *restored.items()]:
        t_unit, s_unit = editable(t_uuid), source.units[s_uuid]
        for name in FIELDS:
            rule = rules.fields[name]
            if rule == "target":
                continue
            tv = t_unit.get(name)
            sv = translate(name, s_unit.get(name))
            if name == "parent" and s_unit.get("parent") and sv is None:
                plan.warnings.append(
                    f"{t_unit.get('name')!r}: the source parent of {s_unit.get('name')!r} has no "
                    "match in the target; the target parent is kept.")
                continue
            value = _pick(name, rule, tv, sv)
            if name == "parent" and not same("parent", value, tv):
                moved_by_rule[t_uuid] = tv
            if name == "source_ref" and value and not same(name, value, tv):
                owner = ref_owner.get(value)
                if owner is not None and owner != t_uuid:
                    plan.warnings.append(
                        f"{t_unit.get('name')!r}: source ref {value!r} is already used by "
                        f"{desired[owner].get('name')!r}; the target's ref is kept.")
                    continue
                ref_owner.pop(tv, None)
                ref_owner[value] = t_uuid
            t_unit.values[name] = value
    matched_targets = set(t_of_s.values())
    today = dt.date.today().isoformat()
    for t_uuid in target.units:
        if t_uuid in matched_targets:
            continue
        plan.unmatched_target.append(t_uuid)
        unit = desired[t_uuid]
        if rules.unmatched_target == "close" and not unit.get("closed_date"):
            editable(t_uuid).values["closed_date"] = today
        elif rules.unmatched_target == "reject":
            editable(t_uuid).values["validation_status"] = "rejected"
    while (cycle := find_cycle(desired)) is not None:
        culprit = next((u for u in cycle if u in moved_by_rule), cycle[0])
        editable(culprit).values["parent"] = moved_by_rule.pop(culprit, None)
        plan.warnings.append(f"{desired[culprit].get('name')!r}: taking the source parent would "
                             "make a cycle; the target parent is kept.")
    plan.group_defs = group_defs
    return plan


def _recognise(target: Snapshot, source: Snapshot, t_of_s: dict[str, str],
               also_linked: set[str] | frozenset[str], plan: RulesPlan,
               earlier: dict[str, str],
               rejected: set[tuple[str, str]] | frozenset[tuple[str, str]],
               kept_out: set[str] | frozenset[str] = frozenset()) -> None:
    """Pair the source units without a link that the target already holds.

    A merge adds the source's unlinked units with new uuids and keeps their ref, and
    records no link for them; merging the same list again (or a list whose refs the
    target shares, like two exports of one DHIS2) would add them a second time.  So a
    source unit without a link is *the same unit* as a target unit when

    * an earlier merge of this list into the target (or an ancestor of it) added
      it as that unit (``earlier``, from the ``merge_run`` rows: exact, refs or not), or
    * it has the same uuid (an export of the target read back), or
    * it has the same ref and that target unit is paired with no other source unit
      and stands at the same place: under the target-side match of the source
      parent (both roots), or with the same name — unless a reviewer rejected that
      very pair (then it is added, without the ref, as before).

    Recognised units are merged like linked ones (the rules apply).  A ref used by a
    target unit that fails the second condition cannot be told apart from a wrongly
    paired unit; it is recorded in ``plan.ref_clashes`` and the merge stops rather than
    add a copy without its ref.  Parents come before children, so a recognised
    district places its recognised facilities.

    ``kept_out`` are source units deleted here since (not added again, or restored as
    the deleted unit): a ref of theirs used elsewhere is no clash, since nothing is
    added under it.
    """
    taken = set(t_of_s.values())
    ref_owner = {u.get("source_ref"): uuid for uuid, u in target.units.items()
                 if u.get("source_ref")}
    for s_uuid in depth_order(source.units):
        if s_uuid in t_of_s or s_uuid in also_linked:
            continue
        s_unit = source.units[s_uuid]
        owner: str | None
        if earlier.get(s_uuid) in target.units and earlier[s_uuid] not in taken:
            owner, by = earlier[s_uuid], "earlier merge"
        elif s_uuid in target.units and s_uuid not in taken:
            owner, by = s_uuid, "uuid"
        else:
            ref = s_unit.get("source_ref")
            owner = ref_owner.get(ref) if ref else None
            if owner is None or (owner, s_uuid) in rejected:
                continue
            by = "ref"
            t_unit = target.units[owner]
            sp = s_unit.get("parent")
            same_parent = (t_unit.get("parent") is None if sp is None
                           else sp in t_of_s and t_of_s[sp] == t_unit.get("parent"))
            same_name = (str(t_unit.get("name") or "").strip().casefold()
                         == str(s_unit.get("name") or "").strip().casefold())
            if owner in taken or not (same_parent or same_name):
                if s_uuid in kept_out:
                    continue
                plan.ref_clashes.append({
                    "source_uuid": s_uuid, "name": s_unit.get("name"), "source_ref": ref,
                    "target_uuid": owner, "target_name": t_unit.get("name"),
                    "why": ("paired with another source unit" if owner in taken
                            else "elsewhere in the tree, with another name")})
                continue
        t_of_s[s_uuid] = owner
        taken.add(owner)
        plan.recognised.append({"source_uuid": s_uuid, "uuid": owner, "by": by,
                                "name": target.units[owner].get("name")})


def _pick(name: str, rule: str, tv: Any, sv: Any) -> Any:
    if rule == "source":
        return sv
    if rule == "target_non_empty":
        return sv if is_empty(tv) else tv
    if rule == "source_non_empty":
        return tv if is_empty(sv) else sv
    if rule == "union":
        if name == "groups":
            return frozenset(tv or ()) | frozenset(sv or ())
        if name == "aliases":
            out = list(tv or [])
            out += [a for a in (sv or []) if a not in out]
            return out or None
        if name == "extra_fields":
            return (dict(sv or {}) | dict(tv or {})) or None
    return tv


def _group_map(target: Snapshot, source: Snapshot, defs: dict[int, GroupDef]) -> dict[int, int]:
    """Source group key → target group key, by source ref then name; new groups get
    negative planned keys (created in the draft when a unit needs them)."""
    by_ref = {g.source_ref: k for k, g in target.groups.items() if g.source_ref}
    by_name = {g.name.casefold(): k for k, g in target.groups.items()}
    out: dict[int, int] = {}
    for key, g in source.groups.items():
        found = by_ref.get(g.source_ref) if g.source_ref else None
        if found is None:
            found = by_name.get(g.name.casefold())
        if found is None:
            found = -key
            defs[found] = GroupDef(None, g.name, g.source_ref, g.short_name, g.code)
        out[key] = found
    return out
