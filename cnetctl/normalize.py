"""Topology -> DesiredState: defaults, generated names, references, cross-checks.

A sequence of named stages (STAGES), each a method of Normalizer that reads what the
stages before it built and adds resources and problems; a test can run one alone.
Pure: no kernel access, not even the NAT backend `auto` (the API resolves it before).
Every problem found is collected, then raised once,
so a user sees all of them in one run. A wrong reference (an unknown node) is
the root cause of whatever cannot be resolved through it: it is reported first,
and the checks that would only repeat it (an interface "not a link end", a
gateway "not on a connected subnet") look at what the manifest declares, not
at what could be resolved. Every stage is linear in the size of the manifest.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import Problem, TopologyError, UsageError
from .hosts import HOST, Slice, problems, slice_topology
from .model.linkkinds import VethSpec
from .model.linkkinds import VxlanSpec as Vxlan
from .model.natspec import NatSpec, canonical_order
from .model.resources import Address, Fdb, Link, Nat, Neighbor, Netns, Resource, Route, Rule, Sysctl
from .model.topology import SCOPES, TABLE_ALIASES, NatRule, Node, RouteSpec, Topology, canonical_sysctl
from .model.topology import VxlanSpec as VxlanModel
from .source import PathPart, Source

DEFAULT_RULE_PRIORITY = 32000
RT_SCOPE_LINK = 253
DEFAULT_MTU = 1500
IPV6_MIN_MTU = 1280      # the kernel turns IPv6 off on a device below this (and refuses its addresses)
LIST_NODES_UP_TO = 10    # an unknown-node error lists the declared nodes up to this many
CLOSE_MATCHES_FOR = 50   # unknown names that get "did you mean" (difflib is O(nodes) per name)

Endpoint = tuple[str, str]
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class DesiredState:
    topology: Topology
    nodes: dict[str, str | None]                       # node name -> netns (None = host)
    resources: list[Resource]
    interfaces: dict[Endpoint, str] = field(default_factory=dict)   # (node, ifname) -> kernel ifname
    addresses: dict[Endpoint, list[str]] = field(default_factory=dict)  # (node, ifname) -> CIDRs
    nat_backend: str = "auto"
    warnings: list[str] = field(default_factory=list)
    _by_node: dict[str, list[str]] | None = field(default=None, repr=False, compare=False)
    # With hosts: one machine's slice of the topology, and what it knows of the other machines.
    placement: Slice | None = None

    @property
    def host(self) -> str | None:
        """The machine this is the slice for (None: a topology on one machine)."""
        return self.placement.host if self.placement else None

    def here(self, node: str) -> bool:
        return node in self.nodes

    def every_node(self) -> list[str]:
        """Every node of the topology, on whichever machine, but the machines' own root namespaces."""
        if self.placement is None:
            return [n for n in self.topology.nodes if n != HOST]
        whole = self.placement.whole
        return [n for n in whole.nodes if n not in whole.hosts]

    def interface_addresses(self, node: str, ifname: str) -> list[str] | None:
        """The CIDRs of NODE:IFNAME, on this machine or (as declared) on another."""
        if node in self.topology.nodes:
            return self.addresses.get((node, ifname))
        if self.placement is not None and self.placement.elsewhere(node):
            return self.placement.remote_addresses.get((node, ifname))
        return None

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
        if self._by_node is None:   # one pass, not one scan of every address per node
            self._by_node = {}
            for (n, _), cidrs in self.addresses.items():
                self._by_node.setdefault(n, []).extend(cidrs)
            for (n, _), cidrs in (self.placement.remote_addresses.items() if self.placement else ()):
                self._by_node.setdefault(n, []).extend(cidrs)
        return list(self._by_node.get(node, []))


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


def netns_name(topology: str, node: str, spec: Node, root: str = HOST) -> str | None:
    """None for the machine's root namespace (`host`, or with hosts: the node named after it)."""
    if node == root:
        return None
    return spec.netns or f"{topology}-{node}"


def resolve_table(topo: Topology, table: int | str) -> int | None:
    if isinstance(table, int):
        return table
    if table in topo.tables:
        return topo.tables[table]
    return TABLE_ALIASES.get(table)


def _family(addr: str) -> int:
    """The family of an address or network the model has validated."""
    return socket.AF_INET6 if ipaddress.ip_network(addr, strict=False).version == 6 else socket.AF_INET


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
    """Problems, root causes (wrong references) apart: they are reported first."""

    def __init__(self, src: Source):
        self.src = src
        self.problems: list[Problem] = []
        self.roots: list[Problem] = []

    def add(self, path: tuple[PathPart, ...], message: str, root: bool = False) -> None:
        (self.roots if root else self.problems).append(self.src.problem(path, message))

    def __bool__(self) -> bool:
        return bool(self.problems or self.roots)

    def extend(self, other: _Collector) -> None:
        """Add another collector's problems, each once."""
        for mine, theirs in ((self.roots, other.roots), (self.problems, other.problems)):
            mine += [p for p in theirs if p not in mine]

    def error(self) -> TopologyError:
        def order(ps: list[Problem]) -> list[Problem]:
            return sorted(ps, key=lambda p: (p.line or 0, p.path))
        return TopologyError(self.src.file, order(self.roots) + order(self.problems))


