"""Matching quality on real trees with realistic damage, next to Iaso's algorithm.

For each tree (Sierra Leone facilities, DRC schools) :mod:`matching_damage` derives a
second list with its ground truth; both are imported into one GeoPackage registry
as sources "Ministry" (left) and "Survey" (right); Georeg's ``MatchJob`` runs the
whole way (read, match, store links); Iaso's "name and parent similarity"
algorithm (:mod:`iaso_matching`) runs on the same loaded units in the same run.

Reported: precision / recall / F1 of the auto links and of auto + review links,
Iaso's as is and a generous variant where every area pair was linked by hand first
(so only the leaves are Iaso's work; the goal is measured against plain Iaso),
the review load, recall on split and merge pairs, and a reliability table (does a
score of 0.8 mean 80 % right?).  Goals: precision(auto) >= 0.98, F1(auto+review)
>= 0.95, F1 at least 0.25 above Iaso's.

    .venv/bin/python benchmarks/bench_matching_quality.py [--seed 1] [--tree sierra-leone]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _common as c  # noqa: E402
from iaso_matching import iaso_match  # noqa: E402
from matching_damage import TREES, derive  # noqa: E402

from storage.matching.job import MatchJob  # noqa: E402
from storage.registry import Registry  # noqa: E402
from sync.importing import import_payload  # noqa: E402

GOAL_PRECISION_AUTO = 0.98
GOAL_F1 = 0.95
GOAL_ABOVE_IASO = 0.25


def prf(pred: set[tuple[str, str]], truth: set[tuple[str, str]]) -> dict[str, float]:
    tp = len(pred & truth)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(truth) if truth else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4),
            "links": len(pred)}


def run_tree(tree: str, seed: int) -> dict[str, Any]:
    damaged = derive(tree, seed)
    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry.create(Path(tmp) / "match.gpkg")
        try:
            import_payload(reg, damaged.payload("left"), source="Ministry", origin="benchmark",
                           fix_geometry=True)
            import_payload(reg, damaged.payload("right"), source="Survey", origin="benchmark",
                           fix_geometry=True)
            t0 = time.perf_counter()
            job = MatchJob(reg, "Ministry", "Survey", origin="benchmark")
            summary = job.run()
            seconds = time.perf_counter() - t0
            assert job.sides is not None and job.result is not None
            left, right = job.sides
            t1 = time.perf_counter()
            iaso = iaso_match(left, right)
            iaso_seconds = time.perf_counter() - t1
            # a generous variant: every area (non-leaf) pair linked by hand beforehand, so a
            # misspelt district does not cost Iaso its whole subtree
            li = {left.display_ref(i): i for i in range(len(left))}
            rj = {right.display_ref(j): j for j in range(len(right))}
            given: dict[int, set[int]] = {}
            for a, b in damaged.truth:
                if a in damaged.areas:
                    given.setdefault(li[a], set()).add(rj[b])
            iaso_given = iaso_match(left, right, given)
        finally:
            reg.close()
    truth = damaged.truth

    def pair(i: int, j: int) -> tuple[str, str]:
        return (left.display_ref(i), right.display_ref(j))

    links = job.result.links
    auto = {pair(lk.left, lk.right) for lk in links if lk.status in ("auto", "accepted")}
    both = auto | {pair(lk.left, lk.right) for lk in links if lk.status == "review"}
    iaso_pairs = {pair(i, j) for i, j, _ in iaso}
    iaso_given_pairs = {pair(i, j) for i, j, _ in iaso_given} | {
        p for p in truth if p[0] in damaged.areas}
    one_to_many = {p for p, k in damaged.kinds.items() if k in ("split", "merge")}
    bins = [(0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 0.95), (0.95, 1.01)]
    reliability = []
    for lo, hi in bins:
        sel = [pair(lk.left, lk.right) in truth for lk in links if lo <= lk.score < hi]
        if sel:
            reliability.append({"scores": f"{lo:.2f}-{min(hi, 1):.2f}", "links": len(sel),
                                "right": round(sum(sel) / len(sel), 3)})
    georeg_f1 = prf(both, truth)["f1"]
    iaso_f1 = prf(iaso_pairs, truth)["f1"]
    return {
        "tree": tree, "seed": seed, "damage": damaged.stats,
        "auto": prf(auto, truth), "auto_review": prf(both, truth), "iaso": prf(iaso_pairs, truth),
        "iaso_areas_given": prf(iaso_given_pairs, truth),
        "review_load": summary["counts"]["review"],
        "review_share": round(summary["counts"]["review"] / max(1, len(left)), 4),
        "split_merge_recall": round(len(both & one_to_many) / max(1, len(one_to_many)), 4),
        "split_merge_links": summary["counts"]["kinds"],
        "reliability": reliability, "seconds": round(seconds, 2),
        "iaso_seconds": round(iaso_seconds, 3), "f1_above_iaso": round(georeg_f1 - iaso_f1, 4),
    }


def run(trees: list[str], seed: int = 1, out: Path = c.DEFAULT_OUT) -> dict[str, Any]:
    results = [run_tree(t, seed) for t in trees]
    rows = []
    for r in results:
        for label, key in (("Georeg auto", "auto"), ("Georeg auto+review", "auto_review"),
                           ("Iaso (same run)", "iaso"),
                           ("Iaso, areas linked by hand", "iaso_areas_given")):
            m = r[key]
            rows.append([r["tree"], label, m["links"], m["precision"], m["recall"], m["f1"]])
    print(f"== matching quality (seed {seed})")
    print(c.table(["tree", "algorithm", "links", "precision", "recall", "F1"], rows))
    for r in results:
        d = r["damage"]
        print(f"\n{r['tree']}: damage {d}")
        print(f"  leaf pairs whose names are equal but for case: "
              f"{d['truth_leaf_same_name_lowercase'] / max(1, d['truth_leaf_pairs']):.1%} "
              f"(the most an exact-name matcher can find among leaves)")
        print(f"  review load {r['review_load']} links ({r['review_share']:.1%} of left units); "
              f"split/merge pairs found (auto+review) {r['split_merge_recall']:.1%}; "
              f"kinds {r['split_merge_links']}; Georeg {r['seconds']} s, Iaso "
              f"{r['iaso_seconds']} s")
        print("  reliability (score band → share of links that are right): " + ", ".join(
            f"{b['scores']}: {b['right']:.0%} of {b['links']}" for b in r["reliability"]))
    met = {
        "precision_auto": all(r["auto"]["precision"] >= GOAL_PRECISION_AUTO for r in results),
        "f1_auto_review": all(r["auto_review"]["f1"] >= GOAL_F1 for r in results),
        "above_iaso": all(r["f1_above_iaso"] >= GOAL_ABOVE_IASO for r in results),
    }
    print(f"\ngoals: precision(auto) >= {GOAL_PRECISION_AUTO}: "
          f"{'met' if met['precision_auto'] else 'NOT met'}; F1(auto+review) >= {GOAL_F1}: "
          f"{'met' if met['f1_auto_review'] else 'NOT met'}; F1 >= Iaso's + "
          f"{GOAL_ABOVE_IASO}: {'met' if met['above_iaso'] else 'NOT met'}")
    result = {"results": results, "met": met}
    c.save_result(out, "matching-quality", result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tree", choices=sorted(TREES), action="append")
    ap.add_argument("--out", type=Path, default=c.DEFAULT_OUT)
    args = ap.parse_args(argv)
    run(args.tree or ["sierra-leone", "drc-schools"], args.seed, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
