"""A GIS officer's day with the registry: versions, edits, moves, audit — on every backend."""

from __future__ import annotations

import pytest
from shapely import Point, Polygon
from sqlalchemy import text

from storage import tree, units, versions
from storage.audit import history
from storage.errors import ConflictError, CycleError, InvalidInput, NotFound, PublishedVersionError
from storage.registry import Registry

BO = "O6uvpzGd5pu"  # Bo district in the Sierra Leone demo
BO_CHIEFDOM = "vWbkYPRmKyS"  # Baoma chiefdom, in Bo
WESTERN_AREA = "at6UHUQatSo"
FACILITY = "kbGqmM6ZWWV"  # Allen Town Health Post, Western Area / Freetown


def test_demo_import_builds_the_whole_tree(demo: Registry) -> None:
    c = tree.counts(demo, "SL")
    assert c["total"] == 1332
    assert [lv["units"] for lv in c["levels"]] == [1, 13, 152, 1166]
    assert [lv["territories"] for lv in c["levels"]] == [0, 13, 152, 0]
    assert [lv["points"] for lv in c["levels"]] == [0, 0, 0, 601]
    assert [t["type"] for t in c["types"]] == ["National", "District", "Chiefdom", "Facility"]
    with demo.read() as conn:
        sets = conn.execute(text(
            "SELECT s.name, count(m.fid) FROM group_set s LEFT JOIN group_set_member m "
            "ON m.version_id = s.version_id AND m.set_key = s.set_key GROUP BY s.name "
            "ORDER BY s.name")).all()
    assert [tuple(r) for r in sets] == [("Area", 4), ("Facility Ownership", 4),
                                        ("Facility Type", 5), ("Location Rural/Urban", 2)]
    summary = tree.tree_summary(demo, "SL", max_depth=2)
    assert summary["nodes"][0]["name"] == "Sierra Leone"
    assert summary["nodes"][0]["units_below"] == 1331
    districts = summary["nodes"][1:]
    assert len(districts) == 13
    assert sum(d["units_below"] for d in districts) == 1331 - 13


def test_paths_match_dhis2_paths(demo: Registry) -> None:
    """Our materialised path follows the same ancestry DHIS2 recorded for the unit."""
    chain = [u["source_ref"] for u in tree.ancestors(demo, "SL", FACILITY)]
    assert chain == ["ImspTQPwCqd", WESTERN_AREA, "C9uduqDZr9d"]
    kids = tree.children(demo, "SL", BO)
    assert len(kids) == 15 and all(k["parent_ref"] == BO for k in kids)
    sub = tree.subtree(demo, "SL", BO)
    assert len(sub) == 141 and sub[0]["depth"] >= 2


def test_new_draft_is_a_full_copy_and_independent(demo: Registry) -> None:
    versions.publish_version(demo, "SL", 1, make_default=True)
    made = versions.create_version(demo, "SL", copy_from=1)
    assert made["number"] == 2 and made["units"] == 1332 and made["territories"] == 165
    assert made["memberships"] == tree_memberships(demo, 1)
    units.rename_unit(demo, "SL", BO, "Bo District", number=2)
    assert units.get_unit(demo, "SL", BO, 1)["name"] == "Bo"
    v2 = units.get_unit(demo, "SL", BO, 2)
    v1 = units.get_unit(demo, "SL", BO, 1)
    assert v2["name"] == "Bo District" and v2["uuid"] == v1["uuid"]
    assert units.get_unit(demo, "SL", FACILITY, 2)["groups"] == units.get_unit(
        demo, "SL", FACILITY, 1)["groups"]
    listed = versions.list_versions(demo, "SL")
    assert [(v["number"], v["status"], v["default"]) for v in listed] == [
        (1, "published", True), (2, "draft", False)]


def tree_memberships(reg: Registry, number: int) -> int:
    with reg.read() as conn:
        v = versions.resolve_version(conn, "SL", number)
        return int(conn.execute(text("SELECT count(*) FROM group_membership WHERE version_id = :v"),
                                {"v": v.id}).scalar_one())


def test_move_keeps_subtree_paths_right(demo: Registry) -> None:
    before = {u["uuid"] for u in tree.subtree(demo, "SL", BO_CHIEFDOM)}
    units.move_unit(demo, "SL", BO_CHIEFDOM, WESTERN_AREA)
    moved = tree.subtree(demo, "SL", BO_CHIEFDOM)
    assert {u["uuid"] for u in moved} == before
    western = {u["uuid"] for u in tree.subtree(demo, "SL", WESTERN_AREA)}
    assert before <= western
    assert not before & {u["uuid"] for u in tree.subtree(demo, "SL", BO)}
    chain = [u["source_ref"] for u in tree.ancestors(demo, "SL", moved[-1]["uuid"])]
    assert chain[:3] == ["ImspTQPwCqd", WESTERN_AREA, BO_CHIEFDOM]


def test_cycles_are_refused(demo: Registry) -> None:
    with pytest.raises(CycleError):
        units.move_unit(demo, "SL", BO, BO_CHIEFDOM)
    # Even when written as plain SQL, the database refuses it.
    with pytest.raises(CycleError):
        with demo.write() as conn:
            key = conn.execute(text("SELECT unit_key FROM org_unit WHERE source_ref = :r"),
                               {"r": BO_CHIEFDOM}).scalar_one()
            conn.execute(text("UPDATE org_unit SET parent_key = :k WHERE source_ref = :r"),
                         {"k": key, "r": BO})


