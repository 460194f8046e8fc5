"""Iaso app downloads through the real server: the org-unit list and the form list.

1. ``GET /api/mobile/orgunits/`` of a 100k-unit synthetic tree, no shapes, unpaged (what
   the Iaso app asks for), over HTTP on 127.0.0.1 from ``georeg serve`` running in a
   child process.  Goal: < 2 s, streamed, with the server's memory flat: its peak RSS
   grows by much less than the body's size.  Baselines in the same run: the same rows
   read with plain ``sqlite3`` and serialised to JSON in one ``json.dumps`` (no HTTP),
   and our streaming generator called in-process (no HTTP).
2. ``GET /api/mobile/forms/`` with 200 forms attached to the project.  Goal: < 50 ms
   (median).  Baseline: the same form rows read with plain ``sqlite3`` and dumped to JSON.

    .venv/bin/python benchmarks/bench_iaso_download.py [--size 100000] [--forms 200]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
import requests
import synthetic_tree

from storage.registry import Registry
from storage.versions import resolve_version

GOAL_DOWNLOAD_S = 2.0
GOAL_FORMS_MS = 50.0
APP_ID = "org.georeg.bench"
USER, PASSWORD = "bench", "bench-password-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "georeg.cli", *args], cwd=c.ROOT, input=stdin,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"georeg {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def _rss_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """``georeg serve`` in a child process on 127.0.0.1."""

    def __init__(self, registry: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "georeg.cli", "serve", str(registry), "--host", "127.0.0.1",
             "--port", str(self.port)], cwd=c.ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"georeg serve exited:\n{self.proc.stderr.read()[-3000:]}")
            try:
                requests.get(self.base + "/api/openapi.json", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError("georeg serve did not answer within 60 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _baseline_rows(path: Path, version_id: int) -> tuple[float, int]:
    """Plain sqlite3: the same columns in path order, dicts, one json.dumps."""
    t = time.perf_counter()
    db = sqlite3.connect(path)
    rows = db.execute(
        "SELECT u.unit_key, u.name, u.uuid, u.parent_key, u.type_id, t.name, "
        "u.validation_status, u.aliases, u.opening_date, u.closed_date, u.location "
        "FROM org_unit u LEFT JOIN org_unit_type t ON t.fid = u.type_id "
        "WHERE u.version_id = ? ORDER BY u.path", (version_id,)).fetchall()
    keys = ("id", "name", "uuid", "parent_id", "org_unit_type_id", "org_unit_type_name",
            "validation_status", "aliases", "opening_date", "closed_date")
    body = json.dumps({"orgUnits": [dict(zip(keys, r[:10], strict=True)) for r in rows]})
    db.close()
    return time.perf_counter() - t, len(body)


def _direct(reg: Registry) -> tuple[float, int]:
    if str(c.ROOT) not in sys.path:
        sys.path.insert(0, str(c.ROOT))
    from local_server.iaso_api import stream_org_units

    with reg.read() as conn:
        version = resolve_version(conn, c.SOURCE)
    t = time.perf_counter()
    size = sum(len(chunk) for chunk in stream_org_units(reg, version, paths=None, roots=[]))
    return time.perf_counter() - t, size


def _token(base: str) -> str:
    r = requests.post(base + "/api/token/", json={"username": USER, "password": PASSWORD},
                      timeout=30)
    r.raise_for_status()
    return str(r.json()["access"])


def _download(base: str, token: str) -> tuple[float, int, int]:
    t = time.perf_counter()
    r = requests.get(base + f"/api/mobile/orgunits/?app_id={APP_ID}", stream=True,
                     headers={"Authorization": f"Bearer {token}"}, timeout=120)
    r.raise_for_status()
    chunks = [chunk for chunk in r.iter_content(1 << 16)]
    seconds = time.perf_counter() - t
    body = b"".join(chunks)
    return seconds, len(body), len(json.loads(body)["orgUnits"])


def _rss_growth(path: Path) -> tuple[float, float]:
    """Server peak RSS growth (MiB) over one full download, after a warm-up request;
    and the download's seconds."""
    server = Server(path)
    try:
        token = _token(server.base)
        requests.get(server.base + f"/api/mobile/orgunits/?app_id={APP_ID}&limit=1",
                     headers={"Authorization": f"Bearer {token}"}, timeout=30).raise_for_status()
        before = _rss_mib(server.proc.pid, "VmHWM")
        seconds, _size, _units = _download(server.base, token)
        return _rss_mib(server.proc.pid, "VmHWM") - before, seconds
    finally:
        server.stop()


def _prepare(out: Path, size: int, seed: int, forms: int) -> tuple[Path, int]:
    path = out / f"iaso-download-{size}.gpkg"
    imported = c.georeg_import(path, synthetic_tree.iter_units(size, seed))
    _cli("users", "add", str(path), USER, "--role", "admin", "--password-stdin",
         stdin=PASSWORD + "\n")
    _cli("projects", "add", str(path), "Bench", "--app-id", APP_ID)
    _add_forms(path, out, forms)
    return path, int(imported["version_id"])


