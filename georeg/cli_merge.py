"""``georeg merge``, ``georeg merge3`` and ``georeg conflicts …``: merging and its conflicts.

Two commands rather than one with modes, because they take different inputs: a
rules merge combines two *sources* through links and rules; a 3-way merge
combines two *drafts of one source* through their common base.  Both write a new
draft and print the report (counts, conflicts, integrity-check findings).
"""

from __future__ import annotations

import json
from typing import Any

import click

from georeg.cli import ORIGIN, command, emit, main, open_registry, run_job
from storage.merging import (
    TAKES,
    Rules,
    RulesMergeJob,
    ThreeWayMergeJob,
    get_conflict,
    list_conflicts,
    resolve_conflict,
)
from storage.merging.conflicts import BULK_TAKES, BulkResolveJob, conflict_summary, unit_label
from storage.merging.three_way import CONFLICT_KINDS, DUPLICATE_DISTANCE_M
from storage.versions import VersionRef

REG = click.argument("reg", metavar="REG")
DRY_RUN = click.option("--dry-run", is_flag=True,
                       help="Do the whole merge and the checks, print the report, write nothing.")
DESCRIPTION = click.option("--description", default=None, help="Description of the new draft.")
AUTHOR = click.option("--author", default=None, help="Who merges (default: the login name).")
MAX_FINDINGS = 15


#: conflicts a text listing shows at once (``--limit``); a big merge may have thousands
LIST_LIMIT = 50


def geometry_summary(value: Any) -> str:
    """A territory as one line (type, vertex count, bounding box): a whole polygon in a
    terminal is thousands of numbers nobody reads (``conflicts show --full`` prints it)."""
    import shapely

    try:
        geom = shapely.from_wkt(value) if isinstance(value, str) else shapely.geometry.shape(value)
    except Exception:  # noqa: BLE001 - not a geometry after all: shown as it is
        return str(value)
    if geom.is_empty:
        return f"{geom.geom_type} (empty)"
    x0, y0, x1, y1 = geom.bounds
    return (f"{geom.geom_type}, {shapely.get_num_coordinates(geom)} vertices, "
            f"bbox {x0:.4f},{y0:.4f} … {x1:.4f},{y1:.4f}")


def _field_text(c: dict[str, Any], side: str, name: str | None, value: Any,
                full: bool = False) -> str:
    """One field's value as a person reads it: a parent by name, a territory summarised."""
    if value is None:
        return "—"
    if name == "parent":
        if "parents" not in c:  # a dry run's conflicts: stored nowhere, named nowhere
            return f"unit {str(value)[:13]}…"
        return unit_label(c["parents"].get(side), value)
    if name == "territory" and not full:
        return geometry_summary(value)
    return json.dumps(value, ensure_ascii=False)


def _short(value: Any, width: int = 40) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict) and "name" in value:
        text = f"unit {value['name']!r}"
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _side(conflict: dict[str, Any], side: str, width: int = 40) -> str:
    value = conflict[side]
    if conflict["kind"] == "edit_delete" and side != "base":
        return "deleted" if value is None else "kept (edited)"
    if value is not None and conflict["field"] in ("parent", "territory"):
        return _short(_field_text(conflict, side, conflict["field"], value), width)
    return _short(value, width)


def _conflict_rows(conflicts: list[dict[str, Any]]) -> str:
    from georeg.render import _table

    return _table(
        ["id", "status", "kind", "unit", "field", "base", "ours", "theirs"],
        [[c["id"], c["status"], c["kind"], c.get("unit_name") or c["unit_uuid"][:13],
          c["field"] or "", _side(c, "base", 20), _side(c, "ours"), _side(c, "theirs")]
         for c in conflicts],
    )


