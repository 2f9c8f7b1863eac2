"""The non-root tests work from a checkout user nobody cannot read: a root user's clone under
/root (mode 0700), with its venv inside, as `make test` makes it."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

from tests.kernel.conftest import ROOT

NON_ROOT_TESTS = ["tests/unit/test_corpus.py::test_unreadable_file",
                  "tests/e2e/test_cli.py::test_not_root_exits_4_before_touching_anything"]


def private_venv(where: Path) -> Path:
    """A venv inside the private checkout. It sees this run's installed dependencies (a plain path
    in a .pth file: their own .pth files, such as an editable install of cnetctl, are not run), so
    cnetctl can come from the checkout only."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "outer.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    return python


def test_non_root_tests_pass_from_a_private_checkout(tmp_path):
    home = tmp_path / "root-home"
    home.mkdir()
    os.chmod(home, 0o700)
    checkout = home / "cnetctl"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".pytest_cache", "*.egg-info", ".mypy_cache", ".ruff_cache"))
    python = private_venv(checkout / ".venv")
    res = subprocess.run([str(python), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *NON_ROOT_TESTS],
                         cwd=checkout, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and f"{len(NON_ROOT_TESTS)} passed" in res.stdout, res.stdout + res.stderr
    assert "skipped" not in res.stdout, res.stdout
