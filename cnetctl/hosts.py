"""Topologies that span machines: what each machine applies (pure: no kernel, no network).

A manifest with `hosts:` names the machines, each by its own underlay address. Every
node lives `on:` one of them; a node named after a host is that machine's root
namespace (what `host` is on one machine). `slice_topology(topo, host)` is what one
machine applies: the nodes living there, the links wholly there, and a tunnel end for
every link whose other end is on another machine. Checks run where the node they start
from lives (`Slice.runs_on`); the other machines report them as skipped.

A tunnel is a point-to-point VXLAN device named after the link end (r1:eth1 -> `eth1`
in r1), created from the machine's root namespace straight into the node's, so its UDP
socket stays on the underlay: local = this machine's address, remote = the other's.
Both machines derive the same VNI without talking (`tunnel_vnis`): a hash of the
topology name and the link's two ends, sorted, into 8388608..16777215 (the upper half
of the 24-bit space; hand-written VNIs are usually small), on UDP port 4789 (IANA's
VXLAN port). The kernel allows one device per (VNI, port) among the sockets of a
namespace, so a VNI already taken in the topology (another tunnel, a `vxlans:` entry on
that port) moves the link on to the next candidate of its hash chain, in the order of
the sorted ends: re-applying an unchanged file, on either machine, gives the same VNIs.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import UsageError
from .model.topology import Topology
from .source import PathPart

HOST = "host"
TUNNEL_PORT = 4789
VNI_FIRST = 1 << 23          # derived VNIs are VNI_FIRST .. 2**24 - 1
VNI_SPAN = 1 << 23
UNDERLAY_MTU = 1500
VXLAN_OVERHEAD = {4: 50, 6: 70}   # outer IP + UDP + VXLAN + inner Ethernet headers
INVENTORY_GROUP = "cnetctl"      # the Ansible group of `cnetctl inventory`; cnetctl_host is the --host value

Endpoint = tuple[str, str]
Problem = tuple[tuple[PathPart, ...], str]


@dataclass(frozen=True)
class Tunnel:
    """This machine's end of a link to another machine."""

    link: int            # the link's index in the manifest
    end: int             # which of its two ends is here
    node: str
    ifname: str          # as written: a bridge of the node gets a generated VXLAN port
    peer: Endpoint       # (node, ifname) at the far end
    vni: int
    port: int
    local: str           # this machine's underlay address
    remote: str          # the far machine's
    mtu: int


@dataclass(frozen=True)
class Slice:
    """What one machine of a topology applies, and what it knows of the others."""

    host: str
    whole: Topology
    topology: Topology                   # the nodes living here, the links wholly here, every check
    links: tuple[int, ...]               # topology.links[i] is whole.links[links[i]]
    tunnels: tuple[Tunnel, ...]
    home: dict[str, str]                 # every node -> the host it lives on (a host's own node: itself)
    runs_on: tuple[tuple[str, ...], ...]  # per check of the manifest: the hosts that run it

    @property
    def address(self) -> str:
        return self.whole.hosts[self.host].address

    def elsewhere(self, node: str) -> str | None:
        """The host `node` lives on when that is another machine, else None."""
        where = self.home.get(node)
        return where if where is not None and where != self.host else None

    @functools.cached_property
    def remote_addresses(self) -> dict[Endpoint, list[str]]:
        """(node, ifname) -> CIDRs of the nodes on other machines, as declared: what a check aims at."""
        out: dict[Endpoint, list[str]] = {}
        for node, _kind, ifname, _k, cidr in declared_addresses(self.whole):
            if self.elsewhere(node):
                out.setdefault((node, ifname), []).append(cidr)
        return out

    def skipped_by(self, check: int) -> str | None:
        """The host that runs check number `check` when this one does not."""
        hosts = self.runs_on[check]
        return None if self.host in hosts else hosts[0]


def declared_addresses(topo: Topology) -> Iterator[tuple[str, str, str, int, str]]:
    """(node, kind, ifname, index, cidr) of every address the manifest gives an interface."""
    for node, spec in topo.nodes.items():
        for kind, ifaces in (("bridges", spec.bridges), ("vxlans", spec.vxlans), ("interfaces", spec.interfaces)):
            for ifname, ispec in ifaces.items():
                if kind == "interfaces" and ifname in spec.bridges:
                    continue   # normalize refuses it (addresses of a bridge go under bridges)
                for k, cidr in enumerate(ispec.addresses):
                    yield node, kind, ifname, k, cidr


