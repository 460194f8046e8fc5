"""``georeg dhis2 push-data``: form submissions to DHIS2 as events (new tracker on 2.41,
``/api/events`` on 2.36) or data value sets, each exported once, errors per submission.

Submissions are written straight into the ``submission`` table of migration 0003 (the
local server's table) and read back through ``sync.dhis2_data.TableSubmissions``; the
fake DHIS2 validates and stores events and data values like DHIS2 does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from georeg.cli_dhis2 import dhis2_group
from storage.errors import GeoregError, InvalidInput, NotFound
from storage.registry import Registry
from sync.dhis2_client import Dhis2Client, is_uid
from sync.dhis2_data import (
    TableSubmissions,
    event_uid,
    export_history,
    export_states,
    export_target,
    load_mapping,
    parse_mapping,
    push_data,
)
from tests.dhis2_helpers import client_for
from tests.fake_dhis2 import FakeDhis2

AGAPE, ADONKIA, BADJIA = "GvFqTavdpGE", "Rp268JB6Ne4", "YuQRtpLP10I"
AGE, SEX, ADMITTED, DIAGNOSIS = "qrur9Dvnyt5", "oZg33kd9taw", "eMyVanycQSC", "K6uUAvq500H"
AFP, DEATHS = "M62VHgYT2n0", "FTRrcoaog83"
FORM = "inpatient"
EVENTS = {"kind": "events", "program": "eBAyeGv0exc", "programStage": "Zj7UnCAulEk",
          "occurredAt": {"question": "admission_date"},
          "dataElements": {"age": AGE, "sex": SEX, "admission_date": ADMITTED,
                           "diagnosis": DIAGNOSIS},
          "values": {"sex": {"m": "Male", "f": "Female"}}}
VALUES = {"kind": "dataValueSets", "period": {"date": "report_date", "type": "Monthly"},
          "dataElements": {"afp_referrals": AFP, "afp_deaths": DEATHS}}


def unit_uuid(reg: Registry, ref: str) -> str:
    with reg.read() as conn:
        return str(conn.execute(text("SELECT uuid FROM org_unit WHERE source_ref = :r"),
                                {"r": ref}).scalar_one())


def add_submission(reg: Registry, instance: str, answers: dict[str, Any], *, unit: str | None,
                   form: str = FORM, as_xml: bool = False, received: str = "2024-03-05T10:00:00Z"
                   ) -> None:
    """A row as the local server stores it: the XML, its JSON reading, the unit's uuid."""
    body = "".join(f"<{k}>{v}</{k}>" for k, v in answers.items())
    xml = (f'<data id="{form}"><group>{body}</group><meta><instanceID>{instance}'
           "</instanceID></meta></data>").encode()
    data = None if as_xml else json.dumps({"data": {"group": answers,
                                                    "meta": {"instanceID": instance}}})
    cast = "CAST(:d AS jsonb)" if reg.backend.value == "postgis" else ":d"
    with reg.write(origin="test") as conn:
        conn.execute(text(
            "INSERT INTO submission (instance_id, form_id, xml, xml_md5, data, org_unit_uuid, "
            f"received_at) VALUES (:i, :f, :x, :m, {cast}, :u, :r)"),
            {"i": instance, "f": form, "x": xml, "m": hashlib.md5(xml).hexdigest(), "d": data,
             "u": unit_uuid(reg, unit) if unit else None, "r": received})


# --- the mapping --------------------------------------------------------------------------


