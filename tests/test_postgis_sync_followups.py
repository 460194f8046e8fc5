"""Follow-ups of the PostGIS sync review "sync2" (after commits 04a5908 and 57a5525):
a pull reports only the units of a version published here that really differ, the advice
for each kind of conflict is one that works, status lists the versions held centrally,
conflict counts do not count a version as a unit, the refused note gives the command, and
scheduled runs with conflicts (PostGIS or DHIS2) say what settles them — a scheduled DHIS2
pull can take DHIS2's values (prefer=remote)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from georeg.cli_sync import _sync_text, sync_group
from storage import units as U
from storage.errors import InvalidInput
from storage.registry import Registry
from storage.units import edit_unit, get_unit
from storage.versions import create_version, delete_version, publish_version
from sync import dhis2_sync, scheduler
from sync.dhis2_client import Dhis2Client
from sync.postgis_sync import pull, push, status
from sync.scheduler import add_job, run_now, save_target
from tests.conftest import cli_location
from tests.fake_dhis2 import FakeDhis2
from tests.test_postgis_sync import FACILITIES, assert_equal, open_central

#: PostGIS tests: the district's registry is a GeoPackage (the fixture ``demo``)
on_postgis = [pytest.mark.postgis, pytest.mark.parametrize("backend", ["gpkg"], indirect=True)]

GENERIC_ADVICE = "'sync postgis pull --prefer-central' or 'sync postgis push --prefer-local'"
NGELEHUN = "rxc497GUdDt"


def apply(marks: list[Any]) -> Any:
    def wrap(fn: Any) -> Any:
        for mark in reversed(marks):
            fn = mark(fn)
        return fn
    return wrap


def cli(reg: Registry, central: tuple[str, str], *args: str) -> Result:
    url, schema = central
    return CliRunner().invoke(sync_group, ["postgis", args[0], cli_location(reg), "--url", url,
                                           "--schema", schema, *args[1:]])


def central_status(central: tuple[str, str], number: int) -> str | None:
    with open_central(central) as reg, reg.read() as conn:
        value = conn.execute(text("SELECT status FROM source_version WHERE number = :n"),
                             {"n": number}).scalar()
    return None if value is None else str(value)


def held_by_a_publish(demo: Registry, central: tuple[str, str]) -> str:
    """v1 pushed; the ministry renames a unit centrally, the district renames it too and
    publishes v1 here: the push keeps v1 a draft centrally and holds the unit."""
    push(demo, *central)
    clash = FACILITIES[0]
    with open_central(central) as reg:
        edit_unit(reg, "SL", clash, name="Ministry name", origin="cli")
    edit_unit(demo, "SL", clash, name="District name")
    publish_version(demo, "SL", 1)
    result = push(demo, *central)
    assert result["versions_not_published"] == 1 and result["held"] == 1
    return clash


# --- 1: a pull reports only the units of a version published here that differ --------------


@apply(on_postgis)
def test_no_false_conflict_after_prefer_local_published_the_version(
        demo: Registry, central: tuple[str, str]) -> None:
    held_by_a_publish(demo, central)
    settled = push(demo, *central, prefer="local")
    assert settled["versions_published"] == 1 and central_status(central, 1) == "published"
    # the ministry's rename is still after the pull marker, but the two sides now agree
    result = pull(demo, *central)
    assert result["conflicts"] == [] and result["conflict_count"] == 0
    out = cli(demo, central, "pull")
    assert out.exit_code == 0 and "changed on both sides" not in out.output, out.output
    assert_equal(demo, central)


@apply(on_postgis)
def test_a_central_edit_to_a_version_published_here_is_shown_by_field_with_advice_that_works(
        demo: Registry, central: tuple[str, str]) -> None:
    push(demo, *central)
    other = FACILITIES[1]
    with open_central(central) as reg:
        edit_unit(reg, "SL", other, code="MIN-001", origin="cli")
    publish_version(demo, "SL", 1)
    result = pull(demo, *central)
    [row] = result["conflicts"]
    assert (row["field"], row["central"], row["published_here"]) == ("code", "MIN-001", True)
    assert row["name"] == get_unit(demo, "SL", other)["name"]
    assert result["conflicting_units"] == 1 and result["conflicting_units_published_here"] == 1
    shown = _sync_text("pull")(result)
    # a pull cannot change a version published here: --prefer-central is not offered
    assert GENERIC_ADVICE not in shown, shown
    assert "1 unit(s) of a version published here differ centrally" in shown
    assert "'sync postgis push --prefer-local' sends this registry's values" in shown
    # the push says the same (it keeps the version a draft centrally meanwhile)
    out = cli(demo, central, "push")
    assert out.exit_code == 0 and GENERIC_ADVICE not in out.output, out.output
    assert "published here, so nothing can change there" in out.output
    # status lists the held unit with the same advice
    out = cli(demo, central, "status")
    assert "1 unit(s) of a version published here held back" in out.output, out.output
    assert "pull --prefer-central" not in out.output
    assert cli(demo, central, "push", "--prefer-local").exit_code == 0
    assert central_status(central, 1) == "published"
    assert pull(demo, *central)["conflicts"] == []
    assert_equal(demo, central)


@apply(on_postgis)
def test_a_version_published_on_both_sides_with_different_units_says_so(
        demo: Registry, central: tuple[str, str]) -> None:
    push(demo, *central)
    clash = FACILITIES[2]
    with open_central(central) as reg:
        edit_unit(reg, "SL", clash, name="Ministry name", origin="cli")
        publish_version(reg, "SL", 1)
    publish_version(demo, "SL", 1)
    result = pull(demo, *central)
    [row] = result["conflicts"]
    assert row["field"] == "name" and row["published_centrally"] is True
    shown = _sync_text("pull")(result)
    assert GENERIC_ADVICE not in shown and "--prefer-local' sends" not in shown
    assert ("SL v1 is published here and centrally, with these units different" in shown
            and "georeg version new REG --source SL --from 1" in shown), shown


# --- 2, 3, 6: a version deleted here, kept centrally -----------------------------------------


def deleted_here_changed_centrally(demo: Registry, central: tuple[str, str]) -> None:
    create_version(demo, "SL", copy_from=1)
    push(demo, *central)
    with open_central(central) as reg:
        edit_unit(reg, "SL", FACILITIES[1], number=2, name="Ministry rename", origin="cli")
    delete_version(demo, "SL", 2)


@apply(on_postgis)
def test_a_version_in_conflict_is_not_counted_as_a_unit_and_has_its_own_advice(
        demo: Registry, central: tuple[str, str]) -> None:
    deleted_here_changed_centrally(demo, central)
    result = push(demo, *central)
    assert result["conflict_count"] == 1
    assert result["conflicting_units"] == 0 and result["conflicting_versions"] == 1
    assert "pull' brings it back here" in result["conflicts"][0]["remedy"]
    out = cli(demo, central, "push")
    assert out.exit_code == 0, out.output
    assert "unit(s) changed on both sides" not in out.output and GENERIC_ADVICE not in out.output
    assert "1 version(s) in conflict" in out.output
    assert ("SL v2 (the version): here 'deleted here', central '1 unit(s) changed centrally, "
            "not pulled here'") in out.output, out.output
    assert "'sync postgis push --prefer-local' deletes it centrally anyway" in out.output


@apply(on_postgis)
def test_status_lists_the_versions_deleted_here_and_kept_centrally(
        demo: Registry, central: tuple[str, str]) -> None:
    deleted_here_changed_centrally(demo, central)
    push(demo, *central)
    assert status(demo, *central)["held_versions"] == [{"source": "SL", "number": 2}]
    out = cli(demo, central, "status")
    assert out.exit_code == 0, out.output
    assert "SL v2 was deleted here but is kept centrally" in out.output, out.output
    assert json.loads(cli(demo, central, "status", "--json").output)["held_versions"] == [
        {"source": "SL", "number": 2}]
    # a pull brings it back: no longer held (the next push forgets it)
    pull(demo, *central)
    assert status(demo, *central)["held_versions"] == []
    push(demo, *central)
    assert status(demo, *central)["held_versions"] == []
    assert_equal(demo, central)


# --- 4: changes to a version published centrally: the note gives the command -----------------


@apply(on_postgis)
def test_the_refused_note_gives_the_command_that_keeps_the_edits(
        demo: Registry, central: tuple[str, str]) -> None:
    push(demo, *central)
    with open_central(central) as reg:
        publish_version(reg, "SL", 1)
    edit_unit(demo, "SL", FACILITIES[0], name="Renamed in the district")
    result = push(demo, *central)
    [note] = [m for m in result["refused"] if "is published centrally" in m]
    assert "georeg version new REG --source SL --from 1, then pull" in note, note
    assert "make a new version for them" not in note


# --- 5, 8, 9: scheduled runs ------------------------------------------------------------------


@pytest.fixture
def secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "secrets.toml"
    monkeypatch.setenv(scheduler.SECRETS_ENV, str(path))
    return path


@apply(on_postgis)
def test_a_scheduled_push_with_a_version_conflict_does_not_offer_a_side_to_prefer(
        demo: Registry, central: tuple[str, str], secrets: Path) -> None:
    url, schema = central
    save_target(secrets, "ministry", {"url": url, "schema": schema})
    deleted_here_changed_centrally(demo, central)
    add_job(demo, "postgis-push", every="1h", target="ministry")
    [run] = run_now(demo, "postgis-push-ministry")
    assert run.outcome == "ok" and run.error is not None
    assert "1 version(s) in conflict" in run.error, run.error
    assert ("SL v2 was deleted here but changed centrally, and kept there: a pull brings it "
            "back") in run.error
    assert "--prefer-local / --prefer-central" not in run.error
    assert "unit(s) changed on both sides" not in run.error
    assert "'georeg sync postgis status'" in run.error


@apply(on_postgis)
def test_a_scheduled_pull_names_the_remedy_of_each_kind_of_unit_conflict(
        demo: Registry, central: tuple[str, str], secrets: Path) -> None:
    url, schema = central
    save_target(secrets, "ministry", {"url": url, "schema": schema})
    push(demo, *central)
    with open_central(central) as reg:
        edit_unit(reg, "SL", FACILITIES[1], code="MIN-001", origin="cli")
    publish_version(demo, "SL", 1)
    add_job(demo, "postgis-pull", every="1h", target="ministry")
    [run] = run_now(demo, "postgis-pull-ministry")
    assert run.outcome == "ok" and run.error is not None
    assert "1 unit(s) of a version published here differ centrally" in run.error, run.error
    assert "--prefer-central" not in run.error


@apply(on_postgis)
def test_a_scheduled_pull_of_a_version_published_centrally_while_edited_here(
        demo: Registry, central: tuple[str, str], secrets: Path) -> None:
    url, schema = central
    save_target(secrets, "ministry", {"url": url, "schema": schema})
    push(demo, *central)
    with open_central(central) as reg:
        publish_version(reg, "SL", 1)
    edit_unit(demo, "SL", FACILITIES[0], name="Renamed in the district")
    add_job(demo, "postgis-pull", every="1h", target="ministry")
    [run] = run_now(demo, "postgis-pull-ministry")
    assert run.outcome == "ok" and run.error is not None
    assert "1 version(s) in conflict" in run.error and "unit(s)" not in run.error.split(":")[0]
    assert ("a push cannot send them (--prefer-local neither): keep them in a new draft, "
            "georeg version new REG --source SL --from 1, then pull") in run.error, run.error


def dhis2_client(server: FakeDhis2) -> Dhis2Client:
    return Dhis2Client(server.url, username="admin", password="district", retries=0)


def in_dhis2(client: Dhis2Client, uid: str, **values: Any) -> None:
    obj = client.get(f"organisationUnits/{uid}", {"fields": ":owner"})
    obj.update(values)
    assert client.import_metadata({"organisationUnits": [obj]}).ok


@pytest.fixture
def pulled_from_dhis2(tmp_path: Path, secrets: Path) -> Any:
    """A registry pulled from the fake DHIS2 (its target in the secrets file); the
    district renames a unit (not pushed), DHIS2 renames it too."""
    with FakeDhis2("2.41") as server, Registry.create(tmp_path / "d.gpkg") as reg:
        client = dhis2_client(server)
        dhis2_sync.pull(reg, client, "SL")
        save_target(secrets, "play", {"url": server.url, "username": "admin",
                                      "password": "district"})
        U.rename_unit(reg, "SL", NGELEHUN, "District correction", number=1)
        in_dhis2(client, NGELEHUN, name="Changed in DHIS2")
        yield reg


def test_a_scheduled_dhis2_pull_that_held_only_a_group_rename_says_so(
        tmp_path: Path, secrets: Path) -> None:
    """A group renamed both here and in DHIS2, no unit: the run's note is not empty."""
    from tests.test_dhis2_pull_keeps_local import CHP_GROUP, group_here, group_in_dhis2

    with FakeDhis2("2.41") as server, Registry.create(tmp_path / "d.gpkg") as reg:
        client = dhis2_client(server)
        dhis2_sync.pull(reg, client, "SL")
        save_target(secrets, "play", {"url": server.url, "username": "admin",
                                      "password": "district"})
        group_here(reg, CHP_GROUP, name="CHP (district)")
        group_in_dhis2(client, CHP_GROUP, name="CHP (ministry)")
        add_job(reg, "dhis2-pull", every="1d", target="play",
                options={"source": "SL", "since": "last"})
        [run] = run_now(reg, "dhis2-pull-play")
    assert run.outcome == "ok" and run.error is not None, run
    assert run.error.startswith("1 group(s) renamed both here (not pushed yet) and in DHIS2")
    assert "--since last --prefer-remote" in run.error


