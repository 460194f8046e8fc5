"""A GIS officer checks a version before publishing it — on every backend.

The Sierra Leone demo is one clean tree, with the real flaws DHIS2's demo data has
(facility points outside their chiefdom, one chiefdom polygon with nested shells).
Then we break it the ways registries really get broken, through the API where the
API allows it and with raw SQL (as QGIS or a script would) where it does not, and
see each problem reported on the right unit, in words that name it.
"""

from __future__ import annotations

import json
import sqlite3
import unicodedata
from typing import Any

import pytest
import shapely
from shapely import MultiPolygon, Point, Polygon
from sqlalchemy import text

from storage import geometry, units, versions
from storage.backends import Backend, load_spatialite
from storage.checks import CHECKS, normalize_name, run_checks
from storage.errors import InvalidInput
from storage.registry import Registry

KAKUA = "U6Kr7Gtpidn"  # Kakua chiefdom, in Bo district
BO_GOVT_HOSPITAL = "rZxk3S0qN63"  # a facility of Kakua whose point lies inside Kakua
BUCKSAL_CLINIC = "vRC0stJ5y9Q"  # another facility of Kakua, inside it
BADJIA = "YuQRtpLP10I"  # a chiefdom with two facilities
ALLEN_TOWN = "kbGqmM6ZWWV"  # Allen Town Health Post: DHIS2 puts it ~6 km outside Freetown
SITTIA = "g8DdBm7EmUt"  # chiefdom whose DHIS2 polygon has nested shells
FINDING_KEYS = {"check", "severity", "unit_uuid", "source_ref", "name", "message", "details"}


# --- helpers ----------------------------------------------------------------------


def found(result: dict[str, Any], check: str) -> dict[str, dict[str, Any]]:
    """The findings of one check, by the unit's source ref."""
    return {f["source_ref"]: f for f in result["findings"] if f["check"] == check}


def version_id(reg: Registry, source: str = "SL") -> int:
    with reg.read() as conn:
        return versions.resolve_version(conn, source).id


def unit_row(reg: Registry, ref: str) -> Any:
    with reg.read() as conn:
        return conn.execute(
            text(
                "SELECT fid, unit_key, uuid, name, path, depth, parent_key FROM org_unit "
                "WHERE version_id = :v AND source_ref = :r"
            ),
            {"v": version_id(reg), "r": ref},
        ).one()


def raw_sql(
    reg: Registry, statements: list[tuple[str, dict[str, Any]]], *, bypass: bool = False
) -> None:
    """Write behind Georeg's back, as another program would.

    ``bypass`` switches off foreign keys (SQLite) or foreign keys and triggers
    (PostgreSQL, ``session_replication_role = replica``); on SQLite it also raises the
    flag of a move's own subtree rewrite, the one writer the ``path``/``depth`` guard
    lets through (migration 0009): a script that edits paths has to get past it.
    """
    if reg.backend is Backend.POSTGIS:
        with reg.engine.begin() as conn:
            if bypass:
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            for sql, params in statements:
                conn.execute(text(sql), params)
        return
    assert reg.location.path is not None
    db = sqlite3.connect(reg.location.path, isolation_level=None)
    try:
        load_spatialite(db)
        db.execute("PRAGMA foreign_keys = " + ("OFF" if bypass else "ON"))
        db.execute("BEGIN IMMEDIATE")
        if bypass:
            db.execute("INSERT INTO subtree_rewrite (fid) VALUES (1)")
        for sql, params in statements:
            db.execute(sql, params)
        if bypass:
            db.execute("DELETE FROM subtree_rewrite")
        db.execute("COMMIT")
    finally:
        db.close()


def fold(name: str) -> str:
    """The test's own idea of "the same name": ASCII letters, lower case, one space."""
    ascii_only = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return " ".join(ascii_only.lower().split())


# --- the demo as imported ----------------------------------------------------------