def test_mapping_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match="m.json is not valid JSON"):
        load_mapping(path)
    with pytest.raises(NotFound, match="does not exist"):
        load_mapping(tmp_path / "missing.json")
    cases = [
        ({**EVENTS, "kind": "rows"}, "'kind' must be"),
        ({**EVENTS, "program": "short"}, "'program' must be a DHIS2 uid"),
        ({**EVENTS, "dataElements": {"age": "bad"}}, "'dataElements.age' must be"),
        ({**EVENTS, "period": "202401"}, "'period' is for dataValueSets"),
        ({**VALUES, "period": "2024-01"}, "'period' must be a DHIS2 period"),
        ({**VALUES, "period": {"date": "d", "type": "Fortnightly"}}, "'period.type' must be"),
        ({**VALUES, "colour": 1}, "unknown key\\(s\\) 'colour'"),
        ({**VALUES, "orgUnit": {"column": "x"}}, "'orgUnit' must be"),
    ]
    for raw, message in cases:
        with pytest.raises(InvalidInput, match=message):
            parse_mapping(raw, "m.json")
    assert parse_mapping(EVENTS).data_elements["age"].data_element == AGE


# --- events ---------------------------------------------------------------------------------


def test_events_through_the_tracker_each_once_with_errors_per_submission(
        demo: Registry, fake41: FakeDhis2) -> None:
    add_submission(demo, "uuid:ok-1", {"age": 34, "sex": "f", "admission_date": "2024-03-02",
                                       "diagnosis": "A01"}, unit=AGAPE)
    add_submission(demo, "uuid:ok-2", {"age": 5, "sex": "m", "admission_date": "2024-03-04"},
                   unit=ADONKIA, as_xml=True)
    add_submission(demo, "uuid:bad-age", {"age": "abc", "sex": "m",
                                          "admission_date": "2024-03-04"}, unit=AGAPE)
    add_submission(demo, "uuid:no-unit", {"age": 40, "admission_date": "2024-03-04"}, unit=None)
    add_submission(demo, "uuid:other-form", {"age": 1}, unit=AGAPE, form="other")
    mapping = parse_mapping(EVENTS)
    client = client_for(fake41)
    fake41.clear_log()
    report = push_data(demo, client, FORM, mapping)
    assert report["endpoint"] == "tracker" and report["submissions"] == 4
    assert (report["sent"], report["exported"], report["failed"]) == (3, 2, 2)
    assert report["requests"] == 2  # system info, then one /api/tracker for the batch
    [post] = fake41.posts("/tracker")
    assert post.param("async") == "false" and post.param("atomicMode") == "OBJECT"
    errors = {e["instance_id"]: e for e in report["errors"]}
    assert "E1302" in errors["uuid:bad-age"]["message"] and AGE in errors["uuid:bad-age"]["message"]
    assert errors["uuid:bad-age"]["unit"] == "unit 'Agape CHP'"
    assert "names no org unit" in errors["uuid:no-unit"]["message"]
    ev = fake41.state.events[event_uid("uuid:ok-1", report["target"])]
    assert ev["orgUnit"] == AGAPE and ev["occurredAt"] == "2024-03-02"
    assert ev["program"] == "eBAyeGv0exc" and ev["programStage"] == "Zj7UnCAulEk"
    assert {d["dataElement"]: d["value"] for d in ev["dataValues"]} == {
        AGE: "34", SEX: "Female", ADMITTED: "2024-03-02", DIAGNOSIS: "A01"}
    from_xml = fake41.state.events[event_uid("uuid:ok-2", report["target"])]
    assert from_xml["orgUnit"] == ADONKIA and {"dataElement": SEX, "value": "Male"} in \
        from_xml["dataValues"]
    states = export_states(demo, report["target"])
    assert {k: v["status"] for k, v in states.items()} == {
        "uuid:ok-1": "exported", "uuid:ok-2": "exported", "uuid:bad-age": "failed",
        "uuid:no-unit": "failed"}
    assert states["uuid:no-unit"]["attempts"] == 0 and states["uuid:bad-age"]["attempts"] == 1
    assert is_uid(states["uuid:ok-1"]["remote_ref"])
    # Fixed at the source, the failed one goes; the exported ones are never sent again.
    cast = "CAST(:d AS jsonb)" if demo.backend.value == "postgis" else ":d"
    with demo.write(origin="test") as conn:
        conn.execute(text(f"UPDATE submission SET data = {cast} WHERE instance_id = "
                          "'uuid:bad-age'"),
                     {"d": json.dumps({"group": {"age": 7, "sex": "m",
                                                 "admission_date": "2024-03-04"}})})
    fake41.clear_log()
    again = push_data(demo, client, FORM, mapping)
    assert (again["already_exported"], again["sent"], again["exported"]) == (2, 1, 1)
    [post] = fake41.posts("/tracker")
    assert [e["event"] for e in post.body["events"]] == [
        event_uid("uuid:bad-age", report["target"])]
    assert len(fake41.state.events) == 3
    assert [r["status"] for r in export_history(demo, FORM)].count("exported") == 3