def _xform(n: int) -> str:
    return (
        '<?xml version="1.0"?><h:html xmlns="http://www.w3.org/2002/xforms" '
        'xmlns:h="http://www.w3.org/1999/xhtml" xmlns:jr="http://openrosa.org/javarosa">'
        f"<h:head><h:title>Bench form {n}</h:title><model><instance>"
        f'<data id="bench_form_{n}" version="1"><q1/><meta><instanceID/></meta></data>'
        '</instance><bind nodeset="/data/q1" type="string"/>'
        '<bind nodeset="/data/meta/instanceID" type="string" readonly="true()" '
        'jr:preload="uid"/></model></h:head>'
        '<h:body><input ref="/data/q1"><label>Q1</label></input></h:body></h:html>'
    )


def _add_forms(path: Path, out: Path, count: int) -> None:
    folder = out / "bench-forms"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for n in range(count):
        f = folder / f"bench_form_{n}.xml"
        f.write_text(_xform(n), encoding="utf-8")
        files.append(f)
    if str(c.ROOT) not in sys.path:
        sys.path.insert(0, str(c.ROOT))
    from local_server import forms as core_forms

    reg = Registry.open(path)
    try:
        for f in files:
            core_forms.add_form(reg, f, project=APP_ID)
    finally:
        reg.close()


def _forms_baseline(path: Path) -> float:
    db = sqlite3.connect(path)
    t = time.perf_counter()
    rows = db.execute("SELECT * FROM form").fetchall()
    json.dumps({"forms": [list(map(str, r)) for r in rows]})
    seconds = time.perf_counter() - t
    db.close()
    return seconds


def run(size: int, *, forms: int, seed: int, out: Path, calls: int = 30) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    print(f"== Iaso downloads: {size:,} org units, {forms} forms")
    path, version_id = _prepare(out, size, seed, forms)
    small_path, _ = _prepare(out, size // 5, seed, 0)
    growth_small, _ = _rss_growth(small_path)
    growth_big, _ = _rss_growth(path)
    base_s, base_bytes = _baseline_rows(path, version_id)
    reg = Registry.open(path)
    try:
        direct_s, direct_bytes = _direct(reg)
    finally:
        reg.close()
    server = Server(path)
    try:
        token = _token(server.base)
        requests.get(server.base + "/api/openapi.json", timeout=30)
        rss_before = _rss_mib(server.proc.pid, "VmRSS")
        runs = [_download(server.base, token) for _ in range(3)]
        rss_peak = _rss_mib(server.proc.pid, "VmHWM")
        http_s = statistics.median(r[0] for r in runs)
        body_bytes, units = runs[0][1], runs[0][2]
        form_times = []
        auth = {"Authorization": f"Bearer {token}"}
        for _ in range(calls):
            t = time.perf_counter()
            r = requests.get(server.base + f"/api/mobile/forms/?app_id={APP_ID}", headers=auth,
                             timeout=30)
            form_times.append(time.perf_counter() - t)
            r.raise_for_status()
        forms_listed = len(r.json()["forms"])
        forms_ms = statistics.median(form_times) * 1e3
    finally:
        server.stop()
    forms_base_ms = _forms_baseline(path) * 1e3
    result = {
        "size": size, "units_served": units, "body_mib": body_bytes / 2**20,
        "http_seconds": http_s, "direct_seconds": direct_s, "baseline_seconds": base_s,
        "ratio_http_vs_baseline": http_s / base_s,
        "server_rss_before_mib": rss_before, "server_rss_peak_mib": rss_peak,
        "server_rss_growth_mib": rss_peak - rss_before,
        "rss_growth_small_mib": growth_small, "rss_growth_big_mib": growth_big,
        "rss_small_size": size // 5,
        "met_download": http_s < GOAL_DOWNLOAD_S,
        "forms": forms_listed, "forms_median_ms": forms_ms, "forms_baseline_ms": forms_base_ms,
        "met_forms": forms_ms < GOAL_FORMS_MS,
        "direct_bytes": direct_bytes, "baseline_bytes": base_bytes,
    }
    print(c.table(
        ["measure", "ours", "baseline (same run)", "ratio", "goal", ""],
        [
            [f"orgunits {size:,}, HTTP", f"{http_s:.2f} s", f"sqlite3+json {base_s:.2f} s",
             f"{http_s / base_s:.2f}x", f"< {GOAL_DOWNLOAD_S:g} s",
             "met" if result["met_download"] else "NOT met"],
            ["orgunits, in-process stream", f"{direct_s:.2f} s", f"{base_s:.2f} s",
             f"{direct_s / base_s:.2f}x", "", ""],
            [f"server peak RSS growth, one download of {size:,}", f"{growth_big:.0f} MiB",
             f"of {size // 5:,}: {growth_small:.0f} MiB", f"body {body_bytes / 2**20:.0f} MiB",
             "flat", "met" if growth_big <= growth_small + 10 else "NOT met"],
            ["server peak RSS, 3 downloads", f"{rss_peak:.0f} MiB",
             f"before {rss_before:.0f} MiB", "", "", ""],
            [f"form list, {forms_listed} forms", f"{forms_ms:.1f} ms",
             f"sqlite3+json {forms_base_ms:.1f} ms", f"{forms_ms / max(forms_base_ms, 1e-3):.1f}x",
             f"< {GOAL_FORMS_MS:g} ms", "met" if result["met_forms"] else "NOT met"],
        ]))
    c.save_result(out, "iaso-download", result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--forms", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=c.DEFAULT_OUT)
    args = ap.parse_args(argv)
    run(args.size, forms=args.forms, seed=args.seed, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
