"""IPv4/IPv6 addresses."""

from __future__ import annotations

import errno
import ipaddress
import socket

from . import rtnl
from .links import get_index, lookup_index
from .netns import is_errno
from .rtnl import NetlinkError, Rtnl

IFA_F_NODAD = 0x02


def dump_addresses(nl: Rtnl) -> list[tuple[int, str]]:
    """(ifindex, 'address/prefix') of every address."""
    out = []
    for msg in nl.dump(rtnl.RTM_GETADDR, rtnl.IFADDR.pack(0, 0, 0, 0, 0)):
        _, prefixlen, _, _, index = rtnl.IFADDR.unpack_from(msg)
        found = rtnl.attrs(msg, rtnl.IFADDR.size)
        addr = rtnl.ip_text(found.get(rtnl.IFA_ADDRESS)) or rtnl.ip_text(found.get(rtnl.IFA_LOCAL))
        if addr:
            out.append((index, str(ipaddress.ip_interface(f"{addr}/{prefixlen}"))))
    return out


def _body(index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface, flags: int | None = None) -> bytes:
    """An ifaddrmsg as pyroute2 sends it: IFA_LOCAL too for IPv4, the flags as IFA_FLAGS."""
    family = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
    body = rtnl.IFADDR.pack(family, iface.network.prefixlen, 0, 0, index)
    body += rtnl.attr_ip(rtnl.IFA_ADDRESS, str(iface.ip))
    if family == socket.AF_INET:
        body += rtnl.attr_ip(rtnl.IFA_LOCAL, str(iface.ip))
    if flags is not None:
        body += rtnl.attr_u32(rtnl.IFA_FLAGS, flags)
    return body


def add_address(nl: Rtnl, ifname: str, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    # IPv6: usable at once, no 1-2 s of "tentative" duplicate address detection.
    flags = IFA_F_NODAD if iface.version == 6 else None
    try:
        nl.request(rtnl.RTM_NEWADDR, _body(get_index(nl, ifname), iface, flags), rtnl.CREATE)
    except NetlinkError as err:
        if not is_errno(err, errno.EEXIST):
            raise


def delete_address(nl: Rtnl, ifname: str, cidr: str) -> None:
    index = lookup_index(nl, ifname)
    if index is None:
        return
    try:
        nl.request(rtnl.RTM_DELADDR, _body(index, ipaddress.ip_interface(cidr)))
    except NetlinkError as err:
        if not is_errno(err, errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
            raise
