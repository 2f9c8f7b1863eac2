"""Namespaced sysctls through /proc/sys, read and written from inside the namespace."""

from __future__ import annotations

from .netns import run_in_netns


def sysctl_path(key: str) -> str:
    # A key in '/' form keeps dots in interface names (net/ipv4/conf/eth0.100/rp_filter).
    return "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))


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
