"""Routes in any table, policy rules, and the kernel's own route lookup (`ip route get`)."""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import RTPROT_CNETCTL
from ..model.resources import Route, Rule
from . import rtnl
from .errnos import REJECT_ERRNO, ROUTE_ERRORS, errno_name
from .links import _ipr_index, get_index, pyroute2_error
from .netns import is_errno
from .rtnl import NetlinkError, Rtnl

if TYPE_CHECKING:
    from pyroute2 import IPRoute

# The one route-type table (RTN_* of linux/rtnetlink.h): number -> the name `ip route` prints.
RT_TYPE_NAME: dict[int, str] = dict(enumerate(("unspec", "unicast", "local", "broadcast", "anycast", "multicast",
                                                "blackhole", "unreachable", "prohibit", "throw", "nat", "xresolve")))
RT_TYPE: dict[str, int] = {name: number for number, name in RT_TYPE_NAME.items()}

RTNH_F_ONLINK = 0x4
RTM_F_LOOKUP_TABLE = 0x1000
RT_SCOPE_NOWHERE = 255
IP6_RT_PRIO_USER = 1024   # what the kernel makes of metric 0 for IPv6 (pyroute2 sends it so)
FAMILIES = (socket.AF_INET, socket.AF_INET6)
DEFAULT_DST = {socket.AF_INET: "0.0.0.0/0", socket.AF_INET6: "::/0"}


def rt_type_name(number: int) -> str:
    return RT_TYPE_NAME.get(number, str(number))


@dataclass(frozen=True)
class LiveRoute:
    """One route of a dump, the fields cnetctl reads."""

    family: int
    table: int
    dst: str            # CIDR; 0.0.0.0/0 or ::/0 for default
    metric: int
    proto: int
    scope: int
    type: int
    flags: int
    via: str | None
    oif: int | None
    prefsrc: str | None


def _live_route(msg: bytes) -> LiveRoute:
    family, dst_len, _, _, table, proto, scope, rtype, flags = rtnl.RTMSG.unpack_from(msg)
    found = rtnl.attrs(msg, rtnl.RTMSG.size)
    dst = rtnl.ip_text(found.get(rtnl.RTA_DST))
    return LiveRoute(family, rtnl.u32(found.get(rtnl.RTA_TABLE)) or table,
                     f"{dst}/{dst_len}" if dst is not None else DEFAULT_DST.get(family, "0.0.0.0/0"),
                     rtnl.u32(found.get(rtnl.RTA_PRIORITY)) or 0, proto, scope, rtype, flags,
                     rtnl.ip_text(found.get(rtnl.RTA_GATEWAY)), rtnl.u32(found.get(rtnl.RTA_OIF)),
                     rtnl.ip_text(found.get(rtnl.RTA_PREFSRC)))


