"""A PostGIS registry on a server whose locale is not C.

Most PostgreSQL servers are created with the machine's locale (en_US.UTF-8 and the
like).  glibc's collation for those locales ignores punctuation at first, so it sorts
``/1/7/23/`` *after* ``/1/70/`` — and Georeg reads a subtree as one range of
materialised paths, ``path >= '/1/7/' AND path < '/1/70'``.  On such a server a
subtree read would miss units, a move would leave descendants with their old paths,
and a user limited to a district would not see all of it.  The paths are therefore
compared byte by byte (``COLLATE "C"``, migration 0007) whatever the server's locale.

The tests run on a database of the throwaway cluster whose default collation is ICU's
``en-US-u-ka-shifted`` (punctuation ignorable: the same order as glibc's en_US.UTF-8).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from sqlalchemy import Connection, text

from storage import tree, units
from storage.backends import Location, make_engine
from storage.checks import run_checks
from storage.registry import Registry, _alembic_config
from sync.dhis2_json import import_dhis2_files
from tests.conftest import DEMO_FILES, demo_in_schema

pytestmark = pytest.mark.postgis

BO = "O6uvpzGd5pu"  # Bo district in the Sierra Leone demo
WESTERN_AREA = "at6UHUQatSo"
SHIFTED_DB = "georeg_shifted"


@pytest.fixture(scope="module")
def shifted_url(postgis_url: str) -> Iterator[str]:
    """A database whose default collation ignores punctuation, as en_US.UTF-8 does."""
    base, _, _name = postgis_url.rpartition("/")
    with psycopg.connect(postgis_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SHIFTED_DB}")
        conn.execute(f"CREATE DATABASE {SHIFTED_DB} TEMPLATE template0 ENCODING 'UTF8' "
                     "LOCALE_PROVIDER icu ICU_LOCALE 'en-US-u-ka-shifted' LOCALE 'C'")
    url = f"{base}/{SHIFTED_DB}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        # the premise: this server's text order is not byte order
        assert conn.execute("SELECT '/1/7/23/' < '/1/70'").fetchone() == (False,)
    yield url
    with psycopg.connect(postgis_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SHIFTED_DB} WITH (FORCE)")


@pytest.fixture
def demo(shifted_url: str) -> Iterator[Registry]:
    with demo_in_schema(shifted_url, "coll") as reg:
        yield reg


def _paths(reg: Registry) -> dict[str, str]:
    with reg.read() as conn:
        return dict(conn.execute(text("SELECT uuid, path FROM org_unit")).all())


def test_every_subtree_holds_every_unit_below_it(demo: Registry) -> None:
    paths = _paths(demo)
    by_path = {p: u for u, p in paths.items()}
    parents = {p[: p.rstrip("/").rfind("/") + 1] for p in by_path} & set(by_path)
    assert len(parents) > 100
    for path in sorted(parents):
        below = {u for u, q in paths.items() if q.startswith(path)}
        got = {r["uuid"] for r in tree.subtree(demo, "SL", by_path[path])}
        assert got == below, path


def test_a_move_rewrites_every_path_below(demo: Registry) -> None:
    before = {u["uuid"] for u in tree.subtree(demo, "SL", BO)}
    units.move_unit(demo, "SL", BO, WESTERN_AREA)
    paths = _paths(demo)
    bo_path = next(p for u, p in paths.items() if u in before and p.count("/") == 4)
    assert {u for u, p in paths.items() if p.startswith(bo_path)} == before
    assert {u["uuid"] for u in tree.subtree(demo, "SL", BO)} == before
    assert run_checks(demo, "SL", checks="stale_path")["summary"]["stale_path"] == 0


def test_an_existing_registry_is_upgraded_to_byte_order(shifted_url: str) -> None:
    schema = f"coll_{uuid.uuid4().hex[:10]}"
    loc = Location.parse(f"{shifted_url}?schema={schema}")
    old = Registry(loc, make_engine(loc))

    def migrate(target: str) -> None:
        with old.engine.connect() as conn:
            conn.execution_options(georeg_write=True)
            with conn.begin():
                if old.schema_revision() is None:
                    conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
                command.upgrade(_alembic_config(conn), target)

    try:
        migrate("0006")
        with old.read() as conn:
            assert _collation(conn) is None  # the server's order, as before 0007
        import_dhis2_files(old, DEMO_FILES, source="SL")
        with old.engine.begin() as conn:  # a DBA's view over the column, shared with QGIS
            conn.exec_driver_sql("CREATE VIEW facilities AS SELECT uuid, name, path FROM "
                                 "org_unit WHERE depth = 4")
            conn.exec_driver_sql("GRANT SELECT ON facilities TO PUBLIC")
        migrate("head")
        with old.read() as conn:
            assert _collation(conn) == "C"
            assert conn.execute(text("SELECT count(*) FROM facilities")).scalar() == 1166
            assert conn.execute(text(
                "SELECT has_table_privilege('public', 'facilities', 'SELECT')")).scalar()
        units.move_unit(old, "SL", BO, WESTERN_AREA)
        assert run_checks(old, "SL", checks="stale_path")["summary"]["stale_path"] == 0
    finally:
        with old.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        old.close()


def _collation(conn: Connection) -> str | None:
    return conn.execute(text(
        "SELECT c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation "
        "WHERE a.attrelid = to_regclass('org_unit') AND a.attname = 'path' "
        "AND a.attcollation <> (SELECT oid FROM pg_collation WHERE collname = 'default')"
    )).scalar()
