"""The review console in a real browser (one headless Chromium for the session, tests/browser.py) against
`verdict-node serve` with the console enabled, over the world of tests/admin_helpers.py: logging in, the
queue with blurred previews, reveal, release, confirm, approving a follow request, the refusals (CSRF,
wrong password, rate limit, no session), logout, and the phone-width layout. Every page visited is saved as
a screenshot under the test's temporary directory (``shots/``)."""
from __future__ import annotations

import hashlib
import io
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from node.admin.accounts import Accounts
from node.store import Store
from tests.admin_helpers import ASKING, build_world
from tests.browser import DESKTOP, PHONE, browser  # noqa: F401 - the session's browser fixture
from tests.images import fine_detail
from tests.node_helpers import serve_process

PASSWORD = "a long password for the browser"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    world = build_world(root)
    with Store(world.config.database_path) as store:
        accounts = Accounts(store)
        accounts.add("ada")
        accounts.set_password("ada", PASSWORD)
        first_time = accounts.add("newbie")
    shots = root / "shots"
    shots.mkdir()
    with serve_process(world.config):
        yield {"world": world, "base": f"http://{world.config.admin.listen}", "shots": shots,
               "first_time": first_time}


def shot(driver: Any, site: dict, name: str) -> Path:
    """The whole page, not only the window: the window grows to the page's height for the picture."""
    path = site["shots"] / f"{name}.png"
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, max(height, min(int(full) + 140, 6000)))
    driver.save_screenshot(str(path))
    driver.set_window_size(width, height)
    return path


def by(kind: str) -> Any:
    from selenium.webdriver.common.by import By

    return getattr(By, kind)


def log_in(driver: Any, site: dict, name: str = "ada", password: str = PASSWORD) -> None:
    driver.delete_all_cookies()
    driver.get(site["base"] + "/login")
    driver.find_element(by("ID"), "f-name").send_keys(name)
    driver.find_element(by("ID"), "f-password").send_keys(password)
    submit(driver, driver.find_element(by("CSS_SELECTOR"), "button.primary"))


