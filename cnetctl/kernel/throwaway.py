"""A throw-away world for `cnetctl try`: a forked child in a network + mount namespace of its own.

What tests/world.sh does with unshare(1), done with the system calls: the child leaves
the machine's network namespace for a fresh one (only `lo`), and its mount namespace
for a private copy (propagation private, so nothing it mounts reaches the machine),
with a tmpfs on /run/netns (its named namespaces) and one on its state directory.
When the child exits, the last reference to all of it goes and the kernel frees every
namespace, link, route, rule, firewall table and sysctl it made: the machine's own
network is never touched, even when the child is killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator

from pyroute2 import IPRoute

from .netns import NETNS_RUN_DIR, _check, _libc

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
PR_SET_PDEATHSIG = 1


def _enter_world(state_dir: str) -> None:
    """In the child, before anything else: the namespaces, the mounts, lo up."""
    # The child dies with its parent (a SIGKILLed `try` leaves no world running).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare (network + mount namespace)")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    _check(_libc.mount(b"tmpfs", NETNS_RUN_DIR.encode(), b"tmpfs", 0, b"mode=755"), f"tmpfs on {NETNS_RUN_DIR}")
    _check(_libc.mount(b"tmpfs", state_dir.encode(), b"tmpfs", 0, b"mode=700"), f"tmpfs on {state_dir}")
    with IPRoute() as ipr:
        ipr.link("set", index=1, state="up")


def run_in_throwaway_world(body: Callable[[str], int]) -> int:
    """body(state_dir) in a forked child inside a throw-away world; its return value is the
    exit code. The parent only waits (Ctrl-C reaches the child through the terminal's process
    group and is handled there; SIGTERM is passed on)."""
    sys.stdout.flush()
    sys.stderr.flush()
    state_dir = tempfile.mkdtemp(prefix="cnetctl-try-")
    try:
        pid = os.fork()
        if pid == 0:   # pragma: no cover - the child (measured through its exit code)
            os._exit(_child(body, state_dir))
        with _passing_signals_to(pid):
            _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def _child(body: Callable[[str], int], state_dir: str) -> int:
    code = 3
    try:
        try:
            _enter_world(state_dir)
        except OSError as err:
            sys.stderr.write(f"cnetctl: cannot make the throw-away world: {err}\n")
            return 3
        code = body(state_dir)
    except SystemExit as ex:
        code = ex.code if isinstance(ex.code, int) else 1
    except KeyboardInterrupt:
        sys.stderr.write("cnetctl: interrupted\n")
        code = 130
    except BaseException as err:  # the child exits with a code; it never unwinds into the CLI
        sys.stderr.write(f"cnetctl: {type(err).__name__}: {err}\n")
        code = 3
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    return code


@contextlib.contextmanager
def _passing_signals_to(pid: int) -> Iterator[None]:
    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    saved = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
             signal.SIGTERM: signal.signal(signal.SIGTERM, forward)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
