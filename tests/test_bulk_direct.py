"""The bulk loader's two paths: units whose parent is in place are written batch by batch,
the others staged and placed by ``finish`` — same result, same checks, same messages.

Every test runs on the three backends (PostGIS stages every unit; SQLite writes most
of them directly), with tiny batches so that parents land in earlier batches, in the
same batch before or after the child, or in a later batch.
"""

from __future__ import annotations

import pytest
import shapely
from sqlalchemy import text

from storage.backends import Backend
from storage.bulk import BulkLoader, UnitRecord
from storage.errors import CycleError, InvalidInput, PublishedVersionError
from storage.registry import Registry
from storage.versions import ensure_source, insert_version

BATCH = 4


def load(reg: Registry, recs: list[UnitRecord], vid: int | None = None) -> int:
    with reg.write(origin="test") as conn:
        if vid is None:
            vid = insert_version(conn, ensure_source(conn, "S"))
        loader = BulkLoader(reg, conn, vid, batch_size=BATCH)
        loader.add_units(recs)
        stats = loader.finish()
    assert stats.units == len(recs)
    return vid


def snapshot(reg: Registry) -> tuple[object, ...]:
    """What a refused load must leave unchanged: units, audit rows, triggers, indexes."""
    with reg.read() as conn:
        units = conn.execute(text("SELECT count(*) FROM org_unit")).scalar_one()
        log = conn.execute(text("SELECT count(*) FROM change_log")).scalar_one()
        if reg.backend is Backend.POSTGIS:
            return units, log
        schema = conn.execute(text(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('trigger', 'index') "
            "ORDER BY name")).all()
    return units, log, [tuple(r) for r in schema]


def tree(reg: Registry, vid: int) -> dict[str, tuple[str | None, str, int]]:
    """ref -> (parent ref, path rebuilt from refs, depth), and every path checked."""
    with reg.read() as conn:
        rows = conn.execute(text(
            "SELECT u.source_ref, p.source_ref, u.path, u.depth, u.unit_key, p.path "
            "FROM org_unit u LEFT JOIN org_unit p ON p.version_id = u.version_id "
            "AND p.unit_key = u.parent_key WHERE u.version_id = :v"), {"v": vid}).all()
    out = {}
    for ref, pref, path, depth, key, ppath in rows:
        assert path == f"{ppath or '/'}{key}/", ref  # what the per-row triggers would write
        assert depth == path.count("/") - 1
        out[ref] = (pref, path, depth)
    return out


def mixed_order() -> list[UnitRecord]:
    """Parents first mostly; a few children before their parents (same batch and later)."""
    recs = [UnitRecord(name="Root", source_ref="R", location=shapely.Point(0, 0))]
    recs += [UnitRecord(name="Late child", source_ref="LC", parent_ref="L")]  # parent at end
    for d in range(3):
        recs.append(UnitRecord(name=f"D{d}", source_ref=f"D{d}", parent_ref="R",
                               territory=shapely.box(d, 0, d + 1, 1)))
        for f in range(5):
            recs.append(UnitRecord(name=f"F{d}{f}", source_ref=f"F{d}{f}", parent_ref=f"D{d}",
                                   location=shapely.Point(d + 0.5, f / 10)))
    recs.append(UnitRecord(name="Grandchild first", source_ref="G", parent_ref="C"))
    recs.append(UnitRecord(name="Child", source_ref="C", parent_ref="D1"))  # same batch
    recs.append(UnitRecord(name="Late", source_ref="L", parent_ref="F24",
                           territory=shapely.box(5, 5, 6, 6)))
    return recs


