"""The throwaway PostGIS cluster used by the PostGIS-backed tests starts and works."""

from __future__ import annotations

import pytest

from tests.pg_cluster import throwaway_postgis


@pytest.mark.postgis
def test_throwaway_postgis_serves_postgis() -> None:
    psycopg = pytest.importorskip("psycopg")
    with throwaway_postgis() as url, psycopg.connect(url, connect_timeout=10) as conn:
        (version,) = conn.execute("SELECT postgis_full_version()").fetchone()
    assert "POSTGIS" in version
