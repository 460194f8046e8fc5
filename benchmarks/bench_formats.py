"""Format benchmark: import and export of iaso-gpkg and GeoJSON against ogr2ogr, same run.

The synthetic tree (``synthetic_tree.py``, 100k units by default) is written once
to GeoJSON and imported once into a source registry (neither is timed).  Then,
each in a fresh process:

* **export** the registry's version with Georeg's writers, as ``georeg export``
  does (``read_version`` + ``write_file``): ``iaso-gpkg`` (one ``level-N-Type``
  layer per type, the ``groups`` table) and ``geojson`` (one FeatureCollection);
* **import** into a new registry, as ``georeg import`` does (reader →
  ``ImportJob``: validation, bulk load, tree, audit, report): the iaso-gpkg file
  just exported, and the synthetic tree's GeoJSON.

Baselines, ogr2ogr converting the same features in the same run:

* GeoJSON → GPKG: ``ogr2ogr -f GPKG base.gpkg tree.geojson`` (one layer, every
  feature) — the baseline of the GeoJSON import;
* GPKG → GPKG: ``ogr2ogr -f GPKG copy.gpkg base.gpkg`` — the baseline of the
  iaso-gpkg import and export (GDAL reading and writing GeoPackage features);
* GPKG → GeoJSON: ``ogr2ogr -f GeoJSON out.geojson base.gpkg`` — the baseline of
  the GeoJSON export.

Times: ogr2ogr's are the wall time of its process; Georeg's are measured inside
its process from opening the input to the file or registry being complete (the
~0.4 s of Python start-up and imports is not counted — a long-running server or
GUI pays it once; that includes Alembic, which a new registry imports on first use to
create its schema, ~65 ms — imported before the clock since 2026-11-29, counted before).
Goal: ≤ 1.5× ogr2ogr for GeoPackage and GeoJSON.

Stages: the reading alone is timed too, each in its own process (the import's
reader with every unit drawn; ``read_version`` with every unit drawn, in the column
batches the writers read); a second
table prints it and the rest (total − reading: the writer, or the import job).  For
the imports it also prints the bulk loader alone (``storage/bulk.py``, with creating
the registry), timed in its own process on the same records read and validated
beforehand: the rest minus the loader is the import job's own validation and handoff.

    .venv/bin/python benchmarks/bench_formats.py [--size 100000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
import synthetic_tree

GOAL = 1.5


# --- children --------------------------------------------------------------------------


def child_export(registry: Path, fmt: str, out: Path) -> dict[str, Any]:
    from storage.registry import Registry
    from sync import formats
    from sync.exchange import read_version

    c.remove_db(out)
    start = time.perf_counter()
    reg = Registry.open(registry, upgrade=False)
    try:
        data = read_version(reg, c.SOURCE)
        summary = formats.module(fmt).write_file(data, out)
    finally:
        reg.close()
    return {"seconds": time.perf_counter() - start, "summary": summary,
            "bytes": out.stat().st_size}


def _lazy_imports() -> None:
    """What a new registry imports on first use — Alembic, to create the schema (65 ms):
    imported before the clock starts, like every other import (see the module doc: a
    long-running server or GUI pays imports once)."""
    import importlib

    for name in ("alembic.command", "alembic.config"):
        importlib.import_module(name)


def child_import(registry: Path, fmt: str, src: Path) -> dict[str, Any]:
    from storage.registry import Registry
    from sync import formats
    from sync.importing import ImportJob

    _lazy_imports()
    c.remove_db(registry)
    start = time.perf_counter()
    payload = formats.module(fmt).read_file(src)
    reg = Registry.create(registry, overwrite=True)
    try:
        result = ImportJob(reg, payload, source=c.SOURCE, origin=c.ORIGIN).run()
    finally:
        reg.close()
    return {"seconds": time.perf_counter() - start, "created": result["created"],
            "rejected": result["rejected"], "loaded": result["loaded"]}


def child_read(registry: Path, fmt: str, src: Path) -> dict[str, Any]:
    """The reading stage alone: for an import, the reader's payload with every unit
    drawn from it; for an export (``src`` is ``-``), ``read_version`` with every unit,
    in the column batches both writers read (``unit_batches``).
    With the garbage collector paused, as the import job and the writers pause it."""
    from storage.jobs import gc_paused
    from storage.registry import Registry
    from sync import formats
    from sync.exchange import read_version, unit_batches

    start = time.perf_counter()
    with gc_paused():
        if str(src) == "-":
            reg = Registry.open(registry, upgrade=False)
            try:
                units = sum(len(b) for b in unit_batches(read_version(reg, c.SOURCE)))
            finally:
                reg.close()
        else:
            # as the import takes them: tables the loader copies in SQL (iaso-gpkg's plain
            # layers, ``FileRows``) are read by the loader, so they count here unread
            payload = formats.module(fmt).read_file(src)
            units = sum(getattr(u, "count", 1) for u in (
                payload.load_units() if payload.load_units else payload.units))
    return {"seconds": time.perf_counter() - start, "units": units}


def child_load(registry: Path, fmt: str, src: Path) -> dict[str, Any]:
    """The import's bulk loader alone: the file is read and its records validated
    first (not timed, as the import job does it: ``_Validated``); then what is timed is
    creating the registry and ``BulkLoader`` taking the records, as the job drives it
    (types, groups, units, memberships, ``finish``: tree, indexes, audit) in one
    write transaction."""
    from storage.bulk import BulkLoader
    from storage.jobs import gc_paused
    from storage.registry import Registry
    from storage.versions import ensure_source, insert_version
    from sync import formats
    from sync.importing import ImportReport, _Validated

    _lazy_imports()
    c.remove_db(registry)
    with gc_paused():
        payload = formats.module(fmt).read_file(src)
        report = ImportReport()
        # (tables the loader copies in SQL stay one ``FileRows`` each: their rows are
        # read and checked by the loader's INSERT … SELECT, inside the timing)
        units_in = payload.load_units() if payload.load_units else payload.units
        records = list(_Validated(units_in, report, fix_geometry=False,
                                  keep_invalid=payload.invalid_geometry == "keep", job=None,
                                  total=payload.total))
        assert not report.rejected, report.rows[:3]
        start = time.perf_counter()
        reg = Registry.create(registry, overwrite=True)
        try:
            with reg.write(origin=c.ORIGIN) as conn:
                vid = insert_version(conn, ensure_source(conn, c.SOURCE))
                loader = BulkLoader(reg, conn, vid, new_version=True)  # as the job does
                for t in payload.types:
                    loader.add_type(t.name, t.depth, t.short_name)
                for g in payload.groups:
                    loader.add_group(g.ref, g.name, g.short_name, g.code)
                loader.add_units(records)
                loader.add_memberships(payload.memberships)
                units = loader.finish().units
        finally:
            reg.close()
    return {"seconds": time.perf_counter() - start, "units": units}


# --- the benchmark -----------------------------------------------------------------------


def _ogr(cmd: list[str], dest: Path, repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        c.remove_db(dest)
        secs, rss, _ = c.run_measured(cmd)
        runs.append((secs, rss))
    return min(runs)


def _ours(args: list[str], repeat: int) -> tuple[dict[str, Any], float]:
    runs = [c.python_child("bench_formats.py", args) for _ in range(repeat)]
    return min(runs, key=lambda r: r[0]["seconds"])


def run(size: int = 100_000, *, seed: int = 1, repeat: int = 1,
        out: Path = c.DEFAULT_OUT) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    print(f"== formats: {size:,} units ({synthetic_tree.plan(size).describe()})")
    geojson, _ = c.tree_geojson(out, size, seed)
    registry = out / f"formats-source-{size}.gpkg"
    built = c.georeg_import(registry, synthetic_tree.read_geojson_units(geojson))
    print(f"input: {geojson.name} ({geojson.stat().st_size / 1e6:.0f} MB) and a registry "
          f"holding it ({built['units']:,} units; built in {built['seconds']:.1f} s, not timed)")

    base = out / "formats-ogr-base.gpkg"
    ogr_to_gpkg = _ogr(["ogr2ogr", "-f", "GPKG", str(base), str(geojson), "-nln", "org_unit",
                        "-gt", "unlimited"], base, repeat)
    copy = out / "formats-ogr-copy.gpkg"
    ogr_gpkg_gpkg = _ogr(["ogr2ogr", "-f", "GPKG", str(copy), str(base), "-gt", "unlimited"],
                         copy, repeat)
    ogr_json = out / "formats-ogr.geojson"
    ogr_gpkg_json = _ogr(["ogr2ogr", "-f", "GeoJSON", str(ogr_json), str(base)], ogr_json,
                         repeat)

    iaso = out / "formats-export-iaso.gpkg"
    exp_iaso, exp_iaso_rss = _ours(["--child", "export", "--registry", str(registry),
                                    "--format", "iaso-gpkg", "--file", str(iaso)], repeat)
    ours_json = out / "formats-export.geojson"
    exp_json, exp_json_rss = _ours(["--child", "export", "--registry", str(registry),
                                    "--format", "geojson", "--file", str(ours_json)], repeat)
    imp_iaso, imp_iaso_rss = _ours(["--child", "import", "--registry",
                                    str(out / "formats-import-iaso.gpkg"), "--format",
                                    "iaso-gpkg", "--file", str(iaso)], repeat)
    imp_json, imp_json_rss = _ours(["--child", "import", "--registry",
                                    str(out / "formats-import-geojson.gpkg"), "--format",
                                    "geojson", "--file", str(geojson)], repeat)
    # the reading stage alone (a separate process each): what is left is the writer
    # (export) or validation, bulk load, tree and audit (import)
    stages = {
        "export iaso-gpkg": _ours(["--child", "read", "--registry", str(registry), "--format",
                                   "iaso-gpkg", "--file", "-"], repeat)[0],
        "import iaso-gpkg": _ours(["--child", "read", "--format", "iaso-gpkg", "--file",
                                   str(iaso)], repeat)[0],
        "import geojson": _ours(["--child", "read", "--format", "geojson", "--file",
                                 str(geojson)], repeat)[0],
    }
    stages["export geojson"] = stages["export iaso-gpkg"]
    # the bulk loader alone on the same records (a separate process each)
    loads = {
        "import iaso-gpkg": _ours(["--child", "load", "--registry", str(out / "formats-load.gpkg"),
                                   "--format", "iaso-gpkg", "--file", str(iaso)], repeat)[0],
        "import geojson": _ours(["--child", "load", "--registry", str(out / "formats-load.gpkg"),
                                 "--format", "geojson", "--file", str(geojson)], repeat)[0],
    }
    for name, res in (("iaso-gpkg import", imp_iaso), ("geojson import", imp_json)):
        assert res["created"] == size and res["rejected"] == 0, (name, res)
    for name, res in (("iaso-gpkg export", exp_iaso), ("geojson export", exp_json)):
        assert res["summary"]["units" if "units" in res["summary"] else "features"] == size, (
            name, res)

    cases = [
        ("export iaso-gpkg", exp_iaso, exp_iaso_rss, "GPKG → GPKG", ogr_gpkg_gpkg),
        ("export geojson", exp_json, exp_json_rss, "GPKG → GeoJSON", ogr_gpkg_json),
        ("import iaso-gpkg", imp_iaso, imp_iaso_rss, "GPKG → GPKG", ogr_gpkg_gpkg),
        ("import geojson", imp_json, imp_json_rss, "GeoJSON → GPKG", ogr_to_gpkg),
    ]
    rows = []
    results: dict[str, Any] = {"size": size, "seed": seed, "goal": GOAL, "cases": {}}
    for name, res, rss, base_name, (base_secs, base_rss) in cases:
        ratio = res["seconds"] / base_secs
        rows.append([name, res["seconds"], rss, f"ogr2ogr {base_name}", base_secs, base_rss,
                     f"{ratio:.2f}x", "met" if ratio <= GOAL else "NOT met"])
        results["cases"][name] = {"seconds": res["seconds"], "rss_mib": rss,
                                  "baseline": base_name, "baseline_seconds": base_secs,
                                  "baseline_rss_mib": base_rss, "ratio": ratio,
                                  "met": ratio <= GOAL}
    print(c.table(["Georeg", "seconds", "peak MiB", "baseline (same run)", "seconds",
                   "peak MiB", "ratio", f"goal <= {GOAL:g}x"], rows))
    stage_rows = []
    for name, res, _rss, _base_name, (base_secs, _base_rss) in cases:
        read = stages[name]["seconds"]
        rest = max(res["seconds"] - read, 0.0)
        what = "read_version" if name.startswith("export") else "reader"
        load = loads[name]["seconds"] if name in loads else None
        stage_rows.append([name, f"{what} {read:.2f}", f"{read / base_secs:.2f}x",
                           f"{rest:.2f}", f"{rest / base_secs:.2f}x",
                           "" if load is None else f"{load:.2f}",
                           "" if load is None else f"{load / base_secs:.2f}x"])
        results["cases"][name]["stages"] = {"read_seconds": read, "rest_seconds": rest,
                                            "loader_seconds": load}
    print("stages (reading alone, and the import's bulk loader alone on the same records, "
          "each measured in its own process; the rest = total - reading; ratios to the same "
          "baseline):")
    print(c.table(["case", "reading s", "ratio", "writer / job s", "ratio",
                   "of which loader s", "ratio"], stage_rows))
    print(f"files: iaso-gpkg {iaso.stat().st_size / 1e6:.0f} MB "
          f"({exp_iaso['summary']['layers']} layers), GeoJSON {ours_json.stat().st_size / 1e6:.0f}"
          f" MB; ogr2ogr GeoJSON {ogr_json.stat().st_size / 1e6:.0f} MB")
    results["met"] = all(v["met"] for v in results["cases"].values())
    c.save_result(out, f"formats-{size}", results)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the best counts")
    ap.add_argument("--out", type=Path, default=c.DEFAULT_OUT)
    ap.add_argument("--child", choices=["export", "import", "read", "load"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--registry", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--format", help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "export":
        print(json.dumps(child_export(args.registry, args.format, args.file), default=str))
    elif args.child == "read":
        print(json.dumps(child_read(args.registry, args.format, args.file), default=str))
    elif args.child == "load":
        print(json.dumps(child_load(args.registry, args.format, args.file), default=str))
    elif args.child == "import":
        print(json.dumps(child_import(args.registry, args.format, args.file), default=str))
    else:
        run(args.size, seed=args.seed, repeat=args.repeat, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