def submit(driver: Any, element: Any) -> None:
    """Click a button that submits a form and wait for the next page (the old one goes stale)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(by("TAG_NAME"), "html")
    element.click()

    def old_page_gone(_driver: Any) -> bool:
        # chromedriver reports an element of a replaced document either as stale or, when the check races
        # the navigation, as "Node with given id does not belong to the document": both mean it is gone.
        try:
            old.is_enabled()
        except WebDriverException:
            return True
        return False

    WebDriverWait(driver, 15).until(old_page_gone)
    WebDriverWait(driver, 15).until(lambda d: d.execute_script("return document.readyState") == "complete")


def page_text(driver: Any) -> str:
    return driver.find_element(by("TAG_NAME"), "body").text


def fetch(driver: Any, url: str) -> tuple[int, bytes, dict]:
    """GET with the browser's session cookie, outside the browser (to read the exact bytes served)."""
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())
    request = urllib.request.Request(url, headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def query(site: dict, sql: str, *params: Any) -> list[tuple]:
    with sqlite3.connect(site["world"].db, timeout=30) as conn:
        return conn.execute(sql, params).fetchall()


def test_first_login_with_the_one_time_password_asks_for_a_new_one(browser, site):
    log_in(browser, site, "newbie", site["first_time"])
    assert browser.current_url.endswith("/password")
    shot(browser, site, "password")
    browser.find_element(by("ID"), "f-current").send_keys(site["first_time"])
    browser.find_element(by("ID"), "f-new").send_keys("newbie's own long password")
    browser.find_element(by("ID"), "f-again").send_keys("newbie's own long password")
    submit(browser, browser.find_element(by("CSS_SELECTOR"), "main button.primary"))
    assert "Password changed" in page_text(browser)
    shot(browser, site, "overview")
    assert browser.find_elements(by("CSS_SELECTOR"), "svg.chart")


def test_queue_shows_blurred_greyscale_previews(browser, site):
    log_in(browser, site)
    browser.get(site["base"] + "/queue")
    shot(browser, site, "queue")
    assert "awaiting review" in page_text(browser)
    thumbs = browser.find_elements(by("CSS_SELECTOR"), "img.thumb")
    assert len(thumbs) == 4 and "no file kept" in page_text(browser)
    world = site["world"]
    ref = world.item_ref("a/astronaut")
    status, png, headers = fetch(browser, f"{site['base']}/item/{ref}/preview.png")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    image = Image.open(io.BytesIO(png))
    assert image.mode == "L" and max(image.size) <= 160
    original = fine_detail(world.images["astronaut"])
    assert fine_detail(png) < original / 10, (fine_detail(png), original)
    assert all(b.get_property("naturalWidth") > 0 for b in thumbs)  # the browser drew them (CSP allows self)


def test_reveal_one_behind_a_warning_audited(browser, site):
    log_in(browser, site)
    ref = site["world"].item_ref("b/cat")
    browser.get(f"{site['base']}/item/{ref}")
    shot(browser, site, "item")
    ids = browser.execute_script("return Array.from(document.querySelectorAll('[id]')).map(e => e.id)")
    assert len(ids) == len(set(ids))
    browser.execute_script("document.querySelector('.actions').scrollIntoView()")
    shot(browser, site, "item-actions")
    submit(browser, browser.find_element(by("LINK_TEXT"), "Reveal the unblurred image…"))
    assert "may be child sexual abuse material" in page_text(browser)
    shot(browser, site, "reveal-warning")
    submit(browser, browser.find_element(by("CSS_SELECTOR"), "main button.danger"))
    revealed = browser.find_element(by("CSS_SELECTOR"), "img.revealed")
    assert revealed.get_property("naturalWidth") > 160
    shot(browser, site, "revealed")
    browser.get(site["base"] + "/audit")
    shot(browser, site, "audit")
    assert any(f"reveal {ref}" in row.text for row in browser.find_elements(by("CSS_SELECTOR"), "tbody tr"))


def test_release_one(browser, site):
    world = site["world"]
    log_in(browser, site)
    ref = world.item_ref("a/galaxy")
    browser.get(f"{site['base']}/item/{ref}")
    browser.find_element(by("ID"), "f-release-reason").send_keys("a galaxy, not a person")
    submit(browser, browser.find_element(by("XPATH"), "//button[contains(., 'Release: false positive')]"))
    assert "released" in page_text(browser) and "a/galaxy" in page_text(browser)
    shot(browser, site, "released")
    data = world.images["hubble_deep_field"]
    assert (world.root / "a/galaxy").read_bytes() == data
    assert query(site, "SELECT reason FROM sweep_overrides WHERE sha256 = ?", hashlib.sha256(data).hexdigest()) == \
        [("a galaxy, not a person",)]
    deletes = query(site, "SELECT o.object_id, d.inbox FROM outbox o JOIN deliveries d ON d.outbox_seq = o.seq "
                          "WHERE o.type = 'Delete'")
    assert deletes == [(world.verdicts["hubble_deep_field"], "https://follower.example/inbox")]


def test_confirm_one(browser, site):
    world = site["world"]
    log_in(browser, site)
    ref = world.item_ref("a/astronaut")
    browser.get(f"{site['base']}/item/{ref}")
    browser.find_element(by("ID"), "f-note").send_keys("reported")
    submit(browser, browser.find_element(by("XPATH"), "//button[contains(., 'Confirm: keep as evidence')]"))
    assert "evidence record" in page_text(browser)
    browser.get(site["base"] + "/evidence")
    shot(browser, site, "evidence")
    submit(browser, browser.find_element(by("PARTIAL_LINK_TEXT"), "record "))
    shot(browser, site, "evidence-record")
    sha = hashlib.sha256(world.images["astronaut"]).hexdigest()
    assert query(site, "SELECT reviewer, md5 FROM evidence WHERE sha256 = ?", sha) == \
        [("ada", hashlib.md5(world.images["astronaut"]).hexdigest())]


def test_approve_a_pending_peer(browser, site):
    log_in(browser, site)
    browser.get(site["base"] + "/peers")
    shot(browser, site, "peers")
    submit(browser, browser.find_element(by("XPATH"), f"//button[contains(., 'Approve {ASKING}')]"))
    assert f"approved {ASKING}" in page_text(browser)
    assert query(site, "SELECT follower_state FROM peers WHERE actor = ?", ASKING) == [("accepted",)]


def test_verdicts_page(browser, site):
    log_in(browser, site)
    sha = hashlib.sha256(site["world"].images["coffee"]).hexdigest()
    browser.get(f"{site['base']}/verdicts?q={sha}")
    shot(browser, site, "verdicts")
    assert site["world"].verdicts["coffee"] in page_text(browser)


def test_tampered_csrf_token_is_refused(browser, site):
    log_in(browser, site)
    ref = site["world"].item_ref("b/coffee")
    browser.get(f"{site['base']}/item/{ref}")
    browser.execute_script("document.querySelectorAll('input[name=csrf]').forEach(i => i.value = 'forged')")
    submit(browser, browser.find_element(by("XPATH"), "//button[contains(., 'Confirm: keep as evidence')]"))
    assert "CSRF token does not match" in page_text(browser)
    shot(browser, site, "csrf-refused")
    sha = hashlib.sha256(site["world"].images["coffee"]).hexdigest()
    assert query(site, "SELECT count(*) FROM evidence WHERE sha256 = ?", sha) == [(0,)]


def test_phone_width_is_readable(browser, site):
    log_in(browser, site)
    browser.set_window_size(*PHONE)
    try:
        for path, name in (("/queue", "phone-queue"), (f"/item/{site['world'].item_ref('b/coffee')}", "phone-item"),
                           ("/", "phone-overview")):
            browser.get(site["base"] + path)
            shot(browser, site, name)
            width = browser.execute_script("return document.documentElement.scrollWidth")
            assert width <= PHONE[0] + 1, (path, width)
    finally:
        browser.set_window_size(*DESKTOP)


def test_logout_and_no_route_without_a_session(browser, site):
    log_in(browser, site)
    submit(browser, browser.find_element(by("XPATH"), "//button[contains(., 'Log out')]"))
    assert "You are logged out" in page_text(browser)
    shot(browser, site, "logged-out")
    ref = site["world"].item_ref("b/coffee")
    for path in ("/", "/queue", f"/item/{ref}", f"/item/{ref}/preview.png", "/peers", "/verdicts", "/evidence",
                 "/audit", "/evidence/1"):
        browser.get(site["base"] + path)
        assert browser.current_url == site["base"] + "/login", path
    request = urllib.request.Request(f"{site['base']}/item/{ref}/confirm", data=b"csrf=x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def test_wrong_password_then_rate_limit(browser, site):
    # Last in this file: the limit is per client address too, and every test here comes from 127.0.0.1.
    log_in(browser, site, "ada", "not the password")
    assert "Wrong account name or password" in page_text(browser)
    shot(browser, site, "wrong-password")
    for _ in range(10):
        log_in(browser, site, "ada", "still not it")
        if "Too many failed logins" in page_text(browser):
            break
    log_in(browser, site)  # even the right password waits now
    assert "Too many failed logins" in page_text(browser) and "try again in" in page_text(browser)
    shot(browser, site, "rate-limited")
