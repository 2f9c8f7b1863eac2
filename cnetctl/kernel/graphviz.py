"""Graphviz's `dot`, for `cnetctl graph -f svg|png`.

Here because it runs a program (the one side effect of `graph`), and cnetctl keeps every
subprocess, like every kernel call, under cnetctl/kernel/."""

from __future__ import annotations

import shutil
import subprocess

from ..errors import UsageError

INSTALL_HINT = ("install Graphviz (Debian/Ubuntu: apt-get install graphviz; Fedora: dnf install graphviz), "
                "or use -f dot or -f mermaid, which need nothing")


def run_dot(source: str, fmt: str, timeout: float = 60.0) -> bytes:
    """`dot -T<fmt>` of `source`; exit 2 naming what to install when dot is missing."""
    exe = shutil.which("dot")
    if exe is None:
        raise UsageError(f"-f {fmt} needs Graphviz's `dot`, which is not on PATH: {INSTALL_HINT}")
    try:
        res = subprocess.run([exe, f"-T{fmt}"], input=source.encode(), capture_output=True, timeout=timeout,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UsageError(f"cannot run {exe}: {err}") from None
    if res.returncode != 0:
        raise UsageError(f"{exe} -T{fmt} failed (exit {res.returncode}): "
                         f"{res.stderr.decode(errors='replace').strip()[-500:]}")
    return res.stdout
