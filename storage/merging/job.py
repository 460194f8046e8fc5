"""Merge jobs: read the versions, plan, write a new draft, run the checks — in one transaction.

:class:`RulesMergeJob` (target + source + links + rules) and
:class:`ThreeWayMergeJob` (base + ours + theirs) both write a **new draft** of the
target's (base's) source, record a ``merge_run`` row (and the ``merge_conflict``
rows of a 3-way merge), run every integrity check on the new draft *inside the
same transaction* and return the report.  Any error, a cancel or a killed process
leaves no half-made version; ``dry_run`` does all of it and rolls back.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, text

from storage.checks import check_version
from storage.diff import parse_version_spec
from storage.errors import InvalidInput, NotFound
from storage.jobs import Job
from storage.merging.apply import Applied, apply_state
from storage.merging.restore import LineDeletes, gone_from_line, log_restores, restorable_units
from storage.merging.rules import Rules, plan_rules_merge
from storage.merging.snapshot import Names, Snapshot, load_snapshot, to_json, unit_to_json
from storage.merging.three_way import DUPLICATE_DISTANCE_M, Conflict, plan_three_way
from storage.registry import Registry, json_value
from storage.versions import (
    VersionRef,
    copy_version_content,
    insert_version,
    log_version,
    resolve_version,
    version_by_id,
)

SCHEMA = "georeg.merge/v1"
ORIGIN = "merge"
MAX_LISTED = 200  # added units listed in a report (the counts are always complete)

VersionSpec = str | VersionRef | tuple[str, int | None]


def resolve(conn: Connection, spec: VersionSpec) -> VersionRef:
    if isinstance(spec, VersionRef):
        return version_by_id(conn, spec.id)
    source, number = parse_version_spec(spec) if isinstance(spec, str) else spec
    return resolve_version(conn, source, number)


def jsonb(conn: Connection, param: str) -> str:
    return f":{param}" if conn.dialect.name == "sqlite" else f"CAST(:{param} AS jsonb)"


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


class _MergeJob(Job[dict[str, Any]]):
    title = "Merging"

    def __init__(self, reg: Registry, *, dry_run: bool = False, author: str | None = None,
                 origin: str = ORIGIN, description: str | None = None) -> None:
        super().__init__()
        self.reg, self.dry_run, self.author, self.origin = reg, dry_run, author, origin
        self.description = description
        self._run_id = 0

    def _progress(self, done: int, total: int, message: str) -> None:
        self.report(done, total, message)

    def _new_draft(self, conn: Connection, base: Snapshot, description: str,
                   kind: str) -> tuple[VersionRef, Snapshot]:
        ref = base.version
        vid = insert_version(conn, ref.source_id, description=self.description or description,
                             copied_from_id=ref.id)
        self.reg.set_audit(conn, False)
        counts = copy_version_content(self.reg, conn, ref.id, vid)
        self.reg.set_audit(conn, True)
        log_version(conn, vid, "create", {"copied_from": ref.number, "merge": kind} | counts)
        version = version_by_id(conn, vid)
        # the copy holds exactly what ``base`` holds (same uuids, keys, values, groups)
        return version, Snapshot(version, base.units, base.groups)

    def _finish(self, conn: Connection, version: VersionRef, applied: Applied,
                run_row: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
        self.report(message="Checking the new draft")
        checks = check_version(self.reg, conn, version)
        report["version"] = version.to_dict()
        report["counts"] = applied.counts() | report.get("counts", {})
        report["checks"] = checks
        report["dry_run"] = self.dry_run
        stored = {k: v for k, v in report.items()
                  if k not in ("checks", "conflicts", "added", "recognised", "added_pairs")}
        if "added_pairs" in report:  # all of them: how the next merge of this list finds them
            stored["added_pairs"] = report.pop("added_pairs")
        stored["checks"] = {"ok": checks["ok"], "counts": checks["counts"],
                            "summary": checks["summary"]}
        run_id = int(conn.execute(
            text(
                "INSERT INTO merge_run (kind, result_version_id, target_version_id, "
                "source_version_id, theirs_version_id, links_run_id, rules, report, started_by, "
                f"ended_at) VALUES (:kind, :res, :tv, :sv, :th, :lr, {jsonb(conn, 'rules')}, "
                f"{jsonb(conn, 'report')}, :by, :ended) RETURNING fid"
            ),
            run_row | {"res": version.id, "report": _dumps(stored), "by": self.author,
                       "ended": _now()},
        ).scalar_one())
        report["merge_run"] = None if self.dry_run else run_id  # a dry run keeps no row
        self._run_id = run_id
        return report


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- links --------------------------------------------------------------------------------


def load_links(conn: Connection, target: VersionRef, source: VersionRef, run_id: int | None
               ) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Accepted and auto one-to-one links between the two sources as (target, source) uuids.

    With ``run_id``, that match run's links; without, the newest run between the two
    sources (either side left or right), else links stored without a run.
    """
    sources = {target.source_id, source.source_id}
    if run_id is not None:
        row = conn.execute(
            text("SELECT r.fid, lv.source_id, rv.source_id FROM algorithm_run r "
                 "JOIN source_version lv ON lv.fid = r.left_version_id "
                 "JOIN source_version rv ON rv.fid = r.right_version_id WHERE r.fid = :r"),
            {"r": run_id},
        ).first()
        if row is None:
            raise NotFound(f"No match run {run_id}. List runs with 'georeg links REG'.")
        if {row[1], row[2]} != sources:
            raise InvalidInput(f"Match run {run_id} is not between {target.source!r} and "
                               f"{source.source!r}; pick a run that matched these two sources.")
    else:
        runs = conn.execute(
            text("SELECT r.fid, lv.source_id, rv.source_id FROM algorithm_run r "
                 "JOIN source_version lv ON lv.fid = r.left_version_id "
                 "JOIN source_version rv ON rv.fid = r.right_version_id ORDER BY r.fid DESC"),
        ).all()
        run_id = next((int(r[0]) for r in runs if {r[1], r[2]} == sources), None)
    rows = conn.execute(
        text(
            "SELECT l.left_version_id, l.left_unit_uuid, l.right_version_id, l.right_unit_uuid, "
            "l.status, l.score, lv.source_id FROM link l "
            "JOIN source_version lv ON lv.fid = l.left_version_id "
            "JOIN source_version rv ON rv.fid = l.right_version_id "
            "WHERE l.status IN ('accepted', 'auto') AND "
            + ("l.run_id = :r" if run_id is not None else
               "l.run_id IS NULL AND lv.source_id IN (:a, :b) AND rv.source_id IN (:a, :b)")
            + " ORDER BY CASE WHEN l.status = 'accepted' THEN 0 ELSE 1 END, "
            "CASE WHEN l.kind = 'one_to_one' THEN 0 ELSE 1 END, l.score DESC, l.fid"
        ),
        {"r": run_id, "a": target.source_id, "b": source.source_id},
    ).all()
    # links a person still has to decide (reported) or rejected (never recognised by ref)
    review = conn.execute(
        text(
            "SELECT l.left_version_id, l.left_unit_uuid, l.right_unit_uuid, lv.source_id, "
            "l.status FROM link l JOIN source_version lv ON lv.fid = l.left_version_id "
            "JOIN source_version rv ON rv.fid = l.right_version_id "
            "WHERE l.status IN ('review', 'rejected') AND "
            + ("l.run_id = :r" if run_id is not None else
               "l.run_id IS NULL AND lv.source_id IN (:a, :b) AND rv.source_id IN (:a, :b)")
        ),
        {"r": run_id, "a": target.source_id, "b": source.source_id},
    ).all()
    review_source: set[str] = set()
    rejected: set[tuple[str, str]] = set()
    for lv_id, lu, ru, l_source, status in review:
        target_left = lv_id == target.id or (lv_id != source.id and l_source == target.source_id)
        if status == "review":
            review_source.add(ru if target_left else lu)
        else:
            rejected.add((lu, ru) if target_left else (ru, lu))
    review = [r for r in review if r[4] == "review"]
    if not rows and review:
        where = f" --run {run_id}" if run_id is not None else ""
        raise InvalidInput(
            f"No accepted or auto links between {target.label} and {source.label}: "
            f"{len(review)} link(s) still await review. Review them first "
            f"(georeg links REG{where} --status review, then georeg link accept/reject).")
    if not rows:
        raise InvalidInput(
            f"No accepted or auto links between {target.label} and {source.label}. Match them "
            f"first: georeg match REG \"{target.source}:{target.number}\" "
            f"\"{source.source}:{source.number}\" (then review), or pass --links RUN_ID.")
    links: list[tuple[str, str]] = []
    seen_t: set[str] = set()
    seen_s: set[str] = set()
    also_source: set[str] = set()
    doubles = 0
    for lv_id, lu, _rv_id, ru, _status, _score, l_source in rows:
        if lv_id == target.id or (lv_id != source.id and l_source == target.source_id):
            t_uuid, s_uuid = lu, ru
        else:
            t_uuid, s_uuid = ru, lu
        if t_uuid in seen_t or s_uuid in seen_s:
            doubles += 1
            # same place as an already-paired unit (a split's other part too, by the link
            # a person accepted): never "new"
            also_source.add(s_uuid)
            continue
        seen_t.add(t_uuid)
        seen_s.add(s_uuid)
        links.append((t_uuid, s_uuid))
    return links, {"run_id": run_id, "links": len(links), "ignored_second_links": doubles,
                   "review": len(review), "_also_linked_source": also_source,
                   "_review_source": review_source, "_rejected": rejected}


