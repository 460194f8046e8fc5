"""3-way merge safety: a deletion that conflicts is not applied before it is decided,
a draft with open conflicts is not what the phones get, and two merges at once on
PostGIS do not trip over the version number.

* One side deletes a district with everything in it (``--recursive``), the other
  adds a facility in it (or renames it).  The deletion of the *whole subtree* is one
  decision: until it is resolved the district keeps its original facilities; taking
  the side that kept it keeps them, taking the side that deleted it deletes the
  district, its facilities and the one added there.
* ``version default`` refuses a merged draft with open conflicts, like ``publish``
  and ``version new --from`` do, and says how to list and resolve them.
* On PostGIS a second merge (or version creation) of the same source while the first
  is still running waits for it and takes the next number, instead of failing on the
  unique (source, number) key; a writer that takes a number without coming through
  ``insert_version`` gets a clear message, with nothing written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from storage import units, versions
from storage.errors import ConflictError
from storage.merging import list_conflicts, merge_three_way, resolve_conflict
from storage.registry import Registry
from tests.conftest import _drop, location_for
from tests.test_merge import add_types, names, three_drafts

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    registry = Registry.create(tmp_path / "m3.gpkg")
    add_types(registry)
    yield registry
    registry.close()


def children_of(reg: Registry, number: int, parent_uuid: str) -> set[str]:
    return {n for n, d in names(reg, "MoH", number).items() if d["parent_uuid"] == parent_uuid}


def by_unit(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["unit_uuid"]: c for c in report["conflicts"]}


# --- #4: a conflicting deletion holds its whole subtree -----------------------------------


def delete_bo_here_add_a_post_there(reg: Registry) -> tuple[dict[str, str], str]:
    """Ours deletes Bo with its two facilities; theirs adds a facility in Bo."""
    u = three_drafts(reg)
    units.delete_unit(reg, "MoH", u["Bo"], number=2, recursive=True)
    post = units.add_unit(reg, "MoH", name="Bo New Post", parent=u["Bo"], type="Facility",
                          number=3)
    return u, post["uuid"]


def test_keeping_a_unit_deleted_with_its_subtree_keeps_its_original_children(
        reg: Registry) -> None:
    u, post = delete_bo_here_add_a_post_there(reg)
    report = merge_three_way(reg, "MoH:1", "MoH:2", "MoH:3")

    assert [(c["kind"], c["field"]) for c in report["conflicts"]] == [("edit_delete", "children")]
    assert report["counts"]["deleted"] == 0  # nothing of Bo goes before someone decides
    assert children_of(reg, 4, u["Bo"]) == {"Bo CHP", "Baoma MCHP", "Bo New Post"}
    conflict = by_unit(report)[u["Bo"]]
    assert "2 unit(s) ours deleted below it" in conflict["message"]

    resolve_conflict(reg, conflict["id"], "theirs")  # the side that kept Bo
    assert children_of(reg, 4, u["Bo"]) == {"Bo CHP", "Baoma MCHP", "Bo New Post"}
    assert names(reg, "MoH", 4)["Bo CHP"]["code"] == "C-1"  # with their own values
    versions.publish_version(reg, "MoH", 4)


def test_taking_the_deleting_side_deletes_the_subtree_and_what_was_added_there(
        reg: Registry) -> None:
    u, post = delete_bo_here_add_a_post_there(reg)
    report = merge_three_way(reg, "MoH:1", "MoH:2", "MoH:3")
    resolve_conflict(reg, by_unit(report)[u["Bo"]]["id"], "ours")
    merged = names(reg, "MoH", 4)
    assert not {"Bo", "Bo CHP", "Baoma MCHP", "Bo New Post"} & set(merged)
    assert {"Sierra", "Kenema", "Kenema Hospital"} <= set(merged)
    versions.publish_version(reg, "MoH", 4)


def test_a_unit_deleted_with_its_subtree_and_edited_on_the_other_side_keeps_its_children(
        reg: Registry) -> None:
    u = three_drafts(reg)
    units.delete_unit(reg, "MoH", u["Bo"], number=2, recursive=True)
    units.rename_unit(reg, "MoH", u["Bo"], "Bo District", number=3)
    report = merge_three_way(reg, "MoH:1", "MoH:2", "MoH:3")
    assert [(c["kind"], c["field"]) for c in report["conflicts"]] == [("edit_delete", None)]
    assert report["counts"]["deleted"] == 0
    resolve_conflict(reg, report["conflicts"][0]["id"], "theirs")
    merged = names(reg, "MoH", 4)
    assert merged["Bo District"]["uuid"] == u["Bo"]
    assert children_of(reg, 4, u["Bo"]) == {"Bo CHP", "Baoma MCHP"}


def test_nested_conflicts_each_decide_their_own_subtree(reg: Registry) -> None:
    """Theirs adds a unit two levels down: Bo and Bo CHP both conflict; Baoma is held by
    Bo's conflict.  Keep Bo, drop Bo CHP (and what was added in it)."""
    u = three_drafts(reg)
    units.delete_unit(reg, "MoH", u["Bo"], number=2, recursive=True)
    units.add_unit(reg, "MoH", name="Bo CHP Annex", parent=u["Bo CHP"], type="Facility",
                   number=3)
    report = merge_three_way(reg, "MoH:1", "MoH:2", "MoH:3")
    conflicts = by_unit(report)
    assert set(conflicts) == {u["Bo"], u["Bo CHP"]}
    assert report["counts"]["deleted"] == 0
    assert "Baoma MCHP" in names(reg, "MoH", 4)

    resolve_conflict(reg, conflicts[u["Bo"]]["id"], "theirs")
    resolve_conflict(reg, conflicts[u["Bo CHP"]]["id"], "ours")
    merged = names(reg, "MoH", 4)
    assert children_of(reg, 4, u["Bo"]) == {"Baoma MCHP"}
    assert "Bo CHP Annex" not in merged
    versions.publish_version(reg, "MoH", 4)


