"""Settling many conflicts at once, and what taking a deleting side deletes.

The story: the district officer merged the field team's draft with hers and got a
long list of conflicts; she trusts the field team's values, so she takes theirs for
all of them in one go (``georeg conflicts resolve REG --version S:N --all --take
theirs``).  It is one transaction (all or nothing), each conflict is resolved as the
single ``resolve`` does, and the ones the take does not fit are skipped with the
reason: two new units that may be the same place are judged pair by pair (unless
``--kind duplicate_new`` says otherwise), ``--take both`` only fits those, and a
resolution the registry refuses (its parent deleted since) leaves that conflict open.

Then a deletion: ours deleted a district with everything in it; theirs had moved a
hospital of another district into it and added a post there.  Taking ours deletes
the district, what ours deleted with it and the post theirs added there — but the
hospital was never deleted by anyone: it goes back to the district ours has it in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from shapely.geometry import Point
from sqlalchemy import text

from storage import units, versions
from storage.audit import history
from storage.checks import run_checks
from storage.errors import Cancelled, InvalidInput
from storage.jobs import Progress
from storage.merging import list_conflicts, merge_three_way, resolve_conflict
from storage.merging.conflicts import BulkResolveJob, conflict_summary, resolve_conflicts
from storage.registry import Registry
from tests.conftest import _drop, location_for
from tests.test_merge import add_types, names, three_drafts, unit

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "georeg.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def said(done: subprocess.CompletedProcess[str]) -> str:
    return " ".join((done.stdout + done.stderr).split())  # the terminal's wrapping aside


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    registry = Registry.create(tmp_path / "bulk.gpkg")
    add_types(registry)
    yield registry
    registry.close()


def overlapping_edits(reg: Registry) -> dict[str, str]:
    """Both sides renamed and recoded things, moved Baoma differently, and each added a
    'Gbo Health Post' in Bo (probably the same place); ours deleted Kenema Hospital,
    which theirs recoded."""
    u = three_drafts(reg)
    for number, mark in ((2, "ours"), (3, "theirs")):
        units.rename_unit(reg, "MoH", u["Bo CHP"], f"Bo CHP ({mark})", number=number)
        units.edit_unit(reg, "MoH", u["Bo CHP"], number=number, code=f"C-1-{mark}")
        units.edit_unit(reg, "MoH", u["Bo"], number=number, code=f"BO-{mark}")
        units.add_unit(reg, "MoH", name="Gbo Health Post", parent=u["Bo"], type="Facility",
                       number=number, location=Point(-11.80, 7.70))
    units.move_unit(reg, "MoH", u["Baoma MCHP"], u["Sierra"], number=2)
    units.move_unit(reg, "MoH", u["Baoma MCHP"], u["Kenema"], number=3)
    units.delete_unit(reg, "MoH", u["Kenema Hospital"], number=2)
    units.edit_unit(reg, "MoH", u["Kenema Hospital"], number=3, code="C-3-theirs")
    return u


def test_taking_theirs_for_every_conflict_at_once(tmp_path: Path) -> None:
    path = tmp_path / "cli.gpkg"
    with Registry.create(path) as r:
        add_types(r)
        u = overlapping_edits(r)
    done = cli("merge3", str(path), "--base", "MoH:1", "--ours", "MoH:2", "--theirs", "MoH:3")
    assert done.returncode == 0, done.stderr
    assert "all at once: --version \"MoH:4\" --all --take" in done.stdout
    with Registry.open(path) as r:
        kinds = sorted(c["kind"] for c in list_conflicts(r, "MoH:4"))
    assert kinds == ["duplicate_new", "edit_delete", "field", "field", "field", "move_move"]

    done = cli("conflicts", "resolve", str(path), "--version", "MoH:4", "--all", "--take",
               "theirs", "--author", "aminata")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ("Resolved 5 conflict(s) in MoH v4 with --take theirs (1 edit_delete, "
                        "3 field, 1 move_move).")
    assert lines[1] == "Skipped 1:"
    assert lines[2].startswith("  1 duplicate_new (") and "decided pair by pair" in lines[2]
    assert "--kind duplicate_new" in lines[2]
    assert lines[3] == 'Still open: 1 (georeg conflicts list REG --version "MoH:4" --status open).'

    with Registry.open(path) as r:
        assert unit(r, "MoH", u["Bo CHP"], 4)["name"] == "Bo CHP (theirs)"
        assert unit(r, "MoH", u["Bo CHP"], 4)["code"] == "C-1-theirs"
        assert unit(r, "MoH", u["Bo"], 4)["code"] == "BO-theirs"
        assert unit(r, "MoH", u["Baoma MCHP"], 4)["parent_uuid"] == u["Kenema"]
        assert unit(r, "MoH", u["Kenema Hospital"], 4)["code"] == "C-3-theirs"
        entry = history(r, unit=u["Bo CHP"], limit=1)[0]
        assert entry["origin"] == "cli" and entry["author"] == "aminata"
        done_ = [c for c in list_conflicts(r, "MoH:4") if c["status"] == "resolved"]
        assert {(c["resolution"], c["resolver"]) for c in done_} == {("theirs", "aminata")}

    # the duplicates, named: the same place, keep ours
    done = cli("conflicts", "resolve", str(path), "--version", "MoH:4", "--all", "--take", "ours",
               "--kind", "duplicate_new", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["resolved"], data["skipped"], data["open"]) == (1, [], 0)
    with Registry.open(path) as r:
        assert sum(1 for n in names(r, "MoH", 4) if n == "Gbo Health Post") == 1
        versions.publish_version(r, "MoH", 4)


def test_what_does_not_fit_is_skipped_with_its_reason_and_the_rest_lands(reg: Registry) -> None:
    u = overlapping_edits(reg)
    merge_three_way(reg, "MoH:1", "MoH:2", "MoH:3")
    # --take both fits only the duplicates
    got = resolve_conflicts(reg, "MoH:4", "both")
    assert (got["resolved"], len(got["skipped"]), got["open"]) == (0, 6, 6)
    assert all("--take both only applies to duplicate_new" in s["reason"]
               for s in got["skipped"] if s["kind"] != "duplicate_new")
    # and the duplicates themselves are only settled in bulk when named
    (dup,) = [s for s in got["skipped"] if s["kind"] == "duplicate_new"]
    assert "decided pair by pair" in dup["reason"]
    got = resolve_conflicts(reg, "MoH:4", "both", kind="duplicate_new")
    assert (got["resolved"], got["skipped"], got["open"]) == (1, [], 5)

    # Sierra's other district is deleted in the draft since: 'theirs' for Baoma (move it
    # there) is refused, the rest still lands
    units.delete_unit(reg, "MoH", u["Kenema Hospital"], number=4)
    units.delete_unit(reg, "MoH", u["Kenema"], number=4)
    got = resolve_conflicts(reg, "MoH:4", "theirs", kind=None, resolver="kofi")
    refused = [s for s in got["skipped"] if s["reason"].startswith("refused")]
    assert [(s["kind"], s["unit_uuid"]) for s in refused] == [("move_move", u["Baoma MCHP"])]
    assert "no unit with uuid or ref" in refused[0]["reason"]
    assert got["resolved_by_kind"] == {"field": 3, "edit_delete": 1}  # its unit is gone
    open_ = list_conflicts(reg, "MoH:4", status="open")
    assert [c["kind"] for c in open_] == ["move_move"]
    assert unit(reg, "MoH", u["Baoma MCHP"], 4)["parent_uuid"] == u["Bo"]  # base, untouched

    with pytest.raises(InvalidInput, match="needs a value per conflict"):
        resolve_conflicts(reg, "MoH:4", "value")
    with pytest.raises(InvalidInput, match="--kind must be one of"):
        resolve_conflicts(reg, "MoH:4", "ours", kind="everything")


def test_a_bulk_resolution_is_one_transaction(reg: Registry) -> None:
    """Thousands of conflicts are one decision: cancelled half-way, none is resolved."""
    u = three_drafts(reg)
    with reg.write() as conn:
        for i in range(60):
            conn.execute(text(
                "INSERT INTO org_unit (version_id, uuid, name, parent_key, validation_status) "
                "SELECT fid, :u, :n, (SELECT unit_key FROM org_unit o WHERE o.version_id = "
                "source_version.fid AND o.uuid = :p), 'valid' FROM source_version "
                "WHERE number IN (2, 3)"), {"u": f"00000000-0000-4000-8000-{i:012}",
                                             "n": f"Post {i}", "p": u["Bo"]})
    # (the same 60 new units on both sides, with different codes: 60 field conflicts)
    with reg.write() as conn:
        conn.execute(text("UPDATE org_unit SET code = 'A' || name WHERE name LIKE 'Post %' AND "
                          "version_id = (SELECT fid FROM source_version WHERE number = 2)"))
        conn.execute(text("UPDATE org_unit SET code = 'B' || name WHERE name LIKE 'Post %' AND "
                          "version_id = (SELECT fid FROM source_version WHERE number = 3)"))
    report = merge_three_way(reg, "MoH:1", "MoH:2", "MoH:3")
    assert report["counts"]["conflicts"] == 60

    job = BulkResolveJob(reg, "MoH:4", "theirs")
    seen: list[int] = []

    def tick(p: Progress) -> None:
        seen.append(p.done)
        if p.done >= 25:
            job.cancel()

    job.on_progress(tick)
    with pytest.raises(Cancelled):
        job.run()
    assert seen[0] == 0 and seen[-1] == 25  # a progress bar has something to show
    assert len(list_conflicts(reg, "MoH:4", status="open")) == 60  # nothing landed
    assert {d["code"] for n, d in names(reg, "MoH", 4).items() if n.startswith("Post ")} == {None}

    got = resolve_conflicts(reg, "MoH:4", "theirs")
    assert got["resolved"] == 60 and got["open"] == 0
    assert {d["code"] for n, d in names(reg, "MoH", 4).items() if n.startswith("Post ")} == {
        f"BPost {i}" for i in range(60)}


def test_bulk_resolution_usage_mistakes_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "cli.gpkg"
    with Registry.create(path) as r:
        add_types(r)
        overlapping_edits(r)
    assert cli("merge3", str(path), "--base", "MoH:1", "--ours", "MoH:2", "--theirs",
               "MoH:3").returncode == 0
    done = cli("conflicts", "resolve", str(path), "--all", "--take", "ours")
    assert done.returncode == 2 and "--all needs --version S:N" in said(done)
    done = cli("conflicts", "resolve", str(path), "1", "--all", "--version", "MoH:4", "--take",
               "ours")
    assert done.returncode == 2 and "a conflict ID or --all, not both" in said(done)
    done = cli("conflicts", "resolve", str(path), "--version", "MoH:4", "--all", "--take",
               "value", "--value", "x")
    assert done.returncode == 2 and "needs a value per conflict" in said(done)
    done = cli("conflicts", "resolve", str(path), "--take", "ours")
    assert done.returncode == 2 and "Give the conflict's ID" in said(done)
    with Registry.open(path) as r:
        assert len(list_conflicts(r, "MoH:4", status="open")) == 6


# --- taking the side that deleted a unit -----------------------------------------------


def deleted_here_moved_in_there(reg: Registry) -> tuple[dict[str, str], dict[str, str]]:
    """Ours deletes Bo with its facilities; theirs moves Kenema Hospital into Bo, adds an
    annex below the hospital and a new post in Bo."""
    u = three_drafts(reg)
    units.delete_unit(reg, "MoH", u["Bo"], number=2, recursive=True)
    units.move_unit(reg, "MoH", u["Kenema Hospital"], u["Bo"], number=3)
    annex = units.add_unit(reg, "MoH", name="Hospital Annex", parent=u["Kenema Hospital"],
                           type="Facility", number=3)
    post = units.add_unit(reg, "MoH", name="Bo New Post", parent=u["Bo"], type="Facility",
                          number=3)
    return u, {"annex": annex["uuid"], "post": post["uuid"]}


def test_taking_the_deleting_side_keeps_what_the_other_side_moved_in(tmp_path: Path) -> None:
    path = tmp_path / "cli.gpkg"
    with Registry.create(path) as r:
        add_types(r)
        u, new = deleted_here_moved_in_there(r)
    done = cli("merge3", str(path), "--base", "MoH:1", "--ours", "MoH:2", "--theirs", "MoH:3",
               "--json")
    assert done.returncode == 0, done.stderr
    (conflict,) = json.loads(done.stdout)["conflicts"]
    assert (conflict["kind"], conflict["field"]) == ("edit_delete", "children")
    assert "units theirs moved in go back where ours has them" in conflict["message"]

    done = cli("conflicts", "resolve", str(path), str(conflict["id"]), "--take", "ours")
    assert done.returncode == 0, done.stderr
    out = said(done)
    # Bo, its two facilities (deleted by ours) and the post theirs added there
    assert "Deleted 4 unit(s) (1 that theirs had added there)." in out
    assert ("Kept 1 unit(s) theirs had moved in from elsewhere (nobody deleted them), back "
            "where ours has them: Kenema Hospital (under Kenema).") in out
    with Registry.open(path) as r:
        merged = names(r, "MoH", 4)
        assert not {"Bo", "Bo CHP", "Baoma MCHP", "Bo New Post"} & set(merged)
        assert merged["Kenema Hospital"]["parent_uuid"] == u["Kenema"]
        assert merged["Hospital Annex"]["parent_uuid"] == u["Kenema Hospital"]  # with it
        assert merged["Hospital Annex"]["uuid"] == new["annex"]
        resolved = list_conflicts(r, "MoH:4")[0]
        assert resolved["resolved_value"]["moved_back"][0]["uuid"] == u["Kenema Hospital"]
        assert resolved["resolved_value"]["deleted_added"] == 1
        assert run_checks(r, "MoH", 4, checks=["cycle", "orphan", "stale_path"])["findings"] \
            == []
        versions.publish_version(r, "MoH", 4)


def test_a_deletion_does_not_decide_for_a_unit_with_its_own_conflict(reg: Registry) -> None:
    """Ours deletes Bo and, on its own, Kenema Hospital, which theirs moved into Bo: the
    hospital is its own edit_delete conflict (it waits under its base parent), and taking
    ours for Bo deletes Bo's subtree without deciding the hospital's fate."""
    u = three_drafts(reg)
    units.delete_unit(reg, "MoH", u["Bo"], number=2, recursive=True)
    units.delete_unit(reg, "MoH", u["Kenema Hospital"], number=2)
    units.move_unit(reg, "MoH", u["Kenema Hospital"], u["Bo"], number=3)
    units.add_unit(reg, "MoH", name="Bo New Post", parent=u["Bo"], type="Facility", number=3)
    report = merge_three_way(reg, "MoH:1", "MoH:2", "MoH:3")
    by_unit = {c["unit_uuid"]: c for c in report["conflicts"]}
    assert set(by_unit) == {u["Bo"], u["Kenema Hospital"]}
    assert unit(reg, "MoH", u["Kenema Hospital"], 4)["parent_uuid"] == u["Kenema"]

    done = resolve_conflict(reg, by_unit[u["Bo"]]["id"], "ours")
    assert done["also_closed"] == [] and done["applied"]["deleted"] == 4
    assert [c["unit_uuid"] for c in list_conflicts(reg, "MoH:4", status="open")] == [
        u["Kenema Hospital"]]
    resolve_conflict(reg, by_unit[u["Kenema Hospital"]]["id"], "theirs")
    # theirs put it in Bo, which is gone now: it stays where it is
    assert unit(reg, "MoH", u["Kenema Hospital"], 4)["parent_uuid"] == u["Kenema"]
    versions.publish_version(reg, "MoH", 4)


# --- the same on every backend ------------------------------------------------------------


@pytest.mark.parametrize("backend", ["spatialite", pytest.param("postgis",
                                                                marks=pytest.mark.postgis)])
def test_bulk_resolution_and_moved_in_units_on_other_backends(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    registry = Registry.create(location_for(backend, tmp_path, request))
    try:
        add_types(registry)
        u, new = deleted_here_moved_in_there(registry)
        # and a field conflict beside it
        units.rename_unit(registry, "MoH", u["Kenema"], "Kenema (ours)", number=2)
        units.rename_unit(registry, "MoH", u["Kenema"], "Kenema (theirs)", number=3)
        report = merge_three_way(registry, "MoH:1", "MoH:2", "MoH:3")
        assert sorted(c["kind"] for c in report["conflicts"]) == ["edit_delete", "field"]
        summary = conflict_summary(registry, "MoH:4")
        assert summary == {"total": 2, "by_status": {"open": 2},
                           "by_kind": {"edit_delete": {"open": 1}, "field": {"open": 1}}}
        page = list_conflicts(registry, "MoH:4", limit=1, offset=1)
        assert [c["id"] for c in page] == [report["conflicts"][1]["id"]]

        got = resolve_conflicts(registry, "MoH:4", "ours")
        assert (got["resolved"], got["skipped"], got["open"]) == (2, [], 0)
        merged = names(registry, "MoH", 4)
        assert not {"Bo", "Bo CHP", "Baoma MCHP", "Bo New Post"} & set(merged)
        assert merged["Kenema Hospital"]["parent_uuid"] == u["Kenema"]
        assert merged["Hospital Annex"]["uuid"] == new["annex"]
        assert merged["Kenema (ours)"]["uuid"] == u["Kenema"]
        versions.publish_version(registry, "MoH", 4)
    finally:
        _drop(registry)


@pytest.mark.parametrize("backend", ["geopackage", pytest.param("postgis",
                                                                marks=pytest.mark.postgis)])
def test_a_move_the_database_refuses_is_skipped_and_the_rest_lands(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Ours puts Kenema under Bo, theirs Bo under Kenema: two cycle conflicts.  Kenema is
    settled on its own (under Bo); then 'theirs for all' would put Bo under Kenema — the
    database's cycle trigger refuses that one, inside its savepoint, and the field
    conflict resolved with it still lands."""
    registry = Registry.create(location_for(backend, tmp_path, request))
    try:
        add_types(registry)
        u = three_drafts(registry)
        units.move_unit(registry, "MoH", u["Kenema"], u["Bo"], number=2)
        units.move_unit(registry, "MoH", u["Bo"], u["Kenema"], number=3)
        units.edit_unit(registry, "MoH", u["Bo CHP"], number=2, code="X")
        units.edit_unit(registry, "MoH", u["Bo CHP"], number=3, code="Y")
        report = merge_three_way(registry, "MoH:1", "MoH:2", "MoH:3")
        cycles = {c["unit_uuid"]: c for c in report["conflicts"] if c["kind"] == "cycle"}
        resolve_conflict(registry, cycles[u["Kenema"]]["id"], "ours")

        got = resolve_conflicts(registry, "MoH:4", "theirs")
        assert got["resolved_by_kind"] == {"field": 1}
        (skip,) = got["skipped"]
        assert (skip["kind"], skip["unit_uuid"]) == ("cycle", u["Bo"])
        assert skip["reason"].startswith("refused: ") and "ancestor" in skip["reason"]
        assert unit(registry, "MoH", u["Bo CHP"], 4)["code"] == "Y"
        assert unit(registry, "MoH", u["Bo"], 4)["parent_uuid"] == u["Sierra"]
        assert got["open"] == 1
    finally:
        _drop(registry)
