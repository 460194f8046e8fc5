"""Diff benchmark: ``storage.diff.diff_versions`` against pygeodiff, in the same run.

Setup (not timed): the synthetic tree (default 100k units, benchmarks/synthetic_tree.py)
is imported as version 1 of a registry; version 2 is a draft copy in which 2 % of the
units are changed through ordinary SQL on the registry (the triggers keep paths and
the change log right): renamed, recoded, re-filed under another health area, closed,
given a new point (10 m to 2 km away), reshaped (health-area territories), deleted, and
new facilities added — about 2,000 units in all.

The baseline: pygeodiff (the engine of Mergin Maps) computing a changeset between two
GeoPackage files that hold exactly the same content as the two versions, in its most
favourable form: one file per version, a ``units`` point table and a ``territories``
polygon table, each keyed by the unit's stable key (so geodiff pairs rows by primary
key, as our diff pairs them by uuid), with every attribute the diff compares (name,
code, ref, type, parent, dates, status, aliases, extra fields, groups as text).  The
files are written before timing; geodiff's time is ``GeoDiff().create_changeset``
alone.

Ours is ``diff_versions(reg, "Synthetic:1", "Synthetic:2")`` on the registry itself
(both versions in one file, 200k unit rows): reading, pairing, comparing every field,
parent moves, closures, geodesic distances, areas and Hausdorff distances, totals per
level and type, and the before/after snapshots of every changed unit — far more than
a row-level changeset.  Best of ``--repeat`` runs each, interleaved.

Goal: ours ≤ 10x geodiff's time.

    .venv/bin/python benchmarks/bench_diff.py [--size 100000] [--backend gpkg|spatialite]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c
import synthetic_tree
from sqlalchemy import text

from storage import geometry
from storage.diff import diff_versions
from storage.registry import Registry
from storage.versions import create_version

GOAL = 10.0
CHANGE_SHARE = 0.02


def make_changes(reg: Registry, share: float = CHANGE_SHARE, seed: int = 7) -> dict[str, int]:
    """Change ``share`` of version 2's units with plain SQL (all triggers on)."""
    rng = random.Random(seed)
    with reg.write(origin=c.ORIGIN) as conn:
        fac = [tuple(r) for r in conn.execute(text(
            "SELECT fid, unit_key, parent_key FROM org_unit WHERE version_id = 2 AND depth = 5"))]
        areas = [tuple(r) for r in conn.execute(text(
            "SELECT fid, unit_key, parent_key FROM org_unit WHERE version_id = 2 AND depth = 4"))]
        total = conn.execute(text("SELECT count(*) FROM org_unit WHERE version_id = 2")
                             ).scalar_one()
        n = int(total * share)
        picked = rng.sample(fac, n)
        kinds = ["rename"] * 30 + ["code"] * 10 + ["move"] * 10 + ["close"] * 10 + \
            ["point"] * 20 + ["delete"] * 10 + ["new"] * 8 + ["reshape"] * 2
        counts: dict[str, int] = {}
        areas_by_district: dict[int, list[int]] = {}
        for _fid, key, parent in areas:
            areas_by_district.setdefault(parent, []).append(key)
        parent_of_area = {key: parent for _fid, key, parent in areas}
        b = reg.backend
        for i, (fid, _key, parent) in enumerate(picked):
            kind = kinds[i % len(kinds)]
            counts[kind] = counts.get(kind, 0) + 1
            p = {"f": fid}
            if kind == "rename":
                conn.execute(text("UPDATE org_unit SET name = name || ' II' WHERE fid = :f"), p)
            elif kind == "code":
                conn.execute(text("UPDATE org_unit SET code = code || '-B' WHERE fid = :f"), p)
            elif kind == "move":
                sibs = areas_by_district[parent_of_area[parent]]
                target = rng.choice([k for k in sibs if k != parent] or sibs)
                conn.execute(text("UPDATE org_unit SET parent_key = :t WHERE fid = :f"),
                             p | {"t": target})
            elif kind == "close":
                conn.execute(text("UPDATE org_unit SET closed_date = '2024-12-31' WHERE fid = :f"),
                             p)
            elif kind == "point":
                row = conn.execute(text(f"SELECT {geometry.select_sql(b, 'location')} FROM "
                                        "org_unit WHERE fid = :f"), p).scalar_one()
                pt = geometry.decode(b, row)
                d = rng.uniform(10, 2000) / 111_320  # 10 m to 2 km, in degrees
                moved = type(pt)(pt.x + d * rng.choice((-1, 1)), pt.y + d * rng.random())
                conn.execute(text(f"UPDATE org_unit SET location = {geometry.bind_sql(b, 'g')} "
                                  "WHERE fid = :f"), p | {"g": geometry.encode(b, moved)})
            elif kind == "delete":
                conn.execute(text("DELETE FROM group_membership WHERE version_id = 2 AND "
                                  "unit_key = (SELECT unit_key FROM org_unit WHERE fid = :f)"), p)
                conn.execute(text("DELETE FROM org_unit WHERE fid = :f"), p)
            elif kind == "new":
                conn.execute(text(
                    "INSERT INTO org_unit (version_id, uuid, source_ref, name, code, type_id, "
                    "parent_key, validation_status, opening_date, location) "
                    "SELECT version_id, :u, :r, name || ' annex', NULL, type_id, parent_key, "
                    "'new', opening_date, location FROM org_unit WHERE fid = :f"),
                    p | {"u": f"bench-new-{i}", "r": f"NEW{i:07d}"})
            else:  # reshape the facility's health area
                row = conn.execute(text(
                    f"SELECT t.fid, {geometry.select_sql(b, 't.territory')} FROM "
                    "org_unit_territory t JOIN org_unit a ON a.fid = t.unit_fid "
                    "WHERE a.version_id = 2 AND a.unit_key = :k"), {"k": parent}).one()
                poly = geometry.decode(b, row[1])
                grown = geometry.as_multipolygon(poly.buffer(0.002, join_style="mitre"))
                conn.execute(text(f"UPDATE org_unit_territory SET territory = "
                                  f"{geometry.bind_sql(b, 'g')} WHERE fid = :t"),
                             {"g": geometry.encode(b, grown), "t": row[0]})
    return counts