def version_line(conn: Connection, version: VersionRef) -> list[int]:
    """VERSION's id, then the ids of the versions it was copied from, newest first.

    This is the line a draft's content comes from: what an earlier version of the line
    held and VERSION no longer holds was deleted somewhere along it, i.e. *after* that
    earlier version was made (a merge's add, a match's link).
    """
    line: list[int] = []
    cur: int | None = version.id
    while cur is not None and cur not in line:
        line.append(cur)
        cur = conn.execute(text("SELECT copied_from_id FROM source_version WHERE fid = :v"),
                           {"v": cur}).scalar()
    return line


def earlier_merge_pairs(conn: Connection, target: VersionRef, source: VersionRef,
                        lineage: list[int] | None = None) -> tuple[dict[str, str], int]:
    """Source uuid → target uuid of the units earlier merges of SOURCE's list added.

    A rules merge adds the source's unlinked units under new uuids and stores the pairs
    in its ``merge_run`` report (``added_pairs``).  When TARGET is that merge's draft,
    or descends from it (copies of copies), merging the same list again must find those
    units there instead of adding them a second time — and a pair whose target unit
    TARGET no longer holds was deleted since, in TARGET's line (see
    :func:`deleted_here`).  Later merges come last, so a unit added again (after
    ``re_add_deleted``) wins over the one deleted.  Also returns how many such merges
    recorded no pairs (made by an older Georeg): their ref-less units cannot be
    recognised, which the report says.
    """
    if lineage is None:
        lineage = version_line(conn, target)
    rows = conn.execute(
        text("SELECT m.result_version_id, m.report FROM merge_run m "
             "JOIN source_version sv ON sv.fid = m.source_version_id "
             "WHERE m.kind = 'rules' AND sv.source_id = :s ORDER BY m.fid"),
        {"s": source.source_id},
    ).all()
    pairs: dict[str, str] = {}
    unrecorded = 0
    for result_id, report in rows:
        if result_id in lineage:
            data = json_value(report) or {}
            if "added_pairs" not in data and (data.get("counts") or {}).get("added"):
                unrecorded += 1  # made before merges recorded them
            for s_uuid, t_uuid in data.get("added_pairs") or []:
                pairs[s_uuid] = t_uuid
    return pairs, unrecorded


