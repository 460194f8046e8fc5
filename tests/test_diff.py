"""Version diff: a ministry list edited between two versions, every status and field kind.

The scenario: version 1 of "Ministry" is a country, two regions with territories and
six facilities; version 2 is a draft copy where a GIS officer renames one facility,
re-files one under the other region, closes one, deletes one, moves one 500 m and
changes its type, dates, aliases, extra fields and groups, reshapes a region and
adds a new facility.  The diff must say exactly that, on every backend, and its
exports must be what Iaso and QGIS users expect.
"""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from shapely.geometry import MultiPolygon, Point, Polygon, box

from storage import units as U
from storage.bulk import BulkLoader, UnitRecord
from storage.diff import (
    FIELDS,
    DiffJob,
    comparable,
    compare_units,
    diff_versions,
    expand_fields,
    parse_version_spec,
    values_equal,
)
from storage.errors import Cancelled, InvalidInput, NotFound
from storage.registry import Registry
from storage.versions import create_version, ensure_source, insert_version
from sync.diff_export import export_diff, iaso_csv_text
from tests.conftest import location_for
from tests.qgis_helpers import qgis_layers

DATA = Path(__file__).parent / "data" / "diff"
SRC = "Ministry"


def _load(reg: Registry, source: str, records: list[UnitRecord],
          groups: list[tuple[str, str]] = ()) -> int:  # type: ignore[assignment]
    with reg.write(origin="test") as conn:
        sid = ensure_source(conn, source)
        vid = insert_version(conn, sid)
        loader = BulkLoader(reg, conn, vid)
        for depth, name in enumerate(("Country", "Region", "Region", "Facility", "Hospital"), 1):
            loader.add_type(name, depth=min(depth, 3) if name != "Hospital" else 3)
        for ref, name in groups:
            loader.add_group(ref, name)
        loader.add_units(records)
        loader.finish()
    return vid


def build_scenario(reg: Registry) -> None:
    """Version 1 (bulk-loaded) and version 2 (a copy, edited unit by unit)."""
    r1, r2 = box(0, 0, 1, 1), box(1, 0, 2, 1)
    recs = [
        UnitRecord("Country", "C", None, "Country", territory=box(0, 0, 2, 1)),
        UnitRecord("North", "R1", "C", "Region", territory=r1),
        UnitRecord("South", "R2", "C", "Region", territory=r2),
        UnitRecord("Alpha CHP", "F1", "R1", "Facility", code="A1", location=Point(0.2, 0.2),
                   groups=["pub"]),
        UnitRecord("Bravo CHP", "F2", "R1", "Facility", location=Point(0.4, 0.4)),
        UnitRecord("Charlie CHP", "F3", "R1", "Facility", location=Point(0.6, 0.6)),
        UnitRecord("Delta CHP", "F4", "R2", "Facility", location=Point(1.2, 0.2)),
        UnitRecord("Echo CHP", "F5", "R2", "Facility", location=Point(1.4, 0.4),
                   opening_date="2001-01-01", aliases=["Echo"], extra_fields={"beds": 4},
                   groups=["pub"]),
        UnitRecord("Foxtrot CHP", "F6", "R2", "Facility", location=Point(1.6, 0.6)),
    ]
    _load(reg, SRC, recs, [("pub", "Public"), ("priv", "Private")])
    create_version(reg, SRC, copy_from=1)
    kw = {"number": 2, "origin": "test"}
    U.edit_unit(reg, SRC, "F1", name="Alpha MCHP", code="A1-bis", **kw)
    U.move_unit(reg, SRC, "F2", "R2", **kw)
    U.close_unit(reg, SRC, "F3", "2024-06-30", **kw)
    U.delete_unit(reg, SRC, "F4", **kw)
    U.edit_unit(reg, SRC, "F5", type="Hospital", opening_date="2002-02-02",
                aliases=["Echo", "E. Hospital"], extra_fields={"beds": 40}, **kw)
    # 0.0045° of latitude ≈ 500 m
    U.set_geometry(reg, SRC, "F5", location=Point(1.4, 0.4045), **kw)
    U.set_group_membership(reg, SRC, "F5", "pub", False, **kw)
    U.set_group_membership(reg, SRC, "F5", "priv", True, **kw)
    U.set_geometry(reg, SRC, "R2", territory=box(1, 0, 2.01, 1), **kw)
    U.add_unit(reg, SRC, name="Golf CHP", parent="R1", source_ref="F7", type="Facility",
               location=Point(0.8, 0.8), **kw)


