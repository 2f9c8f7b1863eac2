"""plan(desired, current) -> ordered Create / Update / Delete actions. Pure.

Order: netns -> links (bridges, then veths, then configured devices) ->
addresses -> sysctls -> routes -> rules; deletes run first, in reverse.
A deleted or re-created link takes its addresses, routes and veth peer with
it in the kernel, and a deleted address the routes that depended on it, so
the plan deletes those explicitly first (exact undo) and re-creates what is
still wanted: one apply converges.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .model.linkkinds import where
from .model.resources import Address, Key, Link, Netns, Resource, Route, Sysctl, on_link

Op = Literal["create", "update", "delete"]
SYMBOL = {"create": "+", "update": "~", "delete": "-"}


@dataclass(frozen=True)
class Action:
    op: Op
    resource: Resource               # the new record (create/update) or the current one (delete)
    old: Resource | None = None      # update only

    def inverse(self) -> Action:
        if self.op == "create":
            return Action("delete", self.resource)
        if self.op == "delete":
            return Action("create", self.resource)
        assert self.old is not None
        return Action("update", self.old, self.resource)

    def changes(self) -> dict[str, tuple[Any, Any]]:
        if self.op != "update" or self.old is None:
            return {}
        return self.resource.differences(self.old)

    def describe(self) -> str:
        if self.op == "delete" and isinstance(self.resource, Sysctl):
            # Deleting a sysctl puts back the value it had before the first apply.
            r = self.resource
            return f"- sysctl {r.name} in {where(r.ns)}: restore its value from before cnetctl (now {r.value})"
        if self.op == "update" and hasattr(self.resource, "describe_update"):  # Nat: rules added/removed
            return f"{SYMBOL[self.op]} {self.resource.describe_update(self.old)}"
        text = f"{SYMBOL[self.op]} {self.resource.describe()}"
        if self.op == "update":
            text += " (" + ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in self.changes().items()) + ")"
        return text

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "resource": self.resource.to_json(), "text": self.describe()}
        if self.op == "update":
            out["changes"] = {k: {"old": o, "new": n} for k, (o, n) in self.changes().items()}
        return out


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.actions

    def counts(self) -> dict[str, int]:
        return {op: sum(1 for a in self.actions if a.op == op) for op in ("create", "update", "delete")}


def _sort_key(res: Resource) -> tuple[int, int, str]:
    sub = res.link_kind.order if isinstance(res, Link) else 0
    return (res.ORDER, sub, repr(res.key))


def _lives_in(res: Resource, ns: str) -> bool:
    return _lives_in_any(res, {ns})


def _lives_in_any(res: Resource, namespaces: set[str]) -> bool:
    if isinstance(res, Netns):
        return False
    if res.ns in namespaces:
        return True
    return isinstance(res, Link) and any(n in namespaces for n in res.reaches)


Place = tuple[str | None, str]   # (namespace, interface)


class _Index:
    """The current resources, looked up the ways the closure below asks (a scan of all of them
    for each deleted object made a 250-pod destroy cost seconds of planning)."""

    def __init__(self, cur: dict[Key, Resource]):
        self.on: dict[Place, list[Resource]] = defaultdict(list)        # what sits on an interface
        self.links: dict[tuple[str | None, str | None], Link] = {}
        self.in_ns: dict[str | None, dict[Key, Resource]] = defaultdict(dict)  # what lives in a namespace
        self.routes: dict[str | None, list[Route]] = defaultdict(list)
        self.addresses: dict[Place, list[Address]] = defaultdict(list)
        for r in cur.values():
            place = on_link(r)
            if place is not None:
                self.on[place].append(r)
            if isinstance(r, Netns):
                continue
            self.in_ns[r.ns][r.key] = r
            if isinstance(r, Link):
                self.links[(r.ns, r.ifname)] = r
                for other in r.reaches:
                    self.in_ns[other][r.key] = r
            elif isinstance(r, Route):
                self.routes[r.ns].append(r)
            elif isinstance(r, Address):
                self.addresses[(r.ns, r.ifname)].append(r)

    def dependents(self, link: Link) -> list[Resource]:
        """What the kernel removes together with `link`: what sits on it (addresses, neighbours,
        fdb entries, routes through it) and what its kind takes along (a veth's peer)."""
        kind = link.link_kind
        along = [other for place in kind.along(link) if (other := self.links.get(place)) is not None
                 and kind.takes_along(link, other)]
        return self.on.get((link.ns, link.ifname), []) + along

    def address_dependents(self, addr: Address, gone: set[Key]) -> list[Resource]:
        """Routes the kernel drops when `addr` is deleted: those using it as source and, when it
        was the link's last IPv4 address, every IPv4 route through that link (fib_disable_ip)."""
        ip = ipaddress.ip_interface(addr.cidr)
        on_link = [ipaddress.ip_interface(r.cidr) for r in self.addresses.get((addr.ns, addr.ifname), [])]
        last_v4 = ip.version == 4 and not any(
            a.version == 4 and Address(addr.ns, addr.ifname, str(a)).key not in gone for a in on_link)
        out: list[Resource] = []
        for r in self.routes.get(addr.ns, []):
            through = r.dev == addr.ifname or (r.dev is None and r.via is not None and any(
                ipaddress.ip_address(r.via) in a.network for a in on_link if a.version == ip.version))
            if r.src == str(ip.ip) or (last_v4 and r.family == socket.AF_INET and through):
                out.append(r)
        return out


def _taken_along(cur: dict[Key, Resource], gone: set[Key]) -> set[Key]:
    """`gone` and everything the kernel takes along with it (a deleted link, address or netns),
    to the fixpoint. Each deleted object is looked at once; an address again when another one
    of its interface goes (it may have become the last IPv4 address, whose routes go with it)."""
    index = _Index(cur)
    gone = set(gone)
    todo = deque(gone)
    while todo:
        r = cur[todo.popleft()]
        deps: Iterable[Resource] = ()
        if isinstance(r, Link) and r.owned:
            deps = index.dependents(r)
        elif isinstance(r, Address):
            deps = index.address_dependents(r, gone)
        elif isinstance(r, Netns):
            deps = index.in_ns.get(r.name, {}).values()
        for d in list(deps):
            if d.key in gone:
                continue
            gone.add(d.key)
            todo.append(d.key)
            if isinstance(d, Address):
                todo.extend(a.key for a in index.addresses[(d.ns, d.ifname)] if a.key in gone and a.key != d.key)
    return gone


def plan(desired: Iterable[Resource], current: Iterable[Resource], *, collapse_netns: bool = False) -> Plan:
    """The actions that turn `current` into `desired`.

    collapse_netns: a deleted namespace takes everything inside it along (used by
    destroy, which needs no undo); otherwise its contents are deleted one by one
    so that every step can be undone exactly."""
    want: dict[Key, Resource] = {r.key: r for r in desired}
    cur: dict[Key, Resource] = {r.key: r for r in current}

    gone: set[Key] = {k for k in cur if k not in want}
    gone |= {k for k, r in cur.items() if k in want and want[k].identity_differs(r)}
    gone = _taken_along(cur, gone)

    gone_records = [cur[k] for k in gone]
    deleted_netns = {r.ns for r in gone_records if isinstance(r, Netns)}
    deleted_masters = {(r.ns, r.ifname) for r in gone_records if isinstance(r, Link) and r.link_kind.can_be_master}

    actions: list[Action] = []
    deletes = []
    for r in gone_records:
        if collapse_netns and _lives_in_any(r, deleted_netns):
            continue
        deletes.append(r)
    deletes.sort(key=_sort_key, reverse=True)
    actions += [Action("delete", r) for r in deletes]

    forward: list[Action] = []
    for k, w in want.items():
        if k not in cur or k in gone:
            forward.append(Action("create", w))
            continue
        c = cur[k]
        if isinstance(c, Link) and c.master is not None and (c.ns, c.master) in deleted_masters:
            c = replace(c, master=None)  # the kernel detaches ports when their master goes
        if w.differences(c):
            forward.append(Action("update", _merged(w, c), c))
    forward.sort(key=lambda a: _sort_key(a.resource))
    actions += forward
    return Plan(actions)


def _merged(want: Resource, cur: Resource) -> Resource:
    """The desired record with "don't care" fields taken from the current one."""
    fields = {name: getattr(cur, name) for name in want.MUTABLE if getattr(want, name) is None}
    if isinstance(want, Link) and want.owned:
        fields.pop("master", None)  # None means "no master" for owned links
    if isinstance(want, Sysctl):
        fields = {}
    return replace(want, **fields) if fields else want
