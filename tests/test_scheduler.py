"""Scheduled jobs: stored in the registry, run on time, retried with backoff, history kept;
credentials only in a private secrets file."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from storage.backends import Location
from storage.errors import ConflictError, InvalidInput, NotFound, SetupError
from storage.registry import Registry
from storage.units import rename_unit
from storage.versions import create_version
from sync import scheduler
from sync.dhis2_json import import_dhis2_files
from sync.scheduler import (
    JOB_KINDS,
    JobKind,
    Scheduler,
    add_job,
    get_job,
    history,
    list_jobs,
    load_secrets,
    parse_interval,
    remove_job,
    run_now,
    save_target,
)
from tests.conftest import DEMO_FILES
from tests.fake_dhis2 import FakeDhis2

CALLS: list[dict[str, Any]] = []


def fake_runner(reg: Registry, secret: dict[str, Any], options: dict[str, Any]
                ) -> dict[str, Any]:
    """A job kind for tests: one entry in JOB_KINDS is all a new kind needs."""
    CALLS.append({"secret": secret, "options": options})
    if secret.get("fail"):
        raise RuntimeError("injected failure")
    held = int(secret.get("held") or 0)
    return {"units_sent": 7, "conflicts": [{"uuid": f"u{i}"} for i in range(held)],
            "conflict_count": held, "target": secret.get("url")}


@pytest.fixture
def fake_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    CALLS.clear()
    monkeypatch.setitem(JOB_KINDS, "fake", JobKind("tests.test_scheduler:fake_runner",
                                                   "test job", options=("level",)))
    yield


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    with Registry.create(tmp_path / "district.gpkg") as registry:
        yield registry


@pytest.fixture
def secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "secrets.toml"
    monkeypatch.setenv(scheduler.SECRETS_ENV, str(path))
    return path


def wait_for(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- definitions ---------------------------------------------------------------------------


def test_intervals_and_crons() -> None:
    assert parse_interval("1h") == 3600 and parse_interval("1h30m") == 5400
    assert parse_interval("45s") == 45 and parse_interval("90") == 90 and parse_interval("1d") == 86400
    for bad in ("", "1x", "h", "0", "1h 2"):
        with pytest.raises(InvalidInput):
            parse_interval(bad)
    with pytest.raises(InvalidInput, match="crontab"):
        scheduler.parse_cron("every night")
    nxt = scheduler.parse_cron("0 2 * * *").get_next_fire_time(
        None, dt.datetime(2024, 5, 1, 13, 0, tzinfo=dt.UTC))
    assert nxt == dt.datetime(2024, 5, 2, 2, 0, tzinfo=dt.UTC)
    with pytest.raises(InvalidInput, match="366d"):  # (used to overflow in list and serve)
        parse_interval("999999999d")


def test_cron_weekdays_mean_what_crontab_says() -> None:
    """APScheduler counts 0 as Monday: '0 2 * * 1' used to run on Tuesdays, '1-5' from
    Tuesday to Saturday, and 7 (Sunday) was refused."""
    sunday = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)

    def days(expr: str, n: int = 7) -> list[str]:
        trigger, moment, out = scheduler.parse_cron(expr), sunday, []
        for _ in range(n):
            moment = trigger.get_next_fire_time(None, moment + dt.timedelta(seconds=1))
            out.append(moment.strftime("%a"))
        return out

    assert days("0 2 * * 1", 2) == ["Mon", "Mon"]
    assert days("30 6 * * 1-5", 5) == ["Mon", "Tue", "Wed", "Thu", "Fri"]
    assert days("0 2 * * 0", 1) == days("0 2 * * 7", 1) == days("0 2 * * sun", 1) == ["Sun"]
    assert days("0 2 * * */2", 4) == ["Tue", "Thu", "Sat", "Sun"]
    assert days("0 2 * * mon-fri", 5) == days("30 6 * * 1-5", 5)
    # a day of the month and a weekday: either one is enough, as in crontab
    both = scheduler.parse_cron("0 2 1 * 1")
    first = both.get_next_fire_time(None, sunday)
    assert first == dt.datetime(2026, 11, 30, 2, 0, tzinfo=dt.UTC)  # Monday 30th
    assert both.get_next_fire_time(None, first + dt.timedelta(seconds=1)) == dt.datetime(
        2026, 12, 1, 2, 0, tzinfo=dt.UTC)  # Tuesday 1st
    for bad in ("0 2 * * 8", "0 2 * * 5-1", "0 2 * * 1/x", "0 2 * *"):
        with pytest.raises(InvalidInput, match="cron"):
            scheduler.parse_cron(bad)


def test_jobs_are_stored_in_the_registry(reg: Registry, fake_kind: None) -> None:
    job = add_job(reg, "postgis-push", every="1h", target="central")
    assert job["name"] == "postgis-push-central" and job["schedule"] == "every 1h"
    add_job(reg, "postgis-pull", cron="0 2 * * *", target="central", name="nightly-pull")
    with pytest.raises(ConflictError):
        add_job(reg, "postgis-push", every="2h", target="central")
    with pytest.raises(InvalidInput, match="either --every"):
        add_job(reg, "postgis-push", every="1h", cron="0 2 * * *", target="x", name="y")
    with pytest.raises(InvalidInput, match="--target"):
        add_job(reg, "postgis-push", every="1h", name="no-target")
    with pytest.raises(InvalidInput, match="Unknown job"):
        add_job(reg, "ftp-push", every="1h", target="x")
    with pytest.raises(InvalidInput, match="credential"):
        add_job(reg, "fake", every="1h", target="x", options={"password": "s3cret"})
    with pytest.raises(InvalidInput, match="mean nothing"):
        add_job(reg, "fake", every="1h", target="x", options={"colour": "red"})
    listed = {j["name"]: j for j in list_jobs(reg)}
    assert listed["nightly-pull"]["next_run"].endswith("T02:00:00.000Z")
    assert listed["postgis-push-central"]["last_run"] is None
    remove_job(reg, "nightly-pull")
    with pytest.raises(NotFound, match="postgis-push-central"):
        get_job(reg, "nightly-pull")
    assert get_job(reg, "postgis-push-central").backoff(1) == 30
    assert get_job(reg, "postgis-push-central").backoff(20) == 3600  # bounded


def test_job_options_are_checked_when_the_job_is_added(reg: Registry, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo must not wait for two in the morning: dry_run=maybe used to run a real push
    (only true-ish words counted), version=abc failed with a Python error at run time."""
    def add(kind: str, **options: str) -> dict[str, Any]:
        return add_job(reg, kind, every="1h", target="x", name=f"j{len(list_jobs(reg))}",
                       options=options)

    with pytest.raises(InvalidInput, match="true or false"):
        add("dhis2-push", source="SL", dry_run="maybe")
    with pytest.raises(InvalidInput, match="whole number"):
        add("dhis2-push", source="SL", version="abc")
    with pytest.raises(InvalidInput, match="prefer=local"):
        add("postgis-push", prefer="bogus")
    with pytest.raises(InvalidInput, match="prefer=central"):
        add("postgis-pull", prefer="local")
    with pytest.raises(InvalidInput, match="schema name"):
        add("postgis-push", schema="district-bo")
    with pytest.raises(InvalidInput, match="not a date"):
        add("dhis2-pull", source="SL", since="yesterday")
    assert add("dhis2-push", source="SL", dry_run="Yes")["options"]["dry_run"] == "true"
    mapping = tmp_path / "m.json"
    mapping.write_text(json.dumps({"kind": "events", "program": "eBAyeGv0exc",
                                   "programStage": "Zj7UnCAulEk",
                                   "dataElements": {"age": "qrur9Dvnyt5"}}))
    monkeypatch.chdir(tmp_path)
    stored = add("dhis2-push-data", form="f", mapping="m.json")["options"]["mapping"]
    assert stored == str(mapping.resolve())  # the scheduler may run from anywhere
    with pytest.raises(NotFound, match="nope.json"):
        add("dhis2-push-data", form="f", mapping="nope.json")


