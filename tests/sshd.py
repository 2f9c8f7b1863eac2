"""sshd inside simulated machines (tests/machines.py), for tests that drive them over ssh.

Each machine runs its own sshd, started in the machine's network + mount namespace
and listening only on the machine's underlay address, port 22. Everything it needs is
throw-away and private: a host key per machine and one client key, generated in a
temporary directory; a config file of our own (never /etc/ssh/sshd_config); no PAM;
root logs in by that key only, and only from the controller's underlay address. The
controller is the test world itself, which joins the underlay bridge with an address
of its own (`controller_on_underlay`). On exit the servers, every session they forked
and the keys are gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.machines import UNDERLAY_BRIDGE, UNDERLAY_PREFIX, Machine

SSHD = "/usr/sbin/sshd"
CONTROLLER_ADDRESS = "192.0.2.254"   # the test world's own side of the underlay

_CONFIG = """\
ListenAddress {address}:22
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
AllowUsers root@{controller}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
KerberosAuthentication no
GSSAPIAuthentication no
UsePAM no
# The keys live under /tmp, which is world-writable: sshd's ownership walk would refuse them.
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTunnel no
PermitUserEnvironment no
Subsystem sftp internal-sftp
# The machines share this box's /root: bash sources ~/.bashrc for commands run by sshd, and a
# developer's .bashrc (pyenv init, ...) would cost every remote command a third of a second and
# put its own python first on PATH. A fresh machine has none of that; with SHLVL=1 the
# command's bash counts itself nested and skips .bashrc.
SetEnv SHLVL=1
LogLevel INFO
"""


@dataclass
class SshAccess:
    """What a client needs to reach the machines: the key, the pinned host keys, ssh options."""
    directory: Path
    client_key: Path
    known_hosts: Path
    servers: dict[str, subprocess.Popen[str]]

    def ssh_options(self) -> list[str]:
        """Options for ssh(1): this key only, these host keys only, no user or system ssh config."""
        return ["-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", f"IdentityFile={self.client_key}",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]

    def log(self, machine: str) -> str:
        path = self.directory / f"{machine}.log"
        return path.read_text() if path.exists() else ""


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return Path(f"{path}.pub").read_text().strip()


@contextmanager
def controller_on_underlay(address: str = CONTROLLER_ADDRESS) -> Iterator[str]:
    """Give the test world an address on the machines' underlay bridge, so that a controller
    running in the world (ansible-playbook, ssh) reaches them; removed on exit."""
    subprocess.run(["ip", "addr", "add", f"{address}/{UNDERLAY_PREFIX}", "dev", UNDERLAY_BRIDGE], check=True)
    try:
        yield address
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/{UNDERLAY_PREFIX}", "dev", UNDERLAY_BRIDGE],
                       capture_output=True)


@contextmanager
def ssh_servers(machines: Sequence[Machine], controller: str = CONTROLLER_ADDRESS) -> Iterator[SshAccess]:
    """Start one sshd per machine (listening on its underlay address only) and yield the
    client side's key and known_hosts. Stops every sshd and removes the keys on exit."""
    directory = Path(tempfile.mkdtemp(prefix="cnetctl-ssh-"))
    servers: dict[str, subprocess.Popen[str]] = {}
    try:
        client = directory / "client_ed25519"
        (directory / "authorized_keys").write_text(_keygen(client, "cnetctl-test-client") + "\n")
        known = []
        for machine in machines:
            host_pub = _keygen(directory / f"{machine.name}_host_ed25519", f"cnetctl-test-{machine.name}")
            known.append(f"{machine.address} {' '.join(host_pub.split()[:2])}")
            servers[machine.name] = _start(machine, directory, controller)
        (directory / "known_hosts").write_text("\n".join(known) + "\n")
        access = SshAccess(directory, client, directory / "known_hosts", servers)
        for machine in machines:
            _wait_listening(access, machine, servers[machine.name])
        yield access
    finally:
        for proc in servers.values():
            _stop(proc)
        shutil.rmtree(directory, ignore_errors=True)


def _start(machine: Machine, directory: Path, controller: str) -> subprocess.Popen[str]:
    config = directory / f"{machine.name}_sshd_config"
    config.write_text(_CONFIG.format(address=machine.address, controller=controller,
                                     host_key=directory / f"{machine.name}_host_ed25519",
                                     pid_file=directory / f"{machine.name}.pid",
                                     authorized_keys=directory / "authorized_keys"))
    # sshd refuses a relative path to itself (it re-executes itself per connection).
    check = machine.run(SSHD, "-t", "-f", str(config))
    if check.returncode != 0:
        raise RuntimeError(f"sshd config for {machine.name} rejected: {check.stderr}")
    with open(directory / f"{machine.name}.log", "w") as log:
        return machine.popen(SSHD, "-D", "-e", "-f", str(config), stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)


def _wait_listening(access: SshAccess, machine: Machine, proc: subprocess.Popen[str],
                    timeout: float = 10.0) -> None:
    """sshd says so once its socket is bound (`-e` logs to our file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f"Server listening on {machine.address} port 22" in access.log(machine.name):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"sshd in {machine.name} did not start: {access.log(machine.name)}")


def _descendants(pid: int) -> list[int]:
    """Processes forked from `pid`, found through their parent links in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop(proc: subprocess.Popen[str]) -> None:
    """The listener and the sessions it forked (those call setsid(), so a process group signal
    would miss them). nsenter entering only network and mount namespaces execs sshd itself."""
    for pid in reversed(_descendants(proc.pid)):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


__all__ = ["SshAccess", "ssh_servers", "controller_on_underlay", "CONTROLLER_ADDRESS"]
