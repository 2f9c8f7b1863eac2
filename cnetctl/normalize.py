"""Topology -> DesiredState: defaults, generated names, references, cross-checks.

Pure: no kernel access. Every problem found is collected, then raised once,
so a user sees all of them in one run.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from .errors import Problem
from .load import PathPart, Source
from .model.natspec import NatSpec, canonical_order
from .model.resources import Address, Link, Nat, Netns, Resource, Route, Rule, Sysctl
from .model.topology import SCOPES, TABLE_ALIASES, NatRule, Node, Topology

HOST = "host"
DEFAULT_RULE_PRIORITY = 32000
RT_SCOPE_LINK = 253

Endpoint = tuple[str, str]


@dataclass
class DesiredState:
    topology: Topology
    nodes: dict[str, str | None]                       # node name -> netns (None = host)
    resources: list[Resource]
    interfaces: dict[Endpoint, str] = field(default_factory=dict)   # (node, ifname) -> kernel ifname
    addresses: dict[Endpoint, list[str]] = field(default_factory=dict)  # (node, ifname) -> CIDRs
    nat_backend: str = "auto"
    warnings: list[str] = field(default_factory=list)

    def subnets(self) -> tuple[str, ...]:
        """Every network the topology's addresses live in (for forward-accept rules)."""
        nets = {str(ipaddress.ip_interface(c).network) for cidrs in self.addresses.values() for c in cidrs}
        return tuple(sorted(n for n in nets if not ipaddress.ip_network(n).is_loopback))

    @property
    def name(self) -> str:
        return self.topology.name

    def ns_of(self, node: str) -> str | None:
        return self.nodes[node]

    def node_addresses(self, node: str) -> list[str]:
        return [a for (n, _), cidrs in self.addresses.items() if n == node for a in cidrs]


@dataclass(frozen=True)
class _End:
    node: str
    ifname: str          # the kernel's name
    logical: str         # as written in the manifest (the bridge's name for a plugged end)
    master: str | None   # the bridge this end is plugged into


def generated_ifname(topology: str, node: str, what: str) -> str:
    """Name of a generated bridge-port veth: 'cn' + 10 hex (12 bytes, under IFNAMSIZ)."""
    digest = hashlib.sha1(f"{topology}/{node}/{what}".encode()).hexdigest()
    return "cn" + digest[:10]


def netns_name(topology: str, node: str, spec: Node) -> str | None:
    if node == HOST:
        return None
    return spec.netns or f"{topology}-{node}"


def resolve_table(topo: Topology, table: int | str) -> int | None:
    if isinstance(table, int):
        return table
    if table in topo.tables:
        return topo.tables[table]
    return TABLE_ALIASES.get(table)


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _mixed_families(named: dict[str, str | None]) -> str | None:
    """'to fd00::/64 is IPv6, via 10.0.0.1 is IPv4' when the values mix families, else None."""
    given = {k: v for k, v in named.items() if v}
    if len({_family(v) for v in given.values()}) < 2:
        return None
    parts = [f"{k} {v} is {'IPv6' if _family(v) == socket.AF_INET6 else 'IPv4'}" for k, v in given.items()]
    return "mixes IPv4 and IPv6: " + ", ".join(parts)


def _as_cidr(addr: str) -> str:
    return str(ipaddress.ip_network(addr, strict=False))


def normalize_sysctl_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return " ".join(str(value).split())


class _Collector:
    def __init__(self, src: Source):
        self.src = src
        self.problems: list[Problem] = []

    def add(self, path: tuple[PathPart, ...], message: str) -> None:
        self.problems.append(self.src.problem(path, message))