def render_report(d: dict[str, Any]) -> str:
    c = d["counts"]
    verb = "Would make" if d["dry_run"] else "Made"
    if d["mode"] == "rules":
        head = (f"{verb} draft {d['version']['label']}: {d['source']['label']} merged into "
                f"{d['target']['label']} with {d['links']['used']} link(s)"
                + (f" of match run {d['links']['run_id']}" if d["links"].get("run_id") else "")
                + ".")
        recognised = (f", {c['recognised']} already in the target (not added again)"
                      if c.get("recognised") else "")
        deleted_here = (f", {c['deleted_here']} deleted here since (not added again)"
                        if c.get("deleted_here") else "")
        restored = f" ({c['restored']} restored)" if c.get("restored") else ""
        detail = (f"  {c['matched']} matched{recognised}, {c['added']} added{restored}"
                  f"{deleted_here}, "
                  f"{c['updated']} updated, "
                  f"{c['moved']} moved, {c['deleted']} deleted; {c['unmatched_target']} target "
                  "unit(s) without a link.")
    else:
        head = (f"{verb} draft {d['version']['label']}: {d['ours']['label']} and "
                f"{d['theirs']['label']} merged over {d['base']['label']}.")
        detail = (f"  {c['added']} added, {c['updated']} updated, {c['moved']} moved, "
                  f"{c['deleted']} deleted; {c['conflicts']} conflict(s).")
    lines = [head, detail]
    if d["dry_run"]:
        lines.append("  Dry run: nothing was written.")
    lines += [f"  warning: {w}" for w in d.get("warnings", [])]
    if d.get("conflicts"):
        shown = d["conflicts"][:LIST_LIMIT]
        spec = f"\"{d['version']['source']}:{d['version']['number']}\""
        lines += ["", f"{len(d['conflicts'])} conflict(s), open until resolved (the version "
                  "cannot be published before):", _conflict_rows(shown)]
        if len(d["conflicts"]) > len(shown):
            lines.append(f"{len(d['conflicts']) - len(shown)} more: georeg conflicts list REG "
                         f"--version {spec} --offset {len(shown)}")
        lines.append("Resolve with: georeg conflicts resolve REG ID --take ours|theirs|base "
                     f"(all at once: --version {spec} --all --take …)")
    checks = d["checks"]
    lines += ["", f"Checks: {'ok' if checks['ok'] else 'ERRORS'} ({checks['counts']['error']} "
              f"error(s), {checks['counts']['warning']} warning(s))."]
    for f in checks["findings"][:MAX_FINDINGS]:
        lines.append(f"  {f['severity']}: {f['check']}: {f['message']}")
    if len(checks["findings"]) > MAX_FINDINGS:
        more = len(checks["findings"]) - MAX_FINDINGS
        if d["dry_run"]:  # the draft was not made: nothing for `check` to read
            lines.append(f"  … {more} more (all of them with --json).")
        else:
            lines.append(f"  … {more} more (georeg check REG -s \"{d['version']['source']}\" "
                         f"-v {d['version']['number']}).")
    return "\n".join(lines)


@command(main, "merge")
@REG
@click.option("--target", required=True, metavar="S:N",
              help="The version to merge into (its source gets the new draft).")
@click.option("--from", "source", required=True, metavar="S2:M",
              help="The version whose values the rules may take.")
@click.option("--links", "links_run", type=int, default=None, metavar="RUN_ID",
              help="Match run whose accepted/auto links to use (default: the newest run "
              "between the two sources).")
@click.option("--rules", "rules_file", default=None, type=click.Path(dir_okay=False),
              help="rules.toml: where each field comes from, what happens to unmatched units "
              "(default: everything from the target, unmatched source units added as new).")
@click.option("--re-add-deleted", is_flag=True,
              help="Bring back the source units whose unit in TARGET was deleted since an "
              "earlier merge added it (or a match linked it): that unit is restored (same "
              "uuid, as it was when deleted, then merged by the rules); one the change log "
              "cannot restore is added as new, and the report says which. Without it they "
              "stay deleted and the report lists them.")