@pytest.fixture(scope="module", params=["gpkg", "spatialite",
                                        pytest.param("postgis", marks=pytest.mark.postgis)])
def scenario(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Registry]:
    tmp = tmp_path_factory.mktemp(f"diff-{request.param}")
    reg = Registry.create(location_for(request.param, tmp, request))
    build_scenario(reg)
    yield reg
    if reg.location.url is not None:
        with reg.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{reg.location.schema}" CASCADE')
    reg.close()


def _by_ref(diff: object) -> dict[str, object]:
    return {u.source_ref: u for u in diff.units}  # type: ignore[attr-defined]


# --- statuses and fields ----------------------------------------------------------------


def test_every_status_and_field_kind(scenario: Registry) -> None:
    diff = diff_versions(scenario, f"{SRC}:1", f"{SRC}:2")
    assert diff.totals == {"new": 1, "modified": 3, "moved": 1, "closed": 1, "deleted": 1,
                           "unchanged": 3}
    units = _by_ref(diff)
    status = {ref: u.status for ref, u in units.items()}
    assert status == {"F1": "modified", "F2": "moved", "F3": "closed", "F4": "deleted",
                      "F5": "modified", "R2": "modified", "F7": "new"}
    f1 = units["F1"]
    assert [(c.field, c.before, c.after) for c in f1.changes] == [
        ("name", "Alpha CHP", "Alpha MCHP"), ("code", "A1", "A1-bis")]
    f2 = units["F2"]
    assert f2.changed_fields == ["parent"]
    assert f2.changes[0].before["ref"] == "R1" and f2.changes[0].after["ref"] == "R2"
    assert units["F3"].changes[0].field == "closed_date"
    assert units["F3"].changes[0].after == "2024-06-30"
    f5 = units["F5"]
    assert f5.changed_fields == ["type", "opening_date", "groups", "aliases", "extra_fields",
                                 "location"]
    change = {c.field: (c.before, c.after) for c in f5.changes}
    assert change["type"] == ("Facility", "Hospital")
    assert change["opening_date"] == ("2001-01-01", "2002-02-02")
    assert change["groups"] == (["Public"], ["Private"])
    assert change["aliases"] == (["Echo"], ["Echo", "E. Hospital"])
    assert change["extra_fields"] == ({"beds": 4}, {"beds": 40})
    assert change["location"] == ([1.4, 0.4], [1.4, 0.4045])
    assert f5.distance_m == pytest.approx(497.6, abs=1.0)  # geodesic, near the equator
    r2 = units["R2"]
    assert r2.changed_fields == ["territory"]
    # 0.01° of longitude x 1° of latitude at the equator ≈ 1.113 km x 110.6 km
    assert r2.area_change_m2 == pytest.approx(1.113e3 * 110.6e3, rel=0.01)
    assert r2.hausdorff_m == pytest.approx(1113, rel=0.01)
    assert units["F7"].before is None and units["F7"].after["parent_ref"] == "R1"
    assert units["F4"].after is None and units["F4"].before["name"] == "Delta CHP"
    assert all(u.matched_by == "uuid" for u in diff.units if u.before and u.after)


def test_totals_per_level_and_type(scenario: Registry) -> None:
    diff = diff_versions(scenario, f"{SRC}:1", f"{SRC}:2")
    rows = {(r["depth"], r["type"]): r for r in diff.by_level}
    assert rows[(1, "Country")]["unchanged"] == 1
    assert rows[(2, "Region")]["modified"] == 1 and rows[(2, "Region")]["unchanged"] == 1
    fac = rows[(3, "Facility")]
    assert (fac["new"], fac["modified"], fac["moved"], fac["closed"], fac["deleted"],
            fac["unchanged"]) == (1, 1, 1, 1, 1, 1)
    assert rows[(3, "Hospital")]["modified"] == 1
    assert sum(r["total"] for r in diff.by_level) == 10


def test_a_version_with_itself_is_all_unchanged(scenario: Registry) -> None:
    diff = diff_versions(scenario, f"{SRC}:2", f"{SRC}:2", include_unchanged=True)
    assert diff.totals["unchanged"] == 9 and sum(diff.totals.values()) == 9
    assert {u.status for u in diff.units} == {"unchanged"}


def test_database_prefilter_agrees_with_a_full_comparison(scenario: Registry) -> None:
    """Unchanged pairs are left in the database; reading everything gives the same diff."""
    quick = diff_versions(scenario, f"{SRC}:1", f"{SRC}:2")
    full = diff_versions(scenario, f"{SRC}:1", f"{SRC}:2", include_unchanged=True)
    assert quick.totals == full.totals and quick.by_level == full.by_level
    assert [u.to_dict() for u in quick.units] == [
        u.to_dict() for u in full.units if u.status != "unchanged"]


