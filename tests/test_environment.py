"""One GEOS, one PROJ, one GDAL in the process.

SpatiaLite (loaded by SQLite with RTLD_GLOBAL), Debian's GDAL bindings and QGIS use
the system libraries. A Python package that brings its own copy (a manylinux wheel of
shapely, pyproj or pyogrio) then calls the wrong library or crashes at exit. `make
setup` builds them against the system libraries; this test keeps it that way.
"""

from __future__ import annotations

import sqlite3

import pyogrio
import pyproj
import shapely
from osgeo import gdal

from storage.backends import load_spatialite


def test_python_geo_packages_share_the_system_libraries() -> None:
    conn = sqlite3.connect(":memory:")
    load_spatialite(conn)
    geos, proj = conn.execute("SELECT geos_version(), proj_version()").fetchone()
    conn.close()
    assert shapely.geos_version_string == geos.split("-")[0]
    assert pyproj.proj_version_str in proj
    assert pyogrio.__gdal_version_string__ == gdal.__version__
    assert shapely.Point(1, 2).wkt == "POINT (1 2)"
