"""The kernel adapter: the only code that changes the kernel.

`Kernel.create/update/delete` take the typed records of model/resources.py and
converge: creating what exists already (EEXIST) re-reads and succeeds when it
is what was asked for; deleting what is gone succeeds.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import RTPROT_CNETCTL, owner_label
from ..errors import KernelError
from ..model.resources import Address, ForwardAccept, Link, Nat, Netns, Resource, Route, Rule, Sysctl
from ..state import State
from . import addresses, links, nat, routes, sysctl
from .errnos import likely_cause
from .netns import Sockets, create_netns, delete_netns, is_errno, is_stale_mountpoint, netns_exists, netns_path


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
        except NetlinkError as err:
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
            with IPRoute(fileno=os.dup(nl.fileno())) as ipr:
                ipr.link("set", index=1, ifalias=label, state="up")

        try:
            self.sockets.adopt(res.name, create_netns(res.name, label_lo))
        except FileExistsError:
            # observe() decided it is ours or reported a conflict; a mount point left
            # empty by a killed run is replaced.
            if is_stale_mountpoint(res.name):
                delete_netns(res.name)
                self.sockets.adopt(res.name, create_netns(res.name, label_lo))
            else:
                self.sockets.get(res.name).link("set", index=1, ifalias=label, state="up")

    def _delete_netns(self, res: Netns) -> None:
        self.sockets.close(res.name)  # an open socket would keep the namespace alive
        if netns_exists(res.name) and not is_stale_mountpoint(res.name):
            owner = self._lo_label(res.name)
            if owner != self.label:
                raise KernelError(f"netns {res.name} is not owned by topology {self.topology} "
                                  f"(its label is {owner!r}); not deleting it")
        delete_netns(res.name)
        self.state.forget_netns(res.name)

    def _lo_label(self, ns: str) -> str | None:
        try:
            (lo,) = self.sockets.get(ns).link("get", index=1)
        finally:
            self.sockets.close(ns)
        return lo.get("ifalias")  # type: ignore[no-any-return]

    def _update_netns(self, old: Netns, new: Netns) -> None:
        pass

    # --- links ------------------------------------------------------------------------------------
    def _create_link(self, res: Link) -> None:
        ipr = self.sockets.get(res.ns)
        if res.kind == "bridge":
            try:
                links.create_bridge(ipr, res.ifname, self.label)
            except NetlinkError as err:
                if not is_errno(err, errno.EEXIST) or not self._ours(res.ns, res.ifname):
                    raise
        elif res.kind == "veth":
            if links.find_link(ipr, res.ifname) is None:
                if not res.peer_ifname or res.peer_ifname == "?":
                    # A veth is created with its peer: without the peer's name the kernel would
                    # invent one (or, with "?", create an interface named "?").
                    raise KernelError(f"create {res.describe()}: the peer of this veth is unknown; "
                                      "refusing to create it")
                # Create from the host side when one end is there: net_ns_fd names a netns path.
                if res.ns is not None and res.peer_ns is None:
                    peer_ipr = self.sockets.get(None)
                    links.create_veth(peer_ipr, res.peer_ifname or "", res.ifname, netns_path(res.ns))
                else:
                    links.create_veth(ipr, res.ifname, res.peer_ifname or "",
                                      netns_path(res.peer_ns) if res.peer_ns is not None else None)
                # Label the peer at once: a crash now must leave both ends findable. Owned veth
                # ends are always up; the peer is brought up here too because a rollback may
                # re-create a pair from one end's record only (its delete took the peer along).
                links.configure_link(self.sockets.get(res.peer_ns), res.peer_ifname, alias=self.label, up=True)
            elif not self._ours(res.ns, res.ifname):
                raise KernelError(f"interface {res.ifname} exists in {res.ns or 'host'} and is not owned by "
                                  f"topology {self.topology}")
        elif res.kind == "device" and links.find_link(ipr, res.ifname) is None:
            raise KernelError(f"host device {res.ifname} does not exist (cnetctl configures, never creates, "
                              "devices it does not own)")
        if res.kind == "device":
            self.state.remember_device(res.ifname, links.find_link(ipr, res.ifname))
        links.configure_link(ipr, res.ifname, alias=self.label if res.owned or (res.kind == "lo" and res.ns) else None,
                             mtu=res.mtu, master=res.master if res.owned else False, up=res.up)

    def _ours(self, ns: str | None, ifname: str) -> bool:
        found = links.find_link(self.sockets.get(ns), ifname)
        return found is not None and found.alias == self.label

    def _update_link(self, old: Link, new: Link) -> None:
        diff = new.differences(old)
        ipr = self.sockets.get(new.ns)
        if new.kind == "device":
            # Saved before the change: destroy puts a user's device back as it was.
            self.state.remember_device(new.ifname, links.find_link(ipr, new.ifname))
        links.configure_link(ipr, new.ifname,
                             mtu=new.mtu if "mtu" in diff else None,
                             master=new.master if "master" in diff else False,
                             up=new.up if "up" in diff else None)

    def _delete_link(self, res: Link) -> None:
        ipr = self.sockets.get(res.ns)
        if res.owned:
            found = links.find_link(ipr, res.ifname)
            if found is not None and found.alias != self.label:
                raise KernelError(f"{res.describe()} is not owned by topology {self.topology} "
                                  f"(its label is {found.alias!r}); not deleting it")
            links.delete_link(ipr, res.ifname)
        elif res.kind == "device":
            original = self.state.device_originals.get(res.ifname)
            if original and original.get("mtu") and links.find_link(ipr, res.ifname):
                links.configure_link(ipr, res.ifname, mtu=original["mtu"])
            self.state.forget_device(res.ifname)

    # --- addresses --------------------------------------------------------------------------------
    def _create_address(self, res: Address) -> None:
        if res.ns is None:
            self.state.remember_host(res)
        addresses.add_address(self.sockets.get(res.ns), res.ifname, res.cidr)

    def _delete_address(self, res: Address) -> None:
        addresses.delete_address(self.sockets.get(res.ns), res.ifname, res.cidr)
        if res.ns is None:
            self.state.forget_host(res)

    def _update_address(self, old: Address, new: Address) -> None:
        pass

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
            routes.add_route(self.sockets.get(res.ns), res)
        except NetlinkError as err:
            if not is_errno(err, errno.EEXIST):
                raise
            # plan() found no route of ours with this key: whoever made it owns it.
            raise KernelError(f"create {res.describe()}: a route with the same table, destination and "
                              "metric appeared meanwhile and is not this topology's") from err

    def _update_route(self, old: Route, new: Route) -> None:
        routes.replace_route(self.sockets.get(new.ns), new)

    def _delete_route(self, res: Route) -> None:
        routes.delete_route(self.sockets.get(res.ns), res)
        if res.ns is None:
            self.state.forget_host(res)

    def _create_rule(self, res: Rule) -> None:
        if res.ns is None:
            self.state.remember_host(res)
        try:
            routes.add_rule(self.sockets.get(res.ns), res)
        except NetlinkError as err:
            if not is_errno(err, errno.EEXIST):
                raise
            raise KernelError(f"create {res.describe()}: an identical rule (proto {RTPROT_CNETCTL}) appeared "
                              "meanwhile and is not this topology's") from err

    def _update_rule(self, old: Rule, new: Rule) -> None:
        pass

    def _delete_rule(self, res: Rule) -> None:
        routes.delete_rule(self.sockets.get(res.ns), res)
        if res.ns is None:
            self.state.forget_host(res)

    # --- NAT and forwarding -----------------------------------------------------------------------
    def _create_nat(self, res: Nat) -> None:
        apply_fn, _, _ = nat.BACKENDS[res.backend]
        apply_fn(res.ns, self.topology, self.label, [nat.NatSpec.parse(t) for t in res.rules])

    def _update_nat(self, old: Nat, new: Nat) -> None:
        self._create_nat(new)  # the whole table/chain set is rewritten at once

    def _delete_nat(self, res: Nat) -> None:
        _, delete_fn, _ = nat.BACKENDS[res.backend]
        delete_fn(res.ns, self.topology, self.label)

    def _create_forward(self, res: ForwardAccept) -> None:
        nat.forward_apply(res.ns, self.topology, self.label, res.where, res.subnets)

    def _update_forward(self, old: ForwardAccept, new: ForwardAccept) -> None:
        self._create_forward(new)

    def _delete_forward(self, res: ForwardAccept) -> None:
        nat.forward_delete(res.ns, self.topology, self.label, res.where)