def test_demo_is_one_clean_tree(demo: Registry) -> None:
    result = run_checks(demo, "SL")

    json.dumps(result)  # plain data, ready for the CLI and the server
    assert result["version"]["label"] == "SL v1"
    assert list(result["summary"]) == list(CHECKS)
    for check in (
        "cycle",
        "orphan",
        "stale_path",
        "several_roots",
        "level_type_mismatch",
        "opening_after_closing",
        "null_island",
        "empty_geometry",
    ):
        assert result["summary"][check] == 0, check
    assert sum(result["summary"].values()) == len(result["findings"])
    for f in result["findings"]:
        assert set(f) == FINDING_KEYS
        assert f["severity"] == CHECKS[f["check"]]
        assert f["name"] in f["message"]
    # errors come first
    severities = [f["severity"] for f in result["findings"]]
    assert severities == sorted(severities, key=lambda s: s != "error")

    # The one real error of the demo: Sittia's polygon has a shell inside another shell.
    invalid = found(result, "invalid_geometry")
    assert set(invalid) == {SITTIA}
    assert "Nested shells" in invalid[SITTIA]["message"]
    assert "Sittia" in invalid[SITTIA]["message"]
    assert result["ok"] is False
    assert result["counts"] == {"error": 1, "warning": len(result["findings"]) - 1}


def test_demo_reports_its_real_duplicates_and_stray_points(demo: Registry) -> None:
    result = run_checks(demo, "SL", checks=["duplicate_name", "point_outside_parent"])
    assert list(result["summary"]) == ["duplicate_name", "point_outside_parent"]
    b = demo.backend
    with demo.read() as conn:
        rows = conn.execute(
            text("SELECT u.uuid, u.parent_key, u.name FROM org_unit u WHERE u.version_id = :v"),
            {"v": version_id(demo)},
        ).all()
        placed = conn.execute(
            text(
                f"SELECT u.uuid, {geometry.select_sql(b, 'u.location')}, "
                f"{geometry.select_sql(b, 't.territory')} FROM org_unit u "
                "JOIN org_unit p ON p.version_id = u.version_id AND p.unit_key = u.parent_key "
                "JOIN org_unit_territory t ON t.unit_fid = p.fid "
                "WHERE u.version_id = :v AND u.location IS NOT NULL"
            ),
            {"v": version_id(demo)},
        ).all()

    # Duplicates, counted the plain way: siblings sharing a folded name.
    seen: dict[tuple[Any, str], list[str]] = {}
    for uuid, parent_key, name in rows:
        seen.setdefault((parent_key, fold(name)), []).append(uuid)
    expected_dups = {u for same in seen.values() if len(same) > 1 for u in same}
    assert {f["unit_uuid"] for f in result["findings"] if f["check"] == "duplicate_name"} == (
        expected_dups
    )

    # Stray points: every facility's parent chiefdom has a territory in the demo.
    assert len(placed) == 601
    expected_out: dict[str, float] = {}
    for uuid, loc, ter in placed:
        point, territory = geometry.decode(b, loc), geometry.decode(b, ter)
        if not territory.is_valid:
            territory = shapely.make_valid(territory)
        d = territory.distance(point)
        if d > 1e-9:
            expected_out[uuid] = d
    stray = {f["unit_uuid"]: f for f in result["findings"] if f["check"] == "point_outside_parent"}
    assert set(stray) == set(expected_out)
    assert 50 < len(stray) < 601  # the DHIS2 demo really has many
    for uuid, f in stray.items():
        # degrees × 111 km is within a few percent of the geodesic distance near the equator
        approx = expected_out[uuid] * 111_320
        assert abs(f["details"]["distance_m"] - approx) <= 0.03 * approx + 5
        assert f["details"]["ancestor_is_parent"] is True
        assert f["details"]["ancestor_type"] == "Chiefdom"
    allen = found(result, "point_outside_parent")[ALLEN_TOWN]
    assert allen["details"]["ancestor_name"] == "Freetown"
    assert 5_000 < allen["details"]["distance_m"] < 7_000
    assert "Allen Town Health Post" in allen["message"] and "Freetown" in allen["message"]
    assert "6.1 km" in allen["message"]


# --- breaking it ----------------------------------------------------------------------


