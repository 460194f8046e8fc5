"""Edits by other programs (GDAL, QGIS, sqlite3, psql) that Georeg never makes itself
(migration 0009), on every backend: a territory re-pointed at a published version's
unit, ``path``/``depth`` typed in an attribute table, a parent deleted with its
children still there (GDAL and QGIS open a GeoPackage with foreign keys off)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from storage import units
from storage.backends import Backend, make_engine
from storage.registry import Registry
from storage.versions import create_version, delete_version, publish_version

BO = "O6uvpzGd5pu"  # district Bo
BAOMA = "vWbkYPRmKyS"  # a chiefdom in Bo
FACILITY = "kbGqmM6ZWWV"  # Allen Town Health Post, Western Area


def _outside(reg: Registry, sql: str) -> None:
    """One statement as another program writes it: a plain connection with no Georeg
    context (logged as ``external``); on SQLite with foreign keys off, as GDAL and
    QGIS open a GeoPackage."""
    engine = make_engine(reg.location)
    try:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            if reg.backend is not Backend.POSTGIS:
                cur.execute("PRAGMA foreign_keys = OFF")
            cur.execute(sql)
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()
    finally:
        engine.dispose()


def _one(reg: Registry, sql: str, **params: Any) -> Any:
    with reg.read() as conn:
        return conn.execute(text(sql), params).one()


def _unit(version: int, ref: str) -> str:
    return f"(SELECT fid FROM org_unit WHERE version_id = {version} AND source_ref = '{ref}')"


@pytest.fixture
def two(demo: Registry) -> Registry:
    """Version 1 published, version 2 a draft copy of it."""
    create_version(demo, "SL", copy_from=1)
    publish_version(demo, "SL", 1)
    return demo


def _paths_consistent(reg: Registry, version: int) -> int:
    """Units whose path or depth is not their parent's plus their own key (0 = all right)."""
    with reg.read() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM org_unit u LEFT JOIN org_unit p ON p.version_id = u.version_id "
            "AND p.unit_key = u.parent_key WHERE u.version_id = :v AND (u.path <> "
            "COALESCE(p.path, '/') || CAST(u.unit_key AS TEXT) || '/' "
            "OR u.depth <> COALESCE(p.depth, 0) + 1)"), {"v": version}).scalar_one())


def test_a_territory_cannot_be_pointed_at_a_published_versions_unit(two: Registry) -> None:
    with pytest.raises(Exception, match="published and read-only"):
        _outside(two, f"UPDATE org_unit_territory SET unit_fid = {_unit(1, FACILITY)} "
                      f"WHERE unit_fid = {_unit(2, BO)}")
    assert _one(two, "SELECT count(*) FROM org_unit_territory WHERE unit_fid = "
                     f"{_unit(1, FACILITY)}")[0] == 0
    # within drafts it may move, and the row follows its new unit's version and name
    create_version(two, "SL", copy_from=1)  # version 3
    _outside(two, f"UPDATE org_unit_territory SET unit_fid = {_unit(3, FACILITY)} "
                  f"WHERE unit_fid = {_unit(2, BO)}")
    row = _one(two, "SELECT t.version_id, t.name, u.name AS unit FROM org_unit_territory t "
                    f"JOIN org_unit u ON u.fid = t.unit_fid WHERE t.unit_fid = {_unit(3, FACILITY)}")
    assert row.version_id == 3 and row.name == row.unit


def test_path_and_depth_follow_the_parent_only(two: Registry) -> None:
    before = _one(two, "SELECT path, depth FROM org_unit WHERE version_id = 2 AND source_ref = :r",
                  r=FACILITY)
    for change in (f"path = (SELECT path FROM org_unit WHERE version_id = 2 AND source_ref = '{BO}')",
                   "depth = -1", "path = '/1/'", "depth = depth + 1"):
        with pytest.raises(Exception, match="change its parent_key instead"):
            _outside(two, f"UPDATE org_unit SET {change} WHERE version_id = 2 "
                          f"AND source_ref = '{FACILITY}'")
    assert tuple(_one(two, "SELECT path, depth FROM org_unit WHERE version_id = 2 "
                           "AND source_ref = :r", r=FACILITY)) == tuple(before)
    # a move by another program (parent_key) still rewrites the whole subtree
    _outside(two, "UPDATE org_unit SET parent_key = (SELECT unit_key FROM org_unit WHERE "
                  f"version_id = 2 AND source_ref = '{FACILITY}') WHERE version_id = 2 "
                  f"AND source_ref = '{BAOMA}'")
    assert _paths_consistent(two, 2) == 0
    assert _one(two, "SELECT depth FROM org_unit WHERE version_id = 2 AND source_ref = :r",
                r=BAOMA)[0] == 5
    # and Georeg's own moves, back and as a root
    units.move_unit(two, "SL", BAOMA, BO, number=2)
    units.move_unit(two, "SL", BO, None, number=2)
    assert _paths_consistent(two, 2) == 0


