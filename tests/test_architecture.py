"""The architecture rules in pyproject.toml ([tool.importlinter]) hold: run import-linter on the package."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and "7 kept" in done.stdout


def test_the_sharing_core_imports_nothing_heavy():
    """Sending and receiving from the command line must not pay for pandas, matplotlib, widgets or numpy
    (video loads numpy when it is first used)."""
    code = (
        "import sys, ivisit_nb.session, ivisit_nb.cli;"
        "heavy = [m for m in ('pandas', 'matplotlib', 'ipywidgets', 'ivisit_nb.widgets', 'numpy') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