def deleted_here(conn: Connection, lineage: list[int], target: Snapshot, source: Snapshot,
                 links: list[tuple[str, str]], earlier: dict[str, str],
                 line_deletes: LineDeletes | None = None) -> dict[str, dict[str, str]]:
    """Source units whose target unit was deleted in TARGET's line since it was paired.

    Source uuid → ``{"uuid": the deleted target unit, "by": "earlier merge" | "link"}``.

    Merging the same list again finds these source units unpaired: the target unit an
    earlier merge added for them (``earlier``), or the one a link paired them with, is
    not in TARGET any more.  Without this they would be added again, undoing the
    officer's delete.  Like a 3-way merge, the newer decision wins: the delete came
    after the add (the merge's draft is an ancestor of TARGET) or after the link (the
    change log has the unit's delete in TARGET's line, or a version TARGET was copied
    from holds it: see :func:`storage.merging.restore.gone_from_line`).  A link whose
    target unit was never in TARGET's line is only stale, as before: nothing here says
    the officer deleted it.
    """
    out: dict[str, dict[str, str]] = {}
    for s_uuid, t_uuid in earlier.items():
        if s_uuid in source.units and t_uuid not in target.units:
            out[s_uuid] = {"uuid": t_uuid, "by": "earlier merge"}
    stale = {t: s for t, s in links
             if t not in target.units and s in source.units and s not in out}
    for t_uuid in gone_from_line(conn, lineage, stale, line_deletes):
        out[stale[t_uuid]] = {"uuid": t_uuid, "by": "link"}
    return out


