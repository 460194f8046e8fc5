"""The ``georeg`` command line: thin commands over the storage API.

Every command returns plain data from the core and renders it as text, or as
JSON with ``--json``.  Errors are :class:`storage.errors.GeoregError`s, printed
in the user's terms with an exit code that says what kind of problem it was
(see ``docs/cli.md``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape

from georeg import render
from storage.errors import ConflictError, GeoregError, InvalidInput

if TYPE_CHECKING:
    from storage.jobs import Job
    from storage.registry import Registry

# Start-up time matters (every command pays it): what is heavy (SQLAlchemy, Alembic,
# shapely, pandas …) is imported by the command that needs it, and the commands of the
# georeg/cli_*.py modules are loaded when they are used (see LazyGroup below).

ORIGIN = "cli"
err_console = Console(stderr=True)

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 error, 2 bad input, 3 set-up problem, 4 not found, "
    "5 conflict (duplicate, cycle, published version, output file exists), "
    "6 integrity findings (check), "
    "7 the two sides differ (sync postgis status --compare), 130 cancelled."
)


def emit(ctx_json: bool, data: Any, text: Callable[[Any], str] | None = None) -> None:
    if ctx_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    elif text is not None:
        click.echo(text(data))
    else:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def command(group: click.Group, name: str, **kw: Any) -> Callable[[Callable[..., Any]], Any]:
    """A subcommand with ``--json`` and translation of our errors into exit codes."""

    def wrap(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            global _commands_running
            _commands_running += 1
            try:
                try:
                    return fn(*args, **kwargs)
                except OSError as os_error:
                    raise GeoregError(
                        f"{os_error.strerror or os_error}: {os_error.filename or ''}".strip(": ")
                    ) from os_error
                except Exception as error:
                    ours = _database_error(error)
                    if ours is None:
                        raise
                    raise ours from error
            except KeyboardInterrupt:
                # Ctrl-C before a job finished (one that finished ignores it, see
                # run_job): what had begun was rolled back on the way out
                from storage.errors import Cancelled

                stopped = Cancelled("Cancelled (Ctrl-C); nothing was changed.")
                if kwargs.get("as_json"):
                    click.echo(json.dumps(stopped.to_dict(), ensure_ascii=False), err=True)
                else:
                    err_console.print(f"[bold red]Error:[/] {escape(stopped.message)}",
                                      highlight=False)
                sys.exit(stopped.exit_code)
            except GeoregError as error:
                if kwargs.get("as_json"):
                    click.echo(json.dumps(error.to_dict(), ensure_ascii=False), err=True)
                else:
                    err_console.print(f"[bold red]Error:[/] {escape(error.message)}", highlight=False)
                sys.exit(error.exit_code)
            finally:
                _commands_running -= 1
                _restore_sigint()

        run = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(
            run
        )
        return group.command(name, **kw)(run)

    return wrap


def _database_error(error: Exception) -> GeoregError | None:
    """A SQLAlchemy database error in the user's terms; None for any other error."""
    if "sqlalchemy" not in sys.modules:  # nothing has touched a database
        return None
    from sqlalchemy.exc import DBAPIError

    if not isinstance(error, DBAPIError):
        return None
    from storage.registry import translate_db_error

    return translate_db_error(error)


def open_registry(reg: str) -> Registry:
    from storage.registry import Registry

    return Registry.open(reg)


#: SIGINT's handler before :func:`_finished` ignored it (restored when the command ends)
_saved_sigint: Any = None
#: commands running (``command``'s wrapper): only inside one is SIGINT ignored
_commands_running = 0


def _finished() -> None:
    """A job has committed its work: Ctrl-C from now on (while the result is printed, the
    files closed) must not say "cancelled, nothing was changed" (exit code 130) — a
    script would run it again and import a second copy.  The rest of the command is
    quick, so Ctrl-C is ignored until it ends (then :func:`entry` ignores it while the
    process exits)."""
    import signal
    import threading

    global _saved_sigint
    if _commands_running and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        if _saved_sigint is None:
            _saved_sigint = previous


def _restore_sigint() -> None:
    import signal

    global _saved_sigint
    if _saved_sigint is not None:
        signal.signal(signal.SIGINT, _saved_sigint)
        _saved_sigint = None


def run_job(job: Job[Any], as_json: bool) -> Any:
    """Run a job with a progress bar on the terminal (not with --json); Ctrl-C cancels
    (exit code 130), with or without a terminal — until the job has finished."""
    if as_json or not sys.stderr.isatty():
        try:
            result = job.run()
        except KeyboardInterrupt:  # (what it had begun is rolled back on the way out)
            from storage.errors import Cancelled

            raise Cancelled(f"{job.title}: cancelled (Ctrl-C).") from None
        _finished()
        return result
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
        console=err_console, transient=True,
    ) as bar:
        task = bar.add_task(job.title, total=None)
        job.on_progress(
            lambda p: bar.update(task, completed=p.done, total=p.total, description=p.message
                                 or job.title)
        )
        job.start()
        try:
            while not job.wait(0.1):
                pass
        except KeyboardInterrupt:
            job.cancel()
            bar.update(task, description=f"{job.title}: cancelling …")
        result = job.finalize()
        _finished()  # before the bar closes: a Ctrl-C while it does must not say "cancelled"
    return result


REG = click.argument("reg", metavar="REG")
SOURCE = click.option(
    "--source", "-s", default=None,
    help="Data source name (may be left out when the registry has only one source).")
VERSION = click.option(
    "--version", "-v", "number", type=int, default=None,
    help="Version number (default: the source's default version, else its newest).",
)


