"""``georeg dhis2 …``: pull org units from DHIS2, push a version back, check a connection.

Credentials are never command-line arguments (they would show in ``ps`` and in
shell history) and never stored in the registry: the password or token is read
from standard input (``--password-stdin``, ``--token-stdin``; prompted, hidden,
on a terminal) or from the environment (``GEOREG_DHIS2_TOKEN``, or
``GEOREG_DHIS2_PASSWORD`` with ``--user``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from georeg.cli import command, emit, open_registry, run_job
from storage.errors import GeoregError, InvalidInput

TOKEN_ENV = "GEOREG_DHIS2_TOKEN"
PASSWORD_ENV = "GEOREG_DHIS2_PASSWORD"
URL_ENV = "GEOREG_DHIS2_URL"

dhis2_group = click.Group(
    "dhis2",
    help="Pull org units from DHIS2 into a version, push a version back to DHIS2.\n\n"
    "Credentials: --user NAME with --password-stdin (or $GEOREG_DHIS2_PASSWORD), or a "
    "personal access token with --token-stdin (or $GEOREG_DHIS2_TOKEN). They are never "
    "stored in the registry. See docs/sync-dhis2.md.",
)

REG = click.argument("reg", metavar="REG")
SOURCE = click.option("--source", "-s", required=True, help="Data source name.")


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--url", envvar=URL_ENV, required=True,
                     help="DHIS2 base URL, e.g. https://dhis2.example.org (or $GEOREG_DHIS2_URL)."),
        click.option("--user", "-u", default=None, help="DHIS2 user name (basic auth)."),
        click.option("--password-stdin", is_flag=True,
                     help="Read the password from standard input."),
        click.option("--token-stdin", is_flag=True,
                     help="Read a personal access token (DHIS2 2.37+) from standard input."),
        click.option("--timeout", type=float, default=120.0, show_default=True,
                     help="Seconds to wait for each answer."),
        click.option("--retries", type=click.IntRange(0, 10), default=3, show_default=True,
                     help="Retries (with backoff) after a network error, timeout or 5xx."),
        click.option("--page-size", type=click.IntRange(1, 10000), default=1000,
                     show_default=True, help="Org units per page when reading."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _read_secret(what: str) -> str:
    stream = sys.stdin
    if stream.isatty():
        value = click.prompt(f"DHIS2 {what}", hide_input=True, err=True)
    else:
        value = stream.readline().rstrip("\r\n")
    if not value:
        raise InvalidInput(f"No {what} on standard input.")
    return str(value)


def make_client(url: str, user: str | None, password_stdin: bool, token_stdin: bool,
                timeout: float, retries: int, page_size: int) -> Any:
    from sync.dhis2_client import Dhis2Client

    if password_stdin and token_stdin:
        raise InvalidInput("Give --password-stdin or --token-stdin, not both.")
    password = token = None
    if token_stdin:
        if user:
            raise InvalidInput("A token needs no --user: give --user with --password-stdin.")
        token = _read_secret("personal access token")
    elif password_stdin:
        if not user:
            raise InvalidInput("--password-stdin needs --user NAME.")
        password = _read_secret(f"password for {user}")
    elif user:
        password = os.environ.get(PASSWORD_ENV) or None
        if password is None:
            raise InvalidInput(f"No password for {user}: pass --password-stdin (and the "
                               f"password on standard input) or set ${PASSWORD_ENV}.")
    else:
        token = os.environ.get(TOKEN_ENV) or None
        if token is None:
            raise InvalidInput(f"No DHIS2 credentials: give --user NAME --password-stdin, "
                               f"--token-stdin, or set ${TOKEN_ENV}.")
    return Dhis2Client(url, username=user, password=password, token=token,
                       timeout=(min(10.0, timeout), timeout), retries=retries,
                       page_size=page_size)


# --- rendering ------------------------------------------------------------------------------


def render_pull(d: dict[str, Any]) -> str:
    v = d["version"]
    imp = d["import"]
    lines = [f"Pulled {d['units']} org unit(s) from DHIS2 {d['dhis2']['version']} at "
             f"{d['dhis2']['url']} into {v['label']} ({v['status']})"
             + (f", changes since {d['since']}" if d["incremental"] else "") + "."]
    if d["incremental"]:
        lines.append(f"  created {imp['created']}, updated {imp['updated']}, unchanged "
                     f"{imp['unchanged']}, rejected {imp['rejected']}")
        gc = d.get("group_changes") or {}
        if any(gc.values()):
            lines.append(f"  groups: {gc['groups_created']} new, {gc['groups_renamed']} renamed; "
                         f"memberships +{gc['members_added']} -{gc['members_removed']}")
    else:
        loaded = imp.get("loaded") or {}
        lines.append(f"  {d['levels']} levels, {d['groups']} groups, {d['group_sets']} group "
                     f"sets; {loaded.get('locations', '?')} points, "
                     f"{loaded.get('territories', '?')} territories")
    lines.append(f"  {d['requests']} HTTP request(s)")
    lines += _render_conflicts(d)
    for w in imp.get("warnings", [])[:10]:
        lines.append(f"  warning: {w}")
    if len(imp.get("warnings", [])) > 10:
        lines.append(f"  … and {len(imp['warnings']) - 10} more warnings (use --json).")
    return "\n".join(lines)


def _render_conflicts(d: dict[str, Any]) -> list[str]:
    """Units and groups changed both here and in DHIS2, one line per unit or group: which
    fields, this side's value and DHIS2's — and what to do about them."""
    conflicts = d.get("conflicts") or []
    if not conflicts:
        return []
    prefer = bool(d.get("prefer_remote"))
    lines: list[str] = []
    for kind, what, kept, replaced in (
            ("unit", "unit(s) changed", "kept as they are here, not overwritten (their other "
             "fields took DHIS2's):", "DHIS2's values replaced this side's (--prefer-remote):"),
            ("group", "group(s) renamed", "kept as they are here, not overwritten:",
             "DHIS2's names replaced this side's (--prefer-remote):")):
        by_uid: dict[str, list[dict[str, Any]]] = {}
        for c in conflicts:
            if c.get("kind", "unit") == kind:
                by_uid.setdefault(str(c["uid"]), []).append(c)
        if not by_uid:
            continue
        lines.append(f"  {len(by_uid)} {what} both here and in DHIS2: "
                     + (replaced if prefer else kept))
        for uid, items in list(by_uid.items())[:50]:
            fields = "; ".join(
                f"{c['field']}: here {c['here']!r}, DHIS2 {c['dhis2']!r}"
                # (a conflict settled otherwise than the heading says: this side's kept
                # although --prefer-remote, e.g. DHIS2's name is another group's here)
                + (f" — kept here: {c['reason']}" if c.get("reason")
                   else " — kept here" if prefer and c.get("kept") == "here" else "")
                for c in items)
            lines.append(f"    {items[0]['name']} ({uid})  {fields}")
        if len(by_uid) > 50:
            lines.append(f"    … and {len(by_uid) - 50} more (use --json).")
    if not prefer:
        lines.append("  Send this side's with 'georeg dhis2 push', or take DHIS2's with "
                     "'georeg dhis2 pull … --since last --prefer-remote'. Until then every "
                     "incremental pull reads them again and lists them here.")
    return lines


def render_push(d: dict[str, Any]) -> str:
    p = d["planned"]
    v = d["version"]
    head = ("Dry run (DHIS2 validated, nothing changed): " if d["dry_run"] else "Pushed ") + \
        f"{v['label']} to DHIS2 {d['dhis2']['version']} at {d['dhis2']['url']}."
    lines = [head,
             f"  units: {p['create']} new, {p['update']} updated, {p['close']} closed, "
             f"{p['delete']} deleted, {p['unchanged']} unchanged; groups: "
             f"{p['groups_create']} new, {p['groups_update']} updated",
             f"  {len([b for b in d['batches'] if 'objects' in b])} metadata batch(es), "
             f"{d['requests']} HTTP request(s); DHIS2 counted {d['stats']['created']} created, "
             f"{d['stats']['updated']} updated, {d['stats']['deleted']} deleted"]
    if d.get("uids_stored"):
        lines.append(f"  {d['uids_stored']} new DHIS2 uid(s) stored in the registry")
    if p.get("codes_released"):
        lines.append(f"  {p['codes_released']} unit(s) gave up a code another unit takes "
                     "(sent first: DHIS2 checks codes against those stored before an import)")
    for note in d.get("notes", []):
        lines.append(f"  note: {note}")
    for c in d["changes"][:50]:
        what = c["action"] + (" group" if c["kind"] == "group" else "")
        detail = ""
        if c.get("fields"):
            detail = "; ".join(f"{k}: {_short(val)}" for k, val in c["fields"].items()
                               if val != [])  # (no member added, or none removed)
        elif c.get("parent"):
            detail = f"under {c['parent']}"
        lines.append(f"    {what:<12} {c['name']} ({c['uid']})" + (f"  {detail}" if detail else ""))
    if len(d["changes"]) > 50:
        lines.append(f"    … and {len(d['changes']) - 50} more (use --json or --report).")
    return "\n".join(lines)


def _short(value: Any) -> str:
    """One field of a push change: ``before -> after`` for a change of value (the report
    marks those as ``{"before": …, "after": …}``), the names one after the other for a
    list of group members added or removed — never ``A -> B`` for two members, which
    would read as a rename."""
    if isinstance(value, dict) and set(value) == {"before", "after"}:
        return f"{_cut(value['before'])} -> {_cut(value['after'])}"
    if isinstance(value, list):
        if not value:
            return "none"
        names = [_cut(v) for v in value]
        shown = ", ".join(names[:5])
        return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return _cut(value)


def _cut(value: Any) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           default=str)
    return text if len(text) < 80 else text[:77] + "..."


def _write_report(path: str | None, data: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str),
                              encoding="utf-8")


# --- commands -------------------------------------------------------------------------------


@command(dhis2_group, "info")
@connection_options
def info_cmd(url: str, user: str | None, password_stdin: bool, token_stdin: bool,
             timeout: float, retries: int, page_size: int, as_json: bool) -> None:
    """Check the connection: DHIS2 version and who we are logged in as."""
    with make_client(url, user, password_stdin, token_stdin, timeout, retries,
                     page_size) as client:
        info = client.system_info()
        me = client.me()
    data = {"url": client.base_url, "version": info.get("version"),
            "revision": info.get("revision"), "system_name": info.get("systemName"),
            "server_date": info.get("serverDate"), "user": me.get("username"),
            "user_name": me.get("displayName"), "auth": client.auth_kind}
    emit(as_json, data, lambda d: f"DHIS2 {d['version']} at {d['url']} "
         f"({d['system_name'] or 'no name'}); logged in as {d['user']} ({d['auth']}).")


@command(dhis2_group, "pull")
@REG
@SOURCE
@connection_options
@click.option("--since", default=None,
              help="Only units DHIS2 changed after this date/time (ISO 8601), or 'last' for "
                   "since the previous pull: upserted into the newest draft.")
@click.option("--prefer-remote", is_flag=True,
              help="With --since: for units and groups changed both here (not pushed "
                   "yet) and in DHIS2, take DHIS2's values (default: keep this side's and "
                   "list them).")
@click.option("--description", default=None, help="Description of the new version.")
def pull_cmd(reg: str, source: str, url: str, user: str | None, password_stdin: bool,
             token_stdin: bool, timeout: float, retries: int, page_size: int,
             since: str | None, prefer_remote: bool, description: str | None,
             as_json: bool) -> None:
    """Read DHIS2's org units, levels, groups and group sets into a new draft version.

    Levels become types, DHIS2 uids become refs; points become locations and
    polygons territories. With --since, only what changed upstream is upserted
    into the newest draft (a new draft is made when the newest version is published);
    a field of a unit or group changed here and not pushed yet that DHIS2 changed too
    is not overwritten (listed as a conflict) unless --prefer-remote. A unit whose
    geometry cannot be read comes without it (a warning names it).
    """
    from sync.dhis2_sync import Dhis2PullJob

    with make_client(url, user, password_stdin, token_stdin, timeout, retries,
                     page_size) as client, open_registry(reg) as registry:
        job = Dhis2PullJob(registry, client, source, since=since, description=description,
                           prefer_remote=prefer_remote)
        result = run_job(job, as_json)
    emit(as_json, result, render_pull)


@command(dhis2_group, "push")
@REG
@SOURCE
@click.option("--version", "-v", "number", type=int, required=True,
              help="The version to push.")
@connection_options
@click.option("--dry-run", is_flag=True,
              help="Let DHIS2 validate everything (importMode=VALIDATE); change nothing.")
@click.option("--allow-delete", is_flag=True,
              help="Delete units the version no longer has (default: close them).")
@click.option("--close-date", default=None,
              help="closedDate for units the version no longer has (default: today).")
@click.option("--batch-size", type=click.IntRange(1, 5000), default=500, show_default=True,
              help="Objects per /api/metadata request.")
@click.option("--report", "report_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the full JSON report to this file.")
def push_cmd(reg: str, source: str, number: int, url: str, user: str | None,
             password_stdin: bool, token_stdin: bool, timeout: float, retries: int,
             page_size: int, dry_run: bool, allow_delete: bool, close_date: str | None,
             batch_size: int, report_path: str | None, as_json: bool) -> None:
    """Send what differs between version N and DHIS2: new units (parents first),
    changes, closures and group membership, in batches through /api/metadata.

    New units get DHIS2 uids that are stored in the registry before anything is
    sent, so running a failed push again never creates a unit twice. Exit code 5
    when DHIS2 refuses something (each refusal is listed with the unit's name).
    """
    from sync.dhis2_sync import Dhis2PushJob

    with make_client(url, user, password_stdin, token_stdin, timeout, retries,
                     page_size) as client, open_registry(reg) as registry:
        job = Dhis2PushJob(registry, client, source, number, dry_run=dry_run,
                           allow_delete=allow_delete, batch_size=batch_size,
                           close_date=close_date)
        try:
            result = run_job(job, as_json)
        except GeoregError as error:
            _write_report(report_path, error.details.get("report") or error.to_dict())
            raise
    _write_report(report_path, result)
    emit(as_json, result, render_push)


def render_push_data(d: dict[str, Any]) -> str:
    verb = "Would send" if d["dry_run"] else "Sent"
    where = f"{d['server']} ({d['target'].partition('#')[2]})" if d.get("server") \
        else d["target"]
    lines = [f"{verb} form {d['form']} to {where} via {d['endpoint']}: "
             f"{d['submissions']} submission(s), {d['already_exported']} already exported, "
             f"{d['sent']} sent, {d['exported']} exported, {d['failed']} failed; "
             f"DHIS2 counted {d['created']} created, {d['updated']} updated; "
             f"{d['requests']} HTTP request(s)."]
    for e in d["errors"]:
        lines.append(f"  - {e['message']}" + (f" [{e['unit']}]" if e.get("unit") else ""))
    for w in d.get("warnings", []):
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


@command(dhis2_group, "push-data")
@REG
@click.option("--form", "-f", "form_id", required=True, help="The form (XForm id).")
@click.option("--mapping", "-m", "mapping_path", required=True,
              type=click.Path(dir_okay=False),
              help="JSON mapping: questions → data elements, events or data value sets "
                   "(see docs/sync.md).")
@connection_options
@click.option("--dry-run", is_flag=True,
              help="Let DHIS2 validate the submissions; record and change nothing.")
@click.option("--again", is_flag=True,
              help="Also send submissions already exported to this target (updates them).")
@click.option("--batch-size", type=click.IntRange(1, 5000), default=200, show_default=True,
              help="Events per request.")
@click.option("--report", "report_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the full JSON report to this file.")
def push_data_cmd(reg: str, form_id: str, mapping_path: str, url: str, user: str | None,
                  password_stdin: bool, token_stdin: bool, timeout: float, retries: int,
                  page_size: int, dry_run: bool, again: bool, batch_size: int,
                  report_path: str | None, as_json: bool) -> None:
    """Send a form's submissions to DHIS2 as events (tracker; /api/events before 2.38)
    or data value sets, as the mapping file says.

    Each submission is exported once per target (status kept in the registry, table
    data_export); failed ones are sent again next time. Exit code 5 when DHIS2 (or
    the mapping) refused some submissions: each is listed with what was wrong.
    """
    from storage.errors import ConflictError
    from sync.dhis2_data import load_mapping, push_data

    mapping = load_mapping(mapping_path)
    with make_client(url, user, password_stdin, token_stdin, timeout, retries,
                     page_size) as client, open_registry(reg) as registry:
        result = push_data(registry, client, form_id, mapping, dry_run=dry_run, again=again,
                           batch_size=batch_size)
    _write_report(report_path, result)
    if not result["ok"]:
        raise ConflictError(render_push_data(result), report=result)
    emit(as_json, result, render_push_data)


@command(dhis2_group, "history")
@REG
@SOURCE
@click.option("--limit", type=int, default=20, show_default=True)
def history_cmd(reg: str, source: str, limit: int, as_json: bool) -> None:
    """The stored reports of earlier pushes of a source, newest first."""
    from sync.dhis2_sync import push_history

    with open_registry(reg) as registry:
        rows = push_history(registry, source, limit=limit)

    def text(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return f"No DHIS2 push of {source!r} recorded."
        out = []
        for r in rows:
            rep = r["report"] or {}
            p = rep.get("planned") or {}
            out.append(f"#{r['id']} {r['at']} v{r['version']} {r['op']} by {r['author']}: "
                       f"{p.get('create', 0)} new, {p.get('update', 0)} updated, "
                       f"{p.get('close', 0)} closed, {p.get('delete', 0)} deleted"
                       + ("" if rep.get("ok") else " — FAILED"))
            for e in (rep.get("errors") or [])[:5]:
                out.append(f"    {e}")
            if rep.get("failure"):
                out.append(f"    {rep['failure']}")
        return "\n".join(out)

    emit(as_json, rows, text)


__all__ = ["dhis2_group", "make_client"]
COMMANDS = [dhis2_group]
