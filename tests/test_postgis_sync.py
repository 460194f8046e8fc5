"""Push to and pull from a central PostGIS: first push, only the changes after, resume after a
``kill -9``, conflicts on pull, published versions, and the migration that adds sync_state."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shapely
from alembic import command
from click.testing import CliRunner
from sqlalchemy import text

from storage.backends import Backend, Location, make_engine
from storage.bulk import BulkLoader, UnitRecord
from storage.errors import ConflictError
from storage.registry import Registry, _alembic_config, head_revision
from storage.units import (
    add_group,
    add_unit,
    delete_unit,
    edit_unit,
    get_unit,
    move_unit,
    set_geometry,
    set_group_membership,
)
from storage.versions import (
    create_version,
    delete_version,
    ensure_source,
    insert_version,
    publish_version,
)
from sync import postgis_sync
from sync.dhis2_json import import_dhis2_files
from sync.postgis_sync import UpstreamUnavailable, central_location, pull, push, status
from tests.conftest import DEMO_FILES, ROOT

pytestmark = pytest.mark.postgis
gpkg_only = pytest.mark.parametrize("backend", ["gpkg"], indirect=True)

BO = "O6uvpzGd5pu"  # district Bo
FACILITIES = ["DiszpKrYNg8", "g8upMTyEZGZ", "BV4IomHvri4", "ctfiYW0ePJ8", "EJoI3HArJ2W",
              "Rp268JB6Ne4", "cDw53Ej8rju", "eoYV2p74eVz", "m0XorV4WWg0", "uFp0ztDOFbI"]


def open_central(central: tuple[str, str]) -> Registry:
    return Registry.open(central_location(*central))


def assert_equal(reg: Registry, central: tuple[str, str]) -> dict[str, Any]:
    report = status(reg, *central, compare=True)
    differ = {k: v for k, v in report["tables"].items() if not v["equal"]}
    assert report["equal"], differ
    return report


def only(result: dict[str, Any], **expected: int) -> None:
    """The push/pull figures are exactly ``expected`` and every other count is zero."""
    counts = {k: v for k, v in result.items()
              if isinstance(v, int) and not isinstance(v, bool)
              and k not in ("batches", "last_change_id", "held")}
    assert {k: v for k, v in counts.items() if v} == expected, counts


# --- the migration ---------------------------------------------------------------------


def test_a_0001_registry_is_upgraded_when_opened_and_keeps_its_data(location: str) -> None:
    loc = Location.parse(location)
    old = Registry(loc, make_engine(loc))
    with old.engine.connect() as conn:
        conn.execution_options(georeg_write=True)
        with conn.begin():
            if loc.backend is Backend.POSTGIS:
                conn.exec_driver_sql(f'CREATE SCHEMA "{loc.schema}"')
            command.upgrade(_alembic_config(conn), "0001")
    try:
        assert old.schema_revision() == "0001"
        import_dhis2_files(old, DEMO_FILES, source="SL")
        before = postgis_sync.checksums(old)
        with old.read() as conn:
            log = conn.execute(text("SELECT count(*) FROM change_log")).scalar_one()
        old.close()
        with Registry.open(location) as reg:
            assert reg.schema_revision() == head_revision() != "0001"
            assert postgis_sync.checksums(reg) == before
            with reg.read() as conn:
                assert conn.execute(text("SELECT count(*) FROM change_log")).scalar_one() == log
                for table in ("sync_state", "schedule_job", "schedule_run"):
                    conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                if loc.backend is Backend.GEOPACKAGE:
                    registered = set(conn.execute(text(
                        "SELECT table_name FROM gpkg_contents WHERE data_type = 'attributes'"
                    )).scalars())
                    assert {"sync_state", "schedule_job", "schedule_run"} <= registered
            postgis_sync.SyncState("t").save(reg)
            assert postgis_sync.SyncState.load(reg, "t").exists
    finally:
        if loc.backend is Backend.POSTGIS:
            with old.engine.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{loc.schema}" CASCADE')
        old.close()


# --- push ------------------------------------------------------------------------------------


def test_first_push_sends_everything_then_only_what_changed(demo: Registry,
                                                            central: tuple[str, str]) -> None:
    first = push(demo, *central)
    assert first["created_central"] and first["units_inserted"] == 1332
    assert first["territories_changed"] == 165 and first["versions_created"] == 1
    assert_equal(demo, central)
    for i, ref in enumerate(FACILITIES):
        edit_unit(demo, "SL", ref, name=f"Facility {i} (renamed)")
    second = push(demo, *central)
    only(second, units_sent=10, units_updated=10)
    only(push(demo, *central))
    assert_equal(demo, central)
    with open_central(central) as reg, reg.read() as conn:
        origins: dict[str, int] = dict(conn.execute(text(
            "SELECT origin, count(*) FROM change_log GROUP BY origin")).all())
        assert set(origins) == {"sync"}, origins  # central edits are never 'external' noise
        assert get_unit(reg, "SL", FACILITIES[3])["name"] == "Facility 3 (renamed)"


def test_every_kind_of_edit_reaches_central(demo: Registry, central: tuple[str, str]) -> None:
    push(demo, *central)
    chiefdom = get_unit(demo, "SL", FACILITIES[0])["parent_ref"]
    other = next(ref for ref in FACILITIES if get_unit(demo, "SL", ref)["parent_ref"] != chiefdom)
    add_unit(demo, "SL", name="New CHP", parent=chiefdom, type="Facility",
             location=shapely.Point(-11.7, 7.9))
    move_unit(demo, "SL", FACILITIES[1], get_unit(demo, "SL", other)["parent_ref"])
    move_unit(demo, "SL", chiefdom, "fdc6uOvgoji")  # a whole chiefdom to another district
    set_geometry(demo, "SL", FACILITIES[2], location=None,
                 territory=shapely.box(-11.8, 7.8, -11.7, 7.9))
    groups = get_unit(demo, "SL", FACILITIES[3])["groups"]
    set_group_membership(demo, "SL", FACILITIES[3], groups[0], False)
    delete_unit(demo, "SL", FACILITIES[4])
    edit_unit(demo, "SL", FACILITIES[5], closed_date="2024-01-31", aliases=["Old name"])
    big = get_unit(demo, "SL", "fwxkctgmffZ")  # a chiefdom and its facilities, deleted at once
    assert delete_unit(demo, "SL", big["source_ref"], recursive=True)["deleted"] > 5
    result = push(demo, *central, batch_size=7)  # a deleted subtree spans several batches
    assert result["units_deleted"] > 6 and result["units_inserted"] == 1
    assert result["units_moved"] == 2 and result["batches"] > 3
    assert_equal(demo, central)
    # A group without a ref is known by its name: renamed, it is a new group centrally.
    add_group(demo, "SL", "Hand-made group")
    for ref in FACILITIES[6:9]:
        set_group_membership(demo, "SL", ref, "Hand-made group", True)
    assert push(demo, *central)["memberships_added"] == 3
    with demo.write(origin="test") as conn:
        conn.execute(text("UPDATE org_unit_group SET name = 'Renamed group' "
                          "WHERE name = 'Hand-made group'"))
    renamed = push(demo, *central)
    assert renamed["groups_changed"] == 2 and renamed["memberships_added"] == 3
    assert_equal(demo, central)
    # Whole-version operations: publish, copy to a new draft, delete a draft.
    publish_version(demo, "SL", 1, make_default=True)
    create_version(demo, "SL", copy_from=1)
    edit_unit(demo, "SL", BO, number=2, name="Bo District")
    result = push(demo, *central)
    assert result["versions_published"] == 1 and result["versions_created"] == 1
    assert_equal(demo, central)
    delete_version(demo, "SL", 2)
    assert push(demo, *central)["versions_deleted"] == 1
    assert_equal(demo, central)


def test_first_push_by_copy_logs_one_version_row(demo: Registry,
                                                 central: tuple[str, str]) -> None:
    """The first push COPYs a version with row triggers off and logs it centrally as one
    ``version`` row with counts (as a version copy is logged), not one row per unit: the
    units' history is in the pushing registry.  A unit's central history shows that row;
    later pushes log unit by unit again.  Triggers, indexes and keys are back afterwards."""
    from storage.audit import history

    push(demo, *central)
    client = postgis_sync.SyncState.load(
        demo, postgis_sync.target_name(central_location(*central))).client_id
    with open_central(central) as reg, reg.read() as conn:
        units = conn.execute(text(
            "SELECT count(*) FROM change_log WHERE entity <> 'version'")).scalar_one()
        assert units == 0
        rows = conn.execute(text(
            "SELECT after, origin FROM change_log WHERE entity = 'version' AND op = 'push'")).all()
        members = conn.execute(text("SELECT count(*) FROM group_membership")).scalar_one()
        assert len(rows) == 1 and rows[0].origin == "sync"
        assert rows[0].after | {"number": 1, "client": client, "units": 1332,
                                "territories": 165, "memberships": members} == rows[0].after
        disabled = conn.execute(text(
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE c.relnamespace = to_regnamespace(:s) AND t.tgenabled = 'D'"),
            {"s": central[1]}).scalar_one()
        assert disabled == 0
        indexes = set(conn.execute(text(
            "SELECT indexname FROM pg_indexes WHERE schemaname = :s AND tablename = 'org_unit'"),
            {"s": central[1]}).scalars())
        assert {"org_unit_path_idx", "org_unit_uuid_idx", "org_unit_location_gist"} <= indexes
        # indexes and foreign keys dropped for the load are back, exactly as created
        shape = text(
            "SELECT c.relname, coalesce(k.conname, ''), coalesce(pg_get_constraintdef(k.oid), "
            "''), coalesce((SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes "
            "WHERE schemaname = :s AND tablename = c.relname), '') FROM pg_class c LEFT JOIN "
            "pg_constraint k ON k.conrelid = c.oid WHERE c.relnamespace = to_regnamespace(:s) "
            "AND c.relname IN ('org_unit', 'org_unit_territory', 'group_membership', "
            "'change_log') ORDER BY 1, 2")
        pushed = conn.execute(shape, {"s": central[1]}).all()
    fresh = Registry.create(central_location(central[0], central[1] + "_ref"))
    try:
        with fresh.read() as conn:
            assert conn.execute(shape, {"s": central[1] + "_ref"}).all() == pushed
    finally:
        with fresh.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{central[1]}_ref" CASCADE')
        fresh.close()
    # and an edit made centrally afterwards is audited again, by the triggers
    with open_central(central) as reg:
        bo = get_unit(reg, "SL", BO)["uuid"]
        [came] = history(reg, unit=bo)
        assert came["entity"] == "version" and came["op"] == "push" and came["version"] == 1
        # a unit's history shows it as it arrived with the version (storage.audit.history;
        # the counts are on the version's row, checked above)
        assert came["name"] == "Bo" and came["changes"]["name"] == [None, "Bo"]
        edit_unit(reg, "SL", BO, name="Bo (central)", origin="cli")
        with reg.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM change_log WHERE op = 'update' "
                                     "AND origin = 'cli'")).scalar_one() == 1
        assert [h["op"] for h in history(reg, unit=bo)] == ["update", "push"]
    # an incremental push logs unit by unit
    edit_unit(demo, "SL", FACILITIES[0], name="Renamed here")
    push(demo, *central)
    with open_central(central) as reg, reg.read() as conn:
        logged = conn.execute(text(
            "SELECT entity, op, origin, after->>'name' FROM change_log WHERE entity <> 'version' "
            "AND origin = 'sync'")).all()
        assert [tuple(r) for r in logged] == [("org_unit", "update", "sync", "Renamed here")]


def test_a_pushed_update_is_logged_centrally_as_the_audit_trigger_logs_it(
        demo: Registry, central: tuple[str, str]) -> None:
    """An incremental push updates units set-wise and writes their central change-log rows
    itself: the same before/after snapshots as the per-row audit trigger writes for the
    same edit made centrally."""
    push(demo, *central)
    edit: dict[str, Any] = {"name": "Renamed (both ways)", "code": "X-1",
                            "closed_date": "2024-01-31",
                            "aliases": ["Old name"]}
    with open_central(central) as reg:
        uuid_ = get_unit(reg, "SL", FACILITIES[0])["uuid"]
        # the trigger's rows, for the same edit made centrally (rolled back)
        with reg.engine.connect() as conn, conn.begin() as tx:
            conn.execute(text("SELECT set_config('georeg.origin', 'sync', true)"))
            conn.execute(text(
                "UPDATE org_unit SET name = :name, code = :code, closed_date = :closed, "
                "aliases = CAST(:aliases AS jsonb), location = ST_SetSRID(ST_MakePoint(-11.5, "
                "7.5), 4326) WHERE uuid = :u"),
                {"name": edit["name"], "code": edit["code"], "closed": edit["closed_date"],
                 "aliases": '["Old name"]', "u": uuid_})
            by_trigger = conn.execute(text(
                "SELECT entity, op, unit_uuid, unit_key, record_fid, before, after, origin "
                "FROM change_log WHERE entity = 'org_unit'")).all()
            tx.rollback()
        with reg.read() as conn:
            before = conn.execute(text("SELECT max(fid) FROM change_log")).scalar_one()
    assert len(by_trigger) == 1
    edit_unit(demo, "SL", FACILITIES[0], **edit)
    set_geometry(demo, "SL", FACILITIES[0], location=shapely.Point(-11.5, 7.5))
    edit_unit(demo, "SL", FACILITIES[1], name="Changed here too")
    result = push(demo, *central)
    assert result["units_updated"] == 2
    with open_central(central) as reg, reg.read() as conn:
        by_push = conn.execute(text(
            "SELECT entity, op, unit_uuid, unit_key, record_fid, before, after, origin "
            "FROM change_log WHERE fid > :b AND entity = 'org_unit' AND unit_uuid = :u"),
            {"b": before, "u": uuid_}).all()
        operations = set(conn.execute(text(
            "SELECT operation FROM change_log WHERE fid > :b"), {"b": before}).scalars())
    assert [tuple(r) for r in by_push] == [tuple(r) for r in by_trigger]
    assert all(op and op.startswith("push:") for op in operations), operations
    assert_equal(demo, central)


def test_first_push_copies_awkward_text_and_geometry_exactly(demo: Registry,
                                                            central: tuple[str, str]) -> None:
    """The COPY lines are made in SQL: tabs, newlines, backslashes and quotes in text and
    JSON, and (GeoPackage) a point stored as big-endian WKB, converted by shapely, all
    arrive unchanged."""
    edit_unit(demo, "SL", FACILITIES[0], name="Tab\there, new\nline, back\\slash \\N",
              code="C\r1", aliases=["quote \" and \\ backslash", "tab\tin alias"])
    if demo.backend is Backend.GEOPACKAGE:
        from storage import geometry

        header = geometry.to_gpkg_blob(shapely.Point(0, 0))[:8]  # type: ignore[index]
        big_endian = header + shapely.to_wkb(shapely.Point(-11.5, 8.5), byte_order=0)
        with demo.write(origin="test") as conn:
            conn.execute(text("UPDATE org_unit SET location = :g WHERE source_ref = :r"),
                         {"g": big_endian, "r": FACILITIES[1]})
    push(demo, *central)
    assert_equal(demo, central)
    with open_central(central) as reg:
        unit = get_unit(reg, "SL", FACILITIES[0])
        assert unit["name"] == "Tab\there, new\nline, back\\slash \\N"
        assert unit["aliases"] == ["quote \" and \\ backslash", "tab\tin alias"]
        if demo.backend is Backend.GEOPACKAGE:
            assert get_unit(reg, "SL", FACILITIES[1])["location"] == [-11.5, 8.5]


@gpkg_only
def test_another_registry_with_the_version_pulls_a_whole_push(
        demo: Registry, central: tuple[str, str], tmp_path: Path) -> None:
    """A registry holding the same version (a copy made before the first push) sees the
    one-row whole-version push of another registry like per-unit rows: on pull, a unit
    only that push brought arrives, and a unit changed on both sides is a conflict."""
    twin_path = tmp_path / "twin.gpkg"
    with sqlite3.connect(demo.location.path) as db:  # the demo is open: its WAL into the file
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(demo.location.path, twin_path)  # type: ignore[arg-type]
    chiefdom = get_unit(demo, "SL", FACILITIES[0])["parent_ref"]
    new = add_unit(demo, "SL", name="New CHP", parent=chiefdom, source_ref="NEWCHP0001")
    push(demo, *central)
    clash = FACILITIES[0]
    with open_central(central) as reg:
        edit_unit(reg, "SL", clash, name="Named at the ministry", origin="cli")
    with Registry.open(twin_path) as twin:
        edit_unit(twin, "SL", clash, name="Named in the twin")
        result = pull(twin, *central)
        assert [(c["uuid"], c["field"], c["changed_centrally"]) for c in result["conflicts"]] \
            == [(get_unit(twin, "SL", clash)["uuid"], "name", True)]
        assert result["units_inserted"] == 1
        assert get_unit(twin, "SL", "NEWCHP0001")["uuid"] == new["uuid"]
        assert get_unit(twin, "SL", clash)["name"] == "Named in the twin"
        # and its own push holds that unit back instead of overwriting the ministry's name
        held = push(twin, *central)
        assert held["held"] == 1 and held["conflict_count"] == 1
    with open_central(central) as reg:
        assert get_unit(reg, "SL", clash)["name"] == "Named at the ministry"


@gpkg_only
def test_central_version_published_there_refuses_our_changes(demo: Registry,
                                                               central: tuple[str, str]) -> None:
    push(demo, *central)
    with open_central(central) as reg:
        publish_version(reg, "SL", 1)
    edit_unit(demo, "SL", BO, name="Bo (late edit)")
    result = push(demo, *central)
    assert result["units_sent"] == 0
    assert any("published centrally" in msg for msg in result["refused"])
    pulled = pull(demo, *central)  # the local draft has changes: it is not published here
    assert [c["field"] for c in pulled["conflicts"]] == ["(status)"]


@gpkg_only
def test_a_published_version_is_sent_once(demo: Registry, central: tuple[str, str]) -> None:
    publish_version(demo, "SL", 1, make_default=True)
    first = push(demo, *central)
    assert first["versions_published"] == 1 and first["units_inserted"] == 1332
    only(push(demo, *central))
    with open_central(central) as reg, reg.read() as conn:
        status_, default = conn.execute(text(
            "SELECT v.status, s.default_version_id = v.fid FROM source_version v "
            "JOIN data_source s ON s.fid = v.source_id")).one()
        assert status_ == "published" and default
    assert_equal(demo, central)


# --- interruptions -------------------------------------------------------------------------------


PUSHER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from storage.registry import Registry
    from sync.postgis_sync import push

    def progress(info):
        print("batch", info["batches"], flush=True)
        time.sleep(0.05)

    with Registry.open({reg!r}) as reg:
        push(reg, {url!r}, {schema!r}, batch_size={batch}, full_batch_size={batch},
             progress=progress)
    print("done", flush=True)
""")


