"""Packaging promises: the Python versions the README claims, and what `make demo` / `make test` install."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.unit.test_style import tool

PYPROJECT = (ROOT / "pyproject.toml").read_text()
TEST_TOOLS = ("pytest", "hypothesis", "ruff", "mypy")  # PyYAML is a runtime dependency (fastyaml)


def test_python_310_is_supported_and_checked():
    """Ubuntu 22.04 ships Python 3.10: the package must neither require nor use anything newer."""
    assert re.search(r'^requires-python = ">=3\.10"$', PYPROJECT, re.M)
    assert re.search(r'^target-version = "py310"$', PYPROJECT, re.M)
    assert re.search(r'^python_version = "3\.10"$', PYPROJECT, re.M)
    # mypy's typeshed knows which stdlib names are 3.11+ (enum.StrEnum, tomllib, typing.Self …).
    res = subprocess.run([*tool("mypy"), "--python-version", "3.10", "--cache-dir", "/tmp/cnetctl-mypy310-cache",
                          "cnetctl"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _section(name: str) -> str:
    match = re.search(rf"^{re.escape(name)} = \[(.*?)\]$", PYPROJECT, re.M | re.S)
    assert match, name
    return match.group(1).lower()


def test_runtime_dependencies_hold_no_test_tools():
    runtime = _section("dependencies")
    assert not [t for t in TEST_TOOLS if re.search(rf'"{t}\b', runtime)]
    extras = _section("test")
    assert all(f'"{t}' in extras for t in TEST_TOOLS)


def make_n(venv: Path, *targets: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    res = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), *targets, f"VENV={venv}"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_demo_installs_the_runtime_only_and_test_adds_the_extras(tmp_path):
    venv = tmp_path / "venv"
    demo = make_n(venv, "demo")
    assert "pip install -q -e .\n" in demo and "[test]" not in demo
    test = make_n(venv, "test")
    assert "pip install -q -e .\n" in test and "pip install -q -e '.[test]'" in test

    # A venv the demo made (its stamp fresh): `make test` adds the extras only, `make demo` installs nothing.
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".installed-runtime").touch()
    test = make_n(venv, "test")
    assert "pip install -q -e '.[test]'" in test and "pip install -q -e .\n" not in test
    assert "pip install" not in make_n(venv, "demo")