@DRY_RUN
@DESCRIPTION
@AUTHOR
def merge_cmd(reg: str, target: str, source: str, links_run: int | None, rules_file: str | None,
              re_add_deleted: bool, dry_run: bool, description: str | None, author: str | None,
              as_json: bool) -> None:
    """Merge a version of another source into TARGET by links and rules (a new draft)."""
    rules = Rules.from_file(rules_file) if rules_file else Rules()
    with open_registry(reg) as registry:
        job = RulesMergeJob(registry, target, source, rules=rules, links_run=links_run,
                            re_add_deleted=re_add_deleted, dry_run=dry_run,
                            description=description, author=author, origin=ORIGIN)
        emit(as_json, run_job(job, as_json), render_report)


@command(main, "merge3")
@REG
@click.option("--base", required=True, metavar="S:N", help="The version both drafts came from.")
@click.option("--ours", required=True, metavar="S:A", help="One draft (e.g. the GIS officer's).")
@click.option("--theirs", required=True, metavar="S:B",
              help="The other draft (e.g. the field team's accepted change requests).")
@click.option("--duplicate-distance", type=float, default=DUPLICATE_DISTANCE_M,
              show_default=True,
              help="Two new units with the same name under the same parent closer than this "
              "(metres) are reported as probably the same place.")
@DRY_RUN
@DESCRIPTION
@AUTHOR
def merge3_cmd(reg: str, base: str, ours: str, theirs: str, duplicate_distance: float,
               dry_run: bool, description: str | None, author: str | None,
               as_json: bool) -> None:
    """3-way merge of two drafts of one source into a new draft; overlaps become conflicts."""
    with open_registry(reg) as registry:
        job = ThreeWayMergeJob(registry, base, ours, theirs,
                               duplicate_distance_m=duplicate_distance, dry_run=dry_run,
                               description=description, author=author, origin=ORIGIN)
        report = run_job(job, as_json)
        if not as_json and report["conflicts"] and not dry_run:
            # the report's first page as 'conflicts list' shows it (parents by name)
            v = report["version"]
            named = list_conflicts(registry, VersionRef(v["id"], v["source_id"], v["source"],
                                                        v["number"], v["status"]),
                                   limit=LIST_LIMIT)
            report = report | {"conflicts": named + report["conflicts"][len(named):]}
        emit(as_json, report, render_report)


@click.group("conflicts", help="List and resolve merge conflicts (a version with open "
             "conflicts cannot be published).")
def conflicts_group() -> None:
    pass


@command(conflicts_group, "list")
@REG
@click.option("--version", "version", default=None, metavar="S:N",
              help="Only the conflicts of this merged version.")
@click.option("--status", type=click.Choice(["open", "resolved", "all"]), default="all",
              show_default=True)
@click.option("--kind", type=click.Choice(CONFLICT_KINDS), default=None,
              help="Only the conflicts of this kind.")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help=f"Show at most N conflicts (default {LIST_LIMIT}; with --json: all of them "
              "unless --limit is given).")
@click.option("--offset", type=click.IntRange(min=0), default=0, metavar="N",
              help="Skip the first N conflicts (page on with --offset/--limit).")
def conflicts_list_cmd(reg: str, version: str | None, status: str, kind: str | None,
                       limit: int | None, offset: int, as_json: bool) -> None:
    """List merge conflicts: counts by kind and status, then a page of them, oldest first."""
    wanted = None if status == "all" else status
    with open_registry(reg) as registry:
        if as_json:  # scripts get a plain list, every conflict unless --limit says otherwise
            emit(True, list_conflicts(registry, version, status=wanted, kind=kind, limit=limit,
                                      offset=offset))
            return
        summary = conflict_summary(registry, version, status=wanted, kind=kind)
        page = list_conflicts(registry, version, status=wanted, kind=kind,
                              limit=limit or LIST_LIMIT, offset=offset) if summary["total"] else []
    click.echo(_list_text(summary, page, offset, version))


