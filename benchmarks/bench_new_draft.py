"""New-draft benchmark: copying a whole version in SQL against importing it, in the same run.

Imports the synthetic tree (default 100k units) into a fresh registry with the
same BulkLoader import that bench_import.py times, then times
``storage.versions.create_version(reg, source, copy_from=1)`` — the new draft
is a set-based SQL copy of units, territories, groups and memberships (the
per-row audit triggers are off; one 'version create' entry is logged).  On
SQLite the units' per-row insert triggers are set aside for the copy and the
copied units' boxes are bulk-loaded into the location R-tree as one subtree
grafted under its root (``storage.bulk.fill_rtree``); ``--copies 3`` makes
several drafts in a row, each grafted onto the tree the previous one left.

Goal: a new draft costs at most half an import of the same tree.

    .venv/bin/python benchmarks/bench_new_draft.py [--size 100000] [--backend gpkg|spatialite]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
import synthetic_tree
from sqlalchemy import text

from storage.registry import Registry
from storage.versions import create_version

GOAL = 0.5


def run(
    size: int = 100_000,
    *,
    backend: str = "gpkg",
    seed: int = 1,
    copies: int = 1,
    out: Path = c.DEFAULT_OUT,
    profile: bool = False,
) -> dict[str, Any]:
    print(
        f"== new draft: {size:,} units ({synthetic_tree.plan(size).describe()}), backend {backend}"
    )
    geojson, _ = c.tree_geojson(out, size, seed)
    path = c.registry_path(out, f"new-draft-{size}", backend)
    imported = c.georeg_import(path, synthetic_tree.read_geojson_units(geojson))
    print(f"import (same BulkLoader path as bench_import): {imported['seconds']:.2f} s")

    reg = Registry.open(path)
    timer = c.StatementTimer()
    if profile:
        timer.attach(reg.engine)
    copy_secs: list[float] = []
    try:
        for _ in range(copies):
            start = time.perf_counter()
            made = create_version(reg, c.SOURCE, copy_from=1, origin=c.ORIGIN)
            copy_secs.append(time.perf_counter() - start)
            print(
                f"create_version(copy_from=1) → v{made['number']}: {copy_secs[-1]:.2f} s "
                f"({made['units']:,} units, {made['territories']:,} territories)"
            )
            assert made["units"] == size, made
        with reg.read() as conn:
            same = conn.execute(
                text(
                    "SELECT count(*) FROM org_unit a JOIN org_unit b ON b.version_id = :new "
                    "AND b.unit_key = a.unit_key AND b.uuid = a.uuid AND b.path = a.path "
                    "WHERE a.version_id = 1"
                ),
                {"new": made["id"]},
            ).scalar_one()
            log_rows = conn.execute(
                text("SELECT count(*) FROM change_log WHERE version_id = :v"), {"v": made["id"]}
            ).scalar_one()
    finally:
        reg.close()
    print(f"copy check: {same:,} units with the same key, uuid and path; {log_rows} log entry")
    if profile:
        print(timer.report(8))
    best = min(copy_secs)
    ratio = best / imported["seconds"]
    print(f"new draft / import: {c.verdict(ratio, GOAL)}")
    result = {
        "size": size,
        "backend": backend,
        "import": imported,
        "copy_seconds": copy_secs,
        "copy": best,
        "ratio": ratio,
        "goal": GOAL,
        "met": ratio <= GOAL,
    }
    c.save_result(out, f"new-draft-{backend}-{size}", result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--backend", choices=["gpkg", "spatialite"], default="gpkg")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--copies", type=int, default=1, help="drafts to make (v2, v3 …); best counts")
    ap.add_argument("--profile", action="store_true", help="show time per SQL statement")
    ap.add_argument("--out", type=Path, default=c.DEFAULT_OUT)
    args = ap.parse_args(argv)
    run(
        args.size,
        backend=args.backend,
        seed=args.seed,
        copies=args.copies,
        out=args.out,
        profile=args.profile,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