class _Names:
    """Unknown-node messages: the declared nodes when they are few, else a few close matches
    and the count (10,000 names in one error line help nobody)."""

    def __init__(self, names: list[str]):
        self.names = names
        self.asked: dict[str, list[str]] = {}

    def close(self, name: str) -> list[str]:
        if name not in self.asked:
            if len(self.asked) >= CLOSE_MATCHES_FOR:
                return []
            self.asked[name] = difflib.get_close_matches(name, self.names, n=3, cutoff=0.6)
        return self.asked[name]

    def unknown(self, name: str, meant: str | None = None) -> str:
        if len(self.names) <= LIST_NODES_UP_TO:
            hint = f"did you mean {meant!r}? " if meant else ""
            return f"unknown node {name!r} ({hint}declared nodes: {', '.join(self.names)})"
        close = [meant] if meant else self.close(name)
        names = [repr(c) for c in close]
        hint = f"did you mean {', '.join(names[:-1]) + ' or ' if len(names) > 1 else ''}{names[-1]}? " if names else ""
        return f"unknown node {name!r} ({hint}{len(self.names)} nodes are declared)"


def normalize(topo: Topology, src: Source | None = None, nat_backend: str | None = None,
              host: str | None = None) -> DesiredState:
    """nat_backend overrides settings.nat_backend. It is taken as given: a caller that wants
    `auto` to mean the host's iptables flavour resolves it first (api.resolve_nat_backend).

    A topology that spans machines (hosts:) is checked whole, every machine's slice; the result
    is `host`'s slice, or without `host` every slice in one list (for reports, never planned)."""
    src = src or Source("<manifest>")
    if not topo.hosts:
        if host is not None:
            raise UsageError(f"topology {topo.name} declares no hosts: (it lives on one machine); leave out "
                             f"the host ({host})")
        return Normalizer(topo, src, nat_backend).run()
    states = normalize_hosts(topo, src, nat_backend)
    if host is None:
        return _merged(topo, states)
    if host not in states:
        raise UsageError(f"topology {topo.name} has no host {host!r} (its hosts: {', '.join(states)})")
    return states[host]


def normalize_hosts(topo: Topology, src: Source, nat_backend: str | None = None) -> dict[str, DesiredState]:
    """Every machine's slice, normalized: the problems of all of them, raised once. The hosts
    and the nodes' on: come first (nothing can be sliced without them)."""
    err = _Collector(src)
    for path, message in problems(topo):
        err.add(path, message, root=True)
    if err:
        raise err.error()
    out = {}
    for host in topo.hosts:
        part = slice_topology(topo, host)
        normalizer = Normalizer(part.topology, src, nat_backend, part)
        normalizer.stages()
        err.extend(normalizer.err)   # a check is resolved on every machine: said once
        out[host] = normalizer.state
    if err:
        raise err.error()
    return out


def _merged(topo: Topology, states: dict[str, DesiredState]) -> DesiredState:
    """Every machine's resources in one list, machine after machine: what validate counts. Not
    a state to plan (keys repeat across machines)."""
    nodes: dict[str, str | None] = {}
    resources: list[Resource] = []
    for state in states.values():
        nodes.update(state.nodes)
        resources += state.resources
    backend = next(iter(states.values())).nat_backend if states else topo.settings.nat_backend
    return DesiredState(topo, nodes, resources, nat_backend=backend)


