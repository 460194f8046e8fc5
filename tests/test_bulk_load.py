"""The bulk loader: staged, set-wise, with every rule of the database still in force.

Children may come before their parents; the R-trees of a GeoPackage are bulk-loaded
into SQLite's own node format and must be indistinguishable from those the per-row
triggers build; the triggers set aside for the load are back afterwards.
"""

from __future__ import annotations

import sqlite3
import uuid as uuidlib
from pathlib import Path

import pytest
import shapely
from sqlalchemy import text

from storage.backends import Backend
from storage.bulk import BulkLoader, UnitRecord
from storage.errors import InvalidInput
from storage.ids import uuid7, uuid7_many
from storage.registry import Registry
from storage.versions import ensure_source, insert_version

RTREES = {"rtree_org_unit_location": ("org_unit", "location"),
          "rtree_org_unit_territory_territory": ("org_unit_territory", "territory")}


def records(n: int) -> list[UnitRecord]:
    """A root, 30 districts (polygons), n facilities (points) — facilities listed first."""
    out = [UnitRecord(name=f"Facility {i}", source_ref=f"F{i}", parent_ref=f"D{i % 30}",
                      type_name="Facility",
                      location=shapely.Point(-12 + (i * 7919 % 1000) / 997, 8 + i / n))
           for i in range(n)]
    for d in range(30):
        x = -12 + d / 10
        out.append(UnitRecord(name=f"District {d}", source_ref=f"D{d}", parent_ref="R",
                              type_name="District",
                              territory=shapely.box(x, 7.9, x + 0.1, 9.1)))
    out.append(UnitRecord(name="Root", source_ref="R"))
    return out


def load(reg: Registry, recs: list[UnitRecord], batch_size: int = 500) -> int:
    with reg.write(origin="test") as conn:
        vid = insert_version(conn, ensure_source(conn, "S"))
        loader = BulkLoader(reg, conn, vid, batch_size=batch_size)
        loader.add_units(recs)
        stats = loader.finish()
    assert stats.units == len(recs)
    return vid


def test_children_before_parents_get_paths_and_audit(registry: Registry) -> None:
    vid = load(registry, records(2000))
    with registry.read() as conn:
        rows = conn.execute(text(
            "SELECT u.source_ref, u.path, u.depth, p.source_ref FROM org_unit u LEFT JOIN "
            "org_unit p ON p.version_id = u.version_id AND p.unit_key = u.parent_key "
            "WHERE u.version_id = :v"), {"v": vid}).all()
        by_ref = {r[0]: r for r in rows}
        assert by_ref["R"][2] == 1 and by_ref["D3"][3] == "R" and by_ref["F33"][3] == "D3"
        assert by_ref["F33"][1].startswith(by_ref["D3"][1]) and by_ref["F33"][2] == 3
        audit = conn.execute(text(
            "SELECT entity, count(*) FROM change_log WHERE version_id = :v AND origin = 'test' "
            "GROUP BY entity ORDER BY entity"), {"v": vid}).all()
    assert [tuple(a) for a in audit] == [("org_unit", 2031), ("territory", 30)]


def test_duplicate_uuid_is_refused_naming_both_rows(registry: Registry) -> None:
    same = str(uuidlib.uuid4())
    recs = [UnitRecord(name="Root", source_ref="R", where="row 1"),
            UnitRecord(name="A", source_ref="A", parent_ref="R", uuid=same, where="row 2"),
            UnitRecord(name="B", source_ref="B", parent_ref="R", uuid=same, where="row 3")]
    with pytest.raises(InvalidInput, match=r"row 3: uuid .* is used twice \(also by row 2\)"):
        load(registry, recs)


def _gpkg(registry: Registry) -> sqlite3.Connection:
    assert registry.location.path is not None
    db = sqlite3.connect(registry.location.path)
    db.enable_load_extension(True)
    db.load_extension("mod_spatialite")
    return db


