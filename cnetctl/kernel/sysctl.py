"""Namespaced sysctls through /proc/sys, read and written from inside the namespace."""

from __future__ import annotations

from ..errors import KernelError
from ..model.topology import sysctl_key_problem, sysctl_parts
from .netns import run_in_netns


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


def read_sysctl(ns: str | None, key: str) -> str | None:
    return run_in_netns(ns, _read, key)


def write_sysctl(ns: str | None, key: str, value: str) -> None:
    run_in_netns(ns, _write, key, value)
