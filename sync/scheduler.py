"""Scheduled sync jobs: stored in the registry, run by APScheduler in-process.

Jobs live in the registry's ``schedule_job`` table (so the CLI, the server and the
status page see one schedule) and every run lands in ``schedule_run`` with its
outcome, figures and error.  A failed run is retried with exponential backoff,
bounded by the job's ``max_retries`` and ``retry_max_seconds``.

**Credentials are never stored in the registry** (people share registry files): a
job names a *target* that is looked up in a secrets file, TOML, mode 0600 —

* the ``--secrets`` of the command or server running the job, else
* the file the job was added with (``schedule add --secrets``: kept with its options), else
* ``$GEOREG_SECRETS`` when set, else
* ``<registry>.secrets.toml`` next to a registry file, when it exists, else
* ``~/.config/georeg/secrets.toml``

— and Georeg refuses to read one that group or others may read::

    [targets.central]
    url = "postgresql://georeg:secret@db.example.org/registry"
    schema = "district_bo"

Job kinds are one table, :data:`JOB_KINDS`: each names a runner
``module:function`` called as ``runner(reg, secret, options) -> figures`` (imported
when a job runs).  Adding a kind is one entry.  A DHIS2 target holds ``url`` and
``token``, or ``username`` and ``password``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import importlib
import json
import logging
import os
import re
import shlex
import signal
import stat
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import text

from storage.errors import ConflictError, GeoregError, InvalidInput, NotFound, SetupError
from storage.registry import Registry, json_value

SCHEDULER_ORIGIN = "scheduler"
#: how a run whose process stopped before it ended is closed (see ``execute``)
INTERRUPTED = ("interrupted: the process running it stopped before it finished (stopped, "
               "killed or powered off); the next run picks the sync up again")
#: run history kept per job: the newest HISTORY_KEEP runs, and every run of the last
#: HISTORY_DAYS days
HISTORY_KEEP = 200
HISTORY_DAYS = 90
SECRETS_ENV = "GEOREG_SECRETS"
HOME_SECRETS = Path("~/.config/georeg/secrets.toml")
#: the job option that keeps the secrets file a job was added with (``schedule add
#: --secrets``): a path, not a secret; a server's own ``--secrets`` goes before it
SECRETS_OPTION = "secrets_file"
UTC = dt.UTC
LOG = logging.getLogger("georeg.scheduler")


# --- job kinds ---------------------------------------------------------------------


@dataclass(frozen=True)
class JobKind:
    """A kind of scheduled job: what runs it and what it needs."""

    runner: str  # "module:function", imported when the job runs
    description: str
    needs_target: bool = True
    #: option names the runner understands (others are refused when the job is added)
    options: tuple[str, ...] = ()
    #: options that must be given
    required: tuple[str, ...] = ()


JOB_KINDS: dict[str, JobKind] = {
    "postgis-push": JobKind(
        "sync.scheduler:postgis_push",
        "Push the registry to a central PostGIS schema (only what changed).",
        options=("schema", "batch_size", "prefer"),
    ),
    "postgis-pull": JobKind(
        "sync.scheduler:postgis_pull",
        "Pull the changes made in a central PostGIS schema.",
        options=("schema", "batch_size", "prefer", "sources"),
    ),
    "dhis2-pull": JobKind(
        "sync.scheduler:dhis2_pull",
        "Pull org units from a DHIS2 server into a new version.",
        options=("source", "since", "page_size", "prefer"),
        required=("source",),
    ),
    "dhis2-push": JobKind(
        "sync.scheduler:dhis2_push",
        "Push a version's differences to a DHIS2 server.",
        options=("source", "version", "dry_run", "allow_delete", "page_size"),
        required=("source",),
    ),
    "dhis2-push-data": JobKind(
        "sync.scheduler:dhis2_push_data",
        "Send a form's new submissions to DHIS2 (events or data value sets).",
        options=("form", "mapping", "batch_size"),
        required=("form", "mapping"),
    ),
}

Runner = Callable[[Registry, dict[str, Any], dict[str, Any]], dict[str, Any]]


def resolve_runner(kind: str) -> Runner:
    spec = job_kind(kind)
    module_name, _, func = spec.runner.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise SetupError(
            f"The {kind} job needs {module_name.replace('.', '/')}.py, which this Georeg "
            f"does not have ({error})."
        ) from error
    runner = getattr(module, func, None)
    if runner is None:
        raise SetupError(f"The {kind} job needs {spec.runner}, which does not exist.")
    return runner  # type: ignore[no-any-return]


def job_kind(kind: str) -> JobKind:
    if kind not in JOB_KINDS:
        raise InvalidInput(f"Unknown job {kind!r}; jobs: {', '.join(sorted(JOB_KINDS))}.")
    return JOB_KINDS[kind]


def postgis_push(reg: Registry, secret: dict[str, Any], options: dict[str, Any]
                 ) -> dict[str, Any]:
    from sync.postgis_sync import push

    url, schema = _postgis_target(secret, options)
    return push(reg, url, schema, batch_size=int(options.get("batch_size") or 2000),
                prefer=options.get("prefer"))


def postgis_pull(reg: Registry, secret: dict[str, Any], options: dict[str, Any]
                 ) -> dict[str, Any]:
    from sync.postgis_sync import pull

    url, schema = _postgis_target(secret, options)
    sources = options.get("sources")
    return pull(reg, url, schema, batch_size=int(options.get("batch_size") or 2000),
                prefer=options.get("prefer"),
                sources=str(sources).split(",") if sources else None)


def _dhis2_client(secret: dict[str, Any], options: dict[str, Any]) -> Any:
    from sync.dhis2_client import Dhis2Client

    if not secret.get("url"):
        raise InvalidInput("The DHIS2 target in the secrets file has no 'url'.")
    extra: dict[str, Any] = (
        {"page_size": int(options["page_size"])} if options.get("page_size") else {})
    return Dhis2Client(
        str(secret["url"]),
        username=secret.get("username") or secret.get("user"),
        password=secret.get("password"),
        token=secret.get("token"),
        **extra,
    )


_FLAGS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


def _flag(value: Any) -> bool:
    return _FLAGS.get(str(value).strip().lower(), False)


def _checked_option(kind: str, key: str, value: Any) -> Any:
    """An option as its runner will read it — or a clear error when the job is added,
    not at two in the morning (``dry_run=maybe`` used to run a real push)."""
    text_ = str(value).strip()
    where = f"Option {key}={value!r} of {kind}"
    if key in ("dry_run", "allow_delete"):
        if text_.lower() not in _FLAGS:
            raise InvalidInput(f"{where}: give true or false (yes/no, 1/0, on/off).")
        return "true" if _FLAGS[text_.lower()] else "false"
    if key in ("version", "batch_size", "page_size"):
        if not text_.isdigit() or int(text_) < 1:
            raise InvalidInput(f"{where}: give a whole number, 1 or more.")
        return text_
    if key == "prefer":
        wanted = {"postgis-push": "local", "dhis2-pull": "remote"}.get(kind, "central")
        if text_ != wanted:
            raise InvalidInput(f"{where}: the only choice is prefer={wanted} (or leave it out).")
        return text_
    if key == "schema":
        from storage.backends import check_schema_name

        return check_schema_name(text_)
    if key == "since" and text_.lower() != "last":
        from sync.dhis2_sync import parse_since

        parse_since(text_)
        return text_
    if key == "mapping":
        from sync.dhis2_data import load_mapping

        path = Path(text_).expanduser().resolve()  # the scheduler runs from anywhere
        load_mapping(path)  # names the file and the key at fault
        return str(path)
    return value


def dhis2_pull(reg: Registry, secret: dict[str, Any], options: dict[str, Any]
               ) -> dict[str, Any]:
    from sync import dhis2_sync

    return dhis2_sync.pull(reg, _dhis2_client(secret, options), str(options["source"]),
                           since=options.get("since") or None,
                           prefer_remote=options.get("prefer") == "remote")


def dhis2_push(reg: Registry, secret: dict[str, Any], options: dict[str, Any]
               ) -> dict[str, Any]:
    from sync import dhis2_sync

    version = options.get("version")
    return dhis2_sync.push(reg, _dhis2_client(secret, options), str(options["source"]),
                           int(version) if version not in (None, "") else None,
                           dry_run=_flag(options.get("dry_run")),
                           allow_delete=_flag(options.get("allow_delete")))


def dhis2_push_data(reg: Registry, secret: dict[str, Any], options: dict[str, Any]
                    ) -> dict[str, Any]:
    """Submissions not yet exported; a run with refused submissions counts as failed (and
    is retried: the refused ones are sent again, the exported ones never)."""
    from sync import dhis2_data

    mapping = dhis2_data.load_mapping(str(options["mapping"]))
    report = dhis2_data.push_data(reg, _dhis2_client(secret, options), str(options["form"]),
                                  mapping, batch_size=int(options.get("batch_size") or
                                                          dhis2_data.EVENT_BATCH))
    if not report["ok"]:
        raise ConflictError(
            f"{report['failed']} submission(s) of {options['form']} refused: "
            + "; ".join(e["message"] for e in report["errors"][:5]), report=report)
    return report


def _postgis_target(secret: dict[str, Any], options: dict[str, Any]) -> tuple[str, str | None]:
    return postgis_url(secret), options.get("schema") or secret.get("schema")


def postgis_url(secret: dict[str, Any]) -> str:
    """A PostgreSQL target's URL with its ``username``/``password`` put in (``schedule add
    --user … --password-stdin`` stores them beside the URL; they used to be stored and
    never sent)."""
    url = secret.get("url")
    if not url:
        raise InvalidInput("The target in the secrets file has no 'url'.")
    user = secret.get("username") or secret.get("user")
    password = secret.get("password")
    if not (user or password):
        return str(url)
    from urllib.parse import parse_qsl, quote, unquote

    from storage.backends import join_pg_url, split_pg_url

    parts = split_pg_url(str(url))
    host = parts.netloc.rpartition("@")[2]
    # (a user name from the URL is already encoded there: Azure's 'user%40server')
    name = quote(str(user) if user else unquote(parts.username or ""), safe="")
    secret_part = f":{quote(str(password), safe='')}" if password else ""
    return join_pg_url(str(url).partition("://")[0], parts._replace(
        netloc=f"{name}{secret_part}@{host}"), dict(parse_qsl(parts.query)))


# --- secrets -----------------------------------------------------------------------------


def secrets_path(registry: str | Path | None = None, explicit: str | Path | None = None
                 ) -> Path:
    """Where the secrets are: explicit, $GEOREG_SECRETS, next to the registry, or home."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(SECRETS_ENV):
        return Path(os.environ[SECRETS_ENV]).expanduser()
    if registry is not None and not str(registry).startswith("postgres"):
        beside = Path(str(registry) + ".secrets.toml")
        if beside.exists():
            return beside
    return HOME_SECRETS.expanduser()