def test_a_unit_with_children_cannot_be_deleted_by_another_program(two: Registry) -> None:
    with pytest.raises(Exception, match="Delete its children first, or use georeg unit delete"):
        _outside(two, f"DELETE FROM org_unit WHERE version_id = 2 AND source_ref = '{BO}'")
    assert _one(two, "SELECT count(*) FROM org_unit WHERE version_id = 2 AND source_ref = :r",
                r=BO)[0] == 1
    # bottom up it can: the chiefdom's facilities, then the chiefdom, whose territory
    # and memberships go with it (foreign keys off: no cascade on SQLite)
    key = _one(two, "SELECT unit_key FROM org_unit WHERE version_id = 2 AND source_ref = :r",
               r=BAOMA)[0]
    members = _one(two, "SELECT count(*) FROM group_membership WHERE version_id = 2 "
                        "AND unit_key IN (SELECT unit_key FROM org_unit WHERE version_id = 2 "
                        "AND (unit_key = :k OR parent_key = :k))", k=key)[0]
    assert members > 0
    _outside(two, f"DELETE FROM org_unit WHERE version_id = 2 AND parent_key = {key}")
    _outside(two, f"DELETE FROM org_unit WHERE version_id = 2 AND unit_key = {key}")
    assert _one(two, "SELECT count(*) FROM org_unit_territory WHERE version_id = 2 AND "
                     "unit_fid NOT IN (SELECT fid FROM org_unit)")[0] == 0
    assert _one(two, "SELECT count(*) FROM group_membership m WHERE m.version_id = 2 AND NOT "
                     "EXISTS (SELECT 1 FROM org_unit u WHERE u.version_id = 2 "
                     "AND u.unit_key = m.unit_key)")[0] == 0
    assert _one(two, "SELECT count(*) FROM org_unit c WHERE c.version_id = 2 AND c.parent_key "
                     "IS NOT NULL AND NOT EXISTS (SELECT 1 FROM org_unit p WHERE p.version_id = 2 "
                     "AND p.unit_key = c.parent_key)")[0] == 0
    # Georeg's own deletes are not held up: a subtree, then the whole version
    assert units.delete_unit(two, "SL", BO, number=2, recursive=True)["deleted"] > 100
    delete_version(two, "SL", 2)
    assert _one(two, "SELECT count(*) FROM org_unit WHERE version_id = 2")[0] == 0


def _triggers(reg: Registry) -> dict[str, str]:
    with reg.read() as conn:
        if reg.backend is Backend.POSTGIS:
            return dict(conn.execute(text(
                "SELECT t.tgname || ' ' || p.proname, pg_get_functiondef(p.oid) FROM pg_trigger t "
                "JOIN pg_proc p ON p.oid = t.tgfoid WHERE NOT t.tgisinternal AND t.tgrelid IN "
                "(to_regclass('org_unit'), to_regclass('org_unit_territory'))")).all())
        return dict(conn.execute(text(
            "SELECT name, sql FROM sqlite_master WHERE type IN ('trigger', 'table')")).all())


def test_the_migration_goes_down_to_0008_and_up_again(demo: Registry) -> None:
    from alembic import command

    from storage.registry import _alembic_config

    at_head = _triggers(demo)
    facility = f"WHERE version_id = 1 AND source_ref = '{FACILITY}'"
    for target in ("0008", "head"):
        with demo.engine.connect() as conn:
            conn.execution_options(georeg_write=True)
            with conn.begin():
                (command.downgrade if target == "0008" else command.upgrade)(
                    _alembic_config(conn), target)
        if target == "0008":  # the old behaviour: the edit goes through
            _outside(demo, f"UPDATE org_unit SET depth = depth + 1 {facility}")
            _outside(demo, f"UPDATE org_unit SET depth = depth - 1 {facility}")
    assert _triggers(demo) == at_head
    with pytest.raises(Exception, match="change its parent_key instead"):
        _outside(demo, f"UPDATE org_unit SET depth = depth + 1 {facility}")


@pytest.mark.gdal
@pytest.mark.parametrize("backend", ["gpkg"], indirect=True)
def test_gdal_refuses_deleting_a_district(two: Registry) -> None:
    """The review's case, through GDAL itself (foreign keys off in its connection)."""
    from osgeo import ogr

    assert two.location.path is not None
    two.close()  # a checkpoint: GDAL reads the GeoPackage header from the file
    ogr.UseExceptions()
    ds = ogr.Open(str(two.location.path), update=1)
    try:
        with pytest.raises(RuntimeError, match="Delete its children first"):
            ds.ExecuteSQL(f"DELETE FROM org_unit WHERE version_id = 2 AND source_ref = '{BO}'")
        ds.ExecuteSQL(f"DELETE FROM org_unit WHERE version_id = 2 AND source_ref = '{FACILITY}'")
    finally:
        ds = None
    assert _one(two, "SELECT count(*) FROM org_unit WHERE version_id = 2 AND source_ref IN "
                     "(:b, :f)", b=BO, f=FACILITY)[0] == 1
