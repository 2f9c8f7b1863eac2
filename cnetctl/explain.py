"""`cnetctl explain`: the path of one packet through a node's routing, in the kernel's own terms.

The answer is computed twice and the two must agree:

1. here, from what netlink shows: ALL the policy rules of the namespace in
   priority order (not only cnetctl's), each rule's selectors evaluated
   (from/to prefix, iif, oif, fwmark/mask, not, and the selectors a bare
   `ip route get` never matches: ipproto, ports, tos, l3mdev), `lookup TABLE`
   rules consulting that table by longest-prefix match (a table with no
   matching route, or a `throw` route, falls through to the next rule; a
   `suppress_prefixlength` rule ignores short answers), then the kernel's
   input/output checks (martians, source validation/rp_filter, forwarding);
2. by the kernel itself: RTM_GETROUTE with RTM_F_LOOKUP_TABLE (`route_get`).

A difference between the two is reported loudly (`agrees: false`, exit 1).

Modelled on net/ipv4/route.c (ip_route_input_slow, ip_route_output_key_hash_rcu,
__mkroute_output), net/ipv4/fib_frontend.c (fib_validate_source),
net/core/fib_rules.c (fib_rules_lookup) and net/ipv4/fib_rules.c /
net/ipv6/fib6_rules.c (rule match, action, suppress).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Union

from pyroute2 import IPRoute

from . import RTPROT_CNETCTL
from .kernel.netns import run_in_netns
from .kernel.routes import RTM_F_LOOKUP_TABLE, RouteAnswer, route_get  # noqa: F401  (flag documented above)

IPAddr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNet = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

TABLE_NAMES = {255: "local", 254: "main", 253: "default"}
RT_TYPES = {0: "unspec", 1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
            6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat", 11: "xresolve"}
PROTOS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra", 10: "mrt",
          11: "zebra", 12: "bird", 16: "dhcp", RTPROT_CNETCTL: "cnetctl"}

# fib rule actions (linux/fib_rules.h) and flags
FR_ACT_TO_TBL, FR_ACT_GOTO, FR_ACT_NOP, FR_ACT_BLACKHOLE, FR_ACT_UNREACHABLE, FR_ACT_PROHIBIT = 1, 2, 3, 6, 7, 8
FIB_RULE_INVERT, FIB_RULE_IIF_DETACHED, FIB_RULE_OIF_DETACHED = 0x2, 0x8, 0x10
RTNH_F_DEAD = 0x1
NO_SUPPRESS = 0xFFFFFFFF

# What a route type (or a reject rule) makes the lookup return (fib_props[] / ip6_rt_type_to_error).
TYPE_ERRNO = {"blackhole": errno.EINVAL, "unreachable": errno.EHOSTUNREACH, "prohibit": errno.EACCES}
VERDICT_OF_ERRNO = {errno.EHOSTUNREACH: "unreachable", errno.EINVAL: "blackhole", errno.EACCES: "prohibit",
                    errno.ENETUNREACH: "no route"}

LOOPBACK = "lo"


def _kernel_version() -> tuple[int, int]:
    try:
        major, minor = os.uname().release.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


# A reverse-path (rp_filter) failure: -EXDEV until 6.12; since 6.13 the input path returns
# drop reasons and RTM_GETROUTE turns every one of them into -EINVAL.
RPF_ERRNO = errno.EINVAL if _kernel_version() >= (6, 13) else errno.EXDEV


def table_name(table: int | None, names: dict[int, str] | None = None) -> str:
    if table is None:
        return "-"
    name = (names or {}).get(table) or TABLE_NAMES.get(table)
    return f"{name} ({table})" if name else str(table)


# --- what netlink shows ------------------------------------------------------------------------

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

    def text(self, names: dict[int, str] | None = None) -> str:
        """Like `ip rule show`."""
        parts = ["not"] if self.invert else []
        parts.append(f"from {self.src}" if self.src else "from all")
        if self.dst:
            parts.append(f"to {self.dst}")
        if self.tos:
            parts.append(f"tos {self.tos:#x}")
        if self.fwmark or self.fwmask:
            parts.append(f"fwmark {self.fwmark:#x}" + (f"/{self.fwmask:#x}" if self.fwmask != 0xFFFFFFFF else ""))
        if self.iif:
            parts.append(f"iif {self.iif}" + (" [detached]" if self.flags & FIB_RULE_IIF_DETACHED else ""))
        if self.oif:
            parts.append(f"oif {self.oif}" + (" [detached]" if self.flags & FIB_RULE_OIF_DETACHED else ""))
        if self.l3mdev:
            parts.append("l3mdev")
        if self.uid_range:
            parts.append(f"uidrange {self.uid_range[0]}-{self.uid_range[1]}")
        if self.ip_proto:
            parts.append(f"ipproto {self.ip_proto}")
        if self.sport:
            parts.append(f"sport {self.sport[0]}-{self.sport[1]}")
        if self.dport:
            parts.append(f"dport {self.dport[0]}-{self.dport[1]}")
        if self.action == FR_ACT_TO_TBL:
            parts.append(f"lookup {(names or {}).get(self.table) or TABLE_NAMES.get(self.table) or self.table}")
        elif self.action == FR_ACT_GOTO:
            parts.append(f"goto {self.goto}")
        elif self.action == FR_ACT_NOP:
            parts.append("nop")
        else:
            parts.append({FR_ACT_BLACKHOLE: "blackhole", FR_ACT_UNREACHABLE: "unreachable",
                          FR_ACT_PROHIBIT: "prohibit"}.get(self.action, f"action {self.action}"))
        if self.suppress_prefixlen != NO_SUPPRESS:
            parts.append(f"suppress_prefixlength {self.suppress_prefixlen}")
        if self.suppress_ifgroup != NO_SUPPRESS:
            parts.append(f"suppress_ifgroup {self.suppress_ifgroup}")
        return " ".join(parts)

    def match(self, flow: Flow) -> tuple[bool, str]:
        """fib_rule_match(): (matches, why not / what matched)."""
        ok, why = self._selectors(flow)
        if self.invert:
            return (not ok, "'not' selector: the inner selector did not match" if not ok
                    else f"'not' selector: inner selector matched ({why})")
        return ok, why

    def _selectors(self, flow: Flow) -> tuple[bool, str]:
        iif = flow.iif or LOOPBACK      # a locally generated packet comes "from" lo
        if self.iif and (self.flags & FIB_RULE_IIF_DETACHED or self.iif != iif):
            return False, (f"iif {self.iif} is not in this namespace" if self.flags & FIB_RULE_IIF_DETACHED
                           else f"iif is {iif}, not {self.iif}")
        if self.oif:
            # A route lookup without an output interface (flowi_oif 0) never matches an oif rule.
            return False, (f"oif {self.oif} is not in this namespace" if self.flags & FIB_RULE_OIF_DETACHED
                           else "no output interface is bound (oif rules match only sockets bound to one)")
        if (self.fwmark ^ flow.mark) & self.fwmask:
            return False, f"fwmark {flow.mark:#x} & {self.fwmask:#x} != {self.fwmark:#x}"
        if self.l3mdev:
            return False, "l3mdev rule: no VRF here"
        if self.uid_range and not self.uid_range[0] <= 0 <= self.uid_range[1]:
            return False, "uid 0 outside uidrange"
        if self.ip_proto:
            return False, f"ipproto {self.ip_proto}: the packet explained has no protocol (as `ip route get`)"
        if self.sport or self.dport:
            return False, "port range: the packet explained has no ports (as `ip route get`)"
        if self.src is not None:
            if self.src.prefixlen and (flow.src is None or flow.src not in self.src):
                return False, (f"from {self.src}: no source address given (the kernel looks up with 0)"
                               if flow.src is None else f"source {flow.src} not in {self.src}")
        if self.dst is not None and self.dst.prefixlen and flow.dst not in self.dst:
            return False, f"destination {flow.dst} not in {self.dst}"
        if self.tos:
            return False, f"tos {self.tos:#x}: the packet explained has tos 0"
        return True, "selector matches"

    def to_json(self, names: dict[int, str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"priority": self.priority, "rule": self.text(names)}
        if self.action == FR_ACT_TO_TBL:
            out["table"] = self.table
        out["protocol"] = PROTOS.get(self.protocol, str(self.protocol))
        return out


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

    def text(self) -> str:
        """Like `ip route show table all`."""
        dst = "default" if self.dst.prefixlen == 0 else (
            str(self.dst.network_address) if self.dst.prefixlen == self.dst.max_prefixlen else str(self.dst))
        parts = [] if self.type == "unicast" else [self.type]
        parts.append(dst)
        if self.src is not None:
            parts.append(f"from {self.src}")
        if self.gateway:
            parts.append(f"via {self.gateway}")
        if self.dev:
            parts.append(f"dev {self.dev}")
        for gw, dev in self.multipath:
            parts.append("nexthop" + (f" via {gw}" if gw else "") + (f" dev {dev}" if dev else ""))
        parts.append(f"table {TABLE_NAMES.get(self.table, self.table)}")
        if self.protocol and self.protocol != 4:
            parts.append(f"proto {PROTOS.get(self.protocol, self.protocol)}")
        if self.metric:
            parts.append(f"metric {self.metric}")
        if self.prefsrc:
            parts.append(f"src {self.prefsrc}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dst": str(self.dst), "type": self.type, "table": self.table}
        for k in ("gateway", "dev", "prefsrc"):
            if getattr(self, k):
                out["via" if k == "gateway" else k] = getattr(self, k)
        out.update(metric=self.metric, scope=self.scope, protocol=PROTOS.get(self.protocol, str(self.protocol)))
        if self.multipath:
            out["multipath"] = [{"via": gw, "dev": dev} for gw, dev in self.multipath]
        return out


@dataclass
class Snapshot:
    """The routing state of one namespace, read once."""

    family: int
    rules: list[KRule]
    routes: dict[int, list[KRoute]]
    addresses: dict[str, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]]   # ifname -> addresses
    sysctls: dict[str, str] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)

    def local_addresses(self) -> set[IPAddr]:
        return {a.ip for addrs in self.addresses.values() for a in addrs}

    @property
    def default_rules_only(self) -> bool:
        """Only the rules a fresh namespace has (IPv4: the kernel may still use its merged fast path)."""
        want = {(0, 255), (32766, 254), (32767, 253)} if self.family == socket.AF_INET else {(0, 255), (32766, 254)}
        return {(r.priority, r.table) for r in self.rules} == want and all(
            r.action == FR_ACT_TO_TBL and r.src is None and r.dst is None and not r.iif and not r.fwmask
            for r in self.rules)

    def sysctl(self, key: str, default: str = "0") -> str:
        return self.sysctls.get(key, default)

    def conf(self, dev: str, knob: str) -> tuple[int, int]:
        """(all, dev) values of net.ipv4.conf.*.knob."""
        fam = "ipv4" if self.family == socket.AF_INET else "ipv6"
        return (int(self.sysctl(f"net.{fam}.conf.all.{knob}")), int(self.sysctl(f"net.{fam}.conf.{dev}.{knob}")))


def _net(addr: str | None, plen: int, family: int) -> IPNet | None:
    if addr is None:
        return None
    return ipaddress.ip_network(f"{addr}/{plen}", strict=False)


def read_snapshot(ipr: IPRoute, ns: str | None, family: int, iif: str | None = None) -> Snapshot:
    names = {m["index"]: m.get("ifname") for m in ipr.link("dump")}
    rules = []
    for m in ipr.rule("dump", family=family):
        if m["family"] != family:
            continue
        table = m.get("FRA_TABLE") or m["table"]
        sport, dport, uid = m.get("FRA_SPORT_RANGE"), m.get("FRA_DPORT_RANGE"), m.get("FRA_UID_RANGE")
        mark = m.get("FRA_FWMARK")
        mask = m.get("FRA_FWMASK")
        if mask is None:
            mask = 0xFFFFFFFF if mark else 0
        rules.append(KRule(
            priority=m.get("FRA_PRIORITY") or 0, family=family, action=m["action"], table=table,
            src=_net(m.get("FRA_SRC"), m["src_len"], family), dst=_net(m.get("FRA_DST"), m["dst_len"], family),
            iif=m.get("FRA_IIFNAME"), oif=m.get("FRA_OIFNAME"), flags=m["flags"], fwmark=mark or 0, fwmask=mask,
            goto=m.get("FRA_GOTO"), suppress_prefixlen=_u32(m.get("FRA_SUPPRESS_PREFIXLEN")),
            suppress_ifgroup=_u32(m.get("FRA_SUPPRESS_IFGROUP")), tos=m["tos"], ip_proto=m.get("FRA_IP_PROTO") or 0,
            sport=(sport["start"], sport["end"]) if sport else None,
            dport=(dport["start"], dport["end"]) if dport else None,
            uid_range=(uid["start"], uid["end"]) if uid else None,
            l3mdev=bool(m.get("FRA_L3MDEV")), protocol=m.get("FRA_PROTOCOL") or 0))
    # The dump is the kernel's list order (priority, then insertion): keep it.
    routes: dict[int, list[KRoute]] = {}
    for m in ipr.route("dump", family=family):
        if m["family"] != family:
            continue
        table = m.get("RTA_TABLE") or m["table"]
        dst = _net(m.get("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::"), m["dst_len"], family)
        assert dst is not None
        hops = []
        for nh in m.get("RTA_MULTIPATH") or []:
            hops.append((nh.get("RTA_GATEWAY"), names.get(nh["oif"])))
        flags = m["flags"]
        if hops and all(nh["flags"] & RTNH_F_DEAD for nh in m.get("RTA_MULTIPATH") or []):
            flags |= RTNH_F_DEAD
        oif = m.get("RTA_OIF")
        routes.setdefault(table, []).append(KRoute(
            table=table, family=family, dst=dst, type=RT_TYPES.get(m["type"], str(m["type"])),
            gateway=m.get("RTA_GATEWAY"), dev=names.get(oif) if oif else None,
            metric=m.get("RTA_PRIORITY") or 0, scope=m["scope"], prefsrc=m.get("RTA_PREFSRC"),
            protocol=m["proto"], flags=flags, tos=m["tos"],
            src=_net(m.get("RTA_SRC"), m["src_len"], family) if m["src_len"] else None, multipath=tuple(hops)))
    addresses: dict[str, list[Any]] = {n: [] for n in names.values() if n}
    for m in ipr.addr("dump", family=family):
        addr = m.get("IFA_LOCAL") or m.get("IFA_ADDRESS")
        if addr and names.get(m["index"]):
            addresses[names[m["index"]]].append(ipaddress.ip_interface(f"{addr}/{m['prefixlen']}"))
    fam = "ipv4" if family == socket.AF_INET else "ipv6"
    keys = ["net.ipv4.ip_forward", f"net.{fam}.conf.all.forwarding"]
    for dev in ("all", iif) if iif else ("all",):
        keys += [f"net.{fam}.conf.{dev}.{k}" for k in ("forwarding", "rp_filter", "accept_local",
                                                          "send_redirects", "route_localnet")]
    return Snapshot(family, rules, routes, addresses, run_in_netns(ns, _read_sysctls, keys),
                    [n for n in names.values() if n])


def _u32(v: int | None) -> int:
    return NO_SUPPRESS if v is None else v


def _read_sysctls(keys: list[str]) -> dict[str, str]:
    out = {}
    for key in keys:
        try:
            with open("/proc/sys/" + key.replace(".", "/") if "/" not in key else key) as fh:
                out[key] = fh.read().strip()
        except OSError:
            pass
    return out


# --- the kernel's lookup, re-done ----------------------------------------------------------------

@dataclass(frozen=True)
class Flow:
    dst: IPAddr
    src: IPAddr | None = None
    iif: str | None = None      # None: generated on this node
    mark: int = 0


@dataclass
class Step:
    rule: KRule
    outcome: str        # skipped | no route | throw | suppressed | goto | nop | matched | not reached
    why: str
    route: KRoute | None = None

    def to_json(self, names: dict[int, str] | None = None) -> dict[str, Any]:
        out = {**self.rule.to_json(names), "outcome": self.outcome, "why": self.why}
        if self.route is not None:
            out["route"] = self.route.text()
        return out


@dataclass
class Lookup:
    """fib_lookup(): the rules walked, and the route (or the error) it ends with."""

    steps: list[Step]
    rule: KRule | None = None
    table: int | None = None
    route: KRoute | None = None
    error: int | None = None       # errno the lookup returns
    why: str = ""


def table_lookup(routes: list[KRoute], flow: Flow) -> KRoute | None:
    """fib_table_lookup / fib6_lookup: longest prefix, then lowest metric; dead nexthops skipped."""
    best: KRoute | None = None
    for r in routes:
        if r.dead or r.tos or flow.dst not in r.dst:
            continue
        if r.src is not None and (flow.src is None or flow.src not in r.src):
            continue
        if best is None or (r.dst.prefixlen, -r.metric) > (best.dst.prefixlen, -best.metric):
            best = r
    return best


def fib_lookup(snap: Snapshot, flow: Flow) -> Lookup:
    """fib_rules_lookup(): walk the rules in order; the first that decides wins."""
    rules = snap.rules
    steps: list[Step] = []
    i = 0
    hops = 0
    while i < len(rules):
        rule = rules[i]
        ok, why = rule.match(flow)
        if not ok:
            steps.append(Step(rule, "skipped", why))
            i += 1
            continue
        if rule.action == FR_ACT_GOTO:
            target = next((j for j, r in enumerate(rules) if r.priority == rule.goto), None)
            hops += 1
            if target is None or hops > len(rules):
                steps.append(Step(rule, "skipped", f"goto {rule.goto}: no rule has that priority"))
                i += 1
            else:
                steps.append(Step(rule, "goto", f"continue at priority {rule.goto}"))
                for j in range(i + 1, target):
                    steps.append(Step(rules[j], "not reached", f"jumped over by goto {rule.goto}"))
                i = target
            continue
        if rule.action == FR_ACT_NOP:
            steps.append(Step(rule, "nop", "matches, does nothing"))
            i += 1
            continue
        if rule.action in (FR_ACT_BLACKHOLE, FR_ACT_UNREACHABLE, FR_ACT_PROHIBIT):
            kind = {FR_ACT_BLACKHOLE: "blackhole", FR_ACT_UNREACHABLE: "unreachable",
                    FR_ACT_PROHIBIT: "prohibit"}[rule.action]
            err: int | None = TYPE_ERRNO[kind]
            if snap.family == socket.AF_INET6 and kind == "unreachable":
                err = errno.ENETUNREACH      # fib6_rule_action: FR_ACT_UNREACHABLE -> -ENETUNREACH
            steps.append(Step(rule, "matched", f"{kind} rule"))
            return _finish(Lookup(steps, rule, None, None, err, f"rule {rule.priority} says {kind}"), rules, i)
        if rule.action != FR_ACT_TO_TBL:
            steps.append(Step(rule, "skipped", f"unknown action {rule.action}"))
            i += 1
            continue
        route = table_lookup(snap.routes.get(rule.table, []), flow)
        if route is None:
            steps.append(Step(rule, "no route", f"table {table_name(rule.table)} has no route to {flow.dst}: "
                              "next rule"))
            i += 1
            continue
        if route.type == "throw":
            steps.append(Step(rule, "throw", f"throw route {route.dst} in table {table_name(rule.table)}: "
                              "next rule", route))
            i += 1
            continue
        if route.type not in TYPE_ERRNO and route.dst.prefixlen <= rule.suppress_prefixlen \
                and rule.suppress_prefixlen != NO_SUPPRESS:
            steps.append(Step(rule, "suppressed", f"route {route.dst} has prefix length {route.dst.prefixlen} "
                              f"<= suppress_prefixlength {rule.suppress_prefixlen}: next rule", route))
            i += 1
            continue
        steps.append(Step(rule, "matched", f"table {table_name(rule.table)}: {route.text()}", route))
        err = TYPE_ERRNO.get(route.type)
        return _finish(Lookup(steps, rule, rule.table, route, err,
                              f"{route.type} route in table {table_name(rule.table)}" if err else ""), rules, i)
    return Lookup(steps, None, None, None, errno.ENETUNREACH, "no rule found a route")


def _finish(lookup: Lookup, rules: list[KRule], i: int) -> Lookup:
    for rule in rules[i + 1:]:
        lookup.steps.append(Step(rule, "not reached", f"rule {lookup.rule.priority if lookup.rule else '?'} "
                                 "decided"))
    return lookup


# --- the verdict --------------------------------------------------------------------------------

@dataclass
class Answer:
    """What RTM_GETROUTE should say: a route, or an errno."""

    error: int | None = None
    type: str | None = None
    table: int | None = None
    via: str | None = None
    dev: str | None = None
    compare_table: bool = True

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"ok": False, "error": errno.errorcode.get(self.error, str(self.error))}
        return {"ok": True, **{k: v for k, v in (("type", self.type), ("table", self.table), ("via", self.via),
                                                  ("dev", self.dev)) if v is not None}}


@dataclass
class Explanation:
    topology: str
    node: str
    netns: str | None
    flow: Flow
    family: int
    lookup: Lookup
    answer: Answer
    verdict: str
    reason: str
    hooks: list[str]
    kernel: RouteAnswer | None = None
    mismatch: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    forwarding: dict[str, Any] | None = None
    table_names: dict[int, str] = field(default_factory=dict)

    @property
    def agrees(self) -> bool:
        return not self.mismatch

    def to_json(self) -> dict[str, Any]:
        route = self.lookup.route
        return {
            "topology": self.topology, "node": self.node, "netns": self.netns,
            "packet": {"family": "ipv4" if self.family == socket.AF_INET else "ipv6", "to": str(self.flow.dst),
                       "from": str(self.flow.src) if self.flow.src else None, "iif": self.flow.iif,
                       "fwmark": hex(self.flow.mark), "origin": "incoming" if self.flow.iif else "local"},
            "rules": [s.to_json(self.table_names) for s in self.lookup.steps],
            "matched_rule": self.lookup.rule.priority if self.lookup.rule else None,
            "table": self.lookup.table,
            "route": route.to_json() if route else None,
            "verdict": self.verdict, "reason": self.reason,
            "forwarding": self.forwarding,
            "hooks": self.hooks,
            "answer": self.answer.to_json(),
            "kernel": self.kernel.to_json() if self.kernel else None,
            "agrees": self.agrees, "mismatch": self.mismatch, "notes": self.notes,
        }


def _ename(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def _fail(code: int, why: str, lookup: Lookup | None = None) -> tuple[Lookup, Answer, str]:
    return (lookup or Lookup([]), Answer(error=code), why)


def _route_answer(lookup: Lookup, dev_local: bool = False) -> Answer:
    route = lookup.route
    assert route is not None
    via, dev = route.gateway, route.dev
    if route.multipath and not via and not dev:
        via, dev = route.multipath[0]
    if dev_local:
        return Answer(type="local", table=lookup.table, dev=LOOPBACK)
    return Answer(type=route.type, table=lookup.table, via=via, dev=dev)


def decide_v4(snap: Snapshot, flow: Flow, notes: list[str]) -> tuple[Lookup, Answer, str]:
    """The IPv4 route the kernel computes: (rule walk, expected RTM_GETROUTE answer, reason)."""
    dst, src = flow.dst, flow.src
    assert isinstance(dst, ipaddress.IPv4Address)
    zeronet = ipaddress.ip_network("0.0.0.0/8")
    lbcast = ipaddress.IPv4Address("255.255.255.255")
    if flow.iif is None:                     # ip_route_output_key_hash_rcu
        if src is not None:
            if src.is_multicast or src == lbcast or src in zeronet:
                return _fail(errno.EINVAL, f"source {src} is not a valid unicast source")
            owner = _local_dev_v4(snap, src)
            if owner is None:
                return _fail(errno.ENETUNREACH, f"source {src} is not an address of this node "
                             "(a locally generated packet must use one of its own)")
            if dst.is_multicast or dst == lbcast:
                # The kernel's "special hack": multicast/limited broadcast with a source leaves
                # through the interface that owns the source; no table is consulted.
                kind = "multicast" if dst.is_multicast else "broadcast"
                return Lookup([], why=f"{kind} from {src}: sent on {owner}, which owns the source"), \
                    Answer(type=kind, dev=owner, compare_table=False), \
                    f"{kind} from {src} leaves through {owner} (the interface owning the source); no table is consulted"
        if int(dst) == 0:
            lookup = Lookup([], why="destination 0.0.0.0 means this host")
            return lookup, Answer(type="local", dev=LOOPBACK, compare_table=False), "0.0.0.0 is this host (lo)"
        lookup = fib_lookup(snap, flow)
        if lookup.error is not None:
            return lookup, Answer(error=lookup.error), lookup.why
        route = lookup.route
        assert route is not None
        if route.type == "local":
            return lookup, Answer(type="local", table=lookup.table, dev=LOOPBACK), "a local address of this node"
        if dst == lbcast or route.type == "broadcast":
            return lookup, Answer(type="broadcast", table=lookup.table, dev=route.dev), "broadcast"
        if dst.is_multicast:
            via = route.gateway if route.dst.prefixlen >= 4 else None
            return lookup, Answer(type="multicast", table=lookup.table, via=via, dev=route.dev), "multicast"
        if route.type != "unicast":
            notes.append(f"route type {route.type}: not modelled in detail")
        return lookup, _route_answer(lookup), "unicast route"

    # ip_route_input_slow: a packet that arrived on flow.iif
    iif = flow.iif
    if iif not in snap.links:
        return _fail(errno.ENODEV, f"no interface {iif} in this namespace")
    s = src or ipaddress.IPv4Address(0)
    localnet = max(snap.conf(iif, "route_localnet")) > 0
    if dst.is_multicast:
        return _fail(errno.EINVAL, "multicast destination arriving from outside: not a member/mrouter "
                     "(not modelled further)")
    if s.is_multicast or s == lbcast:
        return _fail(errno.EINVAL, f"martian source {s}")
    if dst == lbcast or (int(s) == 0 and int(dst) == 0):
        if int(s):
            err = validate_source(snap, s, ipaddress.IPv4Address(0), None, iif, notes)
            if err:
                return Lookup([]), Answer(error=err), _source_failure(notes)
        return Lookup([]), Answer(type="broadcast", dev=LOOPBACK, compare_table=False), "limited broadcast"
    if s in zeronet:
        return _fail(errno.EINVAL, f"martian source {s} (a packet from outside needs --from)")
    if dst in zeronet:
        return _fail(errno.EINVAL, f"martian destination {dst}")
    if dst.is_loopback and not localnet:
        return _fail(errno.EINVAL, f"martian destination {dst} (route_localnet is off)")
    if s.is_loopback and not localnet:
        return _fail(errno.EINVAL, f"martian source {s} (route_localnet is off)")
    flow = Flow(dst, s, iif, flow.mark)
    lookup = fib_lookup(snap, flow)
    forwarding = int(snap.sysctl(f"net.ipv4.conf.{iif}.forwarding")) > 0
    if lookup.error is not None:
        if not forwarding:
            return lookup, Answer(error=errno.EHOSTUNREACH), \
                f"{lookup.why}; forwarding is off on {iif}, so the kernel answers host unreachable"
        return lookup, Answer(error=lookup.error), lookup.why
    route = lookup.route
    assert route is not None
    if route.type == "broadcast":
        err = validate_source(snap, s, ipaddress.IPv4Address(0), None, iif, notes)
        if err:
            return lookup, Answer(error=err), _source_failure(notes)
        return lookup, Answer(type="broadcast", dev=LOOPBACK, compare_table=False), "subnet broadcast"
    if route.type == "local":
        err = validate_source(snap, s, dst, None, iif, notes)
        if err:
            return lookup, Answer(error=err), _source_failure(notes)
        return lookup, Answer(type="local", table=lookup.table, dev=LOOPBACK), "a local address of this node"
    if not forwarding:
        return lookup, Answer(error=errno.EHOSTUNREACH), \
            f"would be forwarded, but net.ipv4.conf.{iif}.forwarding=0 (ip_forward off): dropped"
    if route.type != "unicast":
        return lookup, Answer(error=errno.EINVAL), f"martian destination: {route.type} route"
    answer = _route_answer(lookup)
    err = validate_source(snap, s, dst, answer.dev, iif, notes)
    if err:
        return lookup, Answer(error=err), _source_failure(notes)
    return lookup, answer, "forwarded"


def _source_failure(notes: list[str]) -> str:
    return f"source validation (fib_validate_source) failed: {notes[-1] if notes else 'martian source'}"


def _local_dev_v4(snap: Snapshot, addr: IPAddr) -> str | None:
    """__ip_dev_find(): the interface owning an address, or that of a `local` route in the local table."""
    for dev, addrs in snap.addresses.items():
        if any(a.ip == addr for a in addrs):
            return dev
    route = table_lookup(snap.routes.get(255, []), Flow(addr))
    return route.dev if route is not None and route.type == "local" else None


def validate_source(snap: Snapshot, src: IPAddr, dst: IPAddr, oif: str | None, iif: str,
                    notes: list[str]) -> int:
    """fib_validate_source(): 0, or the errno of a martian source / reverse-path failure."""
    rpf = max(snap.conf(iif, "rp_filter"))
    accept_local = max(snap.conf(iif, "accept_local")) > 0
    redirects = max(snap.conf(iif, "send_redirects")) > 0
    if not rpf and (iif != oif or not redirects):
        if accept_local:
            return 0
        custom_local = any(r.protocol != 2 for r in snap.routes.get(255, []))
        if snap.default_rules_only and not custom_local:
            if src in snap.local_addresses():
                notes.append(f"source {src} is an address of this node: martian source")
                return errno.EINVAL
            return 0
    # __fib_validate_source: the reverse lookup, towards the source
    back = fib_lookup(snap, Flow(src, dst, oif or LOOPBACK, 0))
    if back.error is not None or back.route is None:
        if rpf:
            notes.append(f"rp_filter={rpf}: no route back to {src}")
            return RPF_ERRNO
        return 0
    route = back.route
    if route.type != "unicast" and not (route.type == "local" and accept_local):
        notes.append(f"the route back to {src} is {route.type}: martian source")
        return errno.EINVAL
    devs = {route.dev} | {d for _, d in route.multipath}
    if iif in devs or (route.type == "local" and iif == LOOPBACK):
        return 0
    if not snap.addresses.get(iif):
        return RPF_ERRNO if rpf else 0
    if rpf == 1:
        notes.append(f"rp_filter=1 (strict): the route back to {src} leaves via {route.dev}, not {iif}")
        return RPF_ERRNO
    return 0


def decide_v6(snap: Snapshot, flow: Flow, notes: list[str]) -> tuple[Lookup, Answer, str]:
    """The IPv6 route (ip6_route_output / ip6_route_input_lookup)."""
    if flow.iif is not None and flow.iif not in snap.links:
        return _fail(errno.ENODEV, f"no interface {flow.iif} in this namespace")
    lookup = fib_lookup(snap, flow)
    if lookup.error is not None:
        rule_rejects = lookup.route is None and lookup.rule is not None
        if rule_rejects and lookup.error in (errno.EINVAL, errno.EACCES):
            # fib6 rule blackhole/prohibit hand back the kernel's own reject entry (dev lo).
            kind = "blackhole" if lookup.error == errno.EINVAL else "prohibit"
            return lookup, Answer(error=lookup.error, type=kind), lookup.why
        return lookup, Answer(error=lookup.error), lookup.why
    route = lookup.route
    assert route is not None
    if route.type == "local":
        return lookup, Answer(type="local", table=lookup.table, dev=LOOPBACK), "a local address of this node"
    if route.type == "anycast":
        # With IPv6 forwarding on, the kernel owns each prefix's subnet-router anycast
        # address (the all-zero host part): local delivery, reported on lo.
        return lookup, Answer(type="anycast", table=lookup.table, dev=LOOPBACK), \
            "a subnet-router anycast address of this node (IPv6 forwarding is on)"
    return lookup, _route_answer(lookup), f"{route.type} route"


# --- putting it together --------------------------------------------------------------------------

def hooks_for(origin_local: bool, verdict: str) -> list[str]:
    if origin_local:
        if verdict == "delivered locally":
            return ["OUTPUT", "POSTROUTING", "PREROUTING (lo)", "INPUT"]
        if verdict in ("sent", "broadcast", "multicast"):
            return ["OUTPUT", "POSTROUTING"]
        return []                      # the route lookup fails before the packet exists
    if verdict in ("delivered locally", "broadcast"):
        return ["PREROUTING", "INPUT"]
    if verdict == "forwarded":
        return ["PREROUTING", "FORWARD", "POSTROUTING"]
    return ["PREROUTING"]              # dropped by the routing decision right after it


def explain_snapshot(snap: Snapshot, flow: Flow, *, topology: str = "", node: str = "", netns: str | None = None,
                     table_names: dict[int, str] | None = None) -> Explanation:
    """Pure: the explanation from a snapshot (no kernel answer attached yet)."""
    notes: list[str] = []
    v4 = snap.family == socket.AF_INET
    lookup, answer, why = (decide_v4 if v4 else decide_v6)(snap, flow, notes)
    local = flow.iif is None
    fwd_info = None
    if answer.error is not None:
        verdict = VERDICT_OF_ERRNO.get(answer.error, "rejected")
        if answer.error == errno.EINVAL and "martian" in why:
            verdict = "martian"
        if "rp_filter" in why:
            verdict = "rp_filter drop"
        elif "fib_validate_source" in why:
            verdict = "martian"
        if answer.error == errno.ENETUNREACH and lookup.route is None and lookup.rule is None and local \
                and flow.src is not None and "not an address" in why:
            verdict = "invalid source"
        if answer.error == errno.EHOSTUNREACH and not local and "forwarding" in why:
            verdict = "dropped: forwarding off"
        reason = why
    elif answer.type in ("local", "anycast"):
        verdict, reason = "delivered locally", why
    elif answer.type in ("broadcast", "multicast"):
        verdict, reason = answer.type, why
    else:
        verdict = "sent" if local else "forwarded"
        reason = f"out of {answer.dev}" + (f" via gateway {answer.via}" if answer.via else " (destination on-link)")
    if not local:
        fam = "ipv4" if v4 else "ipv6"
        keys = [f"net.{fam}.conf.{flow.iif}.forwarding", f"net.{fam}.conf.all.forwarding"]
        values = {k: snap.sysctl(k, "?") for k in keys}
        needed = verdict in ("forwarded", "dropped: forwarding off")
        enabled = values[keys[0]] == "1" if v4 else values[keys[1]] == "1"
        fwd_info = {"needed": needed, "enabled": enabled, **values}
        if v4:
            fwd_info["net.ipv4.ip_forward"] = snap.sysctl("net.ipv4.ip_forward", "?")
        if needed and not enabled:
            if verdict == "forwarded":
                # IPv6: the route lookup succeeds; ip6_forward() drops it.
                verdict = "dropped: forwarding off"
            reason = (f"the route says forward it (out of {lookup.route.dev if lookup.route else '?'}), but "
                      f"forwarding is off on this node ({keys[0] if v4 else keys[1]}=0; set "
                      f"{'net.ipv4.ip_forward' if v4 else 'net.ipv6.conf.all.forwarding'}=1): the kernel drops it")
    hooks = hooks_for(local, verdict)
    if verdict == "dropped: forwarding off" and not v4:
        hooks = ["PREROUTING"]
    if snap.default_rules_only and v4 and answer.type in ("local", "broadcast") and answer.table == 255:
        notes.append("only the default rules exist: the kernel may report table main (254) for local-table "
                     "routes, because local and main share one trie until the first policy rule is added")
    if not local:
        notes.append("the routing decision for an incoming packet is taken after PREROUTING: a DNAT rule there "
                     "would change the destination explained here")
    return Explanation(topology, node, netns, flow, snap.family, lookup, answer, verdict, reason, hooks,
                       notes=notes, forwarding=fwd_info, table_names=dict(table_names or {}))


def compare(expl: Explanation, kernel: RouteAnswer, default_rules_only: bool) -> list[str]:
    """Where our answer and the kernel's RTM_GETROUTE differ (empty: they agree)."""
    want = expl.answer
    if want.error is not None:
        if kernel.ok:
            if want.type and kernel.type == want.type:
                return []       # IPv6 reject rules: the kernel returns its reject entry as a route
            return [f"we expect {_ename(want.error)}, the kernel routes it: {_kernel_text(kernel)}"]
        got = (kernel.error or "").rsplit("(", 1)[-1].rstrip(")")
        return [] if got == _ename(want.error) else \
            [f"we expect {_ename(want.error)}, the kernel says {_kernel_text(kernel)}"]
    if not kernel.ok:
        return [f"we expect {want.type} via {want.via or '-'} dev {want.dev}, the kernel says {_kernel_text(kernel)}"]
    out = []
    if kernel.type != want.type:
        out.append(f"type: ours {want.type}, kernel {kernel.type}")
    if want.compare_table and kernel.table != want.table:
        merged = default_rules_only and want.table == 255 and kernel.table == 254
        if not merged:
            out.append(f"table: ours {table_name(want.table)}, kernel {table_name(kernel.table)}")
    if (kernel.via or None) != (want.via or None):
        out.append(f"gateway: ours {want.via or '-'}, kernel {kernel.via or '-'}")
    if (kernel.dev or None) != (want.dev or None):
        out.append(f"dev: ours {want.dev or '-'}, kernel {kernel.dev or '-'}")
    return out


