"""Sign-in limits per (user, client address), and the client address behind a trusted
reverse proxy, against a real server on 127.0.0.1 (security audit, findings left alone
before): failing on purpose from another machine must not lock a real user out; the
per-address limit across names stays; lock-outs are logged; ``X-Forwarded-For`` is
believed only from a listed proxy, right-most untrusted entry first.

Clients get distinct addresses by binding their side of the connection to other
loopback addresses (127.0.0.2, 127.0.0.3: all of 127/8 is the loopback on Linux).
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from requests.adapters import HTTPAdapter

from georeg.cli import main
from local_server import users
from local_server.app import client_address, create_app, proxy_waitress_options
from local_server.settings import ServerSettings, proxy_networks
from storage.errors import InvalidInput
from storage.registry import Registry
from tests.openrosa_helpers import Setup, build_registry, digest_header, free_port, wait_up
from tests.server_helpers import stop_waitress

FREE_PER_USER, FREE_PER_ADDRESS = 5, 20  # what docs/server.md promises
PASSWORDS = {"lena": "lena-password", "dora": "dora-password", "tomi": "tomi-password",
             "ines": "ines-password", "omar": "omar-password"}
OWN, OTHER, THIRD = "127.0.0.1", "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    made = build_registry(tmp_path_factory.mktemp("limits") / "registry.gpkg")
    with Registry.open(made.path) as reg:
        for name, password in PASSWORDS.items():
            users.add_user(reg, name, password, role="reviewer")
    made.passwords.update(PASSWORDS)
    return made


@contextmanager
def serve(setup: Setup, **settings: Any) -> Iterator[str]:
    """The app on waitress as ``georeg serve`` runs it (its proxy-header options too)."""
    from waitress.server import create_server

    app = create_app(setup.path, ServerSettings(**settings))
    server = create_server(app, host="127.0.0.1", port=free_port(), threads=4,
                           **proxy_waitress_options(app.settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.effective_port}"
    wait_up(base)
    try:
        yield base
    finally:
        stop_waitress(server, thread)
        app.close()


class _From(HTTPAdapter):
    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def client(source: str) -> requests.Session:
    """A session whose connections come from ``source`` (a loopback address)."""
    s = requests.Session()
    s.mount("http://", _From(source))
    return s


def login(s: requests.Session, base: str, name: str, password: str,
          forwarded: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    return s.post(base + "/login", data={"username": name, "password": password},
                  headers=headers, allow_redirects=False, timeout=30).status_code


def signed_in(code: int) -> bool:
    return code in (302, 303)


# --- per (user, address) ----------------------------------------------------------------


def test_failures_from_another_machine_do_not_lock_the_user_out(
        setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
    attacker, own = client(OTHER), client(OWN)
    with serve(setup) as base:
        for _ in range(FREE_PER_USER):
            assert login(attacker, base, "lena", "wrong-guess") == 401
        assert login(attacker, base, "lena", PASSWORDS["lena"]) == 429  # locked there
        assert signed_in(login(own, base, "lena", PASSWORDS["lena"]))  # not here
        # the guesser keeps failing: still only that machine is locked out
        for _ in range(3):
            assert login(attacker, base, "lena", "wrong-guess") == 429
        assert signed_in(login(own, base, "lena", PASSWORDS["lena"]))
        # the user's own mistakes still count on their own machine
        for _ in range(FREE_PER_USER):
            assert login(own, base, "lena", "my-typo") == 401
        assert login(own, base, "lena", PASSWORDS["lena"]) == 429
    log = capfd.readouterr().err
    assert re.search(r"sign-in locked: user 'lena' from 127\.0\.0\.2 for 1 s after 5 "
                     r"failures", log), log
    assert "sign-in locked: user 'lena' from 127.0.0.1" in log
    assert "wrong-guess" not in log and PASSWORDS["lena"] not in log


def test_digest_and_tokens_are_counted_per_address_too(setup: Setup) -> None:
    attacker, own = client(OTHER), client(OWN)
    with serve(setup) as base:
        for i in range(FREE_PER_USER):
            r = attacker.post(base + "/api/token/", timeout=30,
                              json={"username": "tomi", "password": f"guess-{i}"})
            assert r.status_code == 401
        r = attacker.post(base + "/api/token/", timeout=30,
                          json={"username": "tomi", "password": PASSWORDS["tomi"]})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        r = own.post(base + "/api/token/", timeout=30,
                     json={"username": "tomi", "password": PASSWORDS["tomi"]})
        assert r.status_code == 200, r.text

        def digest(s: requests.Session, password: str) -> int:
            challenge = s.get(base + "/formList", timeout=30).headers["WWW-Authenticate"]
            header = digest_header("GET", "/formList", "dora", password, challenge)
            return s.get(base + "/formList", headers={"Authorization": header},
                         timeout=30).status_code

        for i in range(FREE_PER_USER):
            assert digest(attacker, f"guess-{i}") == 401
        assert digest(attacker, PASSWORDS["dora"]) == 429
        assert digest(own, PASSWORDS["dora"]) == 200


def test_one_address_guessing_many_names_is_limited_and_logged(
        setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
    attacker, own = client(THIRD), client(OWN)
    with serve(setup) as base:
        for i in range(FREE_PER_ADDRESS):
            assert login(attacker, base, f"nobody{i}", "some-guess") == 401
        assert login(attacker, base, "ines", PASSWORDS["ines"]) == 429
        assert signed_in(login(own, base, "ines", PASSWORDS["ines"]))
    log = capfd.readouterr().err
    assert "sign-in locked: address 127.0.0.3 for 1 s after 20 failures across user " \
           "names" in log, log


# --- X-Forwarded-For ----------------------------------------------------------------------


def test_forwarded_for_is_not_believed_by_default(
        setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
    s = client(OWN)
    with serve(setup) as base:
        for i in range(FREE_PER_USER):  # a new made-up address each time: no help
            assert login(s, base, "omar", "wrong", forwarded=f"198.51.100.{i}") == 401
        assert login(s, base, "omar", PASSWORDS["omar"], forwarded="198.51.100.99") == 429
    log = capfd.readouterr().err
    assert "198.51.100." not in log and "user 'omar' from 127.0.0.1" in log


def test_forwarded_for_from_a_trusted_proxy_names_the_client(
        setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
    proxy, direct = client(OWN), client(OTHER)
    with serve(setup, trusted_proxies=(OWN, "10.0.0.0/8")) as base:
        for _ in range(FREE_PER_USER):  # a guesser behind the proxy
            assert login(proxy, base, "dora", "wrong", forwarded="198.51.100.7") == 401
        assert login(proxy, base, "dora", PASSWORDS["dora"], forwarded="198.51.100.7") == 429
        # writing another address in front does not escape: the proxy appended the real one
        assert login(proxy, base, "dora", PASSWORDS["dora"],
                     forwarded="198.51.100.8, 198.51.100.7") == 429
        # …nor does a second trusted hop (10.1.2.3, another listed proxy)
        assert login(proxy, base, "dora", PASSWORDS["dora"],
                     forwarded="198.51.100.7, 10.1.2.3") == 429
        # dora herself, behind the same proxy, signs in
        assert signed_in(login(proxy, base, "dora", PASSWORDS["dora"],
                               forwarded="198.51.100.8"))
        # a client that is not a listed proxy cannot pick its address
        for _ in range(FREE_PER_USER):
            assert login(direct, base, "lena", "wrong", forwarded="198.51.100.20") == 401
        assert login(direct, base, "lena", PASSWORDS["lena"],
                     forwarded="198.51.100.21") == 429
    log = capfd.readouterr().err
    assert "sign-in locked: user 'dora' from 198.51.100.7 for" in log, log
    assert "user 'lena' from 127.0.0.2" in log and "198.51.100.2" not in log


@pytest.mark.parametrize(("peer", "header", "expected"), [
    ("127.0.0.1", "203.0.113.5", "203.0.113.5"),
    ("127.0.0.1", "1.1.1.1, 203.0.113.5", "203.0.113.5"),  # the left part is the client's
    ("127.0.0.1", "203.0.113.5, 10.0.0.2, 10.9.9.9", "203.0.113.5"),  # proxies in a row
    ("127.0.0.1", "10.0.0.2", "10.0.0.2"),  # only proxies: the left-most one
    ("127.0.0.1", None, "127.0.0.1"),
    ("127.0.0.1", "", "127.0.0.1"),
    ("127.0.0.1", "203.0.113.5, garbage", "127.0.0.1"),  # unreadable: the proxy's own
    ("127.0.0.1", "unknown, 203.0.113.5", "203.0.113.5"),
    ("127.0.0.1", "203.0.113.5:4711", "203.0.113.5"),
    ("127.0.0.1", "[2001:db8::1]:4711", "2001:db8::1"),
    ("127.0.0.1", "::ffff:203.0.113.5", "203.0.113.5"),
    ("::1", "2001:db8::7", "2001:db8::7"),
    ("192.0.2.1", "203.0.113.5", "192.0.2.1"),  # not a proxy: the header is ignored
])
def test_client_address(peer: str, header: str | None, expected: str) -> None:
    trusted = proxy_networks(["127.0.0.1", "::1", "10.0.0.0/8"])
    assert client_address(peer, header, trusted) == expected
    assert client_address(peer, header, ()) == peer  # never without trusted proxies
    assert ipaddress.ip_address(expected)


def test_trusted_proxy_setting_and_option_are_checked(setup: Setup) -> None:
    with pytest.raises(InvalidInput, match="'proxy.example' is not an IP address"):
        ServerSettings(trusted_proxies=("proxy.example",))
    result = CliRunner().invoke(main, ["serve", str(setup.path), "--trusted-proxy",
                                       "10.0.0.1", "--trusted-proxy", "proxy.example"])
    assert result.exit_code != 0 and "'proxy.example' is not an IP address" in result.output
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert "--trusted-proxy" in result.output