class Normalizer:
    """What the stages share: the manifest, what earlier stages built, the problems found.
    With a placement, `topo` is one machine's slice of the topology (hosts.slice_topology)."""

    def __init__(self, topo: Topology, src: Source, nat_backend: str | None = None,
                 placement: Slice | None = None):
        self.topo, self.src, self.name = topo, src, topo.name
        self.nat_backend = nat_backend or topo.settings.nat_backend
        self.err = _Collector(src)
        self.placement = placement
        self.root = placement.host if placement else HOST       # the node that is the root namespace
        self.whole = placement.whole if placement else topo     # every node, on whichever machine
        self.names = _Names(list(self.whole.nodes))
        self.nodes: dict[str, str | None] = {}
        self.used: dict[Endpoint, int] = {}      # veth end -> index of the link that uses it
        self.mentioned: set[Endpoint] = set()    # every end a link names (or meant), even a rejected one
        self.pairs: list[tuple[_End, _End]] = []
        self.resources: list[Resource] = []
        self.interfaces: dict[Endpoint, str] = {}
        self.addresses: dict[Endpoint, list[str]] = {}
        self.end_mtu: dict[Endpoint, tuple[int, str]] = {}   # (node, kernel ifname) -> (mtu, where it comes from)
        self.ports: dict[Endpoint, list[_End]] = {}          # (node, bridge) -> its generated ports
        # What the manifest declares per node, resolvable or not: the cross-checks use this.
        self.declared_ifs: dict[str, set[str]] = {}
        self.declared_nets: dict[str, list[Net]] = {}
        self.declared_ips: dict[str, set[str]] = {}
        # The result shares the collections above: every stage adds to it.
        self.state = DesiredState(topo, self.nodes, self.resources, self.interfaces, self.addresses,
                                  nat_backend=self.nat_backend, placement=placement)

    def stages(self) -> None:
        for stage in STAGES:
            stage(self)

    def run(self) -> DesiredState:
        self.stages()
        if self.err:
            raise self.err.error()
        return self.state

    def link_index(self, i: int) -> int:
        """The manifest's index of the topology's link `i` (a slice holds some of the links)."""
        return self.placement.links[i] if self.placement else i

    # --- hosts ------------------------------------------------------------------------------------
    def on_hosts(self) -> None:
        """Without hosts:, a node's on: is an error (with hosts:, normalize_hosts checked them)."""
        if self.placement is None:
            for path, message in problems(self.topo):
                self.err.add(path, message)

    def tunnels(self) -> None:
        """This machine's end of every link to another machine: a point-to-point VXLAN device (a
        generated port when the end is a bridge), its socket in the root namespace (hosts.py)."""
        for t in self.placement.tunnels if self.placement else ():
            spec, path = self.topo.nodes[t.node], ("links", t.link, t.end)
            self.mentioned.add((t.node, t.ifname))
            bridge = t.ifname if t.ifname in spec.bridges else None
            if t.ifname == "lo":
                self.err.add(path, "'lo' cannot be a link end")
                continue
            if bridge is None and (t.node, t.ifname) in self.used:
                self.err.add(path, f"link end {t.node}:{t.ifname} is already used by links["
                             f"{self.used[(t.node, t.ifname)]}] (a veth end belongs to one link; plug several links "
                             "into a bridge instead)")
                continue
            ns = self.nodes[t.node]
            ifname = generated_ifname(self.name, t.node, f"{bridge}/{t.peer[0]}/{t.peer[1]}") if bridge else t.ifname
            # No learning: every frame goes to the one remote (the kernel's all-zero entry).
            self.resources.append(Link(ns, ifname, "vxlan", mtu=t.mtu, master=bridge, spec=Vxlan(
                t.vni, t.port, t.local, None, t.remote, learning=False, underlay_host=ns is not None)))
            self.end_mtu[(t.node, ifname)] = (t.mtu, f"the tunnel of links[{t.link}]")
            if bridge is None:
                self.used[(t.node, t.ifname)] = t.link
                self.interfaces[(t.node, t.ifname)] = ifname
            else:
                self.ports.setdefault((t.node, bridge), []).append(_End(t.node, ifname, bridge, bridge))

    # --- nodes and links ----------------------------------------------------------------------
    def namespaces(self) -> None:
        seen_ns: dict[str, str] = {}
        for node, spec in self.topo.nodes.items():
            if node == HOST and spec.netns and self.placement is None:
                self.err.add(("nodes", HOST, "netns"),
                             "the host node is the namespace cnetctl runs in; it takes no netns")
            ns = netns_name(self.name, node, spec, self.root)
            self.nodes[node] = ns
            if ns is not None:
                if ns in seen_ns:
                    self.err.add(("nodes", node), f"netns {ns!r} is already used by node {seen_ns[ns]!r}")
                seen_ns[ns] = node

    def links(self) -> None:
        """A link end naming a bridge of its node plugs a generated veth into that bridge (any
        number of links may); any other end is a veth of that name, used once."""
        unknown: list[tuple[tuple[PathPart, ...], str, str]] = []
        for index, (a, b) in enumerate(self.topo.links):
            i, ok = self.link_index(index), True
            parsed = []
            for j, end in enumerate((a, b)):
                node, ifname = end.split(":", 1)
                self.mentioned.add((node, ifname))
                problem = self.end_problem(node, ifname, end)
                if problem == "unknown":
                    unknown.append((("links", i, j), node, ifname))
                elif problem:
                    self.err.add(("links", i, j), problem)
                ok = ok and not problem
                parsed.append((node, ifname))
            if a == b:
                self.err.add(("links", i), "a link cannot connect an interface to itself")
                ok = False
            if ok:
                self.pairs.append(self.resolve_pair(i, parsed[0], parsed[1]))
        for path, node, ifname in unknown:
            meant = self.meant(node, ifname)
            if meant:
                self.mentioned.add((meant, ifname))
            self.err.add(path, self.names.unknown(node, meant), root=True)

    def end_problem(self, node: str, ifname: str, end: str) -> str | None:
        if node not in self.topo.nodes:
            return "unknown"
        if ifname == "lo":
            return "'lo' cannot be a link end"
        if ifname not in self.topo.nodes[node].bridges and (node, ifname) in self.used:
            return (f"link end {end} is already used by links[{self.used[(node, ifname)]}] (a veth end "
                    "belongs to one link; plug several links into a bridge instead)")
        return None

    def meant(self, node: str, ifname: str) -> str | None:
        """The one declared node close to the unknown `node` that declares `ifname` and no link
        names: the link surely meant it (its "not a link end" error would only repeat this one)."""
        fits = [n for n in self.names.close(node)
                if ifname in self.whole.nodes[n].interfaces and (n, ifname) not in self.mentioned]
        return fits[0] if len(fits) == 1 else None

    def resolve_pair(self, i: int, a: Endpoint, b: Endpoint) -> tuple[_End, _End]:
        resolved = []
        for (node, ifname), (pnode, pif) in ((a, b), (b, a)):
            if ifname in self.topo.nodes[node].bridges:
                port = generated_ifname(self.name, node, f"{ifname}/{pnode}/{pif}")
                resolved.append(_End(node, port, ifname, ifname))
            else:
                self.used[(node, ifname)] = i
                resolved.append(_End(node, ifname, ifname, None))
        return resolved[0], resolved[1]

    def declared(self) -> None:
        for node, spec in self.topo.nodes.items():
            ifs = self.declared_ifs.setdefault(node, {"lo"})
            nets = self.declared_nets.setdefault(node, [])
            ips = self.declared_ips.setdefault(node, set())
            for ifname, cidrs in [*((b, s.addresses) for b, s in spec.bridges.items()),
                                  *((v, s.addresses) for v, s in spec.vxlans.items()),
                                  *((i, s.addresses) for i, s in spec.interfaces.items())]:
                ifs.add(ifname)
                for cidr in cidrs:
                    iface = ipaddress.ip_interface(cidr)
                    nets.append(iface.network)
                    ips.add(str(iface.ip))
        for node, ifname in self.mentioned:
            if node in self.declared_ifs:
                self.declared_ifs[node].add(ifname)

    # --- interfaces ---------------------------------------------------------------------------
    def bridges_and_interfaces(self) -> None:
        for node, ns in self.nodes.items():
            if ns is not None:
                self.resources += [Netns(ns), Link(ns, "lo", "lo")]
                self.interfaces[(node, "lo")] = "lo"
        for node, spec in self.topo.nodes.items():
            ns = self.nodes[node]
            for br, bspec in spec.bridges.items():
                self.resources.append(Link(ns, br, "bridge", mtu=bspec.mtu))
                self.interfaces[(node, br)] = br
                if br in spec.interfaces:
                    self.err.add(("nodes", node, "interfaces", br),
                                 f"{br} is a bridge of this node: give its addresses under bridges.{br}")
            for ifname, ispec in spec.interfaces.items():
                if (node, ifname) in self.used or ifname == "lo" or ifname in spec.bridges:
                    continue
                if (node, ifname) in self.mentioned:
                    continue  # its link was rejected above: that error is the one to fix
                if node == self.root:
                    # An existing host device: configured, never created or deleted.
                    self.resources.append(Link(None, ifname, "device", mtu=ispec.mtu, up=None, master=None))
                    self.interfaces[(node, ifname)] = ifname
                    if ispec.mtu is not None:
                        self.end_mtu[(node, ifname)] = (ispec.mtu, _mtu_path(node, "interfaces", ifname))
                else:
                    self.err.add(("nodes", node, "interfaces", ifname),
                                 f"{ifname} is not a link end or bridge of node {node!r} (add it to links)")

    def pair_mtu(self, a: _End, b: _End) -> tuple[int | None, str]:
        """One MTU for both ends of a veth pair (a pair whose ends differ drops what the smaller
        end cannot take): an end's own mtu, else its peer's, else the bridge's it is plugged into."""
        for end in (a, b):
            spec = self.topo.nodes[end.node]
            if end.master is None and end.logical in spec.interfaces and spec.interfaces[end.logical].mtu:
                return spec.interfaces[end.logical].mtu, _mtu_path(end.node, "interfaces", end.logical)
        for end in (a, b):
            if end.master is not None and self.topo.nodes[end.node].bridges[end.master].mtu:
                return self.topo.nodes[end.node].bridges[end.master].mtu, _mtu_path(end.node, "bridges", end.master)
        return None, ""

    def veths(self) -> None:
        for a_end, b_end in self.pairs:
            mtu, where = self.pair_mtu(a_end, b_end)
            for me, peer in ((a_end, b_end), (b_end, a_end)):
                if me.master is None:
                    self.interfaces[(me.node, me.logical)] = me.ifname
                if mtu is not None:
                    self.end_mtu[(me.node, me.ifname)] = (mtu, where)
                self.resources.append(Link(self.nodes[me.node], me.ifname, "veth", mtu=mtu, master=me.master,
                                           spec=VethSpec(self.nodes[peer.node], peer.ifname)))

    # --- VXLAN devices and static neighbours -------------------------------------------------------
    def vxlans(self) -> None:
        for node, spec in self.topo.nodes.items():
            taken: dict[tuple[int, int, str | None], str] = {}   # the kernel refuses a second (vni, port, local)
            for name, vx in spec.vxlans.items():
                path: tuple[PathPart, ...] = ("nodes", node, "vxlans", name)
                problem = self.vxlan_problem(node, name, vx, path, taken)
                if problem:
                    self.err.add(*problem)
                    continue
                taken[(vx.vni, vx.port, vx.local)] = name
                ns = self.nodes[node]
                dev = self.interfaces.get((node, vx.dev), vx.dev) if vx.dev else None
                self.resources.append(Link(ns, name, "vxlan", mtu=vx.mtu, master=vx.master, spec=Vxlan(
                    vx.vni, vx.port, vx.local, dev, vx.remote, vx.learning, vx.mac)))
                self.resources += [Fdb(ns, name, entry.mac, entry.dst) for entry in vx.fdb]
                self.interfaces[(node, name)] = name
                if vx.mtu is not None:
                    self.end_mtu[(node, name)] = (vx.mtu, _mtu_path(node, "vxlans", name))

    def vxlan_problem(self, node: str, name: str, vx: VxlanModel, path: tuple[PathPart, ...],
                      taken: dict[tuple[int, int, str | None], str]) -> tuple[tuple[PathPart, ...], str] | None:
        spec = self.topo.nodes[node]
        if name in spec.bridges or name in spec.interfaces or (node, name) in self.mentioned or name == "lo":
            return path, f"{name} is already an interface of node {node!r} (a bridge, an interface or a link end)"
        if vx.master is not None and vx.master not in spec.bridges:
            return (*path, "master"), f"{vx.master!r} is not a bridge of node {node!r}"
        if vx.dev is not None and node != self.root and vx.dev not in self.declared_ifs.get(node, set()):
            return (*path, "dev"), f"node {node!r} has no interface {vx.dev!r}"
        if vx.local is not None and node != self.root and vx.local not in self.declared_ips.get(node, set()):
            return (*path, "local"), f"{vx.local} is not an address of node {node!r}"
        if (vx.vni, vx.port, vx.local) in taken:
            return (*path, "vni"), (f"vni {vx.vni} on port {vx.port} is already used by vxlans."
                                    f"{taken[(vx.vni, vx.port, vx.local)]} of this node")
        return None

    def neighbors(self) -> None:
        for node, spec in self.topo.nodes.items():
            seen: dict[tuple[str, str], int] = {}
            for k, n in enumerate(spec.neighbors):
                path: tuple[PathPart, ...] = ("nodes", node, "neighbors", k)
                kernel_if = self.interfaces.get((node, n.dev))
                if kernel_if is None or (node == self.root and n.dev in spec.interfaces):
                    self.err.add((*path, "dev"), f"{n.dev!r} is not an interface node {node!r} creates (static "
                                 "neighbours go on the topology's own bridges, veths and VXLANs)")
                    continue
                if (n.dev, n.ip) in seen:
                    self.err.add(path, f"duplicates neighbors[{seen[(n.dev, n.ip)]}] (same dev and ip)")
                    continue
                seen[(n.dev, n.ip)] = k
                self.resources.append(Neighbor(self.nodes[node], kernel_if, n.ip, n.mac))

    def device_mtu(self, node: str, ifname: str) -> tuple[int, str] | None:
        """The MTU device `ifname` of `node` will have (None: unknown, a host device left as it is).
        A bridge without its own mtu follows its smallest port, as the kernel makes it."""
        spec = self.topo.nodes[node]
        if ifname in spec.bridges:
            own = spec.bridges[ifname].mtu
            if own:
                return own, _mtu_path(node, "bridges", ifname)
            ports = [self.end_mtu.get((node, link.ifname)) for link in self.ports.get((node, ifname), [])]
            known = [p for p in ports if p is not None]
            return min(known) if known else (DEFAULT_MTU, "")
        return self.end_mtu.get((node, self.interfaces.get((node, ifname), ifname)))

    # --- addresses ------------------------------------------------------------------------------
    def all_addresses(self) -> None:
        for pair in self.pairs:
            for end in pair:
                if end.master is not None:
                    self.ports.setdefault((end.node, end.master), []).append(end)
        seen_ip: dict[str, str] = {}
        for node, spec in self.topo.nodes.items():
            declared: list[tuple[str, list[str], tuple[PathPart, ...]]] = [
                (br, b.addresses, ("nodes", node, "bridges", br, "addresses")) for br, b in spec.bridges.items()]
            declared += [(v, s.addresses, ("nodes", node, "vxlans", v, "addresses")) for v, s in spec.vxlans.items()]
            declared += [(i, s.addresses, ("nodes", node, "interfaces", i, "addresses"))
                         for i, s in spec.interfaces.items() if i not in spec.bridges]
            for ifname, cidrs, path in declared:
                self.addresses_of(node, ifname, cidrs, path, seen_ip)

    def addresses_of(self, node: str, ifname: str, cidrs: list[str], path: tuple[PathPart, ...],
                     seen_ip: dict[str, str]) -> None:
        ns = self.nodes[node]
        kernel_if = self.interfaces.get((node, ifname))
        if ifname == "lo":
            kernel_if = "lo"
            self.interfaces[(node, "lo")] = "lo"
            if ns is None:
                self.resources.append(Link(None, "lo", "lo", up=None))
        if kernel_if is None:
            return
        mtu = self.device_mtu(node, ifname) if ifname != "lo" else None
        for k, cidr in enumerate(cidrs):
            ip = str(ipaddress.ip_interface(cidr).ip)
            if ip in seen_ip:
                self.err.add((*path, k), f"address {ip} is already assigned to {seen_ip[ip]}")
                continue
            seen_ip[ip] = f"{node}:{ifname}"
            problem = _address_problem(cidr, ifname, mtu)
            if problem:
                self.err.add((*path, k), problem)
                continue
            self.resources.append(Address(ns, kernel_if, cidr))
            self.addresses.setdefault((node, ifname), []).append(cidr)

    # --- sysctls --------------------------------------------------------------------------------
    def sysctls(self) -> None:
        for node, spec in self.topo.nodes.items():
            seen: dict[str, str] = {}
            for key, value in spec.sysctls.items():
                # One spelling per key: net/ipv4/ip_forward and net.ipv4.ip_forward are one sysctl,
                # whose original value one record keeps (shared with other topologies on host).
                canonical = canonical_sysctl(key)
                if canonical in seen:
                    self.err.add(("nodes", node, "sysctls", key), f"{key!r} is the same sysctl as "
                                 f"{seen[canonical]!r}, given above (net/ipv4/x and net.ipv4.x are one key)")
                    continue
                seen[canonical] = key
                self.resources.append(Sysctl(self.nodes[node], canonical, normalize_sysctl_value(value)))

    # --- routes and rules -----------------------------------------------------------------------
    def routes_and_rules(self) -> None:
        # Node by node, routes then rules: the order the resources are listed (and planned) in.
        for node, spec in self.topo.nodes.items():
            self.routes(node, spec)
            self.rules(node, spec)

    def routes(self, node: str, spec: Node) -> None:
        ns = self.nodes[node]
        seen_routes: dict[tuple[Any, ...], int] = {}
        for k, r in enumerate(spec.routes):
            path: tuple[PathPart, ...] = ("nodes", node, "routes", k)
            table = resolve_table(self.topo, r.table)
            if table is None:
                self.err.add((*path, "table"), f"unknown table {r.table!r} (define it under tables:)")
                continue
            to = None if r.to == "default" else r.to
            fams = {_family(x) for x in (to, r.via, r.src) if x}
            if len(fams) > 1:
                self.err.add(path, _mixed_families({"to": to, "via": r.via, "src": r.src})
                             or "mixes IPv4 and IPv6 addresses")
                continue
            family = fams.pop() if fams else socket.AF_INET
            self.route_refs(node, r, path, family)
            route = self.route(ns, node, r, family, table)
            if route.key in seen_routes:
                self.err.add(path, f"duplicates routes[{seen_routes[route.key]}] (same table, destination and "
                                   "metric)")
                continue
            seen_routes[route.key] = k
            self.resources.append(route)

    def route(self, ns: str | None, node: str, r: RouteSpec, family: int, table: int) -> Route:
        dst = r.to if r.to != "default" else ("0.0.0.0/0" if family == socket.AF_INET else "::/0")
        kernel_dev = self.interfaces.get((node, r.dev), r.dev) if r.dev else None
        metric = r.metric if r.metric is not None else (1024 if family == socket.AF_INET6 else 0)
        if r.scope is not None:
            scope = r.scope if isinstance(r.scope, int) else SCOPES[r.scope]
        else:
            scope = RT_SCOPE_LINK if (r.type == "unicast" and not r.via) else 0
        return Route(ns, family, table, dst, metric, r.type, r.via, kernel_dev, r.src, scope,
                     True if r.onlink else None)

    def route_refs(self, node: str, r: RouteSpec, path: tuple[PathPart, ...], family: int) -> None:
        """What the route names must exist on the node, as the manifest declares it."""
        local_ips = self.declared_ips[node]
        if r.dev is not None and r.dev not in self.declared_ifs[node] and node != self.root:
            self.err.add((*path, "dev"), f"node {node!r} has no interface {r.dev!r}")
        if r.src is not None and r.src not in local_ips and node != self.root:
            self.err.add((*path, "src"), f"{r.src} is not an address of node {node!r}")
        if r.via is None:
            return
        gw = ipaddress.ip_address(r.via)
        problem = _gateway_problem(gw, r)
        if problem:
            self.err.add((*path, "via"), problem)
        elif gw.version == 6 and gw.is_link_local:
            if not r.dev:
                self.err.add((*path, "via"), "a link-local gateway needs dev")
        elif not r.onlink and node != self.root:
            on = [net for net in self.declared_nets[node] if gw in net]
            if not on:
                self.err.add((*path, "via"), f"gateway {r.via} is not on a connected subnet of node {node!r} "
                             "(add an address in its subnet, or set onlink: true with dev)")
            elif gw.version == 4 and all(net.prefixlen <= 30 and gw == net.broadcast_address for net in on):
                self.err.add((*path, "via"), f"gateway {r.via} is the broadcast address of {on[0]} (the kernel "
                             "refuses it: 'Nexthop has invalid gateway')")
        if r.via in local_ips:
            self.err.add((*path, "via"), f"gateway {r.via} is an address of node {node!r} itself")

    def rules(self, node: str, spec: Node) -> None:
        ns = self.nodes[node]
        seen_rules: dict[tuple[Any, ...], int] = {}
        unprioritised: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 0}
        for k, rl in enumerate(spec.rules):
            path = ("nodes", node, "rules", k)
            table = resolve_table(self.topo, rl.table)
            if table is None:
                self.err.add((*path, "table"), f"unknown table {rl.table!r} (define it under tables:)")
                continue
            fams = {_family(x) for x in (rl.from_, rl.to) if x}
            if len(fams) > 1:
                self.err.add(path, _mixed_families({"from": rl.from_, "to": rl.to})
                             or "mixes IPv4 and IPv6 selectors")
                continue
            family = fams.pop() if fams else socket.AF_INET
            if rl.priority is not None:
                priority = rl.priority
            else:
                # Explicit, stable priorities keep re-apply idempotent (the kernel would
                # otherwise pick one relative to whatever rules exist at that moment).
                priority = DEFAULT_RULE_PRIORITY - unprioritised[family]
                unprioritised[family] += 1
            fwmark, fwmask = (rl.fwmark.value, rl.fwmark.rule_mask) if rl.fwmark is not None else (None, None)
            rule = Rule(ns, family, priority, table,
                        _as_cidr(rl.from_) if rl.from_ else None, _as_cidr(rl.to) if rl.to else None,
                        rl.iif, rl.oif, fwmark, fwmask)
            if rule.key in seen_rules:
                self.err.add(path, f"duplicates rules[{seen_rules[rule.key]}]")
                continue
            seen_rules[rule.key] = k
            self.resources.append(rule)

    # --- checks and NAT -------------------------------------------------------------------------
    def check_references(self) -> None:
        self.checks(self.state)

    def checks(self, state: DesiredState) -> None:
        """Every name a check refers to (its spec's refs(): nodes, targets, tables) resolves."""
        resolvers = {"node": self.node_ref, "target": self.target_ref, "table": self.table_ref}
        for k, check in enumerate(self.topo.checks):
            for ref in check.spec.refs():
                resolvers[ref.what](state, ("checks", k, check.kind, *ref.path), ref.value)

    def node_ref(self, state: DesiredState, path: tuple[PathPart, ...], node: str | int) -> None:
        if node not in self.whole.nodes:
            self.err.add(path, self.names.unknown(str(node)), root=True)

    def table_ref(self, state: DesiredState, path: tuple[PathPart, ...], table: str | int) -> None:
        if resolve_table(self.topo, table) is None:
            self.err.add(path, f"unknown table {table!r} (define it under tables:)")

    def target_ref(self, state: DesiredState, path: tuple[PathPart, ...], target: str | int) -> None:
        target = str(target)
        if resolve_target(state, target) is not None:
            return
        node, _, ifname = target.partition(":")
        if self.placement is not None and self.placement.elsewhere(node):
            return   # judged by the slice of the machine the node lives on
        spec = self.topo.nodes.get(node)
        if spec is not None and (node, ifname) in state.interfaces:
            self.err.add(path, f"{target} has no address to aim at: give it one under "
                               f"nodes.{node}.interfaces.{ifname}.addresses, or write an IP address")
        elif spec is not None and (ifname in spec.interfaces or ifname in spec.bridges
                                   or (node, ifname) in self.mentioned):
            return  # declared, but its link or address was rejected: that error is the one to fix
        elif spec is not None:
            self.err.add(path, f"node {node!r} has no interface {ifname!r}")
        else:
            self.err.add(path, f"{target!r} is neither an IP address nor NODE:IFNAME of an interface with an "
                               "address")

    def nat(self) -> None:
        for node, spec in self.topo.nodes.items():
            specs = _nat_specs(node, spec.nat, self.err)
            if specs:
                self.resources.append(Nat(self.nodes[node], self.nat_backend,
                                          tuple(s.text() for s in canonical_order(specs))))