def test_a_version_mostly_new_is_read_whole(tmp_path: Path) -> None:
    with Registry.create(tmp_path / "grow.gpkg") as reg:
        _load(reg, "G", [UnitRecord("Land", "L", None, "Country"),
                         UnitRecord("One", "g1", "L", "Facility")])
        create_version(reg, "G", copy_from=1)
        for i in range(5):
            U.add_unit(reg, "G", name=f"New {i}", parent="L", source_ref=f"n{i}", number=2)
        diff = diff_versions(reg, "G:1", "G:2")
    assert diff.totals == {"new": 5, "modified": 0, "moved": 0, "closed": 0, "deleted": 0,
                           "unchanged": 2}


def test_reverse_diff_swaps_new_and_deleted(scenario: Registry) -> None:
    diff = diff_versions(scenario, f"{SRC}:2", f"{SRC}:1")
    status = {u.source_ref: u.status for u in diff.units}
    assert status["F7"] == "deleted" and status["F4"] == "new"
    assert status["F3"] == "modified"  # re-opened: a closed date removed is a modification


def test_fields_option_limits_the_comparison(scenario: Registry) -> None:
    diff = diff_versions(scenario, f"{SRC}:1", f"{SRC}:2", fields=["name,geometry"])
    assert diff.fields == ("name", "location", "territory")
    status = {u.source_ref: u.status for u in diff.units}
    assert status == {"F1": "modified", "F5": "modified", "R2": "modified", "F4": "deleted",
                      "F7": "new"}


def test_two_sources_pair_by_source_ref(tmp_path: Path) -> None:
    """Independent lists share refs, not uuids: the diff falls back to source_ref."""
    with Registry.create(tmp_path / "two.gpkg") as reg:
        _load(reg, "A", [UnitRecord("Land", "L", None, "Country"),
                         UnitRecord("One", "x1", "L", "Facility", location=Point(1, 1)),
                         UnitRecord("Two", "x2", "L", "Facility")])
        _load(reg, "B", [UnitRecord("Land", "L", None, "Country"),
                         UnitRecord("One", "x1", "L", "Facility", location=Point(1.001, 1)),
                         UnitRecord("Three", "x3", "L", "Facility")])
        diff = diff_versions(reg, "A", "B")
    assert diff.counts["paired_by_source_ref"] == 2 and diff.counts["paired_by_uuid"] == 0
    assert {u.source_ref: u.status for u in diff.units} == {"x1": "modified", "x2": "deleted",
                                                          "x3": "new"}
    assert _by_ref(diff)["x1"].distance_m == pytest.approx(111.3, abs=0.5)


def test_field_comparison_is_public_and_normalises() -> None:
    assert values_equal("name", "", None) and values_equal("code", " A ", "A")
    assert values_equal("aliases", "[]", None) and values_equal("extra_fields", '{"a": 1}', {"a": 1})
    assert values_equal("opening_date", "2020-01-01T00:00:00.000", "2020-01-01")
    assert values_equal("location", Point(1, 2), Point(1.0000001, 2))
    assert not values_equal("location", Point(1, 2), Point(1.00001, 2))
    poly = Polygon([(0, 0), (1, 0), (1, 1), (0, 0)])
    assert values_equal("territory", MultiPolygon([poly]), MultiPolygon([poly.reverse()]))
    changes = compare_units({"name": "A", "groups": ["g2", "g1"]},
                            {"name": "B", "groups": ["g1", "g2"]})
    assert [c.field for c in changes] == ["name"]
    assert set(FIELDS) >= {"name", "code", "parent", "type", "groups", "location", "territory"}


def test_comparable_snapshots_give_the_diff_s_changes(gpkg_scenario: Registry) -> None:
    """What the merge uses: the diff's snapshots through compare_units, same answer."""
    diff = diff_versions(gpkg_scenario, f"{SRC}:1", f"{SRC}:2")
    for u in diff.units:
        if u.before is None or u.after is None:
            continue
        again = compare_units(comparable(u.before, u.location_before, u.territory_before),
                              comparable(u.after, u.location_after, u.territory_after))
        assert [c.field for c in again] == u.changed_fields


