"""Merge: by links and rules, 3-way with conflicts, resolution, the publish guard.

The story: the ministry's list (source "MoH") and a field survey (source
"Survey") are matched; a reviewer merges them with rules (names and codes from
the ministry, coordinates from the survey, survey-only facilities added as
'new').  Later the QGIS officer and the field team each edit a draft of the
same published version, and the two drafts are merged 3-way: what does not
overlap combines, what does becomes a conflict that blocks publishing until
someone settles it.

Runs on GeoPackage; the full 3-way story runs on PostGIS and SpatiaLite too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import Point, box
from sqlalchemy import text

from storage import units, versions
from storage.audit import history
from storage.errors import (
    Cancelled,
    ConflictError,
    CycleError,
    InvalidInput,
    NotFound,
)
from storage.merging import (
    Rules,
    RulesMergeJob,
    ThreeWayMergeJob,
    list_conflicts,
    merge_by_rules,
    merge_three_way,
    resolve_conflict,
)
from storage.registry import Registry
from tests.conftest import _drop, location_for

ROOT = Path(__file__).resolve().parent.parent

# --- building blocks ---------------------------------------------------------------------

BO_BOX = box(-12.0, 7.5, -11.5, 8.2)
KENEMA_BOX = box(-11.4, 7.6, -10.9, 8.2)


def add_types(reg: Registry) -> None:
    with reg.write() as conn:
        for name, depth in (("National", 1), ("District", 2), ("Facility", 3)):
            conn.execute(text("INSERT INTO org_unit_type (name, depth) VALUES (:n, :d)"),
                         {"n": name, "d": depth})


def build_moh(reg: Registry, source: str = "MoH") -> dict[str, str]:
    """Sierra > Bo (Bo CHP, Baoma MCHP), Kenema (Kenema Hospital). Returns name → uuid."""
    versions.create_version(reg, source, create_source_if_missing=True)
    u: dict[str, str] = {}

    def add(name: str, parent: str | None, type_: str, ref: str, **kw: Any) -> None:
        made = units.add_unit(reg, source, name=name, parent=u.get(parent or ""), type=type_,
                              source_ref=ref, **kw)
        u[name] = made["uuid"]

    add("Sierra", None, "National", "SL")
    add("Bo", "Sierra", "District", "BO", territory=BO_BOX)
    add("Kenema", "Sierra", "District", "KE", territory=KENEMA_BOX)
    add("Bo CHP", "Bo", "Facility", "F1", code="C-1", location=Point(-11.74, 7.96))
    add("Baoma MCHP", "Bo", "Facility", "F2", code="C-2", location=Point(-11.70, 7.90))
    add("Kenema Hospital", "Kenema", "Facility", "F3", code="C-3", location=Point(-11.19, 7.88))
    return u


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    registry = Registry.create(tmp_path / "merge.gpkg")
    add_types(registry)
    yield registry
    registry.close()


def unit(reg: Registry, source: str, ident: str, number: int) -> dict[str, Any]:
    return units.get_unit(reg, source, ident, number)


def names(reg: Registry, source: str, number: int) -> dict[str, dict[str, Any]]:
    with reg.read() as conn:
        v = versions.resolve_version(conn, source, number)
        rows = conn.execute(text("SELECT uuid FROM org_unit WHERE version_id = :v"),
                            {"v": v.id}).all()
    out = {}
    for (uuid,) in rows:
        d = units.get_unit(reg, source, uuid, number)
        out[d["name"]] = d
    return out


def add_link(reg: Registry, left: tuple[str, int], left_uuid: str, right: tuple[str, int],
             right_uuid: str, status: str = "accepted", run_id: int | None = None,
             kind: str = "one_to_one") -> None:
    """A link row as the matcher (storage/matching) and reviewers store them."""
    with reg.write() as conn:
        lv = versions.resolve_version(conn, *left)
        rv = versions.resolve_version(conn, *right)
        conn.execute(
            text("INSERT INTO link (run_id, left_version_id, left_unit_uuid, right_version_id, "
                 "right_unit_uuid, score, status, kind) VALUES (:r, :lv, :lu, :rv, :ru, 0.99, :s, "
                 ":k)"),
            {"r": run_id, "lv": lv.id, "lu": left_uuid, "rv": rv.id, "ru": right_uuid,
             "s": status, "k": kind},
        )


def version_numbers(reg: Registry, source: str) -> list[int]:
    return [v["number"] for v in versions.list_versions(reg, source)]


# --- merge by links and rules ------------------------------------------------------------


def build_survey(reg: Registry, moh: dict[str, str]) -> dict[str, str]:
    """The survey: the same tree with its own spellings and GPS points, plus a new post."""
    versions.create_version(reg, "Survey", create_source_if_missing=True)
    s: dict[str, str] = {}

    def add(name: str, parent: str | None, type_: str, **kw: Any) -> None:
        made = units.add_unit(reg, "Survey", name=name, parent=s.get(parent or ""), type=type_,
                              **kw)
        s[name] = made["uuid"]

    add("SIERRA LEONE", None, "National")
    add("Bo District", "SIERRA LEONE", "District")
    add("Kenema District", "SIERRA LEONE", "District")
    add("Bo Community Health Post", "Bo District", "Facility", code="S-1",
        location=Point(-11.7402, 7.9601))
    add("Baoma Maternal CHP", "Bo District", "Facility", location=Point(-11.7011, 7.9012),
        opening_date="1999-05-01")
    add("Kenema Govt Hospital", "Kenema District", "Facility", location=Point(-11.1905, 7.8801))
    add("Gbo Health Post", "Bo District", "Facility", location=Point(-11.80, 7.70),
        source_ref="SV-9")
    add("Gbo Clinic Annex", "Gbo Health Post", "Facility", location=Point(-11.81, 7.71))
    pairs = [("Sierra", "SIERRA LEONE"), ("Bo", "Bo District"), ("Kenema", "Kenema District"),
             ("Bo CHP", "Bo Community Health Post"), ("Baoma MCHP", "Baoma Maternal CHP"),
             ("Kenema Hospital", "Kenema Govt Hospital")]
    for m, v in pairs:
        add_link(reg, ("MoH", 1), moh[m], ("Survey", 1), s[v],
                 status="accepted" if m != "Kenema Hospital" else "auto")
    return s


RULES = Rules.from_mapping({
    "name": "target", "code": "target_non_empty", "location": "source",
    "opening_date": "source_non_empty", "groups": "union",
    "unmatched_source": "add_as_new", "unmatched_target": "keep",
})


def test_ministry_names_and_survey_coordinates_make_a_new_draft(reg: Registry) -> None:
    moh = build_moh(reg)
    s = build_survey(reg, moh)
    units.add_group(reg, "MoH", "Public")
    units.set_group_membership(reg, "MoH", moh["Bo CHP"], "Public", True)
    units.add_group(reg, "Survey", "CHP", source_ref="g-chp")
    for name in ("Bo Community Health Post", "Gbo Health Post"):
        units.set_group_membership(reg, "Survey", s[name], "CHP", True)
    versions.publish_version(reg, "MoH", 1)
    report = merge_by_rules(reg, "MoH:1", "Survey:1", rules=RULES, author="kofi")

    assert report["version"]["label"] == "MoH v2" and report["version"]["status"] == "draft"
    assert report["counts"]["matched"] == 6 and report["counts"]["added"] == 2
    assert report["links"]["used"] == 6
    merged = names(reg, "MoH", 2)
    chp = merged["Bo CHP"]  # the ministry's name and code, the survey's point
    assert chp["uuid"] == moh["Bo CHP"] and chp["code"] == "C-1"
    assert chp["location"] == pytest.approx([-11.7402, 7.9601])
    assert merged["Baoma MCHP"]["opening_date"] == "1999-05-01"  # target had none
    assert merged["Kenema Hospital"]["location"] == pytest.approx([-11.1905, 7.8801])
    # the survey-only post is added as 'new' under the ministry's Bo, its annex under it
    post = merged["Gbo Health Post"]
    assert post["validation_status"] == "new" and post["parent_uuid"] == moh["Bo"]
    assert post["source_ref"] == "SV-9" and post["uuid"] not in moh.values()
    assert merged["Gbo Clinic Annex"]["parent_uuid"] == post["uuid"]
    assert merged["Gbo Clinic Annex"]["depth"] == 4
    assert len(merged) == 8
    # groups = "union": the ministry's group and the survey's (created in the new draft)
    assert chp["groups"] == ["CHP", "Public"] and post["groups"] == ["CHP"]
    assert report["counts"]["groups_created"] == 1
    # the target version is untouched; the change log says the merge did it, and who
    assert unit(reg, "MoH", moh["Bo CHP"], 1)["location"] == pytest.approx([-11.74, 7.96])
    entry = history(reg, unit=moh["Bo CHP"], limit=1)[0]
    assert entry["origin"] == "merge" and entry["author"] == "kofi"
    # integrity checks ran on the new draft: the annex is a facility under a facility
    checks = report["checks"]
    assert checks["version"]["label"] == "MoH v2"
    assert {f["check"] for f in checks["findings"]} >= {"level_type_mismatch"}
    assert report["merge_run"] is not None


def test_units_of_an_accepted_split_are_neither_added_twice_nor_left_out(
        reg: Registry) -> None:
    """The survey split "Bo CHP" in two: both survey units are the ministry's Bo CHP.

    The first link pairs them; the second survey unit is known to be the same place,
    so it must not come back as a 'new' duplicate under Bo."""
    moh = build_moh(reg)
    s = build_survey(reg, moh)
    annex = units.add_unit(reg, "Survey", name="Bo CHP Annex", parent=s["Bo District"],
                           type="Facility", location=Point(-11.7403, 7.9602))["uuid"]
    with reg.write() as conn:  # the matcher marks both links of a split with kind 'split'
        conn.execute(text("UPDATE link SET kind = 'split' WHERE right_unit_uuid = :u"),
                     {"u": s["Bo Community Health Post"]})
    add_link(reg, ("MoH", 1), moh["Bo CHP"], ("Survey", 1), annex, status="accepted",
             kind="split")
    report = merge_by_rules(reg, "MoH:1", "Survey:1", rules=RULES, author="kofi")
    merged = names(reg, "MoH", 2)
    assert "Bo CHP Annex" not in merged and "Bo Community Health Post" not in merged
    assert merged["Bo CHP"]["uuid"] == moh["Bo CHP"]
    assert report["links"]["ignored_second_links"] == 1
    assert report["counts"]["matched"] == 6 and report["counts"]["added"] == 2


def test_rules_file_unmatched_target_and_parent_from_source(reg: Registry,
                                                            tmp_path: Path) -> None:
    moh = build_moh(reg)
    s = build_survey(reg, moh)
    units.move_unit(reg, "Survey", s["Baoma Maternal CHP"], s["Kenema District"])
    units.add_unit(reg, "MoH", name="Old Dispensary", parent=moh["Bo"], type="Facility")
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text('name = "source"\nparent = "source"\nunmatched_source = "ignore"\n'
                          'unmatched_target = "close"\n')
    report = merge_by_rules(reg, "MoH:1", "Survey:1", rules=Rules.from_file(rules_file))
    merged = names(reg, "MoH", 2)
    assert report["counts"]["added"] == 0 and "Gbo Health Post" not in merged
    assert merged["Bo Community Health Post"]["uuid"] == moh["Bo CHP"]
    # the survey filed Baoma under Kenema: the target-side match of that parent
    assert merged["Baoma Maternal CHP"]["parent_uuid"] == moh["Kenema"]
    assert merged["Old Dispensary"]["closed_date"] is not None  # only the ministry has it
    assert merged["Bo Community Health Post"]["closed_date"] is None


def test_bad_rules_and_missing_links_are_clear_errors(reg: Registry, tmp_path: Path) -> None:
    build_moh(reg)
    versions.create_version(reg, "Survey", create_source_if_missing=True)
    units.add_unit(reg, "Survey", name="X", type="National")
    bad = tmp_path / "rules.toml"
    bad.write_text('nmae = "target"\n')
    with pytest.raises(InvalidInput, match="unknown key 'nmae'"):
        Rules.from_file(bad)
    bad.write_text('location = "newest"\n')
    with pytest.raises(InvalidInput, match="location = 'newest' is not allowed"):
        Rules.from_file(bad)
    bad.write_text('name = "union"\n')
    with pytest.raises(InvalidInput, match="name = 'union'"):
        Rules.from_file(bad)
    with pytest.raises(InvalidInput, match="No accepted or auto links .* georeg match"):
        merge_by_rules(reg, "MoH:1", "Survey:1")
    with pytest.raises(InvalidInput, match="same version"):
        merge_by_rules(reg, "MoH:1", "MoH:1")
    with pytest.raises(NotFound, match="no version 7"):
        merge_by_rules(reg, "MoH:1", "Survey:7")
    with pytest.raises(NotFound, match="No match run 99"):
        merge_by_rules(reg, "MoH:1", "Survey:1", links_run=99)
    assert version_numbers(reg, "MoH") == [1]


def test_dry_run_reports_and_writes_nothing(reg: Registry) -> None:
    moh = build_moh(reg)
    build_survey(reg, moh)
    report = merge_by_rules(reg, "MoH:1", "Survey:1", rules=RULES, dry_run=True)
    assert report["dry_run"] and report["counts"]["added"] == 2 and report["merge_run"] is None
    assert report["checks"]["version"]["label"] == "MoH v2"
    assert version_numbers(reg, "MoH") == [1]
    with reg.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM merge_run")).scalar_one() == 0


def test_links_from_a_real_match_run_and_a_reviewers_decision(reg: Registry) -> None:
    """The matcher (storage/matching) links the lists; 'review' links are not used until a
    reviewer accepts them."""
    from storage.matching.job import MatchJob

    moh = build_moh(reg)
    s = build_survey(reg, moh)
    with reg.write() as conn:
        conn.execute(text("DELETE FROM link"))  # only the matcher's links from here on
    run = MatchJob(reg, "MoH:1", "Survey:1").run()["run"]
    with reg.read() as conn:
        statuses = dict(conn.execute(text(
            "SELECT right_unit_uuid, status FROM link WHERE run_id = :r"), {"r": run}).all())
    usable = sum(1 for st in statuses.values() if st in ("auto", "accepted"))
    report = merge_by_rules(reg, "MoH:1", "Survey:1", rules=RULES, links_run=run,
                            dry_run=True)
    assert report["links"]["run_id"] == run and report["counts"]["matched"] == usable
    assert report["counts"]["added"] == 8 - usable  # every unlinked survey unit is added
    pending = [u for u, st in statuses.items() if st == "review"]
    with reg.write() as conn:  # a reviewer accepts the links still under review
        conn.execute(text("UPDATE link SET status = 'accepted', reviewer = 'kofi' "
                          "WHERE run_id = :r AND status = 'review'"), {"r": run})
    report = merge_by_rules(reg, "MoH:1", "Survey:1", rules=RULES)  # newest run by default
    assert report["counts"]["matched"] == usable + len(pending)
    merged = names(reg, "MoH", 2)
    assert merged["Bo CHP"]["location"] == pytest.approx([-11.7402, 7.9601])
    assert "Gbo Health Post" in merged and s["Gbo Health Post"] not in {
        m["uuid"] for m in merged.values()}


def test_officer_edits_and_field_change_requests_merge_3_way(reg: Registry) -> None:
    """Theirs is the draft the field team's approved change requests landed in."""
    from storage import change_requests as cr

    u = three_drafts(reg)
    units.rename_unit(reg, "MoH", u["Kenema Hospital"], "Kenema Govt Hospital", number=2)
    made = cr.create_change_request(reg, "MoH", unit=u["Kenema Hospital"], number=1,
                                    values={"location": [-11.1903, 7.8802], "code": "K-1"},
                                    created_by="amina")
    done = cr.approve_change_request(reg, made["id"], reviewer="kofi")
    assert done["applied_to"] == "MoH v3"
    report = merge3(reg)
    assert report["conflicts"] == []
    merged = unit(reg, "MoH", u["Kenema Hospital"], 4)
    assert merged["name"] == "Kenema Govt Hospital" and merged["code"] == "K-1"
    assert merged["location"] == pytest.approx([-11.1903, 7.8802])


