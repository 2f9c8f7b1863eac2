"""IPv4/IPv6 addresses."""

from __future__ import annotations

import errno
import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .links import get_index
from .netns import is_errno

IFA_F_NODAD = 0x02


def dump_addresses(ipr: IPRoute) -> list[tuple[int, str]]:
    """(ifindex, 'address/prefix') of every address."""
    out = []
    for msg in ipr.addr("dump"):
        addr = msg.get("address") or msg.get("local")
        if addr:
            out.append((msg["index"], str(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))))
    return out


def add_address(ipr: IPRoute, ifname: str, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    kwargs: dict[str, object] = {}
    if iface.version == 6:
        # Usable at once: no 1-2 s of "tentative" duplicate address detection.
        kwargs["flags"] = IFA_F_NODAD
    try:
        ipr.addr("add", index=get_index(ipr, ifname), address=str(iface.ip),
                 prefixlen=iface.network.prefixlen, **kwargs)
    except NetlinkError as err:
        if not is_errno(err, errno.EEXIST):
            raise


def delete_address(ipr: IPRoute, ifname: str, cidr: str) -> None:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return
    iface = ipaddress.ip_interface(cidr)
    try:
        ipr.addr("del", index=found[0], address=str(iface.ip), prefixlen=iface.network.prefixlen,
                 family=socket.AF_INET6 if iface.version == 6 else socket.AF_INET)
    except NetlinkError as err:
        if not is_errno(err, errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
            raise