def _push_and_kill(reg_path: Path, central: tuple[str, str], batch: int, after: int) -> None:
    script = PUSHER.format(root=str(ROOT), reg=str(reg_path), url=central[0],
                           schema=central[1], batch=batch)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("batch") and int(line.split()[1]) >= after:
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert not line.startswith("done"), "the push ended before it could be killed"
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _central_counts(central: tuple[str, str]) -> tuple[int, int]:
    with open_central(central) as reg, reg.read() as conn:
        return (conn.execute(text("SELECT count(*) FROM org_unit")).scalar_one(),
                conn.execute(text("SELECT count(DISTINCT uuid) FROM org_unit")).scalar_one())


def test_kill_9_in_the_middle_of_a_push_then_push_again(tmp_path: Path,
                                                        central: tuple[str, str]) -> None:
    path = tmp_path / "district.gpkg"
    with Registry.create(path) as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
    # 1. killed during the first (whole) push
    _push_and_kill(path, central, batch=60, after=4)
    rows, distinct = _central_counts(central)
    assert 240 <= rows < 1332 and rows == distinct
    with Registry.open(path) as reg:
        again = push(reg, *central)
        assert again["resumed"] and again["units_inserted"] == 1332 - rows
        assert_equal(reg, central)
        assert _central_counts(central) == (1332, 1332)
        # 2. killed while sending changes
        for ref in FACILITIES * 30:
            edit_unit(reg, "SL", ref, name=f"{ref} renamed {uuid.uuid4().hex[:6]}")
    _push_and_kill(path, central, batch=25, after=3)
    with Registry.open(path) as reg:
        state = postgis_sync.SyncState.load(reg, postgis_sync.target_name(
            central_location(*central)))
        assert state.last_change_id is not None
        again = push(reg, *central)
        assert again["units_sent"] <= len(FACILITIES)
        assert_equal(reg, central)
        assert _central_counts(central) == (1332, 1332)


