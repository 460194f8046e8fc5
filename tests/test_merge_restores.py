"""A merge brings deleted units back as themselves, and deleting many units is no mismatch.

The story: the ministry's list ("MoH", published v1) and a field survey ("Survey",
imported from a CSV by `georeg import`) are matched and the links reviewed.  The GIS
officer works in drafts of the ministry's list and merges the survey into them.
Found in the review of the merge flow:

* the officer deleted a facility by mistake and merged the survey again with
  ``--re-add-deleted``: the facility came back as a *new* unit (new uuid), so its
  history, its change requests, its submissions and its DHIS2 id no longer pointed at
  it.  Like Kart or DHIS2, a merge now **restores** the unit: same uuid, as it was when
  deleted (the change log keeps the delete with the old values), logged as a restore —
  and says in the report which units were restored, and which could not be (added
  as new, as before, with the reason);
* the officer closed down most of the facilities of a district (deleted them) and
  merged: more than half of the linked units were gone, and the merge stopped with
  "The links of … no longer describe these versions".  A clean-up is legitimate: the
  links of deleted units are dropped and reported.  Links made for *other* versions
  (uuids that never were in the version's line) still stop the merge.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapely.geometry import Polygon
from sqlalchemy import text

from storage import geometry, units, versions
from storage.errors import InvalidInput
from storage.merging import merge_by_rules
from storage.registry import Registry
from tests.test_merge_remerge import cli, ok, reviewed_lists
from tests.test_merge_rules_safety import build_ministry


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """The ministry's list, the survey imported by `georeg import`, matched and reviewed
    (every link accepted: 7 links, one per place both lists have)."""
    return reviewed_lists(tmp_path)


def merge(path: Path, target: str, *extra: str) -> dict:
    rules = str(path.parent / "rules.toml")
    return json.loads(ok("merge", str(path), "--target", target, "--from", "Survey:1",
                         "--rules", rules, "--json", *extra))


def unit(path: Path, source: str, number: int, **where: str) -> dict | None:
    """One unit of a version (uuid, key, name, code, ref, status, parent name, location,
    territory, groups), found by uuid, ref or name."""
    (column, value), = where.items()
    with Registry.open(path) as reg, reg.read() as conn:
        v = versions.resolve_version(conn, source, number)
        row = conn.execute(text(
            "SELECT u.uuid, u.unit_key, u.name, u.code, u.source_ref, u.validation_status, "
            f"p.name AS parent, {geometry.select_sql(reg.backend, 'u.location')} AS location, "
            f"(SELECT {geometry.select_sql(reg.backend, 't.territory')} FROM "
            "org_unit_territory t WHERE t.unit_fid = u.fid) AS territory FROM org_unit u "
            "LEFT JOIN org_unit p ON p.version_id = u.version_id AND p.unit_key = u.parent_key "
            f"WHERE u.version_id = :v AND u.{column} = :x"), {"v": v.id, "x": value}).first()
        if row is None:
            return None
        out = dict(row._mapping)
        for key in ("location", "territory"):
            geom = geometry.decode(reg.backend, out[key])
            out[key] = None if geom is None else geom.wkt
        out["groups"] = sorted(conn.execute(text(
            "SELECT g.name FROM group_membership m JOIN org_unit_group g ON g.version_id = "
            "m.version_id AND g.group_key = m.group_key WHERE m.version_id = :v AND "
            "m.unit_key = :k"), {"v": v.id, "k": row.unit_key}).scalars())
        return out


def count(path: Path, source: str, number: int, name: str) -> int:
    with Registry.open(path) as reg, reg.read() as conn:
        v = versions.resolve_version(conn, source, number)
        return int(conn.execute(text("SELECT count(*) FROM org_unit WHERE version_id = :v AND "
                                     "name = :n"), {"v": v.id, "n": name}).scalar_one())


# --- 1: --re-add-deleted restores the deleted unit ------------------------------------------


def test_a_facility_deleted_by_mistake_comes_back_as_itself(registry: Path) -> None:
    """The first merge adds the survey's Gbo Health Post and its annex (MoH v2).  In v3
    the officer renames the health post, then deletes it with its annex by mistake, and
    merges the survey again with --re-add-deleted: both come back with their uuids (and
    keys), the renamed name, the annex under the health post — logged as restores."""
    first = merge(registry, "MoH:1")  # v2
    added = {a["name"]: a["uuid"] for a in first["added"]}
    ok("version", "new", str(registry), "-s", "MoH", "--from", "2")  # v3
    ok("unit", "edit", str(registry), "-s", "MoH", "-v", "3", "SV-9",
       "--name", "Gbo Health Post (new)")
    before = unit(registry, "MoH", 3, source_ref="SV-9")
    assert before is not None
    ok("unit", "delete", str(registry), "-s", "MoH", "-v", "3", "SV-9", "--recursive")

    back = merge(registry, "MoH:3", "--re-add-deleted")  # v4
    assert back["counts"]["re_added"] == 2 and back["counts"]["restored"] == 2
    assert {(r["name"], r["uuid"], r["deleted_uuid"], r["restored"]) for r in back["re_added"]} \
        == {("Gbo Health Post (new)", added["Gbo Health Post"], added["Gbo Health Post"], True),
            ("Gbo Clinic Annex", added["Gbo Clinic Annex"], added["Gbo Clinic Annex"], True)}
    assert any("2 unit(s) deleted here since an earlier merge added them or a match linked "
               "them were restored, as asked (--re-add-deleted): same uuid" in w
               for w in back["warnings"])

    restored = unit(registry, "MoH", 4, uuid=added["Gbo Health Post"])
    assert restored == before  # same uuid, key, name, ref, status, place, location
    annex = unit(registry, "MoH", 4, uuid=added["Gbo Clinic Annex"])
    assert annex is not None and annex["parent"] == "Gbo Health Post (new)"
    assert count(registry, "MoH", 4, "Gbo Clinic Annex") == 1

    # the unit's history runs on: added, renamed, deleted, restored
    history = json.loads(ok("history", str(registry), "--unit", added["Gbo Health Post"],
                            "--json"))
    ops = [(h["op"], h["version"]) for h in history if h["entity"] == "org_unit"]
    assert ops[:3] == [("restore", 4), ("insert", 4), ("delete", 3)]
    assert "deleted in MoH v3" in history[0]["changes"]["restores"][1]
    text_history = ok("history", str(registry), "--unit", added["Gbo Health Post"])
    assert "restore org_unit Gbo Health Post (new) [MoH v4]" in text_history

    # the text report says it too, and the merge after that finds them (no third copy)
    out = " ".join(ok("merge", str(registry), "--target", "MoH:3", "--from", "Survey:1",
                      "--re-add-deleted", "--dry-run").split())
    assert "2 added (2 restored)" in out and "were restored, as asked (--re-add-deleted)" in out
    after = merge(registry, "MoH:4")  # v5
    assert after["counts"]["added"] == 0 and after["counts"]["restored"] == 0
    assert count(registry, "MoH", 5, "Gbo Health Post (new)") == 1


def test_a_linked_ministry_unit_comes_back_with_its_dhis2_id_groups_and_area(
        registry: Path) -> None:
    """The match linked the ministry's Lowoma MCHP (ref F4, its DHIS2 id) to the survey's
    Lowomma CHP.  In a draft, the officer gives it a code, a territory and a group, then
    deletes it by mistake.  Merging the survey with --re-add-deleted restores the
    ministry's unit — its uuid, ref F4, name, code, group and territory — and the rules
    then apply as for any matched pair (here: the survey's location)."""
    ok("version", "new", str(registry), "-s", "MoH", "--from", "1")  # v2
    with Registry.open(registry) as reg:
        with reg.write() as conn:
            v2 = versions.resolve_version(conn, "MoH", 2)
            conn.execute(text("INSERT INTO org_unit_group (version_id, name) VALUES "
                              "(:v, 'Rural facilities')"), {"v": v2.id})
            fid = conn.execute(text("SELECT fid FROM org_unit WHERE version_id = :v AND "
                                    "source_ref = 'F4'"), {"v": v2.id}).scalar_one()
            units.set_territory(reg, conn, fid, Polygon([(-11.3, 7.8), (-11.2, 7.8),
                                                        (-11.2, 7.9), (-11.3, 7.8)]))
        units.edit_unit(reg, "MoH", "F4", number=2, code="LOW-01")
        units.set_group_membership(reg, "MoH", "F4", "Rural facilities", True, number=2)
    before = unit(registry, "MoH", 2, source_ref="F4")
    assert before is not None and before["groups"] == ["Rural facilities"]
    assert before["code"] == "LOW-01" and before["territory"].startswith("MULTIPOLYGON")
    ok("unit", "delete", str(registry), "-s", "MoH", "-v", "2", "F4")

    kept_out = merge(registry, "MoH:2")  # v3: the delete stands
    assert [d["name"] for d in kept_out["deleted_here"]] == ["Lowomma CHP"]
    assert unit(registry, "MoH", 3, source_ref="F4") is None

    back = merge(registry, "MoH:2", "--re-add-deleted")  # v4
    assert back["counts"]["restored"] == 1
    assert [(r["name"], r["uuid"], r["by"]) for r in back["re_added"]] == [
        ("Lowoma MCHP", before["uuid"], "link")]
    restored = unit(registry, "MoH", 4, uuid=before["uuid"])
    assert restored is not None
    assert {k: restored[k] for k in ("unit_key", "name", "code", "source_ref", "parent",
                                     "validation_status", "territory", "groups")} \
        == {k: before[k] for k in ("unit_key", "name", "code", "source_ref", "parent",
                                   "validation_status", "territory", "groups")}
    assert restored["location"] == "POINT (-11.2905 7.8401)"  # location = "source"
    assert count(registry, "MoH", 4, "Lowomma CHP") == 0  # no stranger beside it


def test_a_unit_whose_delete_the_log_does_not_hold_is_added_as_new_and_the_report_says_why(
        registry: Path) -> None:
    """A delete written with the change log off (a set-based tool) leaves nothing to
    restore from: the unit is added again as a new unit, as before, and the report
    says it could not be restored, and why."""
    first = merge(registry, "MoH:1")  # v2
    ok("version", "new", str(registry), "-s", "MoH", "--from", "2")  # v3
    with Registry.open(registry) as reg, reg.write(audit=False) as conn:
        v3 = versions.resolve_version(conn, "MoH", 3)
        conn.execute(text("DELETE FROM org_unit WHERE version_id = :v AND name = "
                          "'Gbo Clinic Annex'"), {"v": v3.id})
    back = merge(registry, "MoH:3", "--re-add-deleted")  # v4
    assert back["counts"]["re_added"] == 1 and back["counts"]["restored"] == 0
    (entry,) = back["re_added"]
    old = {a["name"]: a["uuid"] for a in first["added"]}["Gbo Clinic Annex"]
    assert entry["restored"] is False and entry["deleted_uuid"] == old
    assert entry["uuid"] != old and "change log holds no delete" in entry["why"]
    assert any("could not be restored (the change log holds no delete of it in this line) "
               "and were added again as new units (new uuids)" in w for w in back["warnings"])
    assert count(registry, "MoH", 4, "Gbo Clinic Annex") == 1


def test_a_restored_units_ref_taken_since_comes_back_without_it(registry: Path) -> None:
    """After deleting the health post the officer gave its ref to Kenema Hospital: the
    health post is restored without the ref (two units cannot share it), and told so."""
    first = merge(registry, "MoH:1")  # v2
    ok("version", "new", str(registry), "-s", "MoH", "--from", "2")  # v3
    ok("unit", "delete", str(registry), "-s", "MoH", "-v", "3", "SV-9", "--recursive")
    ok("unit", "edit", str(registry), "-s", "MoH", "-v", "3", "F3", "--ref", "SV-9")
    back = merge(registry, "MoH:3", "--re-add-deleted")  # v4
    assert back["counts"]["restored"] == 2
    health_post = {a["name"]: a["uuid"] for a in first["added"]}["Gbo Health Post"]
    restored = unit(registry, "MoH", 4, uuid=health_post)
    assert restored is not None and restored["source_ref"] is None
    assert any("restored without its ref 'SV-9'" in w for w in back["warnings"])
    assert unit(registry, "MoH", 4, source_ref="SV-9")["name"] == "Kenema Hospital"


# --- 2: many linked units deleted is a clean-up, not a mismatch ------------------------------


def test_closing_down_most_linked_facilities_does_not_stop_the_merge(registry: Path) -> None:
    """The officer deletes four of the ministry's facilities (closed for good) in a draft:
    four of the run's seven links now miss their ministry unit.  The merge goes on: those
    links are dropped and reported, their survey units are not added back as new."""
    ok("version", "new", str(registry), "-s", "MoH", "--from", "1")  # v2
    for ref in ("F1", "F2", "F3", "F4"):
        ok("unit", "delete", str(registry), "-s", "MoH", "-v", "2", ref)

    report = merge(registry, "MoH:2")  # v3
    links = report["links"]
    assert (links["stale_target"], links["deleted_target"]) == (4, 4)
    assert (links["stale_source"], links["deleted_source"]) == (0, 0)
    assert report["counts"]["matched"] == 3
    assert any("4 link(s) are stale" in w and "4 point to units deleted since the match "
               "(4 in MoH v2 or a version it was copied from, 0 in Survey v1" in w
               and "dropped" in w for w in report["warnings"])
    assert sorted(d["name"] for d in report["deleted_here"]) == [
        "Baoma MCHP", "Bo CHP", "Kenema Hospital", "Lowomma CHP"]
    assert report["counts"]["added"] == 2  # only the survey-only health post and annex
    for name in ("Bo CHP", "Baoma MCHP", "Kenema Hospital", "Lowomma CHP", "Lowoma MCHP"):
        assert count(registry, "MoH", 3, name) == 0


def test_a_survey_cleaned_up_in_its_own_version_does_not_stop_the_merge(
        registry: Path) -> None:
    """The survey team deletes four of its units in Survey v1 itself (no copy made): the
    change log holds the deletes, so the links are dropped, not taken for a mismatch."""
    with Registry.open(registry) as reg:
        for ref in ("SV-4", "SV-5", "SV-6", "SV-7"):
            units.delete_unit(reg, "Survey", ref)
        report = merge_by_rules(reg, "MoH:1", "Survey:1", dry_run=True)
    assert (report["links"]["stale_source"], report["links"]["deleted_source"]) == (4, 4)
    assert report["counts"]["matched"] == 3 and report["counts"]["unmatched_target"] == 4


def test_links_made_for_a_re_imported_list_still_stop_even_after_a_clean_up(
        registry: Path, tmp_path: Path) -> None:
    """The survey imported again (Survey v2: new uuids) with the old run: its uuids never
    were in Survey v2's line, so the merge stops — deleting units on the ministry's side
    changes nothing to that."""
    ok("version", "new", str(registry), "-s", "MoH", "--from", "1")  # v2
    for ref in ("F1", "F2"):
        ok("unit", "delete", str(registry), "-s", "MoH", "-v", "2", ref)
    ok("import", str(registry), str(tmp_path / "survey.csv"), "-s", "Survey")  # Survey v2
    done = cli("merge", str(registry), "--target", "MoH:2", "--from", "Survey:2")
    assert done.returncode != 0
    message = " ".join(done.stderr.split())
    assert "no longer describe these versions" in message
    assert "7 point to units that are not in Survey v2" in message
    assert "never were in these versions" in message
    with Registry.open(registry) as reg:
        with pytest.raises(InvalidInput, match="not in Survey v2"):
            merge_by_rules(reg, "MoH:2", "Survey:2", dry_run=True)
        assert [v["number"] for v in versions.list_versions(reg, "MoH")] == [1, 2]


# --- the same on every backend ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["spatialite", pytest.param("postgis",
                                                                marks=pytest.mark.postgis)])
