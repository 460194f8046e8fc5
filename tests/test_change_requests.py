"""Field change requests: a collector proposes, a reviewer approves field by field or rejects.

Runs on every backend (GeoPackage, SpatiaLite, PostGIS) with the Sierra Leone demo.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from storage import change_requests as cr
from storage import units, versions
from storage.audit import history
from storage.errors import ConflictError, InvalidInput, NotFound, PublishedVersionError
from storage.registry import Registry

FACILITY = "kbGqmM6ZWWV"  # Allen Town Health Post, Western Area / Freetown
CHIEFDOM = "C9uduqDZr9d"  # Freetown, its chiefdom
BO = "O6uvpzGd5pu"
ROOT = Path(__file__).resolve().parent.parent


def _published_with_draft(reg: Registry) -> None:
    versions.publish_version(reg, "SL", 1, make_default=True)
    versions.create_version(reg, "SL", copy_from=1)


def test_partial_approval_applies_only_the_approved_fields_with_audit(demo: Registry) -> None:
    _published_with_draft(demo)
    before = units.get_unit(demo, "SL", FACILITY, 1)
    made = cr.create_change_request(
        demo, "SL", unit=FACILITY, created_by="amina", device="phone-1",
        values={"name": "Allen Town CHC", "location": [-13.19, 8.46], "code": before["code"]},
    )
    assert made["created"] and made["kind"] == "change" and made["status"] == "new"
    # the code was unchanged: it is not requested
    assert made["requested_fields"] == ["name", "location"]
    assert made["old"]["name"] == before["name"]
    assert made["version"] == "SL v1"

    done = cr.approve_change_request(demo, made["id"], reviewer="kofi", fields=["name"])
    assert done["status"] == "approved" and done["approved_fields"] == ["name"]
    assert done["applied_to"] == "SL v2" and done["reviewed_by"] == "kofi"
    after = units.get_unit(demo, "SL", FACILITY, 2)
    assert after["name"] == "Allen Town CHC"
    assert after["location"] == before["location"]  # not approved, not applied
    assert units.get_unit(demo, "SL", FACILITY, 1)["name"] == before["name"]  # published
    entry = history(demo, unit=before["uuid"], limit=1)[0]
    assert entry["origin"] == "field" and entry["author"] == "kofi"

    with pytest.raises(ConflictError, match="already approved"):
        cr.approve_change_request(demo, made["id"], reviewer="kofi")


def test_same_uuid_twice_is_one_request(demo: Registry) -> None:
    a = cr.create_change_request(demo, "SL", unit=FACILITY, uuid="u-1", values={"name": "X"})
    b = cr.create_change_request(demo, "SL", unit=FACILITY, uuid="u-1", values={"name": "Y"})
    assert a["id"] == b["id"] and not b["created"] and b["new"]["name"] == "X"
    assert cr.list_change_requests(demo)["count"] == 1


def test_unit_created_on_a_phone_becomes_a_unit_only_when_approved(demo: Registry) -> None:
    phone_uuid = "9dcb6991-c72c-416d-ba38-4556c62b400f"
    made = cr.create_change_request(
        demo, "SL", new_unit_uuid=phone_uuid, created_by="amina",
        values={"name": "New Org Unit", "parent": CHIEFDOM, "type": "Facility",
                "location": {"latitude": 8.47, "longitude": -13.2, "altitude": 12}},
        location_accuracy=12.8,
    )
    assert made["kind"] == "creation" and made["unit_uuid"] == phone_uuid
    assert made["requested_fields"] == ["name", "parent", "type", "location"]
    with pytest.raises(NotFound):
        units.get_unit(demo, "SL", phone_uuid)
    # the phone re-sends the same unit: still one request
    again = cr.create_change_request(demo, "SL", new_unit_uuid=phone_uuid,
                                     values={"name": "New Org Unit", "parent": CHIEFDOM})
    assert again["id"] == made["id"] and not again["created"]

    with pytest.raises(InvalidInput, match="needs its name"):
        cr.approve_change_request(demo, made["id"], reviewer="kofi", fields=["location"])
    cr.approve_change_request(demo, made["id"], reviewer="kofi")
    unit = units.get_unit(demo, "SL", phone_uuid)
    assert unit["name"] == "New Org Unit" and unit["validation_status"] == "new"
    assert unit["parent_ref"] == CHIEFDOM and unit["type"] == "Facility"
    assert unit["location"] == pytest.approx([-13.2, 8.47])
    assert history(demo, unit=phone_uuid, limit=1)[0]["author"] == "kofi"


def test_reject_needs_a_comment_and_changes_nothing(demo: Registry) -> None:
    made = cr.create_change_request(demo, "SL", unit=FACILITY, values={"closed_date": "2026-01-31"})
    with pytest.raises(InvalidInput, match="comment"):
        cr.reject_change_request(demo, made["id"], reviewer="kofi", comment=" ")
    done = cr.reject_change_request(demo, made["uuid"], reviewer="kofi", comment="Still open")
    assert done["status"] == "rejected" and done["rejection_comment"] == "Still open"
    assert units.get_unit(demo, "SL", FACILITY)["closed_date"] is None
    assert cr.list_change_requests(demo, status="new")["count"] == 0
    assert cr.list_change_requests(demo, status="rejected")["count"] == 1


def test_bad_requests_name_the_field_and_leave_nothing(demo: Registry) -> None:
    with pytest.raises(InvalidInput, match="field 'type'"):
        cr.create_change_request(demo, "SL", unit=FACILITY, values={"type": "Castle"})
    with pytest.raises(InvalidInput, match="field 'location'"):
        cr.create_change_request(demo, "SL", unit=FACILITY, values={"location": [200, 95]})
    with pytest.raises(InvalidInput, match="field 'opening_date'"):
        cr.create_change_request(demo, "SL", unit=FACILITY, values={"opening_date": "last May"})
    with pytest.raises(InvalidInput, match="unknown field"):
        cr.create_change_request(demo, "SL", unit=FACILITY, values={"colour": "red"})
    with pytest.raises(InvalidInput, match="nothing to change"):
        cr.create_change_request(demo, "SL", unit=FACILITY, values={"name": "Allen Town Health Post"})
    with pytest.raises(NotFound):
        cr.create_change_request(demo, "SL", unit="nope", values={"name": "X"})
    assert cr.list_change_requests(demo)["count"] == 0


def test_approval_needs_a_draft_and_a_requested_field(demo: Registry) -> None:
    versions.publish_version(demo, "SL", 1, make_default=True)
    made = cr.create_change_request(demo, "SL", unit=FACILITY, values={"name": "Renamed"})
    with pytest.raises(InvalidInput, match="not requested"):
        cr.approve_change_request(demo, made["id"], reviewer="kofi", fields=["code"])
    with pytest.raises(PublishedVersionError, match="version new"):
        cr.approve_change_request(demo, made["id"], reviewer="kofi")
    assert cr.get_change_request(demo, made["id"])["status"] == "new"
    versions.create_version(demo, "SL", copy_from=1)
    cr.approve_change_request(demo, made["id"], reviewer="kofi", fields=["new_name"])
    assert units.get_unit(demo, "SL", FACILITY, 2)["name"] == "Renamed"


def test_move_groups_and_subtree_filter(demo: Registry) -> None:
    made = cr.create_change_request(
        demo, "SL", unit=FACILITY, values={"parent": BO, "groups": ["Mission"]})
    assert made["requested_fields"] == ["parent", "groups"]
    with demo.read() as conn:
        bo = conn.execute(text("SELECT version_id, path FROM org_unit WHERE source_ref = :r"),
                          {"r": BO}).one()
        wa = conn.execute(text("SELECT version_id, path FROM org_unit WHERE source_ref = :r"),
                          {"r": CHIEFDOM}).one()
    assert cr.list_change_requests(demo, within_paths=[tuple(wa)])["count"] == 1
    assert cr.list_change_requests(demo, within_paths=[tuple(bo)])["count"] == 0
    cr.approve_change_request(demo, made["id"], reviewer="kofi")
    unit = units.get_unit(demo, "SL", FACILITY)
    assert unit["parent_ref"] == BO and unit["groups"] == ["Mission"]
    assert unit["path"].startswith(bo[1])


def test_cli_lists_shows_approves_and_rejects(tmp_path: Path) -> None:
    from sync.dhis2_json import import_dhis2_files
    from tests.conftest import DEMO_FILES

    path = tmp_path / "reg.gpkg"
    reg = Registry.create(path)
    import_dhis2_files(reg, DEMO_FILES, source="SL")
    a = cr.create_change_request(reg, "SL", unit=FACILITY, values={"name": "A", "code": "C1"})
    b = cr.create_change_request(reg, "SL", unit=BO, values={"name": "Bo Town"})
    reg.close()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "georeg.cli", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    listed = run("changes", str(path), "--status", "new", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)["results"]] == [b["id"], a["id"]]
    shown = run("changes", "show", str(path), str(a["id"]))
    assert shown.returncode == 0 and "code" in shown.stdout and "Allen Town" in shown.stdout
    ok = run("changes", "approve", str(path), str(a["id"]), "--fields", "name", "--by", "kofi")
    assert ok.returncode == 0, ok.stderr
    bad = run("changes", "reject", str(path), str(b["id"]), "--comment", "")
    assert bad.returncode == 2 and "comment" in bad.stderr
    no = run("changes", "reject", str(path), str(b["id"]), "--comment", "Wrong town")
    assert no.returncode == 0, no.stderr
    missing = run("changes", "show", str(path), "999")
    assert missing.returncode == 4
    reg = Registry.open(path)
    assert units.get_unit(reg, "SL", FACILITY)["name"] == "A"
    assert units.get_unit(reg, "SL", FACILITY)["code"] != "C1"
    assert cr.get_change_request(reg, b["id"])["status"] == "rejected"
    reg.close()


def test_deleting_units_the_field_sent_requests_and_data_about_says_so(demo: Registry) -> None:
    """A GIS officer deletes a chiefdom with --recursive in the draft: a collector's
    correction of one of its facilities still waits for review, and a submission was made
    there. The delete goes ahead (it is the officer's draft) but says what it leaves
    behind, instead of the reviewer finding an approval that fails."""
    import hashlib

    from click.testing import CliRunner

    from georeg.cli import main

    _published_with_draft(demo)
    cr.create_change_request(demo, "SL", unit=FACILITY, created_by="amina",
                             values={"name": "Allen Town CHC"})
    uuid = units.get_unit(demo, "SL", FACILITY, 1)["uuid"]
    xml = b'<data id="f"><meta><instanceID>uuid:1</instanceID></meta></data>'
    with demo.write(origin="test") as conn:
        conn.execute(text("INSERT INTO submission (instance_id, form_id, xml, xml_md5, "
                          "org_unit_uuid) VALUES ('uuid:1', 'f', :x, :m, :u)"),
                     {"x": xml, "m": hashlib.md5(xml).hexdigest(), "u": uuid})
    other = units.delete_unit(demo, "SL", BO, number=2, recursive=True)
    assert other["warnings"] == []  # nothing from the field there

    if demo.location.path is None:
        done = units.delete_unit(demo, "SL", CHIEFDOM, number=2, recursive=True)
        out = "\n".join(done["warnings"])
    else:
        res = CliRunner().invoke(main, ["unit", "delete", str(demo.location.path), "--source",
                                        "SL", "--version", "2", CHIEFDOM, "--recursive"])
        assert res.exit_code == 0, res.output
        out = res.output
        assert "Deleted" in out
    assert "1 change request(s) waiting for review" in out and "rejected" in out
    assert "1 submission(s) were made" in out
    assert units.get_unit(demo, "SL", FACILITY, 1)["uuid"] == uuid  # published: untouched


def test_requests_are_found_by_unit_through_an_index(demo: Registry) -> None:
    """Migration 0010: the server's area checks look requests up by unit (and by the
    parent a new unit names) for every request a reviewer lists; without an index each
    lookup read them all (10,000 requests: 6.5-18 s on PostgreSQL). Undone and redone."""
    from alembic import command
    from sqlalchemy import inspect

    from storage.registry import _alembic_config

    def indexed() -> set[tuple[str, ...]]:
        with demo.engine.connect() as conn:
            found = inspect(conn).get_indexes(
                "change_request", schema=demo.location.schema if demo.location.url else None)
        return {tuple(i["column_names"]) for i in found}

    assert {("unit_uuid",), ("new_parent_uuid",)} <= indexed()
    with demo.engine.connect() as conn:  # and submissions by the instance an edit replaces
        assert ["deprecated_id"] in [i["column_names"] for i in inspect(conn).get_indexes(
            "submission", schema=demo.location.schema if demo.location.url else None)]
    if demo.location.path is not None:
        with demo.read() as conn:
            plan = " ".join(str(r[-1]) for r in conn.execute(text(
                "EXPLAIN QUERY PLAN SELECT new_parent_uuid FROM change_request "
                "WHERE unit_uuid = 'u' AND kind = 'creation' AND status = 'new'")))
        assert "change_request_unit_idx" in plan, plan
    for target in ("0009", "head"):
        with demo.engine.connect() as conn:
            conn.execution_options(georeg_write=True)
            with conn.begin():
                (command.downgrade if target == "0009" else command.upgrade)(
                    _alembic_config(conn), target)
        if target == "0009":
            assert not {("unit_uuid",), ("new_parent_uuid",)} & indexed()
    assert {("unit_uuid",), ("new_parent_uuid",)} <= indexed()