def export_for_geodiff(reg: Registry, version_id: int, out: Path) -> dict[str, int]:
    """One version as a plain GeoPackage keyed by the stable unit key (not timed)."""
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    out.unlink(missing_ok=True)
    b = reg.backend
    with reg.read() as conn:
        rows = conn.execute(text(
            "SELECT u.unit_key AS fid, u.uuid, u.source_ref, u.name, u.code, t.name AS type, "
            "u.parent_key, u.opening_date, u.closed_date, u.validation_status, u.aliases, "
            "u.extra_fields, (SELECT group_concat(m.group_key) FROM group_membership m "
            "WHERE m.version_id = u.version_id AND m.unit_key = u.unit_key) AS groups, "
            f"{geometry.select_sql(b, 'u.location')} AS loc, "
            f"{geometry.select_sql(b, 'r.territory')} AS ter "
            "FROM org_unit u LEFT JOIN org_unit_type t ON t.fid = u.type_id "
            "LEFT JOIN org_unit_territory r ON r.unit_fid = u.fid WHERE u.version_id = :v"),
            {"v": version_id}).all()
    frame = pd.DataFrame([dict(r._mapping) for r in rows])
    locs = [geometry.decode(b, v) for v in frame.pop("loc")]
    ters = [geometry.decode(b, v) for v in frame.pop("ter")]
    units = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(locs, crs="EPSG:4326"))
    pyogrio.write_dataframe(units, out, layer="units", driver="GPKG", geometry_type="Point")
    has = [t is not None for t in ters]
    terr = gpd.GeoDataFrame({"fid": frame["fid"][has].to_numpy()},
                            geometry=gpd.GeoSeries([t for t in ters if t is not None],
                                                   crs="EPSG:4326"))
    pyogrio.write_dataframe(terr, out, layer="territories", driver="GPKG",
                            geometry_type="MultiPolygon")
    with sqlite3.connect(out) as db:  # the stable keys really are the primary keys
        got = db.execute("SELECT min(fid), max(fid), count(*) FROM units").fetchone()
        assert got[2] == len(frame) and got[1] == frame["fid"].max(), got
    return {"units": len(frame), "territories": int(sum(has))}