@gpkg_only
def test_crash_after_the_remote_commit_before_the_local_marker(
    demo: Registry, central: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = postgis_sync.SyncState.save
    calls = {"n": 0}

    def flaky(self: postgis_sync.SyncState, reg: Registry) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # creation, generation, batch 1, then batch 2 is lost
            raise RuntimeError("power cut")
        real(self, reg)

    monkeypatch.setattr(postgis_sync.SyncState, "save", flaky)
    with pytest.raises(RuntimeError, match="power cut"):
        push(demo, *central, batch_size=300, full_batch_size=300)
    monkeypatch.setattr(postgis_sync.SyncState, "save", real)
    again = push(demo, *central, batch_size=300, full_batch_size=300)
    assert again["resumed"] and 0 < again["units_inserted"] < 1332
    assert again["units_sent"] > again["units_inserted"]  # one batch is sent twice, harmlessly
    assert_equal(demo, central)


def test_a_registry_restored_from_a_backup_is_sent_again(tmp_path: Path,
                                                         central: tuple[str, str]) -> None:
    path, backup = tmp_path / "district.gpkg", tmp_path / "backup.gpkg"
    with Registry.create(path) as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
    with Registry.open(path) as reg:
        push(reg, *central)
    shutil.copy(path, backup)
    with Registry.open(path) as reg:
        for ref in FACILITIES:
            edit_unit(reg, "SL", ref, code=f"C-{ref}")
        push(reg, *central)
    shutil.copy(backup, path)  # the district goes back to last week's file
    with Registry.open(path) as reg:
        edit_unit(reg, "SL", BO, name="Bo after the restore")
        result = push(reg, *central)
        assert any("backup" in w for w in result["warnings"])
        assert result["units_sent"] == 1332 and result["units_updated"] == len(FACILITIES) + 1
        assert_equal(reg, central)


@gpkg_only
def test_one_push_or_pull_at_a_time(demo: Registry, central: tuple[str, str]) -> None:
    push(demo, *central)
    state = postgis_sync.SyncState.load(demo, postgis_sync.target_name(
        central_location(*central)))
    with open_central(central) as reg, postgis_sync.exclusive(reg, state.client_id):
        with pytest.raises(ConflictError, match="Another push or pull"):
            push(demo, *central)
        with pytest.raises(ConflictError, match="Another push or pull"):
            pull(demo, *central)
    only(push(demo, *central))


@gpkg_only
def test_an_unreachable_central_is_a_clear_error(demo: Registry) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="Cannot reach"):
        push(demo, f"postgresql://postgres@127.0.0.1:{port}/georeg", "central")
    assert time.monotonic() - started < 10