def test_a_run_that_held_conflicts_says_so_in_the_list_and_history(
        reg: Registry, secrets: Path, fake_kind: None) -> None:
    """A nightly push that held units changed on both sides is done (no retry would
    help) but needs someone: 'schedule list' and the history say so."""
    save_target(secrets, "held", {"url": "https://example.org", "held": 2})
    add_job(reg, "fake", every="1h", target="held", name="nightly")
    [result] = run_now(reg, "nightly")
    assert result.outcome == "ok" and result.retry_in is None
    assert result.error is not None and "2 change(s) on both sides held" in result.error
    [job] = list_jobs(reg)
    assert "held" in (job["last_run"]["error"] or "")
    # the next run counts from the last one: the same answer on every call
    started = dt.datetime.fromisoformat(job["last_run"]["started_at"].replace("Z", "+00:00"))
    time.sleep(0.05)
    [again] = list_jobs(reg)
    assert again["next_run"] == job["next_run"]
    assert dt.datetime.fromisoformat(job["next_run"].replace("Z", "+00:00")) == \
        started + dt.timedelta(hours=1)


# --- secrets -------------------------------------------------------------------------------


def test_secrets_file_is_private_and_the_registry_holds_no_credential(
    tmp_path: Path, reg: Registry, secrets: Path
) -> None:
    save_target(secrets, "central", {"url": "postgresql://georeg:Pa55word@db/reg",
                                     "schema": "bo"})
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert load_secrets(secrets)["targets"]["central"]["schema"] == "bo"
    save_target(secrets, "dhis2", {"url": "https://play.dhis2.org", "token": "d2pat_x"})
    assert set(load_secrets(secrets)["targets"]) == {"central", "dhis2"}
    add_job(reg, "postgis-push", every="1h", target="central")
    reg.close()
    for path in tmp_path.glob("district.gpkg*"):
        assert b"Pa55word" not in path.read_bytes()
    os.chmod(secrets, 0o644)
    with pytest.raises(SetupError, match="chmod 600"):
        load_secrets(secrets)


