"""Interfaces: bridges, veth pairs, and settings (mtu, master, state, ifalias)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any, Literal

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import KernelError
from .netns import is_errno

IFF_UP = 0x1
NSID_NOT_ASSIGNED = (-1, 0xFFFFFFFF)  # NETNSA_NSID_NOT_ASSIGNED, signed or not


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


VXLAN_ATTRS = ("IFLA_VXLAN_ID", "IFLA_VXLAN_PORT", "IFLA_VXLAN_LOCAL", "IFLA_VXLAN_LOCAL6", "IFLA_VXLAN_GROUP",
               "IFLA_VXLAN_GROUP6", "IFLA_VXLAN_LINK", "IFLA_VXLAN_LEARNING")


def _info(msg: Any) -> tuple[tuple[str, Any], ...]:
    if msg.get(("linkinfo", "kind")) != "vxlan":
        return ()
    data = msg.get(("linkinfo", "data"))
    return tuple((name, data.get(name)) for name in VXLAN_ATTRS) if data is not None else ()


def _live_link(msg: Any) -> LiveLink:
    nsid = msg.get("link_netnsid")
    return LiveLink(
        index=msg["index"],
        ifname=msg.get("ifname"),
        kind=msg.get(("linkinfo", "kind")),
        alias=msg.get("ifalias"),
        mtu=msg.get("mtu"),
        master=msg.get("master") or None,
        up=bool(msg["flags"] & IFF_UP),
        peer_index=msg.get("link"),
        peer_netnsid=None if nsid is None or nsid in NSID_NOT_ASSIGNED else nsid,
        mac=msg.get("address"),
        info=_info(msg),
    )


def dump_links(ipr: IPRoute) -> list[LiveLink]:
    return [_live_link(msg) for msg in ipr.link("dump")]


def netns_ids(ipr: IPRoute, paths: dict[str | None, str]) -> dict[int, str | None]:
    """nsid -> namespace, as the namespace of `ipr` numbers the namespaces given as name -> path
    (RTM_GETNSID with NETNSA_FD, like `ip netns list-id`). A link dump has assigned an id to every
    namespace one of its links points into; a namespace without an id is left out."""
    out: dict[int, str | None] = {}
    for name, path in paths.items():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            reply = ipr.get_netnsid(fd=fd)
        except NetlinkError:
            reply = None
        finally:
            os.close(fd)
        nsid = reply.get("nsid") if reply else None
        if nsid is not None and nsid not in NSID_NOT_ASSIGNED:
            out[nsid] = name
    return out


def find_link(ipr: IPRoute, ifname: str) -> LiveLink | None:
    """One RTM_GETLINK by name (a dump would make creating N links cost N²)."""
    try:
        (msg,) = ipr.link("get", ifname=ifname)
    except NetlinkError as err:
        if is_errno(err, errno.ENODEV):
            return None
        raise
    return _live_link(msg)


def get_index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise KernelError(f"interface {ifname} not found")
    return int(found[0])


def create_bridge(ipr: IPRoute, ifname: str, alias: str) -> None:
    # STP off and no forward delay: ports forward at once, as docker0/cbr0 do.
    ipr.link("add", ifname=ifname, kind="bridge", br_stp_state=0, br_forward_delay=0)
    ipr.link("set", index=get_index(ipr, ifname), ifalias=alias)


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
        attrs["vxlan_link"] = get_index(ipr, dev)
    if mac:
        attrs["address"] = mac
    if netns_path is not None:
        attrs["net_ns_fd"] = netns_path
    ipr.link("add", ifname=ifname, kind="vxlan", **attrs)


def dump_fdb(ipr: IPRoute) -> dict[int, list[tuple[str, str]]]:
    """ifindex -> (mac, dst) of the VTEP entries (those with a destination: VXLAN devices)."""
    out: dict[int, list[tuple[str, str]]] = {}
    for msg in ipr.fdb("dump"):
        if msg.get("dst"):
            out.setdefault(msg["ifindex"], []).append((msg.get("lladdr"), msg.get("dst")))
    return out


def add_fdb(ipr: IPRoute, ifname: str, mac: str, dst: str) -> None:
    try:
        ipr.fdb("append", ifindex=get_index(ipr, ifname), lladdr=mac, dst=dst)
    except NetlinkError as err:
        if not is_errno(err, errno.EEXIST):
            raise


def delete_fdb(ipr: IPRoute, ifname: str, mac: str, dst: str) -> None:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return
    try:
        ipr.fdb("del", ifindex=found[0], lladdr=mac, dst=dst)
    except NetlinkError as err:
        if not is_errno(err, errno.ENOENT, errno.ENODEV):
            raise


NUD_PERMANENT = 0x80


def dump_neighbors(ipr: IPRoute) -> dict[int, list[tuple[str, str]]]:
    """ifindex -> (ip, mac) of the permanent (static) neighbour entries, one dump per namespace."""
    out: dict[int, list[tuple[str, str]]] = {}
    for msg in ipr.neigh("dump"):
        if msg["state"] & NUD_PERMANENT and msg.get("lladdr") and msg.get("dst"):
            out.setdefault(msg["ifindex"], []).append((msg.get("dst"), msg.get("lladdr")))
    return out


def set_neighbor(ipr: IPRoute, ifname: str, ip: str, mac: str) -> None:
    ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=get_index(ipr, ifname), state=NUD_PERMANENT)


def delete_neighbor(ipr: IPRoute, ifname: str, ip: str) -> None:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return
    try:
        ipr.neigh("del", dst=ip, ifindex=found[0])
    except NetlinkError as err:
        if not is_errno(err, errno.ENOENT, errno.ENODEV, errno.ESRCH):
            raise


def create_veth(ipr: IPRoute, ifname: str, peer_ifname: str, peer_netns_path: str | None) -> None:
    """One RTM_NEWLINK creates both ends, the peer directly in its namespace."""
    peer: dict[str, object] = {"ifname": peer_ifname}
    if peer_netns_path is not None:
        peer["net_ns_fd"] = peer_netns_path
    ipr.link("add", ifname=ifname, kind="veth", peer=peer)


def configure_link(ipr: IPRoute, ifname: str, *, alias: str | None = None, mtu: int | None = None,
                   master: str | None | Literal[False] = False, up: bool | None = None) -> None:
    """Set what is given; master=False leaves the master alone, None detaches."""
    index = get_index(ipr, ifname)
    attrs: dict[str, object] = {}
    if alias is not None:
        attrs["ifalias"] = alias
    if mtu is not None:
        attrs["mtu"] = mtu
    if master is not False:
        attrs["master"] = get_index(ipr, master) if master else 0
    if attrs:
        ipr.link("set", index=index, **attrs)
    if up is not None:
        ipr.link("set", index=index, state="up" if up else "down")


def delete_link(ipr: IPRoute, ifname: str) -> None:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return
    try:
        ipr.link("del", index=found[0])
    except NetlinkError as err:
        if not is_errno(err, errno.ENODEV):
            raise