def run(size: int = 100_000, *, backend: str = "gpkg", seed: int = 1, repeat: int = 3,
        out: Path = c.DEFAULT_OUT) -> dict[str, Any]:
    import pygeodiff

    print(f"== diff: two versions of {size:,} units ({synthetic_tree.plan(size).describe()}), "
          f"{CHANGE_SHARE:.0%} changed, backend {backend}")
    geojson, _ = c.tree_geojson(out, size, seed)
    path = c.registry_path(out, f"diff-{size}", backend)
    imported = c.georeg_import(path, synthetic_tree.read_geojson_units(geojson))
    print(f"import: {imported['seconds']:.2f} s")
    reg = Registry.open(path)
    try:
        create_version(reg, c.SOURCE, copy_from=1, origin=c.ORIGIN)
        t0 = time.perf_counter()
        made = make_changes(reg)
        print(f"changes in v2 ({time.perf_counter() - t0:.1f} s): "
              + ", ".join(f"{k} {v}" for k, v in sorted(made.items())))
        work = Path(tempfile.mkdtemp(prefix="bench-diff-", dir=out))
        f1, f2, cs = work / "v1.gpkg", work / "v2.gpkg", work / "v1-v2.diff"
        e1 = export_for_geodiff(reg, 1, f1)
        export_for_geodiff(reg, 2, f2)
        print(f"geodiff inputs: {e1['units']:,} units + {e1['territories']:,} territories per "
              "file, keyed by unit_key")
        geo = pygeodiff.GeoDiff()
        ours_s: list[float] = []
        geo_s: list[float] = []
        diff = None
        for _ in range(repeat):
            cs.unlink(missing_ok=True)
            t = time.perf_counter()
            geo.create_changeset(str(f1), str(f2), str(cs))
            geo_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            diff = diff_versions(reg, f"{c.SOURCE}:1", f"{c.SOURCE}:2")
            ours_s.append(time.perf_counter() - t)
        assert diff is not None
        summary = work / "summary.json"
        geo.list_changes_summary(str(cs), str(summary))
        geo_changes = json.loads(summary.read_text())["geodiff_summary"]
        shutil.rmtree(work, ignore_errors=True)
    finally:
        reg.close()
    changed = {k: v for k, v in diff.totals.items() if k != "unchanged"}
    # a fast diff that finds the wrong things is worth nothing: check it against the edits
    # made (reshaped areas: the territory updates geodiff saw, an area may be picked twice)
    ter_updates = sum(g["update"] for g in geo_changes if g["table"] == "territories")
    expected = {"new": made.get("new", 0), "moved": made.get("move", 0),
                "closed": made.get("close", 0), "deleted": made.get("delete", 0),
                "modified": made.get("rename", 0) + made.get("code", 0) + made.get("point", 0)
                + ter_updates}
    wrong = {k: (diff.totals[k], v) for k, v in expected.items() if diff.totals[k] != v}
    if wrong:
        raise SystemExit(f"diff totals disagree with the edits made (got, expected): {wrong}")
    print("ours:    " + ", ".join(f"{k} {v}" for k, v in diff.totals.items())
          + f"; {len(diff.units):,} units listed with before/after")
    print("geodiff: " + ", ".join(f"{g['table']} +{g['insert']} ~{g['update']} -{g['delete']}"
                                  for g in geo_changes))
    best_ours, best_geo = min(ours_s), min(geo_s)
    ratio = best_ours / best_geo
    print(c.table(["", "best s", "runs"], [
        ["georeg diff_versions", best_ours, ", ".join(f"{s:.2f}" for s in ours_s)],
        ["pygeodiff create_changeset", best_geo, ", ".join(f"{s:.2f}" for s in geo_s)],
    ]))
    print(f"ours / geodiff: {c.verdict(ratio, GOAL)}")
    result = {"size": size, "backend": backend, "changes_made": made, "totals": diff.totals,
              "changed": sum(changed.values()), "geodiff_summary": geo_changes,
              "ours_seconds": ours_s, "geodiff_seconds": geo_s, "ours": best_ours,
              "geodiff": best_geo, "ratio": ratio, "goal": GOAL, "met": ratio <= GOAL}
    c.save_result(out, f"diff-{backend}-{size}", result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--backend", choices=["gpkg", "spatialite"], default="gpkg")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=c.DEFAULT_OUT)
    args = ap.parse_args(argv)
    run(args.size, backend=args.backend, seed=args.seed, repeat=args.repeat, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
