"""Shared fixtures: a fresh registry on every backend, the demo data, the PostGIS cluster.

Every storage test that takes ``registry`` runs three times: on a GeoPackage
file, a SpatiaLite file and a PostGIS schema of its own in a throwaway cluster
on 127.0.0.1 (started once per session, stopped at the end).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from storage.registry import Registry  # noqa: E402

DEMO_DATA = ROOT / "georeg" / "demo_data" / "sierra-leone"
DEMO_FILES = sorted(DEMO_DATA.glob("*.json"))
BACKENDS = [
    pytest.param("gpkg", id="gpkg"),
    pytest.param("spatialite", id="spatialite"),
    pytest.param("postgis", id="postgis", marks=pytest.mark.postgis),
]


@pytest.fixture(scope="session")
def postgis_url() -> Iterator[str]:
    from tests.pg_cluster import throwaway_postgis

    with throwaway_postgis() as url:
        yield url


@pytest.fixture
def central(postgis_url: str) -> Iterator[tuple[str, str]]:
    """(URL, schema) of a central registry on the throwaway PostGIS, dropped after."""
    from sqlalchemy import create_engine

    from storage.backends import Location

    schema = f"central_{uuid.uuid4().hex[:10]}"
    yield postgis_url, schema
    engine = create_engine(Location.parse(postgis_url).url or "")
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    engine.dispose()


def location_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "gpkg":
        return str(tmp_path / "registry.gpkg")
    if backend == "spatialite":
        return str(tmp_path / "registry.sqlite")
    url = request.getfixturevalue("postgis_url")
    return f"{url}?schema=t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return location_for(backend, tmp_path, request)


@pytest.fixture
def registry(location: str) -> Iterator[Registry]:
    reg = Registry.create(location)
    yield reg
    _drop(reg)


@pytest.fixture
def demo(registry: Registry) -> Registry:
    """The Sierra Leone demo imported as version 1 of source 'SL' (a draft)."""
    from sync.dhis2_json import import_dhis2_files

    import_dhis2_files(registry, DEMO_FILES, source="SL")
    return registry


@contextmanager
def demo_in_schema(url: str, prefix: str) -> Iterator[Registry]:
    """The demo (version 1 of source 'SL', a draft) in a new PostGIS registry, in a
    schema of its own that is dropped afterwards."""
    from sync.dhis2_json import import_dhis2_files

    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    reg = Registry.create(f"{url}{'&' if '?' in url else '?'}schema={schema}")
    try:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        yield reg
    finally:
        _drop(reg)


def cli_location(reg: Registry) -> str:
    """What a user types as REG for this registry: its path, or its URL with the schema."""
    loc = reg.location
    if loc.path is not None:
        return str(loc.path)
    assert loc.url is not None
    return f"{loc.url}{'&' if '?' in loc.url else '?'}schema={loc.schema}"


def _drop(reg: Registry) -> None:
    if reg.location.url is not None:
        with reg.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{reg.location.schema}" CASCADE')
    reg.close()


@pytest.fixture
def fake41() -> Iterator[Any]:
    """The fake DHIS2 answering as 2.41, on 127.0.0.1."""
    from tests.fake_dhis2 import FakeDhis2

    with FakeDhis2("2.41") as server:
        yield server


@pytest.fixture
def fake36() -> Iterator[Any]:
    """The fake DHIS2 answering as 2.36 (bare import reports), on 127.0.0.1."""
    from tests.fake_dhis2 import FakeDhis2

    with FakeDhis2("2.36") as server:
        yield server
