"""kernel -> CurrentState: only what a topology owns, found by its labels (SPEC §3).

Also reports conflicts: objects the desired state needs whose names are taken
by something that is not this topology's.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from pyroute2.netlink.exceptions import NetlinkError

from . import owner_label
from .kernel import links as klinks
from .kernel import nat as knat
from .kernel import routes as kroutes
from .kernel.addresses import dump_addresses
from .kernel.netns import Sockets, list_netns
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

    _pair_veths(cur, live_links, wanted)

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


def _pair_veths(cur: CurrentState, live: dict[str | None, list[klinks.LiveLink]],
                wanted: dict[tuple[object, ...], Resource]) -> None:
    """Fill peer_ns/peer_ifname of owned veth ends whose peer is another owned end.

    ifindexes are per namespace, so two candidates can match; the desired pairing
    breaks the tie (an index match both ways plus the right names is conclusive)."""
    veths = [(ns, link) for ns, ls in live.items() for link in ls
             if link.kind == "veth" and any(r for r in cur.resources
                                            if isinstance(r, Link) and r.ns == ns and r.ifname == link.ifname)]
    out = []
    for r in cur.resources:
        if isinstance(r, Link) and r.kind == "veth":
            me = next(link for ns, link in veths if ns == r.ns and link.ifname == r.ifname)
            peers = [(ns, link) for ns, link in veths
                     if (ns, link.ifname) != (r.ns, r.ifname) and link.index == me.peer_index
                     and link.peer_index == me.index]
            want = wanted.get(r.key)
            if len(peers) > 1 and isinstance(want, Link):
                peers = [(ns, link) for ns, link in peers if (ns, link.ifname) == (want.peer_ns, want.peer_ifname)]
            if len(peers) == 1:
                r = Link(r.ns, r.ifname, r.kind, peers[0][0], peers[0][1].ifname, r.mtu, r.master, r.up)
            else:
                r = Link(r.ns, r.ifname, r.kind, None, "?", r.mtu, r.master, r.up)
        out.append(r)
    cur.resources = out
