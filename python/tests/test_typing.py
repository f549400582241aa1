"""The package is typed (`py.typed`) and passes `mypy --strict`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "opentab"


def test_the_package_ships_py_typed_and_passes_mypy_strict() -> None:
    assert (SRC / "py.typed").exists()
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--cache-dir", "/dev/null", str(SRC)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
