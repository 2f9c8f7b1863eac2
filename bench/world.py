"""Benchmarks run inside the throw-away world (tests/world.sh), as the kernel tests do."""

from __future__ import annotations

import os
import sys
from pathlib import Path

WORLD = Path(__file__).resolve().parent.parent / "tests" / "world.sh"


def in_world() -> bool:
    outer = os.environ.get("CNETCTL_OUTER_NETNS")
    return os.environ.get("CNETCTL_ISOLATED") == "1" and bool(outer) and \
        str(os.stat("/proc/self/ns/net").st_ino) != outer


def enter_world(name: str) -> int:
    """Re-execute this script inside a world of its own (no return), or say why not (exit 4).
    Returns 0 when already inside."""
    if in_world():
        return 0
    if os.geteuid() != 0:
        print(f"{name}: needs root (it builds namespaces inside a throw-away world)", file=sys.stderr)
        return 4
    os.execv(str(WORLD), [str(WORLD), sys.executable, *sys.argv])
