"""Helpers shared by the benchmarks: inputs, the Georeg import, child processes, tables."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import synthetic_tree
from sqlalchemy import Engine, event, text

from storage.bulk import BulkLoader, UnitRecord
from storage.registry import Registry
from storage.versions import ensure_source, insert_version

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "out"
SOURCE = "Synthetic"
ORIGIN = "benchmark"
SUFFIX = {"gpkg": ".gpkg", "spatialite": ".sqlite"}


def registry_path(out: Path, name: str, backend: str) -> Path:
    return out / f"{name}{SUFFIX[backend]}"


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def generator_hash() -> str:
    return hashlib.sha1(Path(synthetic_tree.__file__).read_bytes()).hexdigest()[:8]


def tree_geojson(out: Path, size: int, seed: int) -> tuple[Path, float | None]:
    """The tree as GeoJSON, written once per (size, seed, generator version).

    Returns the path and the seconds spent writing it (None when reused).
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"tree-{size}-s{seed}-{generator_hash()}.geojson"
    if path.exists():
        return path, None
    partial = path.with_suffix(".partial")
    start = time.perf_counter()
    synthetic_tree.write_geojson(partial, size, seed)
    partial.rename(path)
    return path, time.perf_counter() - start


def units_from(input_kind: str, size: int, seed: int, geojson: Path | None) -> Iterable[UnitRecord]:
    if input_kind == "generator":
        return synthetic_tree.iter_units(size, seed)
    assert geojson is not None
    return synthetic_tree.read_geojson_units(geojson)


# --- the Georeg import --------------------------------------------------------------


def georeg_import(
    location: Path,
    records: Iterable[UnitRecord],
    *,
    on_engine: Callable[[Engine], None] | None = None,
) -> dict[str, Any]:
    """Create a registry and bulk-load ``records`` in one write transaction.

    The returned timings cover everything from creating the file to the commit:
    ``create`` (empty registry, migrations), ``load`` (streaming the units through
    BulkLoader.add_units), ``finish`` (tree, paths, memberships, audit) and ``commit``.
    """
    remove_db(location)
    t0 = time.perf_counter()
    reg = Registry.create(location, overwrite=True)
    t1 = time.perf_counter()
    if on_engine is not None:
        on_engine(reg.engine)
    try:
        with reg.write(origin=ORIGIN) as conn:
            source_id = ensure_source(conn, SOURCE)
            version_id = insert_version(conn, source_id, description="Synthetic benchmark tree")
            # as ``georeg import`` into a new version: the load is logged as one row
            loader = BulkLoader(reg, conn, version_id, new_version=True,
                                log_details={"from": "synthetic benchmark tree"})
            for level, name in synthetic_tree.LEVEL_TYPES.items():
                loader.add_type(name, depth=level)
            t2 = time.perf_counter()
            loader.add_units(records)
            t3 = time.perf_counter()
            stats = loader.finish()
            t4 = time.perf_counter()
        t5 = time.perf_counter()
    finally:
        reg.close()
    return {
        "seconds": t5 - t0,
        "create": t1 - t0,
        "load": t3 - t2,
        "finish": t4 - t3,
        "commit": t5 - t4,
        "units": stats.units,
        "territories": stats.territories,
        "version_id": version_id,
    }


def check_registry(location: Path, version_id: int) -> dict[str, int]:
    """What the import built: units, paths, territories and audit rows."""
    reg = Registry.open(location, upgrade=False)
    try:
        with reg.read() as conn:
            row = conn.execute(
                text(
                    "SELECT count(*), count(path), count(parent_key), max(depth) FROM org_unit "
                    "WHERE version_id = :v"
                ),
                {"v": version_id},
            ).one()
            territories = conn.execute(
                text("SELECT count(*) FROM org_unit_territory WHERE version_id = :v"),
                {"v": version_id},
            ).scalar_one()
            logged = conn.execute(
                text("SELECT after FROM change_log WHERE version_id = :v AND origin = :o "
                     "AND entity = 'version' AND op = 'import'"),
                {"v": version_id, "o": ORIGIN},
            ).scalars().all()
    finally:
        reg.close()
    return {
        "units": row[0],
        "with_path": row[1],
        "with_parent": row[2],
        "depth": row[3],
        "territories": territories,
        # units the import's change-log row accounts for (one row for the load)
        "logged_units": sum(json.loads(a)["units"] for a in logged),
        "log_rows": len(logged),
    }


class StatementTimer:
    """Total time per SQL statement (first 100 characters), via engine events."""

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def attach(self, engine: Engine) -> None:
        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn: Any, _cur: Any, _stmt: str, _p: Any, _ctx: Any, _many: bool) -> None:
            conn.info["georeg_bench_t"] = time.perf_counter()

        @event.listens_for(engine, "after_cursor_execute")
        def _after(conn: Any, _cur: Any, stmt: str, _p: Any, _ctx: Any, _many: bool) -> None:
            key = " ".join(stmt.split())[:100]
            self.totals[key] += time.perf_counter() - conn.info.pop("georeg_bench_t")
            self.calls[key] += 1

    def report(self, top: int = 10) -> str:
        lines = [f"{'seconds':>8} {'calls':>6}  statement"]
        for stmt, secs in self.totals.most_common(top):
            lines.append(f"{secs:8.2f} {self.calls[stmt]:6d}  {stmt}")
        return "\n".join(lines)


# --- child processes ----------------------------------------------------------------


#: A tiny launcher between the benchmark and the measured command.  Linux keeps, in a
#: process's ``ru_maxrss``, the peak of the memory image it replaced at exec — so a
#: command started straight from a big benchmark process reports at least that
#: process's size (every figure floored at ~140 MiB when run_all.py had grown so far).
#: Started from this launcher, the command's peak is its own (floor: the launcher's
#: few MiB).  It writes "<wall seconds> <peak KiB>" to the file named first.
_LAUNCHER = (
    "import os, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(f'{time.perf_counter() - t} {usage.ru_maxrss}')\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(cmd: Sequence[str], *, cwd: Path = ROOT) -> tuple[float, float, str]:
    """Run a command; (wall seconds, its own peak RSS in MiB, stdout)."""
    with tempfile.TemporaryFile("w+") as err, tempfile.NamedTemporaryFile("r") as res:
        proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, res.name, *cmd],
                                cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        proc.wait()
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-4000:]}")
        seconds, kib = res.read().split()
    return float(seconds), int(kib) / 1024, stdout


def python_child(script: str, args: Sequence[str]) -> tuple[dict[str, Any], float]:
    """Run ``benchmarks/<script> args`` in a fresh interpreter; (its JSON result, peak MiB)."""
    cmd = [sys.executable, str(HERE / script), *args]
    _secs, rss, stdout = run_measured(cmd)
    last = [line for line in stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(last), rss


# --- printing -----------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(ratio: float, goal: float) -> str:
    return f"{ratio:.2f}x (goal <= {goal:g}x: {'met' if ratio <= goal else 'NOT met'})"


def save_result(out: Path, name: str, result: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def environment() -> dict[str, Any]:
    import platform
    import sqlite3

    import shapely
    import sqlalchemy

    gdal = subprocess.run(["ogr2ogr", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "shapely": shapely.__version__,
        "gdal": gdal,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