def test_secrets_beside_the_registry_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(scheduler.SECRETS_ENV, raising=False)
    registry = tmp_path / "district.gpkg"
    beside = Path(str(registry) + ".secrets.toml")
    assert scheduler.secrets_path(registry) == scheduler.HOME_SECRETS.expanduser()
    save_target(beside, "central", {"url": "postgresql://db/reg"})
    assert scheduler.secrets_path(registry) == beside


# --- running -------------------------------------------------------------------------------


def test_run_now_records_outcome_figures_and_bounded_retries(
    reg: Registry, secrets: Path, fake_kind: None
) -> None:
    save_target(secrets, "ok", {"url": "https://example.org"})
    save_target(secrets, "bad", {"url": "https://example.org", "fail": True})
    add_job(reg, "fake", every="1h", target="ok", options={"level": 2})
    [result] = run_now(reg, "fake-ok")
    assert result.outcome == "ok" and result.figures["units_sent"] == 7
    assert CALLS[-1] == {"secret": {"url": "https://example.org"}, "options": {"level": 2}}
    add_job(reg, "fake", every="1h", target="bad", max_retries=2, retry_base_seconds=0.5,
            retry_max_seconds=0.75)
    waits: list[float] = []
    results = run_now(reg, "fake-bad", retry=True, sleep=waits.append)
    assert [r.outcome for r in results] == ["failed"] * 3 and waits == [0.5, 0.75]
    runs = history(reg, "fake-bad")
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(3, "failed"), (2, "failed"),
                                                            (1, "failed")]
    assert runs[0]["retry_at"] is None and runs[1]["retry_at"] is not None
    assert "injected failure" in runs[0]["error"]