# --- pull ------------------------------------------------------------------------------------


def test_pull_reports_a_conflict_and_changes_nothing_for_it(demo: Registry,
                                                           central: tuple[str, str]) -> None:
    push(demo, *central)
    clash, other = FACILITIES[0], FACILITIES[1]
    with open_central(central) as reg:
        edit_unit(reg, "SL", clash, name="Named at the ministry", origin="cli")
        edit_unit(reg, "SL", other, code="MIN-001", origin="cli")
    edit_unit(demo, "SL", clash, name="Named in the district")
    result = pull(demo, *central)
    assert result["conflict_count"] == 1, result["conflicts"]
    conflict = result["conflicts"][0]
    assert conflict | {"source": "SL", "version": 1, "field": "name",
                       "local": "Named in the district", "central": "Named at the ministry",
                       "changed_locally": True, "changed_centrally": True} == conflict
    assert result["units_updated"] == 1  # the other unit, changed centrally only
    assert get_unit(demo, "SL", clash)["name"] == "Named in the district"
    assert get_unit(demo, "SL", other)["code"] == "MIN-001"
    # The next push does not overwrite the ministry's name either: the unit is held.
    held = push(demo, *central)
    assert held["units_sent"] == 0 and held["held"] == 1 and held["conflict_count"] == 1
    with open_central(central) as reg:
        assert get_unit(reg, "SL", clash)["name"] == "Named at the ministry"
    # status names it, for whoever looks the next morning
    [named] = status(demo, *central)["held_units"]
    assert named["name"] == "Named in the district" and named["version"] == "SL v1"
    # Choosing a side settles it.
    settled = pull(demo, *central, prefer="central")
    assert settled["conflict_count"] == 0
    assert get_unit(demo, "SL", clash)["name"] == "Named at the ministry"
    final = push(demo, *central)
    assert final["held"] == 0 and final["conflict_count"] == 0
    assert_equal(demo, central)