def check_links_apply(conn: Connection, links: list[tuple[str, str]], link_info: dict[str, Any],
                      target: Snapshot, source: Snapshot, target_line: list[int],
                      source_line: list[int], target_deletes: LineDeletes | None = None) -> None:
    """Stop when the links no longer describe TARGET and SOURCE; count stale links per side.

    Links name units by uuid.  A link whose unit is not in the version is *stale*, for
    one of two reasons, told apart by the change log (and the versions it was copied
    from, see :func:`storage.merging.restore.gone_from_line`):

    * the unit was **deleted** since the match, in the version or its line.  However
      many (a clean-up of closed facilities is legitimate), these links are dropped and
      counted (``deleted_target`` / ``deleted_source``): their other unit counts as
      unmatched, and a source unit whose target unit was deleted is not added again
      (:func:`deleted_here`);
    * the uuid **never was** in the version's line: the run was made on another version
      of that side (a list imported again gets new uuids).  When no link is usable, or
      more than half of the links not dropped for a delete miss their unit on one side,
      every unit of that side the links no longer reach would be added as new or left
      unmatched, so the merge would double the list: better to stop and say why.
    """
    n = len(links)
    stale_t = [t for t, _s in links if t not in target.units]
    stale_s = [s for _t, s in links if s not in source.units]
    gone_t = gone_from_line(conn, target_line, stale_t, target_deletes)
    gone_s = gone_from_line(conn, source_line, stale_s)
    deleted_t = sum(1 for t in stale_t if t in gone_t)
    deleted_s = sum(1 for s in stale_s if s in gone_s)
    missing_t, missing_s = len(stale_t) - deleted_t, len(stale_s) - deleted_s
    usable = sum(1 for t, s in links if t in target.units and s in source.units)
    link_info["stale_target"], link_info["stale_source"] = len(stale_t), len(stale_s)
    link_info["deleted_target"], link_info["deleted_source"] = deleted_t, deleted_s
    if n and (usable or not (missing_t or missing_s)) \
            and missing_t * 2 <= n - deleted_t and missing_s * 2 <= n - deleted_s:
        return
    run_id = link_info.get("run_id")
    made_on = ""
    if run_id is not None:
        row = conn.execute(text("SELECT left_version_id, right_version_id FROM algorithm_run "
                                "WHERE fid = :r"), {"r": run_id}).first()
        if row is not None:
            made_on = (f" It was made on {version_by_id(conn, row[0]).label} and "
                       f"{version_by_id(conn, row[1]).label}.")
    what = f"match run {run_id}" if run_id is not None else "the links"
    sides = [] if links else ["none was given"]
    t, s = target.version, source.version
    for missing, deleted, version in ((missing_t, deleted_t, t), (missing_s, deleted_s, s)):
        if missing:
            sides.append(f"{missing} point to units that are not in {version.label}"
                         + (f" (and {deleted} more to units deleted there since)" if deleted
                            else ""))
    raise InvalidInput(
        f"The links of {what} no longer describe these versions: of its {n} "
        f"link(s), {' and '.join(sides)} ({usable} still usable).{made_on} Those units never "
        f"were in these versions (nor in the versions they were copied from), so merging "
        f"would add the units the links no longer reach as new (duplicates). Run georeg "
        f"match again: georeg match REG \"{t.source}:{t.number}\" \"{s.source}:{s.number}\" "
        "(then review), or pass --links RUN_ID of a run made on these versions.")


# --- the jobs ---------------------------------------------------------------------------


