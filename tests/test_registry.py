"""Opening registries: backends from the location, schema migrations, WAL, clear set-up errors."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

from storage import models
from storage.backends import Backend, Location, load_spatialite
from storage.errors import InvalidInput, RegistryNotFound, SetupError
from storage.registry import Registry, head_revision
from sync.dhis2_json import import_dhis2_files
from tests.conftest import DEMO_FILES


def test_backend_is_picked_from_the_location() -> None:
    assert Location.parse("a/b.gpkg").backend is Backend.GEOPACKAGE
    assert Location.parse("b.SQLITE").backend is Backend.SPATIALITE
    pg = Location.parse("postgresql://me:secret@db:5432/reg?schema=district")
    assert pg.backend is Backend.POSTGIS and pg.schema == "district"
    assert "secret" not in pg.display() and pg.display().startswith("postgresql://me@db:5432/reg")
    with pytest.raises(InvalidInput, match=r"\.gpkg"):
        Location.parse("registry.csv")
    with pytest.raises(InvalidInput, match="identifier"):
        Location.parse("postgresql://db/reg?schema=a;drop")


@pytest.mark.parametrize("url, password, host", [
    ("postgresql://georeg:p%40ss%2F1%23@db:5433/reg", "p@ss/1#", "db"),  # encoded
    ("postgresql://georeg:p@ss@db:5433/reg", "p@ss", "db"),  # typed as it is
    ("postgresql://georeg:a/b?c@db:5433/reg", "a/b?c", "db"),
    ("postgresql:///reg?host=%2Frun%2Fpostgresql", None, None),  # the local socket
])
def test_a_password_is_read_as_typed(url: str, password: str | None, host: str | None
                                     ) -> None:
    from sqlalchemy.engine import make_url

    loc = Location.parse(url)
    parsed = make_url(loc.url or "")
    assert (parsed.password, parsed.host, parsed.database) == (password, host, "reg")
    if password:
        assert password not in loc.display() and "georeg@db:5433/reg" in loc.display()


def test_a_url_that_cannot_be_read_says_how_to_write_it() -> None:
    with pytest.raises(InvalidInput, match="%23") as err:
        Location.parse("postgresql://georeg:a#b@db/reg")
    assert "a#b" not in str(err.value)
    with pytest.raises(InvalidInput, match="port") as err:
        Location.parse("postgresql://georeg@db:54x2/reg")
    with pytest.raises(InvalidInput, match="1 to 65535"):
        Location.parse("postgresql://georeg@db:99999/reg")
    with pytest.raises(InvalidInput, match=r"brackets, \[::1\]"):
        Location.parse("postgresql://georeg@[::1/reg")  # was a ValueError traceback
    with pytest.raises(InvalidInput, match="letters, digits and _"):
        Location.parse("postgresql://db/reg?schema=district-bo")
    with pytest.raises(InvalidInput, match="at most 63"):
        Location.parse(f"postgresql://db/reg?schema={'d' * 64}")  # PostgreSQL would cut it
    from sync.dhis2_client import dhis2_base_url
    from sync.scheduler import save_target

    for bad in ("http://[::1:8080", "http://127.0.0.1:99999"):
        with pytest.raises(InvalidInput, match="not a usable address"):
            dhis2_base_url(bad)
    with pytest.raises(InvalidInput, match="brackets"):  # refused before it is stored
        save_target(Path("/nonexistent/secrets.toml"), "m", {"url": "postgresql://u@[::1/db"})


def test_models_match_the_migrated_schema(registry: Registry) -> None:
    """The typed models describe exactly the tables the migrations made, on every backend."""
    inspector = inspect(registry.engine)
    for table in models.Base.metadata.sorted_tables:
        real = {c["name"] for c in inspector.get_columns(table.name)}
        assert real == {c.name for c in table.columns}, table.name
    assert registry.schema_revision() == head_revision()


def test_typed_queries_work_on_every_backend(demo: Registry) -> None:
    with Session(demo.engine) as session:
        districts = session.scalars(
            select(models.OrgUnit.name).join(models.OrgUnitType,
                                             models.OrgUnitType.fid == models.OrgUnit.type_id)
            .where(models.OrgUnitType.name == "District").order_by(models.OrgUnit.name)
        ).all()
        assert len(districts) == 13 and districts[0] == "Bo"
        version = session.scalars(select(models.SourceVersion)).one()
        assert version.status == "draft" and version.number == 1


def test_opening_something_that_is_not_a_registry(tmp_path: Path) -> None:
    with pytest.raises(RegistryNotFound, match="georeg init"):
        Registry.open(tmp_path / "none.gpkg")
    plain = tmp_path / "plain.gpkg"
    sqlite3.connect(plain).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(RegistryNotFound, match="not a Georeg registry"):
        Registry.open(plain)


def test_a_python_that_cannot_load_extensions_is_told_how_to_fix_it() -> None:
    class NoExtensions:  # what sqlite3.connect() returns on builds without extension loading
        pass

    with pytest.raises(SetupError, match="libsqlite3-mod-spatialite.*/usr/bin/python3"):
        load_spatialite(NoExtensions())  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".gpkg", ".sqlite"])
def test_file_is_shared_by_a_reader_and_a_writer(tmp_path: Path, suffix: str) -> None:
    """WAL: the server reads while the desktop app writes, and the writer does not wait."""
    demo = Registry.create(tmp_path / f"reg{suffix}")
    import_dhis2_files(demo, DEMO_FILES, source="SL")
    assert demo.location.path is not None
    with demo.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    other = Registry.open(demo.location.path)
    try:
        with other.read() as reader:
            count = reader.execute(text("SELECT count(*) FROM org_unit")).scalar()
            done = threading.Event()

            def write() -> None:
                with demo.write() as conn:
                    conn.execute(text("UPDATE org_unit SET code = 'X' WHERE depth = 1"))
                done.set()

            worker = threading.Thread(target=write)
            worker.start()
            worker.join(10)
            assert done.is_set()
            assert reader.execute(text("SELECT count(*) FROM org_unit")).scalar() == count
    finally:
        other.close()
        demo.close()


def test_creating_twice_is_refused_without_force(tmp_path: Path) -> None:
    path = tmp_path / "r.gpkg"
    Registry.create(path).close()
    with pytest.raises(Exception, match="already exists"):
        Registry.create(path)
    Registry.create(path, overwrite=True).close()


def test_a_bulk_load_leaves_every_rule_and_index_in_place(tmp_path: Path) -> None:
    """The bulk loader suspends triggers and indexes inside its transaction: all come back."""
    reg = Registry.create(tmp_path / "r.gpkg")
    schema = "SELECT type, name, sql FROM sqlite_master WHERE type IN ('trigger', 'index') " \
             "ORDER BY type, name"
    with reg.read() as conn:
        before = conn.execute(text(schema)).all()
    import_dhis2_files(reg, DEMO_FILES, source="SL")
    with reg.read() as conn:
        assert conn.execute(text(schema)).all() == before
        assert conn.execute(text("SELECT count(*) FROM rtree_org_unit_location")).scalar() == 601
        assert conn.execute(
            text("SELECT count(*) FROM rtree_org_unit_territory_territory")).scalar() == 165
    reg.close()


def test_migrations_go_down_and_up_again(location: str) -> None:
    """Every migration after the first can be undone and redone: the tables it added (and
    their GeoPackage registration) go, and come back the same."""
    from alembic import command
    from sqlalchemy import inspect

    from storage.registry import _alembic_config, head_revision

    reg = Registry.create(location)
    try:
        def tables() -> set[str]:
            with reg.engine.connect() as conn:
                return set(inspect(conn).get_table_names(schema=reg.location.schema
                                                         if reg.location.url else None))

        at_head = tables()
        for target in ("0001", "head"):
            with reg.engine.connect() as conn:
                conn.execution_options(georeg_write=True)
                with conn.begin():
                    (command.downgrade if target == "0001" else command.upgrade)(
                        _alembic_config(conn), target)
            if target == "0001":
                assert reg.schema_revision() == "0001"
                assert not {"schedule_job", "app_user", "merge_run", "data_export"} & tables()
        assert reg.schema_revision() == head_revision() and tables() == at_head
        if reg.location.path is not None and reg.location.path.suffix == ".gpkg":
            import sqlite3

            with sqlite3.connect(reg.location.path) as db:
                listed = {r[0] for r in db.execute(
                    "SELECT table_name FROM gpkg_contents WHERE data_type = 'attributes'")}
            assert {"schedule_job", "app_user", "merge_run", "data_export"} <= listed
    finally:
        reg.close()


def test_the_head_read_from_file_names_is_alembic_s_head() -> None:
    """Opening a registry does not load Alembic to learn the newest migration; this is
    what keeps that shortcut honest (a new migration with an odd name would fail here)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from storage.registry import MIGRATIONS, head_revision

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == head_revision()
