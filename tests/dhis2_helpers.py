"""Helpers for the tests of our DHIS2 client and sync against the fake DHIS2
(``tests/fake_dhis2.py``): the fake's admin password and a client with short retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import Result

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


class CliPull:
    """A registry pulled from ``fake`` with ``georeg dhis2 pull`` (source SL), and what it
    takes to run more ``georeg dhis2`` commands on it the same way."""

    def __init__(self, fake: FakeDhis2, folder: Path) -> None:
        from click.testing import CliRunner

        from georeg.cli_dhis2 import dhis2_group
        from storage.registry import Registry

        self.location = str(folder / "r.gpkg")
        Registry.create(self.location).close()
        self.conn = ["--url", fake.url, "--user", "admin"]
        self.env = {"GEOREG_DHIS2_PASSWORD": PASSWORD}
        self.runner = CliRunner()
        self.group = dhis2_group
        assert self.dhis2("pull", "-s", "SL").exit_code == 0

    def dhis2(self, command: str, *args: str) -> Result:
        """``georeg dhis2 COMMAND REG --url … --user admin ARGS`` (password from the env)."""
        return self.runner.invoke(self.group, [command, self.location, *self.conn, *args],
                                  env=self.env)