def normalize(topo: Topology, src: Source | None = None, nat_backend: str | None = None) -> DesiredState:
    """nat_backend overrides settings.nat_backend; "auto" is resolved from the host's iptables."""
    src = src or Source("<manifest>")
    err = _Collector(src)
    name = topo.name

    nodes: dict[str, str | None] = {}
    seen_ns: dict[str, str] = {}
    for node, spec in topo.nodes.items():
        if node == HOST and spec.netns:
            err.add(("nodes", HOST, "netns"), "the host node is the namespace cnetctl runs in; it takes no netns")
        ns = netns_name(name, node, spec)
        nodes[node] = ns
        if ns is not None:
            if ns in seen_ns:
                err.add(("nodes", node), f"netns {ns!r} is already used by node {seen_ns[ns]!r}")
            seen_ns[ns] = node

    # --- links ----------------------------------------------------------------------------
    # A link end naming a bridge of its node plugs a generated veth into that bridge
    # (any number of links may); any other end is a veth of that name, used once.
    used: dict[Endpoint, int] = {}     # end -> index of the link that uses it
    mentioned: set[Endpoint] = set()   # every end named by a link, even one rejected below
    pairs: list[tuple[_End, _End]] = []
    for i, (a, b) in enumerate(topo.links):
        ok = True
        parsed = []
        for j, end in enumerate((a, b)):
            node, ifname = end.split(":", 1)
            mentioned.add((node, ifname))
            path: tuple[PathPart, ...] = ("links", i, j)
            if node not in topo.nodes:
                err.add(path, f"unknown node {node!r} (declared nodes: {', '.join(topo.nodes)})")
                ok = False
            elif ifname == "lo":
                err.add(path, "'lo' cannot be a link end")
                ok = False
            elif ifname not in topo.nodes[node].bridges and (node, ifname) in used:
                err.add(path, f"link end {end} is already used by links[{used[(node, ifname)]}] (a veth end "
                              "belongs to one link; plug several links into a bridge instead)")
                ok = False
            parsed.append((node, ifname))
        if a == b:
            err.add(("links", i), "a link cannot connect an interface to itself")
            ok = False
        if not ok:
            continue
        resolved = []
        for (node, ifname), (pnode, pif) in ((parsed[0], parsed[1]), (parsed[1], parsed[0])):
            if ifname in topo.nodes[node].bridges:
                resolved.append(_End(node, generated_ifname(name, node, f"{ifname}/{pnode}/{pif}"), ifname, ifname))
            else:
                used[(node, ifname)] = i
                resolved.append(_End(node, ifname, ifname, None))
        pairs.append((resolved[0], resolved[1]))

    resources: list[Resource] = []
    interfaces: dict[Endpoint, str] = {}
    addresses: dict[Endpoint, list[str]] = {}

    for node, ns in nodes.items():
        if ns is not None:
            resources.append(Netns(ns))
            resources.append(Link(ns, "lo", "lo"))
            interfaces[(node, "lo")] = "lo"

    # --- bridges and interfaces ---------------------------------------------------------------
    for node, spec in topo.nodes.items():
        ns = nodes[node]
        for br, bspec in spec.bridges.items():
            resources.append(Link(ns, br, "bridge", mtu=bspec.mtu))
            interfaces[(node, br)] = br
            if br in spec.interfaces:
                err.add(("nodes", node, "interfaces", br),
                        f"{br} is a bridge of this node: give its addresses under bridges.{br}")
        for ifname, ispec in spec.interfaces.items():
            if (node, ifname) in used or ifname == "lo" or ifname in spec.bridges:
                continue
            if (node, ifname) in mentioned:
                continue  # its link was rejected above: that error is the one to fix
            if node == HOST:
                # An existing host device: configured, never created or deleted.
                resources.append(Link(None, ifname, "device", mtu=ispec.mtu, up=None, master=None))
                interfaces[(node, ifname)] = ifname
            else:
                err.add(("nodes", node, "interfaces", ifname),
                        f"{ifname} is not a link end or bridge of node {node!r} (add it to links)")

    # --- veth pairs -----------------------------------------------------------------------------
    for a_end, b_end in pairs:
        for me, peer in ((a_end, b_end), (b_end, a_end)):
            spec = topo.nodes[me.node]
            if me.master is None:
                mtu = spec.interfaces[me.logical].mtu if me.logical in spec.interfaces else None
                interfaces[(me.node, me.logical)] = me.ifname
            else:
                # A bridge port follows the MTU of the container end, else the bridge's.
                peer_spec = topo.nodes[peer.node].interfaces.get(peer.logical) if peer.master is None else None
                mtu = peer_spec.mtu if peer_spec and peer_spec.mtu else spec.bridges[me.master].mtu
            resources.append(Link(nodes[me.node], me.ifname, "veth", peer_ns=nodes[peer.node],
                                  peer_ifname=peer.ifname, mtu=mtu, master=me.master))

    # --- addresses ------------------------------------------------------------------------------
    seen_ip: dict[str, str] = {}
    for node, spec in topo.nodes.items():
        ns = nodes[node]
        declared: list[tuple[str, list[str], tuple[PathPart, ...]]] = [
            (br, b.addresses, ("nodes", node, "bridges", br, "addresses")) for br, b in spec.bridges.items()]
        declared += [(i, s.addresses, ("nodes", node, "interfaces", i, "addresses"))
                     for i, s in spec.interfaces.items() if i not in spec.bridges]
        for ifname, cidrs, path in declared:
            kernel_if = interfaces.get((node, ifname))
            if ifname == "lo":
                kernel_if = "lo"
                interfaces[(node, "lo")] = "lo"
                if ns is None:
                    resources.append(Link(None, "lo", "lo", up=None))
            if kernel_if is None:
                continue
            for k, cidr in enumerate(cidrs):
                ip = cidr.split("/")[0]
                if ip in seen_ip:
                    err.add((*path, k), f"address {ip} is already assigned to {seen_ip[ip]}")
                    continue
                seen_ip[ip] = f"{node}:{ifname}"
                resources.append(Address(ns, kernel_if, cidr))
                addresses.setdefault((node, ifname), []).append(cidr)

    # --- sysctls --------------------------------------------------------------------------------
    for node, spec in topo.nodes.items():
        for key, value in spec.sysctls.items():
            resources.append(Sysctl(nodes[node], key, normalize_sysctl_value(value)))

    # --- routes and rules --------------------------------------------------------------------------
    for node, spec in topo.nodes.items():
        ns = nodes[node]
        node_ifs = {i for (n, i) in interfaces if n == node} | {"lo"}
        connected = [ipaddress.ip_interface(c).network for c in
                     (c for (n, _), cs in addresses.items() if n == node for c in cs)]
        local_ips = {c.split("/")[0] for (n, _), cs in addresses.items() if n == node for c in cs}
        seen_routes: dict[tuple[Any, ...], int] = {}
        for k, r in enumerate(spec.routes):
            path = ("nodes", node, "routes", k)
            table = resolve_table(topo, r.table)
            if table is None:
                err.add((*path, "table"), f"unknown table {r.table!r} (define it under tables:)")
                continue
            fam_sources = [x for x in ((None if r.to == "default" else r.to), r.via, r.src) if x]
            fams = {_family(x) for x in fam_sources}
            if len(fams) > 1:
                err.add(path, _mixed_families({"to": None if r.to == "default" else r.to, "via": r.via,
                                               "src": r.src}) or "mixes IPv4 and IPv6 addresses")
                continue
            family = fams.pop() if fams else socket.AF_INET
            dst = r.to if r.to != "default" else ("0.0.0.0/0" if family == socket.AF_INET else "::/0")
            if r.dev is not None and r.dev not in node_ifs and node != HOST:
                err.add((*path, "dev"), f"node {node!r} has no interface {r.dev!r}")
            kernel_dev = interfaces.get((node, r.dev), r.dev) if r.dev else None
            if r.src is not None and r.src not in local_ips and node != HOST:
                err.add((*path, "src"), f"{r.src} is not an address of node {node!r}")
            if r.via is not None and not r.onlink:
                gw = ipaddress.ip_address(r.via)
                if gw.version == 6 and gw.is_link_local:
                    if not r.dev:
                        err.add((*path, "via"), "a link-local gateway needs dev")
                elif not any(gw in net for net in connected) and node != HOST:
                    err.add((*path, "via"), f"gateway {r.via} is not on a connected subnet of node {node!r} "
                            "(add an address in its subnet, or set onlink: true with dev)")
            if r.via is not None and r.via in local_ips:
                err.add((*path, "via"), f"gateway {r.via} is an address of node {node!r} itself")
            metric = r.metric if r.metric is not None else (1024 if family == socket.AF_INET6 else 0)
            if r.scope is not None:
                scope = r.scope if isinstance(r.scope, int) else SCOPES[r.scope]
            else:
                scope = RT_SCOPE_LINK if (r.type == "unicast" and not r.via) else 0
            route = Route(ns, family, table, dst, metric, r.type, r.via, kernel_dev, r.src, scope,
                          True if r.onlink else None)
            if route.key in seen_routes:
                err.add(path, f"duplicates routes[{seen_routes[route.key]}] (same table, destination and metric)")
                continue
            seen_routes[route.key] = k
            resources.append(route)

        seen_rules: dict[tuple[Any, ...], int] = {}
        unprioritised: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 0}
        for k, rl in enumerate(spec.rules):
            path = ("nodes", node, "rules", k)
            table = resolve_table(topo, rl.table)
            if table is None:
                err.add((*path, "table"), f"unknown table {rl.table!r} (define it under tables:)")
                continue
            fams = {_family(x) for x in (rl.from_, rl.to) if x}
            if len(fams) > 1:
                err.add(path, _mixed_families({"from": rl.from_, "to": rl.to}) or "mixes IPv4 and IPv6 selectors")
                continue
            family = fams.pop() if fams else socket.AF_INET
            if rl.priority is not None:
                priority = rl.priority
            else:
                # Explicit, stable priorities keep re-apply idempotent (the kernel would
                # otherwise pick one relative to whatever rules exist at that moment).
                priority = DEFAULT_RULE_PRIORITY - unprioritised[family]
                unprioritised[family] += 1
            fwmark = fwmask = None
            if rl.fwmark is not None:
                parts = [int(p, 16) for p in str(rl.fwmark).split("/")]
                fwmark = parts[0]
                fwmask = parts[1] if len(parts) > 1 else 0xFFFFFFFF
            rule = Rule(ns, family, priority, table,
                        _as_cidr(rl.from_) if rl.from_ else None, _as_cidr(rl.to) if rl.to else None,
                        rl.iif, rl.oif, fwmark, fwmask)
            if rule.key in seen_rules:
                err.add(path, f"duplicates rules[{seen_rules[rule.key]}]")
                continue
            seen_rules[rule.key] = k
            resources.append(rule)

    state = DesiredState(topo, nodes, resources, interfaces, addresses)
    _check_checks(topo, state, err)
    backend = nat_backend or topo.settings.nat_backend
    if backend == "auto" and any(spec.nat for spec in topo.nodes.values()):
        from .kernel.nat import detect_backend  # reads where the host's iptables points; no kernel access
        backend = detect_backend()
    state.nat_backend = backend
    for node, spec in topo.nodes.items():
        specs = _nat_specs(node, spec.nat, err)
        if specs:
            resources.append(Nat(nodes[node], backend, tuple(s.text() for s in canonical_order(specs))))
    if err.problems:
        raise src.fail(err.problems)
    return state


