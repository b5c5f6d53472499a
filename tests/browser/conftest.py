"""A real JupyterLab server and headless Debian Chromium for the browser tests.

One server for the session; one browser page and one notebook kernel per test module
(the flows of a module share them, in file order). Skipped only when /usr/bin/chromium is missing
(``make test`` installs it).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lab import ARTIFACTS, Lab, write_notebook

CHROMIUM = "/usr/bin/chromium"
HERE = Path(__file__).parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(folder: Path) -> None:
    """Notebook cells all in the page (no windowing), and no news or update checks."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    }
    for name, value in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


#: The notebook the flows run: two sessions in one kernel and bob's panel.
UI_CELLS = [
    f"import sys\nsys.path.insert(0, {str(HERE)!r})\nfrom nbhelpers import Env\nenv = Env('.')",
    "panel = env.bob.ui()\npanel",
]


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    """``(base_url, token, root)`` of a jupyter lab started for the session; stopped by its PID."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (make test does) to run the browser tests")
    base = tmp_path_factory.mktemp("lab")
    root, settings = base / "root", base / "settings"
    for d in (root, settings, base / "runtime", base / "ipython", base / "config"):
        d.mkdir()
    write_settings(settings)
    write_notebook(root / "ui.ipynb", UI_CELLS)
    port, token = free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        IPYTHONDIR=str(base / "ipython"),
        IVISIT_NB_CONFIG=str(base / "config"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    log = open(base / "jupyter.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "jupyter"), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"jupyter lab did not start; see {base / 'jupyter.log'}")
            time.sleep(0.3)
    yield url, token, root
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


# Playwright's sync API keeps an asyncio loop marked as running in this thread while it is
# open, which breaks asyncio.run() in later test modules: the browser lives for one module.
def chromium(*extra_args: str):
    """Debian's headless chromium through Playwright (never ``playwright install``), with
    ``extra_args`` on top of the usual flags; yields the browser. For module fixtures."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (make test does) to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  *extra_args],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


@pytest.fixture(scope="module")
def lab(lab_server, browser):
    """The test notebook open in JupyterLab, its cells run one at a time; bob's panel is shown."""
    url, token, root = lab_server
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    lab = Lab(page, url, token, root)
    lab.open_notebook("ui.ipynb")
    lab.run_cell(0, timeout=60)
    lab.run_cell(1, timeout=30)
    yield lab
    lab.screenshot("final")
    (ARTIFACTS / "console.txt").write_text("".join(f"{kind}: {text}\n" for kind, text in lab.console))
    context.close()
