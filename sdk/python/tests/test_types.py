"""The package is typed (py.typed): mypy finds no issue in it, integrations
included, against the frameworks' own type hints."""

import subprocess
import sys

from conftest import ROOT


def test_mypy_is_clean():
    src = ROOT / "sdk" / "python" / "src" / "secondkey"
    r = subprocess.run([sys.executable, "-m", "mypy", "--python-version", "3.10", "--ignore-missing-imports",
                        "--no-incremental", str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
