"""Push review findings (sync2 F1, F2, F3, F7): a version published here is published
centrally only once both sides agree; a version deleted here is not deleted centrally
over the ministry's unpulled edits; a unit new or moved here under a unit deleted
centrally is held, not a stop of the whole push; a second registry's published version
is not taken for this registry's."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from storage.errors import ConflictError
from storage.registry import Registry
from storage.units import add_unit, delete_unit, edit_unit, get_unit, move_unit
from storage.versions import create_version, delete_version, publish_version
from sync.dhis2_json import import_dhis2_files
from sync.postgis_sync import pull, push
from tests.conftest import DEMO_FILES
from tests.test_postgis_sync import FACILITIES, assert_equal, open_central

pytestmark = [pytest.mark.postgis,
              pytest.mark.parametrize("backend", ["gpkg"], indirect=True)]


def central_status(central: tuple[str, str], number: int) -> str | None:
    with open_central(central) as reg, reg.read() as conn:
        value = conn.execute(text("SELECT status FROM source_version WHERE number = :n"),
                             {"n": number}).scalar()
    return None if value is None else str(value)


# --- F1: published here, published centrally only when settled ------------------------


def test_a_version_published_here_stays_a_draft_centrally_while_a_unit_is_held(
        demo: Registry, central: tuple[str, str]) -> None:
    push(demo, *central)
    clash = FACILITIES[0]
    with open_central(central) as reg:
        edit_unit(reg, "SL", clash, name="Ministry name", origin="cli")
    edit_unit(demo, "SL", clash, name="District name")
    publish_version(demo, "SL", 1)
    result = push(demo, *central)
    assert result["versions_published"] == 0 and result["versions_not_published"] == 1
    assert result["held"] == 1 and [c["field"] for c in result["conflicts"]] == ["name"]
    assert any("v1 not published centrally: 1 unit(s) held" in m for m in result["refused"])
    assert central_status(central, 1) == "draft"
    # a plain push again: still held, still a draft there
    again = push(demo, *central)
    assert again["versions_published"] == 0 and central_status(central, 1) == "draft"
    # --prefer-local settles it (the version is published here: its values win) and
    # publishes it
    settled = push(demo, *central, prefer="local")
    assert settled["versions_published"] == 1 and settled["held"] == 0
    assert central_status(central, 1) == "published"
    with open_central(central) as reg:
        assert get_unit(reg, "SL", clash)["name"] == "District name"
    assert_equal(demo, central)


def test_unpulled_central_edits_keep_a_version_published_here_a_draft_there(
        demo: Registry, central: tuple[str, str]) -> None:
    """Not only held units: a central edit of another unit, never pulled, would be
    frozen into the central published version."""
    push(demo, *central)
    other = FACILITIES[1]
    with open_central(central) as reg:
        edit_unit(reg, "SL", other, code="MIN-001", origin="cli")
    edit_unit(demo, "SL", FACILITIES[0], name="District name")
    publish_version(demo, "SL", 1)
    result = push(demo, *central)
    assert result["units_sent"] == 1  # the district's own edit still goes
    assert result["versions_published"] == 0 and central_status(central, 1) == "draft"
    [row] = result["conflicts"]
    assert (row["name"], row["field"], row["central"]) == (
        get_unit(demo, "SL", other)["name"], "code", "MIN-001")
    # the ministry puts it back: the sides agree, the next push publishes
    with open_central(central) as reg:
        edit_unit(reg, "SL", other, code=get_unit(demo, "SL", other)["code"], origin="cli")
    done = push(demo, *central)
    assert done["versions_published"] == 1 and done["held"] == 0
    assert central_status(central, 1) == "published"
    assert_equal(demo, central)


def test_prefer_local_settles_central_edits_a_pull_went_past(
        demo: Registry, central: tuple[str, str]) -> None:
    """A pull cannot bring edits into a version published here (it reports them and
    moves on): the push still sees them, and --prefer-local sends this side's values."""
    push(demo, *central)
    chiefdom = get_unit(demo, "SL", FACILITIES[0])["parent_ref"]
    with open_central(central) as reg:
        edit_unit(reg, "SL", FACILITIES[1], name="Ministry rename", origin="cli")
        delete_unit(reg, "SL", FACILITIES[2], origin="cli")
        add_unit(reg, "SL", name="Ministry CHP", parent=chiefdom, origin="cli")
    publish_version(demo, "SL", 1)
    pull(demo, *central)
    held = push(demo, *central)
    assert held["versions_published"] == 0 and held["held"] == 3
    assert central_status(central, 1) == "draft"
    settled = push(demo, *central, prefer="local")
    assert settled["versions_published"] == 1
    assert_equal(demo, central)


