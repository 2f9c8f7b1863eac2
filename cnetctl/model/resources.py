"""Typed kernel records shared by the desired and the current state.

Each record has a stable `key` (what identifies the kernel object), `ORDER`
(its place in the dependency order) and knows which of its fields can be
changed in place (`MUTABLE`); a difference anywhere else means re-create.
`ns` is the network namespace name, or None for the namespace cnetctl runs in
("host").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .linkkinds import LINK_KINDS, LinkKind, link_kind, where

Key = tuple[Any, ...]


@dataclass(frozen=True)
class Resource:
    KIND: ClassVar[str] = ""
    ORDER: ClassVar[int] = 0
    MUTABLE: ClassVar[tuple[str, ...]] = ()

    @property
    def key(self) -> Key:
        raise NotImplementedError

    if TYPE_CHECKING:
        ns: str | None  # every record's namespace: a dataclass field of each subclass

    def describe(self) -> str:
        raise NotImplementedError

    def differences(self, current: Resource) -> dict[str, tuple[Any, Any]]:
        """Mutable fields where `current` differs from this (desired) record.

        A desired value of None means "don't care" (kernel default)."""
        out = {}
        for name in self.MUTABLE:
            want, have = getattr(self, name), getattr(current, name)
            if want is not None and want != have:
                out[name] = (have, want)
        return out

    def identity_differs(self, current: Resource) -> bool:
        for f in dataclasses.fields(self):
            if f.name not in self.MUTABLE and getattr(self, f.name) != getattr(current, f.name):
                return True
        return False

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.KIND, **dataclasses.asdict(self)}




@dataclass(frozen=True)
class Netns(Resource):
    KIND: ClassVar[str] = "netns"
    ORDER: ClassVar[int] = 0
    ns: str   # the namespace's own name

    @property
    def name(self) -> str:
        return self.ns

    @property
    def key(self) -> Key:
        return ("netns", self.ns)

    def describe(self) -> str:
        return f"netns {self.ns}"


@dataclass(frozen=True)
class Link(Resource):
    """An interface of a kind in LINK_KINDS (model/linkkinds.py): created and owned (bridge,
    veth), or configured only (a namespace's lo, a user's device). What only one kind has
    lives in `spec`, that kind's record (a veth's peer)."""

    KIND: ClassVar[str] = "link"
    ORDER: ClassVar[int] = 1
    MUTABLE: ClassVar[tuple[str, ...]] = ("mtu", "master", "up")
    ns: str | None
    ifname: str
    kind: str
    mtu: int | None = None
    master: str | None = None
    up: bool | None = True
    spec: Any = None

    @property
    def key(self) -> Key:
        return ("link", self.ns, self.ifname)

    @property
    def link_kind(self) -> LinkKind:
        return link_kind(self.kind)

    @property
    def owned(self) -> bool:
        return self.link_kind.owned

    @property
    def reaches(self) -> tuple[str | None, ...]:
        """The namespaces this one kernel object lives in besides its own (a veth's peer's)."""
        return self.link_kind.reaches(self)

    def identity_differs(self, current: Resource) -> bool:
        assert isinstance(current, Link)
        if not self.link_kind.spec_matches(self.spec, current.spec):
            return True
        return any(getattr(self, f.name) != getattr(current, f.name) for f in dataclasses.fields(self)
                   if f.name not in self.MUTABLE and f.name != "spec")

    def differences(self, current: Resource) -> dict[str, tuple[Any, Any]]:
        out = super().differences(current)
        # An owned port that should have no master must be detached.
        assert isinstance(current, Link)
        if self.owned and self.master is None and current.master is not None:
            out["master"] = (current.master, None)
        return out

    def describe(self) -> str:
        extra = self.link_kind.describe_extra(self)
        if self.master:
            extra += f" master {self.master}"
        name = self.ifname if self.kind == self.ifname else f"{self.kind} {self.ifname}"
        return f"{name} in {where(self.ns)}{extra}"

    def to_json(self) -> dict[str, Any]:
        """"kind" is the link's kind (bridge, veth, …), as `plan -o json` has always shown it;
        the kind's own attributes (a veth's peer_ns, peer_ifname) sit beside the common ones."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "spec"}
        if self.spec is not None:
            data.update(dataclasses.asdict(self.spec))
        return data