def test_facility_moved_far_outside_its_chiefdom(demo: Registry) -> None:
    before = run_checks(demo, "SL", checks="point_outside_parent")
    assert BO_GOVT_HOSPITAL not in found(before, "point_outside_parent")

    # A typo swaps it to the far north of the country, ~150 km from Kakua.
    units.set_geometry(demo, "SL", BO_GOVT_HOSPITAL, location=Point(-11.75, 9.3))
    after = run_checks(demo, "SL")
    stray = found(after, "point_outside_parent")
    assert set(stray) - set(found(before, "point_outside_parent")) == {BO_GOVT_HOSPITAL}
    f = stray[BO_GOVT_HOSPITAL]
    assert f["severity"] == "warning" and f["name"] == "Bo Govt. Hosp."
    assert f["details"]["ancestor_source_ref"] == KAKUA
    assert f["details"]["ancestor_name"] == "Kakua"
    assert f["details"]["location"] == [-11.75, 9.3]
    assert 100_000 < f["details"]["distance_m"] < 250_000
    assert "Bo Govt. Hosp." in f["message"] and "Kakua" in f["message"]
    assert "km outside" in f["message"]


def test_point_checked_against_nearest_ancestor_with_a_territory(demo: Registry) -> None:
    """A new village under a facility (no polygon) is checked against the chiefdom."""
    units.add_unit(
        demo,
        "SL",
        name="Kakua village post",
        source_ref="village1",
        parent=BO_GOVT_HOSPITAL,
        location=Point(-12.9, 8.3),
    )
    units.add_unit(
        demo,
        "SL",
        name="Kakua inner post",
        source_ref="village2",
        parent=BO_GOVT_HOSPITAL,
        location=unit_point(demo, BO_GOVT_HOSPITAL),
    )
    stray = found(run_checks(demo, "SL", checks=["point_outside_parent"]), "point_outside_parent")
    assert "village2" not in stray
    f = stray["village1"]
    assert f["details"]["ancestor_name"] == "Kakua"
    assert f["details"]["ancestor_is_parent"] is False
    assert "nearest ancestor with a territory" in f["message"]


def unit_point(reg: Registry, ref: str) -> Point:
    return Point(units.get_unit(reg, "SL", ref)["location"])


def test_two_siblings_with_the_same_name(demo: Registry) -> None:
    a = units.add_unit(
        demo, "SL", name="Kakua CHP", parent=KAKUA, type="Facility", source_ref="new-a"
    )
    b = units.add_unit(
        demo, "SL", name="kakua  chp", parent=KAKUA, type="Facility", source_ref="new-b"
    )
    # same name in another chiefdom is fine; an accented spelling under Kakua is not
    units.add_unit(
        demo, "SL", name="Kakua CHP", parent=BADJIA, type="Facility", source_ref="elsewhere"
    )
    c = units.add_unit(
        demo, "SL", name="Kákua CHP ", parent=KAKUA, type="Facility", source_ref="new-c"
    )
    dups = found(run_checks(demo, "SL"), "duplicate_name")
    assert {"new-a", "new-b", "new-c"} <= set(dups)
    assert "elsewhere" not in dups
    f = dups["new-a"]
    assert f["unit_uuid"] == a["uuid"] and f["severity"] == "warning"
    assert {o["uuid"] for o in f["details"]["others"]} == {b["uuid"], c["uuid"]}
    assert f["details"]["parent_name"] == "Kakua"
    assert "'kakua  chp'" in f["message"] and "Kakua" in f["message"]
    assert normalize_name("  Kákua\tCHP ") == normalize_name("kakua chp") == "kakua chp"


def test_closed_before_it_opened(demo: Registry) -> None:
    with pytest.raises(InvalidInput):
        units.edit_unit(
            demo, "SL", BUCKSAL_CLINIC, opening_date="2020-01-01", closed_date="2019-01-01"
        )
    raw_sql(
        demo,
        [
            (
                "UPDATE org_unit SET opening_date = '2020-01-01', closed_date = '2019-01-01' "
                "WHERE version_id = :v AND source_ref = :r",
                {"v": version_id(demo), "r": BUCKSAL_CLINIC},
            )
        ],
    )
    result = run_checks(demo, "SL")
    dates = found(result, "opening_after_closing")
    assert set(dates) == {BUCKSAL_CLINIC}
    f = dates[BUCKSAL_CLINIC]
    assert f["severity"] == "error"
    assert f["details"] == {"opening_date": "2020-01-01", "closed_date": "2019-01-01"}
    assert "2019-01-01" in f["message"] and "2020-01-01" in f["message"]
    assert "Bucksal Clinic" in f["message"]
    assert result["ok"] is False