def test_a_dropped_answer_then_a_new_push_makes_no_second_event(demo: Registry,
                                                               fake41: FakeDhis2) -> None:
    for i in range(3):
        add_submission(demo, f"uuid:s{i}", {"age": 20 + i, "admission_date": "2024-03-01"},
                       unit=AGAPE)
    mapping = parse_mapping(EVENTS)
    # DHIS2 stores the events, then the answer is cut — on the retry too
    fake41.inject("drop_mid", count=2, method="POST", path="/api/tracker")
    with pytest.raises(Exception, match="cut in the middle|closed the connection"):
        push_data(demo, client_for(fake41, retries=1), FORM, mapping)
    assert len(fake41.state.events) == 3
    assert export_states(demo, export_target(client_for(fake41), "events:eBAyeGv0exc")[0]) == {}
    report = push_data(demo, client_for(fake41), FORM, mapping)
    assert report["exported"] == 3 and report["updated"] == 3 and report["created"] == 0
    assert len(fake41.state.events) == 3  # the same uids: updated, not created twice


def test_a_batch_dhis2_could_not_commit_is_not_marked_exported(demo: Registry,
                                                               fake41: FakeDhis2) -> None:
    """DHIS2 answers 409 with status ERROR and no error per event when its commit fails:
    it stored nothing, so nothing may be marked exported — the next push sends them."""
    for i in range(3):
        add_submission(demo, f"uuid:c{i}", {"age": 20 + i, "admission_date": "2024-03-01"},
                       unit=AGAPE)
    mapping = parse_mapping(EVENTS)
    fake41.inject("tracker_exception", method="POST", path="/api/tracker")
    with pytest.raises(GeoregError, match="could not execute statement"):
        push_data(demo, client_for(fake41), FORM, mapping)
    target = export_target(client_for(fake41), "events:eBAyeGv0exc")[0]
    states = export_states(demo, target)
    assert {k: v["status"] for k, v in states.items()} == {f"uuid:c{i}": "failed"
                                                          for i in range(3)}
    assert not fake41.state.events
    report = push_data(demo, client_for(fake41), FORM, mapping)
    assert (report["sent"], report["exported"], report["failed"]) == (3, 3, 0)
    assert len(fake41.state.events) == 3


def test_another_address_of_the_same_dhis2_sends_nothing_twice(demo: Registry,
                                                               fake41: FakeDhis2) -> None:
    """The LAN address first, the host name later: still one DHIS2 (one system id), so
    what was exported is not sent again as new events."""
    for i in range(2):
        add_submission(demo, f"uuid:a{i}", {"age": 30 + i, "admission_date": "2024-02-01"},
                       unit=AGAPE)
    mapping = parse_mapping(EVENTS)
    first = push_data(demo, client_for(fake41), FORM, mapping)
    assert first["exported"] == 2 and first["target"].startswith("dhis2:eed3d451-")
    by_name = fake41.url.replace("127.0.0.1", "localhost")
    again = push_data(demo, Dhis2Client(by_name, username="admin", password="district"),
                      FORM, mapping)
    assert (again["already_exported"], again["sent"]) == (2, 0)
    assert len(fake41.state.events) == 2


