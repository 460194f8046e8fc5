"""Merging the same list again must remember what the officer decided in between.

The story: the ministry's list ("MoH", published v1) and a field survey ("Survey",
imported from a CSV by `georeg import`) are matched and the links reviewed.  The GIS
officer merges the survey into the ministry's list, publishes, goes on editing in a
new draft — and merges the same survey again (a survey fixed since, or just to be
sure).  Found in the review of the compare/match/merge flow:

* a unit the first merge added, which the officer then deleted (a health post that
  turned out not to exist), came back at the second merge: its survey unit was
  unpaired again, so it was added again.  The delete is newer than the add, as in a
  3-way merge, so it stands; the report says so and ``--re-add-deleted`` brings the
  units back when that is what the officer wants;
* the same for a ministry unit the officer deleted after a match linked it to a
  survey unit: the link went stale and the survey unit was added as new;
* deleting a 3-way merge's draft to abort it dropped, without a word, the conflict
  resolutions already made there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from storage import units, versions
from storage.matching.job import match_versions
from storage.matching.review import decide, list_links
from storage.merging import merge_by_rules
from storage.registry import Registry
from tests.test_merge_rules_safety import RULES, SURVEY_CSV, build_ministry

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "georeg.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def ok(*args: str) -> str:
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return reviewed_lists(tmp_path)


def reviewed_lists(tmp_path: Path) -> Path:
    """The ministry's list, the survey imported by `georeg import`, matched and reviewed
    (every link accepted), as the merge guide says to do first."""
    path = tmp_path / "reg.gpkg"
    with Registry.create(path) as reg:
        build_ministry(reg)
    (tmp_path / "survey.csv").write_text(SURVEY_CSV, encoding="utf-8")
    ok("import", str(path), str(tmp_path / "survey.csv"), "-s", "Survey")
    with Registry.open(path) as reg:
        run = int(match_versions(reg, "MoH:1", "Survey:1")["run"])
        pending = [lk["id"] for lk in list_links(reg, run, status="review")["links"]]
        decide(reg, pending, "accepted", reviewer="A. Kamara")
    (tmp_path / "rules.toml").write_text(
        'location = "source"\nparent = "source"\n', encoding="utf-8")
    return path


def names(path: Path, source: str, number: int) -> list[str]:
    with Registry.open(path) as reg, reg.read() as conn:
        v = versions.resolve_version(conn, source, number)
        return sorted(r[0] for r in conn.execute(
            text("SELECT name FROM org_unit WHERE version_id = :v"), {"v": v.id}))


def merge(path: Path, target: str, *extra: str) -> dict:
    rules = str(path.parent / "rules.toml")
    return json.loads(ok("merge", str(path), "--target", target, "--from", "Survey:1",
                         "--rules", rules, "--json", *extra))


# --- 1: a unit the merge added, deleted since ------------------------------------------------


def test_a_unit_added_by_a_merge_and_deleted_since_is_not_added_again(registry: Path) -> None:
    """The first merge adds the survey's Gbo Health Post and its annex (MoH v2).  The
    officer publishes, starts v3 and deletes the health post with its annex: it does not
    exist.  Merging the survey again into v3 must not bring them back."""
    first = merge(registry, "MoH:1")
    assert first["counts"]["added"] == 2
    ok("version", "publish", str(registry), "-s", "MoH", "-v", "2")
    ok("version", "new", str(registry), "-s", "MoH", "--from", "2")  # v3
    ok("unit", "delete", str(registry), "-s", "MoH", "-v", "3", "SV-9", "--recursive")
    after_delete = names(registry, "MoH", 3)
    assert "Gbo Health Post" not in after_delete and "Gbo Clinic Annex" not in after_delete

    again = merge(registry, "MoH:3")  # v4
    assert again["counts"]["added"] == 0
    assert again["counts"]["deleted_here"] == 2 and again["counts"]["re_added"] == 0
    assert {(d["name"], d["by"]) for d in again["deleted_here"]} == {
        ("Gbo Health Post", "earlier merge"), ("Gbo Clinic Annex", "earlier merge")}
    added_first = {a["source_uuid"]: a["uuid"] for a in first["added"]}
    assert {d["source_uuid"]: d["uuid"] for d in again["deleted_here"]} == added_first
    assert any(w.startswith("2 unit(s) deleted here since an earlier merge added them: not "
                            "added again") and "--re-add-deleted" in w
               for w in again["warnings"])
    assert names(registry, "MoH", 4) == after_delete

    # the text report says it in the counts and the warnings
    out = ok("merge", str(registry), "--target", "MoH:3", "--from", "Survey:1", "--dry-run")
    assert "0 added, 2 deleted here since (not added again)" in out
    assert "warning: 2 unit(s) deleted here since an earlier merge added them: not added " \
        "again ('Gbo Health Post', 'Gbo Clinic Annex')" in " ".join(out.split())

    # and a third merge, into the second one's draft, still remembers
    third = merge(registry, "MoH:4")
    assert third["counts"]["added"] == 0 and third["counts"]["deleted_here"] == 2


def test_re_add_deleted_brings_them_back_once(registry: Path) -> None:
    """The officer deleted the health post by mistake: --re-add-deleted brings it back (with
    its annex: restored, same uuids — tests/test_merge_restores.py), and the merge after
    that recognises them instead of adding a third copy."""
    first = merge(registry, "MoH:1")  # v2
    ok("version", "new", str(registry), "-s", "MoH", "--from", "2")  # v3
    ok("unit", "delete", str(registry), "-s", "MoH", "-v", "3", "SV-9", "--recursive")

    back = merge(registry, "MoH:3", "--re-add-deleted")  # v4
    assert back["re_add_deleted"] is True
    assert back["counts"]["added"] == 2 and back["counts"]["re_added"] == 2
    assert back["counts"]["restored"] == 2
    assert {a["uuid"] for a in back["added"]} == {a["uuid"] for a in first["added"]}
    assert back["counts"]["deleted_here"] == 0 and back["deleted_here"] == []
    assert any("restored, as asked (--re-add-deleted)" in w for w in back["warnings"])
    merged = names(registry, "MoH", 4)
    assert merged.count("Gbo Health Post") == 1 and merged.count("Gbo Clinic Annex") == 1

    after = merge(registry, "MoH:4")  # v5
    assert after["counts"]["added"] == 0 and after["counts"]["deleted_here"] == 0
    assert {r["by"] for r in after["recognised"]} == {"earlier merge"}
    assert names(registry, "MoH", 5) == merged


def test_deleting_only_the_annex_keeps_the_health_post_recognised(registry: Path) -> None:
    merge(registry, "MoH:1")  # v2
    ok("version", "new", str(registry), "-s", "MoH", "--from", "2")  # v3
    with Registry.open(registry) as reg, reg.read() as conn:
        v3 = versions.resolve_version(conn, "MoH", 3)
        annex = conn.execute(text("SELECT uuid FROM org_unit WHERE version_id = :v AND name = "
                                  "'Gbo Clinic Annex'"), {"v": v3.id}).scalar_one()
    ok("unit", "delete", str(registry), "-s", "MoH", "-v", "3", annex)
    again = merge(registry, "MoH:3")
    assert again["counts"]["added"] == 0 and again["counts"]["recognised"] == 1
    assert [d["name"] for d in again["deleted_here"]] == ["Gbo Clinic Annex"]


def test_a_deleted_units_ref_now_used_elsewhere_does_not_stop_the_merge(registry: Path) -> None:
    """After deleting the health post, the officer gives its ref (SV-9) to Kenema Hospital.
    Nothing is added for the deleted unit, so that ref is no clash: the merge goes on."""
    merge(registry, "MoH:1")  # v2
    ok("version", "new", str(registry), "-s", "MoH", "--from", "2")  # v3
    ok("unit", "delete", str(registry), "-s", "MoH", "-v", "3", "SV-9", "--recursive")
    ok("unit", "edit", str(registry), "-s", "MoH", "-v", "3", "F3", "--ref", "SV-9")
    again = merge(registry, "MoH:3")
    assert again["counts"]["added"] == 0 and again["counts"]["deleted_here"] == 2


def test_a_merge_into_a_version_outside_the_line_still_adds_them(registry: Path) -> None:
    """Only a delete in the target's own line counts: merging into a copy of MoH v1 (a
    sibling of the first merge's draft, which never held the added units) adds them."""
    merge(registry, "MoH:1")  # v2
    ok("version", "new", str(registry), "-s", "MoH", "--from", "1")  # v3: from v1, not v2
    again = merge(registry, "MoH:3")
    assert again["counts"]["added"] == 2 and again["counts"]["deleted_here"] == 0


