"""``georeg changes …``: review the creations and corrections sent from the field.

``georeg changes REG`` lists them (``list`` is the default subcommand); ``show``,
``approve`` (all requested fields, or ``--fields name,location``) and ``reject``
(``--comment`` required) act on one request, by number or uuid.
"""

from __future__ import annotations

import getpass
from typing import Any

import click

from georeg.cli import command, emit, open_registry
from storage import change_requests as cr

REG = click.argument("reg", metavar="REG")
IDENT = click.argument("ident", metavar="ID")
REVIEWER = click.option(
    "--by", "reviewer", default=None,
    help="Reviewer's name recorded in the change log (default: your login name).",
)


class _ListByDefault(click.Group):
    """``georeg changes REG …`` means ``georeg changes list REG …``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group(
    "changes", cls=_ListByDefault,
    help="Change requests from the field (Iaso app): list, show, approve, reject.\n\n"
    "'georeg changes REG' lists them; approving applies the approved fields to the "
    "draft version, with the reviewer as author in the change log.",
)
def changes_group() -> None:
    pass


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "(none)"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _list_text(data: dict[str, Any]) -> str:
    rows = data["results"]
    if not rows:
        return "No change requests."
    lines = [f"{data['count']} change request(s):"]
    for r in rows:
        lines.append(
            f"  #{r['id']:<5} {r['status']:<9} {r['kind']:<9} {r['version']:<10} "
            f"{(r['unit_name'] or '')[:30]:<30} {', '.join(r['requested_fields'])}"
            f"  by {r['created_by'] or '?'} {str(r['created_at'])[:16]}"
        )
    return "\n".join(lines)


def _show_text(r: dict[str, Any]) -> str:
    lines = [
        f"Change request #{r['id']} ({r['uuid']}): {r['kind']} of "
        f"{r['unit_name'] or r['unit_uuid']!r} in {r['version']}, {r['status']}",
        f"  sent by {r['created_by'] or '?'} at {r['created_at']}"
        + (f" from {r['device']}" if r.get("device") else ""),
    ]
    if r.get("reviewed_by"):
        lines.append(f"  reviewed by {r['reviewed_by']} at {r['reviewed_at']}"
                     + (f": {r['rejection_comment']}" if r.get("rejection_comment") else ""))
    lines.append(f"  {'field':<14} {'old':<30} {'new':<30} approved")
    for field in r["requested_fields"]:
        new = r["new"].get(field)
        if field == "parent" and r.get("new_parent_name"):
            new = f"{r['new_parent_name']} ({new})"
        lines.append(
            f"  {field:<14} {_value(r['old'].get(field)):<30} {_value(new):<30} "
            f"{'yes' if field in r['approved_fields'] else ''}"
        )
    if r.get("version_deleted") and r["status"] == "new":
        lines.append(f"  note: its version was deleted; it can only be rejected "
                     f"(georeg changes reject REG {r['id']} --comment WHY)")
    current = r.get("current")
    if current and r["status"] == "new":
        moved = [f for f in r["requested_fields"]
                 if r["old"] and current.get(f) != r["old"].get(f)]
        if moved:
            lines.append(f"  note: {', '.join(moved)} changed in {current['version']} since "
                         "the request was sent")
    return "\n".join(lines)


@command(changes_group, "list")
@REG
@click.option("--status", type=click.Choice(cr.STATUSES), default=None, help="Only this status.")
@click.option("--kind", type=click.Choice(cr.KINDS), default=None, help="Only creations or changes.")
@click.option("--source", "-s", default=None, help="Only requests on this data source.")
@click.option("--by", "created_by", default=None, help="Only requests sent by this user.")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many.")
def list_cmd(reg: str, status: str | None, kind: str | None, source: str | None,
             created_by: str | None, limit: int, as_json: bool) -> None:
    """List change requests, newest first."""
    with open_registry(reg) as registry:
        data = cr.list_change_requests(registry, status=status, kind=kind, source=source,
                                       created_by=created_by, limit=limit)
    emit(as_json, data, _list_text)


@command(changes_group, "show")
@REG
@IDENT
def show_cmd(reg: str, ident: str, as_json: bool) -> None:
    """Show one request: each requested field with its old and new value."""
    with open_registry(reg) as registry:
        data = cr.get_change_request(registry, ident)
    emit(as_json, data, _show_text)


@command(changes_group, "approve")
@REG
@IDENT
@click.option("--fields", default=None,
              help="Comma-separated fields to approve (default: every requested field), "
                   "e.g. name,location.")
@REVIEWER
def approve_cmd(reg: str, ident: str, fields: str | None, reviewer: str | None,
                as_json: bool) -> None:
    """Approve a request (all or some fields) and apply it to the draft version."""
    chosen = [f for f in fields.split(",")] if fields is not None else None
    with open_registry(reg) as registry:
        data = cr.approve_change_request(registry, ident, reviewer=reviewer or _me(),
                                         fields=chosen)
    emit(as_json, data, lambda d: (
        f"Approved #{d['id']} ({', '.join(d['approved_fields'])}) and applied it to "
        f"{d['applied_to']}."))


@command(changes_group, "reject")
@REG
@IDENT
@click.option("--comment", required=True, help="Why (shown to the collector on the phone).")
@REVIEWER
def reject_cmd(reg: str, ident: str, comment: str, reviewer: str | None, as_json: bool) -> None:
    """Reject a request, saying why. The registry is not changed."""
    with open_registry(reg) as registry:
        data = cr.reject_change_request(registry, ident, reviewer=reviewer or _me(),
                                        comment=comment)
    emit(as_json, data, lambda d: f"Rejected #{d['id']}: {d['rejection_comment']}")


def _me() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name: record a neutral reviewer
        return "reviewer"


COMMANDS = [changes_group]