def test_any_order_gives_the_same_tree_paths_and_audit(registry: Registry) -> None:
    recs = mixed_order()
    vid = load(registry, recs)
    got = tree(registry, vid)
    assert set(got) == {r.source_ref for r in recs}
    for rec in recs:
        assert got[rec.source_ref][0] == rec.parent_ref
    assert got["LC"][2] == 5 and got["G"][2] == 4 and got["F13"][2] == 3
    assert got["LC"][1].startswith(got["L"][1])
    # the same load, parents strictly first, gives the same shape
    ordered = sorted(recs, key=lambda r: got[r.source_ref][2])  # type: ignore[index]
    vid2 = load(registry, [UnitRecord(name=r.name, source_ref=r.source_ref,
                                      parent_ref=r.parent_ref, location=r.location,
                                      territory=r.territory) for r in ordered])
    again = tree(registry, vid2)
    assert {k: (v[0], v[2]) for k, v in again.items()} == {k: (v[0], v[2]) for k, v in got.items()}
    with registry.read() as conn:
        log = conn.execute(text(
            "SELECT entity, count(*) FROM change_log WHERE version_id = :v AND origin = 'test' "
            "AND op = 'insert' GROUP BY entity ORDER BY entity"), {"v": vid}).all()
        snap = conn.execute(text(
            "SELECT c.after, u.path FROM change_log c JOIN org_unit u ON u.fid = c.record_fid "
            "WHERE c.entity = 'org_unit' AND u.source_ref = 'LC' AND u.version_id = :v"),
            {"v": vid}).one()
    assert [tuple(r) for r in log] == [("org_unit", len(recs)), ("territory", 4)]
    from storage.registry import json_value

    after = json_value(snap[0])
    assert after["source_ref"] == "LC" and after["parent_key"] is not None


def test_the_database_rules_are_back_after_a_load(registry: Registry) -> None:
    before = snapshot(registry)
    vid = load(registry, mixed_order())
    assert snapshot(registry)[2:] == before[2:]  # same triggers and indexes
    # a unit written by plain SQL afterwards gets its key, path and audit row from triggers
    with registry.write(origin="sql") as conn:
        parent = conn.execute(text("SELECT unit_key, path FROM org_unit WHERE version_id = :v "
                                   "AND source_ref = 'D0'"), {"v": vid}).one()
        conn.execute(text("INSERT INTO org_unit (version_id, name, source_ref, parent_key) "
                          "VALUES (:v, 'By hand', 'H', :p)"), {"v": vid, "p": parent[0]})
    with registry.read() as conn:
        row = conn.execute(text("SELECT u.path, (SELECT count(*) FROM change_log c WHERE "
                                "c.record_fid = u.fid AND c.entity = 'org_unit' AND "
                                "c.origin = 'sql') FROM org_unit u WHERE u.source_ref = 'H'")).one()
    assert row[0].startswith(parent[1]) and row[1] == 1


