"""A new draft copied from a version: every unit, its spatial index entry and the rules.

The copy sets the per-row insert triggers aside and bulk-loads the copied units' boxes
into the spatial index; these tests check that the result is what the row-by-row path
gives: an R-tree SQLite itself finds consistent, spatial queries equal to a scan, the
triggers back for later edits, and the audit trail saying what happened.
"""

from __future__ import annotations

import shapely
from sqlalchemy import Connection, text

from storage.backends import Backend
from storage.bulk import GRAFT_FROM, BulkLoader, UnitRecord
from storage.registry import Registry
from storage.versions import create_version, ensure_source, insert_version, publish_version

RTREE = {  # the location's spatial index: table, id column, box columns
    Backend.GEOPACKAGE: ("rtree_org_unit_location", "id", ("minx", "maxx", "miny", "maxy")),
    Backend.SPATIALITE: ("idx_org_unit_location", "pkid", ("xmin", "xmax", "ymin", "ymax")),
}


def grid(n: int, prefix: str = "U") -> list[UnitRecord]:
    """A root and ``n`` facilities on a grid, a few without a location."""
    recs = [UnitRecord(name="Root", source_ref=f"{prefix}root", location=shapely.Point(0, 0),
                       territory=shapely.box(-1, -1, 61, 61))]
    for i in range(n):
        loc = None if i % 97 == 0 else shapely.Point(i % 60 + 0.25, i // 60 + 0.5)
        recs.append(UnitRecord(name=f"{prefix}{i}", source_ref=f"{prefix}{i}",
                               parent_ref=f"{prefix}root", location=loc))
    return recs


def load(reg: Registry, recs: list[UnitRecord], source: str = "S") -> None:
    with reg.write(origin="test") as conn:
        vid = insert_version(conn, ensure_source(conn, source))
        loader = BulkLoader(reg, conn, vid)
        loader.add_units(recs)
        loader.finish()


def found(conn: Connection, backend: Backend, version: int, box: tuple[float, ...]) -> set[str]:
    """Refs of a version's units inside ``box`` (x0, y0, x1, y1), through the spatial index."""
    table, key, (x0, x1, y0, y1) = RTREE[backend]
    return {r[0] for r in conn.execute(text(
        f"SELECT u.source_ref FROM {table} r JOIN org_unit u ON u.fid = r.{key} "
        f"JOIN source_version v ON v.fid = u.version_id WHERE v.number = :n "
        f"AND r.{x1} >= :a AND r.{x0} <= :c AND r.{y1} >= :b AND r.{y0} <= :d"),
        {"n": version, "a": box[0], "b": box[1], "c": box[2], "d": box[3]})}


def scanned(recs: list[UnitRecord], box: tuple[float, ...]) -> set[str]:
    area = shapely.box(*box)
    return {str(r.source_ref) for r in recs if r.location is not None and area.covers(r.location)}


def index_is_right(reg: Registry, recs: list[UnitRecord], versions: list[int]) -> None:
    if not reg.backend.is_sqlite:
        return
    table, key, _cols = RTREE[reg.backend]
    with reg.read() as conn:
        assert conn.execute(text(f"SELECT rtreecheck('{table}')")).scalar() == "ok"
        located = conn.execute(text(
            "SELECT count(*) FROM org_unit WHERE location IS NOT NULL")).scalar_one()
        indexed = conn.execute(text(
            f"SELECT count(*) FROM {table} r JOIN org_unit u ON u.fid = r.{key}")).scalar_one()
        assert indexed == located == conn.execute(
            text(f"SELECT count(*) FROM {table}")).scalar_one()
        for number in versions:
            for box in ((0, 0, 10.3, 7.6), (30, 20, 45.9, 31), (-5, -5, 100, 100)):
                assert found(conn, reg.backend, number, box) == scanned(recs, box), (number, box)


def test_copies_of_a_large_version_keep_the_spatial_index_right(registry: Registry) -> None:
    recs = grid(GRAFT_FROM + 1500)
    load(registry, recs)
    publish_version(registry, "S", 1)
    for number in (2, 3, 4):
        made = create_version(registry, "S", copy_from=1, origin="test")
        assert made["number"] == number and made["units"] == len(recs)
        assert made["territories"] == 1
    index_is_right(registry, recs, [1, 2, 3, 4])
    with registry.read() as conn:
        same = conn.execute(text(
            "SELECT count(*) FROM org_unit a JOIN org_unit b ON b.unit_key = a.unit_key "
            "AND b.uuid = a.uuid AND b.path = a.path AND b.depth = a.depth "
            "AND COALESCE(b.parent_key, 0) = COALESCE(a.parent_key, 0) AND b.name = a.name "
            "WHERE a.version_id = 1 AND b.version_id = 3")).scalar_one()
        territory = conn.execute(text(
            "SELECT u.source_ref FROM org_unit_territory t JOIN org_unit u ON u.fid = t.unit_fid "
            "WHERE t.version_id = 3")).scalar_one()
    assert same == len(recs) and territory == "Uroot"


def test_a_copy_after_other_sources_grafts_onto_any_tree_shape(registry: Registry) -> None:
    """A tiny tree (root a leaf), then a large load and a copy: both grafted under it."""
    small = grid(5, "T")
    load(registry, small, source="Tiny")
    recs = grid(GRAFT_FROM + 100)
    load(registry, recs)
    create_version(registry, "S", copy_from=1, origin="test")
    index_is_right(registry, recs, [2])
    if registry.backend.is_sqlite:
        with registry.read() as conn:
            assert found(conn, registry.backend, 1, (0, 0, 61, 61)) >= scanned(small, (0, 0, 61, 61))


def test_the_database_rules_are_back_after_a_copy(registry: Registry) -> None:
    recs = grid(300)
    load(registry, recs)
    publish_version(registry, "S", 1)

    def rules() -> list[tuple[object, ...]]:
        if not registry.backend.is_sqlite:
            return []
        with registry.read() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT type, name, sql FROM sqlite_master WHERE type IN ('trigger', 'index') "
                "ORDER BY name"))]

    before = rules()
    made = create_version(registry, "S", copy_from=1, origin="test")
    assert rules() == before
    with registry.read() as conn:
        log = conn.execute(text(
            "SELECT entity, op, count(*) FROM change_log WHERE version_id = :v "
            "GROUP BY entity, op"), {"v": made["id"]}).all()
    assert [tuple(r) for r in log] == [("version", "create", 1)]  # one entry, no unit rows
    # plain SQL in the copy: key, path and audit row from the triggers; index follows a move
    with registry.write(origin="sql") as conn:
        root = conn.execute(text("SELECT unit_key, path FROM org_unit WHERE version_id = :v "
                                 "AND source_ref = 'Uroot'"), {"v": made["id"]}).one()
        conn.execute(text("INSERT INTO org_unit (version_id, name, source_ref, parent_key) "
                          "VALUES (:v, 'By hand', 'H', :p)"), {"v": made["id"], "p": root[0]})
        conn.execute(text(
            "UPDATE org_unit SET location = (SELECT location FROM org_unit WHERE version_id = :v "
            "AND source_ref = 'Uroot') WHERE version_id = :v AND source_ref = 'U5'"),
            {"v": made["id"]})
    with registry.read() as conn:
        row = conn.execute(text(
            "SELECT u.path, (SELECT count(*) FROM change_log c WHERE c.record_fid = u.fid AND "
            "c.entity = 'org_unit' AND c.origin = 'sql') FROM org_unit u "
            "WHERE u.source_ref = 'H'")).one()
        assert row[0].startswith(root[1]) and row[1] == 1
        if registry.backend.is_sqlite:
            assert "U5" in found(conn, registry.backend, 2, (-0.1, -0.1, 0.1, 0.1))
            assert "U5" not in found(conn, registry.backend, 1, (-0.1, -0.1, 0.1, 0.1))
    # the published original still refuses writes
    try:
        with registry.write(origin="sql") as conn:
            conn.execute(text("INSERT INTO org_unit (version_id, name) VALUES (1, 'No')"))
    except Exception as error:  # noqa: BLE001 - the database's own refusal, any backend
        assert "published" in str(error)
    else:
        raise AssertionError("a published version took a new unit")


