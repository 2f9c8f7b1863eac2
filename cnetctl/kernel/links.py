"""Interfaces: bridges, veth pairs, and settings (mtu, master, state, ifalias)."""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import KernelError
from . import rtnl
from .netns import is_errno
from .rtnl import NetlinkError, Rtnl

if TYPE_CHECKING:
    from pyroute2 import IPRoute

IFF_UP = rtnl.IFF_UP
NSID_NOT_ASSIGNED = (-1, 0xFFFFFFFF)
IFLA_OPERSTATE, IF_OPER_UP = 16, 6  # NETNSA_NSID_NOT_ASSIGNED, signed or not


@dataclass(frozen=True)
class LiveLink:
    """What the kernel says about one interface."""

    index: int
    ifname: str
    kind: str | None        # 'bridge', 'veth', None for devices without linkinfo
    alias: str | None
    mtu: int
    master: int | None      # ifindex of the master, same namespace
    up: bool
    peer_index: int | None  # IFLA_LINK: for a veth, the peer's ifindex in the peer's namespace
    # IFLA_LINK_NETNSID: the peer's namespace, by the id this link's namespace gives it (see
    # netns_ids); None when the peer is in this link's own namespace.
    peer_netnsid: int | None = None
    mac: str | None = None
    # IFLA_INFO_DATA of kinds that have attributes of their own (a VXLAN's vni, port …)
    info: tuple[tuple[str, Any], ...] = ()
    running: bool = False   # IFLA_OPERSTATE is UP: the kernel has activated its queue (linkwatch ran)


# IFLA_VXLAN_* as pyroute2 names them: number, name, how the value is read
VXLAN_ATTRS = ((1, "IFLA_VXLAN_ID", "u32"), (15, "IFLA_VXLAN_PORT", "be16"), (4, "IFLA_VXLAN_LOCAL", "ip"),
               (17, "IFLA_VXLAN_LOCAL6", "ip"), (2, "IFLA_VXLAN_GROUP", "ip"), (16, "IFLA_VXLAN_GROUP6", "ip"),
               (3, "IFLA_VXLAN_LINK", "u32"), (7, "IFLA_VXLAN_LEARNING", "u8"))


def _vxlan_value(raw: bytes | None, how: str) -> Any:
    if raw is None:
        return None
    if how == "u32":
        return rtnl.u32(raw)
    if how == "be16":
        return int.from_bytes(raw[:2], "big")
    if how == "u8":
        return raw[0]
    return rtnl.ip_text(raw)


def _info(kind: str | None, linkinfo: dict[int, bytes]) -> tuple[tuple[str, Any], ...]:
    data = linkinfo.get(rtnl.IFLA_INFO_DATA)
    if kind != "vxlan" or data is None:
        return ()
    found = rtnl.attrs(data)
    return tuple((name, _vxlan_value(found.get(number), how)) for number, name, how in VXLAN_ATTRS)


def _live_link(msg: bytes) -> LiveLink:
    """A link from its RTM_NEWLINK message (ifinfomsg and attributes)."""
    _, _, index, flags, _ = rtnl.IFINFO.unpack_from(msg)
    found = rtnl.attrs(msg, rtnl.IFINFO.size)
    linkinfo = rtnl.attrs(found[rtnl.IFLA_LINKINFO]) if rtnl.IFLA_LINKINFO in found else {}
    kind = rtnl.text(linkinfo.get(rtnl.IFLA_INFO_KIND))
    nsid = found.get(rtnl.IFLA_LINK_NETNSID)
    netnsid = rtnl.S32.unpack_from(nsid)[0] if nsid is not None else None
    return LiveLink(
        index=index,
        ifname=rtnl.text(found.get(rtnl.IFLA_IFNAME)) or "",
        kind=kind,
        alias=rtnl.text(found.get(rtnl.IFLA_IFALIAS)),
        mtu=rtnl.u32(found.get(rtnl.IFLA_MTU)) or 0,
        master=rtnl.u32(found.get(rtnl.IFLA_MASTER)) or None,
        up=bool(flags & IFF_UP),
        peer_index=rtnl.u32(found.get(rtnl.IFLA_LINK)),
        peer_netnsid=None if netnsid is None or netnsid in NSID_NOT_ASSIGNED else netnsid,
        mac=rtnl.mac_text(found.get(rtnl.IFLA_ADDRESS)),
        info=_info(kind, linkinfo),
        running=found.get(IFLA_OPERSTATE, b"\0")[:1] == bytes([IF_OPER_UP]),
    )