def test_diff_job_reports_progress_and_can_be_cancelled(gpkg_scenario: Registry) -> None:
    job = DiffJob(gpkg_scenario, f"{SRC}:1", f"{SRC}:2")
    seen: list[tuple[int, int | None]] = []
    job.on_progress(lambda p: seen.append((p.done, p.total)))
    assert job.run().totals["deleted"] == 1
    assert seen[0] == (0, 6) and seen[-1] == (6, 6)
    cancelled = DiffJob(gpkg_scenario, f"{SRC}:1", f"{SRC}:2")
    cancelled.cancel()
    with pytest.raises(Cancelled):
        cancelled.run()


# --- bad input ----------------------------------------------------------------------------


def test_bad_input_gives_clear_errors(scenario: Registry) -> None:
    with pytest.raises(NotFound, match="'Ministry' has no version 9"):
        diff_versions(scenario, f"{SRC}:1", f"{SRC}:9")
    with pytest.raises(NotFound, match="No data source named 'Nope'"):
        diff_versions(scenario, "Nope:1", f"{SRC}:1")
    with pytest.raises(InvalidInput, match="Unknown diff field 'colour'"):
        diff_versions(scenario, f"{SRC}:1", f"{SRC}:2", fields=["colour"])
    with pytest.raises(InvalidInput, match="nothing after ':'"):
        parse_version_spec("Ministry:")
    with pytest.raises(InvalidInput, match="Empty version"):
        parse_version_spec(" ")


def test_version_specs() -> None:
    assert parse_version_spec("SL:2") == ("SL", 2)
    assert parse_version_spec("SL") == ("SL", None)
    assert parse_version_spec("3:1") == ("3", 1)
    assert parse_version_spec("A: B") == ("A: B", None)
    assert expand_fields(["dates"]) == ("opening_date", "closed_date")


# --- exports ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpkg_scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry.create(tmp_path_factory.mktemp("diff-export") / "reg.gpkg")
    build_scenario(reg)
    yield reg
    reg.close()


def test_json_and_csv_exports(gpkg_scenario: Registry, tmp_path: Path) -> None:
    diff = diff_versions(gpkg_scenario, f"{SRC}:1", f"{SRC}:2")
    export_diff(diff, tmp_path / "d.json")
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["schema"] == "georeg.diff/v1" and data["totals"]["new"] == 1
    assert data["left"]["label"] == "Ministry v1" and len(data["units"]) == 7
    export_diff(diff, tmp_path / "d.csv")
    rows = list(csv.DictReader(open(tmp_path / "d.csv", newline="", encoding="utf-8")))
    f5 = next(r for r in rows if r["source_ref"] == "F5")
    assert f5["status"] == "modified" and f5["type before"] == "Facility"
    assert f5["groups before"] == "pub" and f5["groups after"] == "priv"
    assert float(f5["distance_m"]) == pytest.approx(497.6, abs=1.0)


def test_iaso_csv_layout_for_the_scenario(gpkg_scenario: Registry) -> None:
    diff = diff_versions(gpkg_scenario, f"{SRC}:1", f"{SRC}:2")
    rows = list(csv.reader(iaso_csv_text(diff).splitlines()))
    fixture_header = next(csv.reader(open(DATA / "diff_happy_path.csv", newline="")))
    header = rows[0]
    # Iaso's layout: 4 leading columns, 3 per field (alphabetical), distance after
    # geometry, then 5 parent-name pairs: the fixture's header with our two groups.
    assert header[:4] == fixture_header[:4]
    assert header[-10:] == fixture_header[-10:]
    assert header[4:-10] == [
        "closed_date", "closed_date before", "closed_date after",
        "code", "code before", "code after",
        "geometry", "geometry before", "geometry after", "distance diff (KM)",
        "Private", "Private before", "Private after",
        "Public", "Public before", "Public after",
        "name", "name before", "name after",
        "opening_date", "opening_date before", "opening_date after",
        "parent", "parent before", "parent after"]
    by_ref = {r[0]: dict(zip(header, r, strict=True)) for r in rows[1:]}
    # type, aliases and extra fields are not Iaso fields: R2's territory change is, F5's
    # point, dates and groups are.
    assert set(by_ref) == {"F1", "F2", "F3", "F4", "F5", "R2", "F7"}
    f5 = by_ref["F5"]
    assert f5["diff status"] == "modified"
    assert f5["modified fields"] == "geometry, group:priv:Private, group:pub:Public, opening_date"
    assert f5["Public"] == "not in origin - ignored" and f5["Private"] == "new"
    assert f5["geometry before"] == "SRID=4326;POINT (1.4 0.4)"
    assert f5["distance diff (KM)"] == "0.498"
    assert f5["parent 1 name before"] == "South" and f5["parent 2 name before"] == "Country"
    assert by_ref["F4"]["diff status"] == "not in origin - ignored"
    assert by_ref["F7"]["diff status"] == "new" and by_ref["F7"]["name before"] == "None"
    assert by_ref["F3"]["closed_date"] == "new"
    assert by_ref["F2"]["parent before"] == "R1" and by_ref["F2"]["parent after"] == "R2"
    assert by_ref["R2"]["geometry before"] == "SRID=4326;MULTIPOLYGON (((2 0, 2 1, 1 1,"


