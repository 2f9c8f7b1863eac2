"""Routes in any table, policy rules, and the kernel's own route lookup (`ip route get`)."""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import rt_type

from .. import RTPROT_CNETCTL
from ..model.resources import Route, Rule
from .errnos import REJECT_ERRNO, ROUTE_ERRORS, errno_name
from .links import get_index
from .netns import is_errno

# The one route-type table (RTN_* of linux/rtnetlink.h): number -> the name `ip route` prints.
RT_TYPE_NAME: dict[int, str] = {v: k for k, v in rt_type.items() if isinstance(v, int)}

RTNH_F_ONLINK = 0x4
RTM_F_LOOKUP_TABLE = 0x1000
RT_SCOPE_NOWHERE = 255
FAMILIES = (socket.AF_INET, socket.AF_INET6)


def rt_type_name(number: int) -> str:
    return RT_TYPE_NAME.get(number, str(number))


def _dst(msg: Any, family: int) -> str:
    dst = msg.get("dst")
    if dst is None:
        return "0.0.0.0/0" if family == socket.AF_INET else "::/0"
    return f"{dst}/{msg['dst_len']}"


def dump_routes(ipr: IPRoute, ns: str | None, names: dict[int, str], proto: int = RTPROT_CNETCTL) -> list[Route]:
    """Routes of routing protocol `proto`, all tables, as Route records."""
    out = []
    for family in FAMILIES:
        for msg in ipr.route("dump", family=family):
            if msg["proto"] != proto:
                continue
            oif = msg.get("oif")
            out.append(Route(
                ns=ns, family=family, table=msg.get("table") or msg["table"], dst=_dst(msg, family),
                metric=msg.get("priority") or 0, type=rt_type_name(msg["type"]),
                via=msg.get("gateway"), dev=names.get(oif) if oif else None, src=msg.get("prefsrc"),
                scope=msg["scope"], onlink=True if msg["flags"] & RTNH_F_ONLINK else None,
            ))
    return out


def _route_args(r: Route, ipr: IPRoute) -> dict[str, Any]:
    args: dict[str, Any] = dict(family=r.family, dst=r.dst, table=r.table, priority=r.metric,
                                proto=RTPROT_CNETCTL, type=r.type)
    if r.via:
        args["gateway"] = r.via
    if r.dev:
        args["oif"] = get_index(ipr, r.dev)
    if r.src:
        args["prefsrc"] = r.src
    if r.scope is not None:
        args["scope"] = r.scope
    if r.onlink:
        args["flags"] = RTNH_F_ONLINK
    return args


def add_route(ipr: IPRoute, r: Route) -> None:
    ipr.route("add", **_route_args(r, ipr))


def replace_route(ipr: IPRoute, r: Route) -> None:
    ipr.route("replace", **_route_args(r, ipr))


def delete_route(ipr: IPRoute, r: Route) -> None:
    # Matching on proto 147 means the kernel itself refuses to delete a route that
    # is not ours; scope NOWHERE means "any scope" (as iproute2 sends).
    try:
        ipr.route("del", family=r.family, dst=r.dst, table=r.table, priority=r.metric,
                  proto=RTPROT_CNETCTL, type=r.type, scope=RT_SCOPE_NOWHERE)
    except NetlinkError as err:
        if not is_errno(err, errno.ESRCH, errno.ENOENT):
            raise


def dump_rules(ipr: IPRoute, ns: str | None, proto: int | None = RTPROT_CNETCTL) -> list[Rule]:
    out = []
    for family in FAMILIES:
        for msg in ipr.rule("dump", family=family):
            if msg["family"] != family or (proto is not None and msg.get("protocol") != proto):
                continue
            src, dst = msg.get("src"), msg.get("dst")
            out.append(Rule(
                ns=ns, family=family, priority=msg.get("priority") or 0, table=msg.get("table") or msg["table"],
                src=f"{src}/{msg['src_len']}" if src else None, dst=f"{dst}/{msg['dst_len']}" if dst else None,
                iif=msg.get("iifname"), oif=msg.get("oifname"),
                fwmark=msg.get("fwmark"), fwmask=msg.get("fwmask") if msg.get("fwmark") is not None else None,
            ))
    return out


def _rule_args(r: Rule) -> dict[str, Any]:
    args: dict[str, Any] = dict(family=r.family, priority=r.priority, table=r.table, protocol=RTPROT_CNETCTL)
    for name, value in (("src", r.src), ("dst", r.dst)):
        if value:
            addr, plen = value.split("/")
            args[name], args[f"{name}_len"] = addr, int(plen)
    if r.iif:
        args["iifname"] = r.iif
    if r.oif:
        args["oifname"] = r.oif
    if r.fwmark is not None:
        args["fwmark"] = r.fwmark
        args["fwmask"] = r.fwmask if r.fwmask is not None else 0xFFFFFFFF
    return args


def add_rule(ipr: IPRoute, r: Rule) -> None:
    ipr.rule("add", **_rule_args(r))


def delete_rule(ipr: IPRoute, r: Rule) -> None:
    try:
        ipr.rule("del", **_rule_args(r))
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


def route_get(ipr: IPRoute, to: str, src: str | None = None, iif: str | None = None,
              fwmark: int | None = None) -> RouteAnswer:
    """RTM_GETROUTE with RTM_F_LOOKUP_TABLE, so the reply names the table a rule chose."""
    family = socket.AF_INET6 if ipaddress.ip_address(to).version == 6 else socket.AF_INET
    args: dict[str, Any] = dict(family=family, dst=to, flags=RTM_F_LOOKUP_TABLE)
    if src:
        args["src"] = src
    if iif:
        args["iif"] = get_index(ipr, iif)
    if fwmark is not None:
        args["mark"] = fwmark
    try:
        (msg,) = ipr.route("get", **args)
    except NetlinkError as err:
        kind = ROUTE_ERRORS.get(err.code, f"error {err.code}")
        # "none": no route matched at all (ENETUNREACH), so a check can expect exactly that.
        typ = "none" if err.code == errno.ENETUNREACH else kind if kind in REJECT_ERRNO else None
        return RouteAnswer(ok=False, type=typ,
                           error=f"{kind} ({errno_name(err.code)})")
    names = {m["index"]: m.get("ifname") for m in ipr.link("dump")}
    oif = msg.get("oif")
    return RouteAnswer(ok=True, type=rt_type_name(msg["type"]),
                       table=msg.get("table") or msg["table"], via=msg.get("gateway"),
                       dev=names.get(oif) if oif else None, src=msg.get("prefsrc") or msg.get("src"))
