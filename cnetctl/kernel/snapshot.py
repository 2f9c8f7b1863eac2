"""The routing state of one namespace, read once for `explain`: every policy rule (any
owner), every route of every table, the addresses, and the sysctls the kernel's input and
output checks consult. Plain data: what to make of it is explain's business."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any, Union

from pyroute2 import IPRoute

from .routes import rt_type_name
from .sysctl import canonical_sysctl, conf_key, read_sysctls

IPAddr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNet = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPIface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]

# What explain is handed to reach the namespace it explains (a netlink socket in it).
NetlinkSocket = IPRoute

# fib rule actions (linux/fib_rules.h) and flags
FR_ACT_TO_TBL, FR_ACT_GOTO, FR_ACT_NOP, FR_ACT_BLACKHOLE, FR_ACT_UNREACHABLE, FR_ACT_PROHIBIT = 1, 2, 3, 6, 7, 8
FIB_RULE_INVERT, FIB_RULE_IIF_DETACHED, FIB_RULE_OIF_DETACHED = 0x2, 0x8, 0x10
RTNH_F_DEAD = 0x1
NO_SUPPRESS = 0xFFFFFFFF
LOCAL_TABLE, MAIN_TABLE, DEFAULT_TABLE = 255, 254, 253

# The per-interface knobs of net.*.conf.DEV the input path consults.
CONF_KNOBS = ("forwarding", "rp_filter", "accept_local", "send_redirects", "route_localnet")


@dataclass(frozen=True)
class KRule:
    """One policy rule as the kernel holds it (any owner)."""

    priority: int
    family: int
    action: int
    table: int = 0
    src: IPNet | None = None
    dst: IPNet | None = None
    iif: str | None = None
    oif: str | None = None
    flags: int = 0
    fwmark: int = 0
    fwmask: int = 0
    goto: int | None = None
    suppress_prefixlen: int = NO_SUPPRESS
    suppress_ifgroup: int = NO_SUPPRESS
    tos: int = 0
    ip_proto: int = 0
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    uid_range: tuple[int, int] | None = None
    l3mdev: bool = False
    protocol: int = 0

    @property
    def invert(self) -> bool:
        return bool(self.flags & FIB_RULE_INVERT)


@dataclass(frozen=True)
class KRoute:
    """One route of one table as the kernel holds it."""

    table: int
    family: int
    dst: IPNet
    type: str
    gateway: str | None = None
    dev: str | None = None
    metric: int = 0
    scope: int = 0
    prefsrc: str | None = None
    protocol: int = 0
    flags: int = 0
    tos: int = 0
    src: IPNet | None = None      # IPv6 source-specific route (RTA_SRC)
    multipath: tuple[tuple[str | None, str | None], ...] = ()

    @property
    def dead(self) -> bool:
        return bool(self.flags & RTNH_F_DEAD)


@dataclass
class Snapshot:
    """The routing state of one namespace, read once."""

    family: int
    rules: list[KRule]
    routes: dict[int, list[KRoute]]
    addresses: dict[str, list[IPIface]]   # ifname -> addresses
    sysctls: dict[str, str] = field(default_factory=dict)     # by canonical key
    links: list[str] = field(default_factory=list)

    def local_addresses(self) -> set[IPAddr]:
        return {a.ip for addrs in self.addresses.values() for a in addrs}

    @property
    def default_rules_only(self) -> bool:
        """Only the rules a fresh namespace has."""
        want = {(0, LOCAL_TABLE), (32766, MAIN_TABLE)}
        if self.family == socket.AF_INET:
            want.add((32767, DEFAULT_TABLE))
        return {(r.priority, r.table) for r in self.rules} == want and all(
            r.action == FR_ACT_TO_TBL and r.src is None and r.dst is None and not r.iif and not r.fwmask
            for r in self.rules)

    def sysctl(self, key: str, default: str = "0") -> str:
        return self.sysctls.get(canonical_sysctl(key), default)

    def conf_key(self, dev: str, knob: str) -> str:
        return conf_key("ipv4" if self.family == socket.AF_INET else "ipv6", dev, knob)

    def conf(self, dev: str, knob: str) -> tuple[int, int]:
        """(all, dev) values of net.FAMILY.conf.*.knob."""
        return int(self.sysctl(self.conf_key("all", knob))), int(self.sysctl(self.conf_key(dev, knob)))


def read_snapshot(ipr: IPRoute, ns: str | None, family: int, iif: str | None = None) -> Snapshot:
    """Snapshot of namespace `ns` (ipr: a netlink socket in it) for one family; `iif`: the
    interface whose own sysctls are read too."""
    names = {m["index"]: m.get("ifname") for m in ipr.link("dump")}
    links = [n for n in names.values() if n]
    # An interface that is not there has no sysctls (and its name may not even make a key).
    keys = _sysctl_keys(family, iif if iif in links else None)
    return Snapshot(family, _read_rules(ipr, family), _read_routes(ipr, family, names),
                    _read_addresses(ipr, family, names), read_sysctls(ns, keys), links)


def _net(addr: str | None, plen: int) -> IPNet | None:
    if addr is None:
        return None
    return ipaddress.ip_network(f"{addr}/{plen}", strict=False)


def _u32(v: int | None) -> int:
    return NO_SUPPRESS if v is None else v


def _range(attr: dict[str, int] | None) -> tuple[int, int] | None:
    return (attr["start"], attr["end"]) if attr else None


def _read_rules(ipr: IPRoute, family: int) -> list[KRule]:
    """The rules in the kernel's list order (priority, then insertion), the order it walks them."""
    return [_rule(m, family) for m in ipr.rule("dump", family=family) if m["family"] == family]


