"""Signing in and out of ``georeg serve``, against a real server on 127.0.0.1 (review
findings 4, 7, 8, 9 and 12): a changed password or a removed user signs out tokens and
page sessions; password guessing is limited (429 + Retry-After) and logged, and a
Digest nonce takes only a few wrong answers; the page after sign-in stays on this site;
the session cookie is Secure behind https; signing out is refused from another site and
ends the session itself, not only the cookie."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import requests

from local_server import auth, users
from storage.registry import Registry
from tests.openrosa_helpers import Setup, build_registry, digest_header, thread_server

# the limits docs/server.md promises (auth.SignInLimiter)
FREE_PER_USER, FREE_PER_ADDRESS, NONCE_FAILURES = 5, 20, 3
PASSWORDS = {"bob": "bob-first-pass", "gone": "gone-password", "lena": "lena-password",
             "tomi": "tomi-password", "dora": "dora-password", "page": "page-password"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    made = build_registry(tmp_path_factory.mktemp("signin") / "registry.gpkg")
    with Registry.open(made.path) as reg:
        for name, password in PASSWORDS.items():
            users.add_user(reg, name, password, role="reviewer")
    made.passwords.update(PASSWORDS)
    return made


def login(base: str, name: str, password: str, next_: str | None = None) -> requests.Response:
    url = base + "/login" + ("" if next_ is None else "?next=" + next_)
    return requests.post(url, data={"username": name, "password": password},
                         allow_redirects=False, timeout=30)


def token_pair(base: str, name: str, password: str) -> dict[str, str]:
    r = requests.post(base + "/api/token/", json={"username": name, "password": password},
                      timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def bearer(base: str, access: str) -> int:
    return requests.get(base + "/api/v1/sources", timeout=30,
                        headers={"Authorization": f"Bearer {access}"}).status_code


def page(base: str, cookie: str) -> requests.Response:
    return requests.get(base + "/submissions", cookies={"georeg_session": cookie},
                        allow_redirects=False, timeout=30)


# --- 4: a changed password or a removed user signs out tokens and sessions --------------


def test_changed_password_signs_out_tokens_and_sessions(setup: Setup) -> None:
    with thread_server(setup.path) as base:
        old = token_pair(base, "bob", PASSWORDS["bob"])
        cookie = login(base, "bob", PASSWORDS["bob"]).cookies["georeg_session"]
        gone = token_pair(base, "gone", PASSWORDS["gone"])
        assert bearer(base, old["access"]) == 200 and bearer(base, gone["access"]) == 200
        assert page(base, cookie).status_code == 200

        with Registry.open(setup.path) as reg:
            users.set_password(reg, "bob", "bob-second-pass")
            users.remove_user(reg, "gone")
        # signing in again at once with the new password gives a token that keeps working
        new = token_pair(base, "bob", "bob-second-pass")
        new_cookie = login(base, "bob", "bob-second-pass").cookies["georeg_session"]
        time.sleep(auth.USER_CACHE_SECONDS + 0.5)  # the documented delay

        assert bearer(base, old["access"]) == 401
        refreshed = requests.post(base + "/api/token/refresh/", json={"refresh": old["refresh"]},
                                  timeout=30)
        assert refreshed.status_code == 401
        r = page(base, cookie)
        assert r.status_code in (302, 303) and "/login" in r.headers["Location"]
        assert bearer(base, gone["access"]) == 401
        assert requests.post(base + "/api/token/refresh/", json={"refresh": gone["refresh"]},
                             timeout=30).status_code == 401

        assert bearer(base, new["access"]) == 200
        assert page(base, new_cookie).status_code == 200
        again = requests.post(base + "/api/token/refresh/", json={"refresh": new["refresh"]},
                              timeout=30)
        assert again.status_code == 200 and bearer(base, again.json()["access"]) == 200


# --- 7: password guessing --------------------------------------------------------------


def test_login_guessing_is_locked_then_the_right_password_works(
        setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
    with thread_server(setup.path) as base:
        for _ in range(FREE_PER_USER):
            assert login(base, "lena", "wrong-guess-123").status_code == 401
        locked = login(base, "lena", PASSWORDS["lena"])  # even the right one, while locked
        assert locked.status_code == 429 and locked.headers["Retry-After"] == "1"
        time.sleep(1.2)
        assert login(base, "lena", "wrong-guess-456").status_code == 401
        locked = login(base, "lena", PASSWORDS["lena"])
        assert locked.status_code == 429 and locked.headers["Retry-After"] == "2"  # growing
        time.sleep(2.2)
        r = login(base, "lena", PASSWORDS["lena"])
        assert r.status_code in (302, 303) and "georeg_session" in r.cookies
        # a success clears the name's count: one more mistake costs nothing
        assert login(base, "lena", "wrong-guess-789").status_code == 401
        assert login(base, "lena", PASSWORDS["lena"]).status_code in (302, 303)
    log = capfd.readouterr().err
    assert re.search(r"sign-in failed .*'lena' from 127\.0\.0\.1 on POST /login", log), log
    assert "wrong-guess" not in log and PASSWORDS["lena"] not in log


def test_token_guessing_gets_429(setup: Setup) -> None:
    with thread_server(setup.path) as base:
        for _ in range(FREE_PER_USER):
            r = requests.post(base + "/api/token/", timeout=30,
                              json={"username": "tomi", "password": "not-the-password"})
            assert r.status_code == 401
        r = requests.post(base + "/api/token/", timeout=30,
                          json={"username": "tomi", "password": PASSWORDS["tomi"]})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"] == "too_many_attempts"
        time.sleep(int(r.headers["Retry-After"]) + 0.2)
        token_pair(base, "tomi", PASSWORDS["tomi"])


def test_parallel_guesses_do_not_slip_past_the_count(setup: Setup) -> None:
    """40 guesses at once: no more are checked than the server has threads (8), the
    rest get 429 at once."""
    from concurrent.futures import ThreadPoolExecutor

    def guess(i: int) -> int:
        return requests.post(base + "/api/token/", timeout=60,
                             json={"username": "tomi", "password": f"parallel-{i}"}).status_code

    with thread_server(setup.path) as base, ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(guess, range(40)))
    assert codes.count(401) <= 8 and codes.count(429) >= 32, codes


def test_guesses_from_one_address_are_limited_across_names(setup: Setup) -> None:
    with thread_server(setup.path) as base:
        for i in range(FREE_PER_ADDRESS):
            assert login(base, f"nobody{i}", "some-guess-1").status_code == 401
        r = login(base, "page", PASSWORDS["page"])
        assert r.status_code == 429 and "Retry-After" in r.headers


def _challenge(base: str) -> str:
    return requests.get(base + "/formList", timeout=30).headers["WWW-Authenticate"]


def _digest(base: str, header: str) -> requests.Response:
    return requests.get(base + "/formList", headers={"Authorization": header}, timeout=30)


def test_digest_nonce_takes_few_wrong_answers_and_guessing_locks(setup: Setup) -> None:
    with thread_server(setup.path) as base:
        challenge = _challenge(base)
        for guess in range(NONCE_FAILURES):
            wrong = digest_header("GET", "/formList", "dora", f"guess-{guess}", challenge)
            assert _digest(base, wrong).status_code == 401
        right = digest_header("GET", "/formList", "dora", PASSWORDS["dora"], challenge)
        spent = _digest(base, right)  # the nonce is spent: a fresh challenge
        assert spent.status_code == 401 and "nonce=" in spent.headers["WWW-Authenticate"]
        fresh = digest_header("GET", "/formList", "dora", PASSWORDS["dora"], _challenge(base))
        assert _digest(base, fresh).status_code == 200  # and clears dora's count
        for guess in range(FREE_PER_USER):
            wrong = digest_header("GET", "/formList", "dora", f"again-{guess}", _challenge(base))
            assert _digest(base, wrong).status_code == 401
        right = digest_header("GET", "/formList", "dora", PASSWORDS["dora"], _challenge(base))
        locked = _digest(base, right)
        assert locked.status_code == 429 and locked.headers["Retry-After"] == "1"
        time.sleep(1.2)
        right = digest_header("GET", "/formList", "dora", PASSWORDS["dora"], _challenge(base))
        assert _digest(base, right).status_code == 200


# --- 8, 9: where the browser goes after signing in --------------------------------------


@pytest.mark.parametrize("next_", ["/%09/evil.example/phish", "/%0d%0aSet-Cookie:x=1",
                                   "//evil.example", "/%5Cevil.example", "https://evil.example/",
                                   "/%0a/evil.example", "%2F%2Fevil.example"])
def test_next_after_login_stays_on_this_site(setup: Setup, next_: str) -> None:
    with thread_server(setup.path) as base:
        r = login(base, "kofi", setup.passwords["kofi"], next_)
        assert r.status_code in (302, 303), r.text
        assert r.headers["Location"] in ("/", base + "/")
        ok = login(base, "kofi", setup.passwords["kofi"], "/changes%3Fstatus%3Dall")
        assert ok.headers["Location"].endswith("/changes?status=all")


# --- 12: the session cookie and signing out ---------------------------------------------


def test_session_cookie_is_secure_behind_https(setup: Setup) -> None:
    with thread_server(setup.path, https=True) as base:
        r = login(base, "kofi", setup.passwords["kofi"])
        assert "secure" in r.headers["Set-Cookie"].lower()
    with thread_server(setup.path) as base:
        r = login(base, "kofi", setup.passwords["kofi"])
        assert "secure" not in r.headers["Set-Cookie"].lower()
        assert "httponly" in r.headers["Set-Cookie"].lower()


def test_logout_is_refused_cross_site_and_ends_the_session(setup: Setup) -> None:
    with thread_server(setup.path) as base:
        cookie = login(base, "kofi", setup.passwords["kofi"]).cookies["georeg_session"]
        jar = {"georeg_session": cookie}
        for headers, data in (({"Origin": "http://evil.example"}, {}),  # another site
                              ({}, {}),  # no token, nothing says where it comes from
                              ({"Origin": base}, {"csrf_token": "forged"})):
            r = requests.post(base + "/logout", cookies=jar, headers=headers, data=data,
                              allow_redirects=False, timeout=30)
            assert r.status_code == 400, headers
            assert page(base, cookie).status_code == 200  # still signed in
        r = requests.post(base + "/logout", cookies=jar, headers={"Origin": base},
                          allow_redirects=False, timeout=30)
        assert r.status_code == 303 and r.headers["Location"].endswith("/login")
        assert 'georeg_session=""' in r.headers["Set-Cookie"] or "Max-Age=0" in r.headers[
            "Set-Cookie"]
        r = page(base, cookie)  # a kept copy of the cookie no longer works
        assert r.status_code in (302, 303) and "/login" in r.headers["Location"]


def test_logout_with_the_csrf_token(setup: Setup) -> None:
    """The token the pages put in their forms signs out (no Origin needed)."""
    import hashlib
    import hmac
    import json
    from base64 import urlsafe_b64decode

    from local_server.jwt import key_path, load_or_create_key

    with thread_server(setup.path) as base:
        cookie = login(base, "kofi", setup.passwords["kofi"]).cookies["georeg_session"]
        payload = cookie.split(".")[1]
        jti = json.loads(urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
        key = load_or_create_key(key_path(str(setup.path)))
        token = hmac.new(key, b"csrf:" + jti.encode(), hashlib.sha256).hexdigest()
        r = requests.post(base + "/logout", cookies={"georeg_session": cookie},
                          data={"csrf_token": token}, allow_redirects=False, timeout=30)
        assert r.status_code in (302, 303) and r.headers["Location"].endswith("/login")
        assert page(base, cookie).status_code in (302, 303)  # the session is over


@pytest.mark.gui
@pytest.mark.skipif(not Path("/usr/bin/chromedriver").exists() or shutil.which("chromium") is None,
                    reason="Debian's chromium and chromedriver are not installed")
def test_sign_out_button_in_a_browser(setup: Setup, tmp_path: Path) -> None:
    """The page's own *Sign out* button (Chromium sends Origin) ends the session."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-sync",
                "--disable-background-networking", f"--user-data-dir={tmp_path}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        with thread_server(setup.path) as base:
            driver.get(base + "/login")
            driver.find_element(By.ID, "username").send_keys("kofi")
            driver.find_element(By.ID, "password").send_keys(setup.passwords["kofi"])
            driver.find_element(By.ID, "sign-in").click()
            WebDriverWait(driver, 30).until(lambda d: "/login" not in d.current_url)
            cookie = driver.get_cookie("georeg_session")["value"]
            driver.find_element(By.XPATH, "//form[@action='/logout']//button").click()
            WebDriverWait(driver, 30).until(lambda d: "/login" in d.current_url)
            assert driver.get_cookie("georeg_session") is None
            assert page(base, cookie).status_code in (302, 303)
    finally:
        driver.quit()