@dataclass(frozen=True)
class Address(Resource):
    KIND: ClassVar[str] = "address"
    ORDER: ClassVar[int] = 2
    ns: str | None
    ifname: str
    cidr: str

    @property
    def key(self) -> Key:
        return ("address", self.ns, self.ifname, self.cidr)

    def describe(self) -> str:
        return f"address {self.cidr} on {self.ifname} in {where(self.ns)}"


@dataclass(frozen=True)
class Neighbor(Resource):
    """A static (permanent) ARP/NDP entry: `ip` is at `mac` on `dev`."""

    KIND: ClassVar[str] = "neighbor"
    ORDER: ClassVar[int] = 2
    MUTABLE: ClassVar[tuple[str, ...]] = ("mac",)
    ns: str | None
    dev: str
    ip: str
    mac: str

    @property
    def key(self) -> Key:
        return ("neighbor", self.ns, self.dev, self.ip)

    def describe(self) -> str:
        return f"neighbor {self.ip} lladdr {self.mac} on {self.dev} in {where(self.ns)}"


@dataclass(frozen=True)
class Fdb(Resource):
    """A VXLAN forwarding entry: frames for `mac` (00:00:00:00:00:00 = flood: broadcast,
    unknown unicast) go to the VTEP at `dst`."""

    KIND: ClassVar[str] = "fdb"
    ORDER: ClassVar[int] = 2
    ns: str | None
    dev: str
    mac: str
    dst: str

    @property
    def key(self) -> Key:
        return ("fdb", self.ns, self.dev, self.mac, self.dst)

    def describe(self) -> str:
        return f"fdb {self.mac} dst {self.dst} on {self.dev} in {where(self.ns)}"


@dataclass(frozen=True)
class Sysctl(Resource):
    KIND: ClassVar[str] = "sysctl"
    ORDER: ClassVar[int] = 3
    MUTABLE: ClassVar[tuple[str, ...]] = ("value",)
    ns: str | None
    name: str
    value: str | None

    @property
    def key(self) -> Key:
        return ("sysctl", self.ns, self.name)

    def describe(self) -> str:
        return f"sysctl {self.name}={self.value} in {where(self.ns)}"


@dataclass(frozen=True)
class Route(Resource):
    KIND: ClassVar[str] = "route"
    ORDER: ClassVar[int] = 4
    MUTABLE: ClassVar[tuple[str, ...]] = ("type", "via", "dev", "src", "scope", "onlink")
    ns: str | None
    family: int
    table: int
    dst: str            # CIDR, 0.0.0.0/0 or ::/0 for default
    metric: int
    type: str = "unicast"
    via: str | None = None
    dev: str | None = None
    src: str | None = None
    scope: int | None = None
    onlink: bool | None = None

    @property
    def key(self) -> Key:
        return ("route", self.ns, self.family, self.table, self.dst, self.metric)

    def describe(self) -> str:
        parts = [] if self.type == "unicast" else [self.type]
        parts.append("default" if self.dst in ("0.0.0.0/0", "::/0") else self.dst)
        if self.via:
            parts.append(f"via {self.via}")
        if self.dev:
            parts.append(f"dev {self.dev}")
        if self.src:
            parts.append(f"src {self.src}")
        if self.table != 254:
            parts.append(f"table {self.table}")
        if self.metric:
            parts.append(f"metric {self.metric}")
        return f"route {' '.join(parts)} in {where(self.ns)}"


