"""The step-by-step guides run as written and print what they show.

docs/compare-and-merge.md promises that its commands "run as they are" on a fresh
demo registry and shows their output (link ids, counts, conflict ids).  A guide
that drifts from the code sends a new user into errors at step 1, so this test
takes the commands from the guide itself — every ```sh block, in order, in one
shell (so ``S=…`` carries over) — runs them in an empty folder, and checks that
each exits 0 and that every line of the ```text block after a command block
appears in that block's output, in order ("…" lines stand for lines left out;
timings like "in 0.25 s" are not compared).  The ```toml block is the guide's
``rules.toml`` and is written to that file when the guide reaches it.

The survey the guide imports is georeg/demo_data/survey.csv, made by
georeg/demo_data/make_survey.py; the test also checks that the file is what the
script makes, so neither can change without the other (and the guide).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "compare-and-merge.md"
SURVEY = ROOT / "georeg" / "demo_data" / "survey.csv"
MAKE_SURVEY = ROOT / "georeg" / "demo_data" / "make_survey.py"

pytestmark = pytest.mark.slow  # ~20 georeg commands on the full demo: 20-40 s

FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.M | re.S)
TIMING = re.compile(r"\b\d+(?:\.\d+)? s\b")


def blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(markdown)]


def commands(body: str) -> list[str]:
    """The shell commands of an ```sh block: continuation lines joined, comments out."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def normal(line: str) -> str:
    return TIMING.sub("N s", line.rstrip())


def georeg_bin() -> str:
    here = Path(sys.executable).parent / "georeg"
    found = str(here) if here.exists() else shutil.which("georeg")
    if not found:
        pytest.skip("the georeg command is not installed")
    return found


def test_survey_csv_is_what_make_survey_makes() -> None:
    spec = importlib.util.spec_from_file_location("make_survey", MAKE_SURVEY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert SURVEY.read_text(encoding="utf-8") == module.render(module.make_rows()), (
        "georeg/demo_data/survey.csv is stale: run python georeg/demo_data/make_survey.py "
        "(and check docs/compare-and-merge.md against its new output)")


def test_compare_and_merge_guide_runs_as_written(tmp_path: Path) -> None:
    # The guide runs in the repository's folder: give it the survey at the same path.
    (tmp_path / "georeg" / "demo_data").mkdir(parents=True)
    shutil.copy(SURVEY, tmp_path / "georeg" / "demo_data" / "survey.csv")

    # (kind, body, commands): kind "sh" (commands), "text" (shown output), "toml" (rules.toml)
    steps = [(lang, body, commands(body) if lang == "sh" else [])
             for lang, body in blocks(GUIDE.read_text(encoding="utf-8"))
             if lang in ("sh", "text", "toml")]
    all_cmds = [c for _, _, cmds in steps for c in cmds]
    assert sum(kind == "sh" for kind, _, _ in steps) >= 8, "the guide lost its command blocks"

    env = dict(os.environ, PATH=f"{Path(georeg_bin()).parent}{os.pathsep}{os.environ['PATH']}",
               COLUMNS="200")
    env.pop("GEOREG_AUTHOR", None)
    script: list[str] = []
    block_of: dict[int, int] = {}
    n = 0
    for b, (kind, body, cmds) in enumerate(steps):
        if kind == "toml":
            # Written when the guide reaches it, before the commands that use it.
            script.append(f"cat > rules.toml <<'GUIDE_TOML'\n{body}GUIDE_TOML")
        else:
            for cmd in cmds:
                script.append(f'echo "@@CMD {n}"\n{cmd}\necho "@@RC {n} $?"')
                block_of[n] = b
                n += 1
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    out = done.stdout

    # Split the output by command; check every exit code.
    outputs: dict[int, str] = {}
    for m in re.finditer(r"^@@CMD (\d+)\n(.*?)^@@RC \1 (\d+)$", out, re.M | re.S):
        i, text, rc = int(m.group(1)), m.group(2), int(m.group(3))
        outputs[i] = text
        assert rc == 0, f"guide command failed (exit {rc}): {all_cmds[i]}\n{text}"
    assert len(outputs) == n, f"not every command ran:\n{out[-3000:]}"

    # Every shown output line appears, in order, in the output of the block before it.
    last_sh: int | None = None
    for b, (kind, body, _) in enumerate(steps):
        if kind == "sh":
            last_sh = b
        elif kind == "text":
            assert last_sh is not None, "an output block before any command block"
            got = [normal(line) for i in sorted(outputs) if block_of[i] == last_sh
                   for line in outputs[i].splitlines()]
            pos = 0
            for want in (normal(line) for line in body.splitlines()):
                if want in ("", "…"):
                    continue
                try:
                    pos = got.index(want, pos) + 1
                except ValueError:
                    shown = "\n".join(got)
                    raise AssertionError(
                        f"docs/compare-and-merge.md shows a line the commands did not print "
                        f"(or not in this order):\n  {want}\nThey printed:\n{shown}") from None

    # The dry run made no draft: it must not send the user to `georeg check` one
    [dry] = [i for i, c in enumerate(all_cmds) if c.startswith("georeg merge ")
             and "--dry-run" in c]
    assert "more (all of them with --json)." in outputs[dry], outputs[dry]
    assert "georeg check REG" not in outputs[dry], outputs[dry]

    # And the end state is the one the guide describes.
    versions = subprocess.run(
        ["georeg", "versions", "compare.gpkg", "-s", "Sierra Leone (DHIS2 demo)", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert '"published"' in versions
    assert (tmp_path / "changes.gpkg").exists()
    assert (tmp_path / "links.csv").exists()


def test_merge_md_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/merge.md's two Python blocks run on the registry its CLI examples describe.

    MoH:3 and Survey:1 with a match run between them (the rules merge makes MoH:4);
    for the 3-way block, MoH:4 and MoH:5 copied from MoH:3 and edited differently
    (it makes MoH:6, the version the conflict calls must name).
    """
    env = dict(os.environ, PATH=f"{Path(georeg_bin()).parent}{os.pathsep}{os.environ['PATH']}")

    def georeg(where: Path, *args: str) -> None:
        subprocess.run(["georeg", *args], cwd=where, env=env, check=True,
                       capture_output=True, text=True)

    base = tmp_path / "base"
    base.mkdir()
    georeg(base, "demo", "reg.gpkg", "--source", "MoH")
    georeg(base, "version", "new", "reg.gpkg", "-s", "MoH", "--from", "1")
    georeg(base, "version", "new", "reg.gpkg", "-s", "MoH", "--from", "2")
    georeg(base, "import", "reg.gpkg", str(SURVEY), "--source", "Survey")
    georeg(base, "match", "reg.gpkg", "MoH:3", "Survey:1")
    rules = tmp_path / "rules" / "rules.toml"
    rules.parent.mkdir()
    rules.write_text('location = "source_non_empty"\n', encoding="utf-8")
    three = tmp_path / "three"
    three.mkdir()
    shutil.copy(base / "reg.gpkg", three / "reg.gpkg")
    for _ in range(2):
        georeg(three, "version", "new", "reg.gpkg", "-s", "MoH", "--from", "3")
    for version, name in (("4", "Ngelehun (ours)"), ("5", "Ngelehun (theirs)")):
        georeg(three, "unit", "edit", "reg.gpkg", "-s", "MoH", "-v", version, "DiszpKrYNg8",
               "--name", name)

    doc = (ROOT / "docs" / "merge.md").read_text(encoding="utf-8")
    python = [body for lang, body in blocks(doc[doc.index("## Python"):]) if lang == "python"]
    assert len(python) == 2
    shutil.copy(base / "reg.gpkg", rules.parent / "reg.gpkg")
    monkeypatch.chdir(rules.parent)
    exec(compile(python[0], "docs/merge.md (rules merge)", "exec"), {})
    monkeypatch.chdir(three)
    exec(compile(python[1], "docs/merge.md (3-way merge)", "exec"), {})

    from storage.merging import conflict_summary
    from storage.registry import Registry

    with Registry.open(three / "reg.gpkg") as reg:
        summary = conflict_summary(reg, "MoH:6")
    assert summary["total"] == 1 and summary["by_status"] == {"resolved": 1}
