"""``georeg users/projects/forms/submissions/serve`` through the CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from openpyxl import load_workbook

from georeg.cli import main
from local_server import collect_qr, submissions
from local_server.users import verify_password
from storage.registry import Registry
from tests.openrosa_helpers import FORM_ID, ROOT, build_registry, instance_xml, write_test_form


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.output


def test_users_lifecycle(tmp_path: Path) -> None:
    reg = str(tmp_path / "r.gpkg")
    Registry.create(reg).close()
    code, out = run("users", "add", reg, "ama", "--password-stdin", input="s3cret-pass\n")
    assert code == 0 and "collector ama" in out and "s3cret" not in out
    code, out = run("users", "add", reg, "kofi", "--role", "reviewer", "--generate", "--json")
    assert code == 0
    generated = json.loads(out)["password"]
    assert len(generated) >= 12
    code, out = run("users", "add", reg, "ama", "--password-stdin", input="another-pass\n")
    assert code != 0 and "already exists" in out
    code, out = run("users", "add", reg, "x", "--password-stdin", input="short\n")
    assert code == 2 and "8 characters" in out
    code, out = run("users", "add", reg, "y", "--root", "nowhere", "--password-stdin",
                    input="long-enough\n")
    assert code == 4 and "nowhere" in out
    code, out = run("users", "list", reg, "--json")
    assert [u["name"] for u in json.loads(out)] == ["ama", "kofi"]
    with Registry.open(reg) as r:
        from sqlalchemy import text

        with r.read() as conn:
            stored = dict(conn.execute(text("SELECT name, password_hash FROM app_user")).all())
    assert verify_password(stored["kofi"], generated)
    assert generated not in stored["kofi"] and "s3cret-pass" not in stored["ama"]
    code, out = run("users", "remove", reg, "ama")
    assert code == 0
    code, out = run("users", "remove", reg, "ama")
    assert code == 4


def test_serve_refuses_without_users(tmp_path: Path) -> None:
    reg = str(tmp_path / "r.gpkg")
    Registry.create(reg).close()
    code, out = run("serve", reg, "--port", "0")
    assert code == 2 and "users add" in out


def test_projects_forms_and_export(tmp_path: Path) -> None:
    setup = build_registry(tmp_path / "r.gpkg")
    reg = str(setup.path)
    code, out = run("projects", "add", reg, "Survey", "--app-id", "org.survey")
    assert code == 0
    code, out = run("forms", "add", reg, str(write_test_form(tmp_path / "f", "7")),
                    "--project", "org.survey", "--org-unit-field", "facility")
    assert code == 0 and "version 7" in out
    code, out = run("forms", "list", reg, "--json")
    assert json.loads(out)[0]["version"] == "7"
    with Registry.open(reg) as r:
        for i in range(3):
            xml, _ = instance_xml(setup.inside, version="7", remarks=f"r{i}")
            submissions.store_submission(r, xml, {"photo.jpg": (b"jpg%d" % i, "image/jpeg")})
    for fmt in ("csv", "xlsx", "geojson", "json"):
        out_file = tmp_path / f"subs.{fmt}"
        code, out = run("submissions", reg, "--form", FORM_ID, "--out", str(out_file))
        assert code == 0, out
        assert out_file.exists()
    rows = load_workbook(tmp_path / "subs.xlsx").active.values
    header = next(rows)
    assert "facility" in header and "visit" in header
    geo = json.loads((tmp_path / "subs.geojson").read_text())
    assert geo["features"][0]["geometry"]["coordinates"] == [-13.23, 8.48]
    with zipfile.ZipFile(tmp_path / "subs.csv_attachments.zip") as zf:  # one zip per OUT
        assert len(zf.namelist()) == 3
    code, out = run("submissions", reg, "--since", "not a date", "--json")
    assert code == 2


def test_serve_prints_lan_urls_and_qr(tmp_path: Path) -> None:
    setup = build_registry(tmp_path / "r.gpkg")
    png = tmp_path / "qr.png"
    proc = subprocess.Popen(
        [sys.executable, "-m", "georeg.cli", "serve", str(setup.path), "--port", "0",
         "--no-scheduler", "--qr-png", str(png), "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("}"):
                break
        info = json.loads("".join(lines))
    finally:
        proc.kill()
        proc.wait(10)
    assert png.read_bytes().startswith(b"\x89PNG")
    assert all("127.0.0.1" not in u and "localhost" not in u for u in info["urls"])
    settings = collect_qr.decode_payload(info["collect_settings"])
    assert settings["general"]["username"] == "amina"  # the first collector
    assert settings["general"]["server_url"] == info["urls"][0]
    assert "password" not in settings["general"]


@pytest.mark.parametrize("payload", ["http://192.168.1.10:8080"])
def test_collect_payload_roundtrip(payload: str) -> None:
    data = collect_qr.decode_payload(collect_qr.collect_payload(payload, "ama"))
    assert data == {"general": {"server_url": payload, "username": "ama"}, "admin": {}}


def _serve_two_workers(registry: Path, port: int, tmp_path: Path,
                       background: bool = False) -> subprocess.Popen[bytes]:
    """``georeg serve --workers 2`` on 127.0.0.1:PORT as a user starts it (its own process);
    ``background``: as a script's ``georeg serve &`` does, with SIGINT ignored."""
    import signal

    return subprocess.Popen(
        [sys.executable, "-m", "georeg.cli", "serve", str(registry), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "2", "--no-scheduler", "--qr-png",
         str(tmp_path / "qr.png")],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("wb"),
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background
        else None)


