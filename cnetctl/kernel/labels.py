"""Where the kernel keeps a namespace's ownership label: the ifalias of its lo."""

from __future__ import annotations

from .netns import Sockets
from .rtnl import IFINFO, IFLA_IFALIAS, RTM_GETLINK, NetlinkError, attrs, ifinfo, text

LO_INDEX = 1    # every namespace's lo, created with it


def lo_alias(sockets: Sockets, ns: str) -> str | None:
    """The ifalias of namespace `ns`'s lo; None when it has none, or when the namespace cannot
    be read (gone meanwhile, or a file under /run/netns that is no namespace)."""
    try:
        reply = sockets.nl(ns).get(RTM_GETLINK, ifinfo(LO_INDEX))
    except (OSError, NetlinkError, ValueError):
        return None
    return text(attrs(reply, IFINFO.size).get(IFLA_IFALIAS)) or None