# --- 1b: a unit the match linked, deleted since ----------------------------------------------


def test_a_linked_unit_deleted_since_does_not_come_back_as_new(registry: Path) -> None:
    """The match linked the ministry's Lowoma MCHP (F4) to the survey's Lowomma CHP.  The
    officer closes it down for good in a draft (deletes it) and merges the survey there:
    the link is stale, and the survey's unit must not be added as a new facility.  (The
    link machinery alone did not cover this: a stale link's units count as unmatched.)"""
    ok("version", "new", str(registry), "-s", "MoH", "--from", "1")  # v2
    ok("unit", "delete", str(registry), "-s", "MoH", "-v", "2", "F4")
    report = merge(registry, "MoH:2")  # v3
    merged = names(registry, "MoH", 3)
    assert "Lowomma CHP" not in merged and "Lowoma MCHP" not in merged
    assert report["links"]["stale_target"] == 1
    assert [(d["name"], d["by"]) for d in report["deleted_here"]] == [("Lowomma CHP", "link")]
    assert report["counts"]["added"] == 2  # the survey-only health post and its annex
    assert any(w.startswith("1 unit(s) deleted here since a match linked them to this list: "
                            "not added again") for w in report["warnings"])

    back = merge(registry, "MoH:2", "--re-add-deleted")
    assert back["counts"]["re_added"] == 1 and back["counts"]["added"] == 3
    assert back["counts"]["restored"] == 1  # the ministry's own unit, ref F4, comes back
    merged = names(registry, "MoH", 4)
    assert "Lowoma MCHP" in merged and "Lowomma CHP" not in merged