@pytest.mark.parametrize("how", ["ctrl-c in the background", "sigterm"])
def test_serve_stops_cleanly_when_told_to(tmp_path: Path, how: str) -> None:
    """Ctrl-C, or SIGTERM (systemd, kill): the server stops within seconds, workers
    included — also when started by a script in the background, where SIGINT comes in
    ignored (and once left it running, unstoppable but by kill -9)."""
    import os
    import signal

    from tests.openrosa_helpers import free_port, wait_up

    setup = build_registry(tmp_path / "r.gpkg")
    port = free_port()
    proc = _serve_two_workers(setup.path, port, tmp_path, background=how != "sigterm")
    wait_up(f"http://127.0.0.1:{port}")
    if how == "sigterm":
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
    else:
        _ctrl_c(proc, tmp_path / "serve.log")
    assert proc.returncode == 0
    with pytest.raises(OSError):  # nobody listens any more: the workers are gone too
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _ctrl_c(proc: subprocess.Popen[bytes], log: Path, within: float = 10) -> None:
    """Stop ``serve`` as Ctrl-C does; if it is not gone ``within`` seconds, fail with
    every thread's stack (``serve`` prints them on SIGUSR1) rather than a bare timeout."""
    import os
    import signal
    import time

    os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(within)
        return
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(1)
        proc.kill()
        proc.wait(10)
    pytest.fail(f"serve was still running {within:.0f} s after Ctrl-C; its threads then:\n"
                + log.read_text(errors="replace")[-6000:])


def test_serve_workers_share_the_port_and_die_with_the_parent(tmp_path: Path) -> None:
    import os
    import signal
    import socket
    import tempfile
    import time

    from tests.openrosa_helpers import SyntheticCollect, free_port, wait_up

    setup = build_registry(tmp_path / "r.gpkg")
    port = free_port()
    started = time.time() - 1
    proc = _serve_two_workers(setup.path, port, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base)
        collect = SyntheticCollect(base, "kofi", setup.passwords["kofi"])
        for _ in range(6):
            xml, _iid = instance_xml(setup.inside)
            assert collect.submit(xml)[-1].status_code == 201
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("a worker kept serving after the main process was killed")
    assert not [p for p in Path(tempfile.gettempdir()).glob("georeg-serve-*")
                if p.stat().st_mtime >= started], "the workers' shared folder was left behind"
    with Registry.open(setup.path) as reg:
        assert submissions.count_submissions(reg) == 6


def test_a_replay_is_refused_by_every_worker(tmp_path: Path) -> None:
    """With --workers 2 a captured Digest answer replayed on new connections (which
    the kernel hands to either process) is refused by both, not only by the worker
    that saw it first."""

    import requests
    from requests.auth import HTTPDigestAuth

    from tests.openrosa_helpers import digest_header, free_port, wait_up

    setup = build_registry(tmp_path / "r.gpkg")
    port = free_port()
    proc = _serve_two_workers(setup.path, port, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base)
        replays: list[int] = []
        for _ in range(5):
            challenge = requests.get(base + "/formList", timeout=30).headers[
                "WWW-Authenticate"]
            header = digest_header("GET", "/formList", "kofi", setup.passwords["kofi"],
                                   challenge)
            first = requests.get(base + "/formList", headers={"Authorization": header},
                                 timeout=30)
            assert first.status_code == 200
            for _ in range(8):  # a new connection each time
                again = requests.get(base + "/formList", headers={"Authorization": header,
                                                                  "Connection": "close"},
                                     timeout=30)
                replays.append(again.status_code)
        assert replays == [401] * 40
        # honest clients counting up under one nonce go on working, whichever worker
        session = requests.Session()
        session.auth = HTTPDigestAuth("kofi", setup.passwords["kofi"])
        assert all(session.get(base + "/formList", timeout=30).status_code == 200
                   for _ in range(5))
    finally:
        _ctrl_c(proc, tmp_path / "serve.log")


@pytest.mark.postgis
def test_serve_a_postgresql_registry_runs_its_schedule(tmp_path: Path, postgis_url: str) -> None:
    """A shared PostgreSQL registry is served like a file: the QR image lands in the
    working directory (never at a path made of the URL) and scheduled jobs run."""
    import socket
    import time
    import uuid

    from local_server import users
    from sync.scheduler import add_job, history, save_target

    location = f"{postgis_url}?schema=t_{uuid.uuid4().hex[:12]}"
    with Registry.create(location) as reg:
        users.add_user(reg, "amina", "a long enough secret", role="collector")
        add_job(reg, "dhis2-pull", every=1, target="dhis2", options={"source": "DHIS2"})
    with socket.socket() as s:  # a port where nothing listens: the job fails, is recorded
        s.bind(("127.0.0.1", 0))
        dead = int(s.getsockname()[1])
    secrets_file = save_target(tmp_path / "secrets.toml", "dhis2",
                               {"url": f"http://127.0.0.1:{dead}", "token": "t"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "georeg.cli", "serve", location, "--host", "127.0.0.1",
         "--port", "0", "--json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
             "GEOREG_SECRETS": str(secrets_file)})
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("}"):
                break
        info = json.loads("".join(lines))
        assert Path(info["qr_png"]) == Path("georeg-collect-qr.png")
        assert (tmp_path / "georeg-collect-qr.png").read_bytes().startswith(b"\x89PNG")
        with Registry.open(location) as reg:
            deadline = time.monotonic() + 30
            while not history(reg) and time.monotonic() < deadline:
                time.sleep(0.2)
            runs = history(reg)
    finally:
        proc.kill()
        proc.wait(10)
    assert runs and runs[-1]["triggered_by"] == "schedule"