def test_a_kind_whose_module_is_missing_fails_clearly(reg: Registry, secrets: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(JOB_KINDS, "later", JobKind("sync.not_written_yet:run", "x",
                                                    needs_target=False))
    add_job(reg, "later", every="1h", max_retries=0)
    [result] = run_now(reg, "later")
    assert result.outcome == "failed" and "sync/not_written_yet.py" in (result.error or "")


def test_dhis2_jobs_reach_dhis2_with_the_credentials_of_the_secrets_file(
    reg: Registry, secrets: Path
) -> None:
    token = "d2pat_scheduler0123456789"
    with FakeDhis2("2.41", users={}, tokens={token: "admin"}) as fake:
        save_target(secrets, "play", {"url": fake.url, "token": token})
        with pytest.raises(InvalidInput, match="source"):
            add_job(reg, "dhis2-pull", cron="0 3 * * *", target="play")
        add_job(reg, "dhis2-pull", cron="0 3 * * *", target="play", options={"source": "SL"})

        [pulled] = run_now(reg, "dhis2-pull-play")

        assert pulled.outcome == "ok", pulled.error
        assert pulled.figures["units"] == 1332
        assert {r.auth for r in fake.requests} == {"token"}
        with reg.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM org_unit")).scalar_one() == 1332

        # a dry-run push of a renamed unit validates in DHIS2 and changes nothing there
        create_version(reg, "SL", copy_from=1)
        bo = next(uid for uid, u in fake.state.units.items() if u.get("name") == "Bo")
        rename_unit(reg, "SL", bo, "Bo District", number=2)
        add_job(reg, "dhis2-push", every="1d", target="play",
                options={"source": "SL", "version": "2", "dry_run": "true"})
        fake.clear_log()

        [pushed] = run_now(reg, "dhis2-push-play")

        assert pushed.outcome == "ok", pushed.error
        [validate] = fake.posts("/metadata")
        assert validate.param("importMode") == "VALIDATE"
        assert fake.state.units[bo]["name"] == "Bo"


@pytest.mark.postgis
def test_the_scheduler_runs_a_push_on_time_and_records_it(
    tmp_path: Path, secrets: Path, central: tuple[str, str]
) -> None:
    path = tmp_path / "district.gpkg"
    with Registry.create(path) as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        save_target(secrets, "central", {"url": central[0], "schema": central[1]})
        add_job(reg, "postgis-push", every=1, target="central")
    started = dt.datetime.now(dt.UTC)
    with Scheduler(path, reload_seconds=60) as sched:
        assert "job:postgis-push-central" in sched.planned()
        with Registry.open(path) as reg:

            def two_runs_done() -> list[dict[str, Any]] | None:
                done = [r for r in history(reg) if r["outcome"] != "running"]
                return done[-2:] if len(done) >= 2 else None  # newest first

            second, first = wait_for(two_runs_done)
    assert first["outcome"] == "ok" and first["figures"]["units_inserted"] == 1332
    assert second["outcome"] == "ok" and second["figures"]["units_sent"] == 0
    assert first["triggered_by"] == "schedule" and first["attempt"] == 1
    assert 0.5 <= (at(first["started_at"]) - started).total_seconds() <= 2.5
    assert 0.5 <= (at(second["started_at"]) - at(first["started_at"])).total_seconds() <= 2.0


@pytest.mark.postgis
def test_the_scheduler_retries_after_a_failure(
    tmp_path: Path, secrets: Path, central: tuple[str, str]
) -> None:
    path = tmp_path / "district.gpkg"
    with Registry.create(path) as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        # Injected failure: the target points at a port where nothing listens.
        save_target(secrets, "central", {
            "url": f"postgresql://postgres@127.0.0.1:{closed_port()}/georeg",
            "schema": central[1]})
        add_job(reg, "postgis-push", every=2, target="central", retry_base_seconds=0.8)
    with Scheduler(path, reload_seconds=60), Registry.open(path) as reg:
        failed = wait_for(lambda: next((r for r in history(reg) if r["outcome"] == "failed"),
                                       None))
        save_target(secrets, "central", {"url": central[0], "schema": central[1]},
                    replace=True)  # fixed
        ok = wait_for(lambda: next((r for r in history(reg) if r["outcome"] == "ok"), None))
    assert failed["attempt"] == 1 and "Cannot reach" in failed["error"]
    assert failed["retry_at"] is not None
    assert ok["triggered_by"] == "retry" and ok["attempt"] == 2
    delay = (at(ok["started_at"]) - at(failed["ended_at"])).total_seconds()
    assert 0.6 <= delay <= 2.0
    assert ok["figures"]["units_inserted"] == 1332


def test_an_interval_counts_from_the_last_run_whichever_process_made_it(
        tmp_path: Path, secrets: Path, fake_kind: None) -> None:
    """A server restarted more often than a job's interval used to never run it (the
    clock restarted with the process), and two servers on one registry each ran it."""
    path = tmp_path / "district.gpkg"
    Registry.create(path).close()
    save_target(secrets, "t", {"url": "x://y"})
    with Registry.open(path) as reg:
        add_job(reg, "fake", every=4, target="t")
        [first] = run_now(reg, "fake-t")
        t0 = at(history(reg)[0]["started_at"])
    time.sleep(2)  # the "server" starts two seconds after that run …
    with Scheduler(path, reload_seconds=60), Registry.open(path) as reg:
        time.sleep(1)
        with Scheduler(path, reload_seconds=60):  # … and a second one a second later
            def scheduled() -> list[dict[str, Any]]:
                return [r for r in history(reg) if r["triggered_by"] == "schedule"
                        and r["outcome"] != "running"]

            runs = wait_for(lambda: scheduled() if len(scheduled()) >= 2 else None,
                            timeout=15)
            time.sleep(1.5)
            runs = scheduled()
    starts = sorted(at(r["started_at"]) for r in runs)
    # four seconds after the last run (not four after the server started), then every four
    assert 3.5 <= (starts[0] - t0).total_seconds() <= 5.0, starts
    assert 3.5 <= (starts[1] - starts[0]).total_seconds() <= 5.0, starts  # not twice
    assert len(starts) == 2


def test_a_run_cut_short_is_closed_and_a_planned_retry_survives_a_restart(
        tmp_path: Path, secrets: Path, fake_kind: None) -> None:
    path = tmp_path / "district.gpkg"
    Registry.create(path).close()
    save_target(secrets, "bad", {"url": "x://y", "fail": True})
    with Registry.open(path) as reg:
        add_job(reg, "fake", every="1h", target="bad", retry_base_seconds=600)
        [failed] = run_now(reg, "fake-bad")  # failed; a retry planned in ten minutes
        with Scheduler(path, reload_seconds=60) as sched:
            assert "retry:fake-bad" in sched.planned()  # planned again by a new process
        # a run whose process was killed: left "running"
        with reg.write(origin="test", audit=False) as conn:
            conn.execute(text("INSERT INTO schedule_run (job_id, job_name, kind, triggered_by, "
                              "attempt, started_at) SELECT fid, name, kind, 'schedule', 1, "
                              "'2026-01-01T00:00:00.000Z' FROM schedule_job"))
        run_now(reg, "fake-bad")
        cut = [r for r in history(reg) if r["started_at"].startswith("2026-01-01")]
        assert cut and cut[0]["outcome"] == "failed"
        assert cut[0]["error"] == scheduler.INTERRUPTED


def test_a_run_the_busy_registry_could_not_record_is_tried_again(
        tmp_path: Path, secrets: Path, fake_kind: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holding the registry's write lock (a long import) used to make the
    scheduled run vanish with a traceback; then its retry was dropped at once by any
    success in the job's past."""
    import sqlite3

    from storage import backends

    monkeypatch.setattr(backends, "BUSY_TIMEOUT_MS", 300)  # (30 s in real life)
    path = tmp_path / "district.gpkg"
    Registry.create(path).close()
    save_target(secrets, "t", {"url": "x://y"})
    with Registry.open(path) as reg:
        add_job(reg, "fake", every="1d", target="t", retry_base_seconds=1)
        with reg.write(origin="test", audit=False) as conn:  # it worked yesterday
            conn.execute(text(
                "INSERT INTO schedule_run (job_id, job_name, kind, triggered_by, attempt, "
                "started_at, ended_at, outcome) SELECT fid, name, kind, 'schedule', 1, :s, :s, "
                "'ok' FROM schedule_job"), {"s": scheduler._iso(
                    dt.datetime.now(dt.UTC) - dt.timedelta(days=1, minutes=1))})
    calls = len(CALLS)
    with Scheduler(path, reload_seconds=60) as sched:
        import_holding_the_lock = sqlite3.connect(path, timeout=0)
        import_holding_the_lock.execute("BEGIN IMMEDIATE")
        sched._fire("fake-t")  # the daily occurrence comes while the registry is busy
        assert len(CALLS) == calls and "retry:fake-t" in sched.planned()
        import_holding_the_lock.rollback()
        import_holding_the_lock.close()
        with Registry.open(path) as reg:
            run = wait_for(lambda: next((r for r in history(reg)
                                         if r["triggered_by"] == "retry"), None))
    assert run["outcome"] == "ok" and run["attempt"] == 2


def test_a_job_row_that_cannot_be_scheduled_does_not_stop_the_others(
        tmp_path: Path, secrets: Path, fake_kind: None) -> None:
    """One absurd row (written by hand, or by an older Georeg) used to crash 'schedule
    list' and keep 'georeg serve' — the phones' server — from starting."""
    path = tmp_path / "district.gpkg"
    Registry.create(path).close()
    save_target(secrets, "t", {"url": "x://y"})
    with Registry.open(path) as reg:
        add_job(reg, "fake", every=1, target="t", name="good")
        add_job(reg, "fake", every=60, target="t", name="huge")
        with reg.write(origin="test", audit=False) as conn:
            conn.execute(text("UPDATE schedule_job SET every_seconds = 86400000000000 "
                              "WHERE name = 'huge'"))
        listed = {j["name"]: j for j in list_jobs(reg)}
        assert "cannot be scheduled" in listed["huge"]["error"]
        assert listed["good"]["next_run"]
        with Scheduler(path, reload_seconds=60):
            wait_for(lambda: [r for r in history(reg, "good") if r["outcome"] == "ok"])


def test_schedule_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """A service manager stops with SIGTERM: the process used to die at once (rc -15)."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "district.gpkg"
    Registry.create(path).close()
    proc = subprocess.Popen([sys.executable, "-m", "georeg.cli", "schedule", "serve", str(path)],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "Ctrl-C stops" in (proc.stderr.readline() if proc.stderr else "")
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


class PasswordAskingPostgres:
    """A stand-in for a PostgreSQL server that asks for a cleartext password, writes down
    what it gets, and refuses it as a real server would (the test cluster trusts every
    connection, so it cannot show whether a password was sent)."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = int(self.sock.getsockname()[1])
        self.passwords: list[bytes | None] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import struct

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    size = struct.unpack("!I", conn.recv(4))[0]
                    body = conn.recv(size - 4)
                    if struct.unpack("!I", body[:4])[0] == 80877103:  # SSLRequest: no
                        conn.send(b"N")
                        size = struct.unpack("!I", conn.recv(4))[0]
                        conn.recv(size - 4)
                    conn.send(b"R" + struct.pack("!II", 8, 3))  # cleartext password, please
                    answer = conn.recv(1000)
                    self.passwords.append(answer[5:].rstrip(b"\0") if answer[:1] == b"p"
                                          else None)
                    fields = (b"SFATAL\0C28P01\0Mpassword authentication failed for user "
                              b"\"georeg\"\0\0")
                    conn.send(b"E" + struct.pack("!I", len(fields) + 4) + fields)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def test_a_postgis_url_keeps_its_encoded_user_name_when_a_password_is_added() -> None:
    assert scheduler.postgis_url({"url": "postgresql://reg%40azure@db.example/r?sslmode=require",
                                  "password": "p@ss"}) == (
        "postgresql://reg%40azure:p%40ss@db.example/r?sslmode=require")


def test_a_postgis_target_with_user_and_password_sends_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``schedule add --url … --user … --password-stdin`` stored the password and never
    sent it; the run then said "Cannot reach" a server that had answered."""
    from georeg.cli_sync import schedule_group

    monkeypatch.delenv(scheduler.SECRETS_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "district.gpkg"
    Registry.create(path).close()
    server = PasswordAskingPostgres()
    try:
        out = CliRunner().invoke(schedule_group, [
            "add", str(path), "--job", "postgis-push", "--every", "1h", "--target", "ministry",
            "--url", f"postgresql://127.0.0.1:{server.port}/registry", "--schema", "district",
            "--user", "georeg", "--password-stdin"], input="p@ss/w?rd:é\n")
        assert out.exit_code == 0, out.output
        with Registry.open(path) as reg:
            [result] = run_now(reg, "postgis-push-ministry")
        assert server.passwords and server.passwords[0] == "p@ss/w?rd:é".encode()
        assert "refused the connection" in str(result.error), result.error
        assert "p@ss" not in str(result.error)
    finally:
        server.close()


def test_schedule_add_leaves_an_existing_target_and_the_rest_of_the_file_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused 'schedule add --url' used to rewrite the target anyway (and drop its
    schema), and any add rewrote the whole file: comments and other tables lost."""
    from georeg.cli_sync import schedule_group

    monkeypatch.delenv(scheduler.SECRETS_ENV, raising=False)
    path = tmp_path / "district.gpkg"
    Registry.create(path).close()
    secrets_file = tmp_path / "secrets.toml"
    hand_written = (
        "# district secrets, kept by Aminata\n"
        "[targets.ministry]                     # the central PostGIS\n"
        'url = "postgresql://georeg:secret@db.ministry.example/registry"\n'
        'schema = "district_bo"\n'
        "[targets.ministry.options]\n"
        'sslmode = "require"\n'
        "[notes]\n"
        'owner = "aminata"\n')
    secrets_file.write_text(hand_written)
    secrets_file.chmod(0o600)

    def add(*args: str) -> Any:
        return CliRunner().invoke(schedule_group, [
            "add", str(path), "--job", "postgis-push", "--secrets", str(secrets_file), *args])

    refused = add("--every", "bogus", "--target", "ministry",
                  "--url", "postgresql://other@wrong.example/x")
    assert refused.exit_code != 0 and secrets_file.read_text() == hand_written
    clash = add("--every", "1h", "--target", "ministry", "--url",
                "postgresql://other@wrong.example/x")
    assert clash.exit_code != 0 and "--replace-target" in clash.output
    assert secrets_file.read_text() == hand_written
    added = add("--every", "1h", "--target", "dhis-free", "--name", "second",
                "--url", "postgresql://georeg@db2.example/registry", "--schema", "s2")
    assert added.exit_code == 0, added.output
    text_now = secrets_file.read_text()
    assert text_now.startswith(hand_written)  # comments, sub-tables, other tables kept
    targets = load_secrets(secrets_file)["targets"]
    assert targets["dhis-free"] == {"url": "postgresql://georeg@db2.example/registry",
                                    "schema": "s2"}
    assert targets["ministry"]["options"] == {"sslmode": "require"}
    replaced = add("--every", "1h", "--target", "ministry", "--name", "third",
                   "--url", "postgresql://georeg@db3.example/registry", "--replace-target")
    assert replaced.exit_code == 0, replaced.output
    data = load_secrets(secrets_file)
    assert data["targets"]["ministry"] == {"url": "postgresql://georeg@db3.example/registry"}
    assert data["notes"] == {"owner": "aminata"} and "kept by Aminata" in secrets_file.read_text()


def test_start_in_process_for_georeg_serve(tmp_path: Path, secrets: Path, fake_kind: None
                                          ) -> None:
    """The API ``georeg serve`` calls: a handle that runs jobs in background threads, picks
    up jobs added after it started, and stops on ``shutdown()``."""
    path = tmp_path / "district.gpkg"
    Registry.create(path).close()
    save_target(secrets, "t", {"url": "x://y"})
    handle = scheduler.start_in_process(path, reload_seconds=0.3)
    try:
        assert handle.running and handle.planned() == {}
        with Registry.open(path) as reg:
            add_job(reg, "fake", every=1, target="t")  # added while it runs
            run = wait_for(lambda: next((r for r in history(reg) if r["outcome"] == "ok"),
                                        None))
        assert run["figures"]["units_sent"] == 7 and run["triggered_by"] == "schedule"
        assert "job:fake-t" in handle.planned()
    finally:
        handle.shutdown()
    assert not handle.running



def test_a_job_added_with_its_own_secrets_file_finds_it_when_the_server_has_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``schedule add --secrets FILE`` used to store the target in FILE and forget it: the
    server (started without --secrets) then looked elsewhere and the job failed for ever."""
    from georeg.cli_sync import schedule_group

    monkeypatch.delenv(scheduler.SECRETS_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no secrets file there
    path = tmp_path / "district.gpkg"
    Registry.create(path).close()
    own = tmp_path / "private" / "district-secrets.toml"
    port, other_port = closed_port(), closed_port()
    out = CliRunner().invoke(schedule_group, [
        "add", str(path), "--job", "postgis-push", "--every", "1h", "--target", "central",
        "--url", f"postgresql://georeg@127.0.0.1:{port}/georeg", "--secrets", str(own),
        "--json"])
    assert out.exit_code == 0, out.output
    with Registry.open(path) as reg:
        job = list_jobs(reg)[0]
        assert job["options"] == {"secrets_file": str(own.resolve())}  # where, never what
        [result] = run_now(reg, job["name"])  # as the server runs it: no --secrets
        # the target was found: the run reached for its server (closed: nothing listens)
        assert result.outcome == "failed" and f":{port}" in str(result.error), result.error
        # the --secrets of whoever runs it goes first
        other = tmp_path / "other.toml"
        save_target(other, "central", {"url": f"postgresql://georeg@127.0.0.1:{other_port}/g"})
        [result] = run_now(reg, job["name"], secrets_file=other)
        assert f":{other_port}" in str(result.error), result.error


# --- command line --------------------------------------------------------------------------


def test_cli_add_list_run_now_history_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    from georeg.cli_sync import schedule_group

    monkeypatch.delenv(scheduler.SECRETS_ENV, raising=False)
    path = tmp_path / "district.gpkg"
    Registry.create(path).close()
    secrets_file = tmp_path / "private" / "secrets.toml"
    url = f"postgresql://georeg:Pa55word@127.0.0.1:{closed_port()}/georeg"
    runner = CliRunner()

    def run(*args: str) -> Any:
        out = runner.invoke(schedule_group, list(args))
        return out

    out = run("add", str(path), "--job", "postgis-push", "--every", "1h", "--target", "central",
              "--url", url, "--schema", "bo", "--retries", "0",
              "--secrets", str(secrets_file), "--json")
    assert out.exit_code == 0, out.output
    added = json.loads(out.output)
    assert added["secrets_file"] == str(secrets_file)
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert b"Pa55word" not in path.read_bytes()
    out = run("list", str(path))
    assert "postgis-push-central: postgis-push → central, every 1h; never run" in out.output
    out = run("run-now", str(path), "postgis-push-central", "--secrets", str(secrets_file))
    assert out.exit_code == 1 and "failed" in out.output and "Cannot reach" in out.output
    assert "Pa55word" not in out.output
    out = run("history", str(path), "--json")
    [entry] = json.loads(out.output)
    assert entry["outcome"] == "failed" and entry["triggered_by"] == "run-now"
    out = run("add", str(path), "--job", "postgis-pull", "--every", "1h", "--target", "typo",
              "--secrets", str(secrets_file))
    assert out.exit_code == 0 and "warning: No target 'typo'" in out.output, out.output
    out = run("run-now", str(path), "postgis-pull-typo", "--secrets",
              str(tmp_path / "elsewhere.toml"))
    assert "secrets file" in out.output and "does not exist" in out.output, out.output
    run("remove", str(path), "postgis-pull-typo")
    out = run("remove", str(path), "postgis-push-central")
    assert out.exit_code == 0 and "Removed" in out.output
    out = run("history", str(path))
    assert "postgis-push-central" in out.output  # the history outlives the job


# --- one run at a time, across processes ---------------------------------------------------


def _lock_holder(location: str, name: str, ready: Any, release: Any) -> None:
    """Another process (a second server) holding job ``name`` until told to let go."""
    with Registry.open(location) as reg, scheduler.job_lock(reg, name) as mine:
        ready.put(mine)
        release.get(timeout=60)


@pytest.mark.parametrize("backend", ["gpkg", pytest.param("postgis", marks=pytest.mark.postgis)])
def test_a_job_running_in_another_process_is_not_started_twice(
    backend: str, tmp_path: Path, secrets: Path, fake_kind: None, request: pytest.FixtureRequest
) -> None:
    """Two servers on one registry (or a server and `schedule run-now`) never run the same
    job at once; when the holder dies, the job is free again."""
    import multiprocessing

    from tests.conftest import location_for

    location = location_for(backend, tmp_path, request)
    Registry.create(location).close()
    save_target(secrets, "t", {"url": "x://y"})
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Queue(), ctx.Queue()
    with Registry.open(location) as reg:
        add_job(reg, "fake", every=3600, target="t")
        other = ctx.Process(target=_lock_holder, args=(location, "fake-t", ready, release))
        other.start()
        try:
            assert ready.get(timeout=60) is True
            with pytest.raises(ConflictError, match="running in another process"):
                run_now(reg, "fake-t")
            with Scheduler(location, reload_seconds=60) as sched:
                sched._fire("fake-t")  # what APScheduler calls on time
            assert CALLS == [] and history(reg) == []
            with scheduler.job_lock(reg, "other-job") as mine:
                assert mine  # other jobs are not held up
        finally:
            release.put("go")
            other.join(timeout=60)
        assert other.exitcode == 0
        [result] = run_now(reg, "fake-t")
        assert result.outcome == "ok" and len(CALLS) == 1
        # a holder killed with SIGKILL frees the job too
        other = ctx.Process(target=_lock_holder, args=(location, "fake-t", ready, release))
        other.start()
        assert ready.get(timeout=60) is True
        other.kill()
        other.join(timeout=60)
        deadline = time.monotonic() + 20
        while True:
            try:
                run_now(reg, "fake-t")
                break
            except ConflictError:  # PostgreSQL notices the dead session a moment later
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert len(CALLS) == 2
    if backend == "postgis":
        engine = create_engine(Location.parse(location).url or "")
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{Location.parse(location).schema}" '
                                 "CASCADE")
        engine.dispose()
