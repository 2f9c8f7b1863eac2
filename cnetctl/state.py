"""The state file (/var/lib/cnetctl/<name>.json) and the per-topology lock.

The kernel's labels are the ground truth for what a topology owns; the state
file adds what labels cannot carry: the original value of every sysctl it
changed, which host addresses/routes/rules (on devices it does not own) are
its own, and the node -> namespace map. Every remember_* is saved before the
kernel change it announces, so a crash never loses an obligation to undo.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from . import DEFAULT_STATE_DIR
from .errors import LockedError, NotPermitted, UsageError
from .model.resources import Resource, resource_from_json
from .model.topology import canonical_sysctl, is_topology_name
from .statecheck import NOTHING, check_state, read_private

FORMAT = 1
_warned: set[str] = set()


def warn(message: str) -> None:
    """A problem with what cnetctl reads back from its own files: said once, never fatal."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def check_state_dir(directory: str) -> None:
    """Refuse a state directory that someone other than root (or this user) can write.

    Whoever can write it can plant a state file (whose contents this root process acts on:
    sysctl writes, deletions), a symlink where a journal or lock will be opened, or rename
    the directory away. Every ancestor counts too, except that a sticky one (/tmp) only
    lets its users replace their own entries."""
    path = os.path.abspath(directory)
    euid = os.geteuid()
    own = True
    while True:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            problem = None
            if st.st_uid not in (0, euid):
                problem = f"is owned by uid {st.st_uid}, not root"
            elif st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != 0):
                if own or not st.st_mode & stat.S_ISVTX:
                    problem = f"is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'} " \
                              f"(mode {stat.S_IMODE(st.st_mode):04o})"
            if problem:
                raise UsageError(f"state directory {directory}: {path} {problem}; anyone who can write it "
                                 "could make cnetctl change what it should not. Make it writable by root only "
                                 f"(chmod go-w {path}) or choose another --state-dir")
        if path == os.path.dirname(path):
            return
        own = own and st is None   # a state directory yet to be created: its parent stands for it
        path = os.path.dirname(path)


def state_dir(override: str | None = None) -> str:
    return override or os.environ.get("CNETCTL_STATE_DIR") or DEFAULT_STATE_DIR


def _ns_key(ns: str | None) -> str:
    return ns or ""


@dataclass
class State:
    name: str
    directory: str
    nodes: dict[str, str | None] = field(default_factory=dict)
    sysctl_originals: dict[str, dict[str, str]] = field(default_factory=dict)
    host_resources: list[dict[str, Any]] = field(default_factory=list)
    device_originals: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifest: str | None = None
    nat_backend: str | None = None
    applied_at: float | None = None
    host: str | None = None     # with hosts:, the machine whose slice is applied here
    exists: bool = False

    @property
    def path(self) -> str:
        return os.path.join(self.directory, f"{self.name}.json")

    # --- persistence ---------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, directory: str) -> State:
        """The state file, every value checked: what fails is reported (a warning naming the
        file) and left out. A corrupt file must not block destroy (the labels still find
        everything), and a value read back must never steer a write (a sysctl key joined to
        /proc/sys, a netns name joined to /run/netns) outside what cnetctl may touch."""
        st = cls(name, directory)
        if os.path.isdir(directory):
            check_state_dir(directory)
        data, problem = read_private(st.path)
        if problem:
            warn(f"state file {st.path} {problem}; ignoring it (the ownership labels still find what "
                 f"topology {name} owns)")
        if data is NOTHING:
            return st
        checked, problems = check_state(data, name)
        for p in problems[:5]:
            warn(f"state file {st.path}: {p}; left out")
        if len(problems) > 5:
            warn(f"state file {st.path}: {len(problems) - 5} more problems; left out")
        if checked is None:
            return st
        st.exists = True
        st.nodes = checked["nodes"]
        st.sysctl_originals = checked["sysctl_originals"]
        st.host_resources = checked["host_resources"]
        st.device_originals = checked["device_originals"]
        st.manifest = checked["manifest"]
        st.nat_backend = checked["nat_backend"]
        st.applied_at = checked["applied_at"]
        st.host = checked["host"]
        return st

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "name": self.name, "nodes": self.nodes, "manifest": self.manifest,
                "nat_backend": self.nat_backend, "applied_at": self.applied_at,
                "sysctl_originals": self.sysctl_originals, "host_resources": self.host_resources,
                "device_originals": self.device_originals, **({"host": self.host} if self.host else {})}

    def save(self) -> None:
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.to_json(), fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self.exists = True

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.exists = False

    @property
    def empty(self) -> bool:
        return not (self.sysctl_originals or self.host_resources or self.device_originals)

    # --- obligations ---------------------------------------------------------------------------
    # Sysctl keys are kept in one spelling (canonical_sysctl): net/ipv4/ip_forward of one
    # topology and net.ipv4.ip_forward of another must be one shared obligation to restore.
    def remember_sysctl(self, ns: str | None, key: str, original: str) -> None:
        key = canonical_sysctl(key)
        per_ns = self.sysctl_originals.setdefault(_ns_key(ns), {})
        if key not in per_ns:
            per_ns[key] = original
            self.save()

    def sysctl_original(self, ns: str | None, key: str) -> str | None:
        return self.sysctl_originals.get(_ns_key(ns), {}).get(canonical_sysctl(key))

    def forget_sysctl(self, ns: str | None, key: str) -> None:
        per_ns = self.sysctl_originals.get(_ns_key(ns), {})
        if per_ns.pop(canonical_sysctl(key), None) is not None:
            if not per_ns:
                self.sysctl_originals.pop(_ns_key(ns), None)
            self.save()

    def forget_netns(self, ns: str) -> None:
        if self.sysctl_originals.pop(ns, None) is not None:
            self.save()

    def host_sysctl_managers(self, key: str) -> dict[str, str]:
        """Other topologies that also manage host sysctl `key` -> the original they recorded.

        Read under the host lock: every apply/destroy that changes host sysctls holds it."""
        out = {}
        for other in list_state_names(self.directory):
            if other != self.name:
                original = State.load(other, self.directory).sysctl_original(None, key)
                if original is not None:
                    out[other] = original
        return out

    def managed_sysctls(self) -> list[tuple[str | None, str]]:
        return [(ns or None, key) for ns, keys in self.sysctl_originals.items() for key in keys]

    def remember_host(self, res: Resource) -> None:
        data = res.to_json()
        if data not in self.host_resources:
            self.host_resources.append(data)
            self.save()

    def forget_host(self, res: Resource) -> None:
        kept = [r for r in self.host_resources if resource_from_json(r).key != res.key]
        if len(kept) != len(self.host_resources):
            self.host_resources = kept
            self.save()

    def host_records(self) -> list[Resource]:
        return [resource_from_json(r) for r in self.host_resources]

    def remember_device(self, ifname: str, live: Any) -> None:
        if ifname not in self.device_originals and live is not None:
            self.device_originals[ifname] = {"mtu": live.mtu}
            self.save()

    def forget_device(self, ifname: str) -> None:
        if self.device_originals.pop(ifname, None) is not None:
            self.save()