def _list_text(summary: dict[str, Any], page: list[dict[str, Any]], offset: int,
               version: str | None) -> str:
    total = summary["total"]
    if not total:
        return "No merge conflicts."
    where = f" in {version}" if version else ""
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary["by_status"].items()))
    kinds = ", ".join(f"{k} {sum(n.values())}" for k, n in sorted(summary["by_kind"].items()))
    lines = [f"{total} conflict(s){where}: {statuses}; by kind: {kinds}."]
    if not page:
        lines.append(f"None from offset {offset} (there are {total}).")
        return "\n".join(lines)
    if offset or len(page) < total:
        lines.append(f"Showing {offset + 1}–{offset + len(page)}:")
    lines.append(_conflict_rows(page))
    rest = total - offset - len(page)
    if rest > 0:
        lines.append(f"{rest} more: use --offset {offset + len(page)} / --limit N, or --json "
                     "for all of them.")
    return "\n".join(lines)


def _show_side(c: dict[str, Any], side: str, full: bool) -> list[str]:
    value = c[side]
    if c["kind"] not in ("edit_delete", "duplicate_new"):
        return [f"  {side}: {_field_text(c, side, c['field'], value, full)}"]
    if value is None:
        what = "deleted" if c["kind"] == "edit_delete" and side != "base" else "—"
        return [f"  {side}: {what}"]
    lines = [f"  {side}: unit {json.dumps(value.get('name'), ensure_ascii=False)}"]
    for name, v in value.items():
        if name not in ("uuid", "name") and v not in (None, [], {}):
            lines.append(f"    {name}: {_field_text(c, side, name, v, full)}")
    return lines


@command(conflicts_group, "show")
@REG
@click.argument("conflict_id", type=int, metavar="ID")
@click.option("--full", is_flag=True,
              help="Print territories whole (default: type, vertex count and bounding box).")
def conflicts_show_cmd(reg: str, conflict_id: int, full: bool, as_json: bool) -> None:
    """Show one conflict with its base, ours and theirs values (parents by name)."""

    def text(c: dict[str, Any]) -> str:
        about = f", {c['kind']}" + (f" {c['field']!r}" if c["field"] else "")
        lines = [f"Conflict {c['id']} ({c['status']}{about}) in {c['version']['label']}: "
                 f"{c['message']}"]
        for side in ("base", "ours", "theirs"):
            lines += _show_side(c, side, full)
        if c["status"] == "resolved":
            lines.append(f"  resolved: took {c['resolution']} "
                         f"({json.dumps(c['resolved_value'], ensure_ascii=False)}) by "
                         f"{c['resolver']} at {c['resolved_at']}")
        return "\n".join(lines)

    with open_registry(reg) as registry:
        emit(as_json, get_conflict(registry, conflict_id), text)


def _applied_text(c: dict[str, Any]) -> str:
    """What a resolution did beyond setting a value: units deleted, kept, moved back."""
    applied = c.get("applied")
    if not isinstance(applied, dict) or "deleted" not in applied:
        return ""
    other = "theirs" if c["resolution"] == "ours" else "ours"
    added = applied.get("deleted_added")
    text = f"\nDeleted {applied['deleted']} unit(s)" + (
        f" ({added} that {other} had added there)" if added else "") + "."
    back = applied.get("moved_back") or []
    if back:
        names = ", ".join(f"{m['name']} (under {m.get('parent_name') or 'the root'})"
                          for m in back[:10]) + (f" and {len(back) - 10} more" if len(back) > 10
                                                 else "")
        text += (f"\nKept {len(back)} unit(s) {other} had moved in from elsewhere (nobody deleted "
                 f"them), back where {c['resolution']} has them: {names}.")
    return text


