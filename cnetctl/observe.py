"""kernel -> CurrentState: only what a topology owns, found by its labels (docs/SPEC.md §3).

Also reports conflicts: objects the desired state needs whose names are taken
by something that is not this topology's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from . import RTPROT_CNETCTL, owner_label, owner_of
from .kernel import links as klinks
from .kernel import nat as knat
from .kernel import routes as kroutes
from .kernel.addresses import dump_addresses
from .kernel.labels import lo_alias
from .kernel.linkkinds import KERNEL_LINK_KINDS
from .kernel.netns import Sockets, is_stale_mountpoint, list_netns, netns_path
from .kernel.rtnl import Rtnl
from .kernel.sysctl import read_sysctl
from .model.linkkinds import VethSpec, VxlanSpec
from .model.resources import Address, Fdb, ForwardAccept, Key, Link, Nat, Neighbor, Netns, Resource, Route, Rule, Sysctl
from .state import State, other_host_owners

if TYPE_CHECKING:
    from .normalize import DesiredState

RTPROT_KERNEL = 2      # routes the kernel adds for a configured address (connected subnets)
MAIN_TABLE = 254
LOOPBACK_DEFAULTS = {"127.0.0.1/8", "::1/128"}


@dataclass
class CurrentState:
    resources: list[Resource] = field(default_factory=list)
    owned_netns: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    forward_drops: dict[str | None, list[str]] = field(default_factory=dict)  # ns -> FORWARD chains with DROP

    def by_key(self) -> dict[tuple[object, ...], Resource]:
        return {r.key: r for r in self.resources}


def netns_owner(sockets: Sockets, ns: str) -> str | None:
    """The topology that owns namespace `ns` (label on its lo), or None."""
    return owner_of(lo_alias(sockets, ns))


def scan_owners(sockets: Sockets) -> dict[str, str | None]:
    """Every named netns -> its owning topology (None when not cnetctl's)."""
    owners = {}
    namespaces = list_netns()
    sockets.open_many(namespaces)   # all in one thread, not one each
    for ns in namespaces:
        owners[ns] = netns_owner(sockets, ns)
        if owners[ns] is None:
            sockets.close(ns)
    return owners


def observe(name: str, state: State, sockets: Sockets, desired: DesiredState | None = None, *,
            inside: bool = True) -> CurrentState:
    """What topology `name` owns. inside=False (destroy): of its namespaces only the namespaces
    themselves (all they hold goes with them), the host's veth ends still told by the namespace
    their peer is in."""
    cur = CurrentState()
    owners = scan_owners(sockets)
    owned = [ns for ns, owner in owners.items() if owner == name]
    cur.owned_netns = owned
    cur.resources += [Netns(ns) for ns in owned]
    wanted = {r.key: r for r in desired.resources} if desired else {}
    if desired:
        _netns_conflicts(cur, owners, wanted, name)
    else:
        # A run killed between creating a mount point and mounting the namespace leaves an
        # empty file under the name of one of the topology's namespaces: destroy removes it.
        cur.resources += [Netns(ns) for ns in sorted({ns for ns in state.nodes.values() if ns is not None})
                          if ns in owners and is_stale_mountpoint(ns)]
    scope = _Scope(name, state, wanted, desired is not None)
    live_links: dict[str | None, list[klinks.LiveLink]] = {}
    no_firewall = knat.firewall_empty(owned) if inside else set()
    for ns in [None, *owned] if inside else [None]:
        live_links[ns] = _observe_ns(cur, sockets.nl(ns), ns, scope, firewall=ns not in no_firewall)
    _pair_veths(cur, live_links, sockets)
    if not inside:
        _peer_namespaces(cur, live_links[None], owned, sockets)
    _observe_sysctls(cur, state, wanted, owned if inside else [])
    return cur


def _peer_namespaces(cur: CurrentState, host: list[klinks.LiveLink], owned: list[str], sockets: Sockets) -> None:
    """The namespace of each host veth end's peer among `owned` (by IFLA_LINK_NETNSID and the
    host's ids of those namespaces), for veths _pair_veths left unpaired: their peer's side
    was not read."""
    by_name = {link.ifname: link for link in host}
    ids: dict[int, str | None] | None = None
    out: list[Resource] = []
    for r in cur.resources:
        me = by_name.get(r.ifname) if isinstance(r, Link) and r.ns is None and r.kind == "veth" else None
        if isinstance(r, Link) and me is not None and me.peer_netnsid is not None and \
                (not isinstance(r.spec, VethSpec) or r.spec.peer_ifname is None):
            if ids is None:
                ids = klinks.netns_ids(sockets.nl(None), {ns: netns_path(ns) for ns in owned})
            if me.peer_netnsid in ids:
                r = replace(r, spec=VethSpec(ids[me.peer_netnsid], None))
        out.append(r)
    cur.resources = out


def _netns_conflicts(cur: CurrentState, owners: dict[str, str | None], wanted: dict[Key, Resource],
                     name: str) -> None:
    for wanted_ns in (r.name for r in wanted.values() if isinstance(r, Netns)):
        if wanted_ns in owners and owners[wanted_ns] != name and not is_stale_mountpoint(wanted_ns):
            who = f"topology {owners[wanted_ns]}" if owners[wanted_ns] else \
                "nobody known to cnetctl (a user's namespace)"
            cur.conflicts.append(f"netns {wanted_ns} exists and is owned by {who}")


class _Scope:
    """What decides, in one observe() run, which live objects are this topology's."""

    def __init__(self, name: str, state: State, wanted: dict[Key, Resource], planning: bool):
        self.name, self.label, self.wanted, self.planning = name, owner_label(name), wanted, planning
        records = state.host_records()
        self.host_keys = {r.key for r in records}
        # Devices the topology configures but does not own: declared now, or changed by an
        # earlier apply (their original MTU and addresses are to be restored on removal).
        self.devices = {r.ifname for r in wanted.values() if isinstance(r, Link) and r.ns is None
                        and r.kind in ("device", "lo")}
        self.devices |= set(state.device_originals) | {r.ifname for r in records if isinstance(r, Address)}
        self.declared_devices = {r.ifname for r in wanted.values() if isinstance(r, Link) and r.ns is None
                                 and r.kind == "device"}
        self.others = other_host_owners(state) if planning else {}
        self.wanted_routes: dict[str | None, list[Route]] = {}
        for r in wanted.values():
            if isinstance(r, Route):
                self.wanted_routes.setdefault(r.ns, []).append(r)


def _observe_ns(cur: CurrentState, nl: Rtnl, ns: str | None, scope: _Scope, firewall: bool = True
                ) -> list[klinks.LiveLink]:
    """What is ours in `ns`: one dump per object kind (links, addresses, routes and rules per family);
    NAT and forward rules unless `ns` has no firewall table at all (`firewall` False)."""
    live = klinks.dump_links(nl)
    names = {link.index: link.ifname for link in live}
    mine = {link.index for link in live if link.alias == scope.label}
    _observe_links(cur, nl, ns, live, mine, scope)
    my_devs = {names[i] for i in mine}
    live_routes = kroutes.live_routes(nl)
    ours = [route for route in kroutes.dump_routes(nl, ns, names, live=live_routes)
            if ns is not None or route.key in scope.host_keys or (route.dev and route.dev in my_devs)]
    cur.resources += ours
    rules = kroutes.dump_rules(nl, ns)
    for rule in rules:
        if ns is not None or rule.key in scope.host_keys:
            cur.resources.append(rule)
    if scope.planning:
        routes = _all_routes(live_routes, ns, names)
        _route_conflicts(cur, ns, scope, routes, {r.key for r in ours})
        if ns is None:
            _rule_conflicts(cur, rules, scope)
            _overlap_conflicts(cur, live, scope, routes)
            _host_record_conflicts(cur, scope)
    if firewall:
        _observe_nat(cur, scope.name, scope.label, ns, with_drops=scope.planning)
    elif scope.planning:
        cur.forward_drops[ns] = []
    return live


def _observe_links(cur: CurrentState, nl: Rtnl, ns: str | None, live: list[klinks.LiveLink], mine: set[int],
                   scope: _Scope) -> None:
    by_index = {link.index: link for link in live}
    addresses_by_index: dict[int, list[str]] = {}
    for index, cidr in dump_addresses(nl):
        addresses_by_index.setdefault(index, []).append(cidr)
    # Static neighbours and VXLAN forwarding entries on an interface of ours are ours.
    neighbors = klinks.dump_neighbors(nl) if mine else {}
    fdb_kinds = {name for name, kind in KERNEL_LINK_KINDS.items() if kind.has_fdb}
    fdb = klinks.dump_fdb(nl) if any(link.index in mine and link.kind in fdb_kinds for link in live) else {}
    names = {link.index: link.ifname for link in live}
    for link in live:
        is_mine = link.index in mine
        configured = ns is None and link.ifname in scope.devices
        if not is_mine and not configured:
            if scope.planning:
                _link_conflict(cur, ns, link, scope)
            continue
        if configured and not is_mine and link.ifname in scope.declared_devices and \
                owner_of(link.alias) not in (None, scope.name):
            cur.conflicts.append(f"interface {link.ifname} in host is owned by topology {owner_of(link.alias)}: "
                                 f"topology {scope.name} cannot configure it (give it a bridge of its own)")
        kind = klinks_kind(link) if is_mine else ("lo" if link.ifname == "lo" else "device")
        master = by_index[link.master].ifname if link.master in by_index else None
        spec = KERNEL_LINK_KINDS[kind].read_spec(link, names) if kind in KERNEL_LINK_KINDS else None
        cur.resources.append(Link(ns, link.ifname, kind, mtu=link.mtu, master=master, up=link.up, spec=spec))
        if is_mine:
            cur.resources += [Neighbor(ns, link.ifname, ip, mac) for ip, mac in neighbors.get(link.index, [])]
            # The flood entry to a VXLAN's `remote` is the kernel's own, part of the device.
            implied = ("00:00:00:00:00:00", spec.remote) if isinstance(spec, VxlanSpec) and spec.remote else None
            cur.resources += [Fdb(ns, link.ifname, mac, dst) for mac, dst in fdb.get(link.index, [])
                              if (mac, dst) != implied]
        for cidr in addresses_by_index.get(link.index, []):
            ip = ipaddress.ip_interface(cidr)
            if (ip.version == 6 and ip.is_link_local) or (link.ifname == "lo" and cidr in LOOPBACK_DEFAULTS):
                continue
            addr = Address(ns, link.ifname, cidr)
            # On a user's device: ours when an earlier apply added it; when the file declares
            # an address that is there already (the user's), it counts as present, not ours.
            if is_mine or addr.key in scope.host_keys or (configured and addr.key in scope.wanted):
                cur.resources.append(addr)


def _link_conflict(cur: CurrentState, ns: str | None, link: klinks.LiveLink, scope: _Scope) -> None:
    want = scope.wanted.get(("link", ns, link.ifname))
    if isinstance(want, Link) and want.owned:
        owner = owner_of(link.alias)
        who = f"is owned by topology {owner}" if owner else "is a user's interface, not cnetctl's"
        cur.conflicts.append(f"interface {link.ifname} in {ns or 'host'} exists and {who}")


def _observe_sysctls(cur: CurrentState, state: State, wanted: dict[Key, Resource], owned: list[str]) -> None:
    """The keys this topology manages (state) and the keys it declares."""
    keys = set(state.managed_sysctls())
    keys |= {(r.ns, r.name) for r in wanted.values() if isinstance(r, Sysctl)}
    for ns, key in sorted(keys, key=lambda k: (k[0] or "", k[1])):
        if ns is not None and ns not in owned:
            continue
        if state.sysctl_original(ns, key) is None:
            continue  # never changed by us: a Create (which records the original) is due
        cur.resources.append(Sysctl(ns, key, read_sysctl(ns, key)))


def _observe_nat(cur: CurrentState, name: str, label: str, ns: str | None, with_drops: bool) -> None:
    """NAT and forward-accepts of ours in `ns`. Same-named tables or chains without our owner
    marker are someone else's: they go to `conflicts` (plan/apply refuse; destroy skips them)."""
    nft_items = knat.nft_ruleset(ns)
    for backend, specs in knat.nat_read(ns, name, label, nft_items, cur.conflicts).items():
        cur.resources.append(Nat(ns, backend, tuple(s.text() for s in knat.canonical_order(specs))))
    for where, subnets in knat.forward_read(ns, name, label, nft_items, cur.conflicts).items():
        cur.resources.append(ForwardAccept(ns, where, subnets))
    if with_drops:
        cur.forward_drops[ns] = knat.forward_drop_chains(ns, name, nft_items)


def klinks_kind(link: klinks.LiveLink) -> str:
    if link.ifname == "lo":
        return "lo"
    return link.kind or "device"


def _all_routes(live: list[kroutes.LiveRoute], ns: str | None, names: dict[int, str]
                ) -> dict[Key, tuple[int, Route]]:
    """Every route of `ns` by key -> (routing protocol, record)."""
    out: dict[Key, tuple[int, Route]] = {}
    for msg in live:
        r = Route(ns, msg.family, msg.table, msg.dst, msg.metric, via=msg.via,
                  dev=names.get(msg.oif) if msg.oif else None, scope=msg.scope)
        out[r.key] = (msg.proto, r)
    return out


def _route_conflicts(cur: CurrentState, ns: str | None, scope: _Scope,
                     live: dict[Key, tuple[int, Route]], ours: set[Key]) -> None:
    for r in scope.wanted_routes.get(ns, []):
        if r.key not in live or r.key in ours:
            continue
        proto = live[r.key][0]
        if proto != RTPROT_CNETCTL:
            who = f"exists (proto {proto}) and is not cnetctl's"
        elif r.key in scope.others:
            who = f"belongs to topology {scope.others[r.key]}"
        else:
            who = f"exists with proto {proto} but belongs to no applied topology (made by hand?)"
        cur.conflicts.append(f"{r.describe()}: a route with the same table, destination and metric {who}")


def _rule_conflicts(cur: CurrentState, rules: list[Rule], scope: _Scope) -> None:
    """Host rules: one with the same selectors, priority and table made by someone else
    (`rules`: the host's rules of protocol 147)."""
    wanted = [r for r in scope.wanted.values() if isinstance(r, Rule) and r.ns is None and r.key not in
              scope.host_keys]
    if not wanted:
        return
    live = {r.key for r in rules}
    for r in wanted:
        if r.key in live:
            who = f"topology {scope.others[r.key]}" if r.key in scope.others else \
                "no applied topology (made by hand with proto 147?)"
            cur.conflicts.append(f"{r.describe()}: an identical rule exists and belongs to {who}")


def _host_record_conflicts(cur: CurrentState, scope: _Scope) -> None:
    """Host addresses (on devices cnetctl does not own) another topology has recorded as its own."""
    for r in scope.wanted.values():
        if isinstance(r, Address) and r.ns is None and r.key in scope.others and r.key not in scope.host_keys:
            cur.conflicts.append(f"{r.describe()} is managed by topology {scope.others[r.key]}")


def _overlap_conflicts(cur: CurrentState, live: list[klinks.LiveLink], scope: _Scope,
                       routes: dict[Key, tuple[int, Route]]) -> None:
    """A host address whose subnet overlaps a connected subnet of someone else's interface
    (another topology's bridge, a user's device): both would claim the same addresses."""
    by_name = {link.ifname: link for link in live}
    connected = [(ipaddress.ip_network(r.dst), r.dev) for proto, r in routes.values()
                 if proto == RTPROT_KERNEL and r.table == MAIN_TABLE and r.via is None and r.dev]
    for a in scope.wanted.values():
        if not isinstance(a, Address) or a.ns is not None:
            continue
        net = ipaddress.ip_interface(a.cidr).network
        if net.is_link_local:
            continue
        for other, dev in connected:
            link = by_name.get(dev or "")
            if other.version != net.version or not other.overlaps(net) or dev == a.ifname or link is None \
                    or link.alias == scope.label or other.is_link_local:
                continue
            owner = owner_of(link.alias)
            who = f"topology {owner}'s {other} on {dev}" if owner else f"{other}, connected on a user's interface {dev}"
            cur.conflicts.append(f"address {a.cidr} on {a.ifname} in host: its subnet {net} overlaps {who}")


def _pair_veths(cur: CurrentState, live: dict[str | None, list[klinks.LiveLink]], sockets: Sockets) -> None:
    """Give every owned veth end its VethSpec (the peer) from the kernel's own pointers.

    ifindexes are per namespace (two ends in fresh namespaces are often both 2), so an
    index alone can be ambiguous: then IFLA_LINK_NETNSID says which namespace the peer
    index is in, by the id the end's namespace gives it, and RTM_GETNSID asked in that
    namespace maps the candidates' ids. A peer outside the observed namespaces stays
    unknown (None). Linear: the nsid question is asked only of ambiguous candidates."""
    by_index: dict[int, list[tuple[str | None, klinks.LiveLink]]] = {}
    for ns, links in live.items():
        for link in links:
            by_index.setdefault(link.index, []).append((ns, link))
    by_name = {ns: {link.ifname: link for link in links} for ns, links in live.items()}
    out: list[Resource] = []
    for r in cur.resources:
        me = by_name.get(r.ns, {}).get(r.ifname) if isinstance(r, Link) and r.kind == "veth" else None
        if isinstance(r, Link) and me is not None:
            peer_ns, peer = _veth_peer(r.ns, me, by_index, sockets)
            r = replace(r, spec=VethSpec(peer_ns if peer else None, peer.ifname if peer else None))
        out.append(r)
    cur.resources = out


def _veth_peer(ns: str | None, me: klinks.LiveLink, by_index: dict[int, list[tuple[str | None, klinks.LiveLink]]],
               sockets: Sockets) -> tuple[str | None, klinks.LiveLink | None]:
    candidates = [(other_ns, link) for other_ns, link in by_index.get(me.peer_index or 0, [])
                  if link.kind == "veth" and link.peer_index == me.index
                  and (other_ns == ns) == (me.peer_netnsid is None) and (other_ns, link.ifname) != (ns, me.ifname)]
    if len(candidates) <= 1:
        return candidates[0] if candidates else (None, None)
    paths = {other_ns: ("/proc/self/ns/net" if other_ns is None else netns_path(other_ns))
             for other_ns, _ in candidates}
    ids = klinks.netns_ids(sockets.nl(ns), paths)
    if me.peer_netnsid not in ids:
        return None, None
    want = ids[me.peer_netnsid]
    return next(((n, link) for n, link in candidates if n == want), (None, None))