class RulesMergeJob(_MergeJob):
    """A new draft of TARGET's source: TARGET with SOURCE's values where the rules say so."""

    title = "Merging by links and rules"

    def __init__(self, reg: Registry, target: VersionSpec, source: VersionSpec, *,
                 rules: Rules | None = None, links_run: int | None = None,
                 links: list[tuple[str, str]] | None = None, re_add_deleted: bool = False,
                 **kw: Any) -> None:
        super().__init__(reg, **kw)
        self.target_spec, self.source_spec = target, source
        self.rules = rules or Rules()
        self.links_run, self.links = links_run, links
        #: add again the source units whose target unit was deleted since (see deleted_here)
        self.re_add_deleted = re_add_deleted

    def execute(self) -> dict[str, Any]:
        with self.reg.write(origin=self.origin, author=self.author, dry_run=self.dry_run) as conn:
            target = resolve(conn, self.target_spec)
            source = resolve(conn, self.source_spec)
            _refuse_open_conflicts(conn, target, source)
            if target.id == source.id:
                raise InvalidInput(f"TARGET and FROM are the same version ({target.label}); "
                                   "merge a different source (or version) into it.")
            self.report(0, None, "Reading links and versions")
            if self.links is not None:
                links, link_info = self.links, {"run_id": None, "links": len(self.links),
                                                "ignored_second_links": 0, "review": 0}
            else:
                links, link_info = load_links(conn, target, source, self.links_run)
            t_snap = load_snapshot(conn, self.reg.backend, target)
            s_snap = load_snapshot(conn, self.reg.backend, source)
            lineage = version_line(conn, target)
            line_deletes = LineDeletes(conn, lineage)  # deletes in TARGET's line, looked up once
            check_links_apply(conn, links, link_info, t_snap, s_snap, lineage,
                              version_line(conn, source), line_deletes)
            self.check_cancelled()
            self.report(message="Planning")
            also: set[str] = link_info.pop("_also_linked_source", set())  # type: ignore[assignment]
            in_review: set[str] = link_info.pop("_review_source", set())  # type: ignore[assignment]
            rejected: set[tuple[str, str]] = link_info.pop(  # type: ignore[assignment]
                "_rejected", set())
            earlier, unrecorded = earlier_merge_pairs(conn, target, source, lineage)
            gone = deleted_here(conn, lineage, t_snap, s_snap, links, earlier, line_deletes)
            restorable, deletes = ({}, {}) if not (self.re_add_deleted and gone) else \
                restorable_units(conn, self.reg.backend, lineage, t_snap,
                                 [g["uuid"] for g in gone.values()], line_deletes)
            plan = plan_rules_merge(t_snap, s_snap, links, self.rules, also_linked=also,
                                    earlier=earlier, rejected=rejected, deleted=gone,
                                    re_add_deleted=self.re_add_deleted, restorable=restorable)
            if unrecorded and plan.added:
                plan.warnings.insert(0, (
                    f"{target.label} descends from {unrecorded} earlier merge(s) of "
                    f"{source.source!r} that did not record the units they added: units "
                    "without a ref may now be in the draft twice. Check the added units, or "
                    f"run georeg match REG \"{target.source}:{target.number}\" "
                    f"\"{source.source}:{source.number}\" and merge with that run."))
            if plan.ref_clashes and self.rules.unmatched_source == "add_as_new":
                raise InvalidInput(_ref_clash_message(plan.ref_clashes, target, source))
            link_info["used"] = plan.matched
            link_info["stale"] = len(links) - plan.matched
            link_info["review_added"] = sum(1 for a in plan.added if a["source_uuid"] in in_review)
            version, current = self._new_draft(
                conn, t_snap, f"Merge of {source.label} into {target.label}", "rules")
            applied = apply_state(conn, self.reg.backend, current, plan.desired, plan.group_defs,
                                  self._progress)
            log_restores(conn, self.reg.backend, version,
                         [r for r in plan.re_added if r["restored"]], deletes)
            report: dict[str, Any] = {
                "schema": SCHEMA,
                "mode": "rules",
                "target": target.to_dict(),
                "source": source.to_dict(),
                "links": link_info,
                "rules": self.rules.to_dict(),
                "re_add_deleted": self.re_add_deleted,
                "counts": {"matched": plan.matched, "recognised": len(plan.recognised),
                           "unmatched_target": len(plan.unmatched_target),
                           "deleted_here": len(plan.deleted_here),
                           "re_added": len(plan.re_added),
                           "restored": sum(1 for r in plan.re_added if r["restored"]),
                           "conflicts": 0},
                "added": plan.added[:MAX_LISTED],
                "added_pairs": [[a["source_uuid"], a["uuid"]] for a in plan.added],
                "recognised": plan.recognised[:MAX_LISTED],
                "deleted_here": plan.deleted_here[:MAX_LISTED],
                "re_added": plan.re_added[:MAX_LISTED],
                "warnings": _link_warnings(link_info, plan.recognised, target, source)
                + _deleted_warnings(plan.deleted_here, plan.re_added, target)
                + plan.warnings,
                "conflicts": [],
            }
            run_row = {"kind": "rules", "tv": target.id, "sv": source.id, "th": None,
                       "lr": link_info["run_id"], "rules": _dumps(self.rules.to_dict())}
            return self._finish(conn, version, applied, run_row, report)


