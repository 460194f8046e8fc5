"""``georeg merge``, ``georeg merge3`` and ``georeg conflicts …``: merging and its conflicts.

Two commands rather than one with modes, because they take different inputs: a
rules merge combines two *sources* through links and rules; a 3-way merge
combines two *drafts of one source* through their common base.  Both write a new
draft and print the report (counts, conflicts, integrity-check findings).
"""

from __future__ import annotations

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
from storage.merging.three_way import DUPLICATE_DISTANCE_M

REG = click.argument("reg", metavar="REG")
DRY_RUN = click.option("--dry-run", is_flag=True,
                       help="Do the whole merge and the checks, print the report, write nothing.")
DESCRIPTION = click.option("--description", default=None, help="Description of the new draft.")
AUTHOR = click.option("--author", default=None, help="Who merges (default: the login name).")
MAX_FINDINGS = 15


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
        detail = (f"  {c['matched']} matched{recognised}, {c['added']} added, "
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
        lines += ["", f"{len(d['conflicts'])} conflict(s), open until resolved (the version "
                  "cannot be published before):", _conflict_rows(d["conflicts"]),
                  "Resolve with: georeg conflicts resolve REG ID --take ours|theirs|base"]
    checks = d["checks"]
    lines += ["", f"Checks: {'ok' if checks['ok'] else 'ERRORS'} ({checks['counts']['error']} "
              f"error(s), {checks['counts']['warning']} warning(s))."]
    for f in checks["findings"][:MAX_FINDINGS]:
        lines.append(f"  {f['severity']}: {f['check']}: {f['message']}")
    if len(checks["findings"]) > MAX_FINDINGS:
        lines.append(f"  … {len(checks['findings']) - MAX_FINDINGS} more "
                     f"(georeg check REG -s \"{d['version']['source']}\" -v "
                     f"{d['version']['number']}).")
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
@DRY_RUN
@DESCRIPTION
@AUTHOR
def merge_cmd(reg: str, target: str, source: str, links_run: int | None, rules_file: str | None,
              dry_run: bool, description: str | None, author: str | None, as_json: bool) -> None:
    """Merge a version of another source into TARGET by links and rules (a new draft)."""
    rules = Rules.from_file(rules_file) if rules_file else Rules()
    with open_registry(reg) as registry:
        job = RulesMergeJob(registry, target, source, rules=rules, links_run=links_run,
                            dry_run=dry_run, description=description, author=author,
                            origin=ORIGIN)
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
        emit(as_json, run_job(job, as_json), render_report)


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
def conflicts_list_cmd(reg: str, version: str | None, status: str, as_json: bool) -> None:
    """List merge conflicts."""
    with open_registry(reg) as registry:
        data = list_conflicts(registry, version, status=None if status == "all" else status)
    emit(as_json, data, lambda d: _conflict_rows(d) if d else "No merge conflicts.")


@command(conflicts_group, "show")
@REG
@click.argument("conflict_id", type=int, metavar="ID")
def conflicts_show_cmd(reg: str, conflict_id: int, as_json: bool) -> None:
    """Show one conflict with its base, ours and theirs values."""
    import json

    def text(c: dict[str, Any]) -> str:
        lines = [f"Conflict {c['id']} ({c['status']}) in {c['version']['label']}: {c['message']}"]
        for side in ("base", "ours", "theirs"):
            lines.append(f"  {side}: {json.dumps(c[side], ensure_ascii=False)}")
        if c["status"] == "resolved":
            lines.append(f"  resolved: took {c['resolution']} "
                         f"({json.dumps(c['resolved_value'], ensure_ascii=False)}) by "
                         f"{c['resolver']} at {c['resolved_at']}")
        return "\n".join(lines)

    with open_registry(reg) as registry:
        emit(as_json, get_conflict(registry, conflict_id), text)


@command(conflicts_group, "resolve")
@REG
@click.argument("conflict_id", type=int, metavar="ID")
@click.option("--take", required=True, type=click.Choice(TAKES),
              help="ours / theirs / base: that side's value; value: the --value given; both: "
              "keep both units of a duplicate_new conflict.")
@click.option("--value", default=None,
              help="The value to set with --take value (text, date, 'lon,lat', WKT, JSON, "
              "parent uuid or ref …).")
@AUTHOR
def conflicts_resolve_cmd(reg: str, conflict_id: int, take: str, value: str | None,
                          author: str | None, as_json: bool) -> None:
    """Resolve a conflict: apply the chosen value to the merged draft (audited)."""
    with open_registry(reg) as registry:
        data = resolve_conflict(registry, conflict_id, take, value, resolver=author,
                                origin=ORIGIN)
    def text(c: dict[str, Any]) -> str:
        line = (f"Conflict {c['id']} resolved in {c['version']['label']}: took {c['resolution']} "
                f"for {c['unit_name'] or c['unit_uuid']}" + (f" ({c['field']})." if c["field"]
                                                            else "."))
        if c.get("also_closed"):
            line += (f"\nAlso closed (their units are gone): "
                     f"{', '.join(str(i) for i in c['also_closed'])}.")
        return line

    emit(as_json, data, text)


COMMANDS = [merge_cmd, merge3_cmd, conflicts_group]
