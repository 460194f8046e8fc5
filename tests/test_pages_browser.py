"""The web pages in Debian's headless Chromium: a reviewer signs in, looks at the status,
the QR code and the submissions map, and approves a change request field by field by
clicking — then the registry has exactly the approved field, and a screenshot shows it."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from selenium.webdriver.support.wait import WebDriverWait

from storage import change_requests as cr
from storage import units
from tests import server_helpers as sh

CHROMEDRIVER = Path("/usr/bin/chromedriver")
FACILITY = "kbGqmM6ZWWV"  # Allen Town Health Post, Freetown

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(not CHROMEDRIVER.exists() or shutil.which("chromium") is None,
                       reason="Debian's chromium and chromedriver are not installed"),
]


IASO_DATA = Path(__file__).parent / "data" / "iaso_mobile"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sh.LiveServer]:
    forms = sorted(IASO_DATA.glob("forms/*.xml"))
    with sh.demo_server(tmp_path_factory.mktemp("pages"), forms=forms) as server:
        _one_submission(server)
        yield server


def _one_submission(live: sh.LiveServer) -> None:
    """A submission from the Iaso app at Allen Town (metadata, then the XML)."""
    token = requests.post(f"{live.base}/api/token/", timeout=30, json={
        "username": "amina", "password": live.passwords["amina"]}).json()["access"]
    auth = {"Authorization": f"Bearer {token}"}
    xml = next(IASO_DATA.glob("disasi_only/*/16_12_*.xml"))
    meta = [{"id": "a5362052-408f-44f8-8abc-2a520c01ea10", "file": f"/sdcard/{xml.name}",
             "formId": "1", "orgUnitId": FACILITY, "latitude": 8.4176, "longitude": -13.155,
             "altitude": 10.0, "accuracy": 5.0, "created_at": 1.7e9}]
    r = requests.post(f"{live.base}/api/instances/?app_id={sh.APP_ID}", json=meta,
                      headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    r = requests.post(f"{live.base}/sync/form_upload/", headers=auth, timeout=30,
                      files={"xml_submission_file": (xml.name, xml.read_bytes(), "text/xml")})
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chrome-profile")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _sign_in(driver: object, live: sh.LiveServer, user: str, target: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{live.base}{target}")  # type: ignore[attr-defined]
    assert "/login" in driver.current_url  # type: ignore[attr-defined]
    driver.find_element(By.ID, "username").send_keys(user)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "password").send_keys(  # type: ignore[attr-defined]
        live.passwords[user])
    driver.find_element(By.ID, "sign-in").click()  # type: ignore[attr-defined]
    WebDriverWait(driver, 30).until(lambda d: "/login" not in d.current_url)


def test_wrong_password_stays_on_the_login_page(browser: object, live: sh.LiveServer) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{live.base}/login")  # type: ignore[attr-defined]
    browser.find_element(By.ID, "username").send_keys("kofi")  # type: ignore[attr-defined]
    browser.find_element(By.ID, "password").send_keys("nope")  # type: ignore[attr-defined]
    browser.find_element(By.ID, "sign-in").click()  # type: ignore[attr-defined]
    WebDriverWait(browser, 30).until(lambda d: "Wrong user name or password" in d.page_source)
    assert "/login" in browser.current_url  # type: ignore[attr-defined]


def test_reviewer_approves_one_field_by_clicking(browser: object, live: sh.LiveServer,
                                                 tmp_path_factory: pytest.TempPathFactory
                                                 ) -> None:
    from selenium.webdriver.common.by import By

    made = cr.create_change_request(
        live.registry, "SL", unit=FACILITY, created_by="amina",
        values={"name": "Allen Town CHC", "location": [-13.24, 8.46]})
    before = units.get_unit(live.registry, "SL", FACILITY, 2)

    _sign_in(browser, live, "kofi", "/")
    b = browser
    assert "Field server status" in b.page_source  # type: ignore[attr-defined]
    assert "trypelim_CATT" in b.page_source  # recent submissions  # type: ignore[attr-defined]
    assert "SL" in b.page_source and "1 change request(s) waiting" in b.page_source  # type: ignore[attr-defined]

    b.get(f"{live.base}/qr")  # type: ignore[attr-defined]
    assert b.find_elements(By.CSS_SELECTOR, "#qr svg, #qr img")  # type: ignore[attr-defined]

    b.get(f"{live.base}/submissions")  # type: ignore[attr-defined]
    assert b.find_elements(By.CSS_SELECTOR, "#map svg")  # type: ignore[attr-defined]
    assert len(b.find_elements(By.CSS_SELECTOR, "#map circle.point")) == 1  # type: ignore[attr-defined]
    assert "Allen Town Health Post" in b.find_element(  # type: ignore[attr-defined]
        By.ID, "submissions").text


    b.get(f"{live.base}/changes")  # type: ignore[attr-defined]
    b.find_element(By.LINK_TEXT, str(made["id"])).click()  # type: ignore[attr-defined]
    WebDriverWait(b, 30).until(lambda d: f"/changes/{made['id']}" in d.current_url)
    assert "Allen Town CHC" in b.page_source  # type: ignore[attr-defined]
    # the map puts the proposal in context: the parent's outline and its other units
    legend = b.find_element(By.ID, "map").text  # type: ignore[attr-defined]
    assert "other units under" in legend and "outline:" in legend
    assert b.find_elements(By.CSS_SELECTOR, "#map path")  # type: ignore[attr-defined]
    assert len(b.find_elements(By.CSS_SELECTOR, "#map circle.point")) > 3  # type: ignore[attr-defined]
    assert not b.find_elements(By.ID, "outside")  # type: ignore[attr-defined]
    b.find_element(By.ID, "field-location").click()  # untick: keep today's location
    b.find_element(By.ID, "approve").click()  # type: ignore[attr-defined]
    WebDriverWait(b, 30).until(lambda d: "done=approved" in d.current_url)
    assert b.find_element(By.ID, "status").text == "approved"  # type: ignore[attr-defined]
    assert "approved" in b.find_element(By.ID, "message").text  # type: ignore[attr-defined]

    after = units.get_unit(live.registry, "SL", FACILITY, 2)
    assert after["name"] == "Allen Town CHC" and after["location"] == before["location"]
    assert cr.get_change_request(live.registry, made["id"])["reviewed_by"] == "kofi"

    shot = tmp_path_factory.mktemp("screenshots") / "change-approved.png"
    assert b.save_screenshot(str(shot))  # type: ignore[attr-defined]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 600 and len(data) > 10_000
    try:
        from PIL import Image
    except ImportError:  # Pillow is optional: the PNG checks above still ran
        return
    with Image.open(shot) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 20  # a rendered page, not a blank one
        green = sum(n for n, (r, g, bl) in colours if g > 230 and r < 230 and bl < 230)
        assert green > 500  # the "approved" banner is on screen


def test_reject_with_comment_and_forged_form_is_refused(browser: object,
                                                        live: sh.LiveServer) -> None:
    from selenium.webdriver.common.by import By

    made = cr.create_change_request(live.registry, "SL", unit=FACILITY, created_by="amina",
                                    values={"code": "WRONG"})
    browser.get(f"{live.base}/changes/{made['id']}")  # type: ignore[attr-defined]
    if "/login" in browser.current_url:  # type: ignore[attr-defined]
        _sign_in(browser, live, "kofi", f"/changes/{made['id']}")
    browser.find_element(By.ID, "comment").send_keys("Code is fine")  # type: ignore[attr-defined]
    browser.find_element(By.ID, "reject").click()  # type: ignore[attr-defined]
    WebDriverWait(browser, 10).until(lambda d: "done=rejected" in d.current_url or "id=\"error\"" in d.page_source)
    assert "done=rejected" in browser.current_url, browser.page_source[-2500:]  # type: ignore[attr-defined]
    assert browser.find_element(By.ID, "status").text == "rejected"  # type: ignore[attr-defined]
    assert cr.get_change_request(live.registry, made["id"])["rejection_comment"] == "Code is fine"

    # a proposed point far from the unit's parent territory is flagged to the reviewer
    far = cr.create_change_request(live.registry, "SL", unit=FACILITY, created_by="amina",
                                   values={"location": [-10.6, 7.6]})
    browser.get(f"{live.base}/changes/{far['id']}")  # type: ignore[attr-defined]
    assert "The proposed location is outside" in browser.find_element(  # type: ignore[attr-defined]
        By.ID, "outside").text

    # a form posted without the page's token (another site, a script) changes nothing
    other = cr.create_change_request(live.registry, "SL", unit=FACILITY, created_by="amina",
                                     values={"code": "X-1"})
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}  # type: ignore[attr-defined]
    forged = requests.post(f"{live.base}/changes/{other['id']}/approve", cookies=cookies,
                           data={"fields": "code"}, timeout=30, allow_redirects=False)
    assert forged.status_code == 400
    assert cr.get_change_request(live.registry, other["id"])["status"] == "new"
