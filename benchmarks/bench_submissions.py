"""ODK Collect submissions per second against ``georeg serve`` on loopback.

20 concurrent clients (threads spread over client processes, keep-alive connections,
HTTP Digest answered like Collect does after the first challenge) post a 250-question
form with a 200 KB attachment for 30 s (``--quick``: 5 s).  The server is ``georeg serve``
in a child process on a GeoPackage registry, committing every submission (fsync,
``synchronous = FULL``) before answering 201.

Goals (issue 5): ≥ 200 submissions/s sustained, p99 < 500 ms, none lost (every 201 is in
the registry afterwards).

Baseline, same run, same clients and bodies: a bare waitress "hello world" WSGI app with
the same thread count that reads the whole body and answers 201 — the ceiling of
waitress + loopback + our client on this machine.  The ratio is ours / baseline.

    .venv/bin/python benchmarks/bench_submissions.py [--seconds 30] [--clients 20] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import multiprocessing as mp
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import _common as c  # noqa: E402

GOAL_RATE = 200.0
GOAL_P99_MS = 500.0
QUESTIONS = 250
ATTACHMENT = 200 * 1024
USER, PASSWORD = "bench", "bench-password-123"
THREADS = 8
WORKERS = 1
BOUNDARY = "georegbench7e3f"
IID_PLACEHOLDER = "uuid:" + "0" * 36


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def body_template() -> tuple[bytes, str]:
    """One multipart body with a placeholder instanceID (replaced per request)."""
    from tests.openrosa_helpers import instance_xml

    xml, _ = instance_xml("", instance_id=IID_PLACEHOLDER, extra=QUESTIONS - 6, visits=1)
    photo = secrets.token_bytes(ATTACHMENT)
    parts = [
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"xml_submission_file\"; "
        f"filename=\"instance.xml\"\r\nContent-Type: text/xml\r\n\r\n".encode() + xml + b"\r\n",
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"photo.jpg\"; "
        f"filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".encode() + photo
        + b"\r\n",
        f"--{BOUNDARY}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={BOUNDARY}"


# --- client ---------------------------------------------------------------------------------


class DigestClient:
    """Keep-alive HTTP/1.1 client answering the Digest challenge once, then pre-emptively
    (what Collect's caching authenticator does)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.challenge: dict[str, str] | None = None
        self.nc = 0

    def _auth(self, method: str, uri: str) -> dict[str, str]:
        if self.challenge is None:
            return {}
        ch = self.challenge
        self.nc += 1
        nc = f"{self.nc:08x}"
        cnonce = secrets.token_hex(8)
        ha1 = hashlib.md5(f"{USER}:{ch['realm']}:{PASSWORD}".encode()).hexdigest()
        ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
        resp = hashlib.md5(f"{ha1}:{ch['nonce']}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
        return {"Authorization": (
            f'Digest username="{USER}", realm="{ch["realm"]}", nonce="{ch["nonce"]}", '
            f'uri="{uri}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}", '
            f'response="{resp}", opaque="{ch.get("opaque", "")}"')}

    def post(self, uri: str, body: bytes, ctype: str) -> int:
        for _ in range(2):
            headers = {"Content-Type": ctype, "X-OpenRosa-Version": "1.0",
                       **self._auth("POST", uri)}
            try:
                self.conn.request("POST", uri, body=body, headers=headers)
                r = self.conn.getresponse()
                r.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                raise
            if r.status == 401:
                import re

                self.challenge = dict(re.findall(r'(\w+)="([^"]*)"',
                                                 r.getheader("WWW-Authenticate") or ""))
                self.nc = 0
                continue
            return r.status
        return 401


def _client_proc(port: int, threads: int, seconds: float, template: bytes, ctype: str,
                 queue: Any) -> None:
    import threading

    results: list[tuple[float, int, str]] = []
    lock = threading.Lock()
    start_at = time.time() + 0.5
    end_at = start_at + seconds

    def worker() -> None:
        client = DigestClient(port)
        local: list[tuple[float, int, str]] = []
        while time.time() < start_at:
            time.sleep(0.01)
        while time.time() < end_at:
            iid = f"uuid:{uuid.uuid4()}"
            body = template.replace(IID_PLACEHOLDER.encode(), iid.encode())
            t0 = time.perf_counter()
            try:
                status = client.post("/submission?deviceID=bench", body, ctype)
            except (OSError, http.client.HTTPException) as error:
                status = -1
                iid = f"error: {type(error).__name__}: {error}"
            local.append((time.perf_counter() - t0, status, iid))
        with lock:
            results.extend(local)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    queue.put(results)


def load(port: int, clients: int, seconds: float, template: bytes, ctype: str
         ) -> dict[str, Any]:
    procs_n = min(4, clients)
    per = [clients // procs_n + (1 if i < clients % procs_n else 0) for i in range(procs_n)]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_client_proc, args=(port, n, seconds, template, ctype, queue))
             for n in per]
    for p in procs:
        p.start()
    results: list[tuple[float, int, str]] = []
    for _ in procs:
        results.extend(queue.get())
    for p in procs:
        p.join()
    ok = [r for r in results if r[1] in (201, 202)]
    lat = sorted(r[0] * 1000 for r in ok) or [float("nan")]
    return {
        "requests": len(results), "acknowledged": len(ok),
        "errors": len(results) - len(ok),
        "statuses": sorted({r[1] for r in results}),
        "error_samples": sorted({r[2] for r in results if r[1] == -1})[:5],
        "rate": len(ok) / seconds,
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "instance_ids": [r[2] for r in ok],
    }


# --- servers --------------------------------------------------------------------------------

_HELLO = r'''
import sys
from waitress import serve
def app(environ, start_response):
    stream = environ["wsgi.input"]
    while stream.read(65536):
        pass
    body = b'<OpenRosaResponse xmlns="http://openrosa.org/http/response"><message>ok</message></OpenRosaResponse>'
    start_response("201 Created", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]
serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=int(sys.argv[2]), _quiet=True)
'''


def _wait(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited before answering")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def prepare(folder: Path) -> Path:
    from local_server import forms, users
    from storage.registry import Registry
    from tests.openrosa_helpers import write_test_form

    path = folder / "bench-submissions.gpkg"
    c.remove_db(path)
    with Registry.create(path) as reg:
        users.add_user(reg, USER, PASSWORD, role="collector")
        forms.add_form(reg, write_test_form(folder, "1", extra_rows=QUESTIONS - 6))
    return path


def run(seconds: float = 30.0, clients: int = 20, out: Path = c.DEFAULT_OUT,
        workers: int = WORKERS) -> dict[str, Any]:
    template, ctype = body_template()
    result: dict[str, Any] = {"seconds": seconds, "clients": clients, "questions": QUESTIONS,
                              "attachment_bytes": ATTACHMENT, "body_bytes": len(template),
                              "server_threads": THREADS, "server_workers": workers}
    with tempfile.TemporaryDirectory() as tmp:
        # baseline: bare waitress
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-c", _HELLO, str(port), str(THREADS)],
                                stderr=subprocess.DEVNULL)
        try:
            _wait(port, proc)
            base = load(port, clients, seconds, template, ctype)
        finally:
            proc.kill()
            proc.wait()
        base.pop("instance_ids")
        result["baseline"] = base

        path = prepare(Path(tmp))
        port = _free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(
            [sys.executable, "-m", "georeg.cli", "serve", str(path), "--host", "127.0.0.1",
             "--port", str(port), "--threads", str(THREADS), "--workers", str(workers),
             "--no-scheduler",
             "--qr-png", str(Path(tmp) / "qr.png")],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=(Path(tmp) / "serve.log").open("wb"))  # a pipe nobody reads would block it
        try:
            _wait(port, proc)
            ours = load(port, clients, seconds, template, ctype)
        finally:
            proc.terminate()
            proc.wait(30)
        from local_server import submissions
        from storage.registry import Registry

        with Registry.open(path) as reg:
            held = {s["instance_id"] for s in submissions.list_submissions(
                reg, limit=10_000_000)["results"]}
        acked = ours.pop("instance_ids")
        ours["lost"] = sum(1 for i in acked if i not in held)
        ours["stored"] = len(held)
        result["georeg"] = ours
    result["ratio"] = ours["rate"] / base["rate"] if base["rate"] else float("nan")
    result["met"] = {"rate": ours["rate"] >= GOAL_RATE, "p99": ours["p99_ms"] < GOAL_P99_MS,
                     "none_lost": ours["lost"] == 0}
    c.save_result(out, "bench_submissions", result)
    print(f"Submissions: {clients} clients, {QUESTIONS}-question form, "
          f"{ATTACHMENT // 1024} KB attachment, {seconds:g} s each; georeg serve --workers "
          f"{workers} --threads {THREADS}, baseline one waitress process, {THREADS} threads")
    print(c.table(
        ["server", "subs/s", "p50 ms", "p99 ms", "acknowledged", "errors", "lost"],
        [["georeg serve", ours["rate"], ours["p50_ms"], ours["p99_ms"], ours["acknowledged"],
          ours["errors"], ours["lost"]],
         ["baseline: bare waitress", base["rate"], base["p50_ms"], base["p99_ms"],
          base["acknowledged"], base["errors"], "-"]]))
    print(f"georeg / baseline throughput: {result['ratio']:.2f}; goals: >= {GOAL_RATE:g}/s "
          f"{'met' if result['met']['rate'] else 'NOT met'}, p99 < {GOAL_P99_MS:g} ms "
          f"{'met' if result['met']['p99'] else 'NOT met'}, none lost "
          f"{'met' if result['met']['none_lost'] else 'NOT met'}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="5 s per server")
    ap.add_argument("--workers", type=int, default=WORKERS,
                    help="georeg serve --workers (the baseline is one waitress process)")
    ap.add_argument("--out", type=Path, default=c.DEFAULT_OUT)
    args = ap.parse_args()
    result = run(5.0 if args.quick else args.seconds, args.clients, args.out, args.workers)
    print(json.dumps({k: v for k, v in result.items()}, default=str))


if __name__ == "__main__":
    main()