def _iaso_pyramids(reg: Registry, *, fixture: str) -> dict[str, int]:
    """Iaso's test pyramids (iaso/tests/diffing/utils.py): Angola, two versions."""
    tri = MultiPolygon([Polygon([(0, 0), (0, 1), (1, 1), (0, 0)])])
    dates = {"opening_date": "2022-11-28", "closed_date": "2025-11-28"}

    def pyramid(code: str, groups: list[str], with_children: bool) -> list[UnitRecord]:
        recs = [UnitRecord("Angola", "id-1", None, "Country", code=code, territory=tri,
                           groups=groups, **dates)]
        if with_children:
            recs += [UnitRecord("Huila", "id-2", "id-1", "Region", territory=tri, **dates),
                     UnitRecord("Cuvango", "id-3", "id-2", "Facility", territory=tri, **dates)]
        return recs

    if fixture == "happy":
        v1 = _load(reg, "Data source", pyramid("angola-to-update", ["group-a", "group-b"], True),
                   [("group-a", "Group A"), ("group-b", "Group B")])
        v2 = _load_into(reg, "Data source",
                        pyramid("angola-to-compare-with", ["group-a", "group-c"], True),
                        [("group-a", "Group A"), ("group-c", "Group C")])
    else:
        v1 = _load(reg, "Data source", pyramid("", [], True)[:2])
        v2 = _load_into(reg, "Data source", pyramid("", [], False))
    ids: dict[str, int] = {}
    with reg.read() as conn:
        for vid, suffix in ((v1, "1"), (v2, "2")):
            for fid, ref in conn.exec_driver_sql(
                    f"SELECT fid, source_ref FROM org_unit_group WHERE version_id = {vid}"):
                ids[f"id_{ref.replace('-', '_')}{suffix}"] = fid
    return {"id_group_a1": ids.get("id_group_a1", 0), "id_group_a2": ids.get("id_group_a2", 0),
            "id_group_b": ids.get("id_group_b1", 0), "id_group_c": ids.get("id_group_c2", 0)}


def _load_into(reg: Registry, source: str, records: list[UnitRecord],
               groups: list[tuple[str, str]] = ()) -> int:  # type: ignore[assignment]
    return _load(reg, source, records, groups)


def _render(fixture: str, ids: dict[str, int]) -> str:
    text = (DATA / fixture).read_text(encoding="utf-8")
    for k, v in ids.items():
        text = text.replace("{{" + k + "}}", str(v))
    return text


def test_iaso_csv_equals_iaso_fixture_happy_path(tmp_path: Path) -> None:
    """Iaso's own test pyramids give, byte for byte, Iaso's expected CSV."""
    with Registry.create(tmp_path / "iaso.gpkg") as reg:
        ids = _iaso_pyramids(reg, fixture="happy")
        diff = diff_versions(reg, "Data source:1", "Data source:2",
                             fields=["name", "code", "parent", "dates", "groups", "geometry"])
        assert diff.counts["paired_by_source_ref"] == 3  # separate loads: no shared uuid
        ours = iaso_csv_text(diff)
    assert ours.rstrip("\n") == _render("diff_happy_path.csv", ids).rstrip("\n")


def test_iaso_csv_equals_iaso_fixture_not_in_origin(tmp_path: Path) -> None:
    with Registry.create(tmp_path / "iaso.gpkg") as reg:
        _iaso_pyramids(reg, fixture="mismatch")
        diff = diff_versions(reg, "Data source:1", "Data source:2")
        ours = iaso_csv_text(diff, fields=[])
    assert ours.rstrip("\n") == _render("diff_csv_with_group_filtering_and_mismatches.csv",
                                        {}).rstrip("\n")


# --- GeoPackage for QGIS ------------------------------------------------------------------


