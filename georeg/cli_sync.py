"""``georeg sync …`` and ``georeg schedule …``: upstream sync and scheduled jobs.

Registered in :mod:`georeg.cli` with ``main.add_command(sync_group)`` and
``main.add_command(schedule_group)``.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from georeg.cli import ORIGIN, command, emit, open_registry, run_job
from storage.errors import GeoregError, InvalidInput

REG = click.argument("reg", metavar="REG")
SECRETS = click.option(
    "--secrets", "secrets_file", default=None, type=click.Path(dir_okay=False),
    help="Secrets file (default: $GEOREG_SECRETS, REG.secrets.toml beside a registry file, "
    "else ~/.config/georeg/secrets.toml).",
)


@click.group("sync", help="Sync the registry with upstream systems (a central PostGIS).")
def sync_group() -> None:
    pass


@click.group("postgis", help="Push to and pull from a central PostGIS database.")
def postgis_group() -> None:
    pass


sync_group.add_command(postgis_group)

URL = click.option("--url", default=None,
                   help="postgresql://user@host:port/database of the central database.")
TARGET = click.option("--target", default=None,
                      help="Name of a target in the secrets file (instead of --url).")
SCHEMA = click.option("--schema", default=None,
                      help="Schema of the central registry (default: the URL's ?schema= or public).")
BATCH = click.option("--batch-size", type=click.IntRange(min=1), default=2000,
                     show_default=True,
                     help="Units per committed batch of changes (a version sent whole for "
                          "the first time goes by COPY, 100,000 units per batch).")


def _central(reg: str, url: str | None, target: str | None, schema: str | None,
             secrets_file: str | None) -> tuple[str, str | None]:
    if bool(url) == bool(target):
        raise InvalidInput("Give either --url postgresql://… or --target NAME.")
    if url:
        return url, schema
    from sync.scheduler import get_target, postgis_url, secrets_path

    entry = get_target(secrets_path(reg, secrets_file), target or "")
    if not entry.get("url"):
        raise InvalidInput(f"Target {target!r} in the secrets file has no 'url'.")
    return postgis_url(entry), schema or entry.get("schema")


def _value(c: dict[str, Any], side: str) -> str:
    """One side of a conflict row; a parent by its name (with its ref, else the start of
    its uuid, when both parents have one name — as ``georeg diff`` shows a move)."""
    if c["field"] != "parent" or not isinstance(c[side], str):
        return repr(c[side])
    from storage.diff import parent_labels

    def parent(which: str) -> dict[str, Any] | None:
        if not isinstance(c[which], str):
            return None
        return {"name": c.get(f"{which}_parent_name") or f"uuid {c[which]}",
                "ref": c.get(f"{which}_parent_ref"), "uuid": c[which]}

    labels = parent_labels(parent("local"), parent("central"))
    return repr(labels[0 if side == "local" else 1])


def _conflict_lines(d: dict[str, Any], kind: str) -> list[str]:
    """Conflicts grouped by what settles them, each group with advice that works for it:
    units changed on both sides (choose a side, or make them equal); units of a version
    published here that differ centrally (it cannot change here, so a pull cannot settle
    them: only ``push --prefer-local`` or the central units made equal); whole versions
    (deleted here, or published centrally while edited here: each row says what settles
    it)."""
    from sync.unit_writer import is_version_conflict

    lines: list[str] = []
    rows = d["conflicts"]
    all_listed = len(rows) == d["conflict_count"]
    versions = [c for c in rows if is_version_conflict(c)]
    frozen = [c for c in rows if not is_version_conflict(c) and c.get("published_here")]
    units = [c for c in rows if not is_version_conflict(c) and not c.get("published_here")]
    here_total = int(d.get("conflicting_units_published_here") or 0)

    def count(group: list[dict[str, Any]], total: int) -> int:
        return len({(c["source"], c["version"], c["uuid"]) for c in group}) if all_listed \
            else total

    def unit_line(c: dict[str, Any]) -> str:
        return (f"  {c['source']} v{c['version']} {c.get('name') or ''} [{c['uuid']}] "
                f"{c['field']}: here {_value(c, 'local')}, central {_value(c, 'central')}")

    if units:
        lines.append(
            f"{count(units, int(d['conflicting_units']) - here_total)} unit(s) changed on "
            f"both sides — left as they are {'here and held back' if kind == 'push' else 'here'}:")
        lines += [unit_line(c) for c in units]
        lines.append(
            "Resolve by editing one side to match, or choose a side: "
            "'sync postgis pull --prefer-central' or 'sync postgis push --prefer-local'.")
    if frozen:
        lines.append(f"{count(frozen, here_total)} unit(s) of a version published here differ "
                     "centrally — left as they are on both sides:")
        lines += [unit_line(c) for c in frozen]
        labels = sorted({(c["source"], c["version"]) for c in frozen
                         if not c.get("published_centrally")})
        if labels:
            lines.append(
                f"{_labels(labels)} {'is' if len(labels) == 1 else 'are'} published here, so "
                "nothing can change there: a pull (--prefer-central too) cannot settle these. "
                "'sync postgis push --prefer-local' sends this registry's values and publishes "
                "it centrally; or make the central units equal to these, and the next push "
                "publishes it.")
        both = sorted({(c["source"], c["version"]) for c in frozen
                       if c.get("published_centrally")})
        for source, number in both:
            lines.append(
                f"{source} v{number} is published here and centrally, with these units "
                "different: neither side can change any more. Go on in a new draft: georeg "
                f"version new REG --source {_quoted(source)} --from {number}, and push it.")
    if versions:
        lines.append(f"{len(versions)} version(s) in conflict — left as they are "
                     f"{'on both sides' if kind == 'push' else 'here'}:")
    for c in versions:
        names = c.get("unit_names") or []
        more = int(c.get("units_changed_here") or len(names)) - len(names)
        shown = ", ".join(names) + (f" and {more} more" if more > 0 else "")
        lines.append(f"  {c['source']} v{c['version']} (the version): here {c['local']!r}, "
                     f"central {c['central']!r}" + (f" — {shown}" if shown else ""))
        if c.get("remedy"):
            lines.append(f"  {c['remedy']}")
    return lines


def _labels(labels: list[tuple[str, int]]) -> str:
    """'SL v2' or 'SL v2, SL v3': versions as the messages name them."""
    return ", ".join(f"{source} v{number}" for source, number in labels)


def _sync_text(kind: str) -> Any:
    def render(d: dict[str, Any]) -> str:
        lines = []
        if kind == "push":
            # sent units are upserted (new, changed values, moved: a unit can be both, or
            # neither when central had it so already); deletions are counted apart, each
            # unit of a deleted subtree — the parts need not add up to the units sent
            sent = f"{d['units_sent']} unit(s) sent"
            if d["units_sent"]:
                sent += (f" ({d['units_inserted']} new, {d['units_updated']} with changed "
                         f"values, {d['units_moved']} moved; a unit can be both, or neither "
                         "when central had it so already)")
            deleted = f"{d['units_deleted']} unit(s) deleted centrally" + (
                " (subtrees included)" if d["units_deleted"] else "")
            lines.append(
                f"Pushed to {d['target']}: {sent}; {deleted}; {d['territories_changed']} "
                f"territory change(s), {d['memberships_added']} membership(s) added, "
                f"{d['memberships_removed']} removed; in {d['seconds']} s."
            )
            if d.get("resumed"):
                lines.append("Resumed an interrupted push.")
            done = [(d.get(key) or 0, word) for key, word in (
                ("versions_created", "created"), ("versions_published", "published"),
                ("versions_deleted", "deleted"))]
            if any(n for n, _ in done):
                lines.append("Versions: " + ", ".join(f"{n} {word}" for n, word in done
                                                      if n or word != "deleted")
                             + " centrally.")
            if d.get("versions_not_published"):
                lines.append(f"Versions: {d['versions_not_published']} published here left a "
                             "draft centrally (see the notes).")
            if d.get("versions_held"):
                lines.append(f"Versions: {d['versions_held']} deleted here kept centrally "
                             "(changed there; see the version conflicts below).")
        else:
            lines.append(
                f"Pulled from {d['target']}: {d['units_inserted']} new, {d['units_updated']} "
                f"updated, {d['units_moved']} moved, {d['units_deleted']} deleted unit(s), "
                f"{d['territories_changed']} territory change(s), "
                f"{d.get('groups_changed', 0)} group(s) or group set(s) added or changed, "
                f"{d.get('memberships_added', 0)} membership(s) added, "
                f"{d.get('memberships_removed', 0)} removed, in {d['seconds']} s."
            )
            new = [(d.get(key) or 0, word) for key, word in (
                ("versions_created", "new"), ("versions_published", "published"))]
            if any(n for n, _ in new):
                lines.append("Versions: " + ", ".join(f"{n} {w}" for n, w in new) + " here.")
            if d.get("types_changed"):
                lines.append(f"Unit types: {d['types_changed']} added or changed.")
        if d["conflict_count"]:
            lines += _conflict_lines(d, kind)
        for msg in d["refused"] + d["warnings"]:
            lines.append(f"Note: {msg}")
        return "\n".join(lines)

    return render


@command(postgis_group, "push")
@REG
@URL
@TARGET
@SCHEMA
@BATCH
@click.option("--prefer-local", is_flag=True,
              help="Send units changed on both sides anyway (this registry wins).")
@SECRETS
def push_cmd(reg: str, url: str | None, target: str | None, schema: str | None,
             batch_size: int, prefer_local: bool, secrets_file: str | None,
             as_json: bool) -> None:
    """Push REG to the central PostGIS: everything the first time, then what changed.

    The central schema is created if needed. An interrupted push continues where it
    stopped. Units also changed centrally since the last pull are not overwritten:
    they are listed as conflicts and held back (exit code 0: the rest was sent).
    """
    from sync.postgis_sync import PushJob

    central_url, central_schema = _central(reg, url, target, schema, secrets_file)
    with open_registry(reg) as registry:
        job = PushJob(registry, central_url, central_schema, batch_size=batch_size,
                      prefer="local" if prefer_local else None)
        result = run_job(job, as_json)
    emit(as_json, result, _sync_text("push"))


@command(postgis_group, "pull")
@REG
@URL
@TARGET
@SCHEMA
@BATCH
@click.option("--prefer-central", is_flag=True,
              help="Take the central values of units changed on both sides. A version "
                   "published centrally while edited here becomes the published one here, "
                   "its edits made here kept in a new draft first.")
@click.option("--source", "sources", multiple=True,
              help="Only this data source (repeat for several; default: all sources there).")
@SECRETS
def pull_cmd(reg: str, url: str | None, target: str | None, schema: str | None,
             batch_size: int, prefer_central: bool, sources: tuple[str, ...],
             secrets_file: str | None, as_json: bool) -> None:
    """Bring back what changed in the central PostGIS since the last pull.

    A unit changed on both sides is listed field by field and left unchanged here. A
    version published centrally while units of it changed here is one version conflict,
    with the way to keep those edits (a new draft). Exit code 0 with conflicts held too.
    """
    from sync.postgis_sync import PullJob

    central_url, central_schema = _central(reg, url, target, schema, secrets_file)
    with open_registry(reg) as registry:
        job = PullJob(registry, central_url, central_schema, batch_size=batch_size,
                      prefer="central" if prefer_central else None,
                      sources=list(sources) or None)
        result = run_job(job, as_json)
    emit(as_json, result, _sync_text("pull"))


#: ``status --compare`` when the two sides differ (0: equal; 1, 2, 4: the central side
#: could not be reached, refused the credentials, holds no registry — as for push and pull)
EXIT_SIDES_DIFFER = 7


@command(postgis_group, "status")
@REG
@URL
@TARGET
@SCHEMA
@click.option("--compare", is_flag=True,
              help="Also compare both sides table by table (checksums); exit code 7 when "
                   "they differ, 1 when the central side cannot be reached.")
@SECRETS
def status_cmd(reg: str, url: str | None, target: str | None, schema: str | None,
               compare: bool, secrets_file: str | None, as_json: bool) -> None:
    """Show where the sync with the central PostGIS stands.

    With --compare, the exit code says whether both sides are equal (0) or differ (7),
    for a script or a cron job; the central side not reachable is an error (1).
    """
    from sync.postgis_sync import status

    central_url, central_schema = _central(reg, url, target, schema, secrets_file)
    with open_registry(reg) as registry:
        data = status(registry, central_url, central_schema, compare=compare)

    def render(d: dict[str, Any]) -> str:
        if not d["pushed_before"]:
            pushed = "  never pushed"
        elif d["last_change_id"] is None:
            pushed = (f"  no push has finished yet ({d['local_change_log_top']} change(s) in "
                      "the change log; the next push sends everything"
                      + (", continuing the interrupted one)" if d["resuming"] else ")"))
        else:
            pushed = (f"  pushed up to change {d['last_change_id']} of "
                      f"{d['local_change_log_top']} ({d['unpushed_changes']} unit change(s) "
                      "not pushed yet)")
        lines = [
            f"Target {d['target']}",
            pushed,
            f"  pulled up to central change {d['last_pull_marker'] or '(never)'}",
            f"  central side: {d['central']}",
        ]
        for v in d.get("versions_not_pushed", []):
            lines.append(f"  {v['source']} v{v['number']} ({v['units']:,} units) has never been "
                         "pushed whole: the next push sends it")
        held = d.get("held_units", [])
        frozen = [h for h in held if h.get("published_centrally")]
        mine = [h for h in held if h.get("published_here") and not h.get("published_centrally")]
        if len(d["held"]) > len(frozen) + len(mine):
            lines.append(f"  {len(d['held']) - len(frozen) - len(mine)} unit(s) held back by "
                         "conflicts (changed on both sides; settle with push --prefer-local or "
                         "pull --prefer-central):")
            for h in [h for h in held if h not in frozen and h not in mine][:20]:
                lines.append(f"    {h['version'] or '?'} {h['name'] or '(deleted here)'} "
                             f"[{h['uuid']}]")
        if mine:
            lines.append(f"  {len(mine)} unit(s) of a version published here held back (they "
                         "differ centrally, so it stays a draft there; a pull cannot change a "
                         "published version: settle with push --prefer-local, which also "
                         "publishes it centrally, or make the central units equal):")
            for h in mine[:20]:
                lines.append(f"    {h['version'] or '?'} {h['name'] or '(deleted here)'} "
                             f"[{h['uuid']}]")
        by_version: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for h in frozen:
            by_version.setdefault((h["source"], h["number"]), []).append(h)
        for (source, number), units in sorted(by_version.items()):
            lines.append(
                f"  {source} v{number} is published centrally: {len(units)} unit(s) changed "
                f"here cannot go into it (neither push --prefer-local nor a new push sends "
                f"them). Keep them in a new draft: georeg version new REG --source "
                f"{_quoted(source)} --from {number}, then pull (or pull --prefer-central, "
                "which makes that draft for you):")
            for h in units[:20]:
                lines.append(f"    {h['name'] or '(deleted here)'} [{h['uuid']}]")
        for v in d.get("held_versions", []):
            lines.append(
                f"  {v['source']} v{v['number']} was deleted here but is kept centrally: units "
                "of it changed there and were never pulled here. Pull to bring it back with "
                "those edits (delete it again afterwards if it is not needed), or push "
                "--prefer-local to delete it centrally anyway.")
        if d["resuming"] and d["last_change_id"] is not None:
            lines.append("  an interrupted push will be resumed")
        if "tables" in d:
            for name, t in d["tables"].items():
                mark = "=" if t["equal"] else "≠"
                lines.append(f"  {name:<20} here {t['local']:>8}  central {t['central']:>8}  {mark}")
            lines.append("  Both sides are equal." if d["equal"] else
                         f"  The sides differ (exit code {EXIT_SIDES_DIFFER}).")
        return "\n".join(lines)

    emit(as_json, data, render)
    if compare and not data["equal"]:
        sys.exit(EXIT_SIDES_DIFFER)


def _quoted(word: str) -> str:
    """A word as a shell takes it (a source name with spaces, quotes)."""
    import shlex

    return shlex.quote(word)


# --- schedule ------------------------------------------------------------------------------


@click.group("schedule", help="Scheduled sync jobs stored in the registry, with a run history.")
def schedule_group() -> None:
    pass


def _options(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--option {pair!r}: expected KEY=VALUE.")
        out[key.strip()] = int(value) if value.isdigit() else value
    return out


@command(schedule_group, "add")
@REG
@click.option("--job", "kind", required=True,
              type=click.Choice(["postgis-push", "postgis-pull", "dhis2-pull", "dhis2-push",
                                 "dhis2-push-data"]),
              help="What to run.")
@click.option("--every", default=None, help="Interval: 30s, 15m, 1h, 1h30m, 1d.")
@click.option("--cron", default=None, help="Crontab expression (UTC), e.g. '0 2 * * *'.")
@click.option("--target", default=None,
              help="Target name in the secrets file (where the URL and credentials are).")
@click.option("--url", default=None,
              help="Store this URL as --target in the secrets file (mode 0600), not in REG.")
@click.option("--replace-target", is_flag=True,
              help="With --url: overwrite a target of that name already in the secrets file "
                   "(other jobs may use it).")
@click.option("--schema", default=None, help="Central schema (with --url).")
@click.option("--user", default=None,
              help="DHIS2 or PostgreSQL user name (with --url; stored as secret).")
@click.option("--password-stdin", is_flag=True,
              help="Read the DHIS2 or PostgreSQL password from standard input (stored as "
                   "secret).")
@click.option("--token-stdin", is_flag=True,
              help="Read a DHIS2 personal access token from standard input (stored as secret).")
@click.option("--name", default=None, help="Job name (default: JOB-TARGET).")
@click.option("--option", "option_pairs", multiple=True, help="Job option KEY=VALUE (repeat); the options of each job are listed in docs/sync.md, and checked here.")
@click.option("--retries", type=int, default=3, show_default=True,
              help="Retries after a failed run.")
@click.option("--retry-delay", type=float, default=30.0, show_default=True,
              help="Seconds before the first retry; doubled each time.")
@click.option("--retry-max", type=float, default=3600.0, show_default=True,
              help="Longest wait between retries (seconds).")
@SECRETS
def schedule_add_cmd(reg: str, kind: str, every: str | None, cron: str | None,
                     target: str | None, url: str | None, replace_target: bool,
                     schema: str | None,
                     user: str | None, password_stdin: bool, token_stdin: bool,
                     name: str | None, option_pairs: tuple[str, ...], retries: int,
                     retry_delay: float, retry_max: float, secrets_file: str | None,
                     as_json: bool) -> None:
    """Schedule a job: --every 1h or --cron "0 2 * * *".

    Credentials never go into REG: the job names a --target of the secrets file.
    Give --url once to write that target there (created with mode 0600); the job is
    checked first, so a refused job writes nothing.
    """
    from sync.scheduler import add_job, check_job, save_target, secrets_path

    stored = None
    if (user or password_stdin or token_stdin or replace_target) and not url:
        raise InvalidInput("--user, --password-stdin, --token-stdin and --replace-target go "
                           "with --url.")
    if url and not target:
        raise InvalidInput("--url needs --target NAME: the name it is stored under.")
    if url and kind.startswith("dhis2") and not (token_stdin or (user and password_stdin)):
        raise InvalidInput(
            f"A {kind} job needs the DHIS2 credentials stored with its target: --user "
            "with --password-stdin, or --token-stdin (a scheduled job cannot ask for them).")
    if token_stdin and kind.startswith("postgis"):
        raise InvalidInput("--token-stdin is for DHIS2; a PostgreSQL target takes --user and "
                           "--password-stdin (or the password in ~/.pgpass).")
    options = _options(option_pairs)
    if schema and not url:
        options["schema"] = schema
    with open_registry(reg) as registry:
        check_job(registry, kind, every=every, cron=cron, target=target, name=name,
                  options=options, max_retries=retries, retry_base_seconds=retry_delay,
                  retry_max_seconds=retry_max)
        if url and target:
            secret = sys.stdin.readline().strip() if (password_stdin or token_stdin) else None
            stored = save_target(secrets_path(reg, secrets_file), target, {
                "url": url, "schema": schema, "username": user,
                "password": secret if password_stdin else None,
                "token": secret if token_stdin else None}, replace=replace_target)
        data = add_job(registry, kind, every=every, cron=cron, target=target, name=name,
                       options=options, max_retries=retries, retry_base_seconds=retry_delay,
                       retry_max_seconds=retry_max, origin=ORIGIN, secrets_file=secrets_file)
    data["secrets_file"] = str(stored) if stored else None
    data["warnings"] = []
    if target and not stored:  # the job names a target: is it there to be used?
        from sync.scheduler import get_target

        try:
            get_target(secrets_path(reg, secrets_file), target)
        except GeoregError as missing:
            data["warnings"].append(f"{missing.message} The job fails until it is there.")

    def render(d: dict[str, Any]) -> str:
        text = f"Scheduled {d['name']!r} ({d['kind']}, {d['schedule']})."
        if d["secrets_file"]:
            text += f"\nTarget {d['target']!r} stored in {d['secrets_file']} (mode 0600)."
        text += ("\nJobs run while 'georeg schedule serve REG' (or 'georeg serve') is running.")
        for warning in d["warnings"]:
            text += f"\nwarning: {warning}"
        return text

    emit(as_json, data, render)


@command(schedule_group, "list")
@REG
def schedule_list_cmd(reg: str, as_json: bool) -> None:
    """List scheduled jobs with their last and next run."""
    from sync.scheduler import list_jobs

    with open_registry(reg) as registry:
        data = list_jobs(registry)

    def render(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "No scheduled jobs. Add one with 'georeg schedule add'."
        lines = []
        for j in rows:
            last = j["last_run"]
            last_text = (f"last {last['outcome']} at {last['started_at']}"
                         + (f" (retry at {last['retry_at']})" if last.get("retry_at") else "")
                         + (f" — {last['error']}" if last["outcome"] == "ok"
                            and last.get("error") else "")
                         if last else "never run")
            state = "" if j["enabled"] else " [disabled]"
            lines.append(f"{j['name']}{state}: {j['kind']} → {j['target'] or '-'}, "
                         f"{j['schedule']}; {last_text}; next {j['next_run'] or '-'}")
        return "\n".join(lines)

    emit(as_json, data, render)


@command(schedule_group, "remove")
@REG
@click.argument("name")
def schedule_remove_cmd(reg: str, name: str, as_json: bool) -> None:
    """Remove a scheduled job (its run history is kept)."""
    from sync.scheduler import remove_job

    with open_registry(reg) as registry:
        data = remove_job(registry, name, origin=ORIGIN)
    emit(as_json, data, lambda d: f"Removed job {d['removed']!r}.")


@command(schedule_group, "enable")
@REG
@click.argument("name")
@click.option("--off", is_flag=True, help="Disable instead.")
def schedule_enable_cmd(reg: str, name: str, off: bool, as_json: bool) -> None:
    """Enable (or with --off, disable) a scheduled job."""
    from sync.scheduler import set_enabled

    with open_registry(reg) as registry:
        data = set_enabled(registry, name, not off, origin=ORIGIN)
    emit(as_json, data, lambda d: f"Job {d['name']!r} is {'enabled' if d['enabled'] else 'disabled'}.")


def _run_text(r: dict[str, Any]) -> str:
    figures = r.get("figures") or {}
    shown = ", ".join(f"{k} {v}" for k, v in figures.items()
                      if isinstance(v, (int, float)) and v and k not in ("seconds",))
    text = f"#{r.get('id', r.get('run_id'))} {r['outcome']}"
    if r.get("attempt"):
        text += f" (attempt {r['attempt']}, {r.get('triggered_by')})"
    if r.get("started_at"):
        text += f" at {r['started_at']}"
    if shown:
        text += f": {shown}"
    if r.get("error"):
        text += f"\n    {'note' if r['outcome'] == 'ok' else 'error'}: {r['error']}"
    if r.get("retry_at"):
        text += f"\n    retry at {r['retry_at']}"
    return text


@command(schedule_group, "run-now")
@REG
@click.argument("name")
@click.option("--retry", is_flag=True, help="Retry failures with the job's backoff.")
@SECRETS
def schedule_run_now_cmd(reg: str, name: str, retry: bool, secrets_file: str | None,
                         as_json: bool) -> None:
    """Run a scheduled job now, here; the run is recorded in the history."""
    from sync.scheduler import run_now

    with open_registry(reg) as registry:
        results = [r.to_dict() for r in run_now(registry, name, retry=retry,
                                                 secrets_file=secrets_file)]
    emit(as_json, results, lambda rs: "\n".join(_run_text(r) for r in rs))
    if results[-1]["outcome"] != "ok":
        raise SystemExit(1)


@command(schedule_group, "history")
@REG
@click.option("--job", "name", default=None, help="Only this job.")
@click.option("--limit", type=int, default=20, show_default=True)
def schedule_history_cmd(reg: str, name: str | None, limit: int, as_json: bool) -> None:
    """Show past runs, newest first: outcome, figures, errors."""
    from sync.scheduler import history

    with open_registry(reg) as registry:
        data = history(registry, name, limit)
    emit(as_json, data, lambda rows: "\n".join(
        f"{r['job']} " + _run_text(r) for r in rows) or "No runs yet.")


@command(schedule_group, "serve")
@REG
@SECRETS
def schedule_serve_cmd(reg: str, secrets_file: str | None, as_json: bool) -> None:
    """Run the scheduled jobs of REG in the foreground until Ctrl-C."""
    from sync.scheduler import run_scheduler

    click.echo(f"Running the jobs of {reg}; Ctrl-C stops.", err=True)
    run_scheduler(reg, secrets_file=secrets_file, block=True,
                  stopping=lambda message: click.echo(message, err=True))
COMMANDS = [sync_group, schedule_group]