def the_source(registry: Registry, source: str | None) -> str:
    """``--source`` as given, or the registry's only source when it was left out.

    Typing the one source's long name on every command was the first thing a new user
    met (review #28).  With two sources or more nothing is guessed: the error names them.
    """
    if source is not None:
        return source
    from sqlalchemy import text

    with registry.read() as conn:
        names = [str(r[0]) for r in conn.execute(
            text("SELECT name FROM data_source ORDER BY name LIMIT 11"))]
    if len(names) == 1:
        return names[0]
    if not names:
        raise InvalidInput("Give --source / -s: this registry has no data source yet (import "
                           "one with 'georeg import', or try 'georeg demo').")
    shown = ", ".join(repr(n) for n in names[:10]) + (" …" if len(names) > 10 else "")
    raise InvalidInput(f"Give --source / -s: this registry has several sources ({shown}).")


class LazyGroup(click.Group):
    """The top-level group: the commands of ``georeg/cli_*.py`` modules are known by
    name and short help (``LAZY_COMMANDS``) and their module is imported only when one
    of its commands runs, so no command pays for loading every other one.
    ``commands`` (as click and ``georeg.cli_docs`` read it) loads them all."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None,
                 **kwargs: Any) -> None:
        self._registered: dict[str, click.Command] = {}
        self._loaded: set[str] = set()
        self.lazy = dict(lazy or {})
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def commands(self) -> dict[str, click.Command]:
        self.load_all()
        return self._registered

    @commands.setter
    def commands(self, value: Any) -> None:
        self._registered = dict(value)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if name is None:
            raise TypeError("Command has no name.")
        self._registered[name] = cmd

    def load(self, module: str) -> None:
        """Import ``georeg.<module>`` and add its ``COMMANDS``."""
        if module in self._loaded:
            return
        self._loaded.add(module)
        for cmd in getattr(importlib.import_module(f"georeg.{module}"), "COMMANDS", []):
            self.add_command(cmd)

    def load_all(self) -> None:
        for module in sorted({m for m, _help in self.lazy.values()}):
            self.load(module)

    def main(self, args: Any = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        """As click's, but with ``--json`` a usage error (a missing argument, a bad
        option value) is JSON on stderr too, as every other error is (exit code 2)."""
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or "--json" not in argv:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            return super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as error:
            click.echo(json.dumps({"error": "usage", "message": error.format_message(),
                                   "exit_code": 2}, ensure_ascii=False), err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            sys.exit(1)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self._registered and cmd_name in self.lazy:
            self.load(self.lazy[cmd_name][0])
        return self._registered.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self._registered) | set(self.lazy))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click does, with the short help of commands not loaded from the table."""
        rows: list[tuple[str, click.Command | str]] = []
        for name in self.list_commands(ctx):
            cmd = self._registered.get(name)
            if cmd is None:
                rows.append((name, self.lazy[name][1]))
            elif not cmd.hidden:
                rows.append((name, cmd))
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _cmd in rows)
        listed: list[tuple[str, str]] = []
        for name, entry in rows:
            if isinstance(entry, str):  # shortened as click shortens a command's help
                listed.append((name, click.Command(name, help=entry).get_short_help_str(limit)))
            else:
                listed.append((name, entry.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(listed)


#: The top-level commands of the georeg/cli_*.py modules: name -> (module, short help as
#: ``georeg --help`` lists it).  A cli_*.py module with no entry here is imported at
#: start-up (as every module was before); tests/test_cli_startup.py checks this table
#: against the modules and prints the right one when it is out of date.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "changes": ("cli_changes",
        "Change requests from the field (Iaso app): list, show, approve, "
        "reject."),
    "conflicts": ("cli_merge",
        "List and resolve merge conflicts (a version with open conflicts cannot "
        "be published)."),
    "dhis2": ("cli_dhis2",
        "Pull org units from DHIS2 into a version, push a version back to "
        "DHIS2."),
    "diff": ("cli_compare",
        "Compare version S:A (before) with S:B (after): new, modified, moved, "
        "closed, deleted and unchanged units, field by field, with geometry "
        "changes in metres."),
    "forms": ("cli_server", "Forms served to ODK Collect and the Iaso app."),
    "group": ("cli_types", "Org-unit groups of a version (edited in a draft): list, add, rename."),
    "link": ("cli_match", "Review links: accept, reject, or relink to another unit."),
    "links": ("cli_match", "List the links of a matching run, with their evidence."),
    "match": ("cli_match",
        "Match the units of LEFT and RIGHT (each SOURCE or SOURCE:VERSION) and "
        "store the links."),
    "merge": ("cli_merge",
        "Merge a version of another source into TARGET by links and rules (a "
        "new draft)."),
    "merge3": ("cli_merge",
        "3-way merge of two drafts of one source into a new draft; overlaps "
        "become conflicts."),
    "projects": ("cli_server", "Projects of the Iaso app (an app id forms are attached to)."),
    "schedule": ("cli_sync", "Scheduled sync jobs stored in the registry, with a run history."),
    "serve": ("cli_server", "Serve the registry on the LAN for ODK Collect and the Iaso app."),
    "submissions": ("cli_server",
        "List or export submissions (attachments zipped beside the export)."),
    "sync": ("cli_sync", "Sync the registry with upstream systems (a central PostGIS)."),
    "type": ("cli_types",
        "Org-unit types (shared by every source and version): list, add, rename."),
    'users': ('cli_server', "People who sign in to 'georeg serve' (ODK Collect, Iaso, pages)."),
}


