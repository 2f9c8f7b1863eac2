"""Interface kinds: everything that differs between a bridge, a veth pair, a namespace's
lo and a user's device, in one table (the kernel side lives in kernel/linkkinds.py).

A kind says whether cnetctl owns (creates and deletes) its links, where they come in
the creation order, which attributes only it has (`spec`, one frozen record per kind,
kept in `Link.spec`), which other namespaces a link reaches into, what the kernel
removes together with it, and how it reads in a plan.

Adding a kind: a spec record and a `LinkKind` here, its kernel half in
kernel/linkkinds.py, its schema model and a normalize stage (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .resources import Link, Resource


def where(ns: str | None) -> str:
    return f"netns {ns}" if ns else "host"


@dataclass(frozen=True)
class VethSpec:
    """The other end of the pair (both ends are one kernel object)."""

    peer_ns: str | None
    peer_ifname: str | None


@dataclass(frozen=True)
class VxlanSpec:
    """A VXLAN device's own attributes; None means "as the kernel chooses"."""

    vni: int
    port: int = 4789
    local: str | None = None      # underlay source address
    dev: str | None = None        # underlay device (same namespace)
    remote: str | None = None     # point-to-point peer (IFLA_VXLAN_GROUP with a unicast address)
    learning: bool = True
    mac: str | None = None
    # Its UDP socket lives in the machine's root namespace while the device sits in a node's (a
    # tunnel end of a link between machines): created from the root namespace, straight into the
    # node's; the kernel reports it as the device's link-netnsid.
    underlay_host: bool = False

    def describe(self) -> str:
        parts = [f"vni {self.vni}", f"port {self.port}"]
        parts += [f"{name} {value}" for name, value in (("local", self.local), ("remote", self.remote),
                                                        ("dev", self.dev), ("mac", self.mac)) if value]
        return ", ".join(parts + ([] if self.learning else ["nolearning"])
                         + (["underlay in host"] if self.underlay_host else []))


def _same_spec(want: object, have: object) -> bool:
    return want == have


def _vxlan_matches(want: object, have: object) -> bool:
    """What the file leaves open (None: the kernel's choice, e.g. a random MAC) is not compared."""
    if not isinstance(want, VxlanSpec) or not isinstance(have, VxlanSpec):
        return want == have
    return all(getattr(want, f) is None or getattr(want, f) == getattr(have, f)
               for f in ("vni", "port", "local", "dev", "remote", "learning", "mac", "underlay_host"))


def _vxlan_describe(link: Link) -> str:
    return f" ({link.spec.describe()})" if isinstance(link.spec, VxlanSpec) else ""


def _no_peer(link: Link, other: Resource) -> bool:
    return False


def _no_reach(link: Link) -> tuple[str | None, ...]:
    return ()


def _nowhere(link: Link) -> tuple[tuple[str | None, str | None], ...]:
    return ()


def _veth_spec(link: Link) -> VethSpec:
    assert isinstance(link.spec, VethSpec), f"veth {link.ifname} without its peer"
    return link.spec


def _veth_reach(link: Link) -> tuple[str | None, ...]:
    return (_veth_spec(link).peer_ns,)


def _veth_peer_dies(link: Link, other: Resource) -> bool:
    """Deleting one end of a pair deletes the other."""
    from .resources import Link

    spec = _veth_spec(link)
    return isinstance(other, Link) and other.kind == "veth" and \
        (other.ns, other.ifname) == (spec.peer_ns, spec.peer_ifname)


def _veth_peer(link: Link) -> tuple[tuple[str | None, str | None], ...]:
    spec = _veth_spec(link)
    return ((spec.peer_ns, spec.peer_ifname),)


def _veth_describe(link: Link) -> str:
    spec = _veth_spec(link)
    return f" (peer {spec.peer_ifname} in {where(spec.peer_ns)})"


def _nothing(link: Link) -> str:
    return ""


@dataclass(frozen=True)
class LinkKind:
    name: str
    owned: bool                  # created, labelled and deleted by cnetctl (else: configured only)
    order: int                   # creation order among links: a master before its ports
    can_be_master: bool = False  # ports are detached by the kernel when it goes
    spec_type: type | None = None
    reaches: Callable[[Link], tuple[str | None, ...]] = _no_reach      # other namespaces it lives in
    takes_along: Callable[[Link, Resource], bool] = _no_peer           # other links the kernel deletes with it
    # where (namespace, interface) those links can be: plan looks only there (an index, not a scan)
    along: Callable[[Link], tuple[tuple[str | None, str | None], ...]] = _nowhere
    describe_extra: Callable[[Link], str] = _nothing
    spec_matches: Callable[[object, object], bool] = _same_spec   # desired spec vs the kernel's


LINK_KINDS: dict[str, LinkKind] = {k.name: k for k in (
    LinkKind("bridge", owned=True, order=0, can_be_master=True),
    LinkKind("veth", owned=True, order=1, spec_type=VethSpec, reaches=_veth_reach, takes_along=_veth_peer_dies,
             along=_veth_peer, describe_extra=_veth_describe),
    # After the underlay device it sends through (a veth of the topology, or the host's own).
    LinkKind("vxlan", owned=True, order=2, spec_type=VxlanSpec, describe_extra=_vxlan_describe,
             spec_matches=_vxlan_matches),
    LinkKind("lo", owned=False, order=2),
    LinkKind("device", owned=False, order=2),
)}


def link_kind(name: str) -> LinkKind:
    try:
        return LINK_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown link kind {name!r}") from None
