"""The web page (apps/web) in a real headless browser against a real server.

Debian's Chromium (``/usr/bin/chromium``) driven by Playwright for Python (the pip package only:
``playwright install`` is never run, so no browser is downloaded). If Chromium is missing, it is
installed with apt-get when running as root; otherwise the tests are skipped (under ``CI`` they
fail instead, so a CI run without a browser cannot pass silently).

The page may only talk to the server on 127.0.0.1: every other request is aborted and fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess

import pytest

httpx = pytest.importorskip("httpx")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT_COPY = "/tmp/plural_page.png"
TOPIC_ORDER = ["space", "cats", "dogs", "cooking", "music"]  # the test person's (consistent) taste
TIMEOUT_MS = 20_000
N_RECS = 8  # what the page asks /v1/recommend for


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _chromium() -> str:
    """``/usr/bin/chromium``, installed with apt-get (as root) when missing."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        _unavailable(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get); "
                     "install it with: apt-get update && apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(cmd, check=True, capture_output=True, timeout=900, env=env)
    except (subprocess.SubprocessError, OSError) as err:
        tail = getattr(err, "stderr", b"") or b""
        _unavailable(f"{CHROMIUM} is missing and `apt-get install -y chromium` failed: {err} "
                     f"{tail[-500:].decode(errors='replace')}")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"`apt-get install -y chromium` ran but {CHROMIUM} is still missing")
    return CHROMIUM