# --- F2: a version deleted here, changed centrally ---------------------------------------


def test_a_version_deleted_here_is_kept_centrally_when_changed_there(
        demo: Registry, central: tuple[str, str]) -> None:
    create_version(demo, "SL", copy_from=1)
    push(demo, *central)
    chiefdom = get_unit(demo, "SL", FACILITIES[0])["parent_ref"]
    with open_central(central) as reg:
        edit_unit(reg, "SL", FACILITIES[1], number=2, name="Ministry rename", origin="cli")
        add_unit(reg, "SL", number=2, name="Ministry CHP", parent=chiefdom, origin="cli")
    delete_version(demo, "SL", 2)
    result = push(demo, *central)
    assert result["versions_deleted"] == 0 and result["versions_held"] == 1
    assert [(c["version"], c["field"], c["local"]) for c in result["conflicts"]] == [
        (2, "(version)", "deleted here")]
    assert any("v2 was deleted here, but 2 unit(s)" in m for m in result["refused"])
    assert central_status(central, 2) == "draft"
    assert push(demo, *central)["versions_held"] == 1  # held until settled
    # a pull brings it back here, with the ministry's edits
    pulled = pull(demo, *central)
    assert pulled["versions_created"] == 1
    assert get_unit(demo, "SL", FACILITIES[1], number=2)["name"] == "Ministry rename"
    back = push(demo, *central)
    assert back["versions_held"] == 0 and back["versions_deleted"] == 0
    assert_equal(demo, central)
    # deleted here again, nothing new centrally: deleted there too
    delete_version(demo, "SL", 2)
    gone = push(demo, *central)
    assert gone["versions_deleted"] == 1 and central_status(central, 2) is None
    assert_equal(demo, central)


def test_prefer_local_deletes_a_held_version(demo: Registry,
                                             central: tuple[str, str]) -> None:
    create_version(demo, "SL", copy_from=1)
    push(demo, *central)
    with open_central(central) as reg:
        edit_unit(reg, "SL", FACILITIES[1], number=2, name="Ministry rename", origin="cli")
    delete_version(demo, "SL", 2)
    assert push(demo, *central)["versions_held"] == 1
    result = push(demo, *central, prefer="local")
    assert result["versions_deleted"] == 1 and result["versions_held"] == 0
    assert central_status(central, 2) is None
    assert_equal(demo, central)


def test_a_pull_between_the_delete_and_the_push_does_not_lose_the_central_edits(
        demo: Registry, central: tuple[str, str]) -> None:
    """A pull skips a version deleted here (and its marker moves past the edits in
    it): the push still sees them."""
    create_version(demo, "SL", copy_from=1)
    push(demo, *central)
    delete_version(demo, "SL", 2)
    with open_central(central) as reg:
        edit_unit(reg, "SL", FACILITIES[1], number=2, name="Ministry rename", origin="cli")
    pull(demo, *central)
    result = push(demo, *central)
    assert result["versions_held"] == 1 and result["versions_deleted"] == 0
    assert central_status(central, 2) == "draft"


# --- F3: new or moved here under a unit deleted centrally ------------------------------