def dump_links(nl: Rtnl) -> list[LiveLink]:
    return [_live_link(msg) for msg in nl.dump(rtnl.RTM_GETLINK, rtnl.ifinfo())]


def netns_ids(nl: Rtnl, paths: dict[str | None, str]) -> dict[int, str | None]:
    """nsid -> namespace, as the namespace of `nl` numbers the namespaces given as name -> path
    (RTM_GETNSID with NETNSA_FD, like `ip netns list-id`). A link dump has assigned an id to every
    namespace one of its links points into; a namespace without an id is left out."""
    out: dict[int, str | None] = {}
    for name, path in paths.items():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            reply: bytes | None = nl.get(rtnl.RTM_GETNSID, b"\0\0\0\0" + rtnl.attr_u32(rtnl.NETNSA_FD, fd))
        except NetlinkError:
            reply = None
        finally:
            os.close(fd)
        raw = rtnl.attrs(reply, 4).get(rtnl.NETNSA_NSID) if reply else None
        nsid = rtnl.S32.unpack_from(raw)[0] if raw is not None else None
        if nsid is not None and nsid not in NSID_NOT_ASSIGNED:
            out[nsid] = name
    return out


def _by_name(ifname: str) -> bytes:
    return rtnl.ifinfo() + rtnl.attr_str(rtnl.IFLA_IFNAME, ifname)


def find_link(nl: Rtnl, ifname: str) -> LiveLink | None:
    """One RTM_GETLINK by name (a dump would make creating N links cost N²)."""
    try:
        return _live_link(nl.get(rtnl.RTM_GETLINK, _by_name(ifname)))
    except NetlinkError as err:
        if is_errno(err, errno.ENODEV):
            return None
        raise


def lookup_index(nl: Rtnl, ifname: str) -> int | None:
    """The ifindex of `ifname`, None when there is no such interface (only the header is read)."""
    try:
        reply = nl.get(rtnl.RTM_GETLINK, _by_name(ifname))
    except NetlinkError as err:
        if is_errno(err, errno.ENODEV):
            return None
        raise
    return int(rtnl.IFINFO.unpack_from(reply)[2])


def get_index(nl: Rtnl, ifname: str) -> int:
    found = lookup_index(nl, ifname)
    if found is None:
        raise KernelError(f"interface {ifname} not found")
    return found


def set_link(nl: Rtnl, index: int, items: list[bytes], up: bool | None = None) -> None:
    """One RTM_NEWLINK changing link `index`: the attributes, then IFF_UP when `up` is given."""
    nl.request(rtnl.RTM_NEWLINK, rtnl.link_body(index, items, up))


def create_bridge(nl: Rtnl, ifname: str, alias: str) -> None:
    # STP off and no forward delay: ports forward at once, as docker0/cbr0 do.
    data = rtnl.attr_u32(rtnl.IFLA_BR_FORWARD_DELAY, 0) + rtnl.attr_u32(rtnl.IFLA_BR_STP_STATE, 0)
    nl.request(rtnl.RTM_NEWLINK, rtnl.link_body(0, [rtnl.attr_str(rtnl.IFLA_IFNAME, ifname),
                                                    rtnl.linkinfo("bridge", data)]), rtnl.CREATE)
    set_link(nl, get_index(nl, ifname), [rtnl.attr_str(rtnl.IFLA_IFALIAS, alias)])


def pyroute2_error() -> Any:
    """pyroute2's NetlinkError, for the requests still made through an IPRoute (which has
    imported pyroute2 by then: the import costs 0.1-0.2 s, so it is made only then)."""
    from pyroute2.netlink.exceptions import NetlinkError as PyNetlinkError
    return PyNetlinkError