@pytest.mark.parametrize("backend", ["gpkg"], indirect=True)
def test_bulk_loaded_rtrees_equal_what_the_triggers_build(registry: Registry,
                                                          tmp_path: Path) -> None:
    assert registry.backend is Backend.GEOPACKAGE
    load(registry, records(3000))  # > one R-tree node level: a real tree is packed
    db = _gpkg(registry)
    try:
        triggers = {r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'rtree_%'")}
        assert {"rtree_org_unit_location_insert",
                "rtree_org_unit_territory_territory_insert"} <= triggers
        for rtree, (table, column) in RTREES.items():
            assert db.execute(f"SELECT rtreecheck('{rtree}')").fetchone()[0] == "ok"
            # the boxes the per-row trigger would have written (same float32 rounding)
            db.execute(f"CREATE VIRTUAL TABLE temp.ref_{rtree} USING rtree(id, minx, maxx, "
                       "miny, maxy)")
            db.execute(f"INSERT INTO ref_{rtree} SELECT fid, ST_MinX({column}), "
                       f"ST_MaxX({column}), ST_MinY({column}), ST_MaxY({column}) FROM {table} "
                       f"WHERE {column} IS NOT NULL")
            ours = db.execute(f"SELECT * FROM {rtree} ORDER BY id").fetchall()
            assert ours == db.execute(f"SELECT * FROM ref_{rtree} ORDER BY id").fetchall()
            assert len(ours) == (3000 if column == "location" else 30)
        # spatial queries through the packed tree find what a scan finds
        hits = db.execute("SELECT count(*) FROM rtree_org_unit_location WHERE minx >= -11.5 "
                          "AND maxx <= -11.2 AND miny >= 8.2 AND maxy <= 8.6").fetchone()[0]
        boxes = db.execute("SELECT count(*) FROM ref_rtree_org_unit_location WHERE minx >= "
                           "-11.5 AND maxx <= -11.2 AND miny >= 8.2 AND maxy <= 8.6").fetchone()[0]
        assert hits == boxes > 0
    finally:
        db.close()
    # the tree stays a working SQLite R-tree: later edits go through the triggers
    with registry.write(origin="test") as conn:
        conn.execute(text("DELETE FROM org_unit WHERE source_ref IN ('F1', 'F2', 'F3')"))
        conn.execute(text("UPDATE org_unit SET location = :p WHERE source_ref = 'F10'"),
                     {"p": bytes.fromhex("47500001e6100000") + shapely.to_wkb(
                         shapely.Point(1, 2), flavor="iso", byte_order=1)})
    load(registry, records(500))  # a second import into a non-empty R-tree
    db = _gpkg(registry)
    try:
        for rtree in RTREES:
            assert db.execute(f"SELECT rtreecheck('{rtree}')").fetchone()[0] == "ok"
        assert db.execute("SELECT minx, miny FROM rtree_org_unit_location WHERE id = (SELECT "
                          "fid FROM org_unit WHERE source_ref = 'F10' AND version_id = 1)"
                          ).fetchone() == (1.0, 2.0)
        assert db.execute("SELECT count(*) FROM rtree_org_unit_location").fetchone()[0] == \
            3000 - 3 + 500
    finally:
        db.close()


def test_uuid7_many_continues_the_sequence() -> None:
    values = [uuid7(), *uuid7_many(5000), uuid7(), *uuid7_many(3)]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert all(uuidlib.UUID(v).version == 7 for v in values)


def test_empty_point_is_stored_without_an_rtree_entry(registry: Registry) -> None:
    recs = [UnitRecord(name="Root", source_ref="R", location=shapely.Point(1, 2)),
            UnitRecord(name="Empty", source_ref="E", parent_ref="R", location=shapely.Point())]
    vid = load(registry, recs)
    with registry.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM org_unit WHERE version_id = :v AND "
                                 "location IS NOT NULL"), {"v": vid}).scalar_one() == 2
    if registry.backend is Backend.GEOPACKAGE:
        db = _gpkg(registry)
        try:
            assert db.execute("SELECT count(*) FROM rtree_org_unit_location").fetchone()[0] == 1
            assert db.execute("SELECT rtreecheck('rtree_org_unit_location')").fetchone()[0] == "ok"
        finally:
            db.close()


