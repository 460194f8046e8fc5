"""A big Iaso GeoPackage imports fast, and exactly as it would row by row.

The GIS officer imports the ministry's 100k-facility GeoPackage into a new source.  A
layer whose rows are plain (texts as they are, ISO dates, canonical uuids, plain
longitude/latitude points) is copied by the loader with one ``INSERT … SELECT`` over
the attached file instead of a record per row.  Whatever way the rows take, the
registry must come out the same — and a file with something odd in it goes the
records way, which names the row at fault and leaves the registry unchanged.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest
from shapely import MultiPolygon, Point, box
from sqlalchemy import text

from storage.backends import load_spatialite
from storage.errors import InvalidInput
from storage.registry import Registry
from sync.exchange import GroupDef, ReadOptions, TypeDef, VersionData, internal_ref
from sync.formats.iaso_gpkg import read_file, write_file
from sync.importing import import_payload
from tests.test_format_iaso_gpkg import export_unit

FACILITIES = 40
LAYER = "level-3-Facility"


def ministry_file(folder: Path, size: int = FACILITIES) -> Path:
    """A country, two districts (polygons) and their facilities (points, uuids, codes,
    dates, statuses, groups; one without a point)."""
    country = export_unit("0190c0de-0000-7000-8000-000000000001", "SL", "Sierra Léone", None,
                          type="Country", territory=MultiPolygon([box(0, 0, 20, 20)]))
    districts = [export_unit(f"0190c0de-0000-7000-8000-0000000000{10 + i}", f"D-{i}",
                             f"District «{i}»", country, type="District",
                             territory=MultiPolygon([box(10 * i, 0, 10 * i + 10, 20)]))
                 for i in range(2)]
    facilities = [
        export_unit(f"0190c0de-0000-7000-8000-{n:012d}", f"HF-{n}", f"Poste de santé d'Été {n}",
                    districts[n % 2], type="Facility", code=f"C{n}" if n % 3 else None,
                    opening_date="1999-12-31" if n % 4 else None,
                    closed_date="2021-02-28" if n % 5 == 0 else None,
                    validation_status=("valid", "new", "rejected")[n % 3],
                    groups=["g-1"] if n % 2 else [],
                    location=None if n == 107 else Point(10 * (n % 2) + n / 10,
                                                         1 + (n % 500) / 7))
        for n in range(100, 100 + size)]
    out = folder / "ministry.gpkg"
    write_file(VersionData(version=None,  # type: ignore[arg-type]
                           types=[TypeDef("Country", 1), TypeDef("District", 2),
                                  TypeDef("Facility", 3)],
                           groups=[GroupDef("g-1", "Hôpitaux publics")],
                           units=iter([country, *districts, *facilities]),
                           count=3 + size), out, ReadOptions())
    return out


def edit_file(path: Path, sql: str, *params: Any) -> None:
    """Change the file as another tool would (GDAL's R-tree triggers need SpatiaLite)."""
    conn = sqlite3.connect(path)
    try:
        load_spatialite(conn)
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def imported(folder: Path, name: str, source: Path, *, records_only: bool = False,
             **options: Any) -> tuple[Registry, dict[str, Any]]:
    reg = Registry.create(folder / name)
    payload = read_file(source)
    if records_only:
        payload.load_units = None  # the way every row took before
    return reg, import_payload(reg, payload, source="MoH", **options)


def content(reg: Registry) -> dict[str, Any]:
    """Everything the import wrote, keys included, R-tree boxes and memberships too."""
    with reg.read() as conn:
        return {
            "units": conn.execute(text(
                "SELECT u.fid, u.unit_key, u.uuid, u.source_ref, u.name, u.code, t.name, "
                "t.depth, u.parent_key, u.path, u.depth, u.validation_status, u.opening_date, "
                "u.closed_date, hex(u.location), u.aliases, u.extra_fields FROM org_unit u "
                "LEFT JOIN org_unit_type t ON t.fid = u.type_id ORDER BY u.fid")).all(),
            "territories": conn.execute(text(
                "SELECT fid, unit_fid, hex(territory) FROM org_unit_territory ORDER BY fid")
            ).all(),
            "boxes": conn.execute(text(
                "SELECT id, minx, maxx, miny, maxy FROM rtree_org_unit_location ORDER BY id")
            ).all(),
            "members": conn.execute(text(
                "SELECT g.source_ref, u.source_ref FROM group_membership m JOIN org_unit_group g "
                "ON g.group_key = m.group_key JOIN org_unit u ON u.unit_key = m.unit_key "
                "ORDER BY 1, 2")).all(),
        }


def test_plain_facilities_are_copied_and_land_as_row_by_row(tmp_path: Path) -> None:
    source = ministry_file(tmp_path)
    fast, result = imported(tmp_path, "fast.gpkg", source)
    slow, reference = imported(tmp_path, "slow.gpkg", source, records_only=True)
    assert result["loaded"]["copied"] == FACILITIES  # the polygon layers: record by record
    assert reference["loaded"]["copied"] == 0
    assert result["created"] == reference["created"] == 3 + FACILITIES
    assert content(fast) == content(slow)
    with fast.read() as conn:  # the R-tree finds a copied facility by its point
        found = conn.execute(text(
            "SELECT u.source_ref FROM rtree_org_unit_location r JOIN org_unit u ON u.fid = r.id "
            "WHERE r.minx <= :x AND r.maxx >= :x AND r.miny <= :y AND r.maxy >= :y"),
            {"x": 10 + 101 / 10, "y": 1 + 101 / 7}).scalars().all()
    assert found == ["HF-101"]


@pytest.mark.parametrize(("sql", "copied"), [
    # what SQL strips as the records way strips it: still copied
    pytest.param(f'UPDATE "{LAYER}" SET ref = \' \' || ref || \'\u00a0\', '
                 "code = '   ' WHERE fid = 3", True, id="spaces around a ref, a blank code"),
    pytest.param(f'DELETE FROM "{LAYER}" WHERE fid IN (9, 10)', True,
                 id="row ids with a gap"),
    pytest.param(f'UPDATE "{LAYER}" SET parent_ref = \'\', uuid = \'\', opening_date = '
                 "'', validation_status = '' WHERE fid = 11", True,
                 id="empty parent ref (a root), uuid, date and status"),
    # the others: the records way
    pytest.param(f'UPDATE "{LAYER}" SET validation_status = \'Valid\' WHERE fid = 4', False,
                 id="status not in lower case"),
    pytest.param(f'UPDATE "{LAYER}" SET uuid = upper(uuid) WHERE fid = 5', False,
                 id="upper-case uuid"),
    pytest.param(f'UPDATE "{LAYER}" SET opening_date = \'2001-02-29\' WHERE fid = 6', False,
                 id="a date that does not exist"),
    pytest.param(f'UPDATE "{LAYER}" SET parent_ref = \'HF-101\' WHERE fid = 8', False,
                 id="parent in the same layer"),
    pytest.param(f'UPDATE "{LAYER}" SET parent_ref = parent_ref || \'  \' WHERE fid = 8',
                 False, id="spaces after a parent ref"),
    pytest.param(f'UPDATE "{LAYER}" SET uuid = (SELECT uuid FROM "{LAYER}" WHERE fid = 1) '
                 'WHERE fid = 2', False, id="a uuid used twice"),
])
def test_each_way_gives_the_registry_row_by_row_gives(tmp_path: Path, sql: str,
                                                      copied: bool) -> None:
    source = ministry_file(tmp_path)
    edit_file(source, sql)
    fast, result = imported(tmp_path, "fast.gpkg", source, skip_invalid=True)
    slow, reference = imported(tmp_path, "slow.gpkg", source, records_only=True,
                               skip_invalid=True)
    assert result["loaded"]["copied"] == (reference["created"] - 3 if copied else 0)
    assert (result["created"], result["rejected"]) == (reference["created"],
                                                       reference["rejected"])
    got, expected = content(fast), content(slow)
    if "SELECT uuid" in sql or "uuid = ''" in sql:  # a new (random) uuid either way
        uuids = [row[2] for row in got["units"]]
        assert len(set(uuids)) == len(uuids)
        got["units"] = [row[:2] + row[3:] for row in got["units"]]
        expected["units"] = [row[:2] + row[3:] for row in expected["units"]]
    assert got == expected


def test_a_polygon_deep_in_a_point_layer_sends_it_the_records_way(tmp_path: Path) -> None:
    """The copy is tried on the strength of the layer's first rows; a polygon further
    down ends it, and the layer goes record by record (that unit gets a territory)."""
    source = ministry_file(tmp_path, size=1100)
    edit_file(source, f'UPDATE "{LAYER}" SET geom = (SELECT geom FROM "level-2-District" '
                      'LIMIT 1) WHERE fid = 1050')
    fast, result = imported(tmp_path, "fast.gpkg", source)
    slow, reference = imported(tmp_path, "slow.gpkg", source, records_only=True)
    assert result["loaded"]["copied"] == 0
    assert result["loaded"]["territories"] == reference["loaded"]["territories"] == 4
    assert content(fast) == content(slow)


def point_blob(x: float, y: float) -> bytes:
    return struct.pack("<2sBBiBIdd", b"GP", 0, 1, 4326, 1, 1, x, y)


@pytest.mark.parametrize(("sql", "params", "said"), [
    pytest.param(f'UPDATE "{LAYER}" SET geom = ? WHERE fid = 12', (point_blob(12.5, 200),),
                 ("row 12", "200"), id="latitude 200"),
    pytest.param(f'UPDATE "{LAYER}" SET parent_ref = \'D-9\' WHERE fid = 12', (),
                 ("row 12", "'D-9'"), id="unknown parent"),
])
def test_a_bad_facility_is_refused_as_before(tmp_path: Path, sql: str, params: tuple[Any, ...],
                                             said: tuple[str, ...]) -> None:
    source = ministry_file(tmp_path)
    edit_file(source, sql, *params)
    messages = []
    for name, records_only in (("fast.gpkg", False), ("slow.gpkg", True)):
        with pytest.raises(InvalidInput) as refused:
            imported(tmp_path, name, source, records_only=records_only)
        messages.append(refused.value.message)
        reg = Registry.open(tmp_path / name)
        with reg.read() as conn:  # nothing written: not even the source
            assert conn.execute(text("SELECT count(*) FROM org_unit")).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM source_version")).scalar_one() == 0
        reg.close()
    assert messages[0] == messages[1]
    assert f"layer '{LAYER}'" in messages[0] and all(part in messages[0] for part in said)


def test_set_status_reaches_copied_rows(tmp_path: Path) -> None:
    fast, result = imported(tmp_path, "fast.gpkg", ministry_file(tmp_path), set_status="new")
    assert result["loaded"]["copied"] == FACILITIES
    with fast.read() as conn:
        assert conn.execute(text("SELECT DISTINCT validation_status FROM org_unit")
                            ).scalars().all() == ["new"]


def test_the_file_is_let_go_after_the_import(tmp_path: Path) -> None:
    source = ministry_file(tmp_path)
    reg, result = imported(tmp_path, "fast.gpkg", source)
    assert result["loaded"]["copied"] == FACILITIES
    with reg.read() as conn:
        attached = [row[1] for row in conn.exec_driver_sql("PRAGMA database_list")]
    assert attached == ["main", "temp"]
    source.unlink()  # and the same registry takes another file
    again = ministry_file(tmp_path)
    edit_file(again, f"UPDATE \"{LAYER}\" SET name = name || ' (2)'")
    second = import_payload(reg, read_file(again), source="MoH 2")
    assert second["loaded"]["copied"] == FACILITIES
    with reg.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM org_unit WHERE name LIKE '% (2)'")
                            ).scalar_one() == FACILITIES
    assert internal_ref  # (re-exported name used by export_unit)


def test_a_file_in_wal_mode_is_read_without_a_trace(tmp_path: Path) -> None:
    """GDAL and Iaso write GeoPackages in WAL mode; attaching one plainly would make
    SQLite create its -wal and -shm files next to the user's file (and fail in a
    read-only folder): it is attached read-only, as the reader opens it."""
    from sync.importing import ImportJob

    source = ministry_file(tmp_path)
    with sqlite3.connect(source) as conn:
        assert conn.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)
    reg = Registry.create(tmp_path / "fast.gpkg")
    job = ImportJob(reg, read_file(source), source="MoH")
    seen: set[str] = set()  # files next to the source while the import runs
    job.on_progress(lambda _p: seen.update(p.name for p in tmp_path.glob("ministry.gpkg-*")))
    result = job.run()
    assert result["loaded"]["copied"] == FACILITIES
    assert seen == set() and not list(tmp_path.glob("ministry.gpkg-*"))