def host_addresses(topo: Topology) -> dict[str, str]:
    """Each machine's underlay address (`hosts:` name -> address); {} on one machine."""
    return {name: str(spec.address) for name, spec in topo.hosts.items()}


def homes(topo: Topology) -> dict[str, str]:
    """Node -> the host it lives on, for every node whose place is known."""
    out = {h: h for h in topo.hosts}
    for node, spec in topo.nodes.items():
        if node not in topo.hosts and spec.on in topo.hosts:
            out[node] = spec.on
    return out


def _version(address: str) -> int:
    return ipaddress.ip_address(address).version


# --- validation ---------------------------------------------------------------------------------

def problems(topo: Topology) -> list[Problem]:
    """What is wrong with the manifest's hosts and the nodes' `on:` (the rest of the manifest is
    checked by normalizing every machine's slice)."""
    if not topo.hosts:
        return [(("nodes", n, "on"), "on: needs a hosts: section naming the machines, e.g. hosts: {node1: "
                 "{address: 192.0.2.11}}") for n, spec in topo.nodes.items() if spec.on is not None]
    out: list[Problem] = []
    seen: dict[Any, str] = {}
    for host, spec in topo.hosts.items():
        if host == HOST:
            out.append((("hosts", host), "'host' is reserved for the namespace cnetctl runs in on one machine: "
                                         "name the machine (e.g. node1)"))
        address = ipaddress.ip_address(spec.address)
        if address in seen:
            out.append((("hosts", host, "address"), f"address {spec.address} is already host {seen[address]}'s"))
        seen[address] = host
    out += _node_problems(topo)
    out += _link_problems(topo)
    out += _check_problems(topo, homes(topo))
    return out + _duplicate_addresses(topo, homes(topo))


def _node_problems(topo: Topology) -> list[Problem]:
    out: list[Problem] = []
    declared = ", ".join(topo.hosts)
    for node, spec in topo.nodes.items():
        if node == HOST:
            out.append((("nodes", node), f"with hosts:, no node is called 'host': each machine's root namespace "
                                         f"is the node named after its host ({declared})"))
        elif node in topo.hosts:
            if spec.on is not None:
                out.append((("nodes", node, "on"), f"node {node} is host {node}'s own root namespace: it takes no "
                                                   "on:"))
            if spec.netns is not None:
                out.append((("nodes", node, "netns"), f"node {node} is host {node}'s own root namespace: it takes "
                                                      "no netns"))
        elif spec.on is None:
            out.append((("nodes", node, "on"), f"node {node!r} needs on: HOST, the machine it lives on (one of "
                                               f"{declared})"))
        elif spec.on not in topo.hosts:
            out.append((("nodes", node, "on"), f"unknown host {spec.on!r} (declared hosts: {declared})"))
    return out


def _link_problems(topo: Topology) -> list[Problem]:
    home = homes(topo)
    out: list[Problem] = []
    for i, link in enumerate(topo.links):
        a, b = (home.get(end.split(":", 1)[0]) for end in link)
        if a is None or b is None or a == b:
            continue
        fams = {h: _version(topo.hosts[h].address) for h in (a, b)}
        if fams[a] != fams[b]:
            out.append((("links", i), f"its ends are on {a} ({topo.hosts[a].address}) and {b} "
                                      f"({topo.hosts[b].address}): a tunnel between machines needs both "
                                      "addresses in one family (IPv4 or IPv6)"))
    return out


def _owner(topo: Topology, target: str) -> str | None:
    """The node that holds what a check aims at: NODE:IFNAME's node, or the node declaring the IP."""
    node, sep, _ = target.partition(":")
    if sep and node in topo.nodes:
        return node
    try:
        want = ipaddress.ip_address(target)
    except ValueError:
        return None
    return next((n for n, _kind, _if, _k, cidr in declared_addresses(topo)
                 if ipaddress.ip_interface(cidr).ip == want), None)