def test_pull_brings_back_what_changed_centrally(demo: Registry,
                                                 central: tuple[str, str]) -> None:
    push(demo, *central)
    chiefdom = get_unit(demo, "SL", FACILITIES[0])["parent_ref"]
    with open_central(central) as reg:
        add_unit(reg, "SL", name="Ministry CHP", parent=chiefdom, location=shapely.Point(-12, 8))
        move_unit(reg, "SL", FACILITIES[1], chiefdom)
        delete_unit(reg, "SL", FACILITIES[2])
        set_geometry(reg, "SL", FACILITIES[3], territory=shapely.box(-12, 8, -11.9, 8.1))
        groups = get_unit(reg, "SL", FACILITIES[4])["groups"]
        set_group_membership(reg, "SL", FACILITIES[4], groups[0], False)
        create_version(reg, "SL", copy_from=1, description="made at the ministry")
    result = pull(demo, *central)
    assert result["conflict_count"] == 0
    assert result["units_inserted"] == 1 + 1332 - 1 + 1  # new unit + the new version 2
    assert result["versions_created"] == 1
    assert_equal(demo, central)
    only(push(demo, *central))  # nothing pulled is echoed back
    only(pull(demo, *central))


@gpkg_only
def test_units_deleted_centrally_under_local_work_are_a_conflict(
    demo: Registry, central: tuple[str, str]
) -> None:
    push(demo, *central)
    chiefdom = get_unit(demo, "SL", FACILITIES[0])["parent_ref"]
    with open_central(central) as reg:
        delete_unit(reg, "SL", chiefdom, recursive=True)
    add_unit(demo, "SL", name="District's new CHP", parent=chiefdom)
    result = pull(demo, *central)
    assert {c["field"] for c in result["conflicts"]} == {"(unit)"}
    assert get_unit(demo, "SL", chiefdom)["name"]  # nothing deleted here