def _rule(m: Any, family: int) -> KRule:
    mark = m.get("FRA_FWMARK")
    mask = m.get("FRA_FWMASK")
    if mask is None:
        mask = 0xFFFFFFFF if mark else 0
    return KRule(
        priority=m.get("FRA_PRIORITY") or 0, family=family, action=m["action"], table=m.get("FRA_TABLE") or m["table"],
        src=_net(m.get("FRA_SRC"), m["src_len"]), dst=_net(m.get("FRA_DST"), m["dst_len"]),
        iif=m.get("FRA_IIFNAME"), oif=m.get("FRA_OIFNAME"), flags=m["flags"], fwmark=mark or 0, fwmask=mask,
        goto=m.get("FRA_GOTO"), suppress_prefixlen=_u32(m.get("FRA_SUPPRESS_PREFIXLEN")),
        suppress_ifgroup=_u32(m.get("FRA_SUPPRESS_IFGROUP")), tos=m["tos"], ip_proto=m.get("FRA_IP_PROTO") or 0,
        sport=_range(m.get("FRA_SPORT_RANGE")), dport=_range(m.get("FRA_DPORT_RANGE")),
        uid_range=_range(m.get("FRA_UID_RANGE")), l3mdev=bool(m.get("FRA_L3MDEV")),
        protocol=m.get("FRA_PROTOCOL") or 0)


def _read_routes(ipr: IPRoute, family: int, names: dict[int, str | None]) -> dict[int, list[KRoute]]:
    """Every table's routes, each in the kernel's dump order."""
    routes: dict[int, list[KRoute]] = {}
    for m in ipr.route("dump", family=family):
        if m["family"] == family:
            route = _route(m, family, names)
            routes.setdefault(route.table, []).append(route)
    return routes


def _route(m: Any, family: int, names: dict[int, str | None]) -> KRoute:
    table = m.get("RTA_TABLE") or m["table"]
    dst = _net(m.get("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::"), m["dst_len"])
    assert dst is not None
    nexthops = m.get("RTA_MULTIPATH") or []
    hops = tuple((nh.get("RTA_GATEWAY"), names.get(nh["oif"])) for nh in nexthops)
    flags = m["flags"]
    if hops and all(nh["flags"] & RTNH_F_DEAD for nh in nexthops):
        flags |= RTNH_F_DEAD
    oif = m.get("RTA_OIF")
    return KRoute(
        table=table, family=family, dst=dst, type=rt_type_name(m["type"]),
        gateway=m.get("RTA_GATEWAY"), dev=names.get(oif) if oif else None,
        metric=m.get("RTA_PRIORITY") or 0, scope=m["scope"], prefsrc=m.get("RTA_PREFSRC"),
        protocol=m["proto"], flags=flags, tos=m["tos"],
        src=_net(m.get("RTA_SRC"), m["src_len"]) if m["src_len"] else None, multipath=hops)


def _read_addresses(ipr: IPRoute, family: int, names: dict[int, str | None]) -> dict[str, list[IPIface]]:
    addresses: dict[str, list[IPIface]] = {n: [] for n in names.values() if n}
    for m in ipr.addr("dump", family=family):
        addr = m.get("IFA_LOCAL") or m.get("IFA_ADDRESS")
        name = names.get(m["index"])
        if addr and name:
            addresses[name].append(ipaddress.ip_interface(f"{addr}/{m['prefixlen']}"))
    return addresses


def _sysctl_keys(family: int, iif: str | None) -> list[str]:
    fam = "ipv4" if family == socket.AF_INET else "ipv6"
    keys = ["net.ipv4.ip_forward", conf_key(fam, "all", "forwarding")]
    for dev in ("all", iif) if iif else ("all",):
        keys += [conf_key(fam, dev, knob) for knob in CONF_KNOBS]
    return keys