def test_exports_recorded_under_the_address_are_taken_over(demo: Registry,
                                                          fake41: FakeDhis2) -> None:
    """Rows an earlier Georeg kept under the address (``<url>#events:…``): not sent
    again, and the uid DHIS2 has is the one used if one is re-sent (``again``)."""
    add_submission(demo, "uuid:old", {"age": 30, "admission_date": "2024-02-01"}, unit=AGAPE)
    mapping = parse_mapping(EVENTS)
    legacy = f"{fake41.url}#events:eBAyeGv0exc"
    first = push_data(demo, client_for(fake41), FORM, mapping)
    # as the earlier version left it: its uid (made from the address) in DHIS2 and the row
    uid = event_uid("uuid:old", legacy)
    [(made, event)] = list(fake41.state.events.items())
    fake41.state.events = {uid: {**event, "event": uid}}
    assert made != uid
    with demo.write(origin="test", audit=False) as conn:
        conn.execute(text("UPDATE data_export SET target = :l, remote_ref = :r"),
                     {"l": legacy, "r": uid})
    report = push_data(demo, client_for(fake41), FORM, mapping)
    assert (report["already_exported"], report["sent"]) == (1, 0)
    assert set(export_states(demo, first["target"])) == {"uuid:old"}
    assert export_states(demo, legacy) == {}
    resent = push_data(demo, client_for(fake41), FORM, mapping, again=True)
    assert resent["exported"] == 1 and list(fake41.state.events) == [uid]
    # a send whose answer was lost under the old name: DHIS2 has the event (the old uid),
    # the row says failed with no reference — the retry updates it, makes no second
    add_submission(demo, "uuid:lost", {"age": 31, "admission_date": "2024-02-02"},
                   unit=AGAPE)
    lost_uid = event_uid("uuid:lost", legacy)
    fake41.state.events[lost_uid] = {**fake41.state.events[uid], "event": lost_uid}
    with demo.write(origin="test", audit=False) as conn:
        conn.execute(text("INSERT INTO data_export (instance_id, target, kind, status, "
                          "attempts) VALUES ('uuid:lost', :l, 'event', 'failed', 1)"),
                     {"l": legacy})
    retried = push_data(demo, client_for(fake41), FORM, mapping)
    assert retried["exported"] == 1 and sorted(fake41.state.events) == sorted([uid, lost_uid])


def test_old_events_api_before_2_38(demo: Registry, fake36: FakeDhis2) -> None:
    add_submission(demo, "uuid:a", {"age": 30, "admission_date": "2024-02-01"}, unit=AGAPE)
    add_submission(demo, "uuid:b", {"age": -4, "admission_date": "2024-02-01"}, unit=AGAPE)
    report = push_data(demo, client_for(fake36), FORM, parse_mapping(EVENTS))
    assert report["endpoint"] == "events" and (report["exported"], report["failed"]) == (1, 1)
    [post] = fake36.posts("/events")
    assert "eventDate" in post.body["events"][0] and "occurredAt" not in post.body["events"][0]
    assert "value_not_zero_or_positive_integer" in report["errors"][0]["message"]
    assert len(fake36.state.events) == 1


def test_dry_run_records_nothing(demo: Registry, fake41: FakeDhis2) -> None:
    add_submission(demo, "uuid:a", {"age": 30, "admission_date": "2024-02-01"}, unit=AGAPE)
    report = push_data(demo, client_for(fake41), FORM, parse_mapping(EVENTS), dry_run=True)
    assert report["ok"] and report["sent"] == 1
    assert fake41.posts("/tracker")[0].param("importMode") == "VALIDATE"
    assert not fake41.state.events and export_states(demo, report["target"]) == {}


