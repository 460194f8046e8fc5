"""The registry file is a real GeoPackage: GDAL validates it, ogrinfo and QGIS open it,
and edits made there are versioned and audited like ours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from storage.audit import history
from storage.registry import Registry
from storage.versions import publish_version
from sync.dhis2_json import import_dhis2_files
from tests.conftest import DEMO_FILES
from tests.qgis_helpers import qgis_layers

pytestmark = pytest.mark.gdal

VALIDATE_GPKG = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")


@pytest.fixture
def demo_gpkg(tmp_path: Path) -> Path:
    path = tmp_path / "demo.gpkg"
    with Registry.create(path) as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
    return path


def test_passes_gdal_validate_gpkg(demo_gpkg: Path) -> None:
    assert VALIDATE_GPKG.exists(), "python3-gdal ships validate_gpkg.py (make setup installs it)"
    run = subprocess.run([sys.executable, str(VALIDATE_GPKG), str(demo_gpkg)],
                         capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "" and run.stderr.strip() == "", (
        run.stdout + run.stderr)


def test_ogrinfo_opens_it_without_a_warning(demo_gpkg: Path) -> None:
    run = subprocess.run(["ogrinfo", "-ro", "-al", "-so", str(demo_gpkg)],
                         capture_output=True, text=True)
    assert run.returncode == 0
    assert "Warning" not in run.stderr and "ERROR" not in run.stderr, run.stderr
    layers = {
        block.split("\n", 1)[0]: block for block in run.stdout.split("Layer name: ")[1:]
    }
    assert "Geometry: Point" in layers["org_unit"]
    assert "Feature Count: 1332" in layers["org_unit"]
    assert "Geometry: Multi Polygon" in layers["org_unit_territory"]
    assert "Feature Count: 165" in layers["org_unit_territory"]


def test_gdal_edit_lands_in_the_change_log(demo_gpkg: Path) -> None:
    from osgeo import ogr

    ds = ogr.Open(str(demo_gpkg), update=1)
    layer = ds.GetLayerByName("org_unit")
    layer.SetAttributeFilter("source_ref = 'O6uvpzGd5pu'")
    feature = layer.GetNextFeature()
    feature.SetField("name", "Bo (edited in QGIS)")
    assert layer.SetFeature(feature) == 0
    # A new facility digitised in QGIS: no uuid, key or path — the triggers fill them.
    new = ogr.Feature(layer.GetLayerDefn())
    new.SetField("version_id", 1)
    new.SetField("name", "Digitised CHP")
    new.SetField("parent_key", feature.GetField("unit_key"))
    new.SetGeometry(ogr.CreateGeometryFromWkt("POINT (-11.74 7.96)"))
    assert layer.CreateFeature(new) == 0
    ds = None
    with Registry.open(demo_gpkg) as reg:
        log = history(reg, limit=2)
        assert log[0]["op"] == "insert" and log[0]["name"] == "Digitised CHP"
        assert log[0]["origin"] == "external" and log[0]["unit_uuid"]
        assert log[1]["changes"]["name"] == ["Bo", "Bo (edited in QGIS)"]
        with reg.read() as conn:
            row = conn.execute(text("SELECT p.path, u.path, u.depth FROM org_unit u JOIN org_unit p "
                                    "ON p.unit_key = u.parent_key AND p.version_id = u.version_id "
                                    "WHERE u.name = 'Digitised CHP'")).one()
        assert row[1] == row[0] + row[1].split("/")[-2] + "/" and row[2] == 3


def test_gdal_edit_of_a_published_version_fails(demo_gpkg: Path) -> None:
    from osgeo import ogr

    with Registry.open(demo_gpkg) as reg:
        publish_version(reg, "SL", 1)
    before = demo_gpkg.read_bytes()
    ogr.UseExceptions()
    ds = ogr.Open(str(demo_gpkg), update=1)
    layer = ds.GetLayerByName("org_unit")
    feature = layer.GetNextFeature()
    feature.SetField("name", "nope")
    with pytest.raises(RuntimeError, match="published and read-only"):
        layer.SetFeature(feature)
    with pytest.raises(RuntimeError, match="published and read-only"):
        ds.ExecuteSQL("DELETE FROM org_unit_territory")
    ds = None
    assert demo_gpkg.read_bytes() == before


@pytest.mark.qgis
def test_qgis_loads_every_spatial_layer(demo_gpkg: Path, tmp_path: Path) -> None:
    lines = qgis_layers(demo_gpkg, ["org_unit", "org_unit_territory"],
                        "QgsWkbTypes.displayString(layer.wkbType()), layer.featureCount()",
                        tmp_path)
    assert lines == [
        ["org_unit", "True", "Point", "1332"],
        ["org_unit_territory", "True", "MultiPolygon", "165"],
    ]


def test_plain_sql_on_the_file_is_audited_and_published_versions_refuse_it(
    demo_gpkg: Path,
) -> None:
    """A SQL console (sqlite3 with SpatiaLite loaded, as DB Browser or QGIS's DB Manager)."""
    import sqlite3

    from storage.backends import load_spatialite

    conn = sqlite3.connect(demo_gpkg)
    load_spatialite(conn)
    conn.execute("UPDATE org_unit SET code = 'BO-01' WHERE source_ref = 'O6uvpzGd5pu'")
    conn.commit()
    with Registry.open(demo_gpkg) as reg:
        entry = history(reg, limit=1)[0]
        assert entry["changes"] == {"code": [None, "BO-01"]} and entry["origin"] == "external"
        publish_version(reg, "SL", 1)
    with pytest.raises(sqlite3.IntegrityError, match="published and read-only"):
        conn.execute("UPDATE org_unit SET code = 'BO-02' WHERE source_ref = 'O6uvpzGd5pu'")
    with pytest.raises(sqlite3.IntegrityError, match="published"):
        conn.execute("UPDATE source_version SET status = 'draft'")
    conn.close()


@pytest.mark.postgis
def test_gdal_on_a_postgis_registry_is_audited_and_guarded(postgis_url: str) -> None:
    from urllib.parse import urlsplit

    from osgeo import ogr

    location = f"{postgis_url}?schema=gdal_edit"
    with Registry.create(location, overwrite=True) as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
    url = urlsplit(postgis_url)
    ogr.UseExceptions()
    dsn = (f"PG:host={url.hostname} port={url.port} dbname={url.path.lstrip('/')} "
           f"user={url.username} active_schema=gdal_edit")
    ds = ogr.Open(dsn, update=1)
    layer = ds.GetLayerByName("org_unit")
    layer.SetAttributeFilter("source_ref = 'O6uvpzGd5pu'")
    feature = layer.GetNextFeature()
    feature.SetField("name", "Bo (via GDAL)")
    layer.SetFeature(feature)
    ds = None
    with Registry.open(location) as reg:
        entry = history(reg, limit=1)[0]
        assert entry["changes"]["name"] == ["Bo", "Bo (via GDAL)"]
        assert entry["origin"] == "external"
        publish_version(reg, "SL", 1)
    ds = ogr.Open(dsn, update=1)
    layer = ds.GetLayerByName("org_unit")
    feature = layer.GetNextFeature()
    feature.SetField("name", "nope")
    with pytest.raises(RuntimeError, match="published and read-only"):
        layer.SetFeature(feature)
    ds = None
    with Registry.open(location) as reg:
        with reg.engine.begin() as conn:
            conn.exec_driver_sql('DROP SCHEMA "gdal_edit" CASCADE')
