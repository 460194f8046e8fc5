"""Merge by rules must not double the registry: stale links, merging twice, links under review.

The story: the ministry's list ("MoH", published v1) and a field survey ("Survey",
imported from a CSV with the real importer) are matched by the real matcher.  The
GIS officer merges the survey into the ministry's list.  Three ways this used to go
wrong without a word, each of which the merge must now stop or report:

* the survey was imported again (new uuids) and the old match run no longer describes
  it: the merge added the whole survey as new units, a second country root included;
* the officer merged the same survey again into the merged draft: every unit the first
  merge added came back a second time;
* links still awaiting review: their units were added as new without saying so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import Point
from sqlalchemy import text

from storage import units, versions
from storage.errors import InvalidInput
from storage.matching.job import match_versions
from storage.matching.review import decide, list_links
from storage.merging import Rules, merge_by_rules
from storage.registry import Registry

ROOT = Path(__file__).resolve().parent.parent

# The survey: the ministry's places with the surveyors' refs and GPS points, one
# facility misspelt and 6 km off (the matcher sends it to review), and two
# facilities only the survey has: a health post and its annex, which has no ref.
SURVEY_CSV = """\
ref,name,type,parent_ref,latitude,longitude
SV-1,Sierra Leone,National,,,
SV-2,Bo,District,SV-1,,
SV-3,Kenema,District,SV-1,,
SV-4,Bo CHP,Facility,SV-2,7.9601,-11.7402
SV-5,Baoma MCHP,Facility,SV-2,7.9012,-11.7011
SV-6,Kenema Hospital,Facility,SV-3,7.8801,-11.1905
SV-7,Lowomma CHP,Facility,SV-3,7.8401,-11.2905
SV-9,Gbo Health Post,Facility,SV-2,7.70,-11.80
,Gbo Clinic Annex,Facility,SV-9,7.71,-11.81
"""

RULES = Rules.from_mapping({"name": "target", "location": "source", "parent": "source",
                            "unmatched_source": "add_as_new", "unmatched_target": "keep"})


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "georeg.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def build_ministry(reg: Registry) -> dict[str, str]:
    """MoH v1 (published): Sierra Leone > Bo (2 facilities), Kenema (2 facilities)."""
    with reg.write() as conn:
        for name, depth in (("National", 1), ("District", 2), ("Facility", 3)):
            conn.execute(text("INSERT INTO org_unit_type (name, depth) VALUES (:n, :d)"),
                         {"n": name, "d": depth})
    versions.create_version(reg, "MoH", create_source_if_missing=True)
    u: dict[str, str] = {}

    def add(name: str, parent: str | None, type_: str, ref: str, **kw: Any) -> None:
        u[name] = units.add_unit(reg, "MoH", name=name, parent=u.get(parent or ""), type=type_,
                                 source_ref=ref, **kw)["uuid"]

    add("Sierra Leone", None, "National", "SL")
    add("Bo", "Sierra Leone", "District", "BO")
    add("Kenema", "Sierra Leone", "District", "KE")
    add("Bo CHP", "Bo", "Facility", "F1", location=Point(-11.74, 7.96))
    add("Baoma MCHP", "Bo", "Facility", "F2", location=Point(-11.70, 7.90))
    add("Kenema Hospital", "Kenema", "Facility", "F3", location=Point(-11.19, 7.88))
    add("Lowoma MCHP", "Kenema", "Facility", "F4", location=Point(-11.25, 7.81))
    versions.publish_version(reg, "MoH", 1)
    return u


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A registry with the ministry's list and the survey imported by `georeg import`."""
    path = tmp_path / "reg.gpkg"
    with Registry.create(path) as reg:
        build_ministry(reg)
    (tmp_path / "survey.csv").write_text(SURVEY_CSV, encoding="utf-8")
    done = cli("import", str(path), str(tmp_path / "survey.csv"), "-s", "Survey")
    assert done.returncode == 0, done.stderr
    return path


def match(path: Path, left: str = "MoH:1", right: str = "Survey:1") -> int:
    with Registry.open(path) as reg:
        return int(match_versions(reg, left, right)["run"])


def accept_reviewed(path: Path, run: int) -> None:
    with Registry.open(path) as reg:
        pending = [lk["id"] for lk in list_links(reg, run, status="review")["links"]]
        decide(reg, pending, "accepted", reviewer="A. Kamara")


def unit_rows(path: Path, source: str, number: int) -> list[tuple[str, str | None, str]]:
    """(name, ref, parent name) of every unit of the version, sorted."""
    with Registry.open(path) as reg, reg.read() as conn:
        v = versions.resolve_version(conn, source, number)
        rows = conn.execute(text(
            "SELECT u.name, u.source_ref, p.name FROM org_unit u LEFT JOIN org_unit p "
            "ON p.version_id = u.version_id AND p.unit_key = u.parent_key "
            "WHERE u.version_id = :v"), {"v": v.id}).all()
    return sorted((r[0], r[1], r[2] or "") for r in rows)