@click.group(
    cls=LazyGroup,
    lazy=LAZY_COMMANDS,
    help="Georeg: versioned org-unit registries in a GeoPackage, SpatiaLite or PostGIS.\n\n"
    "REG is a registry file (*.gpkg, *.sqlite) or a postgresql:// URL "
    "(add ?schema=NAME for a schema other than public).\n\n" + EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="georeg", prog_name="georeg")
def main() -> None:
    pass


# --- registry -------------------------------------------------------------------------


@command(main, "init")
@REG
@click.option("--force", is_flag=True, help="Replace an existing file (or schema) at REG.")
def init_cmd(reg: str, force: bool, as_json: bool) -> None:
    """Create an empty registry at REG."""
    from storage.registry import Registry

    with Registry.create(reg, overwrite=force) as registry:
        data = {"registry": registry.location.display(), "backend": registry.backend.value,
                "schema_revision": registry.schema_revision()}
    emit(as_json, data, lambda d: f"Created {d['backend']} registry {d['registry']}.")


@command(main, "demo")
@REG
@click.option("--force", is_flag=True, help="Replace an existing file (or schema) at REG.")
@click.option("--source", "source", default="Sierra Leone (DHIS2 demo)", show_default=True,
              help="Name of the data source to create.")
def demo_cmd(reg: str, force: bool, source: str, as_json: bool) -> None:
    """Build the Sierra Leone demo registry (DHIS2 demo data, bundled) at REG."""
    from storage.backends import Location
    from storage.registry import Registry
    from sync.dhis2_json import read_files
    from sync.importing import ImportJob

    data_dir = Path(__file__).parent / "demo_data" / "sierra-leone"
    payload = read_files(sorted(data_dir.glob("*.json")))
    final = Location.parse(reg).path
    if final is not None and final.exists() and not force:
        Registry.create(reg)  # (refuses, with the usual words)
    # A file is built beside REG and renamed into place once whole: Ctrl-C (or a crash)
    # half-way leaves no half-made registry — one that `make run` would then keep.
    building = (final.with_name(f".{final.stem}.building{final.suffix}")
                if final is not None else None)
    target = Location.parse(reg)
    schema_of_its_own = building is None and target.schema not in (None, "public")
    made_schema = False  # a PostgreSQL schema made by this command, not whole yet
    try:
        try:
            made = Registry.create(building or reg, overwrite=True if building else force)
        except ConflictError:  # (it holds a registry: not ours to drop)
            raise
        except BaseException:
            made_schema = schema_of_its_own  # interrupted while the schema was being made
            raise
        made_schema = schema_of_its_own
        with made as registry:
            job = ImportJob(registry, payload, source=source,
                            description="Sierra Leone DHIS2 demo (2.41), bundled with Georeg",
                            origin=ORIGIN)
            result = run_job(job, as_json)
            from storage.versions import publish_version

            publish_version(registry, source, result["version"]["number"], make_default=True,
                            origin=ORIGIN)
            result["version"]["status"] = "published"
        made_schema = False
        if building is not None and final is not None:
            for suffix in ("-wal", "-shm", "-journal"):  # an old registry's, with --force
                Path(f"{final}{suffix}").unlink(missing_ok=True)
            building.replace(final)
            building = None
        result["registry"] = Location.parse(reg).display()
    finally:
        if building is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{building}{suffix}").unlink(missing_ok=True)
        if made_schema:  # PostgreSQL, cancelled half-way: no half-made registry either
            _drop_schema(target)
    emit(as_json, result, render.import_result)


def _drop_schema(loc: Any) -> None:
    """Drop the schema a cancelled ``georeg demo`` made (never ``public``)."""
    import signal

    from storage.backends import make_engine

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: still cleaned
    engine = make_engine(loc)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{loc.schema}" CASCADE')
    finally:
        engine.dispose()
        signal.signal(signal.SIGINT, previous)


@command(main, "sources")
@REG
def sources_cmd(reg: str, as_json: bool) -> None:
    """List the data sources of a registry."""
    from storage.versions import list_sources

    with open_registry(reg) as registry:
        emit(as_json, list_sources(registry), render.sources)


@click.group("source", help="Manage data sources.")
def source_group() -> None:
    pass


main.add_command(source_group)


@command(source_group, "add")
@REG
@click.argument("name")
@click.option("--description", default=None)
def source_add_cmd(reg: str, name: str, description: str | None, as_json: bool) -> None:
    """Add a data source named NAME."""
    from storage.versions import create_source

    with open_registry(reg) as registry:
        emit(as_json, create_source(registry, name, description=description, origin=ORIGIN),
             lambda d: f"Added source {d['name']!r}.")


@command(main, "versions")
@REG
@SOURCE
def versions_cmd(reg: str, source: str | None, as_json: bool) -> None:
    """List the versions of a source."""
    from storage.versions import list_versions

    with open_registry(reg) as registry:
        source = the_source(registry, source)
        emit(as_json, list_versions(registry, source), _versions_text)


def _versions_text(data: list[dict[str, Any]]) -> str:
    """The versions with their ``version_id``: the id the registry's tables (org_unit,
    org_unit_territory …) filter on in QGIS, which is not the version number (ids count
    every source's versions together; review #5)."""
    if not data:
        return "This source has no version yet."
    return render._table(
        ["version", "version_id", "status", "default", "units", "created", "by",
         "description"],
        [[v["number"], v["id"], v["status"], "yes" if v["default"] else "", v["units"],
          (v["created_at"] or "")[:19], v["created_by"], v["description"]] for v in data],
    ) + ("\nIn QGIS, filter the registry's layers on version_id (e.g. \"version_id\" = "
          f"{data[-1]['id']}), not on the version number.")