def _kernel_text(k: RouteAnswer) -> str:
    if not k.ok:
        # route_get labels errnos by their usual cause; here the errno itself is the fact.
        name = (k.error or "").rsplit("(", 1)[-1].rstrip(")")
        code = getattr(errno, name, None)
        return f"error {name}" + (f" ({os.strerror(code)})" if isinstance(code, int) else "")
    return ", ".join(f"{key} {v}" for key, v in k.to_json().items() if key != "ok")


def explain(ipr: IPRoute, ns: str | None, to: str, *, src: str | None = None, iif: str | None = None,
            fwmark: int | None = None, topology: str = "", node: str = "",
            table_names: dict[int, str] | None = None, snapshot: Snapshot | None = None) -> Explanation:
    """Explain a packet to `to` in namespace `ns` (ipr: a netlink socket in that namespace).

    `snapshot`: reuse a `read_snapshot()` of the same namespace, family and iif (bulk callers)."""
    dst = ipaddress.ip_address(to)
    source = ipaddress.ip_address(src) if src else None
    if source is not None and source.version != dst.version:
        raise ValueError(f"--from {src} and --to {to} are of different IP versions")
    family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    snap = snapshot or read_snapshot(ipr, ns, family, iif)
    flow = Flow(dst, source, iif, fwmark or 0)
    expl = explain_snapshot(snap, flow, topology=topology, node=node, netns=ns, table_names=table_names)
    if iif is not None and iif not in snap.links:
        expl.kernel = RouteAnswer(ok=False, error=f"no such interface ({errno.errorcode[errno.ENODEV]})")
    else:
        expl.kernel = route_get(ipr, str(dst), src=str(source) if source else None, iif=iif, fwmark=fwmark)
    expl.mismatch = compare(expl, expl.kernel, snap.default_rules_only)
    return expl


