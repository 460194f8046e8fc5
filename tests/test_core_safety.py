"""The registry core under a district data manager's hands (review "core", F4, F5, F7, F8).

- A draft with change requests waiting for review cannot be deleted; requests whose
  version is gone anyway (deleted by an older Georeg or by hand) are still listed, shown
  as such, and can be rejected — one of them used to break every listing.
- A territory given to an edit is checked as ``georeg import`` checks one (degrees, not
  a projected CRS; a valid polygon, or ``--fix-geometry``).
- A write that waited for another program's lock says so, and that nothing changed.
- ``history --unit`` says why it has nothing to show (a ref without ``--source``, an
  unknown unit, a unit not in the version read) instead of "No changes recorded.".

Real registries on every backend (GeoPackage, SpatiaLite, PostGIS) and the real CLI.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import shapely
from click.testing import CliRunner
from sqlalchemy import event, text

from georeg.cli import main
from storage import change_requests as cr
from storage import units, versions
from storage.errors import ConflictError
from storage.registry import Registry
from tests.conftest import cli_location

FACILITY = "kbGqmM6ZWWV"  # Allen Town Health Post
CHIEFDOM = "C9uduqDZr9d"
BO = "O6uvpzGd5pu"
SOURCE = "Sierra Leone (DHIS2 demo)"
UTM = {"type": "Polygon",
       "coordinates": [[[500000, 900000], [510000, 900000], [510000, 910000], [500000, 900000]]]}
BOWTIE = {"type": "Polygon",
          "coordinates": [[[-13.2, 8.4], [-13.1, 8.5], [-13.1, 8.4], [-13.2, 8.5], [-13.2, 8.4]]]}


def cli(*args: str, code: int = 0) -> Any:
    """Run the CLI with --json; the parsed answer (stdout), or the error (stderr)."""
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == code, (result.stdout, result.stderr)
    return json.loads(result.stdout) if code == 0 else json.loads(result.stderr)


@pytest.fixture
def reg(location: str) -> str:
    """The demo as `georeg demo` makes it (v1 published, the default) and a draft v2."""
    cli("demo", location)
    cli("version", "new", location, "-s", SOURCE, "--from", "1")
    return location


def _published_with_draft(reg: Registry) -> None:
    versions.publish_version(reg, "SL", 1, make_default=True)
    versions.create_version(reg, "SL", copy_from=1)


# --- F4: change requests and deleted versions ---------------------------------------------


def test_a_draft_with_requests_waiting_cannot_be_deleted_and_says_which(demo: Registry) -> None:
    _published_with_draft(demo)
    a = cr.create_change_request(demo, "SL", unit=FACILITY, number=2, created_by="amina",
                                 values={"name": "Renamed by phone"})
    b = cr.create_change_request(demo, "SL", new_unit_uuid="9dcb6991-c72c-416d-ba38-4556c62b400f",
                                 number=2, created_by="amina",
                                 values={"name": "Phone new", "parent": CHIEFDOM})
    on_v1 = cr.create_change_request(demo, "SL", unit=BO, number=1, values={"name": "Bo renamed"})

    with pytest.raises(ConflictError) as refused:
        versions.delete_version(demo, "SL", 2)
    message = refused.value.message
    assert f"#{a['id']}, #{b['id']}" in message and "SL v2" in message
    assert "georeg changes reject REG ID" in message and "georeg changes approve" in message
    assert [v["number"] for v in versions.list_versions(demo, "SL")] == [1, 2]

    # settled (reviewed requests are history: they do not hold the version back)
    cr.reject_change_request(demo, a["id"], reviewer="kofi", comment="Draft abandoned")
    cr.reject_change_request(demo, b["id"], reviewer="kofi", comment="Draft abandoned")
    versions.delete_version(demo, "SL", 2)

    listed = {r["id"]: r for r in cr.list_change_requests(demo)["results"]}
    assert set(listed) == {a["id"], b["id"], on_v1["id"]}
    assert listed[a["id"]]["version"] == "SL v2 (deleted)"
    assert listed[a["id"]]["version_deleted"] and listed[a["id"]]["source"] == "SL"
    assert listed[on_v1["id"]]["version"] == "SL v1"
    assert not listed[on_v1["id"]]["version_deleted"]
    shown = cr.get_change_request(demo, a["id"])
    assert shown["status"] == "rejected" and shown["current"] is None


def test_a_request_whose_version_is_gone_is_listed_and_can_be_rejected(demo: Registry) -> None:
    """A version deleted by an older Georeg, or by hand, with a request still waiting."""
    _published_with_draft(demo)
    gone = cr.create_change_request(demo, "SL", unit=FACILITY, number=2,
                                    values={"name": "Renamed by phone"})
    other = cr.create_change_request(demo, "SL", unit=BO, number=1, values={"name": "Bo renamed"})
    with demo.engine.begin() as conn:
        conn.execute(text("DELETE FROM source_version WHERE fid = :v"),
                     {"v": gone["version_id"]})

    listed = {r["id"]: r for r in cr.list_change_requests(demo, status="new")["results"]}
    assert set(listed) == {gone["id"], other["id"]}
    assert listed[gone["id"]]["version"] == "(deleted version)"
    assert listed[gone["id"]]["version_deleted"] and listed[gone["id"]]["source"] is None
    assert cr.list_change_requests(demo, source="SL")["count"] == 1  # the one on v1

    shown = CliRunner().invoke(main, ["changes", "show", cli_location(demo), str(gone["id"])])
    assert shown.exit_code == 0 and "its version was deleted; it can only be rejected" \
        in shown.stdout.replace("\n", " ")
    with pytest.raises(ConflictError, match=rf"deleted since.*changes reject REG {gone['id']}"):
        cr.approve_change_request(demo, gone["id"], reviewer="kofi")
    done = cr.reject_change_request(demo, gone["id"], reviewer="kofi", comment="Version gone")
    assert done["status"] == "rejected" and done["version"] == "(deleted version)"
    assert cr.get_change_request(demo, other["id"])["status"] == "new"


def test_cli_version_delete_refuses_and_changes_list_survives(reg: str, tmp_path: Path) -> None:
    first = json.loads(CliRunner().invoke(main, ["changes", reg, "--json"]).stdout)
    assert first["count"] == 0
    with Registry.open(reg) as registry:
        made = cr.create_change_request(registry, SOURCE, unit=FACILITY, number=2,
                                        values={"name": "Renamed by phone"}, created_by="amina")
        cr.create_change_request(registry, SOURCE, unit=BO, number=1,
                                 values={"name": "Bo renamed"}, created_by="amina")

    error = cli("version", "delete", reg, "-s", SOURCE, "-v", "2", code=5)
    assert f"#{made['id']}" in error["message"] and "changes reject" in error["message"]
    assert cli("changes", "list", reg)["count"] == 2

    cli("changes", "reject", reg, str(made["id"]), "--by", "kofi", "--comment", "not now")
    cli("version", "delete", reg, "-s", SOURCE, "-v", "2")
    listed = cli("changes", "list", reg)
    assert listed["count"] == 2
    assert {r["version"] for r in listed["results"]} == {f"{SOURCE} v1", f"{SOURCE} v2 (deleted)"}
    text_out = CliRunner().invoke(main, ["changes", reg])
    assert text_out.exit_code == 0 and "(deleted)" in text_out.stdout


# --- F5: territories given to an edit --------------------------------------------------------


def _geojson(tmp_path: Path, name: str, geom: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(geom))
    return str(path)


def test_cli_unit_geometry_refuses_projected_and_invalid_territories(reg: str,
                                                                     tmp_path: Path) -> None:
    utm = _geojson(tmp_path, "utm.json", UTM)
    bowtie = _geojson(tmp_path, "bowtie.json", BOWTIE)
    before = cli("unit", "show", reg, "-s", SOURCE, "-v", "2", FACILITY)

    error = cli("unit", "geometry", reg, "-s", SOURCE, "-v", "2", FACILITY, "--territory", utm,
                code=2)
    assert "longitudes 500000..510000" in error["message"]
    assert "projected CRS such as UTM" in error["message"] and FACILITY in error["message"]
    error = cli("unit", "add", reg, "-s", SOURCE, "-v", "2", "--name", "Z", "--parent", CHIEFDOM,
                "--territory", utm, code=2)
    assert "projected CRS" in error["message"]

    error = cli("unit", "geometry", reg, "-s", SOURCE, "-v", "2", FACILITY, "--territory",
                bowtie, code=2)
    assert "not a valid polygon" in error["message"] and "--fix-geometry" in error["message"]
    assert cli("unit", "show", reg, "-s", SOURCE, "-v", "2", FACILITY) == before

    cli("unit", "geometry", reg, "-s", SOURCE, "-v", "2", FACILITY, "--territory", bowtie,
        "--fix-geometry")
    with Registry.open(reg) as registry, registry.read() as conn:
        handle = units.find_unit(conn, versions.resolve_version(conn, SOURCE, 2), FACILITY)
        stored = units.unit_territory(registry, conn, handle.fid)
    assert stored is not None and stored.is_valid and stored.area > 0


def test_api_set_geometry_and_add_unit_check_territories(demo: Registry) -> None:
    with pytest.raises(Exception, match="latitudes 95..96") as refused:
        units.set_geometry(demo, "SL", FACILITY, territory=shapely.Polygon(
            [(-13, 95), (-12, 95), (-12, 96), (-13, 95)]))
    assert type(refused.value).__name__ == "InvalidInput"
    with pytest.raises(Exception, match="not a valid polygon"):
        units.add_unit(demo, "SL", name="Bow", parent=CHIEFDOM,
                       territory=shapely.geometry.shape(BOWTIE))
    added = units.add_unit(demo, "SL", name="Bow", parent=CHIEFDOM,
                           territory=shapely.geometry.shape(BOWTIE), fix_geometry=True)
    with demo.read() as conn:
        handle = units.find_unit(conn, versions.resolve_version(conn, "SL"), added["uuid"])
        stored = units.unit_territory(demo, conn, handle.fid)
    assert stored is not None and stored.is_valid


def test_a_phone_request_with_a_projected_territory_is_refused(demo: Registry) -> None:
    with pytest.raises(Exception, match="longitudes 500000..510000"):
        cr.create_change_request(demo, "SL", unit=FACILITY, values={"territory": UTM})
    made = cr.create_change_request(demo, "SL", unit=FACILITY, values={"territory": BOWTIE})
    assert shapely.from_wkt(made["new"]["territory"]).is_valid  # repaired, not refused


# --- F7: another program holds the write lock --------------------------------------------------


def test_a_write_that_waited_for_another_program_says_so(tmp_path: Path) -> None:
    path = tmp_path / "lock.gpkg"
    cli("demo", str(path))
    with Registry.open(path) as registry:
        # wait 0.3 s instead of the 30 s the product waits: the same path, sooner
        event.listen(registry.engine, "connect",
                     lambda dbapi, _rec: dbapi.execute("PRAGMA busy_timeout = 300"))
        registry.engine.dispose()
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # QGIS with an edit session, another georeg …
        try:
            with pytest.raises(ConflictError) as busy:
                versions.create_version(registry, SOURCE, copy_from=1)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        message = busy.value.message
        assert message.startswith(f"Another program is writing to {path}")
        assert "QGIS" in message and "Nothing was changed" in message
        assert "Try again" in message and "refused" not in message
        assert busy.value.exit_code == 5
        assert [v["number"] for v in versions.list_versions(registry, SOURCE)] == [1]


# --- F8: history of one unit -----------------------------------------------------------------


def test_cli_history_says_why_it_has_nothing_to_show(reg: str) -> None:
    # one source: a ref is enough (with several, the error names the source to give:
    # test_cli_review_docs)
    assert cli("history", reg, "--unit", BO) == cli("history", reg, "--unit", BO, "-s", SOURCE)
    error = cli("history", reg, "--unit", "BOGUS", code=4)
    assert "No unit with uuid or ref 'BOGUS'" in error["message"]
    error = cli("history", reg, "--unit", "BOGUS", "-s", SOURCE, code=4)
    assert "No unit with uuid or ref 'BOGUS'" in error["message"]

    cli("unit", "add", reg, "-s", SOURCE, "-v", "2", "--name", "Z one", "--ref", "Z1",
        "--parent", CHIEFDOM)
    cli("unit", "edit", reg, "-s", SOURCE, "-v", "2", "Z1", "--name", "Z one bis")
    error = cli("history", reg, "--unit", "Z1", "-s", SOURCE, "-v", "1", code=4)
    assert f"'Z1' is not in {SOURCE} v1 (the default); it is in v2: try --version 2." \
        == error["message"]
    # without --version, a ref is looked for in every version of the source (review #16)
    assert [e["op"] for e in cli("history", reg, "--unit", "Z1", "-s", SOURCE)] == \
        ["update", "insert"]
    log = cli("history", reg, "--unit", "Z1", "-s", SOURCE, "-v", "2")
    assert [e["op"] for e in log] == ["update", "insert"]

    # found, with a history, by ref with --source and by uuid without
    assert cli("history", reg, "--unit", BO, "-s", SOURCE)
    uuid = log[0]["unit_uuid"]
    assert cli("history", reg, "--unit", uuid)
    # a unit deleted from the draft keeps its history there, by uuid
    cli("unit", "delete", reg, "-s", SOURCE, "-v", "2", "Z1")
    assert cli("history", reg, "--unit", uuid, "-s", SOURCE, "-v", "2")[0]["op"] == "delete"
    assert cli("history", reg, "--unit", uuid)[0]["op"] == "delete"


# --- smaller things a data manager met (review F9) -------------------------------------------


def test_deleting_the_default_draft_says_the_source_has_no_default_now(demo: Registry) -> None:
    versions.set_default_version(demo, "SL", 1)
    result = CliRunner().invoke(main, ["version", "delete", cli_location(demo), "--source", "SL",
                                       "-v", "1"])
    assert result.exit_code == 0, result.output
    assert "It was the default version" in result.output and "version default" in result.output


def test_publishing_twice_says_already_published(demo: Registry) -> None:
    versions.publish_version(demo, "SL", 1)
    result = CliRunner().invoke(main, ["version", "publish", cli_location(demo), "--source", "SL",
                                       "-v", "1"])
    assert result.exit_code != 0 and "already published" in result.output


def test_contradictory_geometry_options_and_a_zero_depth_are_refused(demo: Registry) -> None:
    where = cli_location(demo)
    both = CliRunner().invoke(main, ["unit", "geometry", where, "--source", "SL",
                                     "O6uvpzGd5pu", "--territory", "x.json",
                                     "--clear-territory"])
    assert both.exit_code == 2 and "not both" in both.output
    assert units.get_unit(demo, "SL", "O6uvpzGd5pu")["has_territory"]  # kept
    zero = CliRunner().invoke(main, ["tree", where, "--source", "SL", "--max-depth", "0"])
    assert zero.exit_code == 2 and "max-depth" in zero.output
