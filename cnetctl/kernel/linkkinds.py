"""The kernel half of each interface kind (model/linkkinds.py has the other half): how a
link of that kind is made to exist, how it is removed, and what netlink says of it.

`ensure` converges: a link of ours that exists already is accepted; one of the same
name that is not ours is refused. The common settings (label, MTU, master, state) are
applied by the Kernel afterwards, for every kind alike.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import KernelError
from ..model.linkkinds import VethSpec, VxlanSpec
from ..model.resources import Link
from . import links
from .netns import is_errno, netns_path
from .rtnl import NetlinkError

if TYPE_CHECKING:
    from . import Kernel


def _refuse_foreign(kernel: Kernel, link: Link) -> None:
    found = links.find_link(kernel.sockets.nl(link.ns), link.ifname)
    if found is not None and found.alias != kernel.label:
        raise KernelError(f"interface {link.ifname} exists in {link.ns or 'host'} and is not owned by "
                          f"topology {kernel.topology}")


def _ensure_bridge(kernel: Kernel, link: Link) -> None:
    try:
        links.create_bridge(kernel.sockets.nl(link.ns), link.ifname, kernel.label)
    except NetlinkError as err:
        if not is_errno(err, errno.EEXIST):
            raise
        _refuse_foreign(kernel, link)


def _ensure_veth(kernel: Kernel, link: Link) -> None:
    spec = link.spec
    if links.find_link(kernel.sockets.nl(link.ns), link.ifname) is not None:
        _refuse_foreign(kernel, link)
        return
    if not isinstance(spec, VethSpec) or not spec.peer_ifname or spec.peer_ifname == "?":
        # A veth is created with its peer: without the peer's name the kernel would
        # invent one (or, with "?", create an interface named "?").
        raise KernelError(f"create {link.describe()}: the peer of this veth is unknown; refusing to create it")
    # Create from the host side when one end is there: net_ns_fd names a netns path.
    if link.ns is not None and spec.peer_ns is None:
        links.create_veth(kernel.sockets.nl(None), spec.peer_ifname, link.ifname, netns_path(link.ns))
    else:
        links.create_veth(kernel.sockets.nl(link.ns), link.ifname, spec.peer_ifname,
                          netns_path(spec.peer_ns) if spec.peer_ns is not None else None)
    # Label the peer at once: a crash now must leave both ends findable. Owned veth
    # ends are always up; the peer is brought up here too because a rollback may
    # re-create a pair from one end's record only (its delete took the peer along).
    links.configure_link(kernel.sockets.nl(spec.peer_ns), spec.peer_ifname, alias=kernel.label, up=True)


def _ensure_vxlan(kernel: Kernel, link: Link) -> None:
    spec = link.spec
    assert isinstance(spec, VxlanSpec)
    # A tunnel end inside a node: asked from the root namespace with the node's as the target,
    # the kernel opens its UDP socket in the root namespace (the one with the underlay).
    across = spec.underlay_host and link.ns is not None
    try:
        links.create_vxlan(kernel.sockets.get(None if across else link.ns), link.ifname, spec.vni, spec.port,
                           spec.local, spec.remote, spec.dev, spec.learning, spec.mac,
                           netns_path(link.ns) if across and link.ns is not None else None)
    except links.pyroute2_error() as err:
        if not is_errno(err, errno.EEXIST):
            raise
        if links.find_link(kernel.sockets.get(link.ns), link.ifname) is None:
            # EEXIST for a name that is free: another VXLAN device of that namespace has the VNI.
            raise KernelError(f"create {link.describe()}: VNI {spec.vni} on port {spec.port} is already used by "
                              "another VXLAN device of that namespace") from None
        _refuse_foreign(kernel, link)
    # Labelled at once (the common settings follow): a crash now must leave it findable.
    links.configure_link(kernel.sockets.nl(link.ns), link.ifname, alias=kernel.label)


def _vxlan_spec(live: links.LiveLink, names: dict[int, str]) -> VxlanSpec:
    """A VXLAN device's attributes as netlink reports them."""
    info = dict(live.info)
    dev = info.get("IFLA_VXLAN_LINK")
    return VxlanSpec(vni=info.get("IFLA_VXLAN_ID") or 0, port=info.get("IFLA_VXLAN_PORT") or 0,
                     local=info.get("IFLA_VXLAN_LOCAL") or info.get("IFLA_VXLAN_LOCAL6"),
                     dev=names.get(dev) if dev else None,
                     remote=info.get("IFLA_VXLAN_GROUP") or info.get("IFLA_VXLAN_GROUP6"),
                     learning=bool(info.get("IFLA_VXLAN_LEARNING")), mac=live.mac,
                     # its socket's namespace is another one (cnetctl only ever makes it the root's)
                     underlay_host=live.peer_netnsid is not None)


def _ensure_device(kernel: Kernel, link: Link) -> None:
    found = links.find_link(kernel.sockets.nl(link.ns), link.ifname)
    if found is None:
        raise KernelError(f"host device {link.ifname} does not exist (cnetctl configures, never creates, "
                          "devices it does not own)")
    # Saved before the change: destroy puts a user's device back as it was.
    kernel.state.remember_device(link.ifname, found)


def _ensure_lo(kernel: Kernel, link: Link) -> None:
    pass  # every namespace has one


def _remove_owned(kernel: Kernel, link: Link) -> None:
    ipr = kernel.sockets.nl(link.ns)
    found = links.find_link(ipr, link.ifname)
    if found is not None and found.alias != kernel.label:
        raise KernelError(f"{link.describe()} is not owned by topology {kernel.topology} "
                          f"(its label is {found.alias!r}); not deleting it")
    links.delete_link(ipr, link.ifname)


def _restore_device(kernel: Kernel, link: Link) -> None:
    """A user's device is never deleted: its original MTU comes back."""
    ipr = kernel.sockets.nl(link.ns)
    original = kernel.state.device_originals.get(link.ifname)
    if original and original.get("mtu") and links.find_link(ipr, link.ifname):
        links.configure_link(ipr, link.ifname, mtu=original["mtu"])
    kernel.state.forget_device(link.ifname)


def _leave(kernel: Kernel, link: Link) -> None:
    pass  # a namespace's lo goes with its namespace


def _no_spec(live: links.LiveLink, names: dict[int, str]) -> None:
    return None   # the kind has no attributes of its own, or they are read elsewhere (a veth's peer)


@dataclass(frozen=True)
class KernelLinkKind:
    ensure: Callable[[Kernel, Link], None]
    remove: Callable[[Kernel, Link], None]
    labelled: bool      # carries the owner label (a namespace's lo labels the namespace)
    # its spec as netlink reports it (names: ifindex -> name in the link's namespace)
    read_spec: Callable[[links.LiveLink, dict[int, str]], object] = _no_spec
    has_fdb: bool = False   # VTEP forwarding entries live on it


KERNEL_LINK_KINDS: dict[str, KernelLinkKind] = {
    "bridge": KernelLinkKind(_ensure_bridge, _remove_owned, labelled=True),
    "veth": KernelLinkKind(_ensure_veth, _remove_owned, labelled=True),
    "vxlan": KernelLinkKind(_ensure_vxlan, _remove_owned, labelled=True, read_spec=_vxlan_spec, has_fdb=True),
    "lo": KernelLinkKind(_ensure_lo, _leave, labelled=True),
    "device": KernelLinkKind(_ensure_device, _restore_device, labelled=False),
}
