"""Namespaced sysctls through /proc/sys, read and written from inside the namespace."""

from __future__ import annotations

from ..errors import KernelError
from ..model.topology import canonical_sysctl, sysctl_key_problem, sysctl_parts
from .netns import run_in_netns


def conf_key(family: str, dev: str, knob: str) -> str:
    """The key of net.FAMILY.conf.DEV.KNOB, in its one spelling: an interface name may hold a dot
    (eth0.100), so the key is built from its parts, never by gluing names with dots."""
    return canonical_sysctl("/".join(("net", family, "conf", dev, knob)))


def sysctl_path(key: str) -> str:
    # Both spellings (net.ipv4.conf.eth0/100.rp_filter, net/ipv4/conf/eth0.100/rp_filter) name
    # one file; a key that is not a namespaced net.* one never becomes a path at all.
    problem = sysctl_key_problem(key)
    if problem:
        raise KernelError(f"refusing sysctl key {key!r}: {problem}")
    return "/proc/sys/" + "/".join(sysctl_parts(key))


def _read(key: str) -> str | None:
    try:
        with open(sysctl_path(key)) as fh:
            return " ".join(fh.read().split())
    except FileNotFoundError:
        return None


def _write(key: str, value: str) -> None:
    with open(sysctl_path(key), "w") as fh:
        fh.write(value)


def _read_many(keys: list[str]) -> dict[str, str]:
    values = {key: _read(key) for key in keys}
    return {canonical_sysctl(key): value for key, value in values.items() if value is not None}


def read_sysctl(ns: str | None, key: str) -> str | None:
    return run_in_netns(ns, _read, key)


def read_sysctls(ns: str | None, keys: list[str]) -> dict[str, str]:
    """Several keys of `ns` at once, by their canonical spelling; a key with no file is left out."""
    return run_in_netns(ns, _read_many, keys)


def write_sysctl(ns: str | None, key: str, value: str) -> None:
    run_in_netns(ns, _write, key, value)