class ThreeWayMergeJob(_MergeJob):
    """A new draft combining OURS and THEIRS, both descended from BASE; conflicts recorded."""

    title = "3-way merge"

    def __init__(self, reg: Registry, base: VersionSpec, ours: VersionSpec, theirs: VersionSpec,
                 *, duplicate_distance_m: float = DUPLICATE_DISTANCE_M, **kw: Any) -> None:
        super().__init__(reg, **kw)
        self.specs = (base, ours, theirs)
        self.duplicate_distance_m = duplicate_distance_m

    def execute(self) -> dict[str, Any]:
        with self.reg.write(origin=self.origin, author=self.author, dry_run=self.dry_run) as conn:
            base, ours, theirs = (resolve(conn, s) for s in self.specs)
            _refuse_open_conflicts(conn, base, ours, theirs)
            _check_descent(conn, base, ours, "OURS")
            _check_descent(conn, base, theirs, "THEIRS")
            if ours.id == theirs.id:
                raise InvalidInput(f"OURS and THEIRS are the same version ({ours.label}); "
                                   "nothing to merge.")
            self.report(0, None, "Reading versions")
            snaps = [load_snapshot(conn, self.reg.backend, v) for v in (base, ours, theirs)]
            self.check_cancelled()
            self.report(message="Planning")
            plan = plan_three_way(*snaps, duplicate_distance_m=self.duplicate_distance_m)
            version, current = self._new_draft(
                conn, snaps[0], f"3-way merge of {ours.label} and {theirs.label} (base {base.label})",
                "three_way")
            applied = apply_state(conn, self.reg.backend, current, plan.desired, plan.group_defs,
                                  self._progress)
            report: dict[str, Any] = {
                "schema": SCHEMA,
                "mode": "three_way",
                "base": base.to_dict(),
                "ours": ours.to_dict(),
                "theirs": theirs.to_dict(),
                "counts": {"from_ours": plan.from_ours, "from_theirs": plan.from_theirs,
                           "conflicts": len(plan.conflicts)},
                "warnings": [],
            }
            run_row = {"kind": "three_way", "tv": base.id, "sv": ours.id, "th": theirs.id,
                       "lr": None, "rules": _dumps({"duplicate_distance_m":
                                                    self.duplicate_distance_m})}
            report = self._finish(conn, version, applied, run_row, report)
            names = Names.load(conn, version.id, plan.group_defs)
            report["conflicts"] = store_conflicts(conn, self._run_id, version, plan.conflicts,
                                                  names)
            if self.dry_run:
                for conflict in report["conflicts"]:
                    conflict["id"] = None  # rolled back with everything else
            return report


