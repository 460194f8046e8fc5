"""An incremental DHIS2 pull keeps what was changed here and not pushed yet: group
renames and unit types too; and a unit whose geometry cannot be read is pulled without it.

Review as a district data manager (after F4 of the DHIS2 review, which covered the
units' names, codes, dates, parents, short names and geometries):

1. a group renamed here (name, short name or code) and not pushed was overwritten by the
   next ``--since last`` pull.  Group renames leave no change-log row: each pull (and
   each push DHIS2 took whole) records the groups' names as DHIS2 had them, and the next
   pull compares this side and DHIS2 with that.  Renamed on both sides: a conflict,
   listed (CLI and ``--json``), this side's kept unless ``--prefer-remote``; renamed in
   DHIS2 only: applied; renamed here only: kept (and sent by the next push).
2. a unit's type changed here was overwritten silently (the type was not compared).
3. one unit whose geometry DHIS2 returns but that cannot be read (a LineString, bad
   coordinates …) stopped the whole pull.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from georeg.cli_dhis2 import dhis2_group
from storage import units as U
from storage.registry import Registry
from sync.dhis2_client import Dhis2Client
from sync.dhis2_json import Dhis2Payload, to_import_payload
from sync.dhis2_sync import pull, push
from tests.dhis2_helpers import PASSWORD, CliPull, client_for
from tests.fake_dhis2 import FakeDhis2

ADONKIA, AGAPE, AHAMADYYA, NGELEHUN = "Rp268JB6Ne4", "GvFqTavdpGE", "plnHVbJR6p4", "rxc497GUdDt"
SIERRA_LEONE = "ImspTQPwCqd"
CHC_GROUP, CHP_GROUP, URBAN_GROUP, RURAL_GROUP = ("CXw2yu5fodb", "uYxK4wmcPqA", "f25dqv3Y7Z0",
                                                  "GGghZsfu7qV")


def in_dhis2(client: Dhis2Client, uid: str, **values: Any) -> None:
    """Someone changes a unit in DHIS2 (its whole object sent back, as DHIS2 expects)."""
    obj = client.get(f"organisationUnits/{uid}", {"fields": ":owner"})
    obj.update(values)
    assert client.import_metadata({"organisationUnits": [obj]}).ok


def group_in_dhis2(client: Dhis2Client, uid: str, **values: Any) -> None:
    obj = client.get(f"organisationUnitGroups/{uid}", {"fields": ":owner"})
    obj.update(values)
    assert client.import_metadata({"organisationUnitGroups": [obj]}).ok


def group_here(reg: Registry, uid: str, **values: Any) -> None:
    """A group renamed here: in QGIS, or by a central registry's pull (no API, no log)."""
    sets = ", ".join(f"{k} = :{k}" for k in values)
    with reg.write() as conn:
        conn.execute(text(f"UPDATE org_unit_group SET {sets} WHERE source_ref = :r AND "
                          "version_id = (SELECT max(fid) FROM source_version)"),
                     values | {"r": uid})


def group(reg: Registry, uid: str) -> tuple[str, str | None, str | None]:
    with reg.read() as conn:
        row = conn.execute(text(
            "SELECT name, short_name, code FROM org_unit_group WHERE source_ref = :r AND "
            "version_id = (SELECT max(fid) FROM source_version)"), {"r": uid}).one()
    return row[0], row[1], row[2]


def here(reg: Registry, uid: str, number: int = 1) -> dict[str, Any]:
    return U.get_unit(reg, "SL", uid, number)