@click.group("version", help="Create, publish and choose versions.")
def version_group() -> None:
    pass


main.add_command(version_group)


@command(version_group, "new")
@REG
@SOURCE
@click.option("--from", "from_number", type=int, default=None,
              help="Copy this version into the new draft (default: an empty draft).")
@click.option("--description", default=None)
def version_new_cmd(reg: str, source: str | None, from_number: int | None, description: str | None,
                    as_json: bool) -> None:
    """Make a new draft version of a source, empty or copied from --from N."""
    from storage.versions import create_version

    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = create_version(registry, source, copy_from=from_number, description=description,
                              origin=ORIGIN)
    emit(as_json, data, render.version_created)


@command(version_group, "publish")
@REG
@SOURCE
@click.option("--version", "-v", "number", type=int, required=True)
@click.option("--default", "make_default", is_flag=True,
              help="Also make it the version the server serves.")
def version_publish_cmd(reg: str, source: str | None, number: int, make_default: bool,
                        as_json: bool) -> None:
    """Publish a version: from then on it can never change."""
    from storage.versions import publish_version

    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = publish_version(registry, source, number, make_default=make_default, origin=ORIGIN)
    emit(as_json, data, lambda d: f"Published {d['label']}; it is now read-only.")


@command(version_group, "default")
@REG
@SOURCE
@click.option("--version", "-v", "number", type=int, required=True)
def version_default_cmd(reg: str, source: str | None, number: int, as_json: bool) -> None:
    """Make a version the source's default (the one served and used when none is named)."""
    from storage.versions import set_default_version

    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = set_default_version(registry, source, number, origin=ORIGIN)
    emit(as_json, data, lambda d: f"{d['label']} is now the default version.")


@command(version_group, "delete")
@REG
@SOURCE
@click.option("--version", "-v", "number", type=int, required=True)
@click.option("--force", is_flag=True,
              help="Delete a merge's draft even though conflicts were resolved in it (the "
              "resolutions are lost with it).")
def version_delete_cmd(reg: str, source: str | None, number: int, force: bool,
                       as_json: bool) -> None:
    """Delete a draft version (published versions cannot be deleted)."""
    from storage.versions import delete_version

    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = delete_version(registry, source, number, force=force, origin=ORIGIN)
    emit(as_json, data, lambda d: f"Deleted draft version {number} of {source!r}." + (
        f" {d['resolved_conflicts_lost']} resolved conflict(s) went with it."
        if d["resolved_conflicts_lost"] else "") + (
        f"\nIt was the default version: {source!r} has none now (the server's phones get no "
        f"units) — choose one with: georeg version default REG --source \"{source}\" -v N"
        if d["was_default"] else ""))


# --- tree -------------------------------------------------------------------------------


@command(main, "tree")
@REG
@SOURCE
@VERSION
@click.option("--max-depth", type=click.IntRange(min=1), default=None,
              help="Show this many levels, 1 or more (default: all levels).")
@click.option("--root", "root", default=None, help="Start at this unit (uuid or ref).")
def tree_cmd(reg: str, source: str | None, number: int | None, max_depth: int | None,
             root: str | None, as_json: bool) -> None:
    """Show the tree with the number of units below each node, and counts per level."""
    from storage.tree import counts, tree_summary

    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = tree_summary(registry, source, number, max_depth=max_depth, root=root)
        data["counts"] = counts(registry, source, number)
    emit(as_json, data, render.tree)


# --- units ------------------------------------------------------------------------------


@click.group("unit", help="Add, edit, move, close and delete org units (in a draft version).")
def unit_group() -> None:
    pass


main.add_command(unit_group)

UNIT = click.argument("unit", metavar="UNIT")


def _point(lon: float | None, lat: float | None) -> Any:
    if lon is None and lat is None:
        return None
    if lon is None or lat is None:
        raise InvalidInput("Give both --lon and --lat for a location.")
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise InvalidInput(f"--lon {lon} --lat {lat} is not a longitude/latitude in degrees.")
    from shapely import Point

    return Point(lon, lat)


#: the edits' counterpart of ``import --fix-geometry``
FIX_GEOMETRY = click.option(
    "--fix-geometry", is_flag=True,
    help="Repair a self-intersecting territory polygon instead of refusing it.")


def _territory(path: str | None) -> Any:
    if path is None:
        return None
    from sync.geojson_geometry import read_single_geometry

    return read_single_geometry(Path(path))


def _edits(**options: Any) -> dict[str, Any]:
    values = {k: v for k, v in options.items() if v is not None and v != ()}
    if "aliases" in values:
        values["aliases"] = list(values["aliases"])
    return values


@command(unit_group, "show")
@REG
@SOURCE
@VERSION
@UNIT
def unit_show_cmd(reg: str, source: str | None, number: int | None, unit: str,
                  as_json: bool) -> None:
    """Show one unit (by uuid or source ref)."""
    from storage.units import get_unit

    with open_registry(reg) as registry:
        source = the_source(registry, source)
        emit(as_json, get_unit(registry, source, unit, number), render.unit)


@command(unit_group, "add")
@REG
@SOURCE
@VERSION
@click.option("--name", required=True)
@click.option("--parent", default=None, help="Parent unit (uuid or ref); none makes a root.")
@click.option("--type", "type_", default=None, help="Org-unit type name.")
@click.option("--code", default=None)
@click.option("--ref", "source_ref", default=None, help="External id (e.g. DHIS2 uid).")
@click.option("--lon", type=float, default=None)
@click.option("--lat", type=float, default=None)
@click.option("--territory", default=None,
              help="GeoJSON file with the territory polygon, in longitude/latitude degrees.")