def test_bow_tie_territory(demo: Registry) -> None:
    bow_tie = Polygon([(-11.9, 7.9), (-11.7, 8.1), (-11.7, 7.9), (-11.9, 8.1)])
    assert not bow_tie.is_valid
    # stored as QGIS, or an import keeping a mirror's invalid polygons, can store it: the edit API
    # refuses an invalid polygon (without --fix-geometry), as the import does
    with demo.write() as conn:
        version = versions.resolve_version(conn, "SL")
        units.set_territory(demo, conn, units.find_unit(conn, version, BADJIA).fid, bow_tie)
    result = run_checks(demo, "SL")
    invalid = found(result, "invalid_geometry")
    assert set(invalid) == {SITTIA, BADJIA}
    f = invalid[BADJIA]
    assert f["severity"] == "error" and f["details"]["geometry"] == "territory"
    assert "Self-intersection" in f["message"] and "Badjia" in f["message"]
    assert "Self-intersection" in f["details"]["reason"]


def test_point_at_null_island(demo: Registry) -> None:
    units.set_geometry(demo, "SL", BUCKSAL_CLINIC, location=Point(0, 0))
    result = run_checks(demo, "SL")
    island = found(result, "null_island")
    assert set(island) == {BUCKSAL_CLINIC}
    assert island[BUCKSAL_CLINIC]["severity"] == "warning"
    assert "0°, 0°" in island[BUCKSAL_CLINIC]["message"]
    # and of course it is far out of Kakua too
    assert found(result, "point_outside_parent")[BUCKSAL_CLINIC]["details"]["distance_m"] > 1e6


def test_orphan_written_behind_georegs_back(demo: Registry) -> None:
    raw_sql(
        demo,
        [
            (
                "UPDATE org_unit SET parent_key = 987654321 WHERE version_id = :v AND source_ref = :r",
                {"v": version_id(demo), "r": BUCKSAL_CLINIC},
            )
        ],
        bypass=True,
    )
    result = run_checks(demo, "SL")
    orphans = found(result, "orphan")
    assert set(orphans) == {BUCKSAL_CLINIC}
    f = orphans[BUCKSAL_CLINIC]
    assert f["severity"] == "error" and f["details"]["parent_key"] == 987654321
    assert "Bucksal Clinic" in f["message"] and "987654321" in f["message"]
    assert result["summary"]["cycle"] == 0  # an orphan is not a cycle
    assert result["ok"] is False


def test_cycle_written_behind_georegs_back(demo: Registry) -> None:
    """Badjia chiefdom made a child of its own facility: both loop, the other hangs below."""
    chiefdom = unit_row(demo, BADJIA)
    with demo.read() as conn:
        kids = conn.execute(
            text(
                "SELECT source_ref, unit_key FROM org_unit WHERE version_id = :v "
                "AND parent_key = :k ORDER BY source_ref"
            ),
            {"v": version_id(demo), "k": chiefdom.unit_key},
        ).all()
    assert len(kids) == 2
    (loop_ref, loop_key), (below_ref, _) = kids
    v = version_id(demo)
    # The SQLite trigger refuses the move while the facility's path shows it under the
    # chiefdom; a careless script that rewrote the path first gets past it.
    raw_sql(
        demo,
        [
            (
                "UPDATE org_unit SET path = '/999999999/' WHERE version_id = :v AND source_ref = :r",
                {"v": v, "r": loop_ref},
            ),
            (
                "UPDATE org_unit SET parent_key = :k WHERE version_id = :v AND source_ref = :r",
                {"v": v, "k": loop_key, "r": BADJIA},
            ),
        ],
        bypass=True,
    )
    result = run_checks(demo, "SL")
    cycles = found(result, "cycle")
    assert set(cycles) == {BADJIA, loop_ref, below_ref}
    assert cycles[BADJIA]["details"]["in_cycle"] is True
    assert cycles[loop_ref]["details"]["in_cycle"] is True
    assert cycles[below_ref]["details"]["in_cycle"] is False
    assert {u["source_ref"] for u in cycles[below_ref]["details"]["cycle"]} == {BADJIA, loop_ref}
    assert "Badjia" in cycles[BADJIA]["message"] and "circle" in cycles[BADJIA]["message"]
    assert all(f["severity"] == "error" for f in cycles.values())
    assert result["summary"]["orphan"] == 0
    assert result["ok"] is False


