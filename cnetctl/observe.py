"""kernel -> CurrentState: only what a topology owns, found by its labels (SPEC §3).

Also reports conflicts: objects the desired state needs whose names are taken
by something that is not this topology's.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field, replace

from pyroute2.netlink.exceptions import NetlinkError

from . import owner_label
from .kernel import links as klinks
from .kernel import nat as knat
from .kernel import routes as kroutes
from .kernel.addresses import dump_addresses
from .kernel.netns import Sockets, list_netns, netns_path
from .kernel.sysctl import read_sysctl
from .model.resources import Address, ForwardAccept, Link, Nat, Netns, Resource, Route, Sysctl
from .normalize import DesiredState
from .state import State

LABEL_PREFIX = "cnetctl:"
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
    try:
        ipr = sockets.get(ns)
        (lo,) = ipr.link("get", index=1)
    except (OSError, NetlinkError, ValueError):
        return None
    alias = lo.get("ifalias") or ""
    return alias[len(LABEL_PREFIX):] if alias.startswith(LABEL_PREFIX) else None


def scan_owners(sockets: Sockets) -> dict[str, str | None]:
    """Every named netns -> its owning topology (None when not cnetctl's)."""
    owners = {}
    for ns in list_netns():
        owners[ns] = netns_owner(sockets, ns)
        if owners[ns] is None:
            sockets.close(ns)
    return owners


def observe(name: str, state: State, sockets: Sockets, desired: DesiredState | None = None) -> CurrentState:
    label = owner_label(name)
    cur = CurrentState()
    owners = scan_owners(sockets)
    owned = [ns for ns, owner in owners.items() if owner == name]
    cur.owned_netns = owned
    cur.resources += [Netns(ns) for ns in owned]

    wanted = {r.key: r for r in desired.resources} if desired else {}
    declared_devices = {r.ifname for r in wanted.values() if isinstance(r, Link) and r.ns is None
                        and r.kind in ("device", "lo")}
    if desired:
        for wanted_ns in (r.name for r in wanted.values() if isinstance(r, Netns)):
            if wanted_ns in owners and owners[wanted_ns] != name:
                who = f"topology {owners[wanted_ns]}" if owners[wanted_ns] else \
                    "nobody known to cnetctl (a user's namespace)"
                cur.conflicts.append(f"netns {wanted_ns} exists and is owned by {who}")

    host_records = state.host_records()
    host_keys = {r.key for r in host_records}
    live_links: dict[str | None, list[klinks.LiveLink]] = {}
    for ns in [None, *owned]:
        ipr = sockets.get(ns)
        live = klinks.dump_links(ipr)
        live_links[ns] = live
        by_index = {link.index: link for link in live}
        names = {link.index: link.ifname for link in live}
        mine = {link.index for link in live if link.alias == label}
        addresses_by_index: dict[int, list[str]] = {}
        for index, cidr in dump_addresses(ipr):
            addresses_by_index.setdefault(index, []).append(cidr)
        for link in live:
            is_mine = link.index in mine
            kind = klinks_kind(link)
            if not is_mine and not (ns is None and link.ifname in declared_devices):
                if desired:
                    want = wanted.get(("link", ns, link.ifname))
                    if isinstance(want, Link) and want.owned:
                        alias = link.alias or ""
                        owner = alias[len(LABEL_PREFIX):] if alias.startswith(LABEL_PREFIX) else None
                        who = f"is owned by topology {owner}" if owner else "is a user's interface, not cnetctl's"
                        cur.conflicts.append(f"interface {link.ifname} in {ns or 'host'} exists and {who}")
                continue
            if ns is None and not is_mine:
                kind = "lo" if link.ifname == "lo" else "device"
            master = by_index[link.master].ifname if link.master in by_index else None
            cur.resources.append(Link(ns, link.ifname, kind, mtu=link.mtu, master=master, up=link.up))
            for cidr in addresses_by_index.get(link.index, []):
                ip = ipaddress.ip_interface(cidr)
                if ip.version == 6 and ip.is_link_local:
                    continue
                if link.ifname == "lo" and cidr in LOOPBACK_DEFAULTS:
                    continue
                addr = Address(ns, link.ifname, cidr)
                if is_mine or addr.key in host_keys:
                    cur.resources.append(addr)
        for route in kroutes.dump_routes(ipr, ns, names):
            if ns is not None or route.key in host_keys or (route.dev and route.dev in
                                                             {names[i] for i in mine}):
                cur.resources.append(route)
        for rule in kroutes.dump_rules(ipr, ns):
            if ns is not None or rule.key in host_keys:
                cur.resources.append(rule)
        if desired:
            _route_conflicts(cur, ipr, ns, names, wanted)
        _observe_nat(cur, name, label, ns, with_drops=desired is not None)

    _pair_veths(cur, live_links, sockets)

    # Sysctls: the keys this topology manages (state) and the keys it declares.
    keys = set(state.managed_sysctls())
    keys |= {(r.ns, r.name) for r in wanted.values() if isinstance(r, Sysctl)}
    for ns, key in sorted(keys, key=lambda k: (k[0] or "", k[1])):
        if ns is not None and ns not in owned:
            continue
        if state.sysctl_original(ns, key) is None:
            continue  # never changed by us: a Create (which records the original) is due
        cur.resources.append(Sysctl(ns, key, read_sysctl(ns, key)))
    return cur


def _observe_nat(cur: CurrentState, name: str, label: str, ns: str | None, with_drops: bool) -> None:
    for backend, (_, _, read) in knat.BACKENDS.items():
        if backend == "nftables" and not knat.nft_available():
            continue
        specs = read(ns, name, label)
        if specs is not None:
            cur.resources.append(Nat(ns, backend, tuple(s.text() for s in knat.canonical_order(specs))))
    nft_items = (knat.nft_list(ns, {"ruleset": None}) or []) if knat.nft_available() else []
    for where, subnets in knat.forward_read(ns, name, label, nft_items).items():
        cur.resources.append(ForwardAccept(ns, where, subnets))
    if with_drops:
        cur.forward_drops[ns] = knat.forward_drop_chains(ns, name, nft_items)


def klinks_kind(link: klinks.LiveLink) -> str:
    if link.ifname == "lo":
        return "lo"
    return link.kind or "device"


def _route_conflicts(cur: CurrentState, ipr: object, ns: str | None, names: dict[int, str],
                     wanted: dict[tuple[object, ...], Resource]) -> None:
    want_routes = [r for r in wanted.values() if isinstance(r, Route) and r.ns == ns]
    if not want_routes:
        return
    ours = {r.key for r in cur.resources if isinstance(r, Route)}
    foreign = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.route("dump", family=family):  # type: ignore[attr-defined]
            if msg["proto"] == 147:
                continue
            r = Route(ns, family, msg.get("table") or msg["table"], kroutes._dst(msg, family),
                      msg.get("priority") or 0)
            foreign[r.key] = msg["proto"]
    for r in want_routes:
        if r.key in foreign and r.key not in ours:
            cur.conflicts.append(f"{r.describe()}: a route with the same table, destination and metric "
                                 f"exists (proto {foreign[r.key]}) and is not cnetctl's")


def _pair_veths(cur: CurrentState, live: dict[str | None, list[klinks.LiveLink]], sockets: Sockets) -> None:
    """Fill peer_ns/peer_ifname of owned veth ends from the kernel's own pointers.

    ifindexes are per namespace (two ends in fresh namespaces are often both 2), so the
    index alone is ambiguous: IFLA_LINK_NETNSID says which namespace the peer index is in,
    by the id the end's namespace gives it, and RTM_GETNSID asked in that namespace maps
    ids to the namespaces observed here. A peer outside them stays unknown (None)."""
    paths = {ns: ("/proc/self/ns/net" if ns is None else netns_path(ns)) for ns in live}
    ids: dict[str | None, dict[int, str | None]] = {}
    by_index = {ns: {link.index: link for link in links} for ns, links in live.items()}
    by_name = {ns: {link.ifname: link for link in links} for ns, links in live.items()}
    out: list[Resource] = []
    for r in cur.resources:
        me = by_name.get(r.ns, {}).get(r.ifname) if isinstance(r, Link) and r.kind == "veth" else None
        if isinstance(r, Link) and me is not None:
            peer_ns: str | None = r.ns
            known = True
            if me.peer_netnsid is not None:
                if r.ns not in ids:
                    ids[r.ns] = klinks.netns_ids(sockets.get(r.ns), {k: v for k, v in paths.items() if k != r.ns})
                known = me.peer_netnsid in ids[r.ns]
                peer_ns = ids[r.ns].get(me.peer_netnsid)
            peer = by_index.get(peer_ns, {}).get(me.peer_index or 0) if known else None
            r = replace(r, peer_ns=peer_ns if peer else None, peer_ifname=peer.ifname if peer else None)
        out.append(r)
    cur.resources = out