# --- data value sets ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.36", "2.41"])
def test_data_value_sets_with_conflicts_per_submission(demo: Registry, version: str) -> None:
    add_submission(demo, "uuid:m1", {"afp_referrals": 3, "afp_deaths": 0,
                                     "report_date": "2024-01-31"}, unit=AGAPE)
    add_submission(demo, "uuid:m2", {"afp_referrals": "many", "report_date": "2024-02-10"},
                   unit=ADONKIA)
    add_submission(demo, "uuid:m3", {"afp_referrals": 1, "report_date": "yesterday"},
                   unit=ADONKIA)
    with FakeDhis2(version) as fake:
        report = push_data(demo, client_for(fake), FORM, parse_mapping(VALUES))
        assert report["endpoint"] == "dataValueSets"
        assert (report["sent"], report["exported"], report["failed"]) == (2, 1, 2)
        assert fake.state.data_values[(AFP, "202401", AGAPE, "HllvX50cXC0", "HllvX50cXC0")][
            "value"] == "3"
        assert (DEATHS, "202401", AGAPE, "HllvX50cXC0", "HllvX50cXC0") in fake.state.data_values
        assert not any(k[2] == ADONKIA for k in fake.state.data_values)
        errors = {e["instance_id"]: e["message"] for e in report["errors"]}
        assert "question 'afp_referrals'" in errors["uuid:m2"]
        assert "not numeric" in errors["uuid:m2"]
        assert "'yesterday' is not a date" in errors["uuid:m3"]
        states = export_states(demo, report["target"])
        assert states["uuid:m1"]["remote_ref"] == f"-/202401/{AGAPE}"
        again = push_data(demo, client_for(fake), FORM, parse_mapping(VALUES))
        assert again["already_exported"] == 1 and again["exported"] == 0


def test_two_submissions_for_one_cell_are_warned_of(demo: Registry, fake41: FakeDhis2) -> None:
    """Two visits at Agape in January, mapped to a monthly data set: DHIS2 keeps one value
    for the month, so the second replaces the first — the report says so, naming both;
    a third in a later push is checked against those already sent."""
    add_submission(demo, "uuid:v1", {"afp_referrals": 3, "report_date": "2024-01-05"},
                   unit=AGAPE)
    add_submission(demo, "uuid:v2", {"afp_referrals": 4, "report_date": "2024-01-20"},
                   unit=AGAPE)
    add_submission(demo, "uuid:v3", {"afp_referrals": 1, "report_date": "2024-02-02"},
                   unit=AGAPE)
    report = push_data(demo, client_for(fake41), FORM, parse_mapping(VALUES))
    [warning] = report["warnings"]
    assert "uuid:v1, uuid:v2" in warning and "'afp_referrals'" in warning
    assert "Agape CHP" in warning and "202401" in warning
    assert report["exported"] == 3
    add_submission(demo, "uuid:v4", {"afp_referrals": 2, "report_date": "2024-02-27"},
                   unit=AGAPE)
    later = push_data(demo, client_for(fake41), FORM, parse_mapping(VALUES))
    assert any("uuid:v4" in w and "uuid:v3" in w and "202402" in w for w in later["warnings"])


def test_combine_sum_sends_the_total_of_the_visits(demo: Registry, fake41: FakeDhis2) -> None:
    """One submission per visit, a monthly data set: with "combine": "sum" DHIS2 gets the
    month's total — recomputed with the visits sent before when a new one comes, the same
    when sent again."""
    mapping = parse_mapping(VALUES | {"combine": "sum"})
    cell = (AFP, "202401", AGAPE, "HllvX50cXC0", "HllvX50cXC0")
    for n, (count, day) in enumerate([(3, "05"), (4, "20")]):
        add_submission(demo, f"uuid:s{n}", {"afp_referrals": count,
                                           "report_date": f"2024-01-{day}"}, unit=AGAPE)
    add_submission(demo, "uuid:bad", {"afp_referrals": "many", "report_date": "2024-01-09"},
                   unit=AGAPE)
    first = push_data(demo, client_for(fake41), FORM, mapping)
    assert (first["exported"], first["failed"], first["warnings"]) == (2, 1, [])
    assert "not a number" in first["errors"][0]["message"]
    assert fake41.state.data_values[cell]["value"] == "7"
    add_submission(demo, "uuid:s2", {"afp_referrals": 1, "report_date": "2024-01-28"},
                   unit=AGAPE)
    later = push_data(demo, client_for(fake41), FORM, mapping)
    assert later["exported"] == 1 and fake41.state.data_values[cell]["value"] == "8"
    push_data(demo, client_for(fake41), FORM, mapping, again=True)
    assert fake41.state.data_values[cell]["value"] == "8"  # the same total, not doubled
    with pytest.raises(InvalidInput, match="combine"):
        parse_mapping(VALUES | {"combine": "average"})
    with pytest.raises(InvalidInput, match="not events"):
        parse_mapping(EVENTS | {"combine": "sum"})