def render_text(expl: Explanation) -> list[str]:
    """The explanation as lines of plain text (rich markup-free)."""
    f = expl.flow
    names = expl.table_names
    where = f"node {expl.node}" + (f" (netns {expl.netns})" if expl.netns else " (the host namespace)")
    origin = f"arriving on {f.iif}" if f.iif else "generated on this node"
    lines = [f"packet   {f.src or '(source chosen by the kernel)'} -> {f.dst}, {origin}, fwmark {f.mark:#x}, "
             f"at {where}", "rules    (priority order, as the kernel walks them)"]
    marks = {"matched": "=>", "skipped": "  ", "no route": " -", "throw": " -", "suppressed": " -",
             "goto": " >", "nop": " ·", "not reached": "  "}
    width = max((len(s.rule.text(names)) for s in expl.lookup.steps), default=10)
    for s in expl.lookup.steps:
        lines.append(f"  {marks.get(s.outcome, '  ')} {s.rule.priority:>5}: {s.rule.text(names):<{width}}  "
                     f"{s.outcome}: {s.why}")
    if not expl.lookup.steps:
        lines.append("     (not consulted: " + expl.reason + ")")
    route = expl.lookup.route
    if route is not None:
        lines.append(f"table    {table_name(expl.lookup.table, names)}")
        lines.append(f"route    {route.text()}")
    else:
        lines.append("route    none")
    lines.append(f"verdict  {expl.verdict}: {expl.reason}")
    lines.append("netfilter " + (" -> ".join(expl.hooks) if expl.hooks else
                                 "no hook: the route lookup fails before the packet is sent"))
    k = expl.kernel
    ours = expl.answer.to_json()
    ours_text = ", ".join(f"{key} {v}" for key, v in ours.items() if key != "ok")
    if k is not None:
        ktext = _kernel_text(k)
        if expl.agrees:
            lines.append(f"kernel   RTM_GETROUTE says {ktext} — agrees")
        else:
            lines.append(f"MISMATCH the kernel's RTM_GETROUTE says {ktext}; this explanation computed {ours_text}:")
            lines.extend(f"           {m}" for m in expl.mismatch)
    for note in expl.notes:
        lines.append(f"note     {note}")
    return lines
