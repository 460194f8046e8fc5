"""Import benchmark: Georeg's streaming bulk import against ogr2ogr, in the same run.

The same synthetic tree (``synthetic_tree.py``) is written once to GeoJSON,
outside any timed region, then loaded by:

a) ``ogr2ogr -f GPKG`` — one layer, every feature (points and polygons in one
   GEOMETRY layer, as GDAL reads the file), one transaction (``-gt unlimited``),
   with GDAL's R-tree.  The baseline for the goal.
b) a bare Python ``sqlite3`` executemany into one GeoPackage-like table (GPKG
   geometry blobs built in Python, no index, no R-tree) — a reference for what
   Python + SQLite cost without any registry logic.
c) Georeg: ``Registry.create`` then ``BulkLoader`` in one write transaction
   (origin 'benchmark'): units with uuids, points, territories (as MultiPolygon),
   the tree (parent keys, paths, depths), two R-trees, the 7 ``org_unit``
   indexes, and the audit trail (as ``georeg import`` into a new version: one
   ``version import`` change-log row for the load; see docs/architecture.md).  Fed from the same GeoJSON file (the like-for-like
   run the goal is judged on) and, for reference, straight from the generator.

Each load runs in a fresh process; its wall time is measured with
time.perf_counter and its peak RSS read from wait4().  The Georeg import is also
run at a smaller size to show its peak RSS does not grow with the input.

    .venv/bin/python benchmarks/bench_import.py [--size 100000] [--backend gpkg|spatialite]
        [--rss-size 20000] [--repeat 1] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sqlite3
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _common as c
import synthetic_tree

GOAL = 1.25


# --- children (run in their own process) --------------------------------------------


def _gpkg_blob(geom: dict[str, Any]) -> bytes:
    """GeoPackage blob of a GeoJSON Point (as is) or Polygon (as MultiPolygon)."""
    coords = geom["coordinates"]
    if geom["type"] == "Point":
        return struct.pack("<2sBBiBI2d", b"GP", 0, 1, 4326, 1, 1, coords[0], coords[1])
    rings = coords
    xs = [p[0] for p in rings[0]]
    ys = [p[1] for p in rings[0]]
    parts = [
        struct.pack("<2sBBi4d", b"GP", 0, 3, 4326, min(xs), max(xs), min(ys), max(ys)),
        struct.pack("<BIIBII", 1, 6, 1, 1, 3, len(rings)),
    ]
    for ring in rings:
        parts.append(struct.pack("<I", len(ring)))
        parts.append(struct.pack(f"<{2 * len(ring)}d", *(v for p in ring for v in p)))
    return b"".join(parts)


def child_bare(path: Path, geojson: Path) -> dict[str, Any]:
    """The bare sqlite3 reference importer."""
    from storage.migrations.schema_0001 import GPKG_CORE

    c.remove_db(path)
    start = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("BEGIN IMMEDIATE")
    for sql in GPKG_CORE:
        db.execute(sql)
    db.execute(
        "CREATE TABLE org_unit (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, geom GEOMETRY, "
        "ref TEXT, name TEXT, parent_ref TEXT, level INTEGER, type TEXT, code TEXT, "
        "opening_date DATE)"
    )
    db.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, srs_id) "
        "VALUES ('org_unit', 'features', 'org_unit', 4326)"
    )
    db.execute(
        "INSERT INTO gpkg_geometry_columns VALUES ('org_unit', 'geom', 'GEOMETRY', 4326, 0, 0)"
    )

    def rows() -> Iterator[tuple[Any, ...]]:
        for f in synthetic_tree.iter_geojson_features(geojson):
            p: dict[str, Any] = f["properties"]  # type: ignore[assignment]
            yield (
                _gpkg_blob(f["geometry"]),  # type: ignore[arg-type]
                p["ref"],
                p["name"],
                p["parent_ref"],
                p["level"],
                p["type"],
                p["code"],
                p["opening_date"],
            )

    db.executemany(
        "INSERT INTO org_unit (geom, ref, name, parent_ref, level, type, code, opening_date) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows(),
    )
    db.execute("COMMIT")
    seconds = time.perf_counter() - start
    units = db.execute("SELECT count(*) FROM org_unit").fetchone()[0]
    db.close()
    return {"seconds": seconds, "units": units}


def child_read(input_kind: str, size: int, seed: int, geojson: Path | None) -> dict[str, Any]:
    """Only produce the UnitRecords (the input side of the Georeg import)."""
    start = time.perf_counter()
    n = sum(1 for _ in c.units_from(input_kind, size, seed, geojson))
    return {"seconds": time.perf_counter() - start, "units": n}


def child_georeg(
    path: Path, input_kind: str, size: int, seed: int, geojson: Path | None, profile: bool
) -> dict[str, Any]:
    records = c.units_from(input_kind, size, seed, geojson)
    if not profile:
        result = c.georeg_import(path, records)
    else:
        timer = c.StatementTimer()
        prof = cProfile.Profile()
        prof.enable()
        result = c.georeg_import(path, records, on_engine=timer.attach)
        prof.disable()
        stats_path = path.with_suffix(".prof")
        prof.dump_stats(stats_path)
        print(f"SQL statements by total time (inside {result['seconds']:.2f} s):")
        print(timer.report(12))
        print(f"\ncProfile (saved to {stats_path}), top functions by own time:")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(18)
    result["check"] = c.check_registry(path, result["version_id"])
    return result


# --- the benchmark ---------------------------------------------------------------------


def ogr2ogr_cmd(backend: str, dest: Path, geojson: Path) -> list[str]:
    fmt = ["-f", "GPKG"] if backend == "gpkg" else ["-f", "SQLite", "-dsco", "SPATIALITE=YES"]
    return ["ogr2ogr", *fmt, str(dest), str(geojson), "-nln", "org_unit", "-gt", "unlimited"]


def _count(path: Path, table: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def _best(runs: list[tuple[float, float, Any]]) -> tuple[float, float, Any]:
    return min(runs, key=lambda r: r[0])


def run(
    size: int = 100_000,
    *,
    backend: str = "gpkg",
    seed: int = 1,
    rss_size: int = 20_000,
    repeat: int = 1,
    out: Path = c.DEFAULT_OUT,
    profile: bool = False,
    generator_run: bool = True,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    print(f"== import: {size:,} units ({synthetic_tree.plan(size).describe()}), backend {backend}")
    geojson, wrote = c.tree_geojson(out, size, seed)
    mb = geojson.stat().st_size / 1e6
    how = f"written in {wrote:.1f} s" if wrote is not None else "reused"
    print(f"input: {geojson.name} ({mb:.0f} MB, {how}; not timed)")

    def child_args(n: int = size) -> list[str]:
        return ["--size", str(n), "--seed", str(seed), "--backend", backend]

    # a) ogr2ogr
    ogr_path = c.registry_path(out, "import-ogr2ogr", backend)
    ogr_runs = []
    for _ in range(repeat):
        c.remove_db(ogr_path)
        secs, rss, _ = c.run_measured(ogr2ogr_cmd(backend, ogr_path, geojson))
        ogr_runs.append((secs, rss, None))
    ogr_secs, ogr_rss, _ = _best(ogr_runs)
    ogr_units = _count(ogr_path, "org_unit")

    # b) bare sqlite3
    bare_path = out / "import-bare.gpkg"
    bare_runs = []
    for _ in range(repeat):
        res, rss = c.python_child(
            "bench_import.py",
            ["--child", "bare", "--path", str(bare_path), "--geojson", str(geojson)],
        )
        bare_runs.append((res["seconds"], rss, res))
    bare_secs, bare_rss, bare = _best(bare_runs)

    # c) Georeg, from the same GeoJSON file (and from the generator)
    def georeg(input_kind: str, n: int, src: Path, reps: int) -> tuple[float, float, Any]:
        path = c.registry_path(out, f"import-georeg-{input_kind}-{n}", backend)
        runs = []
        for _ in range(reps):
            res, rss = c.python_child(
                "bench_import.py",
                [
                    *child_args(n),
                    "--child",
                    "georeg",
                    "--input",
                    input_kind,
                    "--path",
                    str(path),
                    "--geojson",
                    str(src),
                ],
            )
            runs.append((res["seconds"], rss, res))
        return _best(runs)

    ours_secs, ours_rss, ours = georeg("geojson", size, geojson, repeat)
    read_res, read_rss = c.python_child(
        "bench_import.py",
        [*child_args(), "--child", "read", "--input", "geojson", "--geojson", str(geojson)],
    )
    rows: list[list[Any]] = [
        ["ogr2ogr (GDAL, C)", "tree.geojson", ogr_secs, size / ogr_secs, ogr_rss, 1.0],
        [
            "bare sqlite3 executemany",
            "tree.geojson",
            bare_secs,
            size / bare_secs,
            bare_rss,
            bare_secs / ogr_secs,
        ],
        [
            "Georeg BulkLoader",
            "tree.geojson",
            ours_secs,
            size / ours_secs,
            ours_rss,
            ours_secs / ogr_secs,
        ],
        [
            "  of which: reading the input",
            "tree.geojson",
            read_res["seconds"],
            size / read_res["seconds"],
            read_rss,
            read_res["seconds"] / ogr_secs,
        ],
    ]
    gen: dict[str, Any] | None = None
    if generator_run:
        gen_secs, gen_rss, gen = georeg("generator", size, geojson, 1)
        gen_read, gen_read_rss = c.python_child(
            "bench_import.py",
            [*child_args(), "--child", "read", "--input", "generator"],
        )
        rows += [
            [
                "Georeg BulkLoader",
                "generator",
                gen_secs,
                size / gen_secs,
                gen_rss,
                gen_secs / ogr_secs,
            ],
            [
                "  of which: generating",
                "generator",
                gen_read["seconds"],
                size / gen_read["seconds"],
                gen_read_rss,
                gen_read["seconds"] / ogr_secs,
            ],
        ]
    print(c.table(["importer", "input", "seconds", "units/s", "peak RSS MiB", "vs ogr2ogr"], rows))
    print(
        f"Georeg phases: create {ours['create']:.2f} s, load (stream, check, place, write "
        f"units and territories) {ours['load']:.2f} s, finish (units "
        f"whose parent came later, R-trees, indexes, memberships) {ours['finish']:.2f} s, "
        f"commit {ours['commit']:.2f} s"
    )
    chk = ours["check"]
    print(
        f"written: ogr2ogr {ogr_units:,} features; Georeg {chk['units']:,} units "
        f"({chk['with_path']:,} with path, {chk['with_parent']:,} with parent, depth "
        f"{chk['depth']}), {chk['territories']:,} territories, {chk['log_rows']} change-log row "
        f"for the import ({chk['logged_units']:,} units)"
    )
    assert ogr_units == size and chk["units"] == size and chk["with_path"] == size, chk
    assert chk["log_rows"] == 1 and chk["logged_units"] == size, chk

    small: dict[str, Any] | None = None
    if rss_size and rss_size < size:
        small_json, _ = c.tree_geojson(out, rss_size, seed)
        small_secs, small_rss, small = georeg("geojson", rss_size, small_json, 1)
        growth = ours_rss / small_rss
        print(
            f"peak RSS of the Georeg import: {rss_size:,} units {small_rss:.0f} MiB, "
            f"{size:,} units {ours_rss:.0f} MiB ({growth:.2f}x for {size / rss_size:.0f}x the "
            "units)"
        )
    ratio = ours_secs / ogr_secs
    print(
        "compared: every load in a fresh process, the same GeoJSON file, one transaction "
        "each; ogr2ogr writes one table with one R-tree, Georeg the registry (units, "
        "territories, tree, uuids, 7 indexes, 2 R-trees, audit trail)."
    )
    print(f"Georeg / ogr2ogr: {c.verdict(ratio, GOAL)}")
    result = {
        "size": size,
        "backend": backend,
        "seed": seed,
        "geojson_mb": mb,
        "ogr2ogr": {"seconds": ogr_secs, "rss_mib": ogr_rss, "runs": [r[0] for r in ogr_runs]},
        "bare_sqlite3": {"seconds": bare_secs, "rss_mib": bare_rss},
        "georeg": {**ours, "rss_mib": ours_rss, "runs": [ours_secs]},
        "georeg_input_only": {"seconds": read_res["seconds"], "rss_mib": read_rss},
        "georeg_generator": None if gen is None else {**gen, "rss_mib": gen_rss},
        "rss_small": None
        if small is None
        else {"size": rss_size, "rss_mib": small_rss, "seconds": small_secs},
        "ratio": ratio,
        "goal": GOAL,
        "met": ratio <= GOAL,
    }
    if profile:
        profile_path = c.registry_path(out, "import-georeg-profile", backend)
        print("\n-- profile of the Georeg import (cProfile + per-statement SQL time) --")
        _s, _r, report = c.run_measured(
            [
                sys.executable,
                str(Path(__file__)),
                *child_args(),
                "--child",
                "georeg",
                "--input",
                "geojson",
                "--path",
                str(profile_path),
                "--geojson",
                str(geojson),
                "--profile",
            ],
        )
        print("\n".join(line for line in report.splitlines() if not line.startswith("{")))
    c.save_result(out, f"import-{backend}-{size}", result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--backend", choices=["gpkg", "spatialite"], default="gpkg")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--rss-size",
        type=int,
        default=20_000,
        help="smaller size to compare peak RSS with (0: skip)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per importer; the best counts")
    ap.add_argument(
        "--no-generator",
        action="store_true",
        help="skip the Georeg run fed straight from the generator",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also profile one Georeg import (cProfile + SQL statement times)",
    )
    ap.add_argument("--out", type=Path, default=c.DEFAULT_OUT)
    # internal: one load in this (fresh) process
    ap.add_argument("--child", choices=["bare", "georeg", "read"], help=argparse.SUPPRESS)
    ap.add_argument(
        "--input", choices=["geojson", "generator"], default="geojson", help=argparse.SUPPRESS
    )
    ap.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--geojson", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "bare":
        print(json.dumps(child_bare(args.path, args.geojson)))
    elif args.child == "read":
        print(json.dumps(child_read(args.input, args.size, args.seed, args.geojson)))
    elif args.child == "georeg":
        res = child_georeg(args.path, args.input, args.size, args.seed, args.geojson, args.profile)
        print(json.dumps(res))
    else:
        run(
            args.size,
            backend=args.backend,
            seed=args.seed,
            rss_size=args.rss_size,
            repeat=args.repeat,
            out=args.out,
            profile=args.profile,
            generator_run=not args.no_generator,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