def _link_warnings(info: dict[str, Any], recognised: list[dict[str, Any]], target: VersionRef,
                   source: VersionRef) -> list[str]:
    """What the reviewer must know about the links, first in the report's warnings."""
    out = []
    if info.get("review"):
        run = info.get("run_id")
        listing = (f"georeg links REG --run {run} --status review" if run is not None
                   else "georeg links REG --status review")
        added = info.get("review_added", 0)
        out.append(
            f"{info['review']} link(s){f' of match run {run}' if run is not None else ''} still "
            "await review and were not used"
            + (f": {added} of their source unit(s) were added as new, so the draft may hold "
               "them twice" if added else "")
            + f". Review them ({listing}), then merge again into {target.label}.")
    if info.get("stale"):
        deleted_t, deleted_s = info.get("deleted_target", 0), info.get("deleted_source", 0)
        dropped = (f" Of them, {deleted_t + deleted_s} point to units deleted since the match "
                   f"({deleted_t} in {target.label} or a version it was copied from, {deleted_s} "
                   f"in {source.label} or a version it was copied from): dropped."
                   if deleted_t or deleted_s else "")
        out.append(f"{info['stale']} link(s) are stale ({info.get('stale_target', 0)} miss their "
                   f"unit in {target.label}, {info.get('stale_source', 0)} in {source.label}); "
                   f"their units count as unmatched.{dropped}")
    if info.get("ignored_second_links"):
        out.append(f"{info['ignored_second_links']} link(s) were not used: they pair a unit "
                   "already paired by another link (accepted links first, then by score); "
                   "their other unit is taken as the same place — neither updated nor added "
                   "(the second part of a split too). If one is a place of its own, reject "
                   "its link (georeg links REG --status accepted, and --status auto) and "
                   "merge again: it is then added.")
    if recognised:
        kinds = {k: sum(1 for r in recognised if r["by"] == k)
                 for k in ("earlier merge", "ref", "uuid")}
        how = ", ".join(f"{n} by {k}" for k, n in kinds.items() if n)
        out.append(f"{len(recognised)} source unit(s) without a link are already in "
                   f"{target.label} ({how}): merged as matched, not added again.")
    return out


def _deleted_warnings(deleted: list[dict[str, Any]], re_added: list[dict[str, Any]],
                      target: VersionRef) -> list[str]:
    """Units the officer deleted since a merge added them (or since they were matched):
    not added again — or, with ``re_add_deleted``, added again on purpose."""

    def names(items: list[dict[str, Any]]) -> str:
        shown = ", ".join(repr(d["name"]) for d in items[:5])
        return shown + (f" and {len(items) - 5} more" if len(items) > 5 else "")

    out = []
    by_merge = [d for d in deleted if d["by"] == "earlier merge"]
    by_link = [d for d in deleted if d["by"] == "link"]
    if by_merge:
        out.append(f"{len(by_merge)} unit(s) deleted here since an earlier merge added them: "
                   f"not added again ({names(by_merge)}).")
    if by_link:
        out.append(f"{len(by_link)} unit(s) deleted here since a match linked them to this "
                   f"list: not added again ({names(by_link)}).")
    if deleted:
        out[-1] += (f" They were deleted in {target.label} or a version it was copied from; to "
                    "bring them back, merge again with --re-add-deleted.")
    restored = [r for r in re_added if r.get("restored")]
    renewed = [r for r in re_added if not r.get("restored")]
    if restored:
        out.append(f"{len(restored)} unit(s) deleted here since an earlier merge added them or "
                   "a match linked them were restored, as asked (--re-add-deleted): same uuid, "
                   "as they were when deleted, then merged by the rules (the change log says "
                   f"'restore'): {names(restored)}.")
    if renewed:
        whys = sorted({str(r.get("why")) for r in renewed})
        out.append(f"{len(renewed)} unit(s) deleted here since could not be restored "
                   f"({'; '.join(whys)}) and were added again as new units (new uuids), as "
                   f"asked (--re-add-deleted): {names(renewed)}.")
    return out


def _ref_clash_message(clashes: list[dict[str, Any]], target: VersionRef,
                       source: VersionRef) -> str:
    shown = "; ".join(f"{c['name']!r} (ref {c['source_ref']!r}, used by {c['target_name']!r}, "
                      f"{c['why']})" for c in clashes[:5])
    more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
    return (
        f"{len(clashes)} unit(s) of {source.label} have no link but their ref is already used in "
        f"{target.label}: {shown}{more}. Adding them would duplicate a unit or drop their ref. "
        f"Run georeg match again: georeg match REG \"{target.source}:{target.number}\" "
        f"\"{source.source}:{source.number}\" (then review), and merge with that run; if "
        "they are different places that only share a ref, change the ref of one of them first.")


