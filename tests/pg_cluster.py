"""A throwaway PostgreSQL + PostGIS cluster for tests, on 127.0.0.1 only.

``throwaway_postgis()`` runs initdb in a temporary directory, starts ``postgres``
listening on 127.0.0.1 (a free port) with its socket in that directory, creates
the database ``georeg_test`` with the ``postgis`` extension and yields its URL.
On exit the server is stopped (``pg_ctl stop -m fast``) and the directory removed.

As root, the server runs as the ``postgres`` OS user (initdb refuses root).
Set ``GEOREG_TEST_POSTGRES_URL`` to use an existing database instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ENV_URL = "GEOREG_TEST_POSTGRES_URL"
HOST = "127.0.0.1"
DBNAME = "georeg_test"
SUPERUSER = "postgres"
START_TIMEOUT = 60.0


class PostgresUnavailable(RuntimeError):
    """No usable PostgreSQL/PostGIS installation, or the cluster failed to start."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/N/bin``, preferring versions that have PostGIS."""
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        m = re.fullmatch(r"/usr/lib/postgresql/(\d+(?:\.\d+)?)/bin", d)
        if m and os.access(os.path.join(d, "postgres"), os.X_OK):
            ver = m.group(1)
            has_postgis = os.path.exists(f"/usr/share/postgresql/{ver}/extension/postgis.control")
            found.append((has_postgis, float(ver), Path(d)))
    if not found:
        raise PostgresUnavailable("no PostgreSQL server found under /usr/lib/postgresql/*/bin")
    return max(found)[2]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    # PG* variables (PGHOST, PGSERVICE, PGSSLMODE ...) must not redirect our clients.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _as_owner(cmd: list[str]) -> list[str]:
    """Wrap cmd so it runs as the ``postgres`` OS user when we are root."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None and os.path.exists("/usr/sbin/runuser"):
        runuser = "/usr/sbin/runuser"
    if runuser:
        return [runuser, "-u", SUPERUSER, "--", *cmd]
    return ["su", SUPERUSER, "-s", "/bin/sh", "-c", shlex.join(cmd)]


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> None:
    r = subprocess.run(cmd, check=False, cwd=cwd, env=_clean_env(), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise PostgresUnavailable(
            f"{shlex.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}".rstrip()
        )


def _make_tempdir() -> Path:
    if os.geteuid() != 0:
        return Path(tempfile.mkdtemp(prefix="georeg-pg-"))
    try:
        owner = pwd.getpwnam(SUPERUSER)
    except KeyError as exc:
        raise PostgresUnavailable("running as root but there is no 'postgres' OS user") from exc
    # /tmp, not $TMPDIR: the postgres user must be able to reach it, and the
    # socket path must stay short.
    tmp = Path(tempfile.mkdtemp(prefix="georeg-pg-", dir="/tmp"))
    os.chown(tmp, owner.pw_uid, owner.pw_gid)
    return tmp


def _wait_ready(bindir: Path, proc: subprocess.Popen, port: int, tmp: Path) -> bool:
    """True once the server accepts connections; False if it exited (e.g. port taken)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        r = subprocess.run([str(bindir / "pg_isready"), "-q", "-h", HOST, "-p", str(port),
                            "-U", SUPERUSER, "-d", "postgres", "-t", "2"],
                           check=False, cwd=tmp, env=_clean_env(),
                           stdin=subprocess.DEVNULL)
        if r.returncode == 0:
            return True
        time.sleep(0.2)
    raise PostgresUnavailable(f"PostgreSQL did not become ready within {START_TIMEOUT:.0f}s")


def _stop(bindir: Path, data: Path, proc: subprocess.Popen, tmp: Path) -> None:
    if proc.poll() is None:
        with contextlib.suppress(Exception):
            subprocess.run(_as_owner([str(bindir / "pg_ctl"), "stop", "-D", str(data),
                                      "-m", "fast", "-w", "-t", "30"]),
                           check=False, cwd=tmp, env=_clean_env(),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        # The Popen child may be runuser; signal the postmaster itself.
        with contextlib.suppress(Exception):
            pid = int((data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _start(bindir: Path, tmp: Path) -> tuple[subprocess.Popen, int, Path]:
    data = tmp / "data"
    _run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust",
                    "-E", "UTF8", "--locale=C", "--no-sync"]), cwd=tmp)
    # Trust, but only over the socket in our private directory and from 127.0.0.1.
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        f"host  all all {HOST}/32 trust\n"
    )
    log = tmp / "postgres.log"
    last_error = ""
    for _attempt in range(3):
        port = _free_port()
        cmd = _as_owner([str(bindir / "postgres"), "-D", str(data), "-k", str(tmp),
                         "-h", HOST, "-p", str(port),
                         "-c", "fsync=off", "-c", "synchronous_commit=off",
                         "-c", "full_page_writes=off"])
        with open(log, "ab") as logf:
            proc = subprocess.Popen(cmd, cwd=tmp, env=_clean_env(), stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            if _wait_ready(bindir, proc, port, tmp):
                return proc, port, data
        except BaseException:
            _stop(bindir, data, proc, tmp)
            raise
        last_error = log.read_text(errors="replace")[-2000:]
        proc.wait()
    raise PostgresUnavailable(f"PostgreSQL failed to start:\n{last_error}")


@contextlib.contextmanager
def throwaway_postgis() -> Iterator[str]:
    """Yield ``postgresql://postgres@127.0.0.1:PORT/georeg_test`` of a fresh PostGIS cluster."""
    override = os.environ.get(ENV_URL)
    if override:
        yield override
        return

    bindir = find_bindir()
    tmp = _make_tempdir()
    proc: subprocess.Popen | None = None
    data = tmp / "data"
    try:
        proc, port, data = _start(bindir, tmp)
        psql = [str(bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                "-h", HOST, "-p", str(port), "-U", SUPERUSER]
        _run([*psql, "-d", "postgres", "-c", f"CREATE DATABASE {DBNAME}"], cwd=tmp)
        _run([*psql, "-d", DBNAME, "-c", "CREATE EXTENSION IF NOT EXISTS postgis"], cwd=tmp)
        yield f"postgresql://{SUPERUSER}@{HOST}:{port}/{DBNAME}"
    finally:
        if proc is not None:
            _stop(bindir, data, proc, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
