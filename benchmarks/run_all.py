"""Run every benchmark with its default sizes and print one summary table.

``make bench`` runs this file (``.venv/bin/python benchmarks/run_all.py``).  Each
benchmark prints its own figures and its ratio against a baseline measured in
the same run; the summary collects the ratios against the goals.  Results are
also written as JSON under benchmarks/out/.

    .venv/bin/python benchmarks/run_all.py [--backend gpkg|spatialite] [--quick]

``--quick`` uses small sizes (20k import and new draft, subtree at 20k and 100k)
for a smoke run of a minute or so; the figures in docs/benchmarks.md come from
the default sizes (100k import and new draft, subtree at 100k and 1M).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
import bench_dhis2_push
import bench_diff
import bench_formats
import bench_iaso_download
import bench_import
import bench_matching_quality
import bench_matching_scale
import bench_merge
import bench_new_draft
import bench_postgis_push
import bench_submissions
import bench_subtree


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backend", choices=["gpkg", "spatialite"], default="gpkg")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=c.DEFAULT_OUT)
    args = ap.parse_args(argv)
    size = 20_000 if args.quick else 100_000
    subtree_sizes = [20_000, 100_000] if args.quick else [100_000, 1_000_000]
    start = time.perf_counter()
    env = c.environment()
    print(f"environment: {env}\n")

    imp = bench_import.run(
        size, backend=args.backend, seed=args.seed, out=args.out, rss_size=size // 5
    )
    print()
    draft = bench_new_draft.run(size, backend=args.backend, seed=args.seed, out=args.out)
    print()
    fmt = bench_formats.run(size, seed=args.seed, out=args.out)
    print()
    sub = bench_subtree.run(subtree_sizes, backend=args.backend, seed=args.seed, out=args.out)
    print()
    dif = bench_diff.run(size, backend=args.backend, seed=args.seed, out=args.out)
    print()
    mrg = bench_merge.run(size, backend=args.backend, seed=args.seed, out=args.out)
    print()
    mq = bench_matching_quality.run(["sierra-leone", "drc-schools"], args.seed, args.out)
    print()
    ms = bench_matching_scale.run([10_000] if args.quick else [10_000, 50_000, 100_000],
                                  args.seed, args.out)
    print()
    iaso = bench_iaso_download.run(size, forms=200, seed=args.seed, out=args.out)
    print()
    pgp = bench_postgis_push.run(size, 1000, args.seed, args.out)
    print()
    d2p = bench_dhis2_push.run(1000, args.out)
    print()
    subm = bench_submissions.run(5.0 if args.quick else 30.0, 20, args.out)
    elapsed = time.perf_counter() - start

    rows: list[list[Any]] = [
        [
            f"import {size:,} units",
            f"{imp['georeg']['seconds']:.2f} s",
            f"ogr2ogr {imp['ogr2ogr']['seconds']:.2f} s",
            f"{imp['ratio']:.2f}x",
            f"<= {imp['goal']:g}x",
            _met(imp["met"]),
        ],
        [
            f"import peak RSS {size // 5:,} → {size:,}",
            f"{imp['georeg']['rss_mib']:.0f} MiB",
            f"{imp['rss_small']['rss_mib']:.0f} MiB" if imp["rss_small"] else "-",
            f"{imp['georeg']['rss_mib'] / imp['rss_small']['rss_mib']:.2f}x"
            if imp["rss_small"]
            else "-",
            "flat",
            "",
        ],
        [
            f"new draft of {size:,} units",
            f"{draft['copy']:.2f} s",
            f"import {draft['import']['seconds']:.2f} s",
            f"{draft['ratio']:.2f}x",
            f"<= {draft['goal']:g}x",
            _met(draft["met"]),
        ],
    ]
    for r in sub["sizes"]:
        t = r["timings"]
        rows.append(
            [
                f"subtree_rows, {r['size']:,} units",
                f"{t['rows']['median_ms']:.2f} ms",
                f"raw {t['raw_rows']['median_ms']:.2f} ms",
                f"{r['ratio_rows']:.2f}x",
                f"<= {sub['goal']:g}x",
                _met(r["ratio_rows"] <= sub["goal"]),
            ]
        )
        rows.append(
            [
                f"subtree(), {r['size']:,} units",
                f"{t['api']['median_ms']:.2f} ms",
                f"raw {t['raw_api']['median_ms']:.2f} ms",
                f"{r['ratio_api']:.2f}x",
                f"<= {sub['goal']:g}x",
                _met(r["ratio_api"] <= sub["goal"]),
            ]
        )
    for name, case in fmt["cases"].items():
        rows.append([f"{name}, {size:,} units", f"{case['seconds']:.2f} s",
                     f"ogr2ogr {case['baseline']} {case['baseline_seconds']:.2f} s",
                     f"{case['ratio']:.2f}x", f"<= {fmt['goal']:g}x", _met(case["met"])])
    rows.append([f"diff of two {size:,}-unit versions (2 % changed)", f"{dif['ours']:.2f} s",
                 f"pygeodiff {dif['geodiff']:.2f} s", f"{dif['ratio']:.2f}x",
                 f"<= {dif['goal']:g}x", _met(dif["met"])])
    rows.append([f"3-way merge of {size:,} units", f"{mrg['merge']:.2f} s",
                 f"copy {mrg['copy']:.2f} s", f"{mrg['ratio']:.1f}x",
                 f"<= {bench_merge.GOAL_RATIO:g}x, < {bench_merge.GOAL_SECONDS:g} s",
                 _met(mrg["met"])])
    for q in mq["results"]:
        rows.append([f"matching F1 auto+review, {q['tree']}", f"{q['auto_review']['f1']:.3f}",
                     f"Iaso {q['iaso']['f1']:.3f}", f"+{q['f1_above_iaso']:.2f}",
                     ">= 0.95, +0.25", _met(q["auto_review"]["f1"] >= 0.95
                                           and q["f1_above_iaso"] >= 0.25)])
        rows.append([f"matching precision auto, {q['tree']}", f"{q['auto']['precision']:.3f}",
                     "-", "-", ">= 0.98", _met(q["auto"]["precision"] >= 0.98)])
    for m in ms["results"]:
        rows.append([f"matching {m['size']:,} x {m['size']:,}", f"{m['seconds']:.1f} s",
                     f"Iaso {m['iaso_seconds']:.2f} s", f"{m['rss_mib']:.0f} MiB",
                     "50k: < 60 s, < 2 GB", _met(m["seconds"] < 60 and m["rss_mib"] < 2048)
                     if m["size"] == 50_000 else ""])
    rows.append([f"Iaso org-unit download, {size:,} units (HTTP)",
                 f"{iaso['http_seconds']:.2f} s", f"sqlite3+json {iaso['baseline_seconds']:.2f} s",
                 f"{iaso['ratio_http_vs_baseline']:.2f}x", "< 2 s", _met(iaso["met_download"])])
    rows.append([f"Iaso download server RSS growth, {size // 5:,} → {size:,}",
                 f"{iaso['rss_growth_big_mib']:.0f} MiB",
                 f"{iaso['rss_growth_small_mib']:.0f} MiB", "", "flat", ""])
    rows.append([f"submissions/s, {subm['clients']} clients, {subm['seconds']:g} s",
                 f"{subm['georeg']['rate']:.0f}/s p99 {subm['georeg']['p99_ms']:.0f} ms",
                 f"bare waitress {subm['baseline']['rate']:.0f}/s", f"{subm['ratio']:.2f}x",
                 ">= 200/s, p99 < 500 ms, none lost", _met(all(subm["met"].values()))])
    rows.append([f"Iaso form list, {iaso['forms']} forms", f"{iaso['forms_median_ms']:.1f} ms",
                 f"sqlite3+json {iaso['forms_baseline_ms']:.1f} ms", "", "< 50 ms",
                 _met(iaso["met_forms"])])
    rows.append([f"PostGIS first push, {size:,} units", f"{pgp['first_push']:.2f} s",
                 f"ogr2ogr {pgp['ogr2ogr']:.2f} s", f"{pgp['ratio']:.2f}x",
                 f"<= {pgp['goal']:g}x", _met(pgp["met"])])
    rows.append([f"PostGIS push of {pgp['changes']:,} changes", f"{pgp['change_push']:.2f} s",
                 f"first push {pgp['first_push']:.2f} s", f"{pgp['share']:.1%}",
                 f"<= {pgp['goal_share']:.0%}", _met(pgp["met_share"])])
    rows.append([f"DHIS2 push of {d2p['units']:,} new units", f"{d2p['ours']['requests']} requests",
                 f"per unit {d2p['per_unit']['requests']:,} requests", f"{d2p['ratio']:.3f}x",
                 f"<= {d2p['goal']} requests", _met(d2p["met"])])
    if sub["flatness"]:
        first, last = sub["sizes"][0]["size"], sub["sizes"][-1]["size"]
        rows.append(
            [
                f"subtree() per row, {first:,} → {last:,} units",
                f"{_us_per_row(sub['sizes'][-1]):.2f} us",
                f"{_us_per_row(sub['sizes'][0]):.2f} us",
                f"{sub['flatness']['api']:.2f}x",
                "flat",
                "",
            ]
        )
    print(f"\n== summary ({args.backend}, {env['cpus']} CPUs, {elapsed / 60:.1f} min in all)")
    print(c.table(["benchmark", "ours", "baseline (same run)", "ratio", "goal", ""], rows))
    c.save_result(
        args.out,
        f"summary-{args.backend}",
        {"environment": env, "import": imp, "new_draft": draft, "subtree": sub, "formats": fmt,
         "diff": dif, "merge": mrg,
         "seconds": elapsed},
    )
    return 0


def _us_per_row(r: dict[str, Any]) -> float:
    return float(r["timings"]["api"]["median_ms"]) * 1e3 / r["district"]["subtree_units"]


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


if __name__ == "__main__":
    sys.exit(main())
