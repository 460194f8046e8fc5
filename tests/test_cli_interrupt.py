"""Ctrl-C at any moment: either the work is done (exit 0) or nothing was changed (130).

Exit code 130 says "cancelled, nothing was changed" (docs/cli.md), and a script or a
scheduler runs the command again on it.  Found by a review: Ctrl-C a moment after an
import had committed exited 130 (a second run imports the file twice), Ctrl-C during
``georeg demo`` left a half-made demo.gpkg that ``make run`` then keeps (and every
later command refuses), and Ctrl-C before the work began printed click's "Aborted!"
with exit code 1.  The real command is run (the console script) and interrupted with
SIGINT at moments spread over its run; whatever the moment, the outcome must be one of
the two.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.registry import Registry
from storage.versions import list_sources, list_versions

GEOREG = str(Path(sys.executable).parent / "georeg")
SURVEY = Path(__file__).resolve().parent.parent / "georeg" / "demo_data" / "survey.csv"

pytestmark = pytest.mark.slow  # each command is run a dozen times


def interrupted(args: list[str], after: float, cwd: Path) -> tuple[int, str]:
    """Run ``georeg ARGS``, send SIGINT (Ctrl-C) after ``after`` seconds."""
    proc = subprocess.Popen([GEOREG, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def full_run(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run([GEOREG, *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


#: before this, Ctrl-C stops the interpreter itself while it starts (Python's own "Fatal
#: Python error … KeyboardInterrupt", before any Georeg code: nothing to change yet)
STARTED = 0.35


def moments(total: float) -> list[float]:
    """Ten moments from just after start-up to just after the end."""
    last = max(total * 1.1, STARTED + 0.1)
    return [STARTED + (last - STARTED) * i / 9 for i in range(10)]


def test_a_demo_interrupted_anywhere_is_whole_or_absent(tmp_path: Path) -> None:
    total = full_run(["demo", "timing.gpkg"], tmp_path)
    outcomes = set()
    for n, after in enumerate(moments(total)):
        reg = tmp_path / f"demo{n}.gpkg"
        rc, err = interrupted(["demo", reg.name], after, tmp_path)
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(
            (f"demo{n}.", f".demo{n}.")))
        if rc == 0:
            with Registry.open(reg) as registry:
                assert [v["number"] for v in list_versions(
                    registry, "Sierra Leone (DHIS2 demo)")] == [1]
            assert left == [reg.name], left
        else:
            assert rc == 130, (after, rc, err)
            assert "Cancelled" in err or "cancelled" in err, err
            assert "Aborted!" not in err and "Traceback" not in err, err
            assert left == [], (after, left)  # no half-made registry, no building file
        outcomes.add(rc)
    assert outcomes <= {0, 130}


def test_an_import_interrupted_anywhere_is_done_or_not_done(tmp_path: Path) -> None:
    base = tmp_path / "base.gpkg"
    subprocess.run([GEOREG, "demo", str(base)], check=True, capture_output=True)
    work = tmp_path / "work.gpkg"
    shutil.copy(base, work)
    total = full_run(["import", str(work), str(SURVEY), "-s", "Survey"], tmp_path)
    for after in moments(total):
        for suffix in ("-wal", "-shm"):
            Path(f"{work}{suffix}").unlink(missing_ok=True)
        shutil.copy(base, work)
        rc, err = interrupted(["import", str(work), str(SURVEY), "-s", "Survey"], after,
                              tmp_path)
        with Registry.open(work) as registry:
            sources = {s["name"] for s in list_sources(registry)}
            made = list_versions(registry, "Survey") if "Survey" in sources else []
        if rc == 0:
            assert len(made) == 1 and made[0]["units"] == 1294, made
        else:
            assert rc == 130 and "Traceback" not in err and "Aborted!" not in err, (rc, err)
            assert made == [], (after, made)  # 130: nothing was changed


@pytest.mark.parametrize("backend", ["postgis"], indirect=True)
def test_a_demo_on_postgresql_interrupted_anywhere_is_whole_or_absent(
        location: str, tmp_path: Path) -> None:
    """The same on a PostgreSQL schema: a cancelled demo left an empty registry there,
    and every later 'georeg demo URL' was refused ('already holds a registry')."""
    total = full_run(["demo", location], tmp_path)
    subprocess.run([GEOREG, "demo", location, "--force"], check=True, capture_output=True)
    seen = set()
    for after in moments(total):
        run = subprocess.run([GEOREG, "demo", location, "--force"], capture_output=True)
        assert run.returncode == 0  # (a whole demo to replace, each time)
        rc, err = interrupted(["demo", location, "--force"], after, tmp_path)
        seen.add(rc)
        if rc == 130:
            assert "Traceback" not in err and "Aborted!" not in err, err
            # no half-made registry left: a new demo is made without --force
            again = subprocess.run([GEOREG, "demo", location], capture_output=True, text=True)
            assert again.returncode == 0, again.stderr
        else:
            assert rc == 0, (after, rc, err)
        with Registry.open(location) as registry:
            assert [v["number"] for v in list_versions(
                registry, "Sierra Leone (DHIS2 demo)")] == [1]
    assert seen <= {0, 130}