# --- command line --------------------------------------------------------------------------------


def test_cli_push_status_pull(tmp_path: Path, central: tuple[str, str]) -> None:
    import json

    from georeg.cli_sync import sync_group

    path = tmp_path / "district.sqlite"
    with Registry.create(path) as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
    runner = CliRunner()
    url, schema = central
    out = runner.invoke(sync_group, ["postgis", "status", str(path), "--url", url,
                                     "--schema", schema])
    assert "central side: reachable; no such schema yet" in out.output, out.output
    assert "SL v1 (1,332 units) has never been pushed whole" in out.output
    out = runner.invoke(sync_group, ["postgis", "status", str(path), "--url",
                                     "postgresql://postgres@127.0.0.1:1/none"])
    assert out.exit_code == 0 and "central side: not reachable" in out.output, out.output
    out = runner.invoke(sync_group, ["postgis", "push", str(path), "--url", url,
                                     "--schema", schema, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["units_inserted"] == 1332
    out = runner.invoke(sync_group, ["postgis", "status", str(path), "--url", url,
                                     "--schema", schema, "--compare"])
    assert out.exit_code == 0 and "Both sides are equal." in out.output, out.output
    assert "central side: holds a registry" in out.output and "never been pushed" not in \
        out.output
    out = runner.invoke(sync_group, ["postgis", "pull", str(path), "--url", url,
                                     "--schema", schema])
    assert out.exit_code == 0 and "Pulled from" in out.output, out.output
    out = runner.invoke(sync_group, ["postgis", "push", str(path), "--url",
                                     "postgresql://postgres@127.0.0.1:1/none", "--json"])
    assert out.exit_code == 1 and "upstream_unavailable" in out.output


# --- scale -----------------------------------------------------------------------------------


def synthetic_tree(reg: Registry, units: int = 100_000) -> None:
    """One country, 10 regions, 100 districts, 1,000 chiefdoms, the rest facilities."""
    sizes = [1, 10, 100, 1000]
    with reg.write(origin="test") as conn:
        source = ensure_source(conn, "Synthetic")
        vid = insert_version(conn, source)
        loader = BulkLoader(reg, conn, vid, batch_size=10_000)

        def records() -> Iterator[UnitRecord]:
            made = 0
            for level, count in enumerate(sizes):
                for i in range(count):
                    parent = None if level == 0 else f"L{level - 1}-{i // 10}"
                    yield UnitRecord(name=f"Unit {level}-{i}", source_ref=f"L{level}-{i}",
                                     parent_ref=parent, type_name=f"Level {level + 1}")
                    made += 1
            for i in range(units - made):
                yield UnitRecord(name=f"Facility {i}", source_ref=f"F{i}",
                                 parent_ref=f"L3-{i % 1000}", type_name="Facility",
                                 location=shapely.Point(-12 + (i % 1000) / 1000, 8 + i / units))

        loader.add_units(records())
        loader.finish()


@pytest.mark.slow
def test_100_edits_on_a_100k_tree_push_those_100_and_nothing_else(
    tmp_path: Path, central: tuple[str, str]
) -> None:
    with Registry.create(tmp_path / "big.gpkg") as reg:
        synthetic_tree(reg)
        first = push(reg, *central, batch_size=10_000)
        assert first["units_inserted"] == 100_000
        for i in range(100):
            edit_unit(reg, "Synthetic", f"F{i * 997}", name=f"Facility {i * 997} (checked)")
        with open_central(central) as creg, creg.read() as conn:
            before = conn.execute(text("SELECT max(fid) FROM change_log")).scalar_one()
        second = push(reg, *central)
        only(second, units_sent=100, units_updated=100)
        with open_central(central) as creg, creg.read() as conn:
            written = conn.execute(text(
                "SELECT entity, op, count(*) FROM change_log WHERE fid > :b "
                "GROUP BY entity, op"), {"b": before}).all()
            names = set(conn.execute(text(
                "SELECT after->>'name' FROM change_log WHERE fid > :b"), {"b": before}).scalars())
        # centrally, exactly those 100 units were written, nothing else
        assert [tuple(r) for r in written] == [("org_unit", "update", 100)]
        assert names == {f"Facility {i * 997} (checked)" for i in range(100)}
        assert_equal(reg, central)