def group_conflicts(result: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    return [(c["uid"], c["field"], c["here"], c["dhis2"], c["kept"])
            for c in result["conflicts"] if c.get("kind") == "group"]


# --- 1. groups renamed here -----------------------------------------------------------------


def test_a_group_renamed_on_both_sides_is_a_conflict_and_kept(registry: Registry) -> None:
    with FakeDhis2("2.41") as server:
        client = client_for(server)
        pull(registry, client, "SL")
        group_here(registry, CHP_GROUP, name="CHP (district)")  # both sides
        group_here(registry, URBAN_GROUP, name="Urban (district)", code="URB")  # here only
        group_in_dhis2(client, CHP_GROUP, name="CHP (ministry)")
        group_in_dhis2(client, CHC_GROUP, name="CHC (ministry)", code="CHC")  # DHIS2 only
        result = pull(registry, client, "SL", since="last")
        assert group_conflicts(result) == [
            (CHP_GROUP, "name", "CHP (district)", "CHP (ministry)", "here")]
        assert result["group_conflict_count"] == 1 and result["conflict_count"] == 0
        assert group(registry, CHP_GROUP)[0] == "CHP (district)"  # kept
        assert group(registry, CHC_GROUP) == ("CHC (ministry)", "CHC", "CHC")  # taken
        assert group(registry, URBAN_GROUP) == ("Urban (district)", "Urban", "URB")  # kept
        assert result["group_changes"]["groups_renamed"] == 1

        # every pull lists it again until settled (DHIS2 did not touch the group since)
        again = pull(registry, client, "SL", since="last")
        assert [c[0] for c in group_conflicts(again)] == [CHP_GROUP]
        assert group(registry, CHP_GROUP)[0] == "CHP (district)"

        # --prefer-remote takes DHIS2's name, and says what it replaced
        taken = pull(registry, client, "SL", since="last", prefer_remote=True)
        assert group_conflicts(taken) == [
            (CHP_GROUP, "name", "CHP (district)", "CHP (ministry)", "dhis2")]
        assert taken["group_conflict_count"] == 0
        assert group(registry, CHP_GROUP)[0] == "CHP (ministry)"
        settled = pull(registry, client, "SL", since="last")
        assert settled["conflicts"] == [] and settled["group_conflict_count"] == 0
        # the rename made here only is still here, and the push sends it
        assert group(registry, URBAN_GROUP) == ("Urban (district)", "Urban", "URB")
        push(registry, client, "SL", 1)
        assert (server.state.groups[URBAN_GROUP]["name"],
                server.state.groups[URBAN_GROUP].get("code")) == ("Urban (district)", "URB")


def test_a_group_renamed_in_dhis2_after_a_push_is_no_conflict(fake41: FakeDhis2,
                                                              tmp_path: Any) -> None:
    """The push records the names DHIS2 has after it: a rename made in DHIS2 after a push
    of a name changed here is DHIS2's alone, and comes in."""
    client = client_for(fake41)
    with Registry.create(str(tmp_path / "r.gpkg")) as reg:
        pull(reg, client, "SL")
        group_here(reg, RURAL_GROUP, name="Rural (district)")
        push(reg, client, "SL", 1)
        assert fake41.state.groups[RURAL_GROUP]["name"] == "Rural (district)"
        group_in_dhis2(client, RURAL_GROUP, name="Rural (ministry)")
        result = pull(reg, client, "SL", since="last")
        assert result["conflicts"] == []
        assert group(reg, RURAL_GROUP)[0] == "Rural (ministry)"


def test_a_group_renamed_here_survives_a_pull_into_a_new_draft(fake41: FakeDhis2,
                                                               tmp_path: Any) -> None:
    """A published version: the pull copies it into a new draft; the rename made in the
    published version is still not in DHIS2 and is kept in the draft."""
    from storage.versions import publish_version

    client = client_for(fake41)
    with Registry.create(str(tmp_path / "r.gpkg")) as reg:
        pull(reg, client, "SL")
        group_here(reg, CHP_GROUP, short_name="CHP (d)")
        publish_version(reg, "SL", 1)
        group_in_dhis2(client, CHP_GROUP, shortName="CHP (m)")
        result = pull(reg, client, "SL", since="last")
        assert result["version"]["number"] == 2
        assert group_conflicts(result) == [(CHP_GROUP, "short name", "CHP (d)", "CHP (m)",
                                            "here")]
        assert group(reg, CHP_GROUP) == ("CHP", "CHP (d)", None)


def test_cli_lists_a_group_conflict(fake41: FakeDhis2, tmp_path: Any) -> None:
    pulled = CliPull(fake41, tmp_path)
    location = pulled.location
    with Registry.open(location) as reg:
        group_here(reg, CHP_GROUP, name="CHP (district)")
    group_in_dhis2(client_for(fake41), CHP_GROUP, name="CHP (ministry)")
    out = pulled.dhis2("pull", "-s", "SL", "--since", "last")
    assert out.exit_code == 0, out.output
    assert "1 group(s) renamed both here and in DHIS2: kept as they are here" in out.output
    assert (f"CHP (district) ({CHP_GROUP})  name: here 'CHP (district)', DHIS2 "
            "'CHP (ministry)'" in out.output)
    assert "--prefer-remote" in out.output
    as_json = pulled.dhis2("pull", "-s", "SL", "--since", "last", "--json")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert [(c["kind"], c["uid"], c["field"], c["kept"]) for c in data["conflicts"]] == [
        ("group", CHP_GROUP, "name", "here")]
    assert data["group_conflict_count"] == 1
    taken = pulled.dhis2("pull", "-s", "SL", "--since", "last", "--prefer-remote")
    assert taken.exit_code == 0, taken.output
    assert "1 group(s) renamed both here and in DHIS2: DHIS2's names replaced" in taken.output
    with Registry.open(location) as reg:
        assert group(reg, CHP_GROUP)[0] == "CHP (ministry)"


# --- 2. a unit's type changed here ---------------------------------------------------------------


def test_a_type_changed_here_is_kept_and_a_conflict_when_dhis2_changed_it_too(
        registry: Registry) -> None:
    with FakeDhis2("2.41") as server:
        client = client_for(server)
        pull(registry, client, "SL")
        assert here(registry, AGAPE)["type"] == here(registry, ADONKIA)["type"] == "Facility"
        U.edit_unit(registry, "SL", ADONKIA, number=1, type="Chiefdom")  # here only
        U.edit_unit(registry, "SL", AGAPE, number=1, type="Chiefdom")  # both sides:
        in_dhis2(client, AGAPE, parent={"id": SIERRA_LEONE})  # level 2 in DHIS2 (District)
        in_dhis2(client, ADONKIA, name="Adonkia CHP (DHIS2)")
        result = pull(registry, client, "SL", since="last")
        assert [(c["uid"], c["field"], c["here"], c["dhis2"], c["kept"])
                for c in result["conflicts"]] == [(AGAPE, "type", "Chiefdom", "District", "here")]
        assert result["conflicts"][0]["kind"] == "unit"
        agape = here(registry, AGAPE)
        assert (agape["type"], agape["parent_ref"]) == ("Chiefdom", SIERRA_LEONE)
        adonkia = here(registry, ADONKIA)
        assert (adonkia["type"], adonkia["name"]) == ("Chiefdom", "Adonkia CHP (DHIS2)")
        taken = pull(registry, client, "SL", since="last", prefer_remote=True)
        assert [(c["uid"], c["kept"]) for c in taken["conflicts"]] == [(AGAPE, "dhis2")]
        assert here(registry, AGAPE)["type"] == "District"
        assert here(registry, ADONKIA)["type"] == "Chiefdom"  # changed here only: kept


# --- 3. geometries DHIS2 returns that cannot be read ------------------------------------------


BAD_GEOMETRIES = {
    ADONKIA: ({"type": "LineString", "coordinates": [[-11.5, 7.9], [-11.4, 7.8]]},
              "a LineString"),
    AGAPE: ({"type": "Point", "coordinates": ["x", "y"]}, "not valid GeoJSON"),
    AHAMADYYA: ({"type": "Point", "coordinates": [7.9, 211.5]}, "latitude 211.5"),
    NGELEHUN: ({"type": "Polygon", "coordinates": [[[-11.5, 7.9], [-11.4, 7.8]]]},
               "not valid GeoJSON"),
}


def _bad_geometries(client: Dhis2Client) -> None:
    for uid, (geom, _why) in BAD_GEOMETRIES.items():
        in_dhis2(client, uid, geometry=geom)


def _assert_warned(warnings: list[str], reg: Registry, number: int) -> None:
    for uid, (_geom, why) in BAD_GEOMETRIES.items():
        name = here(reg, uid, number)["name"]
        line = next((w for w in warnings if uid in w), None)
        assert line is not None, (uid, warnings)
        assert repr(name) in line and why in line and "pulled without it" in line, line


def test_a_unit_whose_geometry_cannot_be_read_is_pulled_without_it(fake41: FakeDhis2,
                                                                   tmp_path: Any) -> None:
    client = client_for(fake41)
    _bad_geometries(client)
    with Registry.create(str(tmp_path / "r.gpkg")) as reg:
        result = pull(reg, client, "SL")
        assert result["units"] == 1332 and result["import"]["rejected"] == 0
        _assert_warned(result["import"]["warnings"], reg, 1)
        for uid in BAD_GEOMETRIES:
            unit = here(reg, uid)
            assert unit["location"] is None and not unit.get("has_territory"), uid


def test_an_incremental_pull_takes_the_rest_of_a_unit_with_a_bad_geometry(
        registry: Registry) -> None:
    with FakeDhis2("2.41") as server:
        client = client_for(server)
        in_dhis2(client, ADONKIA, geometry={"type": "Point", "coordinates": [-11.5, 7.9]})
        pull(registry, client, "SL")
        _bad_geometries(client)
        in_dhis2(client, ADONKIA, name="Adonkia CHP (moved)")
        result = pull(registry, client, "SL", since="last")
        assert result["import"]["rejected"] == 0
        _assert_warned(result["import"]["warnings"], registry, 1)
        adonkia = here(registry, ADONKIA)
        assert adonkia["name"] == "Adonkia CHP (moved)"
        # (an incremental pull writes no geometry DHIS2 does not give: the point stays)
        assert adonkia["location"] == [-11.5, 7.9]


def test_cli_names_the_unit_whose_geometry_was_left_out(fake41: FakeDhis2,
                                                         tmp_path: Any) -> None:
    in_dhis2(client_for(fake41), ADONKIA, geometry=BAD_GEOMETRIES[ADONKIA][0])
    location = str(tmp_path / "r.gpkg")
    Registry.create(location).close()
    out = CliRunner().invoke(dhis2_group, ["pull", location, "-s", "SL", "--url", fake41.url,
                                           "--user", "admin"],
                             env={"GEOREG_DHIS2_PASSWORD": PASSWORD})
    assert out.exit_code == 0, out.output
    line = next(ln for ln in out.output.splitlines() if ADONKIA in ln)
    assert line.strip().startswith("warning:") and "'Adonkia CHP'" in line
    assert "a LineString" in line


def test_the_reader_on_its_own_warns_in_the_payload() -> None:
    """Files saved from DHIS2 go through the same reader: one bad geometry does not stop
    their import either (the payload's warnings say which unit went without)."""
    units = [{"id": "Root0000001", "name": "Root", "level": 1, "path": "/Root0000001",
              "geometry": {"type": "Point", "coordinates": [-11.5, 7.9]}},
             {"id": "Kid00000001", "name": "Kid", "level": 2, "path": "/Root0000001/Kid00000001",
              "geometry": {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]]]}},
             {"id": "Kid00000002", "name": "Empty", "level": 2,
              "path": "/Root0000001/Kid00000002", "geometry": {"type": "Point",
                                                                 "coordinates": []}}]
    payload = to_import_payload(Dhis2Payload(unit_pages=[("page 1",
                                                          {"organisationUnits": units})]))
    records = list(payload.units)
    assert [r.location is not None for r in records] == [True, False, False]
    assert len(payload.warnings) == 2
    assert "'Kid' (id Kid00000001" in payload.warnings[0]
    assert "a MultiLineString" in payload.warnings[0]
    assert "'Empty' (id Kid00000002" in payload.warnings[1] and "empty" in payload.warnings[1]


@pytest.mark.parametrize("backend", ["gpkg"], indirect=True)
def test_the_pull_records_what_dhis2_had(registry: Registry, fake41: FakeDhis2) -> None:
    """What the next pull compares with is in the pull's change-log entry (no table of
    its own): the groups' names as DHIS2 had them."""
    pull(registry, client_for(fake41), "SL")
    with registry.read() as conn:
        raw = conn.execute(text("SELECT after FROM change_log WHERE entity = 'dhis2_pull' "
                                "ORDER BY fid DESC")).first()[0]
    stored = json.loads(raw) if isinstance(raw, str) else raw
    assert stored["group_names"][CHP_GROUP] == {"name": "CHP", "shortName": "CHP",
                                                "code": None}
