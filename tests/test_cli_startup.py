"""``georeg`` starts without importing every command module (georeg/cli.py LazyGroup).

The table of lazily loaded commands (``LAZY_COMMANDS``) must match what the modules
really define, and ``georeg --help`` must read exactly as if every module were loaded.
Start-up *time* is measured by benchmarks/bench_postgis_push.py, not here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent


def _real_table() -> dict[str, tuple[str, str]]:
    """What the cli_*.py modules define (their ``COMMANDS``), with the short help."""
    import importlib

    from georeg import cli

    table: dict[str, tuple[str, str]] = {}
    for module in cli.command_modules():
        for cmd in importlib.import_module(f"georeg.{module}").COMMANDS:
            assert cmd.name is not None
            table[cmd.name] = (module, cmd.get_short_help_str(10_000))
    return table


def test_lazy_table_matches_the_command_modules() -> None:
    code = ("import sys; sys.path.insert(0, 'tests'); from test_cli_startup import _real_table; "
            "from georeg.cli import LAZY_COMMANDS; import pprint; t = _real_table(); "
            "print(repr(t == LAZY_COMMANDS)); pprint.pprint(t, width=100)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    same, _, table = out.partition("\n")
    assert same == "True", ("georeg/cli.py LAZY_COMMANDS is out of date; it should be:\n"
                            + table)


def test_help_lists_every_command_without_loading_the_modules() -> None:
    code = ("import sys; from click.testing import CliRunner; from georeg.cli import main; "
            "r = CliRunner().invoke(main, ['--help'], terminal_width=100); "
            "print(sorted(m for m in sys.modules if m.startswith('georeg.cli_'))); "
            "print(sorted(m for m in ('sqlalchemy', 'alembic', 'pandas', 'shapely', 'psycopg') "
            "if m in sys.modules)); print(r.output)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    modules, heavy, lazy_help = out.split("\n", 2)
    assert modules == "[]" and heavy == "[]", (modules, heavy)
    from georeg.cli import main

    main.load_all()
    eager_help = CliRunner().invoke(main, ["--help"], terminal_width=100).output
    assert lazy_help.rstrip("\n") == eager_help.rstrip("\n")
    assert "  sync " in eager_help and "  diff " in eager_help


def test_a_command_loads_only_its_module() -> None:
    code = ("import sys; from click.testing import CliRunner; from georeg.cli import main; "
            "r = CliRunner().invoke(main, ['sync', 'postgis', 'push', '--help']); "
            "assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m.startswith('georeg.cli_')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "['georeg.cli_sync']"


def test_unknown_command_is_still_a_usage_error() -> None:
    from georeg.cli import main

    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2 and "No such command" in result.output
    assert isinstance(main.get_command(click.Context(main), "sync"), click.Group)