def other_host_owners(state: State) -> dict[tuple[Any, ...], str]:
    """Host addresses, routes and rules recorded by the other topologies -> which one."""
    out: dict[tuple[Any, ...], str] = {}
    for other in list_state_names(state.directory):
        if other != state.name:
            for record in State.load(other, state.directory).host_records():
                out.setdefault(record.key, other)
    return out


def list_state_names(directory: str) -> list[str]:
    try:
        # Only names a topology can have: a planted "x y.json" names nothing cnetctl made.
        return sorted(f[:-5] for f in os.listdir(directory) if f.endswith(".json") and is_topology_name(f[:-5]))
    except FileNotFoundError:
        return []


class TopologyLock:
    """flock on <state dir>/<name>.lock: one cnetctl at a time changes a topology.

    The lock file may be removed by its holder (`release(remove=True)`, when destroy is
    done): whoever opened the old file before that and gets its flock afterwards finds
    that the path no longer names that file, and locks the new one instead."""

    def __init__(self, name: str, directory: str, timeout: float = 30.0, filename: str | None = None):
        self.name, self.directory, self.timeout = name, directory, timeout
        self.filename = filename or f"{name}.lock"
        self.fd: int | None = None
        self.remove_on_exit = False

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.filename)

    def __enter__(self) -> TopologyLock:
        try:
            os.makedirs(self.directory, mode=0o755, exist_ok=True)
        except PermissionError as err:
            raise NotPermitted(f"cannot write the state directory {self.directory}: {err.strerror}; "
                                   "run as root (sudo) or set --state-dir") from err
        check_state_dir(self.directory)
        deadline = time.monotonic() + self.timeout
        while True:
            fd = self._open()
            try:
                self._wait(fd, deadline)
            except BaseException:
                os.close(fd)
                raise
            if self._still_named(fd):
                self.fd = fd
                return self
            os.close(fd)   # removed (or replaced) while we waited: lock what the path names now

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except PermissionError as err:
            raise NotPermitted(f"cannot write the state directory {self.directory}: {err.strerror}; "
                                   "run as root (sudo) or set --state-dir") from err
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise UsageError(f"lock file {self.path} is a symbolic link; cnetctl does not follow links in "
                                 "its state directory: remove it") from None
            raise

    def _wait(self, fd: int, deadline: float) -> None:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    what = "the host's shared network state" if self.name == "host" else f"topology {self.name}"
                    raise LockedError(f"{what} is locked by another cnetctl "
                                      f"(waited {self.timeout:g} s; raise --lock-timeout to wait longer)") from None
                time.sleep(0.05)

    def _still_named(self, fd: int) -> bool:
        try:
            named = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def release(self, remove: bool = False) -> None:
        """Unlock; with remove=True delete the lock file first, while still holding it (so a
        waiter on the old file sees it is gone). Idempotent."""
        if self.fd is None:
            return
        try:
            if remove:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __exit__(self, *exc: object) -> None:
        self.release(remove=self.remove_on_exit)
