"""What cnetctl reads back from its own files (state file, journal), checked value by value.

Those files steer a root process: a sysctl key is joined to /proc/sys and written, a
netns name is joined to /run/netns, a host record decides what is deleted. So each
value must be what cnetctl itself would have written: the same checks as the
manifest (namespaced sysctl keys, netns and interface names, addresses), the right
types. What fails is left out and named, never raised: a corrupt file must not stop
destroy, which finds everything through the ownership labels anyway.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import math
import os
import stat
from collections.abc import Callable
from typing import Any

from .model.resources import Address, Resource, Route, Rule
from .model.topology import (
    ROUTE_TYPES,
    U32_MAX,
    canonical_sysctl,
    control_character,
    ifname_problem,
    is_netns_name,
    is_node_name,
    sysctl_key_problem,
)

FORMAT = 1
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_TEXT = 4096
HOST_KINDS: dict[str, type[Resource]] = {"address": Address, "route": Route, "rule": Rule}


NOTHING = object()   # read_private: no file, or none to use


def read_private(path: str) -> tuple[Any, str | None]:
    """(parsed JSON, None), (NOTHING, None) when there is no file, or (NOTHING, what is wrong).

    Refuses a symlink, anything but a regular file, and a file someone other than root
    (or this user) owns or can write: its contents would be theirs, not cnetctl's."""
    raw, problem = read_private_bytes(path)
    if raw is None:
        return NOTHING, problem
    try:
        return json.loads(raw.decode("utf-8")), None
    except (ValueError, RecursionError) as err:
        return NOTHING, f"is not valid JSON ({str(err)[:120]})"


def read_private_bytes(path: str) -> tuple[bytes | None, str | None]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None, "is a symbolic link (cnetctl does not follow links in its state directory)"
        return None, f"cannot be read: {err.strerror or err}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "is not a regular file"
        if st.st_uid not in (0, os.geteuid()):
            return None, f"is owned by uid {st.st_uid}, not root"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None, f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
        if st.st_size > MAX_FILE_BYTES:
            return None, f"is {st.st_size} bytes, more than cnetctl ever writes"
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), None
    except OSError as err:
        return None, f"cannot be read: {err.strerror or err}"
    finally:
        os.close(fd)


def describe(value: Any) -> str:
    """A JSON value in a few words: 'a list', 'the string "x"', 'the number 5'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {str(value)[:20]}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def text(value: Any, limit: int = MAX_TEXT) -> bool:
    return isinstance(value, str) and len(value) <= limit and control_character(value) is None


def check_state(data: Any, name: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The state file's fields, each checked; None when the file as a whole is not a
    state file of topology `name` (then nothing in it is used)."""
    if not isinstance(data, dict):
        return None, [f"expected a JSON object, got {describe(data)}"]
    if data.get("format", FORMAT) != FORMAT:
        return None, [f"unknown format {describe(data.get('format'))} (this cnetctl writes format {FORMAT})"]
    if data.get("name", name) != name:
        return None, [f"names topology {describe(data.get('name'))}, not {name!r}"]
    problems: list[str] = []
    out = {
        "nodes": _nodes(data.get("nodes"), problems),
        "sysctl_originals": _sysctl_originals(data.get("sysctl_originals"), problems),
        "host_resources": _host_resources(data.get("host_resources"), problems),
        "device_originals": _device_originals(data.get("device_originals"), problems),
        "manifest": _scalar(data, "manifest", lambda v: text(v), problems),
        "nat_backend": _scalar(data, "nat_backend", lambda v: v in ("auto", "nftables", "iptables"), problems),
        "applied_at": _scalar(data, "applied_at", _timestamp, problems),
        "host": _scalar(data, "host", lambda v: isinstance(v, str) and is_node_name(v), problems),
    }
    return out, problems