Stage = Callable[[Normalizer], None]

# In order: each stage reads what the ones before it built (the checks of a route look at the
# interfaces and addresses the manifest declares, the veths need the links resolved …).
STAGES: tuple[Stage, ...] = (
    Normalizer.on_hosts,
    Normalizer.namespaces,
    Normalizer.links,
    Normalizer.tunnels,
    Normalizer.declared,
    Normalizer.bridges_and_interfaces,
    Normalizer.veths,
    Normalizer.vxlans,
    Normalizer.all_addresses,
    Normalizer.neighbors,
    Normalizer.sysctls,
    Normalizer.routes_and_rules,
    Normalizer.check_references,
    Normalizer.nat,
)


def _mtu_path(node: str, kind: str, ifname: str) -> str:
    return f"nodes.{node}.{kind}.{ifname}.mtu"


def _address_problem(cidr: str, ifname: str, mtu: tuple[int, str] | None) -> str | None:
    """What the kernel refuses about an interface address, found before anything is touched."""
    iface = ipaddress.ip_interface(cidr)
    if iface.version != 6:
        return None
    if iface.ip.is_multicast:
        return f"{cidr} is a multicast address: the kernel does not assign one to an interface"
    if iface.ip.is_unspecified:
        return f"{cidr} is the unspecified address :: and cannot be assigned to an interface"
    if iface.ip.is_loopback and ifname != "lo":
        return f"{cidr} is the loopback address: the kernel assigns it to lo only"
    if mtu is not None and mtu[0] < IPV6_MIN_MTU:
        value, where = mtu
        source = f" (set by {where})" if where else " (its smallest port's)"
        return (f"IPv6 address {cidr} on {ifname}, whose MTU is {value}{source}: IPv6 needs an MTU of at "
                f"least {IPV6_MIN_MTU} (the kernel turns IPv6 off below that)")
    return None