def test_gpkg_layers_and_styles(gpkg_scenario: Registry, tmp_path: Path) -> None:
    import sqlite3

    diff = diff_versions(gpkg_scenario, f"{SRC}:1", f"{SRC}:2")
    out = tmp_path / "diff.gpkg"
    result = export_diff(diff, out)
    assert result["layers"] == {
        "new_points": 1, "modified_points": 2, "moved_points": 1, "closed_points": 1,
        "deleted_points": 1, "modified_territories": 1, "territories_before": 1,
        "point_moves": 1}
    conn = sqlite3.connect(out)
    styles = dict(conn.execute("SELECT f_table_name, useAsDefault FROM layer_styles"))
    assert styles == {name: 1 for name in result["layers"]}
    assert conn.execute("SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'"
                        ).fetchone() == ("attributes",)
    conn.close()
    run = subprocess.run(["ogrinfo", "-ro", "-so", "-al", str(out)], capture_output=True,
                         text=True)
    assert run.returncode == 0 and "ERROR" not in run.stderr, run.stderr


def test_units_without_geometry_are_a_table_of_their_own(tmp_path: Path) -> None:
    """A unit added by a merge without coordinates, or a renamed unit that has no point:
    a reviewer who opens the diff in QGIS must still see them — as a table."""
    reg = Registry.create(tmp_path / "reg.gpkg")
    try:
        build_scenario(reg)
        U.add_unit(reg, SRC, number=2, name="Kamba Mamudia MCHP", parent="R1",
                   type="Facility")
        diff = diff_versions(reg, f"{SRC}:1", f"{SRC}:2")
    finally:
        reg.close()
    out = tmp_path / "diff.gpkg"
    layers = export_diff(diff, out)["layers"]
    assert layers["without_geometry"] == 1 and layers["new_points"] == 1
    import sqlite3

    conn = sqlite3.connect(out)
    assert conn.execute("SELECT data_type FROM gpkg_contents WHERE table_name = "
                        "'without_geometry'").fetchone() == ("attributes",)
    assert conn.execute("SELECT status, name, parent_after FROM without_geometry").fetchall() \
        == [("new", "Kamba Mamudia MCHP", "North")]
    assert "without_geometry" not in {r[0] for r in conn.execute(
        "SELECT f_table_name FROM layer_styles")}
    conn.close()
    run = subprocess.run(["ogrinfo", "-ro", "-so", str(out), "without_geometry"],
                         capture_output=True, text=True)
    assert run.returncode == 0 and "Feature Count: 1" in run.stdout, run.stdout + run.stderr


@pytest.mark.qgis
def test_qgis_opens_the_diff_with_the_stored_styles(gpkg_scenario: Registry,
                                                    tmp_path: Path) -> None:
    diff = diff_versions(gpkg_scenario, f"{SRC}:1", f"{SRC}:2")
    out = tmp_path / "diff.gpkg"
    export_diff(diff, out)
    names = ["new_points", "deleted_points", "moved_points", "modified_territories",
             "point_moves"]
    lines = qgis_layers(out, names, "layer.featureCount(), layer.renderer().type(), "
                        "layer.renderer().symbol().color().name()", tmp_path)
    # QGIS's default would be a random colour: these come from layer_styles.
    assert lines == [
        ["new_points", "True", "1", "singleSymbol", "#1a9641"],
        ["deleted_points", "True", "1", "singleSymbol", "#d7191c"],
        ["moved_points", "True", "1", "singleSymbol", "#2b83ba"],
        ["modified_territories", "True", "1", "singleSymbol", "#f28e2b"],
        ["point_moves", "True", "1", "singleSymbol", "#7b3294"],
    ]


# --- command line ---------------------------------------------------------------------------