def _timestamp(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _scalar(data: dict[str, Any], key: str, ok: Callable[[Any], bool], problems: list[str]) -> Any:
    value = data.get(key)
    if value is None or ok(value):
        return value
    problems.append(f"{key}: unexpected {describe(value)}")
    return None


def _mapping(value: Any, what: str, problems: list[str]) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{what}: expected an object, got {describe(value)}")
        return {}
    return value


def _nodes(value: Any, problems: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for node, ns in _mapping(value, "nodes", problems).items():
        # None: the machine's root namespace (`host`, or with hosts: the node named after the machine)
        if is_node_name(node) and ((ns is None) or (node != "host" and isinstance(ns, str) and is_netns_name(ns))):
            out[node] = ns
        else:
            problems.append(f"nodes[{node!r}]: not a node name with its netns name (got {describe(ns)})")
    return out


def _sysctl_originals(value: Any, problems: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for ns, keys in _mapping(value, "sysctl_originals", problems).items():
        if ns != "" and not is_netns_name(ns):
            problems.append(f"sysctl_originals[{ns!r}]: not a netns name")
            continue
        for key, original in _mapping(keys, f"sysctl_originals[{ns!r}]", problems).items():
            where = f"sysctl_originals[{ns!r}][{key!r}]"
            if sysctl_key_problem(key):
                problems.append(f"{where}: not a network-namespaced sysctl key")
            elif not text(original, 1024):
                problems.append(f"{where}: expected the original value as a string, got {describe(original)}")
            elif canonical_sysctl(key) in out.get(ns, {}):
                problems.append(f"{where}: recorded twice (another spelling of the same key)")
            else:
                out.setdefault(ns, {})[canonical_sysctl(key)] = original
    return out


def _host_resources(value: Any, problems: list[str]) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"host_resources: expected a list, got {describe(value)}")
        return []
    out = []
    for i, item in enumerate(value):
        problem = host_record_problem(item)
        if problem:
            problems.append(f"host_resources[{i}]: {problem}")
        elif item not in out:
            out.append(item)
    return out


def _device_originals(value: Any, problems: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for ifname, original in _mapping(value, "device_originals", problems).items():
        mtu = original.get("mtu") if isinstance(original, dict) else "?"
        if ifname_problem(ifname) or not isinstance(original, dict) or set(original) - {"mtu"} \
                or not (mtu is None or _int(mtu, 68, 65535)):
            problems.append(f"device_originals[{ifname!r}]: expected an interface name with "
                            f"{{\"mtu\": 68..65535}}, got {describe(original)}")
        else:
            out[ifname] = {"mtu": mtu}
    return out


def _int(v: Any, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _ip(v: Any) -> bool:
    try:
        return isinstance(v, str) and str(ipaddress.ip_address(v)) == v
    except ValueError:
        return False


def _net(v: Any) -> bool:
    try:
        return isinstance(v, str) and "/" in v and bool(ipaddress.ip_network(v, strict=False))
    except ValueError:
        return False


def _cidr(v: Any) -> bool:
    try:
        return isinstance(v, str) and "/" in v and bool(ipaddress.ip_interface(v))
    except ValueError:
        return False


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _name(v: Any) -> bool:
    return isinstance(v, str) and ifname_problem(v) is None


_FAMILY = (2, 10)   # AF_INET, AF_INET6
FIELD_CHECKS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "address": {"ns": lambda v: v is None, "ifname": _name, "cidr": _cidr},
    "route": {"ns": lambda v: v is None, "family": lambda v: v in _FAMILY and not isinstance(v, bool),
              "table": lambda v: _int(v, 1, U32_MAX), "dst": _net, "metric": lambda v: _int(v, 0, U32_MAX),
              "type": lambda v: v in ROUTE_TYPES, "via": _opt(_ip), "dev": _opt(_name), "src": _opt(_ip),
              "scope": _opt(lambda v: _int(v, 0, 255)), "onlink": _opt(lambda v: isinstance(v, bool))},
    "rule": {"ns": lambda v: v is None, "family": lambda v: v in _FAMILY and not isinstance(v, bool),
             "priority": lambda v: _int(v, 0, U32_MAX), "table": lambda v: _int(v, 1, U32_MAX),
             "src": _opt(_net), "dst": _opt(_net), "iif": _opt(_name), "oif": _opt(_name),
             "fwmark": _opt(lambda v: _int(v, 0, U32_MAX)), "fwmask": _opt(lambda v: _int(v, 0, U32_MAX))},
}


def host_record_problem(item: Any) -> str | None:
    """Why `item` is not a host address, route or rule record as cnetctl writes them."""
    if not isinstance(item, dict):
        return f"expected an object, got {describe(item)}"
    kind = item.get("kind")
    if kind not in HOST_KINDS:
        return f"unknown kind {describe(kind)} (expected address, route or rule)"
    fields = {f.name: f for f in dataclasses.fields(HOST_KINDS[kind])}
    unknown = set(item) - set(fields) - {"kind"}
    if unknown:
        return f"{kind} record with unknown keys {sorted(map(str, unknown))}"
    missing = [n for n, f in fields.items() if n not in item and f.default is dataclasses.MISSING]
    if missing:
        return f"{kind} record without {', '.join(missing)}"
    for key, value in item.items():
        if key != "kind" and not FIELD_CHECKS[kind][key](value):
            return f"{kind} record: {key} is {describe(value)}"
    return None


def check_journal_entry(entry: Any) -> tuple[int, str] | None:
    """(step, text) of a journal's 'start' record, None for anything else."""
    if isinstance(entry, dict) and _int(entry.get("start"), 1, 1 << 31) and text(entry.get("text"), 1024):
        return entry["start"], entry["text"]
    return None