def test_a_link_to_a_unit_never_in_the_line_is_only_stale(registry: Path) -> None:
    """A link whose ministry unit exists in another branch only (never in the target's
    line) says nothing about a delete here: its survey unit is added, as before."""
    with Registry.open(registry) as reg:
        versions.create_version(reg, "MoH", copy_from=1)  # v2: another branch
        other = units.add_unit(reg, "MoH", name="Gbo HP", parent="BO", type="Facility",
                               number=2)["uuid"]
        versions.create_version(reg, "MoH", copy_from=1)  # v3: the target
        with reg.read() as conn:
            survey = versions.resolve_version(conn, "Survey", 1)
            gbo = conn.execute(text("SELECT uuid FROM org_unit WHERE version_id = :v AND "
                                    "source_ref = 'SV-9'"), {"v": survey.id}).scalar_one()
            moh = versions.resolve_version(conn, "MoH", 1)
            pairs = [tuple(r) for r in conn.execute(text(
                "SELECT m.uuid, s.uuid FROM org_unit m JOIN org_unit s ON s.version_id = :s "
                "AND s.name = m.name WHERE m.version_id = :m"), {"s": survey.id, "m": moh.id})]
        report = merge_by_rules(reg, "MoH:3", "Survey:1", rules=RULES, dry_run=True,
                                links=[*pairs, (other, gbo)])
    assert report["counts"]["deleted_here"] == 0
    assert "Gbo Health Post" in {a["name"] for a in report["added"]}


# --- 2: deleting a merged draft with resolved conflicts --------------------------------------


def test_deleting_a_merged_draft_with_resolved_conflicts_needs_force(registry: Path) -> None:
    """Two drafts rename Bo CHP differently; the 3-way merge (v4) has one conflict, which
    the officer resolves.  Deleting v4 to abort the merge must say that resolution would be
    lost and require --force."""
    ok("version", "new", str(registry), "-s", "MoH", "--from", "1")  # v2
    ok("version", "new", str(registry), "-s", "MoH", "--from", "1")  # v3
    ok("unit", "edit", str(registry), "-s", "MoH", "-v", "2", "F1", "--name", "Bo Community HP")
    ok("unit", "edit", str(registry), "-s", "MoH", "-v", "3", "F1", "--name", "Bo CHP (Kandeh)")
    report = json.loads(ok("merge3", str(registry), "--base", "MoH:1", "--ours", "MoH:2",
                           "--theirs", "MoH:3", "--json"))
    conflict = report["conflicts"][0]["id"]
    ok("conflicts", "resolve", str(registry), str(conflict), "--take", "theirs")

    refused = cli("version", "delete", str(registry), "-s", "MoH", "-v", "4")
    assert refused.returncode != 0
    message = " ".join(refused.stderr.split())
    assert "1 resolved conflict" in message and "--force" in message
    assert 4 in [v["number"] for v in json.loads(ok("versions", str(registry), "-s", "MoH",
                                                    "--json"))]

    done = cli("version", "delete", str(registry), "-s", "MoH", "-v", "4", "--force")
    assert done.returncode == 0, done.stderr
    assert "1 resolved conflict" in done.stdout


def test_deleting_a_merged_draft_without_resolutions_needs_no_force(registry: Path) -> None:
    ok("version", "new", str(registry), "-s", "MoH", "--from", "1")  # v2
    ok("version", "new", str(registry), "-s", "MoH", "--from", "1")  # v3
    ok("unit", "edit", str(registry), "-s", "MoH", "-v", "2", "F1", "--name", "Bo Community HP")
    ok("unit", "edit", str(registry), "-s", "MoH", "-v", "3", "F1", "--name", "Bo CHP (Kandeh)")
    ok("merge3", str(registry), "--base", "MoH:1", "--ours", "MoH:2", "--theirs", "MoH:3")
    ok("version", "delete", str(registry), "-s", "MoH", "-v", "4")  # nothing decided yet
