"""A district officer's registry only holds values the central PostGIS accepts.

SQLite (GeoPackage, SpatiaLite) happily stores a NUL character in a name or a note pasted
from a spreadsheet, and a GPS point with an altitude; PostgreSQL refuses both (text and
jsonb cannot hold U+0000, the central geometry columns are 2D).  Kept locally, such a value
made every nightly ``georeg sync postgis push`` fail with a message naming no unit.  Now the
edit API refuses the NUL, naming the unit and the field, and drops Z/M quietly; a 3D point
an older registry already holds goes up 2D.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
import shapely
from shapely import Point, Polygon
from sqlalchemy import create_engine, text

from storage import geometry, units
from storage.backends import Backend, Location
from storage.errors import InvalidInput
from storage.registry import Registry
from sync.dhis2_json import import_dhis2_files
from sync.postgis_sync import checksums, push, status
from tests.conftest import DEMO_FILES

BO = "O6uvpzGd5pu"  # Bo district in the Sierra Leone demo
BO_CHIEFDOM = "vWbkYPRmKyS"  # Baoma chiefdom, in Bo
FACILITY = "kbGqmM6ZWWV"  # Allen Town Health Post, Western Area / Freetown
OTHER_FACILITY = "DiszpKrYNg8"


def _log_top(reg: Registry) -> int:
    with reg.read() as conn:
        return int(conn.execute(text("SELECT COALESCE(max(fid), 0) FROM change_log")).scalar_one())


def _stored_geometries(reg: Registry, ident: str) -> tuple[Any, Any]:
    """The location and territory as the registry holds them (straight from the row, so a
    stored Z would show)."""
    with reg.read() as conn:
        fid, loc = conn.execute(
            text(f"SELECT fid, {geometry.select_sql(reg.backend, 'location')} FROM org_unit "
                 "WHERE source_ref = :r OR uuid = :r"), {"r": ident}).one()
        ter = conn.execute(
            text(f"SELECT {geometry.select_sql(reg.backend, 'territory')} FROM "
                 "org_unit_territory WHERE unit_fid = :f"), {"f": fid}).scalar()
    return _raw_geometry(reg, loc), _raw_geometry(reg, ter)


def _raw_geometry(reg: Registry, value: Any) -> Any:
    """Decode without ``geometry.decode`` (which reads 2D whatever is stored)."""
    if value is None:
        return None
    raw = bytes(value)
    if reg.backend is Backend.GEOPACKAGE:
        envelope = (raw[3] >> 1) & 0b111
        raw = raw[8 + {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[envelope]:]
    return shapely.from_wkb(raw)


# --- NUL characters: refused at the door, with the unit and the field named ------------------


@pytest.mark.parametrize(("values", "field"), [
    ({"name": "Name with\x00NUL"}, "'name'"),
    ({"code": "BO\x0001"}, "'code'"),
    ({"source_ref": "ref\x00"}, "'source_ref'"),
    ({"aliases": ["Bo", "Bo\x00 town"]}, "'aliases' (item 2)"),
    ({"extra_fields": {"note": "pasted\x00from excel"}}, "'extra_fields' (key 'note')"),
    ({"extra_fields": {"contact": {"phones": ["076", "07\x006"]}}},
     "'extra_fields' (key 'contact', key 'phones', item 2)"),
    ({"extra_fields": {"no\x00te": "fine"}}, "'extra_fields' (the key 'no\\x00te')"),
])
def test_a_nul_pasted_into_a_unit_is_refused_and_nothing_changes(
        demo: Registry, values: dict[str, Any], field: str) -> None:
    before, top = checksums(demo), _log_top(demo)
    with pytest.raises(InvalidInput) as edit:
        units.edit_unit(demo, "SL", BO, **values)
    assert str(edit.value).startswith(f"Unit {BO!r}: field {field} contains a NUL character")
    assert "PostgreSQL cannot store" in str(edit.value)

    new = {"name": "Kakua New CHP", **values}
    with pytest.raises(InvalidInput, match=r"field .* contains a NUL character") as add:
        units.add_unit(demo, "SL", parent=BO_CHIEFDOM, type="Facility", **new)
    assert str(add.value).startswith(f"New unit {new['name']!r}: field {field}")
    assert checksums(demo) == before and _log_top(demo) == top


def test_rename_and_groups_refuse_nul_too(demo: Registry) -> None:
    before, top = checksums(demo), _log_top(demo)
    with pytest.raises(InvalidInput, match=r"^Unit 'O6uvpzGd5pu': field 'name' contains a NUL"):
        units.rename_unit(demo, "SL", BO, "Bo\x00")
    with pytest.raises(InvalidInput, match=r"^New group 'CHC\\x00 2': field 'name' contains"):
        units.add_group(demo, "SL", "CHC\x00 2")
    with pytest.raises(InvalidInput, match=r"field 'source_ref' contains a NUL"):
        units.add_group(demo, "SL", "CHC 2", source_ref="g\x00")
    assert checksums(demo) == before and _log_top(demo) == top
    # ordinary control characters PostgreSQL does store are still fine
    assert units.edit_unit(demo, "SL", BO, extra_fields={"note": "line 1\nline 2\ttab"})[
        "extra_fields"] == {"note": "line 1\nline 2\ttab"}


# --- Z/M: a GPS altitude is dropped quietly -------------------------------------------------


def test_a_gps_point_with_altitude_and_a_polygonz_are_stored_2d(demo: Registry) -> None:
    added = units.add_unit(demo, "SL", name="Hilltop MCHP", parent=BO_CHIEFDOM, type="Facility",
                           location=Point(-11.7, 7.9, 120.0),
                           territory=Polygon([(-11.8, 7.8, 5), (-11.6, 7.8, 6),
                                              (-11.6, 8.0, 7), (-11.8, 7.8, 5)]))
    assert added["location"] == [-11.7, 7.9] and added["has_territory"]
    loc, ter = _stored_geometries(demo, added["uuid"])
    assert not loc.has_z and loc.equals(Point(-11.7, 7.9))
    assert ter.geom_type == "MultiPolygon" and not ter.has_z

    square_z = Polygon([(x, y, 1.0) for x, y in
                        shapely.box(-13.3, 8.3, -13.1, 8.5).exterior.coords])
    units.set_geometry(demo, "SL", FACILITY, location=Point(-13.2, 8.4, 35.5),
                       territory=shapely.MultiPolygon([square_z]))
    loc, ter = _stored_geometries(demo, FACILITY)
    assert not loc.has_z and (loc.x, loc.y) == (-13.2, 8.4)
    assert not ter.has_z and ter.equals(shapely.box(-13.3, 8.3, -13.1, 8.5))


def test_encoding_is_2d_whatever_comes_in() -> None:
    for backend in Backend:
        for geom in (Point(1, 2, 3), shapely.from_wkt("POINT M (1 2 3)"),
                     shapely.from_wkt("POINT ZM (1 2 3 4)")):
            blob = geometry.encode(backend, geom)
            assert blob is not None
            back = geometry.decode(backend, blob)
            assert back is not None and not back.has_z and back.equals(Point(1, 2))
        blobs = geometry.encode_many(backend, [None, Point(1, 2, 3), Point(4, 5)])
        assert blobs[0] is None
        decoded = [geometry.decode(backend, b) for b in blobs[1:]]
        assert [g is not None and not g.has_z for g in decoded] == [True, True]
        assert decoded[0] is not None and decoded[0].equals(Point(1, 2))


# --- the end-to-end proof: an old registry holding 3D geometries pushes to PostGIS ----------


def _gpkg_3d_blob(geom: Any) -> bytes:
    """A GeoPackage blob holding a Z geometry, as an older Georeg (or QGIS) wrote it:
    header with no envelope, then ISO WKB with the Z."""
    return struct.pack("<2sBBi", b"GP", 0, 0b00000001, geometry.SRID) + shapely.to_wkb(
        geom, byte_order=1, flavor="iso")


def _write_3d(reg: Registry, ident: str, location: Any, territory: Any = None) -> None:
    with reg.write(origin="cli") as conn:
        fid = conn.execute(text("SELECT fid FROM org_unit WHERE source_ref = :r"),
                           {"r": ident}).scalar_one()
        conn.execute(text("UPDATE org_unit SET location = :g WHERE fid = :f"),
                     {"g": _gpkg_3d_blob(location), "f": fid})
        if territory is not None:
            conn.execute(text("UPDATE org_unit_territory SET territory = :g WHERE unit_fid = :f"),
                         {"g": _gpkg_3d_blob(territory), "f": fid})


@pytest.mark.postgis
def test_an_old_registry_with_3d_points_pushes_to_postgis(tmp_path: Path,
                                                           central: tuple[str, str]) -> None:
    reg = Registry.create(str(tmp_path / "district.gpkg"))
    try:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        # what an older registry could hold: a GPS point with altitude, a PolygonZ
        chiefdom = shapely.MultiPolygon([Polygon(
            [(x, y, 12.0) for x, y in shapely.box(-11.9, 7.5, -11.7, 7.7).exterior.coords])])
        _write_3d(reg, FACILITY, Point(-13.2, 8.4, 35.5))
        _write_3d(reg, BO_CHIEFDOM, Point(-11.8, 7.6, 80.0), chiefdom)
        loc, ter = _stored_geometries(reg, BO_CHIEFDOM)
        assert loc.has_z and ter.has_z  # really stored 3D

        first = push(reg, *central)
        assert first["units_inserted"] == 1332
        assert status(reg, *central, compare=True)["equal"]

        # the next night: an edit of a 3D unit, another old-style 3D write, a new GPS point
        units.rename_unit(reg, "SL", FACILITY, "Allen Town Health Post (rebuilt)")
        _write_3d(reg, OTHER_FACILITY, Point(-11.5, 7.5, 210.0))
        units.add_unit(reg, "SL", name="Hilltop MCHP", parent=BO_CHIEFDOM, type="Facility",
                       location=Point(-11.7, 7.9, 120.0))
        second = push(reg, *central)
        assert second["units_inserted"] == 1 and second["units_updated"] >= 2
        report = status(reg, *central, compare=True)
        assert report["equal"], {k: v for k, v in report["tables"].items() if not v["equal"]}
        assert report["unpushed_changes"] == 0

        engine = create_engine(Location.parse(central[0]).url or "")
        try:
            with engine.connect() as conn:
                dims = conn.execute(text(
                    f'SELECT DISTINCT ST_NDims(location) FROM "{central[1]}".org_unit '
                    "WHERE location IS NOT NULL")).scalars().all()
                ter = conn.execute(text(
                    f'SELECT ST_AsText(t.territory) FROM "{central[1]}".org_unit_territory t '
                    f'JOIN "{central[1]}".org_unit u ON u.fid = t.unit_fid '
                    "WHERE u.source_ref = :r"), {"r": BO_CHIEFDOM}).scalar_one()
        finally:
            engine.dispose()
        assert dims == [2]
        assert shapely.from_wkt(ter).equals(shapely.force_2d(chiefdom))
    finally:
        reg.close()


def _write_nul(reg: Registry, ident: str, column: str, value: str) -> None:
    """A NUL put in behind the API's back: an import of a pasted sheet, QGIS, an older
    Georeg."""
    with reg.write(origin="cli") as conn:
        conn.execute(text(f"UPDATE org_unit SET {column} = :v WHERE source_ref = :r"),
                     {"v": value, "r": ident})


@pytest.mark.postgis
@pytest.mark.parametrize("first", [True, False], ids=["first push", "change push"])
def test_a_nul_already_in_the_registry_is_named_when_the_push_meets_it(
        tmp_path: Path, central: tuple[str, str], first: bool) -> None:
    reg = Registry.create(str(tmp_path / "district.gpkg"))
    try:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        if not first:
            push(reg, *central)
        _write_nul(reg, FACILITY, "name", "Allen Town\x00 Health Post")
        _write_nul(reg, BO_CHIEFDOM, "extra_fields", '{"note": "pasted\\u0000 from Excel"}')
        with pytest.raises(InvalidInput) as err:
            push(reg, *central)
        said = err.value.message
        assert "NUL character" in said and "Allen Town? Health Post" in said
        assert "'Baoma'" in said and "extra_fields" in said
        _write_nul(reg, FACILITY, "name", "Allen Town Health Post")
        _write_nul(reg, BO_CHIEFDOM, "extra_fields", '{"note": "pasted from Excel"}')
        push(reg, *central)
        assert status(reg, *central, compare=True)["equal"]
    finally:
        reg.close()
