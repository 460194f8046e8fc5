"""3-way merge benchmark: merging two drafts of a big tree, against copying it, in the same run.

Imports the synthetic tree (default 100k units), publishes it, makes two drafts
(copies) and edits each in SQL: ours renames 1 % of the units and moves 0.2 % of
the leaves, theirs recodes another 1 % and moves other leaves, and both rename the
same 0.1 % differently (conflicts).  Then times
``storage.merging.merge_three_way(base, ours, theirs)`` — read three versions,
plan field by field, copy the base into a new draft, write the differences
(audited), record the conflicts and run every integrity check — against the
baseline ``create_version(copy_from=1)`` (the SQL copy every merge starts with)
measured in the same run.

Goal (ours, no external reference): a 3-way merge of 100k units in under a minute
on 2 cores, i.e. within 20x of a bare copy of the version.

    .venv/bin/python benchmarks/bench_merge.py [--size 100000] [--backend gpkg|spatialite]
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

from storage.merging import merge_three_way
from storage.registry import Registry
from storage.versions import create_version, publish_version

GOAL_RATIO = 20.0
GOAL_SECONDS = 60.0


def _edit_drafts(reg: Registry) -> dict[str, int]:
    with reg.write(origin=c.ORIGIN) as conn:
        leaf_depth = conn.execute(text("SELECT max(depth) FROM org_unit WHERE version_id = 2")
                                  ).scalar_one()
        parents = [r[0] for r in conn.execute(text(
            "SELECT unit_key FROM org_unit WHERE version_id = 2 AND depth = :d ORDER BY fid"),
            {"d": leaf_depth - 1})]
        figures = {
            "renamed_ours": conn.execute(text(
                "UPDATE org_unit SET name = name || ' (ours)' WHERE version_id = 2 "
                "AND unit_key % 100 = 1")).rowcount,
            "recoded_theirs": conn.execute(text(
                "UPDATE org_unit SET code = 'T-' || unit_key WHERE version_id = 3 "
                "AND unit_key % 100 = 2")).rowcount,
            "conflicting_renames": conn.execute(text(
                "UPDATE org_unit SET name = name || ' (A)' WHERE version_id = 2 "
                "AND unit_key % 1000 = 3")).rowcount,
        }
        conn.execute(text("UPDATE org_unit SET name = name || ' (B)' WHERE version_id = 3 "
                          "AND unit_key % 1000 = 3"))
        moved = 0
        for version, rest in ((2, 5), (3, 6)):
            leaves = [r[0] for r in conn.execute(text(
                "SELECT fid FROM org_unit WHERE version_id = :v AND depth = :d AND "
                "unit_key % 500 = :r ORDER BY fid"), {"v": version, "d": leaf_depth, "r": rest})]
            for i, fid in enumerate(leaves):
                conn.execute(text("UPDATE org_unit SET parent_key = :p WHERE fid = :f"),
                             {"p": parents[(i * 7919) % len(parents)], "f": fid})
            moved += len(leaves)
        figures["moved"] = moved
    return figures


def run(size: int = 100_000, *, backend: str = "gpkg", seed: int = 1,
        out: Path = c.DEFAULT_OUT) -> dict[str, Any]:
    print(f"== 3-way merge: {size:,} units ({synthetic_tree.plan(size).describe()}), "
          f"backend {backend}")
    geojson, _ = c.tree_geojson(out, size, seed)
    path = c.registry_path(out, f"merge-{size}", backend)
    imported = c.georeg_import(path, synthetic_tree.read_geojson_units(geojson))
    print(f"import: {imported['seconds']:.2f} s")
    reg = Registry.open(path)
    try:
        publish_version(reg, c.SOURCE, 1, origin=c.ORIGIN)
        start = time.perf_counter()
        create_version(reg, c.SOURCE, copy_from=1, origin=c.ORIGIN)
        copy_seconds = time.perf_counter() - start
        create_version(reg, c.SOURCE, copy_from=1, origin=c.ORIGIN)
        print(f"baseline: create_version(copy_from=1): {copy_seconds:.2f} s")
        edits = _edit_drafts(reg)
        print(f"edits: {edits}")
        start = time.perf_counter()
        report = merge_three_way(reg, f"{c.SOURCE}:1", f"{c.SOURCE}:2", f"{c.SOURCE}:3",
                                 origin=c.ORIGIN)
        merge_seconds = time.perf_counter() - start
    finally:
        reg.close()
    counts = report["counts"]
    print(f"merge3 → v{report['version']['number']}: {merge_seconds:.2f} s "
          f"({counts['updated']:,} updated, {counts['moved']:,} moved, "
          f"{counts['conflicts']:,} conflicts; checks: {report['checks']['counts']})")
    assert counts["conflicts"] == edits["conflicting_renames"], counts
    ratio = merge_seconds / copy_seconds
    met = ratio <= GOAL_RATIO and merge_seconds <= GOAL_SECONDS
    print(f"merge / copy: {ratio:.1f}x (goal <= {GOAL_RATIO:g}x and < {GOAL_SECONDS:g} s): "
          f"{'met' if met else 'NOT met'}")
    result = {"size": size, "backend": backend, "edits": edits, "copy": copy_seconds,
              "merge": merge_seconds, "ratio": ratio, "counts": counts, "met": met}
    c.save_result(out, f"merge-{backend}-{size}", result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--backend", choices=["gpkg", "spatialite"], default="gpkg")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=c.DEFAULT_OUT)
    args = ap.parse_args(argv)
    run(args.size, backend=args.backend, seed=args.seed, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