@FIX_GEOMETRY
@click.option("--opening-date", default=None)
@click.option("--status", "validation_status", type=click.Choice(["new", "valid", "rejected"]),
              default=None)
def unit_add_cmd(reg: str, source: str | None, number: int | None, name: str, parent: str | None,
                 type_: str | None, code: str | None, source_ref: str | None, lon: float | None,
                 lat: float | None, territory: str | None, fix_geometry: bool,
                 opening_date: str | None, validation_status: str | None,
                 as_json: bool) -> None:
    """Add a unit to a draft version."""
    from storage.units import add_unit

    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = add_unit(registry, source, number=number, name=name, parent=parent,
                        location=_point(lon, lat), territory=_territory(territory),
                        fix_geometry=fix_geometry, origin=ORIGIN,
                        **_edits(type=type_, code=code, source_ref=source_ref,
                                 opening_date=opening_date, validation_status=validation_status))
    emit(as_json, data, lambda d: f"Added {d['name']!r} (uuid {d['uuid']}).")


@command(unit_group, "edit")
@REG
@SOURCE
@VERSION
@UNIT
@click.option("--name", default=None)
@click.option("--type", "type_", default=None)
@click.option("--code", default=None)
@click.option("--ref", "source_ref", default=None)
@click.option("--opening-date", default=None)
@click.option("--closed-date", default=None)
@click.option("--status", "validation_status", type=click.Choice(["new", "valid", "rejected"]),
              default=None)
@click.option("--alias", "aliases", multiple=True,
              help="Alternative name (repeat for several; they replace the unit's aliases).")
def unit_edit_cmd(reg: str, source: str | None, number: int | None, unit: str, name: str | None,
                  type_: str | None, code: str | None, source_ref: str | None,
                  opening_date: str | None, closed_date: str | None,
                  validation_status: str | None, aliases: tuple[str, ...], as_json: bool) -> None:
    """Change a unit's attributes."""
    from storage.units import edit_unit

    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = edit_unit(registry, source, unit, number=number, origin=ORIGIN,
                         **_edits(name=name, type=type_, code=code, source_ref=source_ref,
                                  opening_date=opening_date, closed_date=closed_date,
                                  validation_status=validation_status, aliases=aliases))
    emit(as_json, data, lambda d: f"Updated {d['name']!r}.")


@command(unit_group, "move")
@REG
@SOURCE
@VERSION
@UNIT
@click.option("--parent", default=None, help="New parent (uuid or ref).")
@click.option("--root", "to_root", is_flag=True, help="Make the unit a root.")
def unit_move_cmd(reg: str, source: str | None, number: int | None, unit: str, parent: str | None,
                  to_root: bool, as_json: bool) -> None:
    """Move a unit and its whole subtree under another parent."""
    from storage.units import move_unit

    if bool(parent) == to_root:
        raise InvalidInput("Give either --parent UNIT or --root.")
    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = move_unit(registry, source, unit, parent, number=number, origin=ORIGIN)
    emit(as_json, data, lambda d: f"Moved {d['name']!r} under {d['parent_name'] or '(root)'}.")


@command(unit_group, "close")
@REG
@SOURCE
@VERSION
@UNIT
@click.option("--date", "closed_date", default=None, help="Closing date (default: today).")
def unit_close_cmd(reg: str, source: str | None, number: int | None, unit: str,
                   closed_date: str | None, as_json: bool) -> None:
    """Close a unit: it stays in the tree with a closed date."""
    from storage.units import close_unit

    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = close_unit(registry, source, unit, closed_date, number=number, origin=ORIGIN)
    emit(as_json, data, lambda d: f"Closed {d['name']!r} on {d['closed_date']}.")


@command(unit_group, "delete")
@REG
@SOURCE
@VERSION
@UNIT
@click.option("--recursive", is_flag=True, help="Also delete every unit below it.")
def unit_delete_cmd(reg: str, source: str | None, number: int | None, unit: str, recursive: bool,
                    as_json: bool) -> None:
    """Delete a unit (prefer 'unit close' for units that really existed).

    Says how many change requests waiting for review and how many submissions are about
    the deleted units: such a request can then only be rejected, and the submissions keep
    pointing at the unit in the versions that still have it."""
    from storage.units import delete_unit

    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = delete_unit(registry, source, unit, number=number, recursive=recursive,
                           origin=ORIGIN)
    emit(as_json, data, lambda d: "\n".join(
        [f"Deleted {d['deleted']} unit(s) from {d['name']!r} down."]
        + [f"Warning: {w}" for w in d["warnings"]]))


@command(unit_group, "geometry")
@REG
@SOURCE
@VERSION
@UNIT
@click.option("--lon", type=float, default=None)
@click.option("--lat", type=float, default=None)
@click.option("--clear-location", is_flag=True)
@click.option("--territory", default=None,
              help="GeoJSON file with the territory polygon, in longitude/latitude degrees.")