def test_restoring_and_dropping_links_on_other_backends(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The linked-unit story through the Python API, on SpatiaLite and PostGIS (their
    change logs are written by other triggers): the deleted unit's link is dropped, the
    unit is not added again, and --re-add-deleted restores it with its uuid, code,
    group and territory, with a 'restore' entry in the change log."""
    from storage.audit import history
    from tests.conftest import _drop, location_for

    reg = Registry.create(location_for(backend, tmp_path, request))
    try:
        u = build_ministry(reg)
        versions.create_version(reg, "Survey", create_source_if_missing=True)
        s = {"SL": units.add_unit(reg, "Survey", name="Sierra Leone", type="National",
                                  source_ref="SV-1")["uuid"]}
        s["KE"] = units.add_unit(reg, "Survey", name="Kenema", parent=s["SL"], type="District",
                                 source_ref="SV-3")["uuid"]
        s["F4"] = units.add_unit(reg, "Survey", name="Lowomma CHP", parent=s["KE"],
                                 type="Facility", source_ref="SV-7")["uuid"]
        links = [(u["Sierra Leone"], s["SL"]), (u["Kenema"], s["KE"]),
                 (u["Lowoma MCHP"], s["F4"])]
        versions.create_version(reg, "MoH", copy_from=1)  # v2
        area = Polygon([(-11.3, 7.8), (-11.2, 7.8), (-11.2, 7.9), (-11.3, 7.8)])
        with reg.write() as conn:
            v2 = versions.resolve_version(conn, "MoH", 2)
            conn.execute(text("INSERT INTO org_unit_group (version_id, name) VALUES "
                              "(:v, 'Rural facilities')"), {"v": v2.id})
            fid = conn.execute(text("SELECT fid FROM org_unit WHERE version_id = :v AND "
                                    "source_ref = 'F4'"), {"v": v2.id}).scalar_one()
            units.set_territory(reg, conn, fid, area)
        units.edit_unit(reg, "MoH", "F4", number=2, code="LOW-01")
        units.set_group_membership(reg, "MoH", "F4", "Rural facilities", True, number=2)
        units.delete_unit(reg, "MoH", "F4", number=2)

        kept = merge_by_rules(reg, "MoH:2", "Survey:1", links=links, dry_run=True)
        assert (kept["links"]["stale_target"], kept["links"]["deleted_target"]) == (1, 1)
        assert kept["counts"]["deleted_here"] == 1 and kept["counts"]["added"] == 0

        back = merge_by_rules(reg, "MoH:2", "Survey:1", links=links, re_add_deleted=True)
        assert back["counts"]["restored"] == 1
        assert [r["uuid"] for r in back["re_added"]] == [u["Lowoma MCHP"]]
        with reg.read() as conn:
            v3 = versions.resolve_version(conn, "MoH", 3)
            row = conn.execute(text(
                "SELECT u.name, u.code, u.source_ref, p.name, "
                f"{geometry.select_sql(reg.backend, 't.territory')} FROM org_unit u "
                "JOIN org_unit p ON p.version_id = u.version_id AND p.unit_key = u.parent_key "
                "JOIN org_unit_territory t ON t.unit_fid = u.fid "
                "WHERE u.version_id = :v AND u.uuid = :u"),
                {"v": v3.id, "u": u["Lowoma MCHP"]}).one()
            groups = conn.execute(text(
                "SELECT g.name FROM group_membership m JOIN org_unit_group g ON g.version_id "
                "= m.version_id AND g.group_key = m.group_key JOIN org_unit x ON "
                "x.version_id = m.version_id AND x.unit_key = m.unit_key "
                "WHERE m.version_id = :v AND x.uuid = :u"),
                {"v": v3.id, "u": u["Lowoma MCHP"]}).scalars().all()
        assert tuple(row[:4]) == ("Lowoma MCHP", "LOW-01", "F4", "Kenema")
        assert geometry.decode(reg.backend, row[4]).equals(geometry.as_multipolygon(area))
        assert groups == ["Rural facilities"]
        ops = [h["op"] for h in history(reg, unit=u["Lowoma MCHP"]) if h["entity"] == "org_unit"]
        assert ops[:3] == ["restore", "insert", "delete"]
    finally:
        _drop(reg)
