"""Where the kernel keeps a namespace's ownership label: the ifalias of its lo."""

from __future__ import annotations

from pyroute2.netlink.exceptions import NetlinkError

from .netns import Sockets

LO_INDEX = 1    # every namespace's lo, created with it


def lo_alias(sockets: Sockets, ns: str) -> str | None:
    """The ifalias of namespace `ns`'s lo; None when it has none, or when the namespace cannot
    be read (gone meanwhile, or a file under /run/netns that is no namespace)."""
    try:
        (lo,) = sockets.get(ns).link("get", index=LO_INDEX)
    except (OSError, NetlinkError, ValueError):
        return None
    return lo.get("ifalias") or None
