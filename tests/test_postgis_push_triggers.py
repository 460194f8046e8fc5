"""The statement-level ``org_unit`` triggers of a PostGIS registry (migration 0006): the
published-version guard and the change log behave as the per-row triggers did, through
raw SQL too; a registry at 0005 is upgraded to them (and back)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from storage import audit_sql
from storage.backends import Backend, Location, make_engine
from storage.errors import PublishedVersionError
from storage.migrations.schema_0001 import PUBLISHED_MSG
from storage.registry import Registry, _alembic_config, head_revision
from storage.versions import publish_version
from sync.dhis2_json import import_dhis2_files
from sync.unit_writer import _apart
from tests.conftest import DEMO_FILES, demo_in_schema

pytestmark = pytest.mark.postgis

BO = "O6uvpzGd5pu"  # district Bo
STATEMENT_TRIGGERS = {"org_unit_stmt_insert", "org_unit_stmt_update", "org_unit_stmt_delete",
                      "org_unit_tree"}
ROW_TRIGGERS = {"org_unit_published", "org_unit_after"}


@pytest.fixture
def pg(postgis_url: str) -> Iterator[Registry]:
    """The demo in a fresh PostGIS registry (version 1 of source 'SL', a draft)."""
    with demo_in_schema(postgis_url, "trg") as reg:
        yield reg


def _triggers(reg: Registry) -> set[str]:
    with reg.read() as conn:
        return set(conn.execute(text(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass('org_unit') "
            "AND NOT tgisinternal")).scalars())


def _log(reg: Registry, after: int) -> list[Any]:
    with reg.read() as conn:
        return conn.execute(text(
            "SELECT entity, op, unit_uuid, unit_key, record_fid, before, after, origin, "
            "operation FROM change_log WHERE fid > :a ORDER BY fid"), {"a": after}).all()


def _top(reg: Registry) -> int:
    with reg.read() as conn:
        return int(conn.execute(text("SELECT COALESCE(max(fid), 0) FROM change_log")
                                ).scalar_one())


def _rename_bo(reg: Registry, name: str) -> Any:
    """Rename Bo; the one change-log row it makes."""
    top = _top(reg)
    with reg.write() as conn:
        conn.execute(text("UPDATE org_unit SET name = :n WHERE source_ref = :r"),
                     {"n": name, "r": BO})
    [row] = _log(reg, top)
    return row


def _snapshots(reg: Registry, where: str, params: dict[str, Any]) -> dict[str, Any]:
    with reg.read() as conn:
        return {r[0]: r[1] for r in conn.execute(text(
            f"SELECT u.uuid, {audit_sql.unit_json(Backend.POSTGIS, 'u')} FROM org_unit u "
            f"WHERE {where}"), params)}


def test_a_new_registry_has_the_statement_triggers(pg: Registry) -> None:
    assert pg.schema_revision() == head_revision()
    names = _triggers(pg)
    assert STATEMENT_TRIGGERS <= names and not ROW_TRIGGERS & names
    with pg.read() as conn:
        options = conn.execute(text(
            "SELECT reloptions FROM pg_class WHERE oid = to_regclass('org_unit')")).scalar()
    assert "fillfactor=90" in (options or [])


def test_a_published_version_refuses_every_write_with_the_same_message(pg: Registry) -> None:
    publish_version(pg, "SL", 1)
    writes = [
        "UPDATE org_unit SET name = 'x' WHERE source_ref = :r",
        "UPDATE org_unit SET code = code",  # every unit, changing nothing: still refused
        "DELETE FROM org_unit WHERE source_ref = :r",
        "INSERT INTO org_unit (version_id, name) SELECT version_id, 'new' FROM org_unit "
        "WHERE source_ref = :r",
        "UPDATE org_unit SET parent_key = NULL WHERE source_ref = :r",
    ]
    for sql in writes:
        with pytest.raises(PublishedVersionError) as caught:
            with pg.write() as conn:
                conn.execute(text(sql), {"r": BO})
        assert str(caught.value) == PUBLISHED_MSG.removeprefix("georeg:published: ")
    # the flag of the subtree rewrite (internal) set by a session changes nothing
    with pytest.raises(PublishedVersionError):
        with pg.write() as conn:
            conn.execute(text("SELECT set_config('georeg.subtree', '1', true)"))
            conn.execute(text("UPDATE org_unit SET name = 'x' WHERE source_ref = :r"), {"r": BO})
    # and on a plain connection, outside Registry.write: the database's own error
    raw = make_engine(pg.location)
    try:
        with raw.connect() as conn:
            with pytest.raises(Exception, match="This version is published and read-only"):
                conn.execute(text("UPDATE org_unit SET name = 'x' WHERE source_ref = :r"),
                             {"r": BO})
    finally:
        raw.dispose()
    with pg.read() as conn:
        assert conn.execute(text("SELECT name FROM org_unit WHERE source_ref = :r"),
                            {"r": BO}).scalar_one() == "Bo"


def test_a_statement_touching_a_published_version_is_refused_whole(pg: Registry) -> None:
    from storage.versions import create_version

    create_version(pg, "SL", copy_from=1)  # version 2, a draft copy
    publish_version(pg, "SL", 1)
    top = _top(pg)
    with pytest.raises(PublishedVersionError):
        with pg.write() as conn:  # both versions' Bo: the draft's row must not change either
            conn.execute(text("UPDATE org_unit SET name = 'both' WHERE source_ref = :r"),
                         {"r": BO})
    with pg.read() as conn:
        assert set(conn.execute(text("SELECT name FROM org_unit WHERE source_ref = :r"),
                                {"r": BO}).scalars()) == {"Bo"}
    assert _top(pg) == top


def test_every_change_is_logged_with_before_and_after(pg: Registry) -> None:
    where = "u.depth = 3 AND u.version_id = 1"
    before = _snapshots(pg, where, {})
    assert len(before) > 10
    top = _top(pg)
    with pg.write(origin="cli", operation="op-1") as conn:
        conn.execute(text(f"UPDATE org_unit u SET name = u.name || ' (x)' WHERE {where}"))
        conn.execute(text(f"UPDATE org_unit u SET code = code WHERE {where}"))  # no change
    after = _snapshots(pg, where, {})
    rows = _log(pg, top)
    assert [(r.entity, r.op, r.origin, r.operation) for r in rows] == [
        ("org_unit", "update", "cli", "op-1")] * len(before)
    assert {r.unit_uuid: (r.before, r.after) for r in rows} == {
        u: (before[u], after[u]) for u in before}
    assert [r.record_fid for r in rows] == sorted(r.record_fid for r in rows)
    # the unit's name follows onto its territory
    with pg.read() as conn:
        assert conn.execute(text(
            "SELECT count(*) FROM org_unit_territory t JOIN org_unit u ON u.fid = t.unit_fid "
            f"WHERE {where} AND t.name IS DISTINCT FROM u.name")).scalar_one() == 0
        parent = conn.execute(text("SELECT unit_key FROM org_unit WHERE source_ref = :r"),
                              {"r": BO}).scalar_one()
    # insert and delete
    top = _top(pg)
    with pg.write() as conn:
        new = conn.execute(text("INSERT INTO org_unit (version_id, name, parent_key) "
                                "VALUES (1, 'New one', :p) RETURNING uuid"),
                           {"p": parent}).scalar_one()
    inserted = _snapshots(pg, "u.uuid = :u", {"u": new})[new]
    with pg.write() as conn:
        conn.execute(text("DELETE FROM org_unit WHERE uuid = :u"), {"u": new})
    rows = _log(pg, top)
    assert [(r.op, r.before, r.after) for r in rows] == [
        ("insert", None, inserted), ("delete", inserted, None)]
    # a session setting the subtree flag itself is still logged
    top = _top(pg)
    with pg.write() as conn:
        conn.execute(text("SELECT set_config('georeg.subtree', '1', true)"))
        conn.execute(text("UPDATE org_unit SET code = 'flagged' WHERE source_ref = :r"),
                     {"r": "O6uvpzGd5pu"})
    assert [(r.op, r.after["code"]) for r in _log(pg, top)] == [("update", "flagged")]
    # the audit switched off (set-based writers that log themselves): nothing logged
    top = _top(pg)
    with pg.write(audit=False) as conn:
        conn.execute(text(f"UPDATE org_unit u SET name = u.name || '!' WHERE {where}"))
    assert _log(pg, top) == []


def test_a_move_rewrites_the_paths_below_and_logs_the_move_only(pg: Registry) -> None:
    with pg.read() as conn:
        bo = conn.execute(text("SELECT fid, unit_key, path FROM org_unit WHERE source_ref = :r"),
                          {"r": BO}).one()
        other = conn.execute(text(
            "SELECT unit_key, path FROM org_unit WHERE depth = 1")).one()  # the country
        below = conn.execute(text("SELECT count(*) FROM org_unit WHERE path LIKE :p"),
                             {"p": bo.path + "%"}).scalar_one()
        chiefdom = conn.execute(text(
            "SELECT unit_key, path FROM org_unit WHERE path LIKE :p AND depth = 3 LIMIT 1"),
            {"p": bo.path + "%"}).one()
    assert below > 10
    top = _top(pg)
    with pg.write() as conn:  # Bo's chiefdom straight under the country, in one statement
        conn.execute(text("UPDATE org_unit SET parent_key = :p WHERE version_id = 1 "
                          "AND unit_key = :k"), {"p": other.unit_key, "k": chiefdom.unit_key})
    rows = _log(pg, top)
    assert [(r.op, r.unit_key) for r in rows] == [("update", chiefdom.unit_key)]
    assert rows[0].before["parent_key"] == bo.unit_key
    assert rows[0].after["parent_key"] == other.unit_key
    with pg.read() as conn:
        moved = conn.execute(text(
            "SELECT path, depth FROM org_unit WHERE version_id = 1 AND unit_key = :k"),
            {"k": chiefdom.unit_key}).one()
        assert moved.path == f"{other.path}{chiefdom.unit_key}/" and moved.depth == 2
        wrong = conn.execute(text(
            "SELECT count(*) FROM org_unit u JOIN org_unit p ON p.version_id = u.version_id "
            "AND p.unit_key = u.parent_key WHERE u.path <> p.path || u.unit_key || '/' "
            "OR u.depth <> p.depth + 1")).scalar_one()
        assert wrong == 0


def test_a_0005_registry_is_upgraded_to_the_statement_triggers_and_back(
        postgis_url: str) -> None:
    schema = f"trg_{uuid.uuid4().hex[:10]}"
    location = f"{postgis_url}{'&' if '?' in postgis_url else '?'}schema={schema}"
    loc = Location.parse(location)
    old = Registry(loc, make_engine(loc))

    def migrate(target: str) -> None:
        with old.engine.connect() as conn:
            conn.execution_options(georeg_write=True)
            with conn.begin():
                if target == "0005" and old.schema_revision() is None:
                    conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
                (command.upgrade if target != "0005" or old.schema_revision() is None
                 else command.downgrade)(_alembic_config(conn), target)

    try:
        migrate("0005")
        assert old.schema_revision() == "0005"
        assert ROW_TRIGGERS <= _triggers(old) and not STATEMENT_TRIGGERS & _triggers(old)
        import_dhis2_files(old, DEMO_FILES, source="SL")
        with old.read() as conn:
            log = conn.execute(text("SELECT count(*) FROM change_log")).scalar_one()
        with Registry.open(location) as reg:
            assert reg.schema_revision() == head_revision()
            assert STATEMENT_TRIGGERS <= _triggers(reg) and not ROW_TRIGGERS & _triggers(reg)
            top, row = _top(reg), _rename_bo(reg, "Bo 2")
            assert (row.before["name"], row.after["name"]) == ("Bo", "Bo 2")
            assert top == log  # the log is kept across the upgrade
        migrate("0005")  # the down migration brings the row triggers back
        assert ROW_TRIGGERS <= _triggers(old) and not STATEMENT_TRIGGERS & _triggers(old)
        row = _rename_bo(old, "Bo 3")
        assert json.dumps(row.after["name"]) == '"Bo 3"'
    finally:
        with old.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        old.close()


def test_moves_are_apart_when_no_moved_unit_is_below_another_or_a_new_parent() -> None:
    assert _apart(["/1/2/5/", "/1/3/6/"], ["/1/3/", "/1/2/"])
    assert not _apart(["/1/2/", "/1/2/5/"], [])  # 5 is below 2
    assert not _apart(["/1/2/5/", "/1/3/6/"], ["/1/2/5/"])  # moved under a moved unit
    assert not _apart(["/1/2/5/", "/1/3/6/"], ["/1/3/6/9/"])  # under a moved subtree
    assert not _apart(["", "/1/3/6/"], [])  # a path unknown: one statement per move
