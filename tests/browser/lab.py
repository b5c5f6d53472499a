"""Driving JupyterLab in Chromium: open a notebook, run cells, run kernel code, watch the page."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# Console errors that are known and harmless here (see test_no_failed_models_and_no_console_errors).
# None has been seen so far: news and update checks are off in the test settings.
KNOWN_CONSOLE_ERRORS = [
    # No internet on these machines: an optional look-up of JupyterLab's outside the server fails.
    re.compile(r"Failed to load resource: net::ERR_(INTERNET_DISCONNECTED|NAME_NOT_RESOLVED|CONNECTION_REFUSED)"),
]

# Records when ivisit elements first appear (at the next animation frame) and when choices are clicked.
OBSERVER_JS = """
() => {
  if (window.__ivisit) return;
  const rec = window.__ivisit = {offer: {}, progress: {}, click: {}};
  const now = () => performance.timeOrigin + performance.now();
  const look = (root) => {
    if (!(root instanceof Element)) return;
    const found = [...(root.matches('[data-transfer]') ? [root] : []), ...root.querySelectorAll('[data-transfer]')];
    for (const el of found) {
      const kind = el.classList.contains('ivisit-offer') ? 'offer' : el.classList.contains('ivisit-progress') ? 'progress' : null;
      const id = el.dataset.transfer;
      if (kind && id && !(id in rec[kind])) {
        rec[kind][id] = null;
        requestAnimationFrame(() => { rec[kind][id] = now(); });
      }
    }
  };
  new MutationObserver(muts => {
    for (const m of muts) {
      if (m.type === 'attributes') look(m.target);
      m.addedNodes.forEach(look);
    }
  }).observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['data-transfer', 'class']});
  document.addEventListener('click', e => {
    const card = e.target instanceof Element && e.target.closest('.ivisit-offer');
    if (card) rec.click[card.dataset.transfer] = now();
  }, true);
}
"""

EXECUTE_JS = """
async (code) => {
  const app = window.jupyterapp;
  const panel = [...app.shell.widgets('main')].find(w => w.sessionContext && w.content && w.content.widgets);
  const kernel = panel.sessionContext.session.kernel;
  const future = kernel.requestExecute({code, store_history: false});
  let out = '', err = null;
  future.onIOPub = msg => {
    if (msg.header.msg_type === 'stream') out += msg.content.text;
    if (msg.header.msg_type === 'error') err = msg.content.ename + ': ' + msg.content.evalue;
  };
  await future.done;
  return {out, err};
}
"""


class Lab:
    """One JupyterLab page with the test notebook open."""

    def __init__(self, page: Page, url: str, token: str, root: Path) -> None:
        self.page, self.url, self.token, self.root = page, url, token, root
        self.console: list[tuple[str, str]] = []
        page.on("console", lambda m: self.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))

    # -- the notebook -------------------------------------------------------------------
    def open_notebook(self, name: str) -> None:
        self.page.goto(f"{self.url}/lab/tree/{name}?reset&token={self.token}")
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=60_000)
        self.page.wait_for_function(
            "() => { const a = window.jupyterapp; const p = a && [...a.shell.widgets('main')].find(w => w.sessionContext);"
            " return p && p.sessionContext.session && p.sessionContext.session.kernel"
            " && p.sessionContext.session.kernel.connectionStatus === 'connected'"
            " && p.sessionContext.session.kernel.status === 'idle'; }",
            timeout=60_000,
        )
        self.page.evaluate(OBSERVER_JS)

    def cell(self, index: int):
        return self.page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(index)

    def run_cell(self, index: int, timeout: float = 30) -> None:
        """Run one cell as a person would: click its prompt, Escape, Shift+Enter; wait until it ran."""
        cell = self.cell(index)
        cell.locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("Shift+Enter")
        prompt = cell.locator(".jp-InputPrompt")
        deadline = time.monotonic() + timeout
        while not re.fullmatch(r"\[\d+\]:", (prompt.inner_text() or "").strip()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"cell {index} did not finish in {timeout} s")
            time.sleep(0.1)
        if cell.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").count():
            raise AssertionError(f"cell {index} failed: {cell.inner_text()}")

    # -- the kernel ---------------------------------------------------------------------------
    def py(self, code: str) -> str:
        """Run ``code`` in the notebook's kernel (not as a cell); returns what it printed."""
        result = self.page.evaluate(EXECUTE_JS, code)
        if result["err"]:
            raise AssertionError(f"kernel error for {code!r}: {result['err']}\n{result['out']}")
        return result["out"]

    def pyj(self, expr: str) -> Any:
        """The JSON value of a Python expression evaluated in the kernel."""
        out = self.py(f"import json as _j; print(_j.dumps({expr}))")
        return json.loads(out.strip().splitlines()[-1])

    def wait_py(self, expr: str, timeout: float = 15) -> Any:
        """Poll a Python expression in the kernel until it is truthy; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.pyj(expr)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expr} still {value!r} after {timeout} s")
            time.sleep(0.1)

    # -- the page ----------------------------------------------------------------------------------
    def records(self) -> dict[str, dict[str, float]]:
        return self.page.evaluate("() => window.__ivisit")

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)

    def unexpected_console_errors(self) -> list[str]:
        return [
            f"{kind}: {text}" for kind, text in self.console
            if kind in ("error", "pageerror") and not any(p.search(text) for p in KNOWN_CONSOLE_ERRORS)
        ]


def write_notebook(path: Path, cells: list[str]) -> None:
    """A notebook of ``cells`` (code, no outputs) at ``path``, for a test to open in the lab."""
    nb = {
        "cells": [
            {"cell_type": "code", "execution_count": None, "id": f"cell{i}", "metadata": {}, "outputs": [], "source": src}
            for i, src in enumerate(cells)
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))