# --- command line ---------------------------------------------------------------------------


def test_cli_push_data(tmp_path: Path, fake41: FakeDhis2) -> None:
    from sync.dhis2_json import import_dhis2_files
    from tests.conftest import DEMO_FILES

    path = tmp_path / "reg.gpkg"
    with Registry.create(path) as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        add_submission(reg, "uuid:c1", {"age": 3, "admission_date": "2024-01-02"}, unit=AGAPE)
        add_submission(reg, "uuid:c2", {"age": "x", "admission_date": "2024-01-02"}, unit=AGAPE)
        assert [s.instance_id for s in TableSubmissions(reg).submissions(FORM)] == [
            "uuid:c1", "uuid:c2"]
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps(EVENTS))
    args = ["push-data", str(path), "--form", FORM, "--mapping", str(mapping), "--url",
            fake41.url, "--user", "admin", "--password-stdin", "--retries", "0"]
    result = CliRunner().invoke(dhis2_group, args, input="district\n")
    assert result.exit_code == 5, result.output
    assert "1 exported, 1 failed" in result.output and "uuid:c2" in result.output
    assert "district" not in result.output
    with Registry.open(path) as reg, reg.write(origin="test") as conn:
        conn.execute(text("UPDATE submission SET status = 'deleted' WHERE instance_id = "
                          "'uuid:c2'"))
    result = CliRunner().invoke(dhis2_group, [*args, "--json"], input="district\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["already_exported"] == 1


def test_a_form_id_typed_wrong_is_refused_before_dhis2_is_asked(
        tmp_path: Path, fake41: FakeDhis2, monkeypatch: pytest.MonkeyPatch) -> None:
    """'inpatients' for 'inpatient': before, 0 submissions were sent, exit 0 — every night,
    as a scheduled job recorded 'ok'."""
    from sync import scheduler
    from sync.dhis2_json import import_dhis2_files
    from tests.conftest import DEMO_FILES

    path = tmp_path / "reg.gpkg"
    with Registry.create(path) as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        add_submission(reg, "uuid:t1", {"age": 3, "admission_date": "2024-01-02"}, unit=AGAPE)
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps(EVENTS))
    asked = len(fake41.requests)
    result = CliRunner().invoke(dhis2_group, [
        "push-data", str(path), "--form", "inpatients", "--mapping", str(mapping), "--url",
        fake41.url, "--user", "admin", "--password-stdin", "--retries", "0"], input="district\n")
    assert result.exit_code == 4, result.output
    assert "No form 'inpatients' in this registry" in result.output
    assert "forms: inpatient " in result.output, result.output
    # the client's sign-in check may ask DHIS2 who we are, but nothing is read or sent
    assert not [r for r in fake41.requests[asked:] if r.method != "GET" or "event" in r.path
                or "tracker" in r.path]
    assert not fake41.state.events
    # the scheduled job fails (shown as failed, retried), no longer "ok"
    secrets = tmp_path / "secrets.toml"
    monkeypatch.setenv(scheduler.SECRETS_ENV, str(secrets))
    scheduler.save_target(secrets, "dhis2", {"url": fake41.url, "username": "admin",
                                             "password": "district"})
    with Registry.open(path) as reg:
        scheduler.add_job(reg, "dhis2-push-data", every="15m", target="dhis2",
                          options={"form": "inpatients", "mapping": str(mapping)})
        [run] = scheduler.run_now(reg, "dhis2-push-data-dhis2")
    assert run.outcome == "failed" and "No form 'inpatients'" in (run.error or "")


