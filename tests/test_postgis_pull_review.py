"""PostGIS pull and status after review "sync2" (F5, F8): a version the ministry publishes
while the district still edits it (its own wording, a remedy that works, and
``--prefer-central`` that keeps the district's edits in a new draft instead of throwing
them away), exit codes of ``status --compare``, and summaries whose words say what the
numbers are (push counts, group changes on pull, parents by name, an unfinished first push).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import shapely
from click.testing import CliRunner, Result
from sqlalchemy import text

from georeg.cli_sync import _sync_text, sync_group
from storage.errors import NotFound
from storage.registry import Registry
from storage.units import add_unit, delete_unit, edit_unit, get_unit, move_unit
from storage.versions import create_version, delete_version, publish_version
from sync import postgis_sync
from sync.postgis_sync import central_location, pull, push, status, target_name
from tests.conftest import cli_location

pytestmark = [pytest.mark.postgis, pytest.mark.parametrize("backend", ["gpkg"], indirect=True)]

FACILITY = "DiszpKrYNg8"
OTHER = "BV4IomHvri4"  # in another chiefdom (Yoni)


def open_central(central: tuple[str, str]) -> Registry:
    return Registry.open(central_location(*central))


def assert_equal(reg: Registry, central: tuple[str, str]) -> None:
    report = status(reg, *central, compare=True)
    assert report["equal"], {k: v for k, v in report["tables"].items() if not v["equal"]}


def cli(reg: Registry, central: tuple[str, str], *args: str) -> Result:
    url, schema = central
    return CliRunner().invoke(sync_group, ["postgis", args[0], cli_location(reg), "--url", url,
                                           "--schema", schema, *args[1:]])


def published_centrally_while_edited_here(demo: Registry, central: tuple[str, str],
                                          push_first: bool) -> dict[str, Any]:
    """The district pushed v1 (a draft); the ministry published it; the district renamed
    one unit and added one in it afterwards (pushed, so held — or not pushed yet)."""
    push(demo, *central)
    with open_central(central) as reg:
        publish_version(reg, "SL", 1)
    chiefdom = get_unit(demo, "SL", FACILITY)["parent_ref"]
    edit_unit(demo, "SL", FACILITY, name="Renamed in the district")
    added = add_unit(demo, "SL", name="District's new CHP", parent=chiefdom,
                     location=shapely.Point(-11.7, 7.9))
    if push_first:
        refused = push(demo, *central)
        assert refused["units_sent"] == 0 and refused["held"] == 2
    return added


def more_edits(demo: Registry, added: dict[str, Any]) -> dict[str, Any]:
    """A unit added under the new one, another deleted, another moved."""
    below = add_unit(demo, "SL", name="Outreach post", parent=added["uuid"])
    delete_unit(demo, "SL", OTHER)
    move_unit(demo, "SL", "ctfiYW0ePJ8", get_unit(demo, "SL", FACILITY)["parent_ref"])
    return below


def test_a_version_published_centrally_while_edited_here_is_one_version_conflict(
        demo: Registry, central: tuple[str, str]) -> None:
    published_centrally_while_edited_here(demo, central, push_first=True)
    result = pull(demo, *central)
    [row] = result["conflicts"]
    # a version, not a unit: no uuid shown as None, the units changed here named, and a
    # remedy that works (a new draft keeps them) instead of --prefer-local
    assert row["kind"] == "version" and row["field"] == "(status)"
    assert row["units_changed_here"] == 2
    assert sorted(row["unit_names"]) == ["District's new CHP", "Renamed in the district"]
    assert "georeg version new REG --source SL --from 1" in row["remedy"]
    assert get_unit(demo, "SL", FACILITY)["name"] == "Renamed in the district"
    out = cli(demo, central, "pull")
    assert out.exit_code == 0, out.output
    assert "[None]" not in out.output and "unit(s) changed on both sides" not in out.output
    assert "1 version(s) in conflict" in out.output
    assert ("SL v1 (the version): here 'draft with 2 unit(s) changed here, not sent', "
            "central 'published'") in out.output, out.output
    assert "'push --prefer-local' cannot send these units" in out.output
    assert "georeg version new REG --source SL --from 1" in out.output
    # status: these held units are not settled by push --prefer-local; it says what does
    data = status(demo, *central)
    assert {h["published_centrally"] for h in data["held_units"]} == {True}
    out = cli(demo, central, "status")
    assert "SL v1 is published centrally: 2 unit(s) changed here" in out.output, out.output
    assert "settle with push --prefer-local" not in out.output
    assert "Renamed in the district" in out.output


@pytest.mark.parametrize("push_first", [True, False], ids=["held", "not-pushed"])
def test_pull_prefer_central_keeps_the_district_edits_in_a_new_draft(
        demo: Registry, central: tuple[str, str], push_first: bool) -> None:
    added = published_centrally_while_edited_here(demo, central, push_first)
    below = more_edits(demo, added)
    result = pull(demo, *central, prefer="central")
    assert result["conflict_count"] == 0, result["conflicts"]
    # v1 here is the ministry's published v1 …
    assert get_unit(demo, "SL", FACILITY, number=1)["name"] != "Renamed in the district"
    with demo.read() as conn:
        statuses: dict[int, str] = dict(conn.execute(text(
            "SELECT number, status FROM source_version")).all())
    assert statuses == {1: "published", 2: "draft"}
    # … and nothing made here is lost: v2 holds both edits, and the note says so by name
    assert get_unit(demo, "SL", FACILITY, number=2)["name"] == "Renamed in the district"
    assert get_unit(demo, "SL", added["uuid"], number=2)["name"] == "District's new CHP"
    assert get_unit(demo, "SL", below["uuid"], number=2)["name"] == "Outreach post"
    with pytest.raises(NotFound):
        get_unit(demo, "SL", OTHER, number=2)
    for gone in (added["uuid"], below["uuid"]):  # v1 is the ministry's: not there
        with pytest.raises(NotFound):
            get_unit(demo, "SL", gone, number=1)
    assert get_unit(demo, "SL", OTHER, number=1)["name"]  # back, as the ministry has it
    assert get_unit(demo, "SL", "ctfiYW0ePJ8", number=1)["parent_ref"] != get_unit(
        demo, "SL", FACILITY, number=1)["parent_ref"]
    [note] = [w for w in result["warnings"] if "published centrally" in w]
    assert "5 unit(s) changed here" in note and "Renamed in the district" in note
    assert "kept in draft v2" in note
    # the next push sends the new draft, refuses nothing, holds nothing; both sides equal
    sent = push(demo, *central)
    assert sent["versions_created"] == 1 and not sent["refused"] and sent["held"] == 0
    assert_equal(demo, central)
    assert status(demo, *central)["held"] == []


def test_a_draft_made_by_hand_first_lets_the_pull_take_the_central_version(
        demo: Registry, central: tuple[str, str]) -> None:
    """The remedy the conflict gives: version new --from N, then pull (no flag)."""
    published_centrally_while_edited_here(demo, central, push_first=True)
    create_version(demo, "SL", copy_from=1)
    result = pull(demo, *central)
    assert result["conflict_count"] == 0 and result["versions_published"] == 1
    assert any("kept in draft v2" in w for w in result["warnings"])
    assert get_unit(demo, "SL", FACILITY, number=2)["name"] == "Renamed in the district"
    pushed = push(demo, *central)
    assert not pushed["refused"] and pushed["held"] == 0
    assert_equal(demo, central)


def test_a_draft_made_before_the_last_edit_does_not_keep_it(
        demo: Registry, central: tuple[str, str]) -> None:
    published_centrally_while_edited_here(demo, central, push_first=False)
    create_version(demo, "SL", copy_from=1)
    edit_unit(demo, "SL", FACILITY, number=2, name="Worked on further in v2")
    edit_unit(demo, "SL", OTHER, number=1, name="Edited in v1 after the copy")
    result = pull(demo, *central)
    assert [c.get("kind") for c in result["conflicts"]] == ["version"]
    assert get_unit(demo, "SL", OTHER, number=1)["name"] == "Edited in v1 after the copy"
    # a draft made after it (the draft's own later edits do not matter) keeps everything
    create_version(demo, "SL", copy_from=1)
    edit_unit(demo, "SL", FACILITY, number=3, name="Worked on further in v3")
    result = pull(demo, *central)
    assert result["conflict_count"] == 0 and any("kept in draft v3" in w
                                                 for w in result["warnings"])
    assert get_unit(demo, "SL", OTHER, number=3)["name"] == "Edited in v1 after the copy"


# --- F8: exit codes and summaries ------------------------------------------------------------


def test_status_compare_exit_codes(demo: Registry, central: tuple[str, str]) -> None:
    push(demo, *central)
    out = cli(demo, central, "status", "--compare")
    assert out.exit_code == 0 and "Both sides are equal." in out.output, out.output
    with open_central(central) as reg:
        edit_unit(reg, "SL", FACILITY, name="Changed at the ministry", origin="cli")
    out = cli(demo, central, "status", "--compare")
    assert out.exit_code == 7 and "The sides differ" in out.output, out.output
    out = cli(demo, central, "status", "--compare", "--json")
    assert out.exit_code == 7 and json.loads(out.output)["equal"] is False
    out = CliRunner().invoke(sync_group, [
        "postgis", "status", cli_location(demo), "--compare", "--url",
        "postgresql://postgres@127.0.0.1:1/none"])
    assert out.exit_code == 1 and "Cannot reach" in out.output, out.output


def test_status_after_a_first_push_that_did_not_finish(demo: Registry,
                                                       central: tuple[str, str]) -> None:
    postgis_sync.SyncState(target_name(central_location(*central))).save(demo)
    out = cli(demo, central, "status")
    assert out.exit_code == 0, out.output
    assert "None" not in out.output and "no push has finished yet" in out.output


def test_push_summary_words_say_what_the_numbers_are(demo: Registry,
                                                     central: tuple[str, str]) -> None:
    push(demo, *central)
    chiefdom = get_unit(demo, "SL", FACILITY)["parent_ref"]
    edit_unit(demo, "SL", FACILITY, name="Renamed")
    move_unit(demo, "SL", OTHER, chiefdom)
    delete_unit(demo, "SL", "fwxkctgmffZ", recursive=True)  # a chiefdom and its facilities
    out = cli(demo, central, "push")
    assert out.exit_code == 0, out.output
    assert "1 with changed values, 1 moved" in out.output
    assert "unit(s) deleted centrally (subtrees included)" in out.output
    create_version(demo, "SL", copy_from=1)
    push(demo, *central)
    delete_version(demo, "SL", 2)
    out = cli(demo, central, "push")
    assert "Versions: 0 created, 0 published, 1 deleted centrally." in out.output, out.output


def test_pull_summary_counts_group_changes(demo: Registry, central: tuple[str, str]) -> None:
    push(demo, *central)
    with open_central(central) as reg, reg.write(origin="cli") as conn:
        conn.execute(text("UPDATE org_unit_group SET name = 'Renamed at the ministry' "
                          "WHERE fid = (SELECT min(fid) FROM org_unit_group)"))
    out = cli(demo, central, "pull")
    assert out.exit_code == 0, out.output
    assert "1 group(s) or group set(s) added or changed" in out.output, out.output


def test_parent_conflicts_show_the_parents_names(demo: Registry,
                                                 central: tuple[str, str]) -> None:
    push(demo, *central)
    here, there = "fwxkctgmffZ", get_unit(demo, "SL", OTHER)["parent_ref"]
    with open_central(central) as reg:
        move_unit(reg, "SL", FACILITY, there, origin="cli")
    move_unit(demo, "SL", FACILITY, here)
    out = cli(demo, central, "pull", "--json")
    result = json.loads(out.output)
    [row] = [c for c in result["conflicts"] if c["field"] == "parent"]
    assert row["local"] == get_unit(demo, "SL", here)["uuid"]  # the JSON keeps the uuids
    assert row["local_parent_name"] == get_unit(demo, "SL", here)["name"]
    assert row["central_parent_name"] == get_unit(demo, "SL", there)["name"]
    shown = _sync_text("pull")(result)
    assert (f"parent: here {get_unit(demo, 'SL', here)['name']!r}, "
            f"central {get_unit(demo, 'SL', there)['name']!r}") in shown, shown
    # two parents of one name are told apart by their refs
    same = result | {"conflicts": [row | {"central_parent_name": row["local_parent_name"]}]}
    shown = _sync_text("pull")(same)
    name = row["local_parent_name"]
    assert (f"here '{name} (ref {row['local_parent_ref']})', "
            f"central '{name} (ref {row['central_parent_ref']})'") in shown, shown
    held = push(demo, *central)  # the push's rows are named too
    [row] = [c for c in held["conflicts"] if c["field"] == "parent"]
    assert row["local_parent_name"] == get_unit(demo, "SL", here)["name"]


def test_a_draft_pulled_from_central_does_not_count_as_keeping_the_edits(
        demo: Registry, central: tuple[str, str]) -> None:
    push(demo, *central)
    with open_central(central) as reg:
        publish_version(reg, "SL", 1)
        create_version(reg, "SL", copy_from=1, description="the ministry's next draft")
    edit_unit(demo, "SL", FACILITY, number=1, name="Renamed in the district")
    for _ in range(2):  # the second pull sees the central draft here, copied from v1
        result = pull(demo, *central)
        assert [c.get("kind") for c in result["conflicts"]] == ["version"]
    assert get_unit(demo, "SL", FACILITY, number=1)["name"] == "Renamed in the district"


def test_a_push_says_once_that_a_published_version_held_its_units(
        demo: Registry, central: tuple[str, str]) -> None:
    """Changes read in several batches: one note for the version, counting them all."""
    added = published_centrally_while_edited_here(demo, central, push_first=False)
    more_edits(demo, added)
    result = push(demo, *central, batch_size=1)
    [note] = result["refused"]
    assert note.startswith("SL v1 is published centrally: 5 changed unit(s) not sent"), note
    assert result["held"] == 5 and result["units_sent"] == 0