def test_a_copy_of_a_version_edited_after_another_was_made_gets_every_unit(
        registry: Registry) -> None:
    """v1's row ids stop being one block once a unit is added to it after v2 was copied:
    the next copy must still take exactly v1's units (and their index entries)."""
    recs = grid(GRAFT_FROM + 200)
    load(registry, recs)
    create_version(registry, "S", copy_from=1, origin="test")  # v2: the block after v1's
    with registry.write(origin="test") as conn:
        root = conn.execute(text("SELECT unit_key FROM org_unit WHERE version_id = 1 "
                                 "AND source_ref = 'Uroot'")).scalar_one()
        conn.execute(text(
            "INSERT INTO org_unit (version_id, name, source_ref, parent_key, location) "
            "SELECT 1, 'Late', 'Ulate', :p, location FROM org_unit WHERE version_id = 1 "
            "AND source_ref = 'U1'"), {"p": root})
    made = create_version(registry, "S", copy_from=1, origin="test")  # v3
    assert made["units"] == len(recs) + 1
    with registry.read() as conn:
        refs = set(conn.execute(text(
            "SELECT source_ref FROM org_unit WHERE version_id = :v"), {"v": made["id"]}).scalars())
        assert refs == {str(r.source_ref) for r in recs} | {"Ulate"}
    recs.append(UnitRecord(name="Late", source_ref="Ulate", location=recs[2].location))
    index_is_right(registry, recs, [3])
