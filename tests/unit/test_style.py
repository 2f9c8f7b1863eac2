"""The project's own style gates: ruff everywhere, mypy on the package (strict on the pure core)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

STRICT = ["cnetctl/model", "cnetctl/plan.py", "cnetctl/normalize.py"]


def tool(name: str) -> list[str]:
    if shutil.which(name, path=str(ROOT / ".venv" / "bin")) is None and \
            subprocess.run([sys.executable, "-m", name, "--version"], capture_output=True).returncode != 0:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return [sys.executable, "-m", name]


def test_ruff():
    res = subprocess.run([*tool("ruff"), "check", "cnetctl", "tests", "bench"], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy():
    for args in (["--strict", *STRICT], ["cnetctl"]):
        res = subprocess.run([*tool("mypy"), "--cache-dir", "/tmp/cnetctl-mypy-cache", *args], cwd=ROOT,
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
