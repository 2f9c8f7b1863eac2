"""Test harness: kernel tests run only inside a throw-away network + mount namespace.

Run as root, pytest re-executes itself through tests/world.sh (unshare --net
--mount, a tmpfs on /run/netns, a temporary state dir), so nothing a test does
can reach the machine's real network. Without root, kernel tests are skipped
and the unit tests still run.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORLD = ROOT / "tests" / "world.sh"

# The plugin cnetctl ships for users' tests (a world per test or module); some kernel tests use it.
pytest_plugins = ("cnetctl.testing",)


def isolated() -> bool:
    """True inside the network namespace tests/world.sh made (not the one it started in)."""
    outer = os.environ.get("CNETCTL_OUTER_NETNS")
    return os.environ.get("CNETCTL_ISOLATED") == "1" and bool(outer) and \
        str(os.stat("/proc/self/ns/net").st_ino) != outer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel: needs root; runs inside the throw-away world")
    config.addinivalue_line("markers", "long: a sweep that runs for a long time; scheduled first")
    if os.geteuid() == 0 and not isolated() and not os.environ.get("CNETCTL_NO_REEXEC"):
        os.environ["CNETCTL_NO_REEXEC"] = "1"
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(str(WORLD), [str(WORLD), sys.executable, "-m", "pytest", *config.invocation_params.args])
    _workers_in_worlds_of_their_own(config)


def _workers_in_worlds_of_their_own(config: pytest.Config) -> None:
    """With pytest-xdist (-n N), every worker starts through tests/world.sh: each has its own
    network namespace, /run/netns and state dir, so tests in parallel never see each
    other's topologies (and may all use the same names)."""
    tx = getattr(config.option, "tx", None)
    if os.geteuid() == 0 and tx and os.environ.get("PYTEST_XDIST_WORKER") is None:
        python = f"{shlex.quote(str(WORLD))} {shlex.quote(sys.executable)}"
        config.option.tx = [f"{spec}//python={python}" if spec == "popen" else spec for spec in tx]


def pytest_unconfigure(config: pytest.Config) -> None:
    from tests import forkserver

    forkserver.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The long sweeps go first: parallel workers then finish together instead of one
    # worker starting a two-minute sweep when the others have run out of work.
    items.sort(key=lambda item: "long" not in item.keywords)
    if isolated():
        return
    skip = pytest.mark.skip(reason="kernel test: needs root, runs only inside tests/world.sh")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


def unprivileged_prefix() -> tuple[str, ...]:
    """A command prefix that runs `python -m cnetctl` from this checkout without root's powers.

    As user nobody when nobody can read the checkout; otherwise (the common case of a root
    user's clone under /root, mode 700) as the checkout's owner with every capability
    dropped: uid 0 without CAP_DAC_OVERRIDE is refused what file modes refuse, and cnetctl
    sees no CAP_NET_ADMIN. Skips when neither can import this checkout's package."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop privileges")
    nobody = pwd.getpwnam("nobody")
    owner = os.stat(ROOT)
    drop = ("--clear-groups", "--inh-caps=-all", "--bounding-set=-all")
    tried = []
    for uid, gid in ((nobody.pw_uid, nobody.pw_gid), (owner.st_uid, owner.st_gid)):
        prefix = (setpriv, f"--reuid={uid}", f"--regid={gid}", *drop)
        # The package must come from this checkout, not from wherever the venv's own install points.
        probe = subprocess.run([*prefix, sys.executable, "-c", "import cnetctl.cli; print(cnetctl.__file__)"],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 and Path(probe.stdout.strip()).resolve().is_relative_to(ROOT):
            return prefix
        tried.append(f"uid {uid}: {(probe.stderr.strip() or probe.stdout.strip())[-200:]}")
    pytest.skip("cannot run cnetctl from this checkout without privileges: " + "; ".join(tried))
