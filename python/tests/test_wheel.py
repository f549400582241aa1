"""The built wheel works on its own: `python -m build --wheel`, installed into a fresh
virtualenv outside the repository (with FastAPI and uvicorn from PyPI), pays for a call to a
small FastAPI app priced by its middleware, charging through a real `opentab dev`."""

from __future__ import annotations

import json
import os
from importlib.metadata import version
import subprocess
import sys
import venv
from pathlib import Path

from .conftest import Demo

PYTHON_DIR = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_into_a_fresh_virtualenv_and_pays(dev: Demo, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(PYTHON_DIR)],
        check=True, capture_output=True,
    )
    (wheel,) = dist.glob("opentab-*.whl")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel),
         # The versions the test extras pinned for this Python.
         f"fastapi=={version('fastapi')}", f"uvicorn=={version('uvicorn')}"],
        check=True, capture_output=True,
    )
    env = {
        **os.environ,
        "OPENTAB_URL": dev.gateway_url,
        "OPENTAB_GATEWAY_SECRET": dev.gateway_secret,
        "DEMO_KEY": dev.session_key,
        "DEMO_PAYEE": dev.payee,
        "DEMO_NETWORK": dev.network,
        "DEMO_VALIDATOR": dev.validator,
        "STATE_PATH": str(tmp_path / "totals.json"),
        "PYTHONPATH": "",
    }
    done = subprocess.run(
        [str(python), str(PYTHON_DIR / "tests" / "wheel_app.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["module"].startswith(str(env_dir)), result["module"]
    assert result["typed"] is True
    assert result["unpaid"] == 402
    assert result["paid"] == 200 and result["body"] == {"answer": "hello from a wheel"}
    assert result["receipt"]["receipt"]["charged"] == "2000"
