"""``georeg diff``: compare two versions (of one source or of two sources).

Versions are written ``SOURCE:NUMBER`` (source name or id); ``SOURCE`` alone is
the source's default version, else its newest — as ``--version`` defaults
everywhere else.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from georeg.cli import command, emit, main, open_registry, run_job
from storage.diff import (
    FIELD_ALIASES,
    FIELDS,
    STATUSES,
    DiffJob,
    UnitDiff,
    VersionDiff,
    parent_labels,
)

STATUS_STYLE = {"new": "green", "modified": "yellow", "moved": "blue", "closed": "bright_black",
                "deleted": "red", "unchanged": ""}


@command(main, "diff")
@click.argument("reg", metavar="REG")
@click.argument("left", metavar="S:A")
@click.argument("right", metavar="S:B")
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False),
              help="Write the diff to this file (format from --format or the extension).")
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "iaso-csv", "gpkg"]),
              default=None, help="File format for --out: json, csv, iaso-csv (Iaso's diff CSV "
              "columns) or gpkg (styled layers for QGIS).")
@click.option("--fields", "fields", multiple=True,
              help=f"Compare only these fields (repeat or comma-separate): {', '.join(FIELDS)}; "
              f"shorthands {', '.join(FIELD_ALIASES)}. Default: all.")
@click.option("--all", "include_unchanged", is_flag=True,
              help="List unchanged units too (they are always counted).")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Units listed in the text output (0 = all).")
def diff_cmd(reg: str, left: str, right: str, out: str | None, fmt: str | None,
             fields: tuple[str, ...], include_unchanged: bool, limit: int, as_json: bool) -> None:
    """Compare version S:A (before) with S:B (after): new, modified, moved, closed, deleted
    and unchanged units, field by field, with geometry changes in metres.

    S is a source name or id, A and B version numbers; S alone means the source's
    default version (else its newest). The two versions may belong to different
    sources: units are paired by uuid, then by source ref.
    """
    with open_registry(reg) as registry:
        job = DiffJob(registry, left, right, fields=list(fields) or None,
                      include_unchanged=include_unchanged)
        diff: VersionDiff = run_job(job, as_json)
    if out:
        from sync.diff_export import export_diff

        written = export_diff(diff, out, fmt)
        summary = {"file": written["file"], "format": written["format"],
                   "left": diff.left.label, "right": diff.right.label, "totals": diff.totals,
                   "written": {k: v for k, v in written.items() if k not in ("file", "format")}}
        emit(as_json, summary, lambda d: render_diff(diff, limit=0, summary_only=True)
             + f"\nWrote {d['format']} to {d['file']}.")
        return
    emit(as_json, diff.to_dict(), lambda _d: render_diff(diff, limit=limit))


# --- text -----------------------------------------------------------------------------------


def render_diff(diff: VersionDiff, *, limit: int = 50, summary_only: bool = False) -> str:
    """The diff for a terminal: totals per status, per level and type, then the units."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=sys.stdout.isatty(), width=120,
                      highlight=False)
    c = diff.counts
    console.print(f"[bold]{diff.left.label} → {diff.right.label}[/]: {c['left_units']} → "
                  f"{c['right_units']} units; {c['paired']} paired ({c['paired_by_uuid']} by uuid, "
                  f"{c['paired_by_source_ref']} by source ref) in {diff.seconds:.2f} s")
    totals = Table(show_edge=False, box=None, pad_edge=False)
    totals.add_column("status")
    totals.add_column("units", justify="right")
    for status in STATUSES:
        totals.add_row(f"[{STATUS_STYLE[status]}]{status}[/]" if STATUS_STYLE[status] else status,
                       str(diff.totals[status]))
    console.print(totals)
    if diff.by_level:
        console.print()
        levels = Table(show_edge=False, box=None, pad_edge=False)
        for col in ("level", "type", *STATUSES, "total"):
            levels.add_column(col, justify="left" if col == "type" else "right")
        for row in diff.by_level:
            levels.add_row("" if row["depth"] is None else str(row["depth"]), row["type"] or "",
                           *[str(row[s]) if row[s] else "·" for s in STATUSES],
                           str(row["total"]))
        console.print(levels)
    field_totals = diff.field_totals()
    if field_totals:
        console.print("\nChanged fields: " + ", ".join(f"{f} {n}" for f, n in
                                                          field_totals.items()))
    if summary_only:
        return _tidy(buf.getvalue())
    listed = diff.units if limit <= 0 else diff.units[:limit]
    if listed:
        console.print()
        units = Table(show_edge=False, box=None, pad_edge=False)
        for col in ("status", "unit", "ref", "type", "what changed"):
            units.add_column(col, overflow="fold")
        for u in listed:
            style = STATUS_STYLE[u.status]
            units.add_row(f"[{style}]{u.status}[/]" if style else u.status, u.name,
                          u.source_ref or "", u.type or "", describe(u))
        console.print(units)
        if len(diff.units) > len(listed):
            console.print(f"… and {len(diff.units) - len(listed)} more (use --limit 0, --json "
                          "or --out).")
    elif not any(diff.totals[s] for s in STATUSES if s != "unchanged"):
        console.print("\nNo difference.")
    return _tidy(buf.getvalue())


def _tidy(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip("\n").splitlines())


def describe(u: UnitDiff) -> str:
    """One readable line of what changed for a unit."""
    if u.status == "new":
        parent = (u.after or {}).get("parent_name")
        return f"new under {parent}" if parent else "new root"
    if u.status == "deleted":
        parent = (u.before or {}).get("parent_name")
        return f"was under {parent}" if parent else "was a root"
    parts = []
    for ch in u.changes:
        parts.append(_change_text(u, ch.field, ch.before, ch.after))
    return "; ".join(parts) or "—"


def _short(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return "∅"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _change_text(u: UnitDiff, field: str, before: Any, after: Any) -> str:
    if field == "parent":
        was, now = parent_labels(before, after)
        return f"parent {_short(was)} → {_short(now)}"
    if field == "location":
        if before and after and u.distance_m is not None:
            return f"point moved {_metres(u.distance_m)}"
        return "point added" if after else "point removed"
    if field == "territory":
        if before and after:
            change = u.area_change_m2 or 0.0
            sign = "+" if change >= 0 else "−"
            return (f"territory reshaped (area {sign}{abs(change) / 1e6:.3f} km², Hausdorff "
                    f"{_metres(u.hausdorff_m or 0.0)})")
        return "territory added" if after else "territory removed"
    return f"{field} {_short(before)} → {_short(after)}"


def _metres(value: float) -> str:
    return f"{value / 1000:.2f} km" if value >= 1000 else f"{value:.0f} m"


COMMANDS = [diff_cmd]