@FIX_GEOMETRY
@click.option("--clear-territory", is_flag=True)
def unit_geometry_cmd(reg: str, source: str | None, number: int | None, unit: str,
                      lon: float | None, lat: float | None, clear_location: bool,
                      territory: str | None, fix_geometry: bool, clear_territory: bool,
                      as_json: bool) -> None:
    """Set or clear a unit's point location and territory."""
    from storage.units import set_geometry

    changes: dict[str, Any] = {}
    if clear_location and (lon is not None or lat is not None):
        raise InvalidInput("Give --lon/--lat or --clear-location, not both.")
    if clear_territory and territory:
        raise InvalidInput("Give --territory or --clear-territory, not both.")
    if clear_location:
        changes["location"] = None
    elif lon is not None or lat is not None:
        changes["location"] = _point(lon, lat)
    if clear_territory:
        changes["territory"] = None
    elif territory:
        changes["territory"] = _territory(territory)
    if not changes:
        raise InvalidInput("Nothing to change: give --lon/--lat, --territory or a --clear option.")
    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = set_geometry(registry, source, unit, number=number, fix_geometry=fix_geometry,
                            origin=ORIGIN, **changes)
    emit(as_json, data, render.unit)


@command(unit_group, "group")
@REG
@SOURCE
@VERSION
@UNIT
@click.option("--add", "add_to", default=None, help="Group (ref or name) to add the unit to.")
@click.option("--remove", "remove_from", default=None, help="Group to take the unit out of.")
def unit_group_cmd(reg: str, source: str | None, number: int | None, unit: str, add_to: str | None,
                   remove_from: str | None, as_json: bool) -> None:
    """Add a unit to a group, or remove it from one."""
    from storage.units import set_group_membership

    if bool(add_to) == bool(remove_from):
        raise InvalidInput("Give either --add GROUP or --remove GROUP.")
    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = set_group_membership(registry, source, unit, add_to or remove_from or "",
                                    bool(add_to), number=number, origin=ORIGIN)
    emit(as_json, data, lambda d: f"{d['name']!r} groups: {', '.join(d['groups']) or '(none)'}.")


# --- history and checks ---------------------------------------------------------------


@command(main, "history")
@REG
@click.option("--unit", default=None, help="Only this unit (uuid; a ref works with --source).")
@click.option("--source", "-s", default=None,
              help="Only changes in this source: in its version --version N (default: the "
              "default version), or with --unit and no --version, in every version.")
@VERSION
@click.option("--limit", type=int, default=50, show_default=True)
def history_cmd(reg: str, unit: str | None, source: str | None, number: int | None, limit: int,
                as_json: bool) -> None:
    """Show the change log, newest first: what changed, before and after, who and from where."""
    from storage.audit import history
    from storage.ids import CANONICAL_UUID

    with open_registry(reg) as registry:
        if unit is not None and source is None and not CANONICAL_UUID.fullmatch(unit.lower()):
            # a ref (ODK's 32 hex digits too): it needs the source, unless there is one
            with contextlib.suppress(InvalidInput):  # several: history says which
                source = the_source(registry, None)
        data = history(registry, unit=unit, source=source, number=number, limit=limit)
    emit(as_json, data, render.history)


@command(main, "check")
@REG
@SOURCE
@VERSION
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the JSON report to this file.")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="Print at most N findings, errors first (default: all). The counts, "
              "--json and --out still cover every finding.")
def check_cmd(reg: str, source: str | None, number: int | None, out: str | None,
              limit: int | None, as_json: bool) -> None:
    """Run the integrity checks on a version; exit code 6 when there are errors."""
    from storage.checks import run_checks

    with open_registry(reg) as registry:
        source = the_source(registry, source)
        report = run_checks(registry, source, number)
    if out:
        Path(out).write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    emit(as_json, report, render.check_report if limit is None
         else functools.partial(_check_text, limit=limit))
    if any(f["severity"] == "error" for f in report["findings"]):
        sys.exit(6)


def _check_text(report: dict[str, Any], limit: int) -> str:
    """The check report with at most ``limit`` finding lines, errors first: a national
    list can have hundreds (review #28).  The header counts every finding."""
    findings = report["findings"]
    head = render.check_report({**report, "findings": []}).splitlines()
    errors = sum(1 for f in findings if f["severity"] == "error")
    head[0] = (f"Checks of {report['version']['label']}: {errors} errors, "
               f"{len(findings) - errors} warnings")
    ranked = sorted(findings, key=lambda f: f["severity"] != "error")
    lines = [f"{f['severity']:>7} {f['check']}: {f['message']}" for f in ranked[:limit]]
    if len(findings) > limit:
        lines.append(f"... and {len(findings) - limit} more (use --json or --out for all, or "
                     "a larger --limit).")
    return "\n".join(head + lines)


# --- import -----------------------------------------------------------------------------


def _format_choice() -> click.Choice:
    from sync import formats

    return click.Choice(formats.available())


FORMAT_CHOICE = _format_choice()

#: The formats ``export`` writes (their module has ``write_file``; the others are read
#: only, and offering them made export refuse what its own --help listed — review #13).
#: Named here so that start-up imports no format module; tests/test_cli_review_docs.py
#: checks it against the modules.
WRITABLE_FORMATS = ("iaso-gpkg", "geojson", "csv", "xlsx", "vector")
EXPORT_FORMAT_CHOICE = click.Choice([name for name in FORMAT_CHOICE.choices
                                     if name in WRITABLE_FORMATS])


def _read_options(**kw: Any) -> Any:
    from sync.exchange import ReadOptions

    mapping = kw.pop("mapping", None)
    if mapping:
        try:
            kw["mapping"] = json.loads(Path(mapping).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InvalidInput(f"--mapping {mapping}: not a readable JSON object ({error}).") \
                from None
        if not isinstance(kw["mapping"], dict):
            raise InvalidInput(f"--mapping {mapping}: expected a JSON object.")
    return ReadOptions(**kw)


@command(main, "import")
@REG
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--source", "-s", required=True,
              help="Data source to import into (created if it does not exist).")
