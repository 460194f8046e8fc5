"""The ministry's DBA gives Georeg an ordinary role, not a superuser: ``CREATE`` on the
database (for the schema) and PostGIS already installed.  Push, change, push again,
pull and compare all work with that."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from storage import units
from storage.registry import Registry
from sync.dhis2_json import import_dhis2_files
from sync.postgis_sync import pull, push, status
from tests.conftest import DEMO_FILES

pytestmark = pytest.mark.postgis

BO_CHIEFDOM = "vWbkYPRmKyS"  # Baoma chiefdom, in Bo
WESTERN_AREA = "at6UHUQatSo"
ROLE = "georeg_district"


@pytest.fixture
def role_url(postgis_url: str) -> Iterator[str]:
    with psycopg.connect(postgis_url, autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
        if not exists:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
        conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO {ROLE}')
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s",
                            (ROLE,)).fetchone() == (False,)
    yield postgis_url.replace("://postgres@", f"://{ROLE}@", 1)


def test_an_ordinary_role_pushes_and_pulls(role_url: str, postgis_url: str,
                                           tmp_path: Path) -> None:
    schema = f"role_{uuid.uuid4().hex[:10]}"
    reg = Registry.create(tmp_path / "district.gpkg")
    try:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        first = push(reg, role_url, schema)
        assert first["units_inserted"] == 1332 and not first["warnings"]
        units.move_unit(reg, "SL", BO_CHIEFDOM, WESTERN_AREA)
        second = push(reg, role_url, schema)
        assert second["units_moved"] == 1
        assert pull(reg, role_url, schema)["conflict_count"] == 0
        assert status(reg, role_url, schema, compare=True)["equal"]
        with psycopg.connect(postgis_url) as conn:
            owner = conn.execute("SELECT nspowner::regrole::text FROM pg_namespace "
                                 "WHERE nspname = %s", (schema,)).fetchone()
        assert owner == (ROLE,)
    finally:
        reg.close()
        with psycopg.connect(postgis_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_the_url_forms_people_type_reach_the_server(role_url: str, postgis_url: str,
                                                    tmp_path: Path) -> None:
    """A password typed with its '@' (the server here trusts loopback, so only the host
    and user matter: before, the host was read as 'ss@127.0.0.1'), and a URL with no
    host whose host and port come as parameters, as for a local socket."""
    schema = f"role_{uuid.uuid4().hex[:10]}"
    parts = urlsplit(role_url)
    typed = f"postgresql://{ROLE}:p@ss/w?rd@{parts.hostname}:{parts.port}{parts.path}"
    hostless = f"postgresql://{parts.path}?host={parts.hostname}&port={parts.port}&user={ROLE}"
    reg = Registry.create(tmp_path / "district.gpkg")
    try:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        assert push(reg, typed, schema)["units_inserted"] == 1332
        state = status(reg, hostless, schema, compare=True)
        assert state["equal"] and state["pushed_before"]  # the same central, by name too
    finally:
        reg.close()
        with psycopg.connect(postgis_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