def test_cli_text_json_and_files(gpkg_scenario: Registry, tmp_path: Path) -> None:
    from georeg.cli import main

    reg = str(gpkg_scenario.location.path)
    runner = CliRunner()
    res = runner.invoke(main, ["diff", reg, f"{SRC}:1", f"{SRC}:2"])
    assert res.exit_code == 0, res.output
    assert "Ministry v1 → Ministry v2" in res.output
    assert "moved" in res.output and "Bravo CHP" in res.output
    res = runner.invoke(main, ["diff", reg, f"{SRC}:1", f"{SRC}:2", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["totals"]["closed"] == 1
    out = tmp_path / "d.csv"
    res = runner.invoke(main, ["diff", reg, f"{SRC}:1", SRC, "--out", str(out), "--format",
                               "iaso-csv", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["file"] == str(out)
    assert out.read_text().startswith("externalId,diff status,modified fields,type,")
    res = runner.invoke(main, ["diff", reg, f"{SRC}:1", f"{SRC}:7"])
    assert res.exit_code == 4 and "has no version 7" in res.output
    res = runner.invoke(main, ["diff", reg, f"{SRC}:1", f"{SRC}:2", "--out",
                               str(tmp_path / "x.txt")])
    assert res.exit_code == 2 and "Cannot tell the format" in res.output


# --- edge cases (review) -------------------------------------------------------------------


def _edge_scenario(reg: Registry) -> None:
    """Combined edits on one unit each: the status says the strongest, the changes say all."""
    recs = [
        UnitRecord("Country", "C", None, "Country"),
        UnitRecord("North", "R1", "C", "Region"),
        UnitRecord("South", "R2", "C", "Region"),
        UnitRecord("Moved Renamed", "E1", "R1", "Facility", location=Point(0.1, 0.1)),
        UnitRecord("Closed Modified", "E2", "R1", "Facility", code="K2"),
        UnitRecord("Gets A Point", "E3", "R1", "Facility"),
        UnitRecord("Loses Its Point", "E4", "R1", "Facility", location=Point(0.3, 0.3)),
        UnitRecord("Only Groups", "E5", "R1", "Facility", groups=["pub"]),
        UnitRecord("Gets A Territory", "E6", "R2", "Facility"),
        UnitRecord("Untouched", "E7", "R2", "Facility", location=Point(1.5, 0.5)),
    ]
    _load(reg, SRC, recs, [("pub", "Public"), ("priv", "Private")])
    create_version(reg, SRC, copy_from=1)
    kw = {"number": 2, "origin": "test"}
    U.move_unit(reg, SRC, "E1", "R2", **kw)
    U.edit_unit(reg, SRC, "E1", name="Moved And Renamed", **kw)
    U.edit_unit(reg, SRC, "E2", code="K2-new", **kw)
    U.close_unit(reg, SRC, "E2", "2024-01-31", **kw)
    U.set_geometry(reg, SRC, "E3", location=Point(0.2, 0.2), **kw)
    U.set_geometry(reg, SRC, "E4", location=None, **kw)
    U.set_group_membership(reg, SRC, "E5", "priv", True, **kw)
    U.set_geometry(reg, SRC, "E6", territory=box(1.1, 0.1, 1.2, 0.2), **kw)


@pytest.fixture(scope="module", params=["gpkg", "spatialite"])
def edge_scenario(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Registry]:
    reg = Registry.create(location_for(request.param, tmp_path_factory.mktemp("edge"), request))
    _edge_scenario(reg)
    yield reg
    reg.close()


def test_combined_edits_keep_every_change(edge_scenario: Registry) -> None:
    diff = diff_versions(edge_scenario, f"{SRC}:1", f"{SRC}:2")
    units = _by_ref(diff)
    assert {r: u.status for r, u in units.items()} == {
        "E1": "moved", "E2": "closed", "E3": "modified", "E4": "modified", "E5": "modified",
        "E6": "modified"}
    e1 = units["E1"]
    assert e1.changed_fields == ["name", "parent"]
    assert e1.change("name").after == "Moved And Renamed"
    assert e1.change("parent").before["ref"] == "R1" and e1.change("parent").after["ref"] == "R2"
    e2 = units["E2"]
    assert set(e2.changed_fields) == {"code", "closed_date"}
    assert e2.change("code").before == "K2" and e2.change("code").after == "K2-new"
    # geometry added / removed: a change, but no distance to measure
    e3, e4 = units["E3"], units["E4"]
    assert e3.changed_fields == ["location"] and e4.changed_fields == ["location"]
    assert e3.change("location").before is None and e3.change("location").after is not None
    assert e4.change("location").before is not None and e4.change("location").after is None
    assert e3.distance_m is None and e4.distance_m is None
    assert units["E5"].changed_fields == ["groups"]
    assert units["E5"].change("groups").before == ["Public"]
    assert units["E5"].change("groups").after == ["Private", "Public"]
    e6 = units["E6"]  # a territory added: its area, no Hausdorff distance, no area change
    assert e6.changed_fields == ["territory"] and e6.hausdorff_m is None
    assert e6.area_before_m2 is None and e6.area_change_m2 is None
    assert e6.area_after_m2 == pytest.approx(11.13e3 * 11.06e3, rel=0.01)
    assert diff.totals["unchanged"] == 4  # C, R1, R2, E7


def test_combined_edits_prefilter_agrees_with_full_read(edge_scenario: Registry) -> None:
    quick = diff_versions(edge_scenario, f"{SRC}:1", f"{SRC}:2")
    full = diff_versions(edge_scenario, f"{SRC}:1", f"{SRC}:2", include_unchanged=True)
    assert quick.totals == full.totals
    changed = [u.to_dict() for u in full.units if u.status != "unchanged"]
    assert [u.to_dict() for u in quick.units] == changed


def test_two_sources_with_moved_and_renamed_units(tmp_path: Path) -> None:
    """Across sources the parent is the same when its ref is: a re-filed unit is 'moved',
    a renamed parent does not move its children."""
    with Registry.create(tmp_path / "two.gpkg") as reg:
        _load(reg, "A", [UnitRecord("Land", "L", None, "Country"),
                         UnitRecord("North", "N", "L", "Region"),
                         UnitRecord("South", "S", "L", "Region"),
                         UnitRecord("One", "x1", "N", "Facility"),
                         UnitRecord("Two", "x2", "N", "Facility"),
                         UnitRecord("Three", "x3", "S", "Facility")])
        _load(reg, "B", [UnitRecord("Land", "L", None, "Country"),
                         UnitRecord("North Region", "N", "L", "Region"),
                         UnitRecord("South", "S", "L", "Region"),
                         UnitRecord("One bis", "x1", "S", "Facility"),
                         UnitRecord("Two", "x2", "N", "Facility"),
                         UnitRecord("Three", "x3", "S", "Facility", closed_date="2020-01-01")])
        diff = diff_versions(reg, "A", "B")
        full = diff_versions(reg, "A", "B", include_unchanged=True)
    units = _by_ref(diff)
    assert {r: u.status for r, u in units.items()} == {"N": "modified", "x1": "moved",
                                                      "x3": "closed"}
    assert units["x1"].changed_fields == ["name", "parent"]
    assert diff.totals == full.totals and diff.totals["unchanged"] == 3


def test_cli_bad_input_clear_errors(gpkg_scenario: Registry, tmp_path: Path) -> None:
    import hashlib

    from georeg.cli import main

    path = str(gpkg_scenario.location.path)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    runner = CliRunner()
    for args, code, msg in (
        (["--out", str(blocker / "d.csv")], 2, "is a file, not a folder"),
        (["--out", str(tmp_path / "no" / "d.csv")], 2, "does not exist: create it first"),
        (["--out", str(tmp_path / "d.txt")], 2, "Cannot tell the format"),
        (["--fields", "colour"], 2, "Unknown diff field 'colour'"),
        (["--limit", "-1"], 2, "not in the range"),
    ):
        res = runner.invoke(main, ["diff", path, f"{SRC}:1", f"{SRC}:2", *args])
        said = " ".join(res.output.split())
        assert res.exit_code == code and msg in said, (args, said)
    res = runner.invoke(main, ["diff", path, f"{SRC}:", f"{SRC}:2"])
    assert res.exit_code == 2 and "nothing after ':'" in res.output
    res = runner.invoke(main, ["diff", str(tmp_path / "none.gpkg"), "A", "B"])
    assert res.exit_code == 4 and "No registry" in res.output
    assert not (tmp_path / "d.txt").exists() and not (tmp_path / "no").exists()
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest


def test_a_move_between_two_units_of_one_name_says_which(tmp_path: Path) -> None:
    """Sierra Leone has a district Karene and, elsewhere, a chiefdom of that name: a
    facility moved from one to the other must not read 'parent Karene → Karene', in the
    terminal nor in the GeoPackage a reviewer opens in QGIS."""
    from georeg.cli import main

    reg = Registry.create(tmp_path / "karene.gpkg")
    _load(reg, SRC, [
        UnitRecord("Sierra Leone", "SL", None, "Country"),
        UnitRecord("Karene", "KD", "SL", "Region"),
        UnitRecord("Karene", "KC", "SL", "Region"),
        UnitRecord("Kamakwie CHC", "F1", "KD", "Facility", location=Point(-12.2, 9.3)),
    ])
    create_version(reg, SRC, copy_from=1)
    U.move_unit(reg, SRC, "F1", "KC", number=2, origin="test")
    res = CliRunner().invoke(main, ["diff", str(reg.location.path), f"{SRC}:1", f"{SRC}:2"])
    assert res.exit_code == 0, res.output
    assert "parent Karene (ref KD) → Karene (ref KC)" in " ".join(res.output.split())
    export_diff(diff_versions(reg, f"{SRC}:1", f"{SRC}:2"), tmp_path / "d.gpkg", "gpkg")
    reg.close()
    from osgeo import ogr

    gpkg = ogr.Open(str(tmp_path / "d.gpkg"))
    pairs = {(f.GetField("parent_before"), f.GetField("parent_after"))
             for layer in gpkg for f in layer
             if layer.GetLayerDefn().GetFieldIndex("parent_before") >= 0
             and f.GetField("status") == "moved"}
    assert pairs == {("Karene (ref KD)", "Karene (ref KC)")}