def test_a_scheduled_dhis2_pull_with_conflicts_gives_dhis2_advice(
        pulled_from_dhis2: Registry) -> None:
    reg = pulled_from_dhis2
    add_job(reg, "dhis2-pull", every="1d", target="play",
            options={"source": "SL", "since": "last"})
    [run] = run_now(reg, "dhis2-pull-play")
    assert run.outcome == "ok" and run.error is not None
    assert "postgis" not in run.error and "--prefer-central" not in run.error, run.error
    assert "1 unit(s) changed both here" in run.error
    assert "--since last --prefer-remote" in run.error and "georeg dhis2 push" in run.error
    assert U.get_unit(reg, "SL", NGELEHUN, 1)["name"] == "District correction"


def test_a_scheduled_dhis2_pull_can_take_dhis2s_values(pulled_from_dhis2: Registry) -> None:
    reg = pulled_from_dhis2
    with pytest.raises(InvalidInput, match="since=last"):
        add_job(reg, "dhis2-pull", every="1d", target="play",
                options={"source": "SL", "prefer": "remote"})
    with pytest.raises(InvalidInput, match="prefer=remote"):
        add_job(reg, "dhis2-pull", every="1d", target="play",
                options={"source": "SL", "since": "last", "prefer": "central"})
    job = add_job(reg, "dhis2-pull", every="1d", target="play",
                  options={"source": "SL", "since": "last", "prefer": "remote"})
    assert job["options"]["prefer"] == "remote"
    [run] = run_now(reg, "dhis2-pull-play")
    assert run.outcome == "ok" and run.error is None, run.error
    assert run.figures["prefer_remote"] is True
    assert [(c["uid"], c["kept"]) for c in run.figures["conflicts"]] == [(NGELEHUN, "dhis2")]
    assert U.get_unit(reg, "SL", NGELEHUN, 1)["name"] == "Changed in DHIS2"


def test_schedule_add_takes_prefer_remote_for_a_dhis2_pull(tmp_path: Path,
                                                           secrets: Path) -> None:
    from georeg.cli_sync import schedule_group

    path = tmp_path / "d.gpkg"
    Registry.create(path).close()
    save_target(secrets, "play", {"url": "http://127.0.0.1:9", "token": "d2pat_x"})
    out = CliRunner().invoke(schedule_group, [
        "add", str(path), "--job", "dhis2-pull", "--cron", "0 2 * * *", "--target", "play",
        "--option", "source=SL", "--option", "since=last", "--option", "prefer=remote"])
    assert out.exit_code == 0, out.output
    with Registry.open(path) as reg, reg.read() as conn:
        options = json.loads(conn.execute(text("SELECT options FROM schedule_job")).scalar_one())
    assert options["prefer"] == "remote"


# --- 7: the exit code of 'status --compare' is in the general help ---------------------------


def test_the_general_help_lists_exit_code_7() -> None:
    from georeg.cli import main

    out = CliRunner().invoke(main, ["--help"])
    assert out.exit_code == 0
    assert "7 the two sides differ (sync postgis status --compare)" in " ".join(out.output.split())
