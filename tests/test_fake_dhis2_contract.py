"""Contract: for every recorded request, the fake DHIS2 answers exactly what the real server did.

The fake *generates* its answers from its state (paging, pagers and their links,
the ``fields`` syntax), so this proves the generation, not a lookup table.
Compared: HTTP status and the parsed JSON body (text for non-JSON bodies such
as ``pong``).  Also: a write, then a read of the same request, answers the new
state (the fake is not replaying).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from tests.fake_dhis2 import VERSIONS, FakeDhis2, Recording, recordings

CASES = [pytest.param(v, rec, id=f"{v}:{rec.file}:{rec.path_and_query}")
         for v in VERSIONS for rec in recordings(v)]


@pytest.fixture(scope="module", params=VERSIONS)
def server(request: pytest.FixtureRequest) -> Iterator[FakeDhis2]:
    with FakeDhis2(request.param) as fake:
        yield fake


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeDhis2]]:
    fakes = {v: FakeDhis2(v).start() for v in VERSIONS}
    yield fakes
    for fake in fakes.values():
        fake.stop()


def _body(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def test_every_version_has_recordings() -> None:
    for v in VERSIONS:
        files = {r.file for r in recordings(v)}
        assert {"dhis2_init.yaml", "organisation_units.yaml", "organisation_unit_groups.yaml",
                "organisation_unit_levels.yaml"} <= files


@pytest.mark.parametrize(("version", "rec"), CASES)
def test_the_fake_answers_as_recorded(servers: dict[str, FakeDhis2], version: str,
                                      rec: Recording) -> None:
    fake = servers[version]
    resp = requests.request(rec.method, fake.url + rec.path_and_query,
                            auth=("admin", "district"), timeout=10)
    assert resp.status_code == rec.status
    assert _body(resp.text) == _body(rec.body)


def test_answers_follow_the_state_not_the_recording(server: FakeDhis2) -> None:
    rec = next(r for r in recordings(server.version) if r.file == "organisation_units.yaml"
               and "page=2" not in r.url)
    url = server.url + rec.path_and_query
    before = requests.get(url, auth=("admin", "district"), timeout=10).json()
    payload = {"organisationUnits": [{"id": "NewUnit0001", "name": "A new CHP",
                                      "shortName": "A new CHP", "openingDate": "2020-01-01",
                                      "parent": {"id": "O6uvpzGd5pu"}}]}
    resp = requests.post(server.url + "/api/metadata", json=payload, auth=("admin", "district"),
                         timeout=10)
    assert resp.status_code == 200
    after = requests.get(url, auth=("admin", "district"), timeout=10).json()
    assert after["pager"]["total"] == before["pager"]["total"] + 1
    assert after["pager"]["total"] == 1333
    last = requests.get(url + "&page=2", auth=("admin", "district"), timeout=10).json()
    assert last["organisationUnits"][-1] == {"id": "NewUnit0001", "name": "A new CHP",
                                             "level": 3, "path": "/ImspTQPwCqd/O6uvpzGd5pu/"
                                             "NewUnit0001"}