def _check_problems(topo: Topology, home: dict[str, str]) -> list[Problem]:
    """A check with two ends of its own (a listener and a sender) runs on one machine: both there."""
    out: list[Problem] = []
    for k, check in enumerate(topo.checks):
        spec: Any = check.spec
        path: tuple[PathPart, ...]
        if check.kind == "source":
            other, path = _owner(topo, spec.to), ("checks", k, "source", "to")
        elif check.kind == "tcp":
            other, path = spec.serve.node, ("checks", k, "tcp", "serve", "node")
        else:
            continue
        mine, theirs = home.get(spec.from_), home.get(other or "")
        if mine and theirs and mine != theirs:
            out.append((path, f"the {check.kind} check's receiver {other} lives on {theirs} and its sender "
                              f"{spec.from_} on {mine}: it runs on one machine, both ends there (check across "
                              "machines with ping)"))
    return out


def _duplicate_addresses(topo: Topology, home: dict[str, str]) -> list[Problem]:
    """An address given on two machines (twice on one machine, the machine's slice says so)."""
    out: list[Problem] = []
    seen: dict[Any, tuple[str, str]] = {}
    for node, kind, ifname, k, cidr in declared_addresses(topo):
        ip = ipaddress.ip_interface(cidr).ip
        where = home.get(node)
        if ip in seen and where is not None and seen[ip][1] not in (where, ""):
            out.append((("nodes", node, kind, ifname, "addresses", k),
                        f"address {ip} is already assigned to {seen[ip][0]} (on {seen[ip][1]})"))
        seen.setdefault(ip, (f"{node}:{ifname}", where or ""))
    return out


# --- tunnels ------------------------------------------------------------------------------------

def tunnel_vni(topology: str, ends: tuple[str, str], attempt: int = 0) -> int:
    """Candidate `attempt` of the link's VNI: sha256 of the topology and the sorted ends."""
    key = "\n".join([topology, *sorted(ends)] + ([str(attempt)] if attempt else []))
    return VNI_FIRST + int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % VNI_SPAN


def crossing(topo: Topology) -> list[int]:
    """The links whose two ends live on two machines."""
    home = homes(topo)
    out = []
    for i, link in enumerate(topo.links):
        a, b = (home.get(end.split(":", 1)[0]) for end in link)
        if a is not None and b is not None and a != b:
            out.append(i)
    return out


def tunnel_vnis(topo: Topology) -> dict[int, int]:
    """Link index -> VNI of every link between machines: the first candidate of its hash chain not
    taken by a `vxlans:` entry on the tunnel port or by a link whose sorted ends come first."""
    taken = {vx.vni for spec in topo.nodes.values() for vx in spec.vxlans.values() if vx.port == TUNNEL_PORT}
    out: dict[int, int] = {}
    for (a, b), i in sorted(((min(topo.links[i]), max(topo.links[i])), i) for i in crossing(topo)):
        attempt = 0
        while (vni := tunnel_vni(topo.name, (a, b), attempt)) in taken:
            attempt += 1
        taken.add(vni)
        out[i] = vni
    return out


def _end_mtu(topo: Topology, end: str) -> tuple[int | None, int | None]:
    """(its own mtu, its bridge's mtu) as the manifest gives them."""
    node, ifname = end.split(":", 1)
    spec = topo.nodes.get(node)
    if spec is None:
        return None, None
    if ifname in spec.bridges:
        return None, spec.bridges[ifname].mtu
    own = spec.interfaces.get(ifname)
    return (own.mtu if own else None), None


def tunnel_mtu(topo: Topology, link: tuple[str, str], version: int) -> int:
    """One MTU for both ends, as for a veth pair: an end's own, else a bridge's, else what a
    1500-byte underlay carries after the VXLAN headers."""
    mtus = [_end_mtu(topo, end) for end in link]
    for pick in (0, 1):
        for mtu in mtus:
            if mtu[pick] is not None:
                return mtu[pick]   # type: ignore[return-value]
    return UNDERLAY_MTU - VXLAN_OVERHEAD[version]


# --- slicing ------------------------------------------------------------------------------------