@click.option("--version", "-v", "number", type=int, default=None,
              help="Upsert into this existing draft version (default: a new draft version).")
@click.option("--format", "fmt", type=FORMAT_CHOICE, default=None,
              help="Input format (default: recognised from the file).")
@click.option("--mapping", default=None, help="JSON file mapping our fields to the file's columns.")
@click.option("--layer", default=None, help="Layer (or sheet) to read.")
@click.option("--crs", default=None, help="CRS of a file that has none, e.g. EPSG:32628.")
@click.option("--fix-geometry", is_flag=True, help="Repair invalid polygons instead of refusing.")
@click.option("--keep-invalid-geometry", is_flag=True,
              help="Keep invalid polygons as the file has them (warned) instead of refusing: "
                   "a DHIS2 mirror must push them back unchanged.")
@click.option("--encoding", default=None, help="Text encoding (default: detected).")
@click.option("--delimiter", default=None, help="CSV delimiter (default: detected).")
@click.option("--iaso-headers", is_flag=True, help="CSV/XLSX with Iaso's French headers.")
@click.option("--parent-by-location", is_flag=True,
              help="One file per level, top first: parents found by territory.")
@click.option("--data-dict", default=None, help="Data dictionary JSON of a tree-importer CSV.")
@click.option("--set-status", type=click.Choice(["new", "valid", "rejected"]), default=None,
              help="Set the validation status of every imported unit (default: keep).")
@click.option("--skip-invalid", is_flag=True, help="Import the valid rows, report the others.")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--report", "report_path", default=None, type=click.Path(dir_okay=False),
              help="Write the full per-row report (JSON) to this file.")
@click.option("--description", default=None, help="Description of a new version.")
def import_cmd(reg: str, files: tuple[str, ...], source: str, number: int | None,
               fmt: str | None, mapping: str | None, layer: str | None, crs: str | None,
               fix_geometry: bool, keep_invalid_geometry: bool, encoding: str | None,
               delimiter: str | None, iaso_headers: bool, parent_by_location: bool,
               data_dict: str | None, set_status: str | None, skip_invalid: bool,
               dry_run: bool, report_path: str | None, description: str | None,
               as_json: bool) -> None:
    """Import FILES into SOURCE: a new draft version, or an upsert by ref into --version N.

    Formats: iaso-gpkg, geojson, csv, xlsx, tree-csv, vector (anything GDAL reads) and
    dhis2-json (pages of /api/organisationUnits, levels, groups, group sets). Every row
    is checked first; a bad row refuses the whole import (nothing is written) unless
    --skip-invalid. See docs/formats.md.
    """
    from sync import formats
    from sync.exchange import is_georeg_registry
    from sync.importing import ImportJob

    if fix_geometry and keep_invalid_geometry:
        raise InvalidInput("Give --fix-geometry (repair invalid polygons) or "
                           "--keep-invalid-geometry (keep them as they are), not both.")
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.exists():
            raise InvalidInput(f"{path}: file not found.")
        if is_georeg_registry(path):
            raise InvalidInput(
                f"{path} is a Georeg registry, not a file to import. Export the version you "
                f"want first ('georeg export {path} OUT.gpkg -s SOURCE'), then import OUT.gpkg.")
    if report_path:
        _check_writable(Path(report_path), "--report")
    name = fmt or formats.detect(paths[0], data_dict=data_dict)
    opts = _read_options(mapping=mapping, layer=layer, crs=crs, fix_geometry=fix_geometry,
                         encoding=encoding, delimiter=delimiter, iaso_headers=iaso_headers,
                         parent_by_location=parent_by_location, data_dict=data_dict)
    reader = formats.module(name)
    if len(paths) > 1:
        if not hasattr(reader, "read_files"):
            raise InvalidInput(f"The {name} format reads one file at a time.")
        payload = reader.read_files(paths, opts)
    else:
        payload = reader.read_file(paths[0], opts)
    if keep_invalid_geometry:
        payload.invalid_geometry = "keep"
    with open_registry(reg) as registry:
        job = ImportJob(registry, payload, source=source, number=number, dry_run=dry_run,
                        set_status=set_status, skip_invalid=skip_invalid,
                        fix_geometry=fix_geometry, description=description, origin=ORIGIN)
        try:
            result = run_job(job, as_json)
        except GeoregError as error:  # rows refused (InvalidInput), or a cycle among them
            if report_path and error.details.get("rejected"):
                try:
                    Path(report_path).write_text(json.dumps(error.details, indent=2,
                                                            ensure_ascii=False, default=str))
                except OSError as failed:
                    raise type(error)(f"{error.message}\n(--report {report_path} could not "
                                      f"be written: {failed.strerror or failed}.)",
                                      **error.details) from None
            raise
    result["format"] = name
    if report_path:
        try:
            Path(report_path).write_text(json.dumps(result, indent=2, ensure_ascii=False,
                                                    default=str))
        except OSError as error:
            if dry_run:
                raise InvalidInput(f"--report {report_path}: cannot be written "
                                   f"({error.strerror or error}).") from None
            # The import is committed: failing now would invite a retry, which imports
            # the file a second time.  Say so, and exit 0.
            warning = (f"the import was committed ({result['version']['label']}), but the "
                       f"report could not be written to {report_path} "
                       f"({error.strerror or error}); do not import the file again.")
            result.setdefault("warnings", []).insert(0, warning)
            err_console.print(f"warning: {escape(warning)}")
    emit(as_json, result, render.import_result)