@pytest.mark.parametrize("batch", [1, 500])
def test_units_under_a_unit_deleted_centrally_are_held_and_the_rest_is_sent(
        demo: Registry, central: tuple[str, str], batch: int) -> None:
    push(demo, *central)
    chiefdom = get_unit(demo, "SL", FACILITIES[0])["parent_ref"]
    elsewhere = next(ref for ref in FACILITIES
                     if get_unit(demo, "SL", ref)["parent_ref"] != chiefdom)
    chiefdom_name = get_unit(demo, "SL", chiefdom)["name"]
    with open_central(central) as reg:
        delete_unit(reg, "SL", chiefdom, recursive=True, origin="cli")
    new = add_unit(demo, "SL", name="New under the chiefdom", parent=chiefdom)
    add_unit(demo, "SL", name="New below that", parent=new["uuid"])
    move_unit(demo, "SL", elsewhere, chiefdom)
    edit_unit(demo, "SL", FACILITIES[9] if FACILITIES[9] != elsewhere else FACILITIES[8],
              name="Unrelated rename")
    result = push(demo, *central, batch_size=batch)
    by_name = {c["name"]: c for c in result["conflicts"]}
    moved_name = get_unit(demo, "SL", elsewhere)["name"]
    assert set(by_name) == {chiefdom_name, "New under the chiefdom", "New below that",
                            moved_name}
    assert by_name[chiefdom_name]["field"] == "(unit)"
    assert by_name[chiefdom_name]["local"] == "3 unit(s) below it changed here"
    assert by_name["New under the chiefdom"]["local"] == f"under {chiefdom_name} here"
    assert by_name["New below that"]["local"] == "under New under the chiefdom here"
    assert by_name["New below that"]["central"] == f"absent ({chiefdom_name} deleted centrally)"
    assert (by_name[moved_name]["local"], by_name[moved_name]["central"]) == (
        f"moved here under {chiefdom_name}", f"{chiefdom_name} deleted centrally")
    assert result["held"] == 4
    with open_central(central) as reg:
        assert get_unit(reg, "SL", elsewhere)["parent_ref"] != chiefdom  # left where it is
        with reg.read() as conn:
            names = set(conn.execute(text("SELECT name FROM org_unit")).scalars())
        assert "Unrelated rename" in names and "New under the chiefdom" not in names
    again = push(demo, *central)  # reported the same way, nothing stops
    assert {c["name"] for c in again["conflicts"]} == set(by_name)
    settled = push(demo, *central, prefer="local")
    assert settled["held"] == 0
    with open_central(central) as reg:
        assert get_unit(reg, "SL", elsewhere)["parent_ref"] == chiefdom
        assert get_unit(reg, "SL", new["uuid"])["name"] == "New under the chiefdom"
    # the chiefdom's other units, deleted centrally and untouched here, go on pull
    assert pull(demo, *central)["conflict_count"] == 0
    assert_equal(demo, central)


# --- F7: a second registry, published versions ---------------------------------------


def test_a_second_registry_pushing_a_published_version_is_stopped(
        demo: Registry, central: tuple[str, str], tmp_path: Path) -> None:
    publish_version(demo, "SL", 1)
    push(demo, *central)
    with Registry.create(str(tmp_path / "other.gpkg")) as other:
        import_dhis2_files(other, DEMO_FILES, source="SL")  # same data, its own uuids
        publish_version(other, "SL", 1)
        with pytest.raises(ConflictError, match="Is another registry pushing the same source"):
            push(other, *central)


def test_a_published_version_pushed_again_after_the_sync_state_is_lost(
        demo: Registry, central: tuple[str, str]) -> None:
    """The same registry (its sync state gone): the same units, recorded as sent."""
    publish_version(demo, "SL", 1)
    push(demo, *central)
    with demo.write(origin="sync", audit=False) as conn:
        conn.execute(text("DELETE FROM sync_state"))
    again = push(demo, *central)
    assert again["units_sent"] == 0
    assert_equal(demo, central)