def test_untouched_deletions_outside_a_conflict_still_apply(reg: Registry) -> None:
    u = three_drafts(reg)
    units.delete_unit(reg, "MoH", u["Kenema"], number=2, recursive=True)  # no conflict
    units.delete_unit(reg, "MoH", u["Bo"], number=2, recursive=True)
    units.add_unit(reg, "MoH", name="Bo New Post", parent=u["Bo"], type="Facility", number=3)
    report = merge_three_way(reg, "MoH:1", "MoH:2", "MoH:3")
    assert report["counts"]["deleted"] == 2  # Kenema and Kenema Hospital
    merged = names(reg, "MoH", 4)
    assert "Kenema" not in merged and "Kenema Hospital" not in merged
    assert {"Bo CHP", "Baoma MCHP"} <= set(merged)


# --- #10: the default version (what the phones get) ------------------------------------


def test_a_draft_with_open_conflicts_cannot_become_the_default_version(reg: Registry) -> None:
    u = three_drafts(reg)  # v1 is the default
    units.rename_unit(reg, "MoH", u["Bo"], "Bo Town", number=2)
    units.rename_unit(reg, "MoH", u["Bo"], "Bo City", number=3)
    report = merge_three_way(reg, "MoH:1", "MoH:2", "MoH:3")
    with pytest.raises(ConflictError, match=r"MoH v4 has 1 unresolved merge conflict\(s\) and "
                       r"cannot be made the default version\. List them with 'georeg conflicts "
                       r"list REG --version \"MoH:4\"'"):
        versions.set_default_version(reg, "MoH", 4)
    assert [v["number"] for v in versions.list_versions(reg, "MoH") if v["default"]] == [1]
    resolve_conflict(reg, report["conflicts"][0]["id"], "theirs")
    versions.set_default_version(reg, "MoH", 4)
    assert [v["number"] for v in versions.list_versions(reg, "MoH") if v["default"]] == [4]


