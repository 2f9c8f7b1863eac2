"""Simulated machines for multi-host tests, inside the test world only.

A machine is a network + mount namespace of its own, held open by one `sleep`
process: its own `lo`, its own `/run/netns` (a tmpfs) and its own state dir, so
cnetctl run there sees only that machine. Machines are joined by an underlay: one
veth per machine, its outer end in a bridge of the test world, its inner end
`eth1` with an address from 192.0.2.0/24 (TEST-NET-1, assigned here, reached only
between these machines). Killing the holder takes everything inside with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.conftest import ROOT

UNDERLAY_BRIDGE = "underlay0"
UNDERLAY_PREFIX = 24

# Inside the new namespaces: a private mount tree, a private /run/netns and a lo
# that is up, then wait. /run/sshd and /opt are private too, for the ssh tests
# (sshd's privilege separation dir; a per-machine install target).
_HOLDER = """
set -e
mount --make-rprivate /
mkdir -p /run/netns /run/sshd /opt
mount -t tmpfs -o mode=755 tmpfs /run/netns
mount -t tmpfs -o mode=755 tmpfs /run/sshd
mount -t tmpfs -o mode=755 tmpfs /opt
mount -t tmpfs tmpfs /run/xtables.lock 2>/dev/null || true
ip link set lo up
echo ready
exec sleep infinity
"""


@dataclass
class Machine:
    name: str
    address: str                     # its underlay address on eth1, no prefix
    pid: int                         # the holder process: its namespaces are the machine's
    state_dir: str
    holder: subprocess.Popen[str] = field(repr=False)

    def prefix(self) -> list[str]:
        """argv prefix that runs a command inside this machine (network + mount namespace), in the
        checkout (entering a mount namespace moves to its root: `python -m cnetctl` and relative
        manifest paths would then miss this worktree)."""
        return ["nsenter", "-t", str(self.pid), "-n", "-m", f"--wd={ROOT}", "--"]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "CNETCTL_STATE_DIR": self.state_dir, **(extra or {})}

    def run(self, *argv: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.prefix() + list(argv), capture_output=True, text=True, input=input,
                              env=self.env(env), timeout=timeout, check=check, cwd=ROOT)

    def popen(self, *argv: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(self.prefix() + list(argv), text=True, env=self.env(env), cwd=ROOT,
                                **kwargs)  # type: ignore[call-overload]

    def cnetctl(self, *args: str, env: dict[str, str] | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "cnetctl", *args, env=env, timeout=timeout)

    def ip_json(self, *args: str) -> object:
        """`ip -j ARGS` as this machine's kernel sees it, parsed."""
        import json

        out = self.run("ip", "-j", *args, check=True).stdout
        return json.loads(out) if out.strip() else []


def _start(name: str, address: str, index: int) -> Machine:
    holder = subprocess.Popen(["unshare", "--net", "--mount", "--", "sh", "-c", _HOLDER],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != "ready":
        holder.kill()
        raise RuntimeError(f"machine {name} did not start")
    state_dir = tempfile.mkdtemp(prefix=f"cnetctl-{name}-")
    outer = f"ul-{index}"
    subprocess.run(["ip", "link", "add", outer, "type", "veth", "peer", "name", f"ul-{index}-in"], check=True)
    subprocess.run(["ip", "link", "set", outer, "master", UNDERLAY_BRIDGE, "up"], check=True)
    subprocess.run(["ip", "link", "set", f"ul-{index}-in", "netns", str(holder.pid)], check=True)
    machine = Machine(name, address, holder.pid, state_dir, holder)
    for argv in (["ip", "link", "set", f"ul-{index}-in", "name", "eth1"],
                 ["ip", "addr", "add", f"{address}/{UNDERLAY_PREFIX}", "dev", "eth1"],
                 ["ip", "link", "set", "eth1", "up"]):
        machine.run(*argv, check=True)
    return machine


def _stop(machine: Machine) -> None:
    machine.holder.kill()
    machine.holder.wait()
    shutil.rmtree(machine.state_dir, ignore_errors=True)


@contextmanager
def machines(spec: Sequence[tuple[str, str]]) -> Iterator[dict[str, Machine]]:
    """Start machines [(name, underlay address), …] joined by one underlay bridge; stop them
    (and everything they hold) on exit, also when the test fails."""
    subprocess.run(["ip", "link", "add", UNDERLAY_BRIDGE, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", UNDERLAY_BRIDGE, "up"], check=True)
    started: dict[str, Machine] = {}
    try:
        for index, (name, address) in enumerate(spec):
            started[name] = _start(name, address, index)
        _wait_reachable(list(started.values()))
        yield started
    finally:
        for machine in started.values():
            _stop(machine)
        subprocess.run(["ip", "link", "del", UNDERLAY_BRIDGE], capture_output=True)
        for index in range(len(spec)):
            subprocess.run(["ip", "link", "del", f"ul-{index}"], capture_output=True)


def _wait_reachable(ms: list[Machine], timeout: float = 5.0) -> None:
    """The underlay bridge forwards only once its ports leave the listening state."""
    if len(ms) < 2:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ms[0].run("ping", "-c", "1", "-W", "1", "-n", "-q", ms[1].address).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("underlay between the simulated machines did not come up")


__all__ = ["Machine", "machines", "UNDERLAY_BRIDGE"]
