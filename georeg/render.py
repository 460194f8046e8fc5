"""Text rendering of the core's plain data for the terminal (``--json`` skips this)."""

from __future__ import annotations

import json
from typing import Any


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def sources(data: list[dict[str, Any]]) -> str:
    if not data:
        return "No data source yet. Import one with 'georeg import' or try 'georeg demo'."
    return _table(
        ["source", "versions", "default", "latest"],
        [[s["name"], s["versions"], s["default_version"], s["latest_version"]] for s in data],
    )


def versions(data: list[dict[str, Any]]) -> str:
    if not data:
        return "This source has no version yet."
    return _table(
        ["version", "status", "default", "units", "created", "by", "description"],
        [
            [v["number"], v["status"], "yes" if v["default"] else "", v["units"],
             (v["created_at"] or "")[:19], v["created_by"], v["description"]]
            for v in data
        ],
    )


def version_created(d: dict[str, Any]) -> str:
    base = f" as a copy of version {d['copied_from']}" if d.get("copied_from") else ""
    return f"Created draft {d['label']}{base} ({d.get('units', 0)} units)."


def import_result(d: dict[str, Any]) -> str:
    v = d["version"]
    verb = "Would import" if d.get("dry_run") else "Imported"
    lines = [
        f"{verb} into {v['label']} ({v['status']}): {d['created']} created, "
        f"{d['updated']} updated, {d['unchanged']} unchanged, {d['rejected']} rejected."
    ]
    loaded = d.get("loaded") or {}
    if loaded:
        lines.append(
            f"  {loaded['locations']} points, {loaded['territories']} territories, "
            f"{loaded['groups']} groups, {loaded['memberships']} group memberships, "
            f"{loaded['types']} new types."
        )
    for row in d.get("rows", [])[:50]:
        detail = row.get("message") or ", ".join(
            f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in (row.get("changes") or {}).items()
        )
        lines.append(f"  {row['status']:>8} {row['name']!s} [{row['ref']}] {detail}")
    if len(d.get("rows", [])) > 50:
        lines.append(f"  … {len(d['rows']) - 50} more rows (use --json or --report).")
    lines += [f"warning: {w}" for w in d.get("warnings", [])[:50]]
    if len(d.get("warnings", [])) > 50:
        lines.append(f"… {len(d['warnings']) - 50} more warnings (use --json or --report).")
    if d.get("dry_run"):
        lines.append("Dry run: nothing was written.")
    if d.get("registry"):
        lines.append(f"Registry: {d['registry']}")
    return "\n".join(lines)


def export_result(d: dict[str, Any]) -> str:
    lines = [f"Exported {d['units']} units of {d['version']} to {d['file']} ({d['format']})."]
    lines += [f"warning: {w}" for w in d.get("warnings", [])]
    return "\n".join(lines)


def tree(d: dict[str, Any]) -> str:
    v = d["version"]
    out = [f"{v['label']} ({v['status']}): {d['total_units']} units"]
    for node in d["nodes"]:
        indent = "  " * (node["level"] - d["nodes"][0]["level"]) if d["nodes"] else ""
        below = f"  [{node['units_below']} below]" if node["units_below"] else ""
        kind = f" ({node['type']})" if node.get("type") else ""
        out.append(f"{indent}{node['name']}{kind}{below}")
    counts = d.get("counts")
    if counts:
        out.append("")
        out.append(
            _table(
                ["level", "units", "points", "territories"],
                [[lv["level"], lv["units"], lv["points"], lv["territories"]]
                 for lv in counts["levels"]],
            )
        )
        out.append("")
        out.append(_table(["type", "units"], [[t["type"], t["units"]] for t in counts["types"]]))
    return "\n".join(out)


def unit(d: dict[str, Any]) -> str:
    fields = [
        ("name", d["name"]), ("uuid", d["uuid"]), ("ref", d["source_ref"]), ("code", d["code"]),
        ("type", d["type"]), ("level", d["depth"]),
        ("parent", f"{d['parent_name']} ({d['parent_ref'] or d['parent_uuid']})"
         if d["parent_uuid"] else "(root)"),
        ("status", d["validation_status"]), ("opened", d["opening_date"]),
        ("closed", d["closed_date"]),
        ("location", "" if d["location"] is None else f"{d['location'][0]}, {d['location'][1]}"),
        ("territory", "yes" if d.get("has_territory") else "no"),
        ("groups", ", ".join(d.get("groups", []))),
        ("aliases", ", ".join(d.get("aliases") or [])),
    ]
    return "\n".join(f"{k:>10}: {'' if v is None else v}" for k, v in fields)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def history(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No changes recorded."
    out = []
    for r in rows:
        who = f"{r['author'] or 'unknown'} via {r['origin']}"
        where = f"{r['source']} v{r['version']}" if r["source"] else "(deleted version)"
        title = r["name"] or r["unit_uuid"] or ""
        out.append(f"#{r['id']} {r['at']} {r['op']} {r['entity']} {title!s} [{where}] by {who}")
        for key, change in (r["changes"] or {}).items():
            if isinstance(change, list) and len(change) == 2:
                out.append(f"    {key}: {_short(change[0])} -> {_short(change[1])}")
            else:
                out.append(f"    {key}: {_short(change)}")
    return "\n".join(out)


def check_report(d: dict[str, Any]) -> str:
    v = d["version"]
    errors = sum(1 for f in d["findings"] if f["severity"] == "error")
    warnings = len(d["findings"]) - errors
    out = [f"Checks of {v['label']}: {errors} errors, {warnings} warnings"]
    out.append(_table(["check", "findings"], [[k, n] for k, n in d["summary"].items()]))
    for f in d["findings"][:200]:
        out.append(f"{f['severity']:>7} {f['check']}: {f['message']}")
    if len(d["findings"]) > 200:
        out.append(f"... and {len(d['findings']) - 200} more (use --json or --out for all).")
    return "\n".join(out)