@pytest.mark.parametrize(("recs", "message"), [
    pytest.param([UnitRecord(name="R", source_ref="R", where="row 1"),
                  UnitRecord(name="A", source_ref="A", parent_ref="R", where="row 2"),
                  UnitRecord(name="A again", source_ref="A", parent_ref="R", where="row 3")],
                 r"row 3: source ref 'A' is used twice \(also by row 2\)", id="same-batch"),
    pytest.param([UnitRecord(name="R", source_ref="R", where="row 1")]
                 + [UnitRecord(name=f"U{i}", source_ref=f"U{i}", parent_ref="R",
                               where=f"row {i + 2}") for i in range(6)]
                 + [UnitRecord(name="U1 again", source_ref="U1", parent_ref="U4",
                               where="row 9")],
                 r"row 9: source ref 'U1' is used twice \(also by row 3\)", id="later-batch"),
    pytest.param([UnitRecord(name="R", source_ref="R"),
                  UnitRecord(name="X staged", source_ref="X", parent_ref="Y", where="row 2"),
                  UnitRecord(name="Y", source_ref="Y", parent_ref="R", where="row 3"),
                  UnitRecord(name="X again", source_ref="X", parent_ref="R", where="row 4")],
                 r"row 4: source ref 'X' is used twice \(also by row 2\)", id="staged-and-direct"),
    pytest.param([UnitRecord(name="R", source_ref="R"),
                  UnitRecord(name="Q", source_ref="Q", parent_ref="R"),
                  UnitRecord(name="Q again", source_ref="Q", parent_ref="R")],
                 r"unit 'Q': source ref 'Q' is used twice \(also by unit 'Q'\)", id="no-where"),
    pytest.param([UnitRecord(name="R", source_ref="R", where="row 1"),
                  UnitRecord(name="A", source_ref="A", parent_ref="R",
                             uuid="0190a000-0000-7000-8000-000000000001", where="row 2")]
                 + [UnitRecord(name=f"U{i}", source_ref=f"U{i}", parent_ref="R")
                    for i in range(5)]
                 + [UnitRecord(name="B", source_ref="B", parent_ref="R",
                               uuid="0190a000-0000-7000-8000-000000000001", where="row 9")],
                 r"row 9: uuid '0190a000-.*' is used twice \(also by row 2\)", id="uuid"),
    pytest.param([UnitRecord(name="R", source_ref="R"),
                  UnitRecord(name="A", source_ref="A", parent_ref="nowhere", where="row 2")],
                 r"Unknown parent: row 2: parent 'nowhere' not found", id="unknown-parent"),
    pytest.param([UnitRecord(name="R", source_ref="R")]
                 + [UnitRecord(name=f"U{i}", source_ref=f"U{i}", parent_ref="R")
                    for i in range(6)]
                 + [UnitRecord(name="A", source_ref="A", parent_ref="B", where="row 8"),
                    UnitRecord(name="B", source_ref="B", parent_ref="A", where="row 9")],
                 r"2 units are their own ancestors .*row 8 \('A' → parent 'B'\)", id="cycle"),
    pytest.param([UnitRecord(name="R", source_ref="R", where="row 1"),
                  UnitRecord(name="A", source_ref="A", parent_ref="R",
                             opening_date="2020-13-45", where="row 2")],
                 r"row 2: field 'opening_date': '2020-13-45' is not a date", id="date"),
])
def test_bad_input_is_refused_naming_the_rows_and_changes_nothing(
        registry: Registry, recs: list[UnitRecord], message: str) -> None:
    load(registry, [UnitRecord(name="Other", source_ref="O")])  # an earlier import
    before = snapshot(registry)
    with pytest.raises((InvalidInput, CycleError), match=message):
        load(registry, recs)
    assert snapshot(registry) == before


def test_a_ref_already_in_the_version_is_refused(registry: Registry) -> None:
    vid = load(registry, [UnitRecord(name="R", source_ref="R"),
                          UnitRecord(name="A", source_ref="A", parent_ref="R")])
    before = snapshot(registry)
    with pytest.raises(InvalidInput, match=r"row 2: source ref 'A' is already used by 'A' in "
                                           "this version"):
        load(registry, [UnitRecord(name="R2", source_ref="R2", where="row 1"),
                        UnitRecord(name="A2", source_ref="A", parent_ref="R2", where="row 2")],
             vid)
    # a parent must be in the same import: an earlier unit of the version does not count
    with pytest.raises(InvalidInput, match=r"Unknown parent: row 1: parent 'R' not found"):
        load(registry, [UnitRecord(name="B", source_ref="B", parent_ref="R", where="row 1")],
             vid)
    assert snapshot(registry) == before


def test_a_published_version_refuses_the_load(registry: Registry) -> None:
    vid = load(registry, [UnitRecord(name="R", source_ref="R")])
    with registry.write() as conn:
        conn.execute(text("UPDATE source_version SET status = 'published' WHERE fid = :v"),
                     {"v": vid})
    before = snapshot(registry)
    with pytest.raises(PublishedVersionError, match="published"):
        load(registry, [UnitRecord(name="S", source_ref="S")], vid)
    assert snapshot(registry) == before


