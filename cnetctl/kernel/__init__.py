"""The kernel adapter: the only code that changes the kernel.

`Kernel.create/update/delete` take the typed records of model/resources.py and
converge: creating what exists already (EEXIST) re-reads and succeeds when it
is what was asked for; deleting what is gone succeeds.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from .. import RTPROT_CNETCTL, owner_label
from ..errors import KernelError
from ..model.natspec import NatSpec
from ..model.resources import Address, Fdb, ForwardAccept, Link, Nat, Neighbor, Netns, Resource, Route, Rule, Sysctl
from ..state import State
from . import addresses, links, nat, routes, rtnl, sysctl
from .errnos import likely_cause
from .linkkinds import KERNEL_LINK_KINDS
from .netns import Sockets, create_netns, delete_netns, is_errno, is_stale_mountpoint, netns_exists
from .rtnl import NetlinkError, Rtnl


def netlink_errors() -> Any:
    """The netlink errors a kernel operation may raise: kernel/rtnl.py's, and pyroute2's once
    something has imported it (the few requests still made through an IPRoute)."""
    found = sys.modules.get("pyroute2.netlink.exceptions")
    return (NetlinkError, found.NetlinkError) if found is not None else (NetlinkError,)


class Kernel:
    def __init__(self, topology: str, state: State, sockets: Sockets | None = None):
        self.topology = topology
        self.label = owner_label(topology)
        self.state = state
        self.sockets = sockets or Sockets()

    def close(self) -> None:
        self.sockets.close_all()

    # --- dispatch -------------------------------------------------------------------------------
    def create(self, res: Resource) -> None:
        self._run("create", res, getattr(self, f"_create_{res.KIND}"), res)

    def delete(self, res: Resource) -> None:
        self._run("delete", res, getattr(self, f"_delete_{res.KIND}"), res)

    def update(self, old: Resource, new: Resource) -> None:
        self._run("update", new, getattr(self, f"_update_{new.KIND}"), old, new)

    def _run(self, verb: str, res: Resource, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except KernelError:
            raise
        except netlink_errors() as err:
            if err.code == errno.EOPNOTSUPP and isinstance(res, Link) and res.owned:
                raise KernelError(f"{verb} {res.describe()}: this kernel has no {res.kind} support "
                                  f"(modprobe {res.kind}, or enable CONFIG_{res.kind.upper()})") from err
            raise KernelError(f"{verb} {res.describe()}: {err.args[-1] if err.args else err} "
                              f"({errno.errorcode.get(err.code, err.code)}){likely_cause(err.code, res)}") from err
        except OSError as err:
            raise KernelError(f"{verb} {res.describe()}: {err.strerror or err}"
                              f"{likely_cause(err.errno or 0, res)}") from err

    # --- netns ------------------------------------------------------------------------------------
    def _create_netns(self, res: Netns) -> None:
        label = self.label

        def label_lo(nl: socket.socket) -> None:
            # The namespace's own label lives on its lo, which is also brought up.
            Rtnl(nl).request(rtnl.RTM_NEWLINK, rtnl.link_body(1, [rtnl.attr_str(rtnl.IFLA_IFALIAS, label)], up=True))

        try:
            self.sockets.adopt(res.name, create_netns(res.name, label_lo))
        except FileExistsError:
            # observe() decided it is ours or reported a conflict; a mount point left
            # empty by a killed run is replaced.
            if is_stale_mountpoint(res.name):
                delete_netns(res.name)
                self.sockets.adopt(res.name, create_netns(res.name, label_lo))
            else:
                label_lo(self.sockets.nl(res.name).sock)

    def _delete_netns(self, res: Netns) -> None:
        if netns_exists(res.name) and not is_stale_mountpoint(res.name):
            owner = self._lo_label(res.name)
            if owner != self.label:
                raise KernelError(f"netns {res.name} is not owned by topology {self.topology} "
                                  f"(its label is {owner!r}); not deleting it")
        self.sockets.close(res.name)  # an open socket would keep the namespace alive
        delete_netns(res.name)
        self.state.forget_netns(res.name)

    def _lo_label(self, ns: str) -> str | None:
        """The label of the namespace mounted at `ns` now (its socket is closed afterwards)."""
        try:
            reply = self.sockets.nl_in_place(ns).get(rtnl.RTM_GETLINK, rtnl.ifinfo(1))
        finally:
            self.sockets.close(ns)
        return rtnl.text(rtnl.attrs(reply, rtnl.IFINFO.size).get(rtnl.IFLA_IFALIAS))

    def _update_netns(self, old: Netns, new: Netns) -> None:
        pass

    # --- links ------------------------------------------------------------------------------------
    def _create_link(self, res: Link) -> None:
        kind = KERNEL_LINK_KINDS[res.kind]
        kind.ensure(self, res)
        # The lo of the host is the user's; that of a namespace of ours carries its label.
        labelled = kind.labelled and (res.owned or res.ns is not None)
        links.configure_link(self.sockets.nl(res.ns), res.ifname, alias=self.label if labelled else None,
                             mtu=res.mtu, master=res.master if res.owned else False, up=res.up)

    def _update_link(self, old: Link, new: Link) -> None:
        diff = new.differences(old)
        ipr = self.sockets.nl(new.ns)
        if not new.owned and new.ns is None:
            # Saved before the change: destroy puts a user's device back as it was.
            self.state.remember_device(new.ifname, links.find_link(ipr, new.ifname))
        links.configure_link(ipr, new.ifname,
                             mtu=new.mtu if "mtu" in diff else None,
                             master=new.master if "master" in diff else False,
                             up=new.up if "up" in diff else None)

    def _delete_link(self, res: Link) -> None:
        KERNEL_LINK_KINDS[res.kind].remove(self, res)

    # --- addresses --------------------------------------------------------------------------------
    def _create_address(self, res: Address) -> None:
        if res.ns is None:
            self.state.remember_host(res)
        addresses.add_address(self.sockets.nl(res.ns), res.ifname, res.cidr)

    def _delete_address(self, res: Address) -> None:
        addresses.delete_address(self.sockets.nl(res.ns), res.ifname, res.cidr)
        if res.ns is None:
            self.state.forget_host(res)

    def _update_address(self, old: Address, new: Address) -> None:
        pass

    # --- static neighbours and VXLAN forwarding entries (they go with their interface) -------------
    def _create_neighbor(self, res: Neighbor) -> None:
        links.set_neighbor(self.sockets.get(res.ns), res.dev, res.ip, res.mac)

    def _update_neighbor(self, old: Neighbor, new: Neighbor) -> None:
        self._create_neighbor(new)

    def _delete_neighbor(self, res: Neighbor) -> None:
        links.delete_neighbor(self.sockets.get(res.ns), res.dev, res.ip)

    def _create_fdb(self, res: Fdb) -> None:
        links.add_fdb(self.sockets.get(res.ns), res.dev, res.mac, res.dst)

    def _update_fdb(self, old: Fdb, new: Fdb) -> None:
        pass  # every field is its key

    def _delete_fdb(self, res: Fdb) -> None:
        links.delete_fdb(self.sockets.get(res.ns), res.dev, res.mac, res.dst)

    # --- sysctls ----------------------------------------------------------------------------------
    def _create_sysctl(self, res: Sysctl) -> None:
        current = sysctl.read_sysctl(res.ns, res.name)
        if current is None:
            raise KernelError(f"sysctl {res.name} does not exist in {res.ns or 'host'}")
        # Recorded (and saved) before the first write, so destroy can restore it even after a crash.
        # A host sysctl another topology already manages: its recorded original is the
        # value from before cnetctl, and the last topology to let go restores it.
        if res.ns is None:
            current = next(iter(self.state.host_sysctl_managers(res.name).values()), current)
        self.state.remember_sysctl(res.ns, res.name, current)
        sysctl.write_sysctl(res.ns, res.name, res.value or "")

    def _update_sysctl(self, old: Sysctl, new: Sysctl) -> None:
        sysctl.write_sysctl(new.ns, new.name, new.value or "")

    def _delete_sysctl(self, res: Sysctl) -> None:
        original = self.state.sysctl_original(res.ns, res.name)
        shared = res.ns is None and self.state.host_sysctl_managers(res.name)
        if original is not None and not shared and sysctl.read_sysctl(res.ns, res.name) is not None:
            sysctl.write_sysctl(res.ns, res.name, original)
        self.state.forget_sysctl(res.ns, res.name)

    # --- routes and rules -------------------------------------------------------------------------
    def _create_route(self, res: Route) -> None:
        if res.ns is None:
            self.state.remember_host(res)
        try:
            routes.add_route(self.sockets.nl(res.ns), res)
        except netlink_errors() as err:
            if not is_errno(err, errno.EEXIST):
                raise
            # plan() found no route of ours with this key: whoever made it owns it.
            raise KernelError(f"create {res.describe()}: a route with the same table, destination and "
                              "metric appeared meanwhile and is not this topology's") from err

    def _update_route(self, old: Route, new: Route) -> None:
        routes.replace_route(self.sockets.nl(new.ns), new)

    def _delete_route(self, res: Route) -> None:
        routes.delete_route(self.sockets.nl(res.ns), res)
        if res.ns is None:
            self.state.forget_host(res)

    def _create_rule(self, res: Rule) -> None:
        if res.ns is None:
            self.state.remember_host(res)
        try:
            routes.add_rule(self.sockets.nl(res.ns), res)
        except netlink_errors() as err:
            if not is_errno(err, errno.EEXIST):
                raise
            raise KernelError(f"create {res.describe()}: an identical rule (proto {RTPROT_CNETCTL}) appeared "
                              "meanwhile and is not this topology's") from err

    def _update_rule(self, old: Rule, new: Rule) -> None:
        pass

    def _delete_rule(self, res: Rule) -> None:
        routes.delete_rule(self.sockets.nl(res.ns), res)
        if res.ns is None:
            self.state.forget_host(res)

    # --- NAT and forwarding -----------------------------------------------------------------------
    def _create_nat(self, res: Nat) -> None:
        nat.BACKENDS[res.backend].apply(res.ns, self.topology, self.label, [NatSpec.parse(t) for t in res.rules])

    def _update_nat(self, old: Nat, new: Nat) -> None:
        self._create_nat(new)  # the whole table/chain set is rewritten at once

    def _delete_nat(self, res: Nat) -> None:
        nat.BACKENDS[res.backend].delete(res.ns, self.topology, self.label)

    def _create_forward(self, res: ForwardAccept) -> None:
        nat.forward_apply(res.ns, self.topology, self.label, res.where, res.subnets)

    def _update_forward(self, old: ForwardAccept, new: ForwardAccept) -> None:
        self._create_forward(new)

    def _delete_forward(self, res: ForwardAccept) -> None:
        nat.forward_delete(res.ns, self.topology, self.label, res.where)
