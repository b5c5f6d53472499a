"""A browser page written from docs/protocol.md alone joins a room and links with a Python session.

Real parts only: the embedded room server, a real aiortc session, and Debian's headless
Chromium driven by Playwright.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGE = Path(__file__).parent / "pages" / "join.html"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  # aiortc cannot resolve Chromium's mDNS host-candidate names
                  "--disable-features=WebRtcHideLocalIpsWithMdns"],
        )
        pg = browser.new_page()
        pg.goto(PAGE.as_uri())
        yield pg
        browser.close()


@pytest.mark.parametrize("browser_user, python_user", [("ann", "zed"), ("zoe", "bob")])
def test_page_from_the_protocol_doc_links_with_a_session(server, make_session, page, browser_user, python_user):
    """Both who-offers cases: the browser offers (ann < zed) and answers (bob < zoe)."""
    py = make_session(server.url, python_user)
    page.evaluate("([u, n, r]) => join(u, n, r)", [server.url, browser_user, "lab"])
    peers = py.wait_for_peers([browser_user], timeout=30).wait()
    assert peers[browser_user].state == "connected"
    page.wait_for_function("window.state === 'connected'", timeout=30_000)

    page.evaluate("t => say(t)", "hello from the browser")
    wait_until(lambda: len(py.messages) == 1, 10)
    assert py.messages.iloc[0].text == "hello from the browser"
    assert py.messages.iloc[0].sender == browser_user

    py.say("hello from python").wait(5)
    page.wait_for_function("window.chat.includes('hello from python')", timeout=10_000)

    # the browser answers heartbeats, so the link stays up past the 2.5 s dead-peer limit
    wait_until(lambda: py.peers[browser_user].rtt is not None, 5)
    page.wait_for_timeout(3000)
    assert py.peers[browser_user].state == "connected"
