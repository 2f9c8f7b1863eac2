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
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import LockedError, PermissionError_
from .model.resources import Resource, resource_from_json

DEFAULT_STATE_DIR = "/var/lib/cnetctl"
FORMAT = 1


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
    exists: bool = False

    @property
    def path(self) -> str:
        return os.path.join(self.directory, f"{self.name}.json")

    # --- persistence ---------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, directory: str) -> State:
        st = cls(name, directory)
        try:
            with open(st.path) as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return st
        except (OSError, ValueError):
            # A corrupt state file must not block destroy: the labels still find everything.
            return st
        st.exists = True
        st.nodes = data.get("nodes", {})
        st.sysctl_originals = data.get("sysctl_originals", {})
        st.host_resources = data.get("host_resources", [])
        st.device_originals = data.get("device_originals", {})
        st.manifest = data.get("manifest")
        st.nat_backend = data.get("nat_backend")
        st.applied_at = data.get("applied_at")
        return st

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "name": self.name, "nodes": self.nodes, "manifest": self.manifest,
                "nat_backend": self.nat_backend, "applied_at": self.applied_at,
                "sysctl_originals": self.sysctl_originals, "host_resources": self.host_resources,
                "device_originals": self.device_originals}

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
    def remember_sysctl(self, ns: str | None, key: str, original: str) -> None:
        per_ns = self.sysctl_originals.setdefault(_ns_key(ns), {})
        if key not in per_ns:
            per_ns[key] = original
            self.save()

    def sysctl_original(self, ns: str | None, key: str) -> str | None:
        return self.sysctl_originals.get(_ns_key(ns), {}).get(key)

    def forget_sysctl(self, ns: str | None, key: str) -> None:
        per_ns = self.sysctl_originals.get(_ns_key(ns), {})
        if per_ns.pop(key, None) is not None:
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
        return sorted(f[:-5] for f in os.listdir(directory) if f.endswith(".json") and not f.startswith("."))
    except FileNotFoundError:
        return []


class TopologyLock:
    """flock on <state dir>/<name>.lock: one cnetctl at a time changes a topology."""

    def __init__(self, name: str, directory: str, timeout: float = 30.0, filename: str | None = None):
        self.name, self.directory, self.timeout = name, directory, timeout
        self.filename = filename or f"{name}.lock"
        self.fd: int | None = None

    def __enter__(self) -> TopologyLock:
        try:
            os.makedirs(self.directory, mode=0o755, exist_ok=True)
            self.fd = os.open(os.path.join(self.directory, self.filename), os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError as err:
            raise PermissionError_(f"cannot write the state directory {self.directory}: {err.strerror}; "
                                   "run as root (sudo) or set --state-dir") from err
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    self.fd = None
                    what = "the host's shared network state" if self.name == "host" else f"topology {self.name}"
                    raise LockedError(f"{what} is locked by another cnetctl "
                                      f"(waited {self.timeout:g} s; raise --lock-timeout to wait longer)") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