def test_every_column_lands_on_every_backend(registry: Registry) -> None:
    recs = [
        UnitRecord(name="Root", source_ref="R", code="C0", opening_date="1970-01-01T00:00:00.000",
                   aliases=["Racine", "Wurzel"], extra_fields={"pop": 12, "note": "é'\""},
                   territory=shapely.Polygon([(0, 0), (1, 0), (1, 1), (0, 0)]),
                   location=shapely.Point(0.5, 0.25), groups=["G1"]),
        UnitRecord(name="  Child  ", source_ref="C", parent_ref="R", type_name="Kind",
                   closed_date="2020-02-29", validation_status="new", uuid=str(uuidlib.uuid4())),
    ]
    with registry.write(origin="test") as conn:
        vid = insert_version(conn, ensure_source(conn, "S"))
        loader = BulkLoader(registry, conn, vid)
        loader.add_group("G1", "Group one")
        loader.add_units(recs)
        stats = loader.finish()
    assert (stats.units, stats.locations, stats.territories, stats.memberships) == (2, 1, 1, 1)
    with registry.read() as conn:
        rows = {r[0]: r for r in conn.execute(text(
            "SELECT u.source_ref, u.name, u.code, CAST(u.opening_date AS TEXT), "
            "CAST(u.closed_date AS TEXT), u.validation_status, u.uuid, u.aliases, "
            "u.extra_fields, t.name, u.depth FROM org_unit u LEFT JOIN org_unit_territory t "
            "ON t.unit_fid = u.fid WHERE u.version_id = :v"), {"v": vid})}
        log = conn.execute(text("SELECT entity, count(*) FROM change_log WHERE version_id = :v "
                                "GROUP BY entity ORDER BY entity"), {"v": vid}).all()
    from storage.registry import json_value

    root, child = rows["R"], rows["C"]
    assert root[1:5] == ("Root", "C0", "1970-01-01", None) and root[9] == "Root"
    assert json_value(root[7]) == ["Racine", "Wurzel"]
    assert json_value(root[8]) == {"pop": 12, "note": "é'\""}
    assert child[1] == "Child" and child[4] == "2020-02-29" and child[5] == "new"
    assert child[6] == recs[1].uuid and child[10] == 2
    assert [tuple(r) for r in log] == [("group_membership", 1), ("org_unit", 2), ("territory", 1)]


def test_points_given_as_coordinate_pairs_are_stored_as_shapely_points_would_be(
        registry: Registry) -> None:
    """Fast readers hand points over as (x, y): the stored geometry, the R-tree and the
    counts are those of the same points given as shapely Points; a batch may mix both."""
    as_points = records(600)
    as_pairs = records(600)
    for i, rec in enumerate(as_pairs):
        if rec.location is not None and i % 7:  # most as pairs, some left as Points
            rec.location = (rec.location.x, rec.location.y)  # type: ignore[union-attr]
    v1, v2 = load(registry, as_points), load(registry, as_pairs)
    with registry.read() as conn:
        def stored(v: int) -> list[tuple[object, ...]]:
            return [tuple(r) for r in conn.execute(text(
                "SELECT source_ref, location FROM org_unit WHERE version_id = :v "
                "ORDER BY source_ref"), {"v": v})]
        assert stored(v1) == stored(v2)
        assert sum(1 for _ref, loc in stored(v2) if loc is not None) == 600
    if registry.backend is not Backend.POSTGIS:
        with sqlite3.connect(registry.location.path) as db:  # type: ignore[arg-type]
            rtree = "rtree_org_unit_location" if registry.backend is Backend.GEOPACKAGE \
                else "idx_org_unit_location"
            assert db.execute(f"SELECT count(*) FROM {rtree}").fetchone()[0] == 1200


@pytest.mark.parametrize("bad", [(1.0,), (1.0, "2"), (True, 2.0), (float("nan"), 1.0),
                                 (1.0, 2.0, 3.0)])
def test_a_bad_coordinate_pair_is_refused_naming_the_unit(registry: Registry,
                                                          bad: tuple[object, ...]) -> None:
    recs = records(50)
    recs[17].location = bad  # type: ignore[assignment]
    with pytest.raises(InvalidInput, match=r"unit 'F17': field 'location' must be a point"):
        load(registry, recs)
    with registry.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM org_unit")).scalar_one() == 0