def _bulk_text(d: dict[str, Any]) -> str:
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(d["resolved_by_kind"].items()))
    lines = [f"Resolved {d['resolved']} conflict(s) in {d['version']['label']} with --take "
             f"{d['take']}" + (f" ({kinds})." if kinds else ".")]
    if d["also_closed"]:
        shown = ", ".join(str(i) for i in d["also_closed"][:20])
        more = f" and {len(d['also_closed']) - 20} more" if len(d["also_closed"]) > 20 else ""
        lines.append(f"Also closed {len(d['also_closed'])} (their units are gone): {shown}{more}.")
    if d["skipped"]:
        lines.append(f"Skipped {len(d['skipped'])}:")
        groups: dict[tuple[str, str], list[int]] = {}
        for s in d["skipped"]:
            groups.setdefault((s["kind"], s["reason"]), []).append(s["id"])
        for i, ((kind, reason), ids) in enumerate(groups.items()):
            if i == 10:
                lines.append(f"  … {len(groups) - 10} more reason(s) (--json lists them all)")
                break
            shown = ", ".join(str(x) for x in ids[:10]) + (" …" if len(ids) > 10 else "")
            lines.append(f"  {len(ids)} {kind} ({shown}): {reason}")
    spec = f"\"{d['version']['source']}:{d['version']['number']}\""
    lines.append(f"Still open: {d['open']}" + (
        f" (georeg conflicts list REG --version {spec} --status open)." if d["open"] else "."))
    return "\n".join(lines)


@command(conflicts_group, "resolve")
@REG
@click.argument("conflict_id", type=int, metavar="[ID]", required=False)
@click.option("--take", required=True, type=click.Choice(TAKES),
              help="ours / theirs / base: that side's value; value: the --value given; both: "
              "keep both units of a duplicate_new conflict.")
@click.option("--value", default=None,
              help="The value to set with --take value (text, date, 'lon,lat', WKT, JSON, "
              "parent uuid or ref …).")
@click.option("--all", "all_open", is_flag=True,
              help="Instead of one ID: every open conflict of --version (with --kind: of that "
              "kind), in one transaction. Conflicts the take does not fit are skipped, with "
              "the reason; duplicate_new ones only with --kind duplicate_new.")
@click.option("--version", "version", default=None, metavar="S:N",
              help="With --all: the merged draft whose conflicts to resolve.")
@click.option("--kind", type=click.Choice(CONFLICT_KINDS), default=None,
              help="With --all: only the conflicts of this kind.")
@AUTHOR
def conflicts_resolve_cmd(reg: str, conflict_id: int | None, take: str, value: str | None,
                          all_open: bool, version: str | None, kind: str | None,
                          author: str | None, as_json: bool) -> None:
    """Resolve a conflict (or --all of a version's) in the merged draft, audited."""
    if all_open:
        if conflict_id is not None:
            raise click.UsageError("Give a conflict ID or --all, not both.")
        if version is None:
            raise click.UsageError("--all needs --version S:N (the merged draft).")
        if take not in BULK_TAKES:
            raise click.UsageError("--take value needs a value per conflict: resolve those one "
                                   "at a time (georeg conflicts resolve REG ID --take value "
                                   "--value …).")
        with open_registry(reg) as registry:
            job = BulkResolveJob(registry, version, take, kind=kind, resolver=author,
                                 origin=ORIGIN)
            emit(as_json, run_job(job, as_json), _bulk_text)
        return
    if conflict_id is None:
        raise click.UsageError("Give the conflict's ID (georeg conflicts list REG), or "
                               "--version S:N --all to resolve all of a version's.")
    if version is not None or kind is not None:
        raise click.UsageError("--version and --kind go with --all (one ID needs neither).")
    with open_registry(reg) as registry:
        data = resolve_conflict(registry, conflict_id, take, value, resolver=author,
                                origin=ORIGIN)

    def text(c: dict[str, Any]) -> str:
        line = (f"Conflict {c['id']} resolved in {c['version']['label']}: took {c['resolution']} "
                f"for {c['unit_name'] or c['unit_uuid']}" + (f" ({c['field']})." if c["field"]
                                                            else "."))
        line += _applied_text(c)
        if c.get("also_closed"):
            line += (f"\nAlso closed (their units are gone): "
                     f"{', '.join(str(i) for i in c['also_closed'])}.")
        return line

    emit(as_json, data, text)


COMMANDS = [merge_cmd, merge3_cmd, conflicts_group]
