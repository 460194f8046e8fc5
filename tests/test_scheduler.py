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
        save_target(secrets, "central", {"url": central[0], "schema": central[1]})  # fixed
        ok = wait_for(lambda: next((r for r in history(reg) if r["outcome"] == "ok"), None))
    assert failed["attempt"] == 1 and "Cannot reach" in failed["error"]
    assert failed["retry_at"] is not None
    assert ok["triggered_by"] == "retry" and ok["attempt"] == 2
    delay = (at(ok["started_at"]) - at(failed["ended_at"])).total_seconds()
    assert 0.6 <= delay <= 2.0
    assert ok["figures"]["units_inserted"] == 1332


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