# --- atomicity ---------------------------------------------------------------------------


def test_error_or_cancel_mid_merge_leaves_no_version(reg: Registry) -> None:
    moh = build_moh(reg)
    build_survey(reg, moh)
    with reg.read() as conn:
        log_before = conn.execute(text("SELECT count(*) FROM change_log")).scalar_one()

    job = RulesMergeJob(reg, "MoH:1", "Survey:1", rules=RULES)

    def explode(progress: Any) -> None:
        if progress.message == "Updating units":
            raise RuntimeError("disk on fire")

    job.on_progress(explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        job.run()

    job = RulesMergeJob(reg, "MoH:1", "Survey:1", rules=RULES)
    job.on_progress(lambda p: job.cancel() if p.message == "Deleting units" else None)
    with pytest.raises(Cancelled):
        job.run()

    assert version_numbers(reg, "MoH") == [1]
    with reg.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM change_log")).scalar_one() == log_before
        assert conn.execute(text("SELECT count(*) FROM merge_run")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM org_unit")).scalar_one() == 6 + 8


def test_three_way_job_runs_in_a_thread_and_cancels_cleanly(reg: Registry) -> None:
    u = three_drafts(reg)
    units.rename_unit(reg, "MoH", u["Bo"], "Bo A", number=2)
    units.rename_unit(reg, "MoH", u["Bo"], "Bo B", number=3)
    job = ThreeWayMergeJob(reg, "MoH:1", "MoH:2", "MoH:3")
    job.on_progress(lambda p: job.cancel() if p.message == "Checking the new draft" else None)
    job.start()
    with pytest.raises(Cancelled):
        job.finalize()
    assert version_numbers(reg, "MoH") == [1, 2, 3]
    with reg.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM merge_conflict")).scalar_one() == 0
    job = ThreeWayMergeJob(reg, "MoH:1", "MoH:2", "MoH:3")
    seen: list[str] = []
    job.on_progress(lambda p: seen.append(p.message))
    job.start()
    assert job.finalize()["counts"]["conflicts"] == 1
    assert "Planning" in seen and "Checking the new draft" in seen


def test_killed_merge_leaves_no_version(tmp_path: Path) -> None:
    path = tmp_path / "kill.gpkg"
    with Registry.create(path) as r:
        add_types(r)
        moh = build_moh(r)
        build_survey(r, moh)
    script = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from storage.registry import Registry\n"
        "from storage.merging import RulesMergeJob\n"
        f"job = RulesMergeJob(Registry.open({str(path)!r}), 'MoH:1', 'Survey:1')\n"
        "job.on_progress(lambda p: os.kill(os.getpid(), 9) if p.message == 'Updating units' "
        "else None)\n"
        "job.run()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()
    with Registry.open(path) as r:
        assert version_numbers(r, "MoH") == [1]
        with r.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM merge_run")).scalar_one() == 0


# --- 3-way merge -------------------------------------------------------------------------


def three_drafts(reg: Registry) -> dict[str, str]:
    """MoH v1 published; v2 = the QGIS officer's draft ('ours'), v3 = the field team's."""
    u = build_moh(reg)
    versions.publish_version(reg, "MoH", 1, make_default=True)
    versions.create_version(reg, "MoH", copy_from=1)
    versions.create_version(reg, "MoH", copy_from=1)
    return u


def merge3(reg: Registry, **kw: Any) -> dict[str, Any]:
    return merge_three_way(reg, "MoH:1", "MoH:2", "MoH:3", **kw)


def test_non_overlapping_changes_combine_without_conflict(reg: Registry) -> None:
    u = three_drafts(reg)
    units.rename_unit(reg, "MoH", u["Bo CHP"], "Bo Town CHP", number=2)
    units.set_geometry(reg, "MoH", u["Bo CHP"], number=3, location=Point(-11.7405, 7.9605))
    units.edit_unit(reg, "MoH", u["Baoma MCHP"], number=3, code="C-2b", aliases=["Baoma"])
    units.move_unit(reg, "MoH", u["Kenema Hospital"], u["Bo"], number=2)
    units.add_unit(reg, "MoH", name="New Post", parent=u["Kenema"], type="Facility", number=3,
                   location=Point(-11.2, 7.9))
    units.edit_unit(reg, "MoH", u["Kenema"], number=2, extra_fields={"pop": 1})
    units.edit_unit(reg, "MoH", u["Kenema"], number=3, extra_fields={"chief": "A"})
    # the same change on both sides is taken once
    units.edit_unit(reg, "MoH", u["Sierra"], number=2, code="SLE")
    units.edit_unit(reg, "MoH", u["Sierra"], number=3, code="SLE")

    report = merge3(reg, author="fatmata")
    assert report["counts"]["conflicts"] == 0 and report["conflicts"] == []
    assert report["version"]["label"] == "MoH v4"
    merged = names(reg, "MoH", 4)
    chp = merged["Bo Town CHP"]
    assert chp["location"] == pytest.approx([-11.7405, 7.9605])
    assert merged["Baoma MCHP"]["code"] == "C-2b" and merged["Baoma MCHP"]["aliases"] == ["Baoma"]
    assert merged["Kenema Hospital"]["parent_uuid"] == u["Bo"]
    assert merged["Kenema Hospital"]["path"].count("/") == 4
    assert merged["New Post"]["parent_uuid"] == u["Kenema"]
    assert merged["Kenema"]["extra_fields"] == {"pop": 1, "chief": "A"}
    assert merged["Sierra"]["code"] == "SLE"
    assert report["checks"]["ok"]
    versions.publish_version(reg, "MoH", 4)  # nothing open: publishing works


def test_same_field_edited_twice_is_a_conflict_until_resolved(reg: Registry) -> None:
    u = three_drafts(reg)
    units.rename_unit(reg, "MoH", u["Bo CHP"], "Bo Government CHP", number=2)
    units.rename_unit(reg, "MoH", u["Bo CHP"], "Bo Town CHP", number=3)
    units.set_geometry(reg, "MoH", u["Bo CHP"], number=2, location=Point(-11.7, 7.9))
    units.edit_unit(reg, "MoH", u["Bo CHP"], number=3, code="C-9")  # no overlap: taken

    report = merge3(reg)
    assert report["counts"]["conflicts"] == 1
    (c,) = report["conflicts"]
    assert (c["kind"], c["field"], c["base"], c["ours"], c["theirs"]) == (
        "field", "name", "Bo CHP", "Bo Government CHP", "Bo Town CHP")
    merged = unit(reg, "MoH", u["Bo CHP"], 4)
    assert merged["name"] == "Bo CHP"  # base value while open
    assert merged["code"] == "C-9" and merged["location"] == pytest.approx([-11.7, 7.9])

    with pytest.raises(ConflictError, match="1 unresolved merge conflict"):
        versions.publish_version(reg, "MoH", 4)
    # the database refuses it as well, whoever asks
    with pytest.raises(ConflictError, match="unresolved merge conflicts"), \
            reg.write() as conn:
        conn.execute(text("UPDATE source_version SET status = 'published' WHERE fid = "
                          "(SELECT fid FROM source_version WHERE number = 4)"))

    listed = list_conflicts(reg, "MoH:4", status="open")
    assert [x["id"] for x in listed] == [c["id"]] and listed[0]["unit_name"] == "Bo CHP"
    with pytest.raises(InvalidInput, match="still has 1 open merge conflict"):
        merge_three_way(reg, "MoH:1", "MoH:4", "MoH:3")  # it would lose the conflict
    with pytest.raises(ConflictError, match="cannot be copied"):
        versions.create_version(reg, "MoH", copy_from=4)  # so would a copy
    done = resolve_conflict(reg, c["id"], "value", "Bo Town Government CHP", resolver="kofi")
    assert done["status"] == "resolved" and done["resolution"] == "value"
    assert done["resolver"] == "kofi" and done["resolved_value"] == "Bo Town Government CHP"
    assert unit(reg, "MoH", u["Bo CHP"], 4)["name"] == "Bo Town Government CHP"
    entry = history(reg, unit=u["Bo CHP"], limit=1)[0]
    assert entry["origin"] == "merge" and entry["author"] == "kofi"
    with pytest.raises(ConflictError, match="already resolved"):
        resolve_conflict(reg, c["id"], "ours")
    assert list_conflicts(reg, "MoH:4", status="open") == []
    published = versions.publish_version(reg, "MoH", 4)
    assert published["status"] == "published"


def test_resolving_with_typed_values_of_every_kind(reg: Registry) -> None:
    u = three_drafts(reg)
    chp = u["Bo CHP"]
    for number, x, parent, day, pop in ((2, -11.71, u["Kenema"], "2001-01-01", 10),
                                        (3, -11.72, u["Sierra"], "2002-02-02", 20)):
        units.set_geometry(reg, "MoH", chp, number=number, location=Point(x, 7.95))
        units.move_unit(reg, "MoH", chp, parent, number=number)
        units.edit_unit(reg, "MoH", chp, number=number, opening_date=day,
                        extra_fields={"pop": pop}, type="District")
    report = merge3(reg)
    by_field = {c["field"]: c for c in report["conflicts"]}
    assert set(by_field) == {"location", "parent", "opening_date", "extra_fields.pop"}
    assert by_field["location"]["ours"] == pytest.approx([-11.71, 7.95])
    assert by_field["parent"]["kind"] == "move_move"

    with pytest.raises(InvalidInput, match="'location'.*lon,lat"):
        resolve_conflict(reg, by_field["location"]["id"], "value", "here")
    with pytest.raises(NotFound, match="no unit with uuid or ref 'NOPE'"):
        resolve_conflict(reg, by_field["parent"]["id"], "value", "NOPE")
    with pytest.raises(InvalidInput, match="is not a date"):
        resolve_conflict(reg, by_field["opening_date"]["id"], "value", "31/12/2001")
    with pytest.raises(InvalidInput, match="--value together with --take value"):
        resolve_conflict(reg, by_field["opening_date"]["id"], "ours", "2001-01-01")
    assert len(list_conflicts(reg, "MoH:4", status="open")) == 4  # refused: still open

    resolve_conflict(reg, by_field["location"]["id"], "value", "-11.715,7.951")
    resolve_conflict(reg, by_field["parent"]["id"], "value", "KE")  # by ref
    resolve_conflict(reg, by_field["opening_date"]["id"], "value", "2003-03-03")
    resolve_conflict(reg, by_field["extra_fields.pop"]["id"], "theirs")
    merged = unit(reg, "MoH", chp, 4)
    assert merged["location"] == pytest.approx([-11.715, 7.951])
    assert merged["parent_uuid"] == u["Kenema"] and merged["opening_date"] == "2003-03-03"
    assert merged["extra_fields"] == {"pop": 20} and merged["type"] == "District"
    assert {c["field"]: (c["resolution"], c["resolved_value"])
            for c in list_conflicts(reg, "MoH:4")} == {
        "location": ("value", "-11.715,7.951"), "parent": ("value", "KE"),
        "opening_date": ("value", "2003-03-03"), "extra_fields.pop": ("theirs", 20)}
    versions.publish_version(reg, "MoH", 4)


def test_edit_versus_delete(reg: Registry) -> None:
    u = three_drafts(reg)
    units.delete_unit(reg, "MoH", u["Baoma MCHP"], number=2)
    units.edit_unit(reg, "MoH", u["Baoma MCHP"], number=3, code="C-22")
    units.delete_unit(reg, "MoH", u["Kenema Hospital"], number=3)  # unchanged in ours: goes
    # ours deletes Kenema; theirs adds a unit below it → Kenema cannot silently go
    units.delete_unit(reg, "MoH", u["Kenema"], number=2, recursive=True)
    post = units.add_unit(reg, "MoH", name="Kenema Post", parent=u["Kenema"], type="Facility",
                          number=3)
    # theirs moves the edited Baoma out of Bo, then deletes Bo; ours deletes all of Bo
    units.move_unit(reg, "MoH", u["Baoma MCHP"], u["Sierra"], number=3)
    units.delete_unit(reg, "MoH", u["Bo"], number=3, recursive=True)
    units.delete_unit(reg, "MoH", u["Bo"], number=2, recursive=True)

    report = merge3(reg)
    kinds = sorted((c["kind"], c["field"] or "", c["unit_uuid"]) for c in report["conflicts"])
    assert kinds == sorted([("edit_delete", "", u["Baoma MCHP"]),
                            ("edit_delete", "children", u["Kenema"])])
    merged = names(reg, "MoH", 4)
    assert "Kenema Hospital" not in merged  # deleted on one side, untouched on the other
    assert "Bo" not in merged and "Bo CHP" not in merged  # deleted on both sides
    # kept while open, with its base values, under the parent the side that kept it gave
    # it (its base parent Bo is gone on both sides)
    assert merged["Baoma MCHP"]["code"] == "C-2"
    assert merged["Baoma MCHP"]["parent_uuid"] == u["Sierra"]
    assert merged["Kenema Post"]["parent_uuid"] == u["Kenema"]
    by_unit = {c["unit_uuid"]: c for c in report["conflicts"]}
    baoma = by_unit[u["Baoma MCHP"]]
    assert baoma["ours"] is None and baoma["theirs"]["code"] == "C-22"

    resolve_conflict(reg, baoma["id"], "theirs")
    assert unit(reg, "MoH", u["Baoma MCHP"], 4)["code"] == "C-22"
    resolve_conflict(reg, by_unit[u["Kenema"]]["id"], "ours")  # the deletion wins: subtree goes
    merged = names(reg, "MoH", 4)
    assert "Kenema" not in merged and "Kenema Post" not in merged
    assert post["uuid"] not in {m["uuid"] for m in merged.values()}
    versions.publish_version(reg, "MoH", 4)


def test_move_versus_move_and_moves_that_make_a_cycle(reg: Registry) -> None:
    u = three_drafts(reg)
    units.move_unit(reg, "MoH", u["Baoma MCHP"], u["Kenema"], number=2)
    units.move_unit(reg, "MoH", u["Baoma MCHP"], u["Bo CHP"], number=3)
    # ours puts Kenema under Bo; theirs puts Bo under Kenema: each fine, together a cycle
    units.move_unit(reg, "MoH", u["Kenema"], u["Bo"], number=2)
    units.move_unit(reg, "MoH", u["Bo"], u["Kenema"], number=3)

    report = merge3(reg)
    got = {(c["kind"], c["unit_uuid"]) for c in report["conflicts"]}
    assert got == {("move_move", u["Baoma MCHP"]), ("cycle", u["Kenema"]), ("cycle", u["Bo"])}
    merged = names(reg, "MoH", 4)
    assert merged["Baoma MCHP"]["parent_uuid"] == u["Bo"]  # base parent while open
    assert merged["Kenema"]["parent_uuid"] == u["Sierra"] == merged["Bo"]["parent_uuid"]
    mm = next(c for c in report["conflicts"] if c["kind"] == "move_move")
    assert (mm["base"], mm["ours"], mm["theirs"]) == (u["Bo"], u["Kenema"], u["Bo CHP"])

    resolve_conflict(reg, mm["id"], "theirs")
    assert unit(reg, "MoH", u["Baoma MCHP"], 4)["parent_uuid"] == u["Bo CHP"]
    cyc = {c["unit_uuid"]: c for c in report["conflicts"] if c["kind"] == "cycle"}
    resolve_conflict(reg, cyc[u["Kenema"]]["id"], "ours")  # Kenema under Bo
    with pytest.raises(CycleError):  # and then Bo under Kenema cannot be
        resolve_conflict(reg, cyc[u["Bo"]]["id"], "theirs")
    resolve_conflict(reg, cyc[u["Bo"]]["id"], "base")
    merged = names(reg, "MoH", 4)
    assert merged["Kenema Hospital"]["path"].startswith(merged["Bo"]["path"])
    versions.publish_version(reg, "MoH", 4)


def test_two_new_units_that_are_the_same_place(reg: Registry) -> None:
    u = three_drafts(reg)
    a = units.add_unit(reg, "MoH", name="Gbo Health Post", parent=u["Bo"], type="Facility",
                       number=2, location=Point(-11.80, 7.70))
    b = units.add_unit(reg, "MoH", name="GBO  health post", parent=u["Bo"], type="Facility",
                       number=3, location=Point(-11.801, 7.701))
    child = units.add_unit(reg, "MoH", name="Gbo Annex", parent=b["uuid"], type="Facility",
                           number=3)
    # same name far away, or under another parent: different places, no conflict
    units.add_unit(reg, "MoH", name="Twin Post", parent=u["Bo"], type="Facility", number=2,
                   location=Point(-11.6, 7.6))
    units.add_unit(reg, "MoH", name="Twin Post", parent=u["Bo"], type="Facility", number=3,
                   location=Point(-11.9, 8.1))
    units.add_unit(reg, "MoH", name="Lone Post", parent=u["Bo"], type="Facility", number=2)
    units.add_unit(reg, "MoH", name="Lone Post", parent=u["Kenema"], type="Facility", number=3)

    report = merge3(reg)
    (c,) = report["conflicts"]
    assert c["kind"] == "duplicate_new"
    assert (c["unit_uuid"], c["other_uuid"]) == (a["uuid"], b["uuid"])
    assert "m apart" in c["message"]
    with reg.read() as conn:
        assert conn.execute(text(
            "SELECT count(*) FROM org_unit u JOIN source_version v ON v.fid = u.version_id "
            "WHERE v.number = 4 AND u.uuid IN (:a, :b)"), {"a": a["uuid"], "b": b["uuid"]}
        ).scalar_one() == 2  # both stay until someone decides

    resolve_conflict(reg, c["id"], "ours")
    merged = names(reg, "MoH", 4)
    assert merged["Gbo Health Post"]["uuid"] == a["uuid"]
    assert "GBO  health post" not in merged
    assert merged["Gbo Annex"]["uuid"] == child["uuid"]
    assert merged["Gbo Annex"]["parent_uuid"] == a["uuid"]  # moved to the unit kept
    versions.publish_version(reg, "MoH", 4)


def test_three_way_bad_input(reg: Registry) -> None:
    three_drafts(reg)
    versions.create_version(reg, "Other", create_source_if_missing=True)
    versions.create_version(reg, "MoH")  # v4: empty, not a copy of v1
    with pytest.raises(InvalidInput, match="not a version of 'MoH'"):
        merge_three_way(reg, "MoH:1", "MoH:2", "Other:1")
    with pytest.raises(InvalidInput, match="does not descend from BASE"):
        merge_three_way(reg, "MoH:1", "MoH:2", "MoH:4")
    with pytest.raises(InvalidInput, match="same version"):
        merge_three_way(reg, "MoH:1", "MoH:2", "MoH:2")
    with pytest.raises(InvalidInput, match="--take must be one of"):
        resolve_conflict(reg, 1, "mine")
    with pytest.raises(NotFound, match="No merge conflict 42"):
        resolve_conflict(reg, 42, "ours")


def same_content(reg: Registry, a: int, b: int, source: str = "SL") -> list[str]:
    """Fields that differ between two versions of a source, unit by unit (uuid)."""
    from storage.merging.snapshot import FIELDS, load_snapshot, same

    with reg.read() as conn:
        sa, sb = (load_snapshot(conn, reg.backend, versions.resolve_version(conn, source, n))
                  for n in (a, b))
    out = [f"{u}: missing" for u in set(sa.units) ^ set(sb.units)]
    for uuid in set(sa.units) & set(sb.units):
        out += [f"{uuid}: {f}" for f in FIELDS
                if not same(f, sa.units[uuid].get(f), sb.units[uuid].get(f))]
    return out


def test_demo_merged_with_an_untouched_side_is_exactly_the_edited_side(tmp_path: Path) -> None:
    """Many edits of every kind on one side, none on the other: the merge is that side."""
    import random

    from sync.dhis2_json import import_dhis2_files
    from tests.conftest import DEMO_FILES

    rng = random.Random(7)
    with Registry.create(tmp_path / "demo.gpkg") as demo:
        import_dhis2_files(demo, DEMO_FILES, source="SL")
        versions.publish_version(demo, "SL", 1)
        versions.create_version(demo, "SL", copy_from=1)
        versions.create_version(demo, "SL", copy_from=1)
        with demo.read() as conn:
            rows = conn.execute(text(
                "SELECT uuid, depth, name FROM org_unit WHERE version_id = 2 ORDER BY uuid")).all()
        chiefdoms = [r[0] for r in rows if r[1] == 3]
        facilities = [r[0] for r in rows if r[1] == 4]
        rng.shuffle(facilities)
        for uuid in facilities[:40]:
            units.rename_unit(demo, "SL", uuid, f"Renamed {uuid[-6:]}", number=2)
        for uuid in facilities[40:70]:
            units.move_unit(demo, "SL", uuid, rng.choice(chiefdoms), number=2)
        for uuid in facilities[70:90]:
            units.delete_unit(demo, "SL", uuid, number=2)
        for uuid in facilities[90:110]:
            units.set_geometry(demo, "SL", uuid, number=2,
                               location=Point(-12 + rng.random(), 8 + rng.random()))
        for uuid in facilities[110:120]:
            units.set_group_membership(demo, "SL", uuid, "CHP", rng.random() < 0.5, number=2)
        for uuid in facilities[120:130]:
            units.edit_unit(demo, "SL", uuid, number=2, closed_date="2024-01-31",
                            extra_fields={"note": "closed by flood"})
        parent = rng.choice(chiefdoms)
        new = units.add_unit(demo, "SL", name="Brand New CHC", parent=parent, type="Facility",
                             number=2, location=Point(-11.5, 8.5))
        units.add_unit(demo, "SL", name="Its Annex", parent=new["uuid"], number=2)
        units.set_geometry(demo, "SL", chiefdoms[0], number=2, territory=box(-12, 8, -11.9, 8.1))

        report = merge_three_way(demo, "SL:1", "SL:2", "SL:3")
        assert report["conflicts"] == [] and report["version"]["number"] == 4
        assert same_content(demo, 2, 4) == []
        report = merge_three_way(demo, "SL:1", "SL:3", "SL:2")
        assert same_content(demo, 2, 5) == []
        assert report["counts"]["deleted"] == 20 and report["counts"]["added"] == 2
        assert same_content(demo, 1, 4) != []  # the comparison does see differences


def _random_edits(reg: Registry, number: int, rng: Any, ops: int) -> None:
    from storage.errors import GeoregError

    for _ in range(ops):
        with reg.read() as conn:
            uuids = [r[0] for r in conn.execute(text(
                "SELECT u.uuid FROM org_unit u JOIN source_version v ON v.fid = u.version_id "
                "WHERE v.number = :n ORDER BY u.uuid"), {"n": number})]
        if not uuids:
            return
        a, b = rng.choice(uuids), rng.choice(uuids)
        op = rng.choice(["rename", "rename", "move", "move", "delete", "add", "point", "code"])
        try:
            if op == "rename":
                units.rename_unit(reg, "MoH", a, rng.choice(["Alpha", "Beta", "Gamma"]),
                                  number=number)
            elif op == "move":
                units.move_unit(reg, "MoH", a, b, number=number)
            elif op == "delete":
                units.delete_unit(reg, "MoH", a, number=number, recursive=True)
            elif op == "add":
                units.add_unit(reg, "MoH", name=rng.choice(["New A", "New B"]), parent=a,
                               number=number, location=Point(-11.5, 8.0))
            elif op == "point":
                units.set_geometry(reg, "MoH", a, number=number,
                                   location=Point(-11 - rng.random(), 8 + rng.random()))
            else:
                units.edit_unit(reg, "MoH", a, number=number, code=rng.choice(["X", "Y"]))
        except GeoregError:
            pass  # a refused edit (cycle …) is simply not made


@pytest.mark.parametrize("seed", range(8))
def test_random_edits_on_both_sides_always_merge_into_a_sound_tree(reg: Registry,
                                                                   seed: int) -> None:
    """Whatever both sides did, the merge succeeds, the tree is sound (no cycle, orphan or
    stale path), and once every conflict is settled the version can be published."""
    import random

    from storage.errors import GeoregError

    rng = random.Random(seed)
    u = build_moh(reg)
    for i in range(12):
        units.add_unit(reg, "MoH", name=f"Post {i}", parent=rng.choice(list(u.values())),
                       number=1, location=Point(-11.6, 7.9))
    versions.publish_version(reg, "MoH", 1)
    versions.create_version(reg, "MoH", copy_from=1)
    versions.create_version(reg, "MoH", copy_from=1)
    _random_edits(reg, 2, rng, 20)
    _random_edits(reg, 3, rng, 20)
    report = merge3(reg)
    broken = [f for f in report["checks"]["findings"]
              if f["check"] in ("cycle", "orphan", "stale_path")]
    assert broken == []
    # settle them in a random way; a resolution that deletes units closes the conflicts of
    # those units ('unit_deleted'), and a refused one (a cycle …) leaves the conflict open
    while pending := list_conflicts(reg, "MoH:4", status="open"):
        for take in rng.sample(["ours", "theirs", "base", "both"], 4):
            try:
                resolve_conflict(reg, pending[0]["id"], take)
                break
            except GeoregError:
                continue
        else:
            pytest.fail(f"conflict {pending[0]} cannot be resolved in any way")
    versions.publish_version(reg, "MoH", 4)
    from storage.checks import run_checks

    after = run_checks(reg, "MoH", 4, checks=["cycle", "orphan", "stale_path"])
    assert after["findings"] == []


# --- every backend: the whole 3-way story ------------------------------------------------


@pytest.mark.parametrize("backend", ["spatialite", pytest.param("postgis",
                                                                marks=pytest.mark.postgis)])
def test_three_way_story_on_other_backends(backend: str, tmp_path: Path,
                                           request: pytest.FixtureRequest) -> None:
    registry = Registry.create(location_for(backend, tmp_path, request))
    try:
        add_types(registry)
        u = three_drafts(registry)
        units.rename_unit(registry, "MoH", u["Bo CHP"], "Bo Govt CHP", number=2)
        units.rename_unit(registry, "MoH", u["Bo CHP"], "Bo Town CHP", number=3)
        units.edit_unit(registry, "MoH", u["Bo"], number=2, aliases=["Bo Town"],
                        extra_fields={"a": 1})
        units.set_geometry(registry, "MoH", u["Kenema"], number=3,
                           territory=box(-11.5, 7.5, -10.8, 8.3))
        units.delete_unit(registry, "MoH", u["Baoma MCHP"], number=2)
        units.edit_unit(registry, "MoH", u["Baoma MCHP"], number=3, code="X")
        report = merge_three_way(registry, "MoH:1", "MoH:2", "MoH:3")
        assert sorted(c["kind"] for c in report["conflicts"]) == ["edit_delete", "field"]
        merged = names(registry, "MoH", 4)
        assert merged["Bo"]["aliases"] == ["Bo Town"] and merged["Bo"]["extra_fields"] == {"a": 1}
        assert merged["Kenema"]["territory_area_deg2"] == pytest.approx(0.7 * 0.8)
        with pytest.raises(ConflictError):
            versions.publish_version(registry, "MoH", 4)
        with pytest.raises(ConflictError, match="unresolved merge conflicts"), \
                registry.write() as conn:  # the database trigger, whoever asks
            conn.execute(text("UPDATE source_version SET status = 'published' WHERE fid = :v"),
                         {"v": report["version"]["id"]})
        for c in report["conflicts"]:
            resolve_conflict(registry, c["id"], "ours")
        merged = names(registry, "MoH", 4)
        assert "Baoma MCHP" not in merged and "Bo Govt CHP" in merged
        versions.publish_version(registry, "MoH", 4)
        report = merge_by_rules(registry, "MoH:4", "MoH:1",
                                links=[(u[n], u[n]) for n in ("Bo CHP", "Bo")],
                                rules=Rules.from_mapping({"name": "source",
                                                          "unmatched_source": "ignore"}))
        assert names(registry, "MoH", 5)["Bo CHP"]["uuid"] == u["Bo CHP"]
    finally:
        _drop(registry)


# --- command line ------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "georeg.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_cli_merge_merge3_and_conflicts(tmp_path: Path) -> None:
    path = tmp_path / "cli.gpkg"
    with Registry.create(path) as r:
        add_types(r)
        moh = build_moh(r)
        build_survey(r, moh)
        versions.publish_version(r, "MoH", 1)
    rules = tmp_path / "rules.toml"
    rules.write_text('location = "source"\nunmatched_source = "add_as_new"\n')

    done = cli("merge", str(path), "--target", "MoH:1", "--from", "Survey:1", "--rules",
               str(rules), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "Would make draft MoH v2" in done.stdout and "2 added" in done.stdout
    done = cli("merge", str(path), "--target", "MoH:1", "--from", "Survey:1", "--rules",
               str(rules), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["version"]["label"] == "MoH v2" and data["counts"]["added"] == 2
    done = cli("merge", str(path), "--target", "MoH:1", "--from", "Survey:1", "--rules",
               str(tmp_path / "missing.toml"))
    assert done.returncode == 2 and "No rules file" in done.stderr

    with Registry.open(path) as r:
        versions.publish_version(r, "MoH", 2)
        versions.create_version(r, "MoH", copy_from=2)
        versions.create_version(r, "MoH", copy_from=2)
        units.rename_unit(r, "MoH", moh["Bo"], "Bo Town", number=3)
        units.rename_unit(r, "MoH", moh["Bo"], "Bo City", number=4)
    done = cli("merge3", str(path), "--base", "MoH:2", "--ours", "MoH:3", "--theirs", "MoH:4")
    assert done.returncode == 0, done.stderr
    assert "MoH v5" in done.stdout and "1 conflict" in done.stdout
    done = cli("conflicts", "list", str(path), "--version", "MoH:5", "--json")
    listed = json.loads(done.stdout)
    assert [(c["field"], c["ours"], c["theirs"]) for c in listed] == [("name", "Bo Town",
                                                                      "Bo City")]
    done = cli("conflicts", "list", str(path))
    assert "Bo Town" in done.stdout and "open" in done.stdout
    done = cli("conflicts", "show", str(path), str(listed[0]["id"]))
    assert done.returncode == 0 and 'ours: "Bo Town"' in done.stdout
    done = cli("version", "publish", str(path), "-s", "MoH", "-v", "5", "--json")
    assert done.returncode == 5
    assert json.loads(done.stderr)["message"].startswith("MoH v5 has 1 unresolved merge")
    done = cli("conflicts", "resolve", str(path), str(listed[0]["id"]), "--take", "theirs")
    assert done.returncode == 0, done.stderr
    assert "resolved" in done.stdout
    done = cli("conflicts", "resolve", str(path), str(listed[0]["id"]), "--take", "ours")
    assert done.returncode == 5 and "already resolved" in done.stderr
    with Registry.open(path) as r:
        assert unit(r, "MoH", moh["Bo"], 5)["name"] == "Bo City"
        versions.publish_version(r, "MoH", 5)


def test_every_rule_key_and_conflict_kind_is_documented() -> None:
    from storage.merging import CONFLICT_KINDS, RULE_HELP

    guide = (ROOT / "docs" / "merge.md").read_text(encoding="utf-8")
    for key, default, _help in RULE_HELP:
        assert f"| `{key}` | `{default}` |" in guide, key
    for kind in CONFLICT_KINDS:
        assert f"`{kind}`" in guide, kind