def runs_on(topo: Topology, home: dict[str, str]) -> tuple[tuple[str, ...], ...]:
    """Per check: the hosts of the nodes it starts from (a mesh: of its members), in hosts order."""
    out = []
    for check in topo.checks:
        origins = check.spec.origins()
        if origins is None:   # every node: each machine pings from its own
            origins = [n for n in topo.nodes if n not in topo.hosts]
        where = {home[n] for n in origins if n in home}
        out.append(tuple(h for h in topo.hosts if h in where) or (next(iter(topo.hosts)),))
    return tuple(out)


def slice_topology(topo: Topology, host: str) -> Slice:
    """What machine `host` applies. The manifest is assumed to pass problems() (its nodes' `on:`
    are sound); a link with an unknown node goes with its known end, to be refused there."""
    home = homes(topo)
    hosts = list(topo.hosts)
    nodes = {n: spec for n, spec in topo.nodes.items() if home.get(n) == host}
    links, local, tunnels = [], [], []
    vnis = tunnel_vnis(topo)
    for i, link in enumerate(topo.links):
        where = [home.get(end.split(":", 1)[0]) for end in link]
        if i in vnis:
            if host in where:
                tunnels.append(_tunnel(topo, i, where.index(host), vnis[i], where))
            continue
        known = [h for h in where if h is not None]
        if (known[0] if known else hosts[0]) == host:
            links.append(link)
            local.append(i)
    sliced = topo.model_copy(update={"nodes": nodes, "links": links})
    return Slice(host, topo, sliced, tuple(local), tuple(tunnels), home, runs_on(topo, home))


def _tunnel(topo: Topology, i: int, end: int, vni: int, where: list[str | None]) -> Tunnel:
    link = topo.links[i]
    node, ifname = link[end].split(":", 1)
    peer_node, peer_if = link[1 - end].split(":", 1)
    here, there = where[end], where[1 - end]
    assert here is not None and there is not None
    local, remote = topo.hosts[here].address, topo.hosts[there].address
    return Tunnel(i, end, node, ifname, (peer_node, peer_if), vni, TUNNEL_PORT, local, remote,
                  tunnel_mtu(topo, link, _version(local)))


# --- which machine is this ----------------------------------------------------------------------

def check_host(topo: Topology, host: str | None) -> None:
    """`--host` names a declared host, and only where the manifest declares hosts."""
    if host is None:
        return
    if not topo.hosts:
        raise UsageError(f"--host {host}: topology {topo.name} declares no hosts: (it lives on one machine); "
                         "leave --host out")
    if host not in topo.hosts:
        raise UsageError(f"--host {host}: topology {topo.name} has no host {host!r} (its hosts: "
                         f"{', '.join(topo.hosts)})")


def pick_host(topo: Topology, local: set[str]) -> str:
    """The host whose address is configured on this machine (`local`: its addresses)."""
    mine = [h for h, spec in topo.hosts.items()
            if ipaddress.ip_address(spec.address) in {ipaddress.ip_address(a) for a in local}]
    if len(mine) == 1:
        return mine[0]
    listed = ", ".join(f"{h} ({spec.address})" for h, spec in topo.hosts.items())
    if not mine:
        raise UsageError(f"topology {topo.name} spans machines and none of its hosts' addresses is configured "
                         f"here ({listed}): say which machine this is with --host NAME")
    raise UsageError(f"topology {topo.name}: several of its hosts' addresses are configured here "
                     f"({', '.join(mine)}): say which machine this is with --host NAME")


# --- Ansible ------------------------------------------------------------------------------------

def inventory(topo: Topology, file: str) -> str:
    """An Ansible inventory (YAML) of the hosts: group `cnetctl`, each host reached at its
    address (ansible_host) and told its name (cnetctl_host, for --host). Every value is a
    double-quoted scalar, so a name such as `yes` or `1` stays a string."""
    def q(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = [f"# Ansible inventory of topology {topo.name}: cnetctl inventory {file}",
             "all:", "  children:", f"    {INVENTORY_GROUP}:", "      hosts:"]
    for host, spec in topo.hosts.items():
        lines += [f"        {q(host)}:", f"          ansible_host: {q(spec.address)}",
                  f"          cnetctl_host: {q(host)}"]
    lines += ["      vars:", f"        cnetctl_topology: {q(topo.name)}"]
    return "\n".join(lines) + "\n"
