"""The OpenAPI document matches the live server (schemathesis), and no endpoint of the
server — REST, Iaso, pages — answers 500 to malformed input (a bounded fuzz)."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from local_server.openapi import openapi_document
from tests import server_helpers as sh


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sh.LiveServer]:
    with sh.demo_server(tmp_path_factory.mktemp("openapi")) as server:
        yield server


@pytest.fixture(scope="module")
def token(live: sh.LiveServer) -> str:
    r = requests.post(f"{live.base}/api/token/", timeout=30,
                      json={"username": "kofi", "password": live.passwords["kofi"]})
    return str(r.json()["access"])


# The operations come from the document the server serves (checked equal below); each is
# fuzzed with a few examples and every answer validated (status, content type, schema).
SCHEMA = schemathesis.openapi.from_dict(openapi_document())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=[o.label for o in OPERATIONS])
def test_api_matches_its_openapi_document(operation: Any, live: sh.LiveServer,
                                          token: str) -> None:
    headers = {} if operation.path == "/api/token/" else {"Authorization": f"Bearer {token}"}

    @given(case=operation.as_strategy())
    @settings(max_examples=8, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        case.call_and_validate(base_url=live.base, headers=headers)

    check()


def test_openapi_document_is_served_and_lists_the_routes(live: sh.LiveServer) -> None:
    doc = requests.get(f"{live.base}/api/openapi.json", timeout=30).json()
    assert doc == openapi_document(live.base)
    assert doc["openapi"].startswith("3.")
    assert {"/api/v1/orgunits", "/api/v1/changes/{ident}/approve", "/api/v1/diff"} <= set(
        doc["paths"])


# --- fuzz: every endpoint, odd input, never a 500 ----------------------------------------

ENDPOINTS = [
    ("GET", "/"), ("GET", "/login"), ("POST", "/login"), ("GET", "/qr"), ("GET", "/submissions"),
    ("GET", "/changes"), ("GET", "/changes/{x}"), ("POST", "/changes/{x}/approve"),
    ("POST", "/changes/{x}/reject"),
    ("POST", "/api/token/"), ("POST", "/api/token/refresh/"),
    ("GET", "/api/mobile/orgunits/"), ("POST", "/api/mobile/orgunits/"),
    ("GET", "/api/mobile/forms/"), ("GET", "/api/formversions/"), ("GET", "/api/orgunittypes/"),
    ("GET", "/api/mobile/groups/"), ("POST", "/api/instances/"), ("POST", "/sync/form_upload/"),
    ("POST", "/api/orgunits/changes/"), ("GET", "/api/mobile/orgunits/changes/"),
    ("POST", "/api/mobile/bulkupload/"),
    ("GET", "/api/v1/sources"), ("GET", "/api/v1/sources/{x}/versions"),
    ("GET", "/api/v1/orgunits"), ("GET", "/api/v1/orgunits/{x}"), ("GET", "/api/v1/diff"),
    ("GET", "/api/v1/links"), ("GET", "/api/v1/submissions"), ("GET", "/api/v1/changes"),
    ("GET", "/api/v1/changes/{x}"), ("POST", "/api/v1/changes/{x}/approve"),
    ("POST", "/api/v1/changes/{x}/reject"), ("GET", "/api/openapi.json"),
]
PARAMS = ["app_id", "page", "limit", "shapes", "ids", "form_id", "last_sync", "bbox", "level",
          "type", "parent", "q", "format", "version", "source", "left", "right", "run",
          "status", "kind", "since", "form", "next", "validation_status"]
ODD = ["", "0", "-1", "999999999999999999999", "1e309", "nan", "true", "null", "[]", "{}",
       "../../etc/passwd", "%00", "' OR 1=1 --", "ö\u202e\U0001f600", "1,2,3,4", "x" * 3000,
       "SL:1", "SL:999", "-200,-100,300,100"]


def _odd(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return rng.choice(ODD)
    return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40)))


def _bodies(rng: random.Random) -> list[dict[str, Any]]:
    return [
        {"data": b""},
        {"json": rng.choice([[], {}, None, 1, "x", [{"id": _odd(rng)}], {"org_unit_id": _odd(rng)},
                             [{"id": "u", "name": _odd(rng), "parent_id": _odd(rng),
                               "latitude": _odd(rng), "longitude": 1}],
                             {"fields": [_odd(rng)], "comment": 5},
                             {"username": _odd(rng), "password": _odd(rng)}])},
        {"data": bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))),
         "headers": {"Content-Type": rng.choice(["application/json", "multipart/form-data",
                                                 "multipart/form-data; boundary=zz",
                                                 "application/x-www-form-urlencoded"])}},
        {"files": {rng.choice(["zip_file", "xml_submission_file", "x"]):
                   (_odd(rng)[:50] or "f", bytes(rng.randrange(256) for _ in range(50)))}},
    ]


@pytest.mark.parametrize("auth", ["none", "bearer", "digest-collector"])
def test_no_endpoint_answers_500(live: sh.LiveServer, token: str, auth: str) -> None:
    rng = random.Random(f"georeg-fuzz-{auth}")
    headers: dict[str, str] = {}
    session = requests.Session()
    if auth == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    elif auth == "digest-collector":
        session.auth = requests.auth.HTTPDigestAuth("amina", live.passwords["amina"])
    failures = []
    for method, template in ENDPOINTS:
        for _ in range(6):
            path = template.replace("{x}", requests.utils.quote(_odd(rng), safe="") or "x")
            params = {rng.choice(PARAMS): _odd(rng) for _ in range(rng.randint(0, 4))}
            kw: dict[str, Any] = {}
            if method == "POST":
                kw = rng.choice(_bodies(rng))
            extra = kw.pop("headers", {})
            r = session.request(method, live.base + path, params=params,
                                headers=headers | extra, timeout=60, allow_redirects=False,
                                **kw)
            if r.status_code >= 500:
                failures.append((method, path, params, r.status_code, r.text[:300]))
    assert not failures, failures[:5]
