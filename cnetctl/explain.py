"""`cnetctl explain`: the path of one packet through a node's routing, in the kernel's own terms.

The answer is computed twice and the two must agree:

1. here, from what netlink shows (read once, by kernel/snapshot.py): ALL the
   policy rules of the namespace in priority order (not only cnetctl's), each
   rule's selectors evaluated
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
from typing import Any

from . import RTPROT_CNETCTL
from .kernel.errnos import REJECT_ERRNO, ROUTE_ERRORS, RPF_ERRNO, errno_name
from .kernel.routes import RTM_F_LOOKUP_TABLE, RouteAnswer, route_get  # noqa: F401  (flag documented above)
from .kernel.snapshot import (
    DEFAULT_TABLE,
    FIB_RULE_IIF_DETACHED,
    FIB_RULE_OIF_DETACHED,
    FR_ACT_BLACKHOLE,
    FR_ACT_GOTO,
    FR_ACT_NOP,
    FR_ACT_PROHIBIT,
    FR_ACT_TO_TBL,
    FR_ACT_UNREACHABLE,
    LOCAL_TABLE,
    MAIN_TABLE,
    NO_SUPPRESS,
    IPAddr,
    KRoute,
    KRule,
    NetlinkSocket,
    Snapshot,
    read_snapshot,
)

TABLE_NAMES = {LOCAL_TABLE: "local", MAIN_TABLE: "main", DEFAULT_TABLE: "default"}
RTPROT_KERNEL, RTPROT_STATIC = 2, 4
PROTOS = {0: "unspec", 1: "redirect", RTPROT_KERNEL: "kernel", 3: "boot", RTPROT_STATIC: "static", 8: "gated",
          9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 16: "dhcp", RTPROT_CNETCTL: "cnetctl"}
REJECT_ACTIONS = {FR_ACT_BLACKHOLE: "blackhole", FR_ACT_UNREACHABLE: "unreachable", FR_ACT_PROHIBIT: "prohibit"}

LOOPBACK = "lo"
ZERONET = ipaddress.ip_network("0.0.0.0/8")
LBCAST = ipaddress.IPv4Address("255.255.255.255")

Decision = tuple["Lookup", "Answer", str]    # the rule walk, the expected RTM_GETROUTE answer, the reason


def table_name(table: int | None, names: dict[int, str] | None = None) -> str:
    if table is None:
        return "-"
    name = (names or {}).get(table) or TABLE_NAMES.get(table)
    return f"{name} ({table})" if name else str(table)


@dataclass(frozen=True)
class Flow:
    dst: IPAddr
    src: IPAddr | None = None
    iif: str | None = None      # None: generated on this node
    mark: int = 0


# --- the kernel's objects, shown as iproute2 shows them ---------------------------------------

def rule_text(rule: KRule, names: dict[int, str] | None = None) -> str:
    """Like `ip rule show`."""
    parts = ["not"] if rule.invert else []
    parts.append(f"from {rule.src}" if rule.src else "from all")
    if rule.dst:
        parts.append(f"to {rule.dst}")
    if rule.tos:
        parts.append(f"tos {rule.tos:#x}")
    if rule.fwmark or rule.fwmask:
        parts.append(f"fwmark {rule.fwmark:#x}" + (f"/{rule.fwmask:#x}" if rule.fwmask != 0xFFFFFFFF else ""))
    if rule.iif:
        parts.append(f"iif {rule.iif}" + (" [detached]" if rule.flags & FIB_RULE_IIF_DETACHED else ""))
    if rule.oif:
        parts.append(f"oif {rule.oif}" + (" [detached]" if rule.flags & FIB_RULE_OIF_DETACHED else ""))
    if rule.l3mdev:
        parts.append("l3mdev")
    if rule.uid_range:
        parts.append(f"uidrange {rule.uid_range[0]}-{rule.uid_range[1]}")
    if rule.ip_proto:
        parts.append(f"ipproto {rule.ip_proto}")
    if rule.sport:
        parts.append(f"sport {rule.sport[0]}-{rule.sport[1]}")
    if rule.dport:
        parts.append(f"dport {rule.dport[0]}-{rule.dport[1]}")
    parts.append(_rule_action_text(rule, names))
    if rule.suppress_prefixlen != NO_SUPPRESS:
        parts.append(f"suppress_prefixlength {rule.suppress_prefixlen}")
    if rule.suppress_ifgroup != NO_SUPPRESS:
        parts.append(f"suppress_ifgroup {rule.suppress_ifgroup}")
    return " ".join(parts)


def _rule_action_text(rule: KRule, names: dict[int, str] | None) -> str:
    if rule.action == FR_ACT_TO_TBL:
        return f"lookup {(names or {}).get(rule.table) or TABLE_NAMES.get(rule.table) or rule.table}"
    if rule.action == FR_ACT_GOTO:
        return f"goto {rule.goto}"
    if rule.action == FR_ACT_NOP:
        return "nop"
    return REJECT_ACTIONS.get(rule.action, f"action {rule.action}")


def rule_json(rule: KRule, names: dict[int, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"priority": rule.priority, "rule": rule_text(rule, names)}
    if rule.action == FR_ACT_TO_TBL:
        out["table"] = rule.table
    out["protocol"] = PROTOS.get(rule.protocol, str(rule.protocol))
    return out


def route_text(route: KRoute) -> str:
    """Like `ip route show table all`."""
    dst = "default" if route.dst.prefixlen == 0 else (
        str(route.dst.network_address) if route.dst.prefixlen == route.dst.max_prefixlen else str(route.dst))
    parts = [] if route.type == "unicast" else [route.type]
    parts.append(dst)
    if route.src is not None:
        parts.append(f"from {route.src}")
    if route.gateway:
        parts.append(f"via {route.gateway}")
    if route.dev:
        parts.append(f"dev {route.dev}")
    for gw, dev in route.multipath:
        parts.append("nexthop" + (f" via {gw}" if gw else "") + (f" dev {dev}" if dev else ""))
    parts.append(f"table {TABLE_NAMES.get(route.table, route.table)}")
    if route.protocol and route.protocol != RTPROT_STATIC:
        parts.append(f"proto {PROTOS.get(route.protocol, route.protocol)}")
    if route.metric:
        parts.append(f"metric {route.metric}")
    if route.prefsrc:
        parts.append(f"src {route.prefsrc}")
    return " ".join(parts)


def route_json(route: KRoute) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": str(route.dst), "type": route.type, "table": route.table}
    for k in ("gateway", "dev", "prefsrc"):
        if getattr(route, k):
            out["via" if k == "gateway" else k] = getattr(route, k)
    out.update(metric=route.metric, scope=route.scope, protocol=PROTOS.get(route.protocol, str(route.protocol)))
    if route.multipath:
        out["multipath"] = [{"via": gw, "dev": dev} for gw, dev in route.multipath]
    return out


# --- the kernel's lookup, re-done ----------------------------------------------------------------

def rule_matches(rule: KRule, flow: Flow) -> tuple[bool, str]:
    """fib_rule_match(): (matches, why not / what matched)."""
    ok, why = _selectors(rule, flow)
    if rule.invert:
        return (not ok, "'not' selector: the inner selector did not match" if not ok
                else f"'not' selector: inner selector matched ({why})")
    return ok, why


def _selectors(rule: KRule, flow: Flow) -> tuple[bool, str]:
    iif = flow.iif or LOOPBACK      # a locally generated packet comes "from" lo
    if rule.iif and (rule.flags & FIB_RULE_IIF_DETACHED or rule.iif != iif):
        return False, (f"iif {rule.iif} is not in this namespace" if rule.flags & FIB_RULE_IIF_DETACHED
                       else f"iif is {iif}, not {rule.iif}")
    if rule.oif:
        # A route lookup without an output interface (flowi_oif 0) never matches an oif rule.
        return False, (f"oif {rule.oif} is not in this namespace" if rule.flags & FIB_RULE_OIF_DETACHED
                       else "no output interface is bound (oif rules match only sockets bound to one)")
    if (rule.fwmark ^ flow.mark) & rule.fwmask:
        return False, f"fwmark {flow.mark:#x} & {rule.fwmask:#x} != {rule.fwmark:#x}"
    if rule.l3mdev:
        return False, "l3mdev rule: no VRF here"
    if rule.uid_range and not rule.uid_range[0] <= 0 <= rule.uid_range[1]:
        return False, "uid 0 outside uidrange"
    if rule.ip_proto:
        return False, f"ipproto {rule.ip_proto}: the packet explained has no protocol (as `ip route get`)"
    if rule.sport or rule.dport:
        return False, "port range: the packet explained has no ports (as `ip route get`)"
    if rule.src is not None:
        if rule.src.prefixlen and (flow.src is None or flow.src not in rule.src):
            return False, (f"from {rule.src}: no source address given (the kernel looks up with 0)"
                           if flow.src is None else f"source {flow.src} not in {rule.src}")
    if rule.dst is not None and rule.dst.prefixlen and flow.dst not in rule.dst:
        return False, f"destination {flow.dst} not in {rule.dst}"
    if rule.tos:
        return False, f"tos {rule.tos:#x}: the packet explained has tos 0"
    return True, "selector matches"


@dataclass
class Step:
    rule: KRule
    outcome: str        # skipped | no route | throw | suppressed | goto | nop | matched | not reached
    why: str
    route: KRoute | None = None

    def to_json(self, names: dict[int, str] | None = None) -> dict[str, Any]:
        out = {**rule_json(self.rule, names), "outcome": self.outcome, "why": self.why}
        if self.route is not None:
            out["route"] = route_text(self.route)
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
    i = hops = 0
    while i < len(rules):
        rule = rules[i]
        ok, why = rule_matches(rule, flow)
        decided: Lookup | None = None
        if not ok:
            steps.append(Step(rule, "skipped", why))
        elif rule.action == FR_ACT_GOTO:
            hops += 1
            i = _goto(rules, i, hops, steps)
            continue
        elif rule.action == FR_ACT_NOP:
            steps.append(Step(rule, "nop", "matches, does nothing"))
        elif rule.action in REJECT_ACTIONS:
            decided = _reject(snap, rule, steps)
        elif rule.action == FR_ACT_TO_TBL:
            decided = _consult_table(snap, rule, flow, steps)
        else:
            steps.append(Step(rule, "skipped", f"unknown action {rule.action}"))
        if decided is not None:
            return _finish(decided, rules, i)
        i += 1
    return Lookup(steps, None, None, None, errno.ENETUNREACH, "no rule found a route")


def _goto(rules: list[KRule], i: int, hops: int, steps: list[Step]) -> int:
    """A matching `goto` rule: the index the walk continues at."""
    rule = rules[i]
    target = next((j for j, r in enumerate(rules) if r.priority == rule.goto), None)
    if target is None or hops > len(rules):
        steps.append(Step(rule, "skipped", f"goto {rule.goto}: no rule has that priority"))
        return i + 1
    steps.append(Step(rule, "goto", f"continue at priority {rule.goto}"))
    steps.extend(Step(rules[j], "not reached", f"jumped over by goto {rule.goto}") for j in range(i + 1, target))
    return target


def _reject(snap: Snapshot, rule: KRule, steps: list[Step]) -> Lookup:
    """A matching blackhole/unreachable/prohibit rule ends the lookup with its errno."""
    kind = REJECT_ACTIONS[rule.action]
    err = REJECT_ERRNO[kind]
    if snap.family == socket.AF_INET6 and kind == "unreachable":
        err = errno.ENETUNREACH      # fib6_rule_action: FR_ACT_UNREACHABLE -> -ENETUNREACH
    steps.append(Step(rule, "matched", f"{kind} rule"))
    return Lookup(steps, rule, None, None, err, f"rule {rule.priority} says {kind}")


def _consult_table(snap: Snapshot, rule: KRule, flow: Flow, steps: list[Step]) -> Lookup | None:
    """A matching `lookup TABLE` rule: the lookup it ends, or None when the walk goes on."""
    table = table_name(rule.table)
    route = table_lookup(snap.routes.get(rule.table, []), flow)
    if route is None:
        steps.append(Step(rule, "no route", f"table {table} has no route to {flow.dst}: next rule"))
        return None
    if route.type == "throw":
        steps.append(Step(rule, "throw", f"throw route {route.dst} in table {table}: next rule", route))
        return None
    if route.type not in REJECT_ERRNO and route.dst.prefixlen <= rule.suppress_prefixlen \
            and rule.suppress_prefixlen != NO_SUPPRESS:
        steps.append(Step(rule, "suppressed", f"route {route.dst} has prefix length {route.dst.prefixlen} "
                          f"<= suppress_prefixlength {rule.suppress_prefixlen}: next rule", route))
        return None
    steps.append(Step(rule, "matched", f"table {table}: {route_text(route)}", route))
    err = REJECT_ERRNO.get(route.type)
    return Lookup(steps, rule, rule.table, route, err, f"{route.type} route in table {table}" if err else "")


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
            return {"ok": False, "error": errno_name(self.error)}
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
            "route": route_json(route) if route else None,
            "verdict": self.verdict, "reason": self.reason,
            "forwarding": self.forwarding,
            "hooks": self.hooks,
            "answer": self.answer.to_json(),
            "kernel": self.kernel.to_json() if self.kernel else None,
            "agrees": self.agrees, "mismatch": self.mismatch, "notes": self.notes,
        }


def _fail(code: int, why: str, lookup: Lookup | None = None) -> Decision:
    return (lookup or Lookup([]), Answer(error=code), why)


def _route_answer(lookup: Lookup) -> Answer:
    route = lookup.route
    assert route is not None
    via, dev = route.gateway, route.dev
    if route.multipath and not via and not dev:
        via, dev = route.multipath[0]
    return Answer(type=route.type, table=lookup.table, via=via, dev=dev)


def _delivered_locally(lookup: Lookup) -> Decision:
    return lookup, Answer(type="local", table=lookup.table, dev=LOOPBACK), "a local address of this node"


def decide_v4(snap: Snapshot, flow: Flow, notes: list[str]) -> Decision:
    """The IPv4 route the kernel computes: (rule walk, expected RTM_GETROUTE answer, reason)."""
    return _output_v4(snap, flow, notes) if flow.iif is None else _input_v4(snap, flow, notes)


def _output_v4(snap: Snapshot, flow: Flow, notes: list[str]) -> Decision:
    """ip_route_output_key_hash_rcu: a packet generated on this node."""
    dst = flow.dst
    assert isinstance(dst, ipaddress.IPv4Address)
    if flow.src is not None:
        refused_or_special = _output_source_v4(snap, dst, flow.src)
        if refused_or_special is not None:
            return refused_or_special
    if int(dst) == 0:
        lookup = Lookup([], why="destination 0.0.0.0 means this host")
        return lookup, Answer(type="local", dev=LOOPBACK, compare_table=False), "0.0.0.0 is this host (lo)"
    lookup = fib_lookup(snap, flow)
    if lookup.error is not None:
        return lookup, Answer(error=lookup.error), lookup.why
    route = lookup.route
    assert route is not None
    if route.type == "local":
        return _delivered_locally(lookup)
    if dst == LBCAST or route.type == "broadcast":
        return lookup, Answer(type="broadcast", table=lookup.table, dev=route.dev), "broadcast"
    if dst.is_multicast:
        via = route.gateway if route.dst.prefixlen >= 4 else None
        return lookup, Answer(type="multicast", table=lookup.table, via=via, dev=route.dev), "multicast"
    if route.type != "unicast":
        notes.append(f"route type {route.type}: not modelled in detail")
    return lookup, _route_answer(lookup), "unicast route"


def _output_source_v4(snap: Snapshot, dst: ipaddress.IPv4Address, src: IPAddr) -> Decision | None:
    """The given source of a local packet: refused, or the route it alone decides (None: neither)."""
    if src.is_multicast or src == LBCAST or src in ZERONET:
        return _fail(errno.EINVAL, f"source {src} is not a valid unicast source")
    owner = _local_dev_v4(snap, src)
    if owner is None:
        return _fail(errno.ENETUNREACH, f"source {src} is not an address of this node "
                     "(a locally generated packet must use one of its own)")
    if dst.is_multicast or dst == LBCAST:
        # The kernel's "special hack": multicast/limited broadcast with a source leaves
        # through the interface that owns the source; no table is consulted.
        kind = "multicast" if dst.is_multicast else "broadcast"
        return Lookup([], why=f"{kind} from {src}: sent on {owner}, which owns the source"), \
            Answer(type=kind, dev=owner, compare_table=False), \
            f"{kind} from {src} leaves through {owner} (the interface owning the source); no table is consulted"
    return None


def _input_v4(snap: Snapshot, flow: Flow, notes: list[str]) -> Decision:
    """ip_route_input_slow: a packet that arrived on flow.iif."""
    iif, dst = flow.iif, flow.dst
    assert iif is not None and isinstance(dst, ipaddress.IPv4Address)
    if iif not in snap.links:
        return _fail(errno.ENODEV, f"no interface {iif} in this namespace")
    s = flow.src or ipaddress.IPv4Address(0)
    martian = _input_martians_v4(snap, dst, s, iif, notes)
    if martian is not None:
        return martian
    lookup = fib_lookup(snap, Flow(dst, s, iif, flow.mark))
    forwarding = int(snap.sysctl(snap.conf_key(iif, "forwarding"))) > 0
    if lookup.error is not None:
        if not forwarding:
            return lookup, Answer(error=errno.EHOSTUNREACH), \
                f"{lookup.why}; forwarding is off on {iif}, so the kernel answers host unreachable"
        return lookup, Answer(error=lookup.error), lookup.why
    route = lookup.route
    assert route is not None
    if route.type in ("broadcast", "local"):
        return _input_local_v4(snap, lookup, s, dst, iif, notes)
    if not forwarding:
        return lookup, Answer(error=errno.EHOSTUNREACH), \
            f"would be forwarded, but {snap.conf_key(iif, 'forwarding')}=0 (ip_forward off): dropped"
    if route.type != "unicast":
        return lookup, Answer(error=errno.EINVAL), f"martian destination: {route.type} route"
    answer = _route_answer(lookup)
    err = validate_source(snap, s, dst, answer.dev, iif, notes)
    if err:
        return lookup, Answer(error=err), _source_failure(notes)
    return lookup, answer, "forwarded"


def _input_martians_v4(snap: Snapshot, dst: ipaddress.IPv4Address, s: IPAddr, iif: str,
                       notes: list[str]) -> Decision | None:
    """What ip_route_input_slow decides before any table: martians and limited broadcast."""
    localnet = max(snap.conf(iif, "route_localnet")) > 0
    if dst.is_multicast:
        return _fail(errno.EINVAL, "multicast destination arriving from outside: not a member/mrouter "
                     "(not modelled further)")
    if s.is_multicast or s == LBCAST:
        return _fail(errno.EINVAL, f"martian source {s}")
    if dst == LBCAST or (int(s) == 0 and int(dst) == 0):
        if int(s):
            err = validate_source(snap, s, ipaddress.IPv4Address(0), None, iif, notes)
            if err:
                return _fail(err, _source_failure(notes))
        return Lookup([]), Answer(type="broadcast", dev=LOOPBACK, compare_table=False), "limited broadcast"
    if s in ZERONET:
        return _fail(errno.EINVAL, f"martian source {s} (a packet from outside needs --from)")
    if dst in ZERONET:
        return _fail(errno.EINVAL, f"martian destination {dst}")
    if dst.is_loopback and not localnet:
        return _fail(errno.EINVAL, f"martian destination {dst} (route_localnet is off)")
    if s.is_loopback and not localnet:
        return _fail(errno.EINVAL, f"martian source {s} (route_localnet is off)")
    return None


def _input_local_v4(snap: Snapshot, lookup: Lookup, s: IPAddr, dst: IPAddr, iif: str,
                    notes: list[str]) -> Decision:
    """An incoming packet the table delivers here (a local or subnet-broadcast route)."""
    route = lookup.route
    assert route is not None
    broadcast = route.type == "broadcast"
    err = validate_source(snap, s, ipaddress.IPv4Address(0) if broadcast else dst, None, iif, notes)
    if err:
        return lookup, Answer(error=err), _source_failure(notes)
    if broadcast:
        return lookup, Answer(type="broadcast", dev=LOOPBACK, compare_table=False), "subnet broadcast"
    return _delivered_locally(lookup)


def _source_failure(notes: list[str]) -> str:
    return f"source validation (fib_validate_source) failed: {notes[-1] if notes else 'martian source'}"


def _local_dev_v4(snap: Snapshot, addr: IPAddr) -> str | None:
    """__ip_dev_find(): the interface owning an address, or that of a `local` route in the local table."""
    for dev, addrs in snap.addresses.items():
        if any(a.ip == addr for a in addrs):
            return dev
    route = table_lookup(snap.routes.get(LOCAL_TABLE, []), Flow(addr))
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
        custom_local = any(r.protocol != RTPROT_KERNEL for r in snap.routes.get(LOCAL_TABLE, []))
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


def decide_v6(snap: Snapshot, flow: Flow, notes: list[str]) -> Decision:
    """The IPv6 route (ip6_route_output / ip6_route_input_lookup)."""
    if flow.iif is not None and flow.iif not in snap.links:
        return _fail(errno.ENODEV, f"no interface {flow.iif} in this namespace")
    lookup = fib_lookup(snap, flow)
    if lookup.error is not None:
        rule_rejects = lookup.route is None and lookup.rule is not None
        if rule_rejects and lookup.error in (errno.EINVAL, errno.EACCES):
            # fib6 rule blackhole/prohibit hand back the kernel's own reject entry (dev lo).
            return lookup, Answer(error=lookup.error, type=ROUTE_ERRORS[lookup.error]), lookup.why
        return lookup, Answer(error=lookup.error), lookup.why
    route = lookup.route
    assert route is not None
    if route.type == "local":
        return _delivered_locally(lookup)
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
    verdict, reason = _verdict(lookup, answer, why, local, flow.src is not None)
    fwd_info = None
    if not local:
        fwd_info, verdict, reason = _forwarding(snap, flow, lookup, verdict, reason)
    hooks = hooks_for(local, verdict)
    if verdict == "dropped: forwarding off" and not v4:
        hooks = ["PREROUTING"]
    if snap.default_rules_only and v4 and answer.type in ("local", "broadcast") and answer.table == LOCAL_TABLE:
        notes.append("only the default rules exist: the kernel may report table main (254) for local-table "
                     "routes, because local and main share one trie until the first policy rule is added")
    if not local:
        notes.append("the routing decision for an incoming packet is taken after PREROUTING: a DNAT rule there "
                     "would change the destination explained here")
    return Explanation(topology, node, netns, flow, snap.family, lookup, answer, verdict, reason, hooks,
                       notes=notes, forwarding=fwd_info, table_names=dict(table_names or {}))


def _verdict(lookup: Lookup, answer: Answer, why: str, local: bool, has_src: bool) -> tuple[str, str]:
    """(verdict, reason) of a decision, in words."""
    if answer.error is None:
        if answer.type in ("local", "anycast"):
            return "delivered locally", why
        if answer.type in ("broadcast", "multicast"):
            return str(answer.type), why
        return "sent" if local else "forwarded", \
            f"out of {answer.dev}" + (f" via gateway {answer.via}" if answer.via else " (destination on-link)")
    verdict = ROUTE_ERRORS.get(answer.error, "rejected")
    if answer.error == errno.EINVAL and "martian" in why:
        verdict = "martian"
    if "rp_filter" in why:
        verdict = "rp_filter drop"
    elif "fib_validate_source" in why:
        verdict = "martian"
    if answer.error == errno.ENETUNREACH and lookup.route is None and lookup.rule is None and local \
            and has_src and "not an address" in why:
        verdict = "invalid source"
    if answer.error == errno.EHOSTUNREACH and not local and "forwarding" in why:
        verdict = "dropped: forwarding off"
    return verdict, why


def _forwarding(snap: Snapshot, flow: Flow, lookup: Lookup, verdict: str,
                reason: str) -> tuple[dict[str, Any], str, str]:
    """An incoming packet: the forwarding sysctls, and the verdict when they stop it."""
    assert flow.iif is not None
    v4 = snap.family == socket.AF_INET
    dev_key, all_key = snap.conf_key(flow.iif, "forwarding"), snap.conf_key("all", "forwarding")
    values = {k: snap.sysctl(k, "?") for k in (dev_key, all_key)}
    needed = verdict in ("forwarded", "dropped: forwarding off")
    # IPv4 asks the incoming interface; IPv6 forwards by the `all` switch alone.
    key = dev_key if v4 else all_key
    enabled = values[key] == "1"
    fwd_info: dict[str, Any] = {"needed": needed, "enabled": enabled, **values}
    if v4:
        fwd_info["net.ipv4.ip_forward"] = snap.sysctl("net.ipv4.ip_forward", "?")
    if needed and not enabled:
        if verdict == "forwarded":
            # IPv6: the route lookup succeeds; ip6_forward() drops it.
            verdict = "dropped: forwarding off"
        reason = (f"the route says forward it (out of {lookup.route.dev if lookup.route else '?'}), but "
                  f"forwarding is off on this node ({key}=0; set "
                  f"{'net.ipv4.ip_forward' if v4 else 'net.ipv6.conf.all.forwarding'}=1): the kernel drops it")
    return fwd_info, verdict, reason


def compare(expl: Explanation, kernel: RouteAnswer, default_rules_only: bool) -> list[str]:
    """Where our answer and the kernel's RTM_GETROUTE differ (empty: they agree)."""
    want = expl.answer
    if want.error is not None:
        if kernel.ok:
            if want.type and kernel.type == want.type:
                return []       # IPv6 reject rules: the kernel returns its reject entry as a route
            return [f"we expect {errno_name(want.error)}, the kernel routes it: {_kernel_text(kernel)}"]
        got = (kernel.error or "").rsplit("(", 1)[-1].rstrip(")")
        return [] if got == errno_name(want.error) else \
            [f"we expect {errno_name(want.error)}, the kernel says {_kernel_text(kernel)}"]
    if not kernel.ok:
        return [f"we expect {want.type} via {want.via or '-'} dev {want.dev}, the kernel says {_kernel_text(kernel)}"]
    out = []
    if kernel.type != want.type:
        out.append(f"type: ours {want.type}, kernel {kernel.type}")
    if want.compare_table and kernel.table != want.table:
        merged = default_rules_only and want.table == LOCAL_TABLE and kernel.table == MAIN_TABLE
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


def explain(ipr: NetlinkSocket, ns: str | None, to: str, *, src: str | None = None, iif: str | None = None,
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
        expl.kernel = RouteAnswer(ok=False, error=f"no such interface ({errno_name(errno.ENODEV)})")
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
    width = max((len(rule_text(s.rule, names)) for s in expl.lookup.steps), default=10)
    for s in expl.lookup.steps:
        lines.append(f"  {marks.get(s.outcome, '  ')} {s.rule.priority:>5}: {rule_text(s.rule, names):<{width}}  "
                     f"{s.outcome}: {s.why}")
    if not expl.lookup.steps:
        lines.append("     (not consulted: " + expl.reason + ")")
    route = expl.lookup.route
    if route is not None:
        lines.append(f"table    {table_name(expl.lookup.table, names)}")
        lines.append(f"route    {route_text(route)}")
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