def resolve_target(state: DesiredState, target: str) -> str | None:
    """A check's `to`: an IP as written, or NODE:IFNAME -> that interface's first address."""
    if ":" in target and target.split(":", 1)[0] in state.topology.nodes:
        node, ifname = target.split(":", 1)
        cidrs = state.addresses.get((node, ifname))
        return cidrs[0].split("/")[0] if cidrs else None
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        return None


def _check_checks(topo: Topology, state: DesiredState, err: _Collector) -> None:
    def node_ref(path: tuple[PathPart, ...], node: str) -> None:
        if node not in topo.nodes:
            err.add(path, f"unknown node {node!r} (declared nodes: {', '.join(topo.nodes)})")

    def target_ref(path: tuple[PathPart, ...], target: str) -> None:
        if resolve_target(state, target) is not None:
            return
        node, _, ifname = target.partition(":")
        if node in topo.nodes and (node, ifname) in state.interfaces:
            err.add(path, f"{target} has no address to aim at: give it one under "
                          f"nodes.{node}.interfaces.{ifname}.addresses, or write an IP address")
        elif node in topo.nodes:
            err.add(path, f"node {node!r} has no interface {ifname!r}")
        else:
            err.add(path, f"{target!r} is neither an IP address nor NODE:IFNAME of an interface with an address")

    for k, check in enumerate(topo.checks):
        base: tuple[PathPart, ...] = ("checks", k, check.kind)
        spec = check.spec
        if check.kind in ("ping", "source", "tcp"):
            node_ref((*base, "from"), spec.from_)
            target_ref((*base, "to"), spec.to)
        if check.kind == "route":
            node_ref((*base, "node"), spec.node)
            if spec.expect.table is not None and resolve_table(topo, spec.expect.table) is None:
                err.add((*base, "expect", "table"), f"unknown table {spec.expect.table!r} (define it under tables:)")
        if check.kind == "mesh" and spec.nodes != "all":
            for j, n in enumerate(spec.nodes):
                node_ref((*base, "nodes", j), n)
        if check.kind == "tcp":
            node_ref((*base, "serve", "node"), spec.serve.node)


def _nat_specs(node: str, rules: list[NatRule], err: _Collector) -> list[NatSpec]:
    out = []
    for k, rule in enumerate(rules):
        path: tuple[PathPart, ...] = ("nodes", node, "nat", k)
        if rule.masquerade:
            spec = NatSpec("masquerade", source=rule.masquerade.source, out_interface=rule.masquerade.out_interface)
        elif rule.snat:
            spec = NatSpec("snat", source=rule.snat.source, out_interface=rule.snat.out_interface,
                           to_source=rule.snat.to_source)
        else:
            d = rule.dnat
            assert d is not None
            spec = NatSpec("dnat", destination=d.destination, in_interface=d.in_interface, protocol=d.protocol,
                           port=d.port, to=d.to)
        mixed = _mixed_families({"source": spec.source, "to_source": spec.to_source,
                                 "destination": spec.destination, "to": spec.to_addr})
        if mixed:
            err.add(path, mixed)
            continue
        if spec in out:
            err.add(path, "duplicates an earlier NAT rule of this node")
            continue
        out.append(spec)
    return out