@dataclass(frozen=True)
class Rule(Resource):
    KIND: ClassVar[str] = "rule"
    ORDER: ClassVar[int] = 5
    ns: str | None
    family: int
    priority: int
    table: int
    src: str | None = None      # CIDR
    dst: str | None = None      # CIDR
    iif: str | None = None
    oif: str | None = None
    fwmark: int | None = None
    fwmask: int | None = None

    @property
    def key(self) -> Key:
        return ("rule", self.ns, self.family, self.priority, self.src, self.dst, self.iif, self.oif,
                self.fwmark, self.fwmask, self.table)

    def describe(self) -> str:
        sel = []
        sel.append(f"from {self.src or 'all'}")
        if self.dst:
            sel.append(f"to {self.dst}")
        if self.iif:
            sel.append(f"iif {self.iif}")
        if self.oif:
            sel.append(f"oif {self.oif}")
        if self.fwmark is not None:
            sel.append(f"fwmark {self.fwmark:#x}" + (f"/{self.fwmask:#x}" if self.fwmask is not None else ""))
        return f"rule {self.priority}: {' '.join(sel)} lookup {self.table} in {where(self.ns)}"


@dataclass(frozen=True)
class Nat(Resource):
    """The NAT rules of one namespace, in one backend, as their canonical texts."""

    KIND: ClassVar[str] = "nat"
    ORDER: ClassVar[int] = 6
    MUTABLE: ClassVar[tuple[str, ...]] = ("rules",)
    ns: str | None
    backend: str
    rules: tuple[str, ...]

    @property
    def key(self) -> Key:
        return ("nat", self.ns, self.backend)

    def _head(self) -> str:
        where_ = "table inet cnetctl-…" if self.backend == "nftables" else "chains CNET-…"
        return f"nat ({self.backend}, {where_}) in {where(self.ns)}: {len(self.rules)} rule" + \
            ("" if len(self.rules) == 1 else "s")

    def describe(self) -> str:
        """The head line, then one line per rule (its canonical text)."""
        return self._head() + "".join(f"\n    {rule}" for rule in self.rules)

    def describe_update(self, old: Resource) -> str:
        """As describe, each rule marked: `+` added, `-` removed, unmarked when kept."""
        assert isinstance(old, Nat)
        lines = [f"  - {rule}" for rule in old.rules if rule not in self.rules]
        lines += [f"  + {rule}" if rule not in old.rules else f"    {rule}" for rule in self.rules]
        reordered = [r for r in old.rules if r in self.rules] != [r for r in self.rules if r in old.rules]
        return self._head() + (" (rules reordered)" if reordered else "") + "".join(f"\n{line}" for line in lines)

    def differences(self, current: Resource) -> dict[str, tuple[Any, Any]]:
        assert isinstance(current, Nat)
        if self.rules != current.rules:
            return {"rules": (list(current.rules), list(self.rules))}
        return {}


@dataclass(frozen=True)
class ForwardAccept(Resource):
    """Owned ACCEPT rules for the topology's subnets inside a FORWARD chain whose policy is DROP."""

    KIND: ClassVar[str] = "forward"
    ORDER: ClassVar[int] = 7
    MUTABLE: ClassVar[tuple[str, ...]] = ("subnets",)
    ns: str | None
    where: str
    subnets: tuple[str, ...]

    @property
    def key(self) -> Key:
        return ("forward", self.ns, self.where)

    def describe(self) -> str:
        return f"forward accept for {', '.join(self.subnets)} in {self.where} of {where(self.ns)}"


RESOURCE_TYPES: dict[str, type[Resource]] = {
    cls.KIND: cls for cls in (Netns, Link, Address, Neighbor, Fdb, Sysctl, Route, Rule, Nat, ForwardAccept)
}


def on_link(res: Resource) -> tuple[str | None, str] | None:
    """(namespace, interface) of what the kernel removes together with that interface."""
    if isinstance(res, Address):
        return res.ns, res.ifname
    if isinstance(res, Neighbor | Fdb) or (isinstance(res, Route) and res.dev):
        return res.ns, res.dev  # type: ignore[return-value]
    return None


def resource_from_json(data: dict[str, Any]) -> Resource:
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    if data.get("kind") in LINK_KINDS:
        kind = LINK_KINDS[data["kind"]]
        names = [f.name for f in dataclasses.fields(kind.spec_type)] if kind.spec_type else []
        spec = kind.spec_type(**{n: data.pop(n) for n in names}) if kind.spec_type else None
        return Link(**data, spec=spec)
    cls = RESOURCE_TYPES[data.pop("kind")]
    return cls(**data)
