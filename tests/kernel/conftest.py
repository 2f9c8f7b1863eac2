"""Fixtures for tests on the real kernel (inside the throw-away world only).

Assertions read the kernel with iproute2's own JSON (`ip -j`), never through
cnetctl's report; traffic is real ping from inside the namespaces.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, isolated
from tests.forkserver import cnetctl_call

MANIFESTS = ROOT / "manifests"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.kernel)


def default_signals() -> None:
    """For a child that is signalled by the test: SIGINT as a terminal gives it. A shell that
    started the suite in the background hands down SIGINT ignored, and Python then installs
    no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(*argv: str, check: bool = False, input: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, input=input, timeout=timeout)


def cnetctl(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m cnetctl ARGS` in a process of its own (forked from tests/forkserver.py)."""
    return cnetctl_call(list(args), {**os.environ, **(env or {})}, ROOT, timeout)


def ip(ns: str | None, *args: str) -> object:
    """`ip -j` output, parsed, in netns `ns` (None: the test world's host namespace)."""
    argv = ["ip", "-j"] + (["-n", ns] if ns else []) + list(args)
    out = run(*argv, check=True).stdout
    return json.loads(out) if out.strip() else []


def netns_list() -> list[str]:
    return sorted(e["name"] for e in ip(None, "netns", "list"))  # type: ignore[union-attr]


def ping(ns: str | None, dst: str, timeout: int = 1) -> bool:
    """Real ping(8) from inside `ns`: True when a reply came back."""
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return run(*prefix, "ping", "-c", "1", "-W", str(timeout), "-n", "-q", dst).returncode == 0


SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/all/rp_filter",
           "net/ipv4/conf/all/proxy_arp")


def settle(timeout: float = 5.0) -> None:
    """Wait for the kernel's own follow-ups of a change: IPv6 DAD of link-local addresses
    (which adds local routes when it completes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "tentative" not in run("ip", "-6", "addr", "show").stdout:
            return
        time.sleep(0.1)


def snapshot() -> dict[str, str]:
    """The world's host namespace as the kernel shows it, for byte-identical comparisons."""
    settle()
    snap = {}
    volatile = re.compile(r"\b\w+_timer\s+[\d.]+| tentative\b")
    for name, argv in {
        "link": ["ip", "-d", "link", "show"],
        "addr": ["ip", "addr", "show"],
        "route4": ["ip", "-4", "route", "show", "table", "all"],
        "route6": ["ip", "-6", "route", "show", "table", "all"],
        "rule4": ["ip", "-4", "rule", "show"],
        "rule6": ["ip", "-6", "rule", "show"],
        "netns": ["ip", "netns", "list"],
    }.items():
        # Bridge timers tick and IPv6 link-local DAD completes on their own.
        snap[name] = volatile.sub("", run(*argv, check=True).stdout)
    for key in SYSCTLS:
        snap[key] = Path("/proc/sys", key).read_text()
    return snap


@pytest.fixture(autouse=True)
def _must_be_isolated() -> None:
    assert isolated(), "kernel tests must run inside tests/world.sh"


@pytest.fixture
def clean_world() -> Iterator[dict[str, str]]:
    """Asserts that the test leaves the world as it found it (after destroying what it applied)."""
    before = snapshot()
    yield before
    after = snapshot()
    assert after == before


def applied_names() -> list[str]:
    out = cnetctl("status", "-o", "json")
    assert out.returncode == 0, out.stderr
    return [t["name"] for t in json.loads(out.stdout)["topologies"]]


@pytest.fixture(autouse=True)
def _destroy_leftovers() -> Iterator[None]:
    yield
    for name in applied_names():
        cnetctl("destroy", "--name", name)
