"""Test harness: kernel tests run only inside a throw-away network + mount namespace.

Run as root, pytest re-executes itself through tests/world.sh (unshare --net
--mount, a tmpfs on /run/netns, a temporary state dir), so nothing a test does
can reach the machine's real network. Without root, kernel tests are skipped
and the unit tests still run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORLD = ROOT / "tests" / "world.sh"


def isolated() -> bool:
    """True inside the network namespace tests/world.sh made (not the one it started in)."""
    outer = os.environ.get("CNETCTL_OUTER_NETNS")
    return os.environ.get("CNETCTL_ISOLATED") == "1" and bool(outer) and \
        str(os.stat("/proc/self/ns/net").st_ino) != outer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel: needs root; runs inside the throw-away world")
    if os.geteuid() == 0 and not isolated() and not os.environ.get("CNETCTL_NO_REEXEC"):
        os.environ["CNETCTL_NO_REEXEC"] = "1"
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(str(WORLD), [str(WORLD), sys.executable, "-m", "pytest", *config.invocation_params.args])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if isolated():
        return
    skip = pytest.mark.skip(reason="kernel test: needs root, runs only inside tests/world.sh")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)