def live_routes(nl: Rtnl) -> list[LiveRoute]:
    """Every route of every table of the namespace of `nl`: one dump per family."""
    out = []
    for family in FAMILIES:
        for msg in nl.dump(rtnl.RTM_GETROUTE, rtnl.RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            route = _live_route(msg)
            if route.family == family:
                out.append(route)
    return out


def as_route(r: LiveRoute, ns: str | None, names: dict[int, str]) -> Route:
    """A route of ours as the Route record plan compares."""
    return Route(ns=ns, family=r.family, table=r.table, dst=r.dst, metric=r.metric, type=rt_type_name(r.type),
                 via=r.via, dev=names.get(r.oif) if r.oif else None, src=r.prefsrc, scope=r.scope,
                 onlink=True if r.flags & RTNH_F_ONLINK else None)


def dump_routes(nl: Rtnl, ns: str | None, names: dict[int, str], proto: int = RTPROT_CNETCTL,
                live: list[LiveRoute] | None = None) -> list[Route]:
    """Routes of routing protocol `proto`, all tables, as Route records (from `live`, a dump
    made already, when given)."""
    return [as_route(r, ns, names) for r in (live if live is not None else live_routes(nl)) if r.proto == proto]


def _route_body(r: Route, nl: Rtnl | None) -> bytes:
    """An rtmsg as pyroute2 sends it for route add/replace (nl given) or del (nl None: the key
    only, any scope)."""
    default = r.dst in DEFAULT_DST.values()
    addr, plen = ("", 0) if default else (r.dst.split("/")[0], int(r.dst.split("/")[1]))
    metric = IP6_RT_PRIO_USER if r.family == socket.AF_INET6 and r.metric == 0 else r.metric
    if nl is None:
        scope, flags = RT_SCOPE_NOWHERE, 0
    else:
        scope, flags = r.scope or 0, RTNH_F_ONLINK if r.onlink else 0
    body = rtnl.RTMSG.pack(r.family, plen, 0, 0, r.table if 0 < r.table < 255 else 254, RTPROT_CNETCTL, scope,
                           RT_TYPE[r.type], flags)
    if not default:
        body += rtnl.attr_ip(rtnl.RTA_DST, ipaddress.ip_address(addr).compressed)
    body += rtnl.attr_u32(rtnl.RTA_TABLE, r.table) + rtnl.attr_u32(rtnl.RTA_PRIORITY, metric)
    if nl is not None:
        if r.via:
            body += rtnl.attr_ip(rtnl.RTA_GATEWAY, r.via)
        if r.dev:
            body += rtnl.attr_u32(rtnl.RTA_OIF, get_index(nl, r.dev))
        if r.src:
            body += rtnl.attr_ip(rtnl.RTA_PREFSRC, r.src)
    return body


def add_route(nl: Rtnl, r: Route) -> None:
    nl.request(rtnl.RTM_NEWROUTE, _route_body(r, nl), rtnl.CREATE)


def replace_route(nl: Rtnl, r: Route) -> None:
    nl.request(rtnl.RTM_NEWROUTE, _route_body(r, nl), rtnl.REPLACE)


def delete_route(nl: Rtnl, r: Route) -> None:
    # Matching on proto 147 means the kernel itself refuses to delete a route that
    # is not ours; scope NOWHERE means "any scope" (as iproute2 sends).
    try:
        nl.request(rtnl.RTM_DELROUTE, _route_body(r, None))
    except NetlinkError as err:
        if not is_errno(err, errno.ESRCH, errno.ENOENT):
            raise


def _live_rule(msg: bytes, ns: str | None) -> tuple[int | None, Rule]:
    """(routing protocol, record) of one rule of a dump."""
    family, dst_len, src_len, _, table, _, _, _, _ = rtnl.RTMSG.unpack_from(msg)
    found = rtnl.attrs(msg, rtnl.RTMSG.size)
    src, dst = rtnl.ip_text(found.get(rtnl.FRA_SRC)), rtnl.ip_text(found.get(rtnl.FRA_DST))
    fwmark = rtnl.u32(found.get(rtnl.FRA_FWMARK))
    proto = found.get(rtnl.FRA_PROTOCOL)
    return proto[0] if proto else None, Rule(
        ns=ns, family=family, priority=rtnl.u32(found.get(rtnl.FRA_PRIORITY)) or 0,
        table=rtnl.u32(found.get(rtnl.FRA_TABLE)) or table,
        src=f"{src}/{src_len}" if src else None, dst=f"{dst}/{dst_len}" if dst else None,
        iif=rtnl.text(found.get(rtnl.FRA_IIFNAME)), oif=rtnl.text(found.get(rtnl.FRA_OIFNAME)),
        fwmark=fwmark, fwmask=rtnl.u32(found.get(rtnl.FRA_FWMASK)) if fwmark is not None else None)


def dump_rules(nl: Rtnl, ns: str | None, proto: int | None = RTPROT_CNETCTL) -> list[Rule]:
    out = []
    for family in FAMILIES:
        for msg in nl.dump(rtnl.RTM_GETRULE, rtnl.RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            rule_proto, rule = _live_rule(msg, ns)
            if rule.family != family or (proto is not None and rule_proto != proto):
                continue
            out.append(rule)
    return out


def _rule_body(r: Rule) -> bytes:
    """A fib_rule_hdr as pyroute2 sends it for rule add and del."""
    lens = {}
    items = [rtnl.attr_u32(rtnl.FRA_PRIORITY, r.priority), rtnl.attr_u32(rtnl.FRA_TABLE, r.table),
             rtnl.attr(rtnl.FRA_PROTOCOL, bytes([RTPROT_CNETCTL]))]
    for kind, value in ((rtnl.FRA_SRC, r.src), (rtnl.FRA_DST, r.dst)):
        if value:
            addr, plen = value.split("/")
            lens[kind] = int(plen)
            items.append(rtnl.attr_ip(kind, ipaddress.ip_address(addr).compressed))
    if r.iif:
        items.append(rtnl.attr_str(rtnl.FRA_IIFNAME, r.iif))
    if r.oif:
        items.append(rtnl.attr_str(rtnl.FRA_OIFNAME, r.oif))
    if r.fwmark is not None:
        items.append(rtnl.attr_u32(rtnl.FRA_FWMARK, r.fwmark))
        items.append(rtnl.attr_u32(rtnl.FRA_FWMASK, r.fwmask if r.fwmask is not None else 0xFFFFFFFF))
    header = rtnl.RTMSG.pack(r.family, lens.get(rtnl.FRA_DST, 0), lens.get(rtnl.FRA_SRC, 0), 0,
                             r.table if 0 <= r.table <= 255 else 252, 0, 0, rtnl.FR_ACT_TO_TBL, 0)
    return header + b"".join(items)


def add_rule(nl: Rtnl, r: Rule) -> None:
    nl.request(rtnl.RTM_NEWRULE, _rule_body(r), rtnl.CREATE)


def delete_rule(nl: Rtnl, r: Rule) -> None:
    try:
        nl.request(rtnl.RTM_DELRULE, _rule_body(r))
    except NetlinkError as err:
        if not is_errno(err, errno.ENOENT, errno.ESRCH):
            raise


@dataclass(frozen=True)
class RouteAnswer:
    """The kernel's answer to `ip route get`."""

    ok: bool
    type: str | None = None
    table: int | None = None
    via: str | None = None
    dev: str | None = None
    src: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def route_get(sock: Rtnl | IPRoute, to: str, src: str | None = None, iif: str | None = None,
              fwmark: int | None = None) -> RouteAnswer:
    """RTM_GETROUTE with RTM_F_LOOKUP_TABLE, so the reply names the table a rule chose. `sock`:
    a namespace's Rtnl (route checks), or a pyroute2 IPRoute (explain, which reads through one)."""
    if not isinstance(sock, Rtnl):
        return _route_get_pyroute2(sock, to, src, iif, fwmark)
    family = socket.AF_INET6 if ipaddress.ip_address(to).version == 6 else socket.AF_INET
    full = 128 if family == socket.AF_INET6 else 32
    # As pyroute2 sends it: host prefixes, table 254 in the header, the rest as attributes.
    body = rtnl.RTMSG.pack(family, full, full if src else 0, 0, 254, 0, 0, 0, RTM_F_LOOKUP_TABLE)
    body += rtnl.attr_ip(rtnl.RTA_DST, ipaddress.ip_address(to).compressed)
    if src:
        body += rtnl.attr_ip(RTA_SRC, ipaddress.ip_address(src).compressed)
    if iif:
        body += rtnl.attr_u32(RTA_IIF, get_index(sock, iif))
    if fwmark is not None:
        body += rtnl.attr_u32(RTA_MARK, fwmark)
    try:
        msg = sock.get(rtnl.RTM_GETROUTE, body)
    except NetlinkError as err:
        return _route_error(err.code)
    _, _, _, _, table, _, _, rtype, _ = rtnl.RTMSG.unpack_from(msg)
    found = rtnl.attrs(msg, rtnl.RTMSG.size)
    oif = rtnl.u32(found.get(rtnl.RTA_OIF))
    dev = None
    if oif:
        try:
            dev = rtnl.text(rtnl.attrs(sock.get(rtnl.RTM_GETLINK, rtnl.ifinfo(oif)), rtnl.IFINFO.size)
                            .get(rtnl.IFLA_IFNAME))
        except NetlinkError:
            dev = None
    return RouteAnswer(ok=True, type=rt_type_name(rtype), table=rtnl.u32(found.get(rtnl.RTA_TABLE)) or table,
                       via=rtnl.ip_text(found.get(rtnl.RTA_GATEWAY)), dev=dev,
                       src=rtnl.ip_text(found.get(rtnl.RTA_PREFSRC)) or rtnl.ip_text(found.get(RTA_SRC)))


RTA_SRC, RTA_IIF, RTA_MARK = 2, 3, 16


def _route_error(code: int) -> RouteAnswer:
    kind = ROUTE_ERRORS.get(code, f"error {code}")
    # "none": no route matched at all (ENETUNREACH), so a check can expect exactly that.
    typ = "none" if code == errno.ENETUNREACH else kind if kind in REJECT_ERRNO else None
    return RouteAnswer(ok=False, type=typ, error=f"{kind} ({errno_name(code)})")


def _route_get_pyroute2(ipr: IPRoute, to: str, src: str | None, iif: str | None, fwmark: int | None
                        ) -> RouteAnswer:
    family = socket.AF_INET6 if ipaddress.ip_address(to).version == 6 else socket.AF_INET
    args: dict[str, Any] = dict(family=family, dst=to, flags=RTM_F_LOOKUP_TABLE)
    if src:
        args["src"] = src
    if iif:
        args["iif"] = _ipr_index(ipr, iif)
    if fwmark is not None:
        args["mark"] = fwmark
    try:
        (msg,) = ipr.route("get", **args)
    except pyroute2_error() as err:
        return _route_error(err.code)
    names = {m["index"]: m.get("ifname") for m in ipr.link("dump")}
    oif = msg.get("oif")
    return RouteAnswer(ok=True, type=rt_type_name(msg["type"]),
                       table=msg.get("table") or msg["table"], via=msg.get("gateway"),
                       dev=names.get(oif) if oif else None, src=msg.get("prefsrc") or msg.get("src"))