def _gateway_problem(gw: ipaddress.IPv4Address | ipaddress.IPv6Address, r: RouteSpec) -> str | None:
    """Gateways the kernel refuses whatever the rest of the topology says."""
    if gw.is_multicast:
        return f"gateway {r.via} is a multicast address (the kernel refuses it as a next hop)"
    if gw.version == 6 and (gw.is_unspecified or gw.is_loopback):
        return f"gateway {r.via} cannot be a next hop (the kernel refuses it)"
    scope = r.scope if isinstance(r.scope, int) or r.scope is None else SCOPES[r.scope]
    if gw.version == 4 and scope is not None and scope >= RT_SCOPE_LINK:
        return (f"a route via a gateway cannot have scope {r.scope} (the kernel refuses it: scope link and "
                "host are for routes without a gateway)")
    return None


def resolve_target(state: DesiredState, target: str) -> str | None:
    """A check's `to`: an IP as written, or NODE:IFNAME -> that interface's first address."""
    node, sep, ifname = target.partition(":")
    if sep and (node in state.topology.nodes or (state.placement and state.placement.elsewhere(node))):
        cidrs = state.interface_addresses(node, ifname)
        return str(ipaddress.ip_interface(cidrs[0]).ip) if cidrs else None
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        return None


def _nat_specs(node: str, rules: list[NatRule], err: _Collector) -> list[NatSpec]:
    out: list[NatSpec] = []
    seen: set[NatSpec] = set()
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
                           port=d.port, to_addr=d.to.addr, to_port=d.to.port)
        mixed = _mixed_families({"source": spec.source, "to_source": spec.to_source,
                                 "destination": spec.destination, "to": spec.to_addr})
        if mixed:
            err.add(path, mixed)
            continue
        if spec in seen:
            err.add(path, "duplicates an earlier NAT rule of this node")
            continue
        seen.add(spec)
        out.append(spec)
    return out