def version_numbers(path: Path, source: str) -> list[int]:
    with Registry.open(path) as reg:
        return [v["number"] for v in versions.list_versions(reg, source)]


# --- #1: links that no longer describe the versions -----------------------------------------


def test_merging_a_re_imported_survey_with_the_old_match_run_stops(registry: Path,
                                                                    tmp_path: Path) -> None:
    """The officer matched the survey, then imported the corrected file again (new uuids,
    Survey v2) and merged it with the default links: the newest run between the two
    sources, made on Survey v1.  None of its links reaches a unit of v2."""
    match(registry)
    done = cli("import", str(registry), str(tmp_path / "survey.csv"), "-s", "Survey")
    assert done.returncode == 0 and "Survey v2" in done.stdout, done.stderr

    done = cli("merge", str(registry), "--target", "MoH:1", "--from", "Survey:2")
    assert done.returncode != 0
    message = " ".join(done.stderr.split())
    assert "no longer describe these versions" in message
    assert "6 point to units that are not in Survey v2" in message
    assert "made on MoH v1 and Survey v1" in message
    assert 'georeg match REG "MoH:1" "Survey:2"' in message
    assert version_numbers(registry, "MoH") == [1]  # no draft with a second country

    # doing what the message says gives one tree, the survey-only units added once
    match(registry, "MoH:1", "Survey:2")
    done = cli("merge", str(registry), "--target", "MoH:1", "--from", "Survey:2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["links"]["stale"] == 0 and report["counts"]["added"] == 3
    merged = unit_rows(registry, "MoH", 2)
    assert [r for r in merged if r[2] == ""] == [("Sierra Leone", "SL", "")]


def test_stale_links_are_counted_per_side_and_those_of_deleted_units_dropped(
        registry: Path) -> None:
    """A unit deleted since the match leaves a stale link: normal, counted per side.  Even
    when more than half of the links miss their unit on one side, units deleted since (the
    change log says so) are a clean-up, not a run made on another version: their links
    are dropped and the merge goes on (a re-imported list, whose uuids never were in the
    version, still stops: see above and tests/test_merge_restores.py)."""
    run = match(registry)
    accept_reviewed(registry, run)  # 7 links
    with Registry.open(registry) as reg:
        units.delete_unit(reg, "Survey", "SV-3", recursive=True)  # Kenema: 3 linked units
        report = merge_by_rules(reg, "MoH:1", "Survey:1", rules=RULES, dry_run=True)
        assert report["links"]["stale"] == 3
        assert (report["links"]["stale_source"], report["links"]["stale_target"]) == (3, 0)
        assert any("3 link(s) are stale" in w for w in report["warnings"])
        assert report["counts"]["matched"] == 4

        units.delete_unit(reg, "Survey", "SV-4")  # Bo CHP: 4 of 7 now stale, all deleted
        report = merge_by_rules(reg, "MoH:1", "Survey:1", rules=RULES)
        assert (report["links"]["stale_source"], report["links"]["deleted_source"]) == (4, 4)
        assert report["counts"]["matched"] == 3
        assert any("4 link(s) are stale" in w and "dropped" in w for w in report["warnings"])
    assert version_numbers(registry, "MoH") == [1, 2]


# --- #2: merging the same list again ---------------------------------------------------------


def test_merging_the_same_survey_again_into_the_merged_draft_adds_nothing(
        registry: Path) -> None:
    """The officer merges the survey, publishes, starts a new draft from it, and (following
    the guide: a run on earlier versions still applies) merges the survey again.  The
    health post and its annex (which has no ref) must not come back a second time."""
    run = match(registry)
    accept_reviewed(registry, run)
    with Registry.open(registry) as reg:
        first = merge_by_rules(reg, "MoH:1", "Survey:1", rules=RULES, author="A. Kamara")
        assert first["counts"]["added"] == 2
        versions.publish_version(reg, "MoH", 2)
        versions.create_version(reg, "MoH", copy_from=2)  # v3: the officer's next draft
        units.rename_unit(reg, "MoH", "SV-9", "Gbo Health Post (new)", number=3)
    after_first = unit_rows(registry, "MoH", 3)
    assert [r[0] for r in after_first].count("Gbo Clinic Annex") == 1

    done = cli("merge", str(registry), "--target", "MoH:3", "--from", "Survey:1", "--json")
    assert done.returncode == 0, done.stderr
    again = json.loads(done.stdout)
    assert again["counts"]["added"] == 0 and again["counts"]["recognised"] == 2
    assert {r["by"] for r in again["recognised"]} == {"earlier merge"}
    assert any("already in MoH v3" in w and "not added again" in w for w in again["warnings"])
    assert unit_rows(registry, "MoH", 4) == after_first  # the officer's rename stays too
    done = cli("merge", str(registry), "--target", "MoH:3", "--from", "Survey:1", "--dry-run")
    assert "2 already in the target (not added again), 0 added" in done.stdout


def test_a_survey_unit_whose_ref_the_ministry_already_has_is_merged_not_duplicated(
        registry: Path) -> None:
    """The ministry already entered the survey's new health post by hand, with the survey's
    ref, and nothing linked them: it is the same unit (same ref, same district), so the
    merge treats it as matched and hangs the annex under it."""
    with Registry.open(registry) as reg:
        versions.create_version(reg, "MoH", copy_from=1)
        hand = units.add_unit(reg, "MoH", name="Gbo HP", parent="BO", type="Facility",
                              source_ref="SV-9")["uuid"]
    run = match(registry, "MoH:1", "Survey:1")  # on v1: the hand-made unit is not linked
    accept_reviewed(registry, run)
    with Registry.open(registry) as reg:
        report = merge_by_rules(reg, "MoH:2", "Survey:1", rules=RULES, links_run=run)
    assert report["counts"]["added"] == 1 and report["counts"]["recognised"] == 1
    assert report["recognised"][0]["uuid"] == hand and report["recognised"][0]["by"] == "ref"
    merged = unit_rows(registry, "MoH", 3)
    assert ("Gbo HP", "SV-9", "Bo") in merged and ("Gbo Clinic Annex", None, "Gbo HP") in merged
    assert [r[0] for r in merged].count("Gbo Health Post") == 0


def test_a_ref_the_ministry_uses_for_another_place_stops_the_merge_naming_it(
        registry: Path) -> None:
    """The ministry's Kenema Hospital carries ref SV-9 and is paired with the survey's
    Kenema Hospital; the survey's SV-9 is a health post in Bo.  Adding it would either
    duplicate a unit or silently drop its ref: the merge stops and says what to do."""
    with Registry.open(registry) as reg:
        versions.create_version(reg, "MoH", copy_from=1)
        units.edit_unit(reg, "MoH", "F3", number=2, source_ref="SV-9")
    run = match(registry, "MoH:2", "Survey:1")
    accept_reviewed(registry, run)
    with Registry.open(registry) as reg:
        with pytest.raises(InvalidInput) as caught:
            merge_by_rules(reg, "MoH:2", "Survey:1", rules=RULES)
    message = str(caught.value)
    assert "'Gbo Health Post' (ref 'SV-9', used by 'Kenema Hospital'" in message
    assert 'georeg match REG "MoH:2" "Survey:1"' in message
    assert version_numbers(registry, "MoH") == [1, 2]


# --- #6: links still awaiting review -----------------------------------------------------------


def test_links_awaiting_review_are_reported_first_and_how_to_review_them(
        registry: Path) -> None:
    """The matcher was unsure about Lowomma CHP (misspelt, 6 km off).  Merging before the
    review adds it as a new facility next to Lowoma MCHP: the report says so, first."""
    run = match(registry)
    done = cli("merge", str(registry), "--target", "MoH:1", "--from", "Survey:1", "--dry-run")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stdout.splitlines() if "warning:" in line]
    assert warnings[0].strip() == (
        f"warning: 1 link(s) of match run {run} still await review and were not used: 1 of "
        "their source unit(s) were added as new, so the draft may hold them twice. Review them "
        f"(georeg links REG --run {run} --status review), then merge again into MoH v1.")
    done = cli("merge", str(registry), "--target", "MoH:1", "--from", "Survey:1", "--dry-run",
               "--json")
    report = json.loads(done.stdout)
    assert report["links"]["review"] == 1 and report["links"]["review_added"] == 1

    accept_reviewed(registry, run)  # the reviewer says: same place
    with Registry.open(registry) as reg:
        report = merge_by_rules(reg, "MoH:1", "Survey:1", rules=RULES)
    assert report["links"]["review"] == 0 and report["counts"]["added"] == 2
    assert not any("await review" in w for w in report["warnings"])
    assert [r[0] for r in unit_rows(registry, "MoH", 2)].count("Lowomma CHP") == 0


def test_a_run_with_only_links_awaiting_review_says_to_review_them(registry: Path,
                                                                   tmp_path: Path) -> None:
    config = tmp_path / "match.toml"
    config.write_text("[thresholds]\nauto = 1.0\n", encoding="utf-8")  # nothing is sure
    done = cli("match", str(registry), "MoH:1", "Survey:1", "--config", str(config))
    assert done.returncode == 0, done.stderr
    done = cli("merge", str(registry), "--target", "MoH:1", "--from", "Survey:1")
    assert done.returncode != 0
    message = " ".join(done.stderr.split())
    assert "7 link(s) still await review" in message and "--status review" in message
