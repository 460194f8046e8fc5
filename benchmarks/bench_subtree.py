"""Subtree benchmark: one district's subtree through the Python API against raw SQL.

For each size (default 100k and 1M units) the synthetic tree is imported, one
district is picked (the one whose subtree is closest to 1,000 units, the
typical district at every size, see synthetic_tree.py) and its subtree is read
many times, interleaved, by:

* raw sqlite3 — ``SELECT … FROM org_unit WHERE version_id = ? AND path >= ? AND
  path < ?`` on a plain ``sqlite3`` connection to the same file (the baseline);
* ``storage.tree.subtree_rows(conn, version, path)`` — the fast API read on an
  open SQLAlchemy connection, same columns as its raw baseline;
* ``storage.tree.subtree(reg, source, ref)`` — the whole public call: a read
  transaction, version resolution, the unit looked up by ref, then the range
  read, as dicts; compared with a raw query of the same columns.

Per-call latency is the median (p90 shown) over ``--calls`` calls after a
warm-up.  Goal: each API call within 3x its raw baseline, and the time per row
read flat from 100k to 1M units.  The query plans are printed to show that
org_unit_path_idx serves the range.

    .venv/bin/python benchmarks/bench_subtree.py [--sizes 100000,1000000] [--calls 300]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c
import synthetic_tree
from sqlalchemy import text

from storage.registry import Registry
from storage.tree import subtree, subtree_bounds, subtree_rows
from storage.versions import resolve_version

GOAL = 3.0
ROWS_COLS = "fid, uuid, name, depth"  # subtree_rows' default columns
API_COLS = "uuid, source_ref, name, depth, path"  # what subtree() returns
RANGE = "FROM org_unit WHERE version_id = ? AND path >= ? AND path < ?"


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1e3,
    }


def _plan(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> str:
    return "; ".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def prepare(
    size: int, backend: str, seed: int, out: Path, reuse: bool
) -> tuple[Path, float | None]:
    """An imported registry of ``size`` units; (path, import seconds or None if reused)."""
    path = c.registry_path(out, f"subtree-{size}", backend)
    marker = path.with_name(path.name + ".ok")
    expected = f"{size} {seed} {c.generator_hash()}"
    if reuse and path.exists() and marker.exists() and marker.read_text() == expected:
        return path, None
    marker.unlink(missing_ok=True)
    geojson, _ = c.tree_geojson(out, size, seed)
    res = c.georeg_import(path, synthetic_tree.read_geojson_units(geojson))
    marker.write_text(expected)
    return path, res["seconds"]


def measure(path: Path, calls: int, warmup: int = 20) -> dict[str, Any]:
    reg = Registry.open(path, upgrade=False)
    raw = sqlite3.connect(path)
    try:
        with reg.read() as conn:
            version = resolve_version(conn, c.SOURCE, 1)
            n_units = conn.execute(
                text("SELECT count(*) FROM org_unit WHERE version_id = :v"), {"v": version.id}
            ).scalar_one()
            # The district whose subtree is closest to the typical ~1,000 units, so every
            # size reads about the same amount of data.
            best: tuple[int, int, str, str, str] | None = None
            for d_ref, d_path, d_name, d_fid in conn.execute(
                text(
                    "SELECT source_ref, path, name, fid FROM org_unit WHERE version_id = :v "
                    "AND depth = 3"
                ),
                {"v": version.id},
            ).all():
                d_lo, d_hi = subtree_bounds(d_path)
                n = conn.execute(
                    text(
                        "SELECT count(*) FROM org_unit WHERE version_id = :v AND path >= :lo "
                        "AND path < :hi"
                    ),
                    {"v": version.id, "lo": d_lo, "hi": d_hi},
                ).scalar_one()
                key = (abs(n - synthetic_tree.UNITS_PER_DISTRICT), d_fid, d_ref, d_path, d_name)
                if best is None or key < best:
                    best = key
            assert best is not None, "no district in the tree"
            _gap, _fid, ref, dpath, name = best
        lo, hi = subtree_bounds(dpath)
        params = (version.id, lo, hi)
        raw_rows_sql = f"SELECT {ROWS_COLS} {RANGE}"
        raw_api_sql = f"SELECT {API_COLS} {RANGE}"

        timings: dict[str, list[float]] = {k: [] for k in ("raw_rows", "rows", "raw_api", "api")}
        sizes: dict[str, int] = {}
        with reg.read() as conn:
            steps: dict[str, Callable[[], int]] = {
                "raw_rows": lambda: len(raw.execute(raw_rows_sql, params).fetchall()),
                "rows": lambda: len(subtree_rows(conn, version, dpath)),
                "raw_api": lambda: len(raw.execute(raw_api_sql, params).fetchall()),
                "api": lambda: len(subtree(reg, c.SOURCE, ref, 1)),
            }
            for i in range(warmup + calls):
                for key, step in steps.items():
                    start = time.perf_counter()
                    sizes[key] = step()
                    if i >= warmup:
                        timings[key].append(time.perf_counter() - start)
        assert len(set(sizes.values())) == 1, sizes
        plans = {
            "range": _plan(raw, raw_rows_sql, params),
            "find_unit": _plan(
                raw,
                "SELECT fid FROM org_unit WHERE version_id = ? AND (uuid = ? OR source_ref = ?) "
                "ORDER BY CASE WHEN uuid = ? THEN 0 ELSE 1 END LIMIT 1",
                (version.id, ref, ref, ref),
            ),
        }
    finally:
        raw.close()
        reg.close()
    stats = {k: _stats(v) for k, v in timings.items()}
    return {
        "units": n_units,
        "district": {"ref": ref, "name": name, "path": dpath, "subtree_units": sizes["rows"]},
        "timings": stats,
        "ratio_rows": stats["rows"]["median_ms"] / stats["raw_rows"]["median_ms"],
        "ratio_api": stats["api"]["median_ms"] / stats["raw_api"]["median_ms"],
        "plans": plans,
    }


def run(
    sizes: list[int] | None = None,
    *,
    backend: str = "gpkg",
    seed: int = 1,
    calls: int = 300,
    out: Path = c.DEFAULT_OUT,
    reuse: bool = False,
) -> dict[str, Any]:
    sizes = sizes or [100_000, 1_000_000]
    print(f"== subtree: sizes {', '.join(f'{s:,}' for s in sizes)}, backend {backend}")
    per_size: list[dict[str, Any]] = []
    for size in sizes:
        path, imported = prepare(size, backend, seed, out, reuse)
        how = f"imported in {imported:.1f} s" if imported is not None else "reused"
        res = measure(path, calls)
        res["size"] = size
        res["import_seconds"] = imported
        per_size.append(res)
        d = res["district"]
        print(
            f"{size:,} units ({how}): district {d['name']!r} ({d['ref']}), "
            f"{d['subtree_units']:,} units in its subtree"
        )
        print(f"  plan (range read): {res['plans']['range']}")
        print(f"  plan (find_unit):  {res['plans']['find_unit']}")

    rows = []
    for r in per_size:
        t, n = r["timings"], r["district"]["subtree_units"]
        for key, label, ratio in (
            ("raw_rows", f"raw sqlite3 ({ROWS_COLS})", None),
            ("rows", "subtree_rows(conn, version, path)", r["ratio_rows"]),
            ("raw_api", f"raw sqlite3 ({API_COLS})", None),
            ("api", "subtree(reg, source, ref)", r["ratio_api"]),
        ):
            rows.append(
                [
                    f"{r['size']:,}",
                    label,
                    n,
                    t[key]["median_ms"],
                    t[key]["p90_ms"],
                    t[key]["median_ms"] * 1e3 / n,
                    "" if ratio is None else f"{ratio:.2f}x",
                ]
            )
    print(c.table(["units", "read", "rows", "median ms", "p90 ms", "us/row", "vs raw"], rows))
    worst = max(max(r["ratio_rows"], r["ratio_api"]) for r in per_size)
    print(f"worst API / raw: {c.verdict(worst, GOAL)}")
    flat: dict[str, float] = {}
    if len(per_size) > 1:
        first, last = per_size[0], per_size[-1]

        def per_row(r: dict[str, Any], key: str) -> float:
            return float(r["timings"][key]["median_ms"]) / r["district"]["subtree_units"]

        for key in ("raw_rows", "rows", "api"):
            flat[key] = per_row(last, key) / per_row(first, key)
        print(
            f"flatness {first['size']:,} → {last['size']:,} units, time per row read: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in flat.items())
        )
    result = {
        "backend": backend,
        "sizes": per_size,
        "worst_ratio": worst,
        "goal": GOAL,
        "met": worst <= GOAL,
        "flatness": flat,
    }
    c.save_result(out, f"subtree-{backend}", result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated unit counts")
    ap.add_argument("--backend", choices=["gpkg", "spatialite"], default="gpkg")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse registries left in --out by an earlier run of the same tree",
    )
    ap.add_argument("--out", type=Path, default=c.DEFAULT_OUT)
    args = ap.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    run(
        sizes,
        backend=args.backend,
        seed=args.seed,
        calls=args.calls,
        out=args.out,
        reuse=args.reuse,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