def _ipr_index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise KernelError(f"interface {ifname} not found")
    return int(found[0])


def create_vxlan(ipr: IPRoute, ifname: str, vni: int, port: int, local: str | None, remote: str | None,
                 dev: str | None, learning: bool, mac: str | None, netns_path: str | None = None) -> None:
    """With netns_path, the device is created in that namespace while its UDP socket stays in
    the namespace of `ipr` (the kernel's link-netnsid)."""
    six = any(a and ":" in a for a in (local, remote))
    attrs: dict[str, Any] = {"vxlan_id": vni, "vxlan_port": port, "vxlan_learning": 1 if learning else 0}
    if local:
        attrs["vxlan_local6" if six else "vxlan_local"] = local
    if remote:
        attrs["vxlan_group6" if six else "vxlan_group"] = remote
    if dev:
        attrs["vxlan_link"] = _ipr_index(ipr, dev)
    if mac:
        attrs["address"] = mac
    if netns_path is not None:
        attrs["net_ns_fd"] = netns_path
    ipr.link("add", ifname=ifname, kind="vxlan", **attrs)


AF_BRIDGE = 7
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80


def _neighbour_dump(nl: Rtnl, family: int) -> list[tuple[int, int, str | None, str | None]]:
    """(ifindex, state, dst, lladdr) of every neighbour entry of `family` (AF_BRIDGE: fdb entries)."""
    out = []
    for msg in nl.dump(rtnl.RTM_GETNEIGH, rtnl.NDMSG.pack(family, 0, 0, 0, 0)):
        _, ifindex, state, _, _ = rtnl.NDMSG.unpack_from(msg)
        found = rtnl.attrs(msg, rtnl.NDMSG.size)
        out.append((ifindex, state, rtnl.ip_text(found.get(rtnl.NDA_DST)), rtnl.mac_text(found.get(rtnl.NDA_LLADDR))))
    return out


def dump_fdb(nl: Rtnl) -> dict[int, list[tuple[str, str]]]:
    """ifindex -> (mac, dst) of the static VTEP entries (those with a destination: VXLAN devices).
    Entries a VXLAN with learning on picks up from traffic (NUD_REACHABLE only) are the
    kernel's, not a declaration's: counting them made every learned peer look like drift."""
    out: dict[int, list[tuple[str, str]]] = {}
    for ifindex, state, dst, mac in _neighbour_dump(nl, AF_BRIDGE):
        if dst and mac and state & (NUD_PERMANENT | NUD_NOARP):
            out.setdefault(ifindex, []).append((mac, dst))
    return out


def add_fdb(ipr: IPRoute, ifname: str, mac: str, dst: str) -> None:
    try:
        ipr.fdb("append", ifindex=_ipr_index(ipr, ifname), lladdr=mac, dst=dst)
    except pyroute2_error() as err:
        if not is_errno(err, errno.EEXIST):
            raise


def delete_fdb(ipr: IPRoute, ifname: str, mac: str, dst: str) -> None:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return
    try:
        ipr.fdb("del", ifindex=found[0], lladdr=mac, dst=dst)
    except pyroute2_error() as err:
        if not is_errno(err, errno.ENOENT, errno.ENODEV):
            raise


def dump_neighbors(nl: Rtnl) -> dict[int, list[tuple[str, str]]]:
    """ifindex -> (ip, mac) of the permanent (static) neighbour entries, one dump per namespace."""
    out: dict[int, list[tuple[str, str]]] = {}
    for ifindex, state, dst, mac in _neighbour_dump(nl, 0):
        if state & NUD_PERMANENT and mac and dst:
            out.setdefault(ifindex, []).append((dst, mac))
    return out


def set_neighbor(ipr: IPRoute, ifname: str, ip: str, mac: str) -> None:
    ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=_ipr_index(ipr, ifname), state=NUD_PERMANENT)


def delete_neighbor(ipr: IPRoute, ifname: str, ip: str) -> None:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return
    try:
        ipr.neigh("del", dst=ip, ifindex=found[0])
    except pyroute2_error() as err:
        if not is_errno(err, errno.ENOENT, errno.ENODEV, errno.ESRCH):
            raise