# --- #4 and #10 through the command line --------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "georeg.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_cli_draft_with_open_conflicts_cannot_become_the_default(tmp_path: Path) -> None:
    path = tmp_path / "cli.gpkg"
    with Registry.create(path) as r:
        add_types(r)
        u, _post = delete_bo_here_add_a_post_there(r)
    done = cli("merge3", str(path), "--base", "MoH:1", "--ours", "MoH:2", "--theirs", "MoH:3",
               "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["counts"]["deleted"] == 0

    done = cli("version", "default", str(path), "-s", "MoH", "-v", "4")
    assert done.returncode == 5, done.stdout
    said = " ".join(done.stderr.split())  # the terminal's line wrapping aside
    assert "1 unresolved merge conflict(s) and cannot be made the default version" in said
    assert "georeg conflicts list REG --version \"MoH:4\"" in said
    assert "georeg conflicts resolve REG ID --take" in said
    with Registry.open(path) as r:
        assert [v["number"] for v in versions.list_versions(r, "MoH") if v["default"]] == [1]
        with pytest.raises(ConflictError, match="made the default version"):
            versions.set_default_version(r, "MoH", 4)

    conflict = report["conflicts"][0]["id"]
    done = cli("conflicts", "resolve", str(path), str(conflict), "--take", "theirs")
    assert done.returncode == 0, done.stderr
    done = cli("version", "default", str(path), "-s", "MoH", "-v", "4")
    assert done.returncode == 0, done.stderr
    with Registry.open(path) as r:
        assert children_of(r, 4, u["Bo"]) == {"Bo CHP", "Baoma MCHP", "Bo New Post"}
        assert [v["number"] for v in versions.list_versions(r, "MoH") if v["default"]] == [4]
        assert not list_conflicts(r, "MoH:4", status="open")


# --- #7: two version creations at once on PostGIS -----------------------------------------


@pytest.fixture
def pg(tmp_path: Path, request: pytest.FixtureRequest) -> Registry:
    registry = Registry.create(location_for("postgis", tmp_path, request))
    add_types(registry)
    yield registry
    _drop(registry)


def in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            out["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def source_id(reg: Registry, name: str = "MoH") -> int:
    with reg.read() as conn:
        return int(conn.execute(text("SELECT fid FROM data_source WHERE name = :n"),
                                {"n": name}).scalar_one())


@pytest.mark.postgis
def test_postgis_merge_while_another_version_is_being_made_takes_the_next_number(
        pg: Registry) -> None:
    three_drafts(pg)
    units.rename_unit(pg, "MoH", "BO", "Bo Town", number=2)
    sid = source_id(pg)
    with pg.write() as conn:  # another merge / import of MoH, still running
        first = versions.insert_version(conn, sid, description="the other merge")
        thread, out = in_thread(lambda: merge_three_way(pg, "MoH:1", "MoH:2", "MoH:3"))
        time.sleep(1.5)
        assert thread.is_alive()  # waits for the first one, does not guess a number
    thread.join(60)
    assert "error" not in out, out.get("error")
    assert out["result"]["version"]["number"] == 5
    listed = {v["number"]: v for v in versions.list_versions(pg, "MoH")}
    assert listed[4]["id"] == first and listed[4]["description"] == "the other merge"
    assert names(pg, "MoH", 5)["Bo Town"]


@pytest.mark.postgis
def test_postgis_two_new_drafts_at_once_both_made(pg: Registry) -> None:
    three_drafts(pg)
    results: list[dict[str, Any]] = []
    threads = [in_thread(lambda: versions.create_version(pg, "MoH", copy_from=1))
               for _ in range(3)]
    for thread, out in threads:
        thread.join(60)
        assert "error" not in out, out.get("error")
        results.append(out["result"])
    assert sorted(r["number"] for r in results) == [4, 5, 6]
    assert all(r["units"] == 6 for r in results)


@pytest.mark.postgis
def test_postgis_number_taken_by_a_writer_that_does_not_lock_is_a_clear_error(
        pg: Registry) -> None:
    three_drafts(pg)
    sid = source_id(pg)
    with pg.write() as conn:  # e.g. a sync copying a version with its own number
        conn.execute(text("INSERT INTO source_version (source_id, number) VALUES (:s, 4)"),
                     {"s": sid})
        thread, out = in_thread(lambda: versions.create_version(pg, "MoH", copy_from=1))
        time.sleep(1.5)
    thread.join(60)
    error = out.get("error")
    assert isinstance(error, ConflictError), error
    assert "Version 4 of 'MoH' was created by someone else at the same time" in str(error)
    assert "run it again" in str(error)
    assert sorted(v["number"] for v in versions.list_versions(pg, "MoH")) == [1, 2, 3, 4]
    assert versions.create_version(pg, "MoH", copy_from=1)["number"] == 5
