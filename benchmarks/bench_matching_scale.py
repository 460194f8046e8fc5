"""Matching at scale: 10k x 10k, 50k x 50k and 100k x 100k synthetic units.

The left list is a synthetic tree (:mod:`synthetic_tree`: country, regions, districts,
health areas, ~95 % facilities); the right list is derived from it with the damage
of :mod:`matching_damage` (names, coordinates moved 10 m - 2 km, 30 % without
coordinates, refs "R" + the left ref: this benchmark measures time and memory only,
and the matcher never reads refs — quality, with opaque refs, is
bench_matching_quality.py's).  Both are imported into one GeoPackage (not timed); then the
whole ``MatchJob`` — read both versions, match, write every link — runs in a fresh
interpreter whose wall time and peak RSS are measured.  The baseline, in the same
child on the same loaded units, is Iaso's exact-name algorithm (:mod:`iaso_matching`).

Goal: 50k x 50k in under 60 s on 2 cores, under 2 GB, growing close to linearly.
Building the lists (two imports per size, not timed) takes longer than matching them.

    .venv/bin/python benchmarks/bench_matching_scale.py [--sizes 10000 50000 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _common as c  # noqa: E402
import synthetic_tree  # noqa: E402
from matching_damage import Rates, _move, damage_name  # noqa: E402

from storage.registry import Registry  # noqa: E402
from sync.exchange import ImportPayload, TypeDef  # noqa: E402
from sync.importing import import_payload  # noqa: E402

GOAL_SECONDS_50K = 60.0
GOAL_MIB_50K = 2048.0


def build(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    rates = Rates()
    left = list(synthetic_tree.iter_units(size, seed))
    leaf = {u.source_ref for u in left if u.type_name == synthetic_tree.LEVEL_TYPES[5]}
    right = []
    for u in left:
        is_leaf = u.source_ref in leaf
        loc = u.location
        if is_leaf and loc is not None:
            loc = None if rng.random() < rates.no_coordinates else _move(rng, loc)
        right.append(replace(u, source_ref="R" + str(u.source_ref),
                             parent_ref=("R" + u.parent_ref) if u.parent_ref else None,
                             name=damage_name(rng, u.name, rates, is_leaf), location=loc,
                             uuid=None, code=None))
    types = [TypeDef(name, depth) for depth, name in synthetic_tree.LEVEL_TYPES.items()]
    c.remove_db(path)
    reg = Registry.create(path)
    try:
        for source, units in (("Ministry", left), ("Survey", right)):
            import_payload(reg, ImportPayload(units=units, types=types, total=len(units)),
                           source=source, origin="benchmark")
    finally:
        reg.close()


def child(path: Path) -> None:
    """In a fresh interpreter: the whole match job, then Iaso's algorithm on the same units."""
    from iaso_matching import iaso_match

    from storage.matching.job import MatchJob

    reg = Registry.open(path)
    try:
        t0 = time.perf_counter()
        job = MatchJob(reg, "Ministry", "Survey", origin="benchmark")
        summary = job.run()
        seconds = time.perf_counter() - t0
        assert job.sides is not None
        t1 = time.perf_counter()
        iaso = iaso_match(*job.sides)
        iaso_seconds = time.perf_counter() - t1
    finally:
        reg.close()
    print(json.dumps({"seconds": seconds, "counts": summary["counts"],
                      "left_units": summary["left_units"], "iaso_seconds": iaso_seconds,
                      "iaso_links": len(iaso)}))


def run(sizes: list[int], seed: int = 1, out: Path = c.DEFAULT_OUT) -> dict[str, Any]:
    results = []
    for size in sizes:
        path = out / f"match-scale-{size}-s{seed}.gpkg"
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        build(path, size, seed)
        build_s = time.perf_counter() - t0
        res, rss = c.python_child("bench_matching_scale.py", ["--child", str(path)])
        res.update(size=size, rss_mib=rss, build_seconds=build_s)
        results.append(res)
        c.remove_db(path)
    rows = []
    for r in results:
        cnt = r["counts"]
        rows.append([f"{r['size']:,} x {r['size']:,}", f"{r['seconds']:.1f} s",
                     f"{r['rss_mib']:.0f} MiB", f"{r['seconds'] * 1e6 / r['size']:.0f} us",
                     f"{cnt['auto']:,} / {cnt['review']:,}",
                     f"Iaso {r['iaso_seconds']:.2f} s ({r['iaso_links']:,} links)",
                     f"{r['seconds'] / max(r['iaso_seconds'], 1e-9):.0f}x"])
    print("== matching scale (whole job: read, match, store links; fresh process each)")
    print(c.table(["units", "time", "peak RSS", "per unit", "auto / review",
                   "baseline (same run)", "ratio"], rows))
    growth = None
    if len(results) >= 2:
        a, b = results[0], results[-1]
        growth = (b["seconds"] / a["seconds"]) / (b["size"] / a["size"])
        print(f"time per unit, {a['size']:,} -> {b['size']:,}: x{growth:.2f} (1.0 = linear)")
    r50 = next((r for r in results if r["size"] == 50_000), None)
    met = None
    if r50:
        met = r50["seconds"] < GOAL_SECONDS_50K and r50["rss_mib"] < GOAL_MIB_50K
        print(f"goal 50k x 50k < {GOAL_SECONDS_50K:.0f} s and < {GOAL_MIB_50K:.0f} MiB: "
              f"{'met' if met else 'NOT met'} ({r50['seconds']:.1f} s, {r50['rss_mib']:.0f} MiB)")
    result = {"results": results, "growth_per_unit": growth, "met": met,
              "environment": c.environment()}
    c.save_result(out, "matching-scale", result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=c.DEFAULT_OUT)
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    run(list(args.sizes), args.seed, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