@pytest.mark.parametrize("backend", ["gpkg", "spatialite"], indirect=True)
def test_a_new_registry_file_has_16_kib_pages(registry: Registry) -> None:
    """Fewer, larger pages: ~10% off a bulk import (see docs/benchmarks.md)."""
    from storage.registry import SQLITE_PAGE_SIZE

    with registry.read() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar_one() == SQLITE_PAGE_SIZE == 16384
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"


SPATIAL_INDEXES = {  # index: (table, id column, columns), (rows' table, geometry column)
    "gpkg": [(("rtree_org_unit_location", "id"), ("org_unit", "location")),
             (("rtree_org_unit_territory_territory", "id"), ("org_unit_territory", "territory"))],
    "spatialite": [(("idx_org_unit_location", "pkid"), ("org_unit", "location")),
                   (("idx_org_unit_territory_territory", "pkid"),
                    ("org_unit_territory", "territory"))],
}


@pytest.mark.parametrize("backend", ["gpkg", "spatialite"], indirect=True)
@pytest.mark.parametrize("size", [20, 2500], ids=["small", "grafted"])
def test_the_spatial_indexes_hold_the_boxes_their_triggers_would(
    registry: Registry, backend: str, size: int
) -> None:
    """The load sets the spatial indexes' insert triggers aside and bulk-loads the boxes;
    rewriting every geometry afterwards (the update triggers recompute each box) changes
    nothing, and SQLite finds each R-tree consistent.  A second load goes into a
    non-empty index: a small one by plain inserts, a large one grafted under its root."""
    load(registry, mixed_order())
    load(registry, [UnitRecord(name="Root", source_ref="R")]
         + [UnitRecord(name=f"P{i}", source_ref=f"P{i}", parent_ref="R",
                       location=shapely.Point(i % 50 - 20.5, i // 50 + 0.125),
                       territory=shapely.box(0, 0, 1, 1 + i) if i % 100 == 0 else None)
            for i in range(size)])

    def boxes() -> list[list[tuple[object, ...]]]:
        with registry.read() as conn:
            return [[tuple(r) for r in conn.execute(text(f"SELECT * FROM {idx} ORDER BY {key}"))]
                    for (idx, key), _rows in SPATIAL_INDEXES[backend]]

    loaded = boxes()
    with registry.read() as conn:
        for (idx, _key), (table, column) in SPATIAL_INDEXES[backend]:
            assert conn.execute(text(f"SELECT rtreecheck('{idx}')")).scalar() == "ok"
            located = conn.execute(text(
                f"SELECT count(*) FROM {table} WHERE {column} IS NOT NULL")).scalar_one()
            assert located == conn.execute(text(f"SELECT count(*) FROM {idx}")).scalar_one()
    with registry.write(origin="test", dry_run=True) as conn:
        # each geometry emptied and written back: the update triggers redo every box
        for _idx, (table, column) in SPATIAL_INDEXES[backend]:
            conn.execute(text(f"CREATE TEMP TABLE keep AS SELECT fid, {column} AS g FROM {table}"))
            conn.execute(text(f"UPDATE {table} SET {column} = NULL"))
            conn.execute(text(f"UPDATE {table} SET {column} = (SELECT k.g FROM keep k "
                              f"WHERE k.fid = {table}.fid)"))
            conn.execute(text("DROP TABLE keep"))
        redone = [[tuple(r) for r in conn.execute(text(f"SELECT * FROM {idx} ORDER BY {key}"))]
                  for (idx, key), _rows in SPATIAL_INDEXES[backend]]
    assert loaded == redone and len(redone[0]) > size // 2 and len(redone[1]) >= 4
    if backend == "spatialite":
        with registry.read() as conn:
            assert conn.execute(text(
                "SELECT CheckSpatialIndex('org_unit', 'location'), "
                "CheckSpatialIndex('org_unit_territory', 'territory')")).one() == (1, 1)