def test_stale_path_written_behind_georegs_back(demo: Registry) -> None:
    facility = unit_row(demo, BUCKSAL_CLINIC)
    raw_sql(
        demo,
        [
            (
                "UPDATE org_unit SET path = :p, depth = 2 WHERE fid = :f",
                {"p": f"/1/{facility.unit_key}/", "f": facility.fid},
            )
        ],
        bypass=True,  # the guard of path and depth (migration 0009) refuses it otherwise
    )
    stale = found(run_checks(demo, "SL"), "stale_path")
    assert set(stale) == {BUCKSAL_CLINIC}
    d = stale[BUCKSAL_CLINIC]["details"]
    assert d["expected_path"] == facility.path and d["expected_depth"] == 4
    assert d["path"] == f"/1/{facility.unit_key}/" and d["depth"] == 2
    assert "Kakua" in stale[BUCKSAL_CLINIC]["message"]


def test_second_root(demo: Registry) -> None:
    units.add_unit(demo, "SL", name="Atlantis", source_ref="atlantis")
    roots = found(run_checks(demo, "SL"), "several_roots")
    assert set(roots) == {"atlantis", "ImspTQPwCqd"}
    assert all(f["severity"] == "warning" for f in roots.values())
    assert roots["atlantis"]["details"]["roots"] == 2
    assert "Sierra Leone" in roots["atlantis"]["message"]


def test_type_that_does_not_fit_the_level(demo: Registry) -> None:
    units.edit_unit(demo, "SL", BUCKSAL_CLINIC, type="District")
    result = run_checks(demo, "SL")
    wrong = found(result, "level_type_mismatch")
    assert set(wrong) == {BUCKSAL_CLINIC}
    f = wrong[BUCKSAL_CLINIC]
    assert f["details"]["type_depth"] == 2 and f["details"]["depth"] == 4
    assert "District" in f["message"] and "Kakua" in f["message"]


# --- small registries -------------------------------------------------------------------


def small_tree(reg: Registry) -> None:
    versions.create_version(reg, "T", create_source_if_missing=True)
    units.add_unit(
        reg,
        "T",
        name="Land",
        source_ref="land",
        territory=Polygon([(0, 0), (0, 2), (2, 2), (2, 0)]),
    )
    units.add_unit(reg, "T", name="Town", source_ref="town", parent="land", location=Point(1, 1))


def test_empty_geometries(registry: Registry) -> None:
    small_tree(registry)
    b = registry.backend
    g = geometry.bind_sql(b, "g")
    raw_sql(
        registry,
        [
            (
                f"UPDATE org_unit SET location = {g} WHERE source_ref = 'town'",
                {"g": geometry.encode(b, Point())},
            ),
            (
                f"UPDATE org_unit_territory SET territory = {g}",
                {"g": geometry.encode(b, MultiPolygon())},
            ),
        ],
    )
    result = run_checks(registry, "T")
    empty = found(result, "empty_geometry")
    assert set(empty) == {"town", "land"}
    assert empty["town"]["details"]["geometry"] == "location"
    assert empty["land"]["details"]["geometry"] == "territory"
    assert result["summary"]["invalid_geometry"] == 0
    assert result["summary"]["null_island"] == 0
    assert result["ok"] is True


def test_choosing_checks_and_a_clean_small_tree(registry: Registry) -> None:
    small_tree(registry)
    result = run_checks(registry, "T")
    assert result["ok"] is True and result["findings"] == []
    assert result["summary"] == dict.fromkeys(CHECKS, 0)
    units.set_geometry(registry, "T", "town", location=Point(5, 5))
    only = run_checks(registry, "T", checks=["null_island", "point_outside_parent"])
    assert only["summary"] == {"point_outside_parent": 1, "null_island": 0}
    assert only["findings"][0]["details"]["distance_m"] == pytest.approx(
        3 * 2**0.5 * 111_320, rel=0.02
    )
    with pytest.raises(InvalidInput, match="no_such_check"):
        run_checks(registry, "T", checks=["no_such_check"])