def create_veth(nl: Rtnl, ifname: str, peer_ifname: str, peer_netns_path: str | None) -> None:
    """One RTM_NEWLINK creates both ends, the peer directly in its namespace."""
    fd = os.open(peer_netns_path, os.O_RDONLY | os.O_CLOEXEC) if peer_netns_path is not None else None
    try:
        peer = rtnl.attr_str(rtnl.IFLA_IFNAME, peer_ifname)
        if fd is not None:
            peer += rtnl.attr_u32(rtnl.IFLA_NET_NS_FD, fd)
        data = rtnl.attr(rtnl.VETH_INFO_PEER, rtnl.ifinfo() + peer)
        nl.request(rtnl.RTM_NEWLINK, rtnl.link_body(0, [rtnl.attr_str(rtnl.IFLA_IFNAME, ifname),
                                                        rtnl.linkinfo("veth", data)]), rtnl.CREATE)
    finally:
        if fd is not None:
            os.close(fd)


def configure_link(nl: Rtnl, ifname: str, *, alias: str | None = None, mtu: int | None = None,
                   master: str | None | Literal[False] = False, up: bool | None = None) -> None:
    """Set what is given (one request); master=False leaves the master alone, None detaches."""
    index = get_index(nl, ifname)
    items = []
    if alias is not None:
        items.append(rtnl.attr_str(rtnl.IFLA_IFALIAS, alias))
    if mtu is not None:
        items.append(rtnl.attr_u32(rtnl.IFLA_MTU, mtu))
    if master is not False:
        items.append(rtnl.attr_u32(rtnl.IFLA_MASTER, get_index(nl, master) if master else 0))
    if items or up is not None:
        set_link(nl, index, items, up)


def delete_link(nl: Rtnl, ifname: str) -> None:
    index = lookup_index(nl, ifname)
    if index is None:
        return
    try:
        nl.request(rtnl.RTM_DELLINK, rtnl.ifinfo(index))
    except NetlinkError as err:
        if not is_errno(err, errno.ENODEV):
            raise


def wait_links_gone(ifnames: Iterable[str], deadline: float) -> bool:
    """Until no interface named in `ifnames` is left in this process's namespace: the kernel
    deletes a dead namespace's veth peers some milliseconds to a second later, when its
    cleanup gets to them. Woken by the kernel's link notifications, not by polling; False
    when `deadline` (time.monotonic()) came first."""
    wanted = set(ifnames)
    if not wanted:
        return True
    with closing(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                               socket.NETLINK_ROUTE)) as monitor, closing(Rtnl(rtnl.new_socket())) as nl:
        monitor.bind((0, rtnl.RTMGRP_LINK))
        # Asked after subscribing: what went before is not there, what goes after is notified.
        left = {name for name in wanted if lookup_index(nl, name) is not None}
        while left:
            timeout = deadline - time.monotonic()
            if timeout <= 0 or not select.select([monitor], [], [], timeout)[0]:
                return False
            try:
                data = monitor.recv(rtnl.RECV_SIZE)
            except OSError:   # ENOBUFS: notifications were lost, so ask again
                left = {name for name in left if lookup_index(nl, name) is not None}
                continue
            for mtype, msg in rtnl.messages(data):
                if mtype == rtnl.RTM_DELLINK:
                    left.discard(rtnl.text(rtnl.attrs(msg, rtnl.IFINFO.size).get(rtnl.IFLA_IFNAME)) or "")
    return True


def wait_running(nl: Rtnl, ifnames: Iterable[str], deadline: float) -> bool:
    """Wait until each of these links (those that exist and are up) is operationally up.

    A veth pair's carrier comes on when its second end goes up, but the kernel starts
    transmitting on the first end only when linkwatch runs (deferred work, up to a second
    later, longer on a busy machine); until then its packets are dropped, and a ping sent
    right after apply can fail. False when the deadline passed first."""
    wanted = set(ifnames)
    while True:
        waiting = [link for link in dump_links(nl) if link.ifname in wanted and link.up and not link.running]
        if not waiting:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
