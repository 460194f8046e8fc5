"""Helpers for the tests of our DHIS2 client and sync against the fake DHIS2
(``tests/fake_dhis2.py``): the fake's admin password and a client with short retries."""

from __future__ import annotations

from typing import Any

from sync.dhis2_client import Dhis2Client
from tests.fake_dhis2 import FakeDhis2

#: The fake's admin password (that of the Sierra Leone demo server it records).
PASSWORD = "district"


def client_for(fake: FakeDhis2, **kw: Any) -> Dhis2Client:
    """Our client for ``fake``, as admin (or with ``token=``, by that token alone), with
    fast retries and short timeouts."""
    options: dict[str, Any] = {"username": "admin", "password": PASSWORD, "retries": 2,
                               "backoff": 0.01, "timeout": (2.0, 10.0)} | kw
    if "token" in kw:
        options.pop("username"), options.pop("password")
    return Dhis2Client(fake.url, **options)
