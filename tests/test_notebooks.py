"""The notebooks in notebooks/ run top to bottom in a real kernel, headless, as committed.

Each runs with nbclient in a fresh temporary directory (its cwd and its TMPDIR), checks its own
key facts in its cells, and must leave nothing behind in the repository. The committed files carry
no outputs or execution counts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SKIP = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache"}
CELL_TIMEOUT = 90  # seconds; the slowest cell normally takes a few


def repo_files() -> set[str]:
    """Every file in the repository tree, minus caches and environments."""
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP]
        found.update(os.path.relpath(os.path.join(folder, f), ROOT) for f in files)
    return found


def test_there_are_five_numbered_notebooks():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01-", "02-", "03-", "04-", "05-"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs before committing"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom_and_leaves_nothing_behind(path, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the kernel inherits it: tempfile.mkdtemp() lands here
    before = repo_files()
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    started = time.monotonic()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    print(f"{path.name}: {time.monotonic() - started:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert repo_files() - before == set(), "the notebook wrote into the repository"
    left = [p for p in temp.rglob("*") if p.is_file()]
    assert left == [], f"the notebook left files in its temporary folder: {left[:5]}"
