"""The benchmarks still run end to end (at a toy size: the figures are not checked here,
they are judged by the benchmarks themselves at full size — docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("script, extra", [
    ("bench_import.py", ["--rss-size", "0", "--no-generator"]),
    ("bench_new_draft.py", []),
    ("bench_formats.py", []),
])
def test_a_benchmark_runs_at_a_toy_size(script: str, extra: list[str], tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(BENCH / script), "--size", "2000",
                          "--out", str(tmp_path), *extra],
                         capture_output=True, text=True, timeout=300, cwd=BENCH.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "goal" in run.stdout  # it printed its verdict against its baseline