def load_secrets(path: Path) -> dict[str, Any]:
    """The secrets file's contents; refused when others could read it."""
    if not path.exists():
        return {}
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SetupError(
            f"{path} can be read by other users (mode {mode:o}); it holds credentials. "
            f"Make it private with: chmod 600 {path}"
        )
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InvalidInput(f"{path}: not valid TOML ({error}).") from None


def get_target(path: Path, name: str) -> dict[str, Any]:
    if not path.exists():
        raise NotFound(
            f"The secrets file {path} does not exist (target {name!r} would be in it). "
            f"Check {SECRETS_ENV} and --secrets, or create the target with 'georeg schedule "
            f"add … --target {name} --url …'.")
    targets = load_secrets(path).get("targets", {})
    if name not in targets:
        raise NotFound(
            f"No target {name!r} in {path}. Add it with 'georeg schedule add … --target "
            f"{name} --url …' or write a [targets.{name}] table there (chmod 600)."
        )
    return dict(targets[name])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def save_target(path: Path, name: str, values: dict[str, Any], *, replace: bool = False
                ) -> Path:
    """Add ``[targets.NAME]`` to the secrets file (created with mode 0600), leaving the
    rest of the file — comments, other tables, hand-written targets — as it was.

    A target of that name already there with other values is refused (other jobs may use
    it) unless ``replace``: then its table (and its sub-tables) is rewritten."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise InvalidInput(f"Target name {name!r}: use letters, digits, '-' and '_'.")
    url = str(values.get("url") or "")
    from storage.backends import Location, is_pg_url

    if is_pg_url(url):  # checked now, not at run time
        Location.parse(url)
    elif re.match(r"^https?://", url, re.I):
        from sync.dhis2_client import dhis2_base_url

        dhis2_base_url(url)
    wanted = {k: v for k, v in values.items() if v is not None}
    old_text = path.read_text(encoding="utf-8") if path.exists() else (
        "# Georeg secrets: credentials of sync targets. Keep private (chmod 600).\n")
    present = load_secrets(path).get("targets", {})
    if not isinstance(present, dict):
        raise InvalidInput(f"{path}: 'targets' is not a table; fix the file by hand.")
    block = f"[targets.{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in wanted.items())
    if name in present:
        if {k: v for k, v in present[name].items() if not isinstance(v, dict)} == wanted:
            return path  # already there as given
        if not replace:
            raise ConflictError(
                f"Target {name!r} already exists in {path} with other values (other jobs may "
                f"use it). Use it as it is with --target {name} and no --url, choose another "
                "--target name, or add --replace-target to overwrite it.")
        new_text = _without_table(old_text, name, path)
    else:
        new_text = old_text
    new_text = new_text.rstrip("\n") + "\n\n" + block
    try:  # never write a file that no longer reads, or reads otherwise
        check = tomllib.loads(new_text)["targets"][name]
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as error:
        raise InvalidInput(f"{path} could not be updated safely ({error}); add the "
                           f"[targets.{name}] table by hand.") from None
    if dict(check) != wanted:
        raise InvalidInput(f"{path} could not be updated safely; add the [targets.{name}] "
                           "table by hand.")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, new_text.encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def _without_table(text_: str, name: str, path: Path) -> str:
    """The secrets file's text without ``[targets.NAME]`` and its sub-tables (the lines
    from that header to the next header of another table)."""
    header = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$")
    mine = re.compile(rf"^targets\s*\.\s*(\"{re.escape(name)}\"|{re.escape(name)})(\s*\..*)?$")
    out, skipping, found = [], False, False
    for line in text_.splitlines(keepends=True):
        match = header.match(line)
        if match:
            skipping = bool(mine.match(match.group(1)))
            found = found or skipping
        if not skipping:
            out.append(line)
    if not found:  # written another way (an inline table, dotted keys): not ours to edit
        raise InvalidInput(f"Target {name!r} in {path} is not written as a [targets.{name}] "
                           "table; change it there by hand.")
    return "".join(out)


# --- job definitions ---------------------------------------------------------------------


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: the longest interval a job may have (a longer one overflows date arithmetic, and is
#: surely a typo: a yearly job is a --cron)
MAX_INTERVAL = 366 * 86400


def parse_interval(value: str | int) -> int:
    """'90', '45s', '15m', '1h', '1h30m', '1d' → seconds."""
    if isinstance(value, int):
        seconds = value
    else:
        spec = value.strip().lower().replace(" ", "")
        if spec.isdigit():
            seconds = int(spec)
        else:
            parts = re.findall(r"(\d+)([smhdw])", spec)
            if not parts or "".join(n + u for n, u in parts) != spec:
                raise InvalidInput(
                    f"--every {value!r}: expected a duration such as 30s, 15m, 1h, 1h30m or 1d."
                )
            seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise InvalidInput(f"--every {value!r}: the interval must be positive.")
    if seconds > MAX_INTERVAL:
        raise InvalidInput(f"--every {value!r}: at most 366d (for rarer runs use --cron, "
                           "e.g. '0 2 1 1 *' once a year).")
    return seconds


_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _crontab_days(field_: str, expr: str) -> str:
    """A crontab weekday field (0 or 7 = Sunday, 1 = Monday; names; lists, ranges,
    steps) as APScheduler's day names: APScheduler counts 0 as *Monday*, so handing it
    the numbers ran every numeric weekday a day late."""
    if field_ == "*":
        return "*"

    def day(token: str) -> int:
        token = token.strip().lower()
        if token[:3] in _DAYS and len(token) >= 3:
            return _DAYS.index(token[:3])
        if token.isdigit() and int(token) <= 7:
            return int(token)
        raise InvalidInput(f"--cron {expr!r}: weekday {token!r} is not 0-7 (0 and 7 are "
                           "Sunday) or a day name (sun, mon, …).")

    chosen: set[int] = set()
    for part in field_.split(","):
        span, _, step_text = part.partition("/")
        if step_text and not (step_text.isdigit() and int(step_text) > 0):
            raise InvalidInput(f"--cron {expr!r}: step {step_text!r} is not a whole number.")
        step = int(step_text or 1)
        if span == "*":
            lo, hi = 0, 6
        elif "-" in span:
            first, _, last = span.partition("-")
            lo, hi = day(first), day(last)
            if lo > hi:
                raise InvalidInput(f"--cron {expr!r}: weekday range {span!r} runs backwards "
                                   "(write it as two ranges, e.g. 5-6,0).")
        else:
            lo = day(span)
            hi = 7 if step_text else lo
        chosen.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_DAYS[d] for d in sorted(chosen))


def parse_cron(expr: str) -> BaseTrigger:
    """A crontab expression (minute hour day month weekday, in UTC) as a trigger, with
    crontab's meaning: weekdays 0 and 7 are Sunday, and when both the day of the month
    and the weekday are given, either one matching is enough."""
    fields = expr.split()
    if len(fields) != 5:
        raise InvalidInput(f"--cron {expr!r}: not a crontab expression — give five fields, "
                           "minute hour day month weekday (e.g. '0 2 * * *').")
    minute, hour, day, month, weekday = fields
    weekday = _crontab_days(weekday, expr)
    try:
        def cron(day_: str, weekday_: str) -> CronTrigger:
            return CronTrigger(minute=minute, hour=hour, day=day_, month=month,
                               day_of_week=weekday_, timezone=UTC)

        if day != "*" and weekday != "*":
            return OrTrigger([cron(day, "*"), cron("*", weekday)])
        return cron(day, weekday)
    except ValueError as error:
        raise InvalidInput(
            f"--cron {expr!r}: not a crontab expression (minute hour day month weekday, "
            f"e.g. '0 2 * * *'): {error}"
        ) from None


@dataclass
class JobDef:
    id: int
    name: str
    kind: str
    target: str | None
    every_seconds: int | None
    cron: str | None
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    max_retries: int = 3
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 3600.0
    created_at: str | None = None
    created_by: str | None = None

    def trigger(self, last_start: dt.datetime | None = None) -> BaseTrigger:
        """When the job runs.  An interval counts from the job's last run (``last_start``,
        by whichever process), not from when this scheduler started — a ``--every 1d``
        job on a computer switched on each morning used to never run; a job overdue runs
        now.  Never run: one interval from now."""
        if self.cron:
            return parse_cron(self.cron)
        every = dt.timedelta(seconds=int(self.every_seconds or 0))
        if last_start is None:
            return IntervalTrigger(seconds=int(self.every_seconds or 0), timezone=UTC)
        now = dt.datetime.now(UTC)
        return IntervalTrigger(seconds=int(self.every_seconds or 0), timezone=UTC,
                               start_date=max(last_start + every, now + dt.timedelta(seconds=1)))

    def schedule_text(self) -> str:
        return f"cron {self.cron}" if self.cron else f"every {_human(self.every_seconds or 0)}"

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1 = the first retry)."""
        return float(min(self.retry_max_seconds,
                         self.retry_base_seconds * (2 ** max(0, attempt - 1))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "target": self.target,
            "schedule": self.schedule_text(), "every_seconds": self.every_seconds,
            "cron": self.cron, "options": self.options, "enabled": self.enabled,
            "max_retries": self.max_retries, "retry_base_seconds": self.retry_base_seconds,
            "retry_max_seconds": self.retry_max_seconds, "created_at": self.created_at,
            "created_by": self.created_by,
        }


def _human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_JOB_COLUMNS = (
    "fid, name, kind, target, every_seconds, cron, options, enabled, max_retries, "
    "retry_base_seconds, retry_max_seconds, created_at, created_by"
)


def _job(row: Any) -> JobDef:
    return JobDef(
        int(row.fid), row.name, row.kind, row.target, row.every_seconds, row.cron,
        json_value(row.options) or {}, bool(row.enabled), int(row.max_retries),
        float(row.retry_base_seconds), float(row.retry_max_seconds), row.created_at,
        row.created_by,
    )


def _refuse_taken(conn: Any, name: str) -> None:
    if conn.execute(text("SELECT 1 FROM schedule_job WHERE name = :n"), {"n": name}).first():
        raise ConflictError(f"A job named {name!r} already exists; remove it first or choose "
                            "--name.")


def check_job(
    reg: Registry,
    kind: str,
    *,
    every: str | int | None = None,
    cron: str | None = None,
    target: str | None = None,
    name: str | None = None,
    options: dict[str, Any] | None = None,
    max_retries: int = 3,
    retry_base_seconds: float = 30.0,
    retry_max_seconds: float = 3600.0,
) -> tuple[int | None, dict[str, Any], str]:
    """A job definition checked as ``add_job`` would store it, without storing it:
    (interval seconds, options as stored, name).  ``schedule add`` checks first, so a
    refused job never leaves its target written in the secrets file."""
    spec = job_kind(kind)
    if (every is None) == (cron is None):
        raise InvalidInput("Give either --every (e.g. 1h) or --cron (e.g. '0 2 * * *').")
    every_seconds = parse_interval(every) if every is not None else None
    if cron is not None:
        parse_cron(cron)
    if spec.needs_target and not target:
        raise InvalidInput(f"The {kind} job needs --target NAME (an entry of the secrets file).")
    options = dict(options or {})
    for key, value in options.items():
        if re.search(r"pass(word)?|token|secret", key, re.I) or (
            isinstance(value, str) and re.search(r"://[^/@\s]+:[^/@\s]+@", value)
        ):
            raise InvalidInput(
                f"Option {key!r} looks like a credential; credentials go in the secrets file, "
                "never in the registry."
            )
    # Unknown keys first: a misspelt key ("sourc=SL") is why a required one ("source")
    # looks missing, and the message must name the typo (review #25).
    unknown = set(options) - set(spec.options)
    if unknown:
        import difflib

        meant = [f"{key} (did you mean {close[0]}?)" if close else key
                 for key in sorted(unknown)
                 for close in [difflib.get_close_matches(key, list(spec.options), n=1)]]
        raise InvalidInput(
            f"Option(s) {', '.join(meant)} mean nothing to {kind}; it takes "
            f"{', '.join(spec.options) or 'no options'}."
        )
    missing = [key for key in spec.required if options.get(key) in (None, "")]
    if missing:
        raise InvalidInput(
            f"The {kind} job needs " + ", ".join(f"--option {k}=…" for k in missing) + "."
        )
    options = {key: _checked_option(kind, key, value) for key, value in options.items()}
    if kind == "dhis2-pull" and options.get("prefer") and not options.get("since"):
        raise InvalidInput(
            "Option prefer=remote of dhis2-pull settles units changed both here and in DHIS2 "
            "during an incremental pull: give it with since=last. A pull without since makes "
            "a new version each run and overwrites nothing.")
    if max_retries < 0 or retry_base_seconds <= 0 or retry_max_seconds < retry_base_seconds:
        raise InvalidInput("Retries: need retries ≥ 0 and 0 < retry delay ≤ maximum delay.")
    name = name or (f"{kind}-{target}" if target else kind)
    with reg.read() as conn:
        _refuse_taken(conn, name)
    return every_seconds, options, name


def add_job(
    reg: Registry,
    kind: str,
    *,
    every: str | int | None = None,
    cron: str | None = None,
    target: str | None = None,
    name: str | None = None,
    options: dict[str, Any] | None = None,
    max_retries: int = 3,
    retry_base_seconds: float = 30.0,
    retry_max_seconds: float = 3600.0,
    enabled: bool = True,
    origin: str = "api",
    secrets_file: str | Path | None = None,
) -> dict[str, Any]:
    """Store a job definition (never credentials: ``target`` names a secrets entry).

    ``secrets_file``: the job's target is in that file, not where secrets are looked for
    by default — its path (not a secret) is kept with the job's options, so a server
    started without ``--secrets`` still finds it."""
    every_seconds, options, name = check_job(
        reg, kind, every=every, cron=cron, target=target, name=name, options=options,
        max_retries=max_retries, retry_base_seconds=retry_base_seconds,
        retry_max_seconds=retry_max_seconds)
    if secrets_file is not None:
        options[SECRETS_OPTION] = str(Path(secrets_file).expanduser().resolve())
    with reg.write(origin=origin, audit=False) as conn:
        _refuse_taken(conn, name)
        author = conn.execute(
            text("SELECT author FROM edit_context WHERE fid = 1")
            if conn.dialect.name == "sqlite"
            else text("SELECT NULLIF(current_setting('georeg.author', true), '')")
        ).scalar()
        conn.execute(
            text(
                "INSERT INTO schedule_job (name, kind, target, every_seconds, cron, options, "
                "enabled, max_retries, retry_base_seconds, retry_max_seconds, created_by) "
                "VALUES (:n, :k, :t, :e, :c, :o, :en, :r, :rb, :rm, :by)"
            ),
            {"n": name, "k": kind, "t": target, "e": every_seconds, "c": cron,
             "o": json.dumps(options), "en": enabled, "r": max_retries,
             "rb": retry_base_seconds, "rm": retry_max_seconds, "by": author},
        )
    return get_job(reg, name).to_dict()


def get_job(reg: Registry, name: str) -> JobDef:
    with reg.read() as conn:
        row = conn.execute(
            text(f"SELECT {_JOB_COLUMNS} FROM schedule_job WHERE name = :n"), {"n": name}
        ).first()
        if row is None:
            names = [r[0] for r in conn.execute(text("SELECT name FROM schedule_job ORDER BY name"))]
    if row is None:
        hint = f" Jobs: {', '.join(names)}." if names else " There are no jobs yet."
        raise NotFound(f"No scheduled job named {name!r}.{hint}")
    return _job(row)


def jobs(reg: Registry) -> list[JobDef]:
    with reg.read() as conn:
        return [_job(r) for r in conn.execute(
            text(f"SELECT {_JOB_COLUMNS} FROM schedule_job ORDER BY name")
        )]


def _last_runs(reg: Registry) -> dict[str, Any]:
    """The newest run of each job (any process, any trigger)."""
    with reg.read() as conn:
        return {
            r.job_name: r for r in conn.execute(text(
                "SELECT r.fid, r.job_name, r.started_at, r.outcome, r.attempt, r.error, "
                "r.retry_at FROM schedule_run r WHERE r.fid IN (SELECT max(fid) FROM "
                "schedule_run GROUP BY job_name)"
            ))
        }


def _moment(text_: Any) -> dt.datetime | None:
    """A stored time (``…Z``) as a datetime; None for none or garbage."""
    if not text_:
        return None
    try:
        moment = dt.datetime.fromisoformat(str(text_).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def list_jobs(reg: Registry) -> list[dict[str, Any]]:
    """Every job with its last run and (for enabled jobs) its next planned run."""
    out = []
    now = dt.datetime.now(UTC)
    last = _last_runs(reg)
    for job in jobs(reg):
        data = job.to_dict()
        run = last.get(job.name)
        data["last_run"] = (
            {"started_at": run.started_at, "outcome": run.outcome, "attempt": run.attempt,
             "error": run.error, "retry_at": run.retry_at} if run else None
        )
        nxt = None
        if job.enabled:
            try:  # (a job row written by hand may hold anything: the others still list)
                if job.cron:
                    nxt = job.trigger().get_next_fire_time(None, now)
                else:  # an interval counts from the last run (from now when it never ran)
                    every = dt.timedelta(seconds=job.every_seconds or 0)
                    last_start = _moment(run.started_at) if run is not None else None
                    nxt = now + every if last_start is None else max(last_start + every, now)
            except (GeoregError, ValueError, OverflowError) as error:
                data["error"] = f"this job cannot be scheduled: {error}"
        data["next_run"] = _iso(nxt) if nxt else None
        out.append(data)
    return out


def remove_job(reg: Registry, name: str, origin: str = "api") -> dict[str, Any]:
    job = get_job(reg, name)
    with reg.write(origin=origin, audit=False) as conn:
        conn.execute(text("DELETE FROM schedule_job WHERE fid = :f"), {"f": job.id})
    return {"removed": name, "kind": job.kind}


def set_enabled(reg: Registry, name: str, enabled: bool, origin: str = "api") -> dict[str, Any]:
    job = get_job(reg, name)
    with reg.write(origin=origin, audit=False) as conn:
        conn.execute(text("UPDATE schedule_job SET enabled = :e WHERE fid = :f"),
                     {"e": enabled, "f": job.id})
    return get_job(reg, name).to_dict()


def history(reg: Registry, name: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Runs, newest first."""
    sql = ("SELECT fid, job_name, kind, triggered_by, attempt, started_at, ended_at, outcome, "
           "figures, error, retry_at FROM schedule_run")
    params: dict[str, Any] = {"l": limit}
    if name:
        sql += " WHERE job_name = :n"
        params["n"] = name
    sql += " ORDER BY fid DESC LIMIT :l"
    with reg.read() as conn:
        rows = conn.execute(text(sql), params).all()
    return [
        {"id": r.fid, "job": r.job_name, "kind": r.kind, "triggered_by": r.triggered_by,
         "attempt": r.attempt, "started_at": r.started_at, "ended_at": r.ended_at,
         "outcome": r.outcome, "figures": json_value(r.figures) or {}, "error": r.error,
         "retry_at": r.retry_at}
        for r in rows
    ]


# --- running ---------------------------------------------------------------------------------


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class RunResult:
    run_id: int
    outcome: str
    figures: dict[str, Any]
    error: str | None
    retry_in: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _figures(result: Any) -> dict[str, Any]:
    """The figures worth keeping in the history (counts, not long lists)."""
    if not isinstance(result, dict):
        return {"result": result}
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, list):
            # what a person must read (conflicts, warnings, refusals) is kept, the first
            # twenty; other lists are counted
            out[key] = value[:20] if key in ("conflicts", "warnings", "refused", "notes",
                                              "errors") else len(value)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[key] = value
    return out


@contextlib.contextmanager
def job_lock(reg: Registry, name: str) -> Iterator[bool]:
    """Hold the right to run job ``name``: yields False when another process holds it.

    Several processes may run the same registry's schedule — two ``georeg serve`` on one
    PostGIS registry, a server and a ``schedule run-now`` on one file — and a job must
    not run twice at once.  PostgreSQL: a session advisory lock; a registry file: an
    ``flock`` on a small lock file beside it.  Both are released by the operating
    system or the server when the holder dies, so a killed process never leaves a job
    locked.
    """
    if reg.location.path is None:  # PostgreSQL: advisory locks are per database
        key = f"georeg.schedule:{reg.location.schema}:{name}"
        lock_id = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(),
                                 "big", signed=True)
        with reg.engine.connect() as conn:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                    {"k": lock_id}).scalar_one())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
                    conn.commit()
        return
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    lock_path = Path(f"{reg.location.path}.schedule-{safe}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def held_note(job: JobDef, figures: dict[str, Any]) -> str | None:
    """What a run that held conflicts tells the person reading the schedule: how many,
    and what settles them.  That depends on the job — a DHIS2 pull is settled with
    DHIS2's commands, not PostGIS's — and, for PostGIS, on the kind of conflict: a
    ``--prefer-…`` flag settles units changed on both sides, but not the units of a
    version published here (a pull cannot change it) nor a version published centrally
    while edited here (a push cannot send into it)."""
    held = int(figures.get("conflict_count") or 0)
    if job.kind == "dhis2-pull":  # conflict_count: units held; groups counted apart
        groups = int(figures.get("group_conflict_count") or 0)
        if not held and not groups:
            return None
        source = shlex.quote(str(job.options.get("source") or "S"))
        what = " and ".join(
            [f"{held} unit(s) changed"] * bool(held) + [f"{groups} group(s) renamed"] * bool(groups))
        return (f"{what} both here (not pushed yet) and in DHIS2: kept as "
                "they are here, not overwritten, and read again by every incremental pull "
                "until settled (the run's conflicts: 'georeg schedule history --json'). Send "
                "this side's with 'georeg dhis2 push', or take DHIS2's with 'georeg dhis2 pull "
                f"REG --source {source} --url … --since last --prefer-remote'.")
    if not held:
        return None
    if not job.kind.startswith("postgis-"):
        return (f"{held} change(s) on both sides held, not overwritten: the run's conflicts "
                "('georeg schedule history --json') list them.")
    frozen = int(figures.get("conflicting_units_published_here") or 0)
    units = int(figures.get("conflicting_units") or 0) - frozen
    said: list[str] = []
    if units > 0:
        said.append(f"{units} unit(s) changed on both sides held, not overwritten: make both "
                    "sides equal, or choose one with 'sync postgis push --prefer-local' or "
                    "'sync postgis pull --prefer-central'.")
    if frozen:
        said.append(f"{frozen} unit(s) of a version published here differ centrally: a pull "
                    "cannot change a published version, so only 'sync postgis push "
                    "--prefer-local' (or the central units made equal) settles them.")
    versions = int(figures.get("conflicting_versions") or 0)
    if versions:
        said.append(f"{versions} version(s) in conflict:")
        rows = [c for c in figures.get("conflicts") or []
                if isinstance(c, dict) and c.get("kind") == "version"]
        for c in rows[:3]:
            label = f"{c.get('source')} v{c.get('version')}"
            if c.get("field") == "(status)":  # published centrally while edited here
                said.append(
                    f"{label} was published centrally while units of it changed here; a push "
                    "cannot send them (--prefer-local neither): keep them in a new draft, "
                    f"georeg version new REG --source {shlex.quote(str(c.get('source')))} "
                    f"--from {c.get('version')}, then pull (or 'sync postgis pull "
                    "--prefer-central', which does both).")
            else:  # deleted here, changed centrally
                said.append(
                    f"{label} was deleted here but changed centrally, and kept there: a pull "
                    "brings it back with those edits; 'sync postgis push --prefer-local' "
                    "deletes it anyway.")
        if len(rows) > 3 or not rows:
            said.append("The run's conflicts say what settles each.")
    said.append("'georeg sync postgis status' lists what is held.")
    return " ".join(said)


def execute(
    reg: Registry,
    job: JobDef,
    *,
    attempt: int = 1,
    triggered_by: str = "schedule",
    secrets_file: str | Path | None = None,
) -> RunResult:
    """Run one job once and record the run (outcome, figures, error, planned retry).

    The caller holds the job's lock (``job_lock``): a run of this job still marked
    ``running`` is one whose process stopped (killed, power cut) — it is closed as
    failed, "interrupted", rather than shown running for ever.  Runs older than
    ``HISTORY_DAYS`` beyond the newest ``HISTORY_KEEP`` of the job are dropped."""
    started = dt.datetime.now(UTC)
    with reg.write(origin=SCHEDULER_ORIGIN, audit=False) as conn:
        conn.execute(
            text("UPDATE schedule_run SET outcome = 'failed', ended_at = :e, error = :err "
                 "WHERE job_name = :n AND outcome = 'running'"),
            {"e": _iso(started), "n": job.name, "err": INTERRUPTED})
        conn.execute(
            text("DELETE FROM schedule_run WHERE job_name = :n AND started_at < :cut AND fid "
                 "NOT IN (SELECT fid FROM schedule_run WHERE job_name = :n ORDER BY fid DESC "
                 "LIMIT :keep)"),
            {"n": job.name, "keep": HISTORY_KEEP,
             "cut": _iso(started - dt.timedelta(days=HISTORY_DAYS))})
        run_id = int(conn.execute(
            text(
                "INSERT INTO schedule_run (job_id, job_name, kind, triggered_by, attempt, "
                "started_at) VALUES (:j, :n, :k, :t, :a, :s) RETURNING fid"
            ),
            {"j": job.id, "n": job.name, "k": job.kind, "t": triggered_by, "a": attempt,
             "s": _iso(started)},
        ).scalar_one())
    figures: dict[str, Any] = {}
    error: str | None = None
    try:
        runner = resolve_runner(job.kind)
        secret: dict[str, Any] = {}
        options = dict(job.options)
        own_file = options.pop(SECRETS_OPTION, None)  # where the job was told its target is
        if job.target:
            location = reg.location.path or reg.location.url
            secret = get_target(secrets_path(location, secrets_file or own_file), job.target)
        figures = _figures(runner(reg, secret, options))
        outcome = "ok"
        error = held_note(job, figures)  # done, but someone must look: said where shown
    except GeoregError as failure:
        outcome, error = "failed", failure.message
    except Exception as failure:  # noqa: BLE001 - any failure is recorded and retried
        outcome, error = "failed", f"{type(failure).__name__}: {failure}"
    retry_in = job.backoff(attempt) if outcome == "failed" and attempt <= job.max_retries else None
    ended = dt.datetime.now(UTC)
    with reg.write(origin=SCHEDULER_ORIGIN, audit=False) as conn:
        conn.execute(
            text(
                "UPDATE schedule_run SET ended_at = :e, outcome = :o, figures = :f, error = :err, "
                "retry_at = :r WHERE fid = :id"
            ),
            {"e": _iso(ended), "o": outcome, "f": json.dumps(figures, default=str),
             "err": error, "id": run_id,
             "r": _iso(ended + dt.timedelta(seconds=retry_in)) if retry_in is not None else None},
        )
    return RunResult(run_id, outcome, figures, error, retry_in)


def run_now(
    reg: Registry,
    name: str,
    *,
    retry: bool = False,
    secrets_file: str | Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[RunResult]:
    """Run a job now, in this process; with ``retry``, retry failures with backoff."""
    job = get_job(reg, name)
    results = []
    attempt = 1
    while True:
        with job_lock(reg, name) as mine:
            if not mine:
                raise ConflictError(
                    f"Job {name!r} is running in another process (a server or another "
                    "command); try again when it has finished.")
            result = execute(reg, job, attempt=attempt, triggered_by="run-now"
                             if attempt == 1 else "retry", secrets_file=secrets_file)
        results.append(result)
        if result.outcome == "ok" or not retry or result.retry_in is None:
            return results
        sleep(result.retry_in)
        attempt += 1


class Scheduler:
    """The jobs of one registry, run by an APScheduler ``BackgroundScheduler``.

    ``start()`` returns at once (the jobs run in worker threads): ``georeg serve`` keeps
    one alive beside the web server; ``georeg schedule serve`` runs one in the
    foreground.  Job definitions are re-read every ``reload_seconds``.
    """

    def __init__(self, location: str | Path, *, secrets_file: str | Path | None = None,
                 reload_seconds: float = 30.0) -> None:
        self.location = location
        self.secrets_file = secrets_file
        self.reload_seconds = reload_seconds
        self.reg: Registry | None = None
        self._aps = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
        )
        self._locks: dict[str, threading.Lock] = {}
        self._loaded: dict[str, tuple[Any, ...]] = {}

    # life cycle
    def start(self) -> Scheduler:
        self.reg = Registry.open(self.location)
        self.reload()
        self._aps.add_job(self.reload, IntervalTrigger(seconds=self.reload_seconds, timezone=UTC),
                          id="georeg:reload", replace_existing=True)
        self._aps.start()
        return self

    def shutdown(self, wait: bool = True) -> None:
        if self._aps.running:
            self._aps.shutdown(wait=wait)
        if self.reg is not None:
            self.reg.close()

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def running(self) -> bool:
        return bool(self._aps.running)

    def planned(self) -> dict[str, str | None]:
        """Next run time of each scheduled job (and pending retries)."""
        return {
            job.id: _iso(job.next_run_time) if job.next_run_time else None
            for job in self._aps.get_jobs() if job.id != "georeg:reload"
        }

    def reload(self) -> None:
        """Bring the APScheduler jobs in line with the registry's ``schedule_job`` table.

        A job loaded here for the first time takes up where the history left it: its
        interval counts from its last run, and a retry planned by a process that
        stopped is planned again.  A job that cannot be scheduled (a row written by
        hand) is logged and left out; the others run."""
        assert self.reg is not None
        current = {j.name: j for j in jobs(self.reg) if j.enabled}
        for name in set(self._loaded) - set(current):
            self._remove(name)
        last = _last_runs(self.reg)
        for name, job in current.items():
            signature = (job.kind, job.target, job.every_seconds, job.cron,
                         json.dumps(job.options, sort_keys=True))
            if self._loaded.get(name) == signature:
                continue
            run = last.get(name)
            try:
                self._aps.add_job(self._fire, job.trigger(_moment(run.started_at) if run else None),
                                  args=[name], id=f"job:{name}", name=name,
                                  replace_existing=True)
            except (GeoregError, ValueError, OverflowError) as error:
                LOG.error("Scheduled job %r left out: %s", name, error)
                continue
            self._locks.setdefault(name, threading.Lock())
            first = name not in self._loaded
            self._loaded[name] = signature
            if first and run is not None and run.outcome == "failed" and run.retry_at:
                self._retry(name, int(run.attempt) + 1, int(run.fid),
                            _moment(run.retry_at) or dt.datetime.now(UTC))

    def _remove(self, name: str) -> None:
        for prefix in ("job:", "retry:"):
            if self._aps.get_job(prefix + name) is not None:
                self._aps.remove_job(prefix + name)
        self._loaded.pop(name, None)

    # runs
    def _retry(self, name: str, attempt: int, failed_run: int | None, when: dt.datetime
               ) -> None:
        """Run job ``name`` again at ``when``.  ``failed_run``: the run that failed (a
        later success cancels the retry); None when no run could even be recorded."""
        when = max(when, dt.datetime.now(UTC) + dt.timedelta(seconds=1))
        self._aps.add_job(
            self._fire, DateTrigger(run_date=when, timezone=UTC), args=[name],
            kwargs={"attempt": attempt, "triggered_by": "retry", "failed_run": failed_run},
            id=f"retry:{name}", name=f"{name} (retry {attempt - 1})", replace_existing=True,
        )

    def _fire(self, name: str, attempt: int = 1, triggered_by: str = "schedule",
              failed_run: int | None = None) -> None:
        assert self.reg is not None
        lock = self._locks.setdefault(name, threading.Lock())
        if not lock.acquire(blocking=False):
            return  # the previous run of this job is still going
        job: JobDef | None = None
        try:
            job = get_job(self.reg, name)
            if not job.enabled:
                return
            if failed_run is not None and self._succeeded_since(name, failed_run):
                return  # a scheduled run already made up for the failure
            with job_lock(self.reg, name) as mine:
                if not mine:
                    return  # another process (a second server) runs this job right now
                if triggered_by == "schedule" and self._ran_lately(job):
                    return
                result = execute(self.reg, job, attempt=attempt, triggered_by=triggered_by,
                                 secrets_file=self.secrets_file)
            if result.outcome == "failed" and result.retry_in is not None:
                self._retry(name, attempt + 1, result.run_id,
                            dt.datetime.now(UTC) + dt.timedelta(seconds=result.retry_in))
        except NotFound:
            return  # removed meanwhile
        except GeoregError as error:
            # the run could not even be recorded (the registry locked by a long import, a
            # database gone): one line, and the run is tried again later
            delay = job.backoff(attempt) if job is not None else 60.0
            LOG.warning("Job %r could not run (%s); trying again in %.0f s.", name,
                        error.message, delay)
            if job is not None and attempt <= job.max_retries:
                # (not "the run that failed": none was recorded, and any success of the
                # job's past would cancel the retry)
                self._retry(name, attempt + 1, failed_run,
                            dt.datetime.now(UTC) + dt.timedelta(seconds=delay))
        finally:
            lock.release()

    def _ran_lately(self, job: JobDef) -> bool:
        """Whether another process (or a run-now) already ran this occurrence: two servers
        on one registry would otherwise each run an interval job once per interval.  An
        interval job then waits a whole interval from that run."""
        assert self.reg is not None
        run = _last_runs(self.reg).get(job.name)
        started = _moment(run.started_at) if run is not None else None
        if started is None:
            return False
        gap = 0.9 * job.every_seconds if job.every_seconds else 50.0  # (cron: a minute)
        if (dt.datetime.now(UTC) - started).total_seconds() >= gap:
            return False
        if job.every_seconds:
            self._aps.reschedule_job(f"job:{job.name}", trigger=job.trigger(started))
        return True

    def _succeeded_since(self, name: str, run_id: int) -> bool:
        assert self.reg is not None
        with self.reg.read() as conn:
            return conn.execute(
                text("SELECT 1 FROM schedule_run WHERE job_name = :n AND fid > :r "
                     "AND outcome = 'ok'"),
                {"n": name, "r": run_id},
            ).first() is not None


def start_in_process(registry_location: str | Path, *, secrets_file: str | Path | None = None,
                     reload_seconds: float = 30.0) -> Scheduler:
    """Run the registry's scheduled jobs in this process, in background threads; for
    ``georeg serve``.  Returns at once with the handle: ``handle.shutdown()`` stops it
    (waits for a running job), ``handle.running``, ``handle.planned()`` (next run per job).

    Jobs added, changed or removed in the registry meanwhile (CLI, REST API) are picked up
    within ``reload_seconds``.  Each run is recorded in ``schedule_run``; failures are
    retried with backoff.  The scheduler opens its own connection to the registry.
    """
    return Scheduler(registry_location, secrets_file=secrets_file,
                     reload_seconds=reload_seconds).start()


def run_scheduler(location: str | Path, *, secrets_file: str | Path | None = None,
                  block: bool = True, reload_seconds: float = 30.0,
                  stopping: Callable[[str], None] | None = None) -> Scheduler:
    """Start the scheduler for a registry; with ``block``, until Ctrl-C or SIGTERM (a
    service manager stopping it): a running job is waited for, and ``stopping`` is told
    so; a second Ctrl-C abandons it (its run is closed as interrupted next time)."""
    if not block:
        return Scheduler(location, secrets_file=secrets_file,
                         reload_seconds=reload_seconds).start()

    def terminate(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    scheduler = Scheduler(location, secrets_file=secrets_file, reload_seconds=reload_seconds)
    try:
        scheduler.start()
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        busy = [name for name, lock in scheduler._locks.items() if lock.locked()]
        if busy and stopping is not None:
            stopping(f"Stopping: waiting for {', '.join(sorted(busy))} to finish "
                     "(Ctrl-C again to abandon it).")
    finally:
        try:
            scheduler.shutdown()
        finally:
            signal.signal(signal.SIGTERM, previous)
    return scheduler
