"""The command line as scripts and people use it: names, --json, exit codes, messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from georeg.cli import main

SOURCE = "Sierra Leone (DHIS2 demo)"


def run(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if code == 0 else json.loads(result.stderr)


@pytest.fixture
def reg(location: str) -> str:
    run("demo", location)
    return location


def test_demo_and_tree_summary(reg: str) -> None:
    tree = run("tree", reg, "--source", SOURCE, "--max-depth", "2")
    assert tree["total_units"] == 1332
    names = [(n["name"], n["level"]) for n in tree["nodes"]]
    assert names[0] == ("Sierra Leone", 1) and len(names) == 14
    assert {n for n, lvl in names if lvl == 2} >= {"Bo", "Bombali", "Western Area"}
    assert tree["counts"]["levels"][1] == {"level": 2, "units": 13, "points": 0,
                                           "territories": 13}
    text = CliRunner().invoke(main, ["tree", reg, "--source", SOURCE, "--max-depth", "2"])
    assert "Sierra Leone (National)  [1331 below]" in text.output
    assert "  Bo (District)  [140 below]" in text.output


def test_the_full_editing_round(reg: str) -> None:
    assert [s["name"] for s in run("sources", reg)] == [SOURCE]
    versions = run("versions", reg, "--source", SOURCE)
    assert versions[0]["status"] == "published" and versions[0]["default"]
    draft = run("version", "new", reg, "--source", SOURCE, "--from", "1")
    assert draft["number"] == 2 and draft["units"] == 1332
    s = ["--source", SOURCE, "--version", "2"]
    added = run("unit", "add", reg, *s, "--name", "New CHP", "--parent", "vWbkYPRmKyS",
                "--type", "Facility", "--lon", "-11.9", "--lat", "7.8", "--ref", "NEWCHP00001")
    assert added["parent_ref"] == "vWbkYPRmKyS" and added["location"] == [-11.9, 7.8]
    edited = run("unit", "edit", reg, *s, "NEWCHP00001", "--name", "Newer CHP", "--alias", "NC")
    assert edited["name"] == "Newer CHP" and edited["aliases"] == ["NC"]
    moved = run("unit", "move", reg, *s, "NEWCHP00001", "--parent", "O6uvpzGd5pu")
    assert moved["parent_name"] == "Bo" and moved["depth"] == 3
    closed = run("unit", "close", reg, *s, "NEWCHP00001", "--date", "2025-01-31")
    assert closed["closed_date"] == "2025-01-31"
    grouped = run("unit", "group", reg, *s, "NEWCHP00001", "--add", "CHP")
    assert grouped["groups"] == ["CHP"]
    geo = run("unit", "geometry", reg, *s, "NEWCHP00001", "--clear-location")
    assert geo["location"] is None
    history = run("history", reg, "--unit", "NEWCHP00001", "--source", SOURCE, "--version", "2")
    assert [h["op"] for h in history] == ["update", "insert", "update", "update", "update",
                                          "insert"]
    assert history[3]["changes"]["parent"] == ["Baoma [vWbkYPRmKyS]", "Bo [O6uvpzGd5pu]"]
    assert run("unit", "delete", reg, *s, "NEWCHP00001")["deleted"] == 1
    published = run("version", "publish", reg, "--source", SOURCE, "--version", "2", "--default")
    assert published["status"] == "published"
    assert [v["default"] for v in run("versions", reg, "--source", SOURCE)] == [False, True]


def test_errors_have_exit_codes_and_say_what_to_do(reg: str, tmp_path: Path) -> None:
    err = run("unit", "edit", reg, "--source", SOURCE, "O6uvpzGd5pu", "--name", "X", code=5)
    assert err["error"] == "published_version" and "version new" in err["message"]
    err = run("tree", reg, "--source", "Nope", code=4)
    assert "Sources here: Sierra Leone (DHIS2 demo)" in err["message"]
    err = run("versions", str(tmp_path / "missing.gpkg"), "--source", "x", code=4)
    assert "georeg init" in err["message"]
    err = run("init", str(tmp_path / "registry.txt"), code=2)
    assert ".gpkg" in err["message"]
    if not reg.startswith("postgresql"):
        assert run("init", reg, code=5)["message"].endswith("--force to replace it.")
    text = CliRunner().invoke(main, ["unit", "move", reg, "--source", SOURCE, "x"])
    assert text.exit_code == 2 and "Error: Give either --parent UNIT or --root." in text.output
    # a usage error (click's own) is JSON too when --json asks for it
    usage = run("tree", code=2)
    assert usage["error"] == "usage" and "Missing argument 'REG'" in usage["message"]
    assert "No such option" in run("tree", reg, "--colour", "red", code=2)["message"]


def test_check_reports_and_exit_code(reg: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["check", reg, "--source", SOURCE, "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["version"]["number"] == 1 and set(report["summary"]) >= {
        "cycle", "orphan", "duplicate_name", "point_outside_parent", "several_roots"}
    has_errors = any(f["severity"] == "error" for f in report["findings"])
    assert result.exit_code == (6 if has_errors else 0)


@pytest.mark.parametrize("backend", ["gpkg"], indirect=True)
def test_installed_command_and_help(reg: str) -> None:
    exe = Path(sys.executable).parent / "georeg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "georeg.cli"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0
    for name in ("init", "demo", "sources", "versions", "version", "tree", "unit", "history",
                 "check", "import"):
        assert f"  {name} " in out.stdout or f"  {name}\n" in out.stdout, name
    sub = subprocess.run([*cmd, "unit", "--help"], capture_output=True, text=True, env=env)
    for name in ("add", "edit", "move", "close", "delete", "geometry", "group", "show"):
        assert f"  {name} " in sub.stdout, name
    shown = subprocess.run([*cmd, "unit", "show", reg, "--source", SOURCE, "O6uvpzGd5pu"],
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "name: Bo" in shown.stdout


def test_docs_cli_md_matches_the_help() -> None:
    """docs/cli.md's reference is --help; regenerate with `python -m georeg.cli_docs --write`."""
    from georeg import cli_docs

    current = cli_docs.DOC.read_text(encoding="utf-8")
    assert current == cli_docs.render(current)