def _check_writable(path: Path, option: str) -> None:
    """Refuse, before any work, a file path that cannot be written (no such folder, a
    folder, no permission): an import's report must not fail after the commit."""
    import os

    folder = path.parent
    if path.is_dir():
        raise InvalidInput(f"{option} {path}: is a folder; give a file name.")
    if not folder.is_dir():
        raise InvalidInput(f"{option} {path}: the folder {folder} does not exist; nothing "
                           "was imported.")
    if (path.exists() and not os.access(path, os.W_OK)) or \
            (not path.exists() and not os.access(folder, os.W_OK | os.X_OK)):
        raise InvalidInput(f"{option} {path}: cannot be written (permission denied); nothing "
                           "was imported.")


@command(main, "export")
@REG
@click.argument("out", type=click.Path(dir_okay=False))
@SOURCE
@VERSION
@click.option("--format", "fmt", type=EXPORT_FORMAT_CHOICE, default=None,
              help="Output format (default: from OUT's extension).")
@click.option("--iaso-headers", is_flag=True, help="CSV/XLSX with Iaso's French headers.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def export_cmd(reg: str, out: str, source: str | None, number: int | None, fmt: str | None,
               iaso_headers: bool, force: bool, as_json: bool) -> None:
    """Export a version to OUT (iaso-gpkg, geojson, csv, xlsx or any GDAL vector format)."""
    from sync import formats
    from sync.exchange import ReadOptions, read_version

    path = Path(out)
    name = fmt or formats.detect(path, for_export=True)
    writer = formats.module(name)
    if not hasattr(writer, "write_file"):
        raise InvalidInput(f"Georeg reads {name} but does not write it.")
    targets = [Path(p) for p in (writer.output_paths(path) if hasattr(writer, "output_paths")
                                 else [path])]
    _refuse_overwriting_registry(reg, targets)
    existing = [p for p in targets if p.exists()]
    if existing and not force:  # a conflict (exit code 5), as for init, demo and backup
        raise ConflictError(
            f"{', '.join(str(p) for p in existing)} already exist(s); pass --force to replace."
        )
    # Nothing is deleted here: every writer writes beside OUT and renames over it only
    # when the file is complete, so a failed export leaves the previous OUT as it was.
    with open_registry(reg) as registry:
        source = the_source(registry, source)
        data = read_version(registry, source, number)
        summary = writer.write_file(data, path, ReadOptions(iaso_headers=iaso_headers))
    result = {"format": name, "file": str(path), "version": data.version.label,
              "units": data.count, **{k: v for k, v in summary.items() if k not in ("file",)}}
    emit(as_json, result, render.export_result)


@command(main, "backup")
@REG
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace OUT if it exists (once the new copy is "
              "complete).")
def backup_cmd(reg: str, out: str, force: bool, as_json: bool) -> None:
    """Copy a GeoPackage/SpatiaLite registry to OUT, safely while 'georeg serve' runs.

    Copying the file itself can lose recent work: new submissions, photos and users can
    still be in REG-wal beside it. The backup is the registry as it was at one instant,
    in one self-contained file, checked, readable by its owner only (it holds the
    users' password hashes). Writers are not stopped meanwhile. A PostgreSQL registry is
    backed up with pg_dump."""
    from storage.backup import backup_job

    data = run_job(backup_job(reg, out, force=force), as_json)
    emit(as_json, data, lambda d: f"Backed up {d['registry']} to {d['backup']} "
         f"({d['bytes'] / 1e6:.1f} MB, checked).")


def _refuse_overwriting_registry(reg: str, targets: list[Path]) -> None:
    """An export must never replace a registry: the one it reads (or its ``-wal``,
    ``-shm``, ``-journal`` files), nor any other Georeg registry file."""
    from storage.backends import Location
    from sync.exchange import is_georeg_registry

    try:
        own: Location | None = Location.parse(reg)
    except GeoregError:
        own = None  # not a registry location: open_registry says so
    for target in targets:
        if own is not None and own.holds_file(target):
            raise InvalidInput(f"{target} is the registry being exported ({own.path}) or one "
                               "of its files; choose another output file. Nothing was "
                               "written.")
        if target.exists() and is_georeg_registry(target):
            raise InvalidInput(f"{target} is a Georeg registry; export does not overwrite "
                               "registries, even with --force. Choose another output file "
                               "(or delete that registry yourself if you mean it).")


def command_modules() -> list[str]:
    """The georeg/cli_*.py modules that hold commands (``cli_docs`` holds none)."""
    package = Path(__file__).parent
    return sorted(info.name for info in pkgutil.iter_modules([str(package)])
                  if info.name.startswith("cli_") and info.name != "cli_docs")


def _register_command_modules() -> None:
    """Add the command groups of every ``georeg/cli_*.py`` module (``COMMANDS`` list).

    Each surface (sync, server, compare …) keeps its commands in its own module;
    they import ``command`` from here, so they are loaded after this module — when
    one of their commands is used if ``LAZY_COMMANDS`` names them, else now.
    """
    known = {module for module, _help in LAZY_COMMANDS.values()}
    for module in command_modules():
        if module not in known:
            main.load(module)


_register_command_modules()


def entry() -> None:
    """The ``georeg`` command (console script; ``python -m georeg.cli`` too).

    Once the command is over, Ctrl-C is ignored while the process exits: a
    KeyboardInterrupt then (modules torn down, files closed) would kill it by SIGINT —
    exit code 130, "cancelled, nothing was changed" — after an import had committed,
    and a script would import the file again."""
    import signal

    try:
        main()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":  # pragma: no cover
    # ``python -m georeg.cli``: run the one ``georeg.cli`` the command modules import
    from georeg.cli import entry as _entry

    _entry()