def test_add_edit_close_delete_with_audit(demo: Registry) -> None:
    added = units.add_unit(demo, "SL", name="Kakua New CHP", parent=BO_CHIEFDOM, type="Facility",
                           code="KNC", location=Point(-11.7, 7.9), author="awa",
                           validation_status="new")
    assert added["parent_ref"] == BO_CHIEFDOM and added["depth"] == 4
    units.edit_unit(demo, "SL", added["uuid"], name="Kakua Community CHP", aliases=["KCC"],
                    author="awa")
    units.close_unit(demo, "SL", added["uuid"], "2024-06-30", author="awa")
    units.set_geometry(demo, "SL", added["uuid"], location=Point(-11.71, 7.91), author="awa")
    log = history(demo, unit=added["uuid"])
    ops = [(e["op"], sorted(e["changes"])) for e in log]
    assert ops == [
        ("update", ["location"]),
        ("update", ["closed_date"]),
        ("update", ["aliases", "name"]),
        ("insert", sorted(log[-1]["changes"])),
    ]
    assert log[2]["changes"]["name"] == ["Kakua New CHP", "Kakua Community CHP"]
    assert log[0]["changes"]["location"] == ["POINT (-11.7 7.9)", "POINT (-11.71 7.91)"]
    assert all(e["author"] == "awa" and e["origin"] == "api" for e in log)
    units.delete_unit(demo, "SL", added["uuid"])
    assert history(demo, unit=added["uuid"], limit=1)[0]["op"] == "delete"
    with pytest.raises(NotFound):
        units.get_unit(demo, "SL", added["uuid"])


def test_territory_and_groups_are_audited(demo: Registry) -> None:
    square = Polygon([(-11.8, 7.8), (-11.6, 7.8), (-11.6, 8.0), (-11.8, 8.0)])
    units.set_geometry(demo, "SL", FACILITY, territory=square)
    units.set_group_membership(demo, "SL", FACILITY, "CHC", True)
    units.set_group_membership(demo, "SL", FACILITY, "Urban", False)
    shown = units.get_unit(demo, "SL", FACILITY)
    assert shown["has_territory"] and "CHC" in shown["groups"] and "Urban" not in shown["groups"]
    log = history(demo, unit=shown["uuid"], limit=3)
    assert [(e["entity"], e["op"]) for e in log] == [
        ("group_membership", "delete"), ("group_membership", "insert"), ("territory", "insert")]
    assert log[2]["changes"]["territory"][1].startswith("MULTIPOLYGON")


def test_bad_edits_name_the_field(demo: Registry) -> None:
    with pytest.raises(InvalidInput, match="'name'"):
        units.edit_unit(demo, "SL", BO, name="  ")
    with pytest.raises(InvalidInput, match="closed_date .* before opening_date"):
        units.edit_unit(demo, "SL", BO, opening_date="2020-01-01", closed_date="2019-01-01")
    with pytest.raises(InvalidInput, match="'type'"):
        units.edit_unit(demo, "SL", BO, type="Province")
    with pytest.raises(InvalidInput, match="opening_date"):
        units.edit_unit(demo, "SL", BO, opening_date="31/12/2020")
    with pytest.raises(ConflictError, match="already used"):
        units.add_unit(demo, "SL", name="Dup", parent=BO, source_ref=BO_CHIEFDOM)
    with pytest.raises(NotFound, match="parent|No unit"):
        units.add_unit(demo, "SL", name="Lost", parent="nope")
    with pytest.raises(ConflictError, match="units below it"):
        units.delete_unit(demo, "SL", BO)
    assert units.get_unit(demo, "SL", BO)["name"] == "Bo"


def test_published_version_is_read_only_through_the_api_and_sql(demo: Registry) -> None:
    versions.publish_version(demo, "SL", 1)
    with pytest.raises(PublishedVersionError, match="new draft"):
        units.rename_unit(demo, "SL", BO, "Bo!")
    with pytest.raises(PublishedVersionError):
        with demo.write() as conn:  # raw SQL on our own connection: the trigger refuses it
            conn.execute(text("UPDATE org_unit SET name = 'x' WHERE source_ref = :r"), {"r": BO})
    with pytest.raises(PublishedVersionError):
        with demo.write() as conn:
            conn.execute(text("DELETE FROM org_unit_territory"))
    with pytest.raises(PublishedVersionError):
        with demo.write() as conn:
            conn.execute(text("UPDATE source_version SET status = 'draft'"))
    with pytest.raises(PublishedVersionError):
        versions.delete_version(demo, "SL", 1)
    assert units.get_unit(demo, "SL", BO)["name"] == "Bo"


def test_unknown_source_and_version_say_what_exists(demo: Registry) -> None:
    with pytest.raises(NotFound, match="Sources here: SL"):
        tree.counts(demo, "Ministry")
    with pytest.raises(NotFound, match="no version 7"):
        tree.counts(demo, "SL", 7)