# --- as a scheduled job ---------------------------------------------------------------------


def test_scheduled_push_data_job(tmp_path: Path, fake41: FakeDhis2,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from sync import scheduler
    from sync.dhis2_json import import_dhis2_files
    from tests.conftest import DEMO_FILES

    secrets = tmp_path / "secrets.toml"
    monkeypatch.setenv(scheduler.SECRETS_ENV, str(secrets))
    scheduler.save_target(secrets, "dhis2", {"url": fake41.url, "username": "admin",
                                             "password": "district"})
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps(EVENTS))
    with Registry.create(tmp_path / "reg.gpkg") as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        add_submission(reg, "uuid:j1", {"age": 3, "admission_date": "2024-01-02"}, unit=AGAPE)
        scheduler.add_job(reg, "dhis2-push-data", every="15m", target="dhis2",
                          options={"form": FORM, "mapping": str(mapping)})
        [run] = scheduler.run_now(reg, "dhis2-push-data-dhis2")
        assert run.outcome == "ok" and run.figures["exported"] == 1
        add_submission(reg, "uuid:j2", {"age": "x", "admission_date": "2024-01-02"}, unit=AGAPE)
        [run] = scheduler.run_now(reg, "dhis2-push-data-dhis2")
        assert run.outcome == "failed" and "uuid:j2" in (run.error or "")
    assert len(fake41.state.events) == 1
    assert "d2pat" not in (tmp_path / "reg.gpkg").read_bytes().decode("latin-1")
    assert b"district" not in (tmp_path / "reg.gpkg").read_bytes()


# --- through the local server's own storage -------------------------------------------------


def test_submissions_stored_by_the_local_server(tmp_path: Path, fake41: FakeDhis2) -> None:
    """A form and submissions stored by ``local_server`` (XLSForm, ODK XML, the org unit
    resolved by the server) go out through push-data; repeats are refused per submission."""
    from local_server import forms, submissions
    from sync.dhis2_json import import_dhis2_files
    from tests.conftest import DEMO_FILES
    from tests.openrosa_helpers import FORM_ID, instance_xml, write_test_form

    with Registry.create(tmp_path / "reg.gpkg") as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        forms.add_form(reg, write_test_form(tmp_path / "forms"), org_unit_field="facility")
        xml, iid = instance_xml(AGAPE, remarks="A09 diarrhoea", visits=1)
        submissions.store_submission(reg, xml)
        xml2, iid2 = instance_xml(ADONKIA, remarks="B50", visits=1)
        submissions.store_submission(reg, xml2)
        mapping = parse_mapping({"kind": "events", "program": "eBAyeGv0exc",
                                 "programStage": "Zj7UnCAulEk",
                                 "dataElements": {"remarks": DIAGNOSIS, "patients": AGE}})
        report = push_data(reg, client_for(fake41), FORM_ID, mapping)
        assert report["exported"] == 2, report["errors"]
        ev = fake41.state.events[event_uid(iid, report["target"])]
        assert ev["orgUnit"] == AGAPE and {"dataElement": DIAGNOSIS, "value": "A09 diarrhoea"} \
            in ev["dataValues"] and {"dataElement": AGE, "value": "10"} in ev["dataValues"]
        with reg.read() as conn:
            status = dict(conn.execute(text(
                "SELECT instance_id, export_status FROM submission")).all())
        assert status == {iid: "exported", iid2: "exported"}
        xml3, iid3 = instance_xml(AGAPE, visits=3)
        submissions.store_submission(reg, xml3)
        again = push_data(reg, client_for(fake41), FORM_ID, mapping)
        assert again["already_exported"] == 2 and again["failed"] == 1
        assert "inside a repeat (3 answers)" in again["errors"][0]["message"]