def _refuse_open_conflicts(conn: Connection, *used: VersionRef) -> None:
    """A version with open conflicts is not merged further: they would be lost on the way."""
    for version in used:
        count = conn.execute(
            text("SELECT count(*) FROM merge_conflict WHERE version_id = :v AND status = 'open'"),
            {"v": version.id},
        ).scalar_one()
        if count:
            raise InvalidInput(
                f"{version.label} still has {count} open merge conflict(s); resolve them first "
                f"(georeg conflicts list REG --version \"{version.source}:{version.number}\").")


def _check_descent(conn: Connection, base: VersionRef, other: VersionRef, label: str) -> None:
    if other.source_id != base.source_id:
        raise InvalidInput(f"{label} ({other.label}) is not a version of {base.source!r}: a 3-way "
                           "merge combines two drafts of the base's own source.")
    cur: int | None = other.id
    seen: set[int] = set()
    while cur is not None and cur not in seen:
        if cur == base.id:
            return
        seen.add(cur)
        cur = conn.execute(text("SELECT copied_from_id FROM source_version WHERE fid = :v"),
                           {"v": cur}).scalar()
    raise InvalidInput(
        f"{label} ({other.label}) does not descend from BASE ({base.label}): it was not made as a "
        "copy of it (or of a copy of it). Give the version both drafts were copied from.")


def store_conflicts(conn: Connection, run_id: int, version: VersionRef, conflicts: list[Conflict],
                    names: Names) -> list[dict[str, Any]]:
    out = []
    for c in conflicts:
        if c.kind in ("edit_delete", "duplicate_new"):
            values = [unit_to_json(v, names) if v is not None else None
                      for v in (c.base, c.ours, c.theirs)]
        else:
            name = "extra_fields" if (c.field or "").startswith("extra_fields.") else c.field
            if name == "extra_fields":
                values = [c.base, c.ours, c.theirs]
            else:
                values = [to_json(name or "", v, names) for v in (c.base, c.ours, c.theirs)]
        row = {"run": run_id, "v": version.id, "u": c.unit_uuid, "o": c.other_uuid,
               "kind": c.kind, "field": c.field, "b": _dumps(values[0]), "ou": _dumps(values[1]),
               "th": _dumps(values[2]), "msg": c.message}
        fid = conn.execute(
            text("INSERT INTO merge_conflict (merge_run_id, version_id, unit_uuid, other_uuid, "
                 f"kind, field, base_value, ours_value, theirs_value, message) VALUES (:run, :v, "
                 f":u, :o, :kind, :field, {jsonb(conn, 'b')}, {jsonb(conn, 'ou')}, "
                 f"{jsonb(conn, 'th')}, :msg) RETURNING fid"),
            row,
        ).scalar_one()
        unit_name = (c.base or c.ours or c.theirs).get("name") if c.kind in (
            "edit_delete", "duplicate_new") else conn.execute(
            text("SELECT name FROM org_unit WHERE version_id = :v AND uuid = :u"),
            {"v": version.id, "u": c.unit_uuid}).scalar()
        out.append({"id": int(fid), "version": version.label, "unit_uuid": c.unit_uuid,
                    "unit_name": unit_name,
                    "other_uuid": c.other_uuid, "kind": c.kind, "field": c.field,
                    "base": values[0], "ours": values[1], "theirs": values[2],
                    "message": c.message, "status": "open"})
    return out


def merge_by_rules(reg: Registry, target: VersionSpec, source: VersionSpec, **kw: Any
                   ) -> dict[str, Any]:
    """Run a :class:`RulesMergeJob` (keywords: ``rules``, ``links_run``, ``links``,
    ``re_add_deleted``, ``dry_run``, ``author``, ``description``)."""
    return RulesMergeJob(reg, target, source, **kw).run()


def resolved_conflict_count(conn: Connection, version: VersionRef) -> int:
    """Conflicts of VERSION (a 3-way merge's draft) already resolved by someone.

    Deleting the draft deletes them with it (``ON DELETE CASCADE``): the decisions made
    there are lost, which whoever deletes it should be told and confirm (``--force``).
    """
    return int(conn.execute(
        text("SELECT count(*) FROM merge_conflict WHERE version_id = :v AND status = 'resolved'"),
        {"v": version.id}).scalar_one())


def merge_three_way(reg: Registry, base: VersionSpec, ours: VersionSpec, theirs: VersionSpec,
                    **kw: Any) -> dict[str, Any]:
    return ThreeWayMergeJob(reg, base, ours, theirs, **kw).run()

