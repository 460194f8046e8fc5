"""A real ``georeg serve`` on 127.0.0.1 for the Iaso, REST and page tests.

``demo_server(tmp)`` builds a GeoPackage registry with the Sierra Leone demo (version 1
published and default — what phones download — and version 2, a draft copy, where
approved changes land), two users and an Iaso project, then serves it with the server
core's WSGI app on waitress in a thread, on a free port.

* ``kofi`` — reviewer, whole country;
* ``amina`` — collector, subtree Western Area (``at6UHUQatSo``).

"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from storage import versions
from storage.registry import Registry

APP_ID = "org.georeg.test"
WESTERN_AREA = "at6UHUQatSo"


@dataclass
class LiveServer:
    base: str
    registry: Registry
    path: Path
    passwords: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])




def build_demo_registry(path: Path, forms: Sequence[Path] = ()) -> tuple[Registry, dict[str, str]]:
    from sync.dhis2_json import import_dhis2_files
    from tests.conftest import DEMO_FILES

    reg = Registry.create(path)
    import_dhis2_files(reg, DEMO_FILES, source="SL")
    versions.publish_version(reg, "SL", 1, make_default=True)
    versions.create_version(reg, "SL", copy_from=1)
    passwords = {"kofi": secrets.token_urlsafe(12), "amina": secrets.token_urlsafe(12)}
    from local_server import projects, users

    users.add_user(reg, "kofi", passwords["kofi"], role="reviewer")
    users.add_user(reg, "amina", passwords["amina"], role="collector", roots=[WESTERN_AREA])
    projects.add_project(reg, "Test project", app_id=APP_ID)
    if forms:
        from local_server import forms as core_forms

        for form in forms:
            core_forms.add_form(reg, form, project=APP_ID)
    return reg, passwords


def stop_waitress(server: Any, thread: threading.Thread) -> None:
    """Stop a waitress server whose loop runs in ``thread``.  Its sockets are closed
    inside the loop (the trigger runs the close there): closed from this thread while
    the loop waits in ``select()`` on them, the loop thread died with EBADF."""
    from waitress import wasyncore

    channels = getattr(server, "_map", None)
    if channels is None:
        channels = server.map
    try:
        server.trigger.pull_trigger(lambda: wasyncore.close_all(channels))
    except OSError:
        # the loop's wake-up pipe is already closed (seen once on a loaded machine): the
        # loop cannot be woken, so its sockets are closed from here
        wasyncore.close_all(channels)
    thread.join(30)  # (a short wait let a late close hit the next test's reused fds)
    server.task_dispatcher.shutdown()


@contextmanager
def demo_server(tmp: Path, forms: Sequence[Path] = ()) -> Iterator[LiveServer]:
    from waitress.server import create_server

    path = tmp / "registry.gpkg"
    reg, passwords = build_demo_registry(path, forms)
    from local_server.app import create_app

    app = create_app(path)
    port = _free_port()
    server = create_server(app, host="127.0.0.1", port=port, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            requests.get(f"{base}/api/openapi.json", timeout=2)
            break
        except requests.ConnectionError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    try:
        yield LiveServer(base, reg, path, passwords)
    finally:
        stop_waitress(server, thread)
        app.close()
        reg.close()


def submissions(live: LiveServer) -> list[dict[str, Any]]:
    """Every stored submission, as the REST API lists them (with ``data``)."""
    from local_server import submissions as core_submissions

    return list(core_submissions.list_submissions(live.registry, limit=10_000)["results"])