@pytest.fixture(scope="module")
def server(start_server):
    return start_server()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, server):
    """A headless Chromium with a fresh profile whose pages may reach only ``server``."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the Python package `playwright` is missing: pip install playwright "
                     "(do not run `playwright install`: the tests use Debian's chromium)")
    executable = _chromium()
    profile = tmp_path_factory.mktemp("chromium_profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800}, device_scale_factor=1, locale="en-US")
        context.set_default_timeout(TIMEOUT_MS)
        context.outside = []  # requests to anywhere but the server

        def police(route):
            if route.request.url.startswith(server.url + "/"):
                route.continue_()
            else:
                context.outside.append(route.request.url)
                route.abort()

        context.route("**/*", police)
        yield context
        context.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    page.errors = []
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    yield page
    assert not page.errors, f"JavaScript errors on the page: {page.errors}"
    assert not browser.outside, f"the page tried to reach other hosts: {browser.outside}"
    page.close()


def updates(page) -> int:
    return int(page.get_attribute("body", "data-updates") or 0)


def wait_updated(page, after: int) -> None:
    """Until the page has finished the refresh after ``after`` (answers and re-renders)."""
    page.wait_for_selector(f"body[data-updates='{after + 1}']", state="attached")


def open_page(page, server) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='true']", state="attached")


def page_state(page) -> dict:
    recs = page.eval_on_selector_all("#recs li[data-item-id]",
                                     "els => els.map(e => [e.dataset.itemId, Number(e.dataset.score)])")
    sd = page.get_attribute("#sure-bar", "data-total-sd")
    x, y = page.get_attribute("#map", "data-user-x"), page.get_attribute("#map", "data-user-y")
    return {"n": int(page.get_attribute("#answer-count", "data-n")), "recs": recs,
            "sd": None if sd is None else float(sd), "sd_text": page.inner_text("#sure-number"),
            "words": page.inner_text("#sure-words"),
            "you": None if x is None else (float(x), float(y))}


def topic(text: str) -> int:
    return next(i for i, t in enumerate(TOPIC_ORDER) if t in text)


def logged(server, user_id: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{server.state_dir / 'feedback.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT item_a, item_b, label FROM comparisons WHERE user_id = ? ORDER BY seq",
                            (user_id,)).fetchall()
    finally:
        conn.close()


def test_five_clicks_teach_the_model(page, server, tmp_path):
    open_page(page, server)
    user_id = page.inner_text("#user-id")
    assert re.fullmatch(r"web-[0-9a-f]{16}", user_id), user_id
    assert page.evaluate("localStorage.getItem('plural.userId')") == user_id
    with server.client() as http:
        assert http.get(f"/v1/users/{user_id}").status_code == 404  # asked before they exist
    start = page_state(page)
    assert start["n"] == 0 and start["sd"] is None and start["you"] is None
    assert page.inner_text("#recs-title") == "Popular with everyone" and len(start["recs"]) == N_RECS
    assert page.inner_text("#sure-words") == "Nothing known about you yet."
    n_users = json.loads(httpx.get(server.url + "/v1/map").text)["n_users"]
    assert page.locator("#map .map-users circle").count() == min(n_users, 500) > 0
    assert page.get_by_role("button", name=re.compile("No preference")).is_visible()
    left = page.get_by_role("button", name=re.compile("^Prefer the left one: "))
    assert left.is_visible() and page.inner_text("#text-a") in left.get_attribute("aria-label")
    assert page.get_by_role("img", name=re.compile("Where you are among the users")).is_visible()

    states, asked = [], []
    for k in range(5):
        a, b = page.inner_text("#text-a"), page.inner_text("#text-b")
        ids = (page.get_attribute("#choose-a", "data-item-id"), page.get_attribute("#choose-b", "data-item-id"))
        ta, tb = topic(a), topic(b)
        button, label = ("#choose-a", 1.0) if ta < tb else ("#choose-b", 0.0) if tb < ta else ("#choose-tie", 0.5)
        asked.append((*ids, label))
        before = updates(page)
        page.click(button)
        wait_updated(page, before)
        assert page.locator("#error").is_hidden(), page.inner_text("#error")
        assert page.inner_text("#status").startswith("Saved:")
        states.append(page_state(page))
        assert states[-1]["n"] == k + 1

    first, last = states[0], states[-1]
    # the user now has the five comparisons, as clicked
    with server.client() as http:
        user = http.get(f"/v1/users/{user_id}").json()
    assert user["n_comparisons"] == 5 and user["n_logged"] == 5 and user["in_store"]
    assert logged(server, user_id) == asked
    assert page.inner_text("#answer-count") == "5 answers"
    # recommendations changed, and leave out what was judged
    assert page.inner_text("#recs-title") == "Top picks for you"
    assert first["recs"] != last["recs"] and len(last["recs"]) == N_RECS
    judged = {i for a, b, _ in asked for i in (a, b)}
    assert not judged & {i for i, _ in last["recs"]}
    # the uncertainty shown went down, and is what the API says
    assert last["sd"] < first["sd"], (first["sd"], last["sd"])
    assert last["sd"] == pytest.approx(user["total_sd"], rel=1e-6)
    assert f"{last['sd']:.3f}" in last["sd_text"] and f"{first['sd']:.3f}" in last["sd_text"]
    assert last["words"] and "Nothing known" not in last["words"]
    assert float(page.get_attribute("#sure-bar", "aria-valuenow")) > 0
    # the map shows the user's point, where the API puts it, and it moved
    assert page.locator("#map-you circle").is_visible() and page.text_content("#map-you") == "You"
    with server.client() as http:
        where = http.get("/v1/map", params={"user_id": user_id}).json()["user"]
    assert last["you"] == pytest.approx((where["x"], where["y"]))
    assert first["you"] is not None and first["you"] != last["you"]
    assert "Your point is at" in page.text_content("#map-desc")

    page.mouse.move(1270, 790)  # no hover highlight in the picture
    shot = tmp_path / "plural_page.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    shutil.copyfile(shot, SCREENSHOT_COPY)

    # the id survives a reload, and the page picks up where the user left off
    open_page(page, server)
    assert page.inner_text("#user-id") == user_id
    again = page_state(page)
    assert again["n"] == 5 and again["sd"] == pytest.approx(last["sd"]) and again["you"] is not None


def test_keyboard_token_and_errors(page, server):
    open_page(page, server)
    page.click("#settings-toggle")
    page.click("#new-user")  # a fresh id for this test
    wait_updated(page, 1)
    user_id = page.inner_text("#user-id")

    # keyboard: Enter on the focused left card, then the arrow keys
    question = (page.get_attribute("#choose-a", "data-item-id"), page.get_attribute("#choose-b", "data-item-id"))
    page.focus("#choose-a")
    page.keyboard.press("Enter")
    wait_updated(page, 2)
    assert logged(server, user_id) == [(*question, 1.0)]
    assert page.evaluate("document.activeElement.id") == "choose-a"  # focus stays on the card

    # a server that wants a token: a 401 opens the token field; the saved token resends the same answer
    token = "tok-5b1e"

    def needs_token(route):
        if route.request.method == "POST" and route.request.headers.get("authorization") != f"Bearer {token}":
            route.fulfill(status=401, json={"detail": "a valid 'Authorization: Bearer <token>' header is needed "
                                                      "for writes"}, headers={"WWW-Authenticate": "Bearer"})
        else:
            route.continue_()

    page.route(re.compile(r".*/v1/users(/.*/comparisons)?$"), needs_token)
    question = (page.get_attribute("#choose-a", "data-item-id"), page.get_attribute("#choose-b", "data-item-id"))
    page.keyboard.press("ArrowRight")
    page.wait_for_selector("#error", state="visible")
    assert "401" in page.inner_text("#error-title") and "Bearer" in page.inner_text("#error-text")
    assert page.evaluate("document.activeElement.id") == "token-input"
    assert page.inner_text("#status") == "Your answer was not saved."
    page.fill("#token-input", token)
    page.press("#token-input", "Enter")
    wait_updated(page, 3)
    assert page.locator("#error").is_hidden()
    assert page.evaluate("sessionStorage.getItem('plural.apiToken')") == token
    assert logged(server, user_id)[1:] == [(*question, 0.0)]
    page.unroute(re.compile(r".*/v1/users(/.*/comparisons)?$"))

    # a 5xx from one route: shown with its code and message; "Try again" recovers
    page.route("**/v1/recommend", lambda route: route.fulfill(
        status=503, json={"detail": "the service is not ready: loading the run"}))
    page.keyboard.press("ArrowDown")  # no preference
    wait_updated(page, 4)
    assert page.locator("#error").is_visible()
    assert "503" in page.inner_text("#error-title") and "/v1/recommend" in page.inner_text("#error-title")
    assert "not ready" in page.inner_text("#error-text")
    assert len(logged(server, user_id)) == 3 and logged(server, user_id)[-1][2] == 0.5
    page.unroute("**/v1/recommend")
    page.click("#error-retry")
    wait_updated(page, 5)
    assert page.locator("#error").is_hidden() and page_state(page)["n"] == 3

    # a real 4xx from the server: an id over the limit is a 422 naming the limit
    page.evaluate("localStorage.setItem('plural.userId', 'x'.repeat(129))")
    open_page(page, server)
    page.wait_for_selector("#error", state="visible")
    assert "422" in page.inner_text("#error-title") and "the limit is 128" in page.inner_text("#error-text")
    page.click("#settings-toggle")
    page.click("#new-user")
    page.wait_for_selector("#error", state="hidden")
