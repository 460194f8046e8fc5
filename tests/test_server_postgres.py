"""The LAN server on a shared PostgreSQL registry: what Collect does works the same as on
a file, and racing identical submissions still make one record (the unique index, then
a retry that finds the first one — real concurrency against a real PostgreSQL)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from requests.auth import HTTPDigestAuth

from local_server import submissions
from storage.registry import Registry
from tests.openrosa_helpers import (
    FORM_ID,
    Setup,
    SyntheticCollect,
    build_registry,
    instance_xml,
    thread_server,
)

pytestmark = pytest.mark.postgis


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, postgis_url: str) -> Setup:
    folder = tmp_path_factory.mktemp("pg-server")
    location = f"{postgis_url}?schema=srv_{uuid.uuid4().hex[:10]}"
    return build_registry(folder / "registry.gpkg", location=location)


@pytest.fixture(scope="module")
def server(setup: Setup) -> Iterator[str]:
    with thread_server(setup.path, max_body=2 * 1024 * 1024) as base:
        yield base


def instance_ids(setup: Setup) -> list[str]:
    with Registry.open(setup.path) as reg:
        rows = submissions.list_submissions(reg, limit=100_000, include_superseded=True)
    return [s["instance_id"] for s in rows["results"]]


def test_collect_downloads_the_form_and_submits(server: str, setup: Setup) -> None:
    collect = SyntheticCollect(server, "amina", setup.passwords["amina"])
    [entry] = collect.form_list(FORM_ID)
    assert b"<h:html" in collect.download_form(entry)
    media = collect.manifest(entry)
    assert {"logo.png", "orgunits.csv"} <= {m["filename"] for m in media}
    units_csv = next(m for m in media if m["filename"] == "orgunits.csv")
    assert setup.inside.encode() in collect.download_media(units_csv)
    collect.head_submission()
    xml, iid = instance_xml(setup.inside)
    assert [r.status_code for r in collect.submit(xml, {"photo.jpg": b"\xff\xd8 a photo"})] == [201]
    assert iid in instance_ids(setup)
    outside, _ = instance_xml(setup.outside)
    assert [r.status_code for r in collect.submit(outside)] == [403]  # amina's area only


def test_ten_identical_posts_in_parallel_make_one_record(server: str, setup: Setup) -> None:
    xml, iid = instance_xml(setup.inside)
    barrier = threading.Barrier(10)

    def send(_: int) -> int:
        session = requests.Session()
        session.auth = HTTPDigestAuth("kofi", setup.passwords["kofi"])
        barrier.wait()
        files = [("xml_submission_file", ("i.xml", xml, "text/xml")),
                 ("photo.jpg", ("photo.jpg", b"same bytes", "image/jpeg"))]
        return session.post(server + "/submission?deviceID=t", files=files,
                            timeout=60).status_code

    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(send, range(10)))
    assert all(c in (201, 202) for c in codes), codes
    assert instance_ids(setup).count(iid) == 1


def test_the_registry_is_only_in_postgresql(setup: Setup) -> None:
    assert str(setup.path).startswith("postgresql")
    assert not Path(str(setup.path)).exists()
