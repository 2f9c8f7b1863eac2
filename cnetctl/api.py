"""The library API shared by the CLI and the tests."""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import RTPROT_CNETCTL, owner_label, owner_of
from . import hosts as hostslib
from .errors import CnetctlError, ConflictError, Interrupted, KernelError, NotPermitted, UsageError
from .model.linkkinds import VethSpec
from .model.resources import Address, ForwardAccept, Link, Nat, Netns, Resource, Route
from .nat_rules import forward_subnets
from .plan import Action, Plan, plan
from .state import State, TopologyLock, list_state_names, state_dir

if TYPE_CHECKING:
    from .kernel import Kernel
    from .kernel import links as klinks
    from .kernel.addresses import dump_addresses
    from .kernel.labels import lo_alias
    from .kernel.nat import BACKENDS, backend_warnings, detect_backend, nat_owners, require_backend
    from .kernel.netns import Sockets, netns_path, run_in_netns, signals_deferred
    from .load import load_topology
    from .model.topology import Topology, is_topology_name
    from .normalize import DesiredState, normalize
    from .observe import CurrentState, observe, scan_owners
    from .runner import StepHook, changes_stand, execute, interrupted_run, interrupted_says
    from .verify import CheckResult, VerifyReport, checks_started, readback, run_checks
else:
    # The kernel side (pyroute2 and all) is imported at first use: `validate` needs none of it.
    from .lazy import LazyModule, lazy_attrs

    # Reading a manifest (the YAML parsers, normalize) neither: destroy, status and exec need no file.
    (load_topology,) = lazy_attrs("cnetctl.load", "load_topology")
    (normalize,) = lazy_attrs("cnetctl.normalize", "normalize")
    (Kernel,) = lazy_attrs("cnetctl.kernel", "Kernel")
    klinks = LazyModule("cnetctl.kernel.links")
    BACKENDS, backend_warnings, detect_backend, nat_owners, require_backend = lazy_attrs(
        "cnetctl.kernel.nat", "BACKENDS", "backend_warnings", "detect_backend", "nat_owners", "require_backend")
    Sockets, netns_path, run_in_netns, signals_deferred = lazy_attrs(
        "cnetctl.kernel.netns", "Sockets", "netns_path", "run_in_netns", "signals_deferred")
    (lo_alias,) = lazy_attrs("cnetctl.kernel.labels", "lo_alias")
    (dump_addresses,) = lazy_attrs("cnetctl.kernel.addresses", "dump_addresses")
    (is_topology_name,) = lazy_attrs("cnetctl.model.topology", "is_topology_name")
    observe, scan_owners = lazy_attrs("cnetctl.observe", "observe", "scan_owners")
    changes_stand, execute, interrupted_run, interrupted_says = lazy_attrs(
        "cnetctl.runner", "changes_stand", "execute", "interrupted_run", "interrupted_says")
    CheckResult, VerifyReport, checks_started, readback, run_checks = lazy_attrs(
        "cnetctl.verify", "CheckResult", "VerifyReport", "checks_started", "readback", "run_checks")

CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
Progress = Callable[[str, Action], None]   # phase ("apply" | "undo"), action


def validate(file: str, nat_backend: str | None = None) -> DesiredState:
    topo, src = load_topology(file)
    return normalize(topo, src, resolve_nat_backend(topo, nat_backend))


def resolve_nat_backend(topo: Topology, chosen: str | None) -> str:
    """The backend normalize puts NAT rules in: `chosen` (else settings.nat_backend), where `auto`
    becomes the family the host's iptables uses, when the topology has NAT rules at all."""
    backend = chosen or topo.settings.nat_backend
    if backend == "auto" and any(spec.nat for spec in topo.nodes.values()):
        backend = detect_backend()   # reads where the host's iptables points; no kernel access
    return backend


def require_root() -> None:
    try:
        with open("/proc/self/status") as fh:
            caps = int(next(line.split()[1] for line in fh if line.startswith("CapEff:")), 16)
    except (OSError, StopIteration, ValueError):
        caps = 0 if os.geteuid() else ~0
    missing = [name for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"))
               if not caps >> bit & 1]
    if missing:
        raise NotPermitted(f"cnetctl needs root ({' and '.join(missing)} missing): run it with sudo")


@dataclass
class ApplyResult:
    topology: str
    plan: Plan
    warnings: list[str] = field(default_factory=list)
    report: VerifyReport | None = None
    drift_after: list[Action] = field(default_factory=list)


def _observe(desired: DesiredState, name: str, state: State, sockets: Sockets) -> CurrentState:
    """What is live, with the desired state completed by what only the kernel can tell:
    where another tool's FORWARD policy DROP lives (settings.forward: accept goes there)."""
    backends = _require_backends(desired)
    current = observe(name, state, sockets, desired)
    desired.resources = [r for r in desired.resources if not isinstance(r, ForwardAccept)]
    desired.warnings = backend_warnings(backends)
    for ns, chains in current.forward_drops.items():
        if ns is not None and ns not in desired.nodes.values():
            continue
        for where in chains:
            if desired.topology.settings.forward == "accept":
                # Only the subnets the chain's family can match (forward_apply skips the others).
                desired.resources.append(ForwardAccept(ns, where, forward_subnets(where, desired.subnets())))
            else:
                desired.warnings.append(
                    f"FORWARD policy DROP in {where.replace('nft:', 'nft table ').replace(':', ' table ')} "
                    f"({'host' if ns is None else 'netns ' + ns}): forwarded traffic of topology {desired.name} "
                    "will be dropped there; set settings.forward: accept to add owned ACCEPT rules for its subnets")
    return current


def nat_backend_for(topo: Topology, flag: str | None, last_applied: str | None) -> str | None:
    """The NAT backend plan and apply use (None: settings.nat_backend, i.e. auto).

    In order: the --nat-backend flag (`auto` re-detects); the manifest's settings.nat_backend
    when it names a backend; the backend of the last apply (state), so that a plain plan or
    apply after `apply --nat-backend X` keeps NAT where it is, as verify does; else auto
    (the host's iptables flavour)."""
    if flag:
        return flag
    if topo.settings.nat_backend != "auto":
        return topo.settings.nat_backend
    return last_applied if last_applied in BACKENDS else None


def _load(file: str, directory: str, flag: str | None, host: str | None = None) -> DesiredState:
    topo, src = load_topology(file)
    chosen = nat_backend_for(topo, flag, State.load(topo.name, directory).nat_backend)
    return normalize(topo, src, resolve_nat_backend(topo, chosen), host=which_host(topo, host))


# --- topologies that span machines (hosts.py) -------------------------------------------------------

def local_addresses() -> set[str]:
    """The addresses configured in the namespace cnetctl runs in (this machine's)."""
    with Sockets() as sockets:
        return {cidr.split("/")[0] for _, cidr in dump_addresses(sockets.nl(None))}


def which_host(topo: Topology, host: str | None) -> str | None:
    """The machine whose slice to work on: `host` (--host) checked against the manifest, else the
    host whose address is configured here; None for a topology on one machine."""
    hostslib.check_host(topo, host)
    if host is not None or not topo.hosts:
        return host
    return hostslib.pick_host(topo, local_addresses())


def _host_warnings(desired: DesiredState) -> list[str]:
    """A slice applied where its host's address is not configured: its tunnels carry nothing."""
    if desired.placement is None or not desired.placement.tunnels:
        return []
    address = desired.placement.address
    if ipaddress.ip_address(address) in {ipaddress.ip_address(a) for a in local_addresses()}:
        return []
    return [f"host {desired.host}'s address {address} is not configured on this machine: the tunnels of "
            f"topology {desired.name} send from it and will carry no traffic"]


def _same_slice(st: State, host: str | None) -> None:
    """One machine holds one slice of a topology: another host's would replace it."""
    if host is not None and st.host is not None and st.host != host:
        raise UsageError(f"topology {st.name} is applied here as host {st.host}'s slice, not {host}'s: run "
                         f"cnetctl with --host {st.host}, or destroy it first")


def inventory(file: str) -> str:
    """The Ansible inventory (YAML) of a topology's hosts (hosts.inventory)."""
    topo, src = load_topology(file)
    if not topo.hosts:
        raise UsageError(f"topology {topo.name} declares no hosts: (it lives on one machine); an inventory "
                         "lists the machines of a topology that spans several")
    normalize(topo, src)   # the whole manifest is valid
    return hostslib.inventory(topo, file)


def plan_file(file: str, directory: str | None = None, nat_backend: str | None = None, host: str | None = None
              ) -> tuple[DesiredState, Plan]:
    desired = _load(file, state_dir(directory), nat_backend, host)
    require_root()
    st = State.load(desired.name, state_dir(directory))
    _same_slice(st, desired.host)
    with Sockets() as sockets:
        current = _observe(desired, desired.name, st, sockets)
        desired.warnings += _host_warnings(desired)
        _raise_conflicts(current, desired.name)
        return desired, plan(desired.resources, current.resources)


def _raise_conflicts(current: CurrentState, name: str) -> None:
    if current.conflicts:
        raise ConflictError(f"topology {name} cannot be applied; nothing was changed:\n  "
                            + "\n  ".join(current.conflicts))


def apply(file: str, directory: str | None = None, *, verify: bool = True, lock_timeout: float = 30.0,
          progress: Progress | None = None, on_plan: Callable[[str, Plan, list[str]], None] | None = None,
          nat_backend: str | None = None, before_step: StepHook | None = None, host: str | None = None
          ) -> ApplyResult:
    """Reconcile, then (`verify`) check. Ctrl-C or SIGTERM while the changes are made undoes
    them; before, nothing was changed; after, they stand, and the message says which it was."""
    directory = state_dir(directory)
    desired = _load(file, directory, nat_backend, host)
    require_root()
    done: list[Action] = []
    with interrupted_says(lambda: changes_stand(len(done), verify)), \
            TopologyLock(desired.name, directory, lock_timeout), host_lock(directory, lock_timeout), \
            Sockets() as sockets:
        st = State.load(desired.name, directory)
        _same_slice(st, desired.host)
        previous = interrupted_run(journal_path(desired.name, directory))
        current = _observe(desired, desired.name, st, sockets)
        desired.warnings += _host_warnings(desired)
        if previous:
            desired.warnings.append(f"the previous run on topology {desired.name} was interrupted at {previous}; "
                                    "converging from what is live")
        _raise_conflicts(current, desired.name)
        the_plan = plan(desired.resources, current.resources)
        if on_plan:
            on_plan(desired.name, the_plan, desired.warnings)
        result = ApplyResult(desired.name, the_plan, list(desired.warnings))
        if not the_plan.empty:
            # Saved before the first change: a crash from here on leaves a file that
            # names the nodes (the labels name everything else).
            st.nodes, st.manifest, st.host = dict(desired.nodes), os.path.abspath(file), desired.host
            st.save()
            kernel = Kernel(desired.name, st, sockets)
            try:
                execute(kernel, the_plan, progress=progress, journal=journal_path(desired.name, directory),
                        before_step=before_step, done=done)
            except BaseException:
                if not _owns_anything(desired.name, st, sockets):
                    st.remove()
                raise
        with signals_deferred():   # the record of what now stands is written whole
            st.nodes, st.manifest, st.applied_at = dict(desired.nodes), os.path.abspath(file), time.time()
            st.nat_backend, st.host = desired.nat_backend, desired.host
            st.save()
        if verify:
            result.report = _verified(desired, st, sockets)
        return result


def _verified(desired: DesiredState, st: State, sockets: Sockets) -> VerifyReport:
    """The read-back and the checks of an applied topology: the checks' packets go out first,
    the read-back is taken while they are in flight (most checks wait for replies; an
    `unreachable` one waits out its whole timeout)."""
    sockets.make_room(2 * len(desired.nodes))   # the pings' sockets: one per namespace and family
    _wait_veths_running(desired, sockets)
    with checks_started(desired, sockets) as results:
        found = readback(desired, _observe(desired, desired.name, st, sockets))
        return VerifyReport(desired.name, found + results(), desired.host)


def _wait_veths_running(desired: DesiredState, sockets: Sockets, timeout: float = 5.0) -> None:
    """Right after apply, the checks wait until the kernel transmits on every veth it made
    (see klinks.wait_running); a link still not running by then fails its checks honestly."""
    deadline = time.monotonic() + timeout
    by_ns: dict[str | None, set[str]] = {}
    for r in desired.resources:
        if isinstance(r, Link) and r.kind == "veth":
            by_ns.setdefault(r.ns, set()).add(r.ifname)
    for ns, names in by_ns.items():
        klinks.wait_running(sockets.nl(ns), names, deadline)


def _require_backends(desired: DesiredState) -> set[str]:
    """The NAT backends the desired state uses; a missing library is a usage error (exit 2,
    naming what to install), found before anything is changed or sent."""
    backends = {r.backend for r in desired.resources if isinstance(r, Nat)}
    for backend in sorted(backends):
        require_backend(backend)
    return backends


def _owns_anything(name: str, st: State, sockets: Sockets) -> bool:
    return bool(observe(name, st, sockets).resources) or not st.empty


def verify(file: str, directory: str | None = None, nat_backend: str | None = None, host: str | None = None
           ) -> VerifyReport:
    topo, src = load_topology(file)
    st = State.load(topo.name, state_dir(directory))
    # NAT is checked in the backend the last apply used (it may have come from --nat-backend).
    desired = normalize(topo, src, resolve_nat_backend(topo, nat_backend or st.nat_backend),
                        host=which_host(topo, host))
    require_root()
    _same_slice(st, desired.host)
    with Sockets() as sockets:
        if st.exists:
            _require_backends(desired)
            return _verified(desired, st, sockets)
        current = _observe(desired, desired.name, st, sockets)
        if not current.resources:   # no packet is sent for a topology that is not there
            return VerifyReport(desired.name, [CheckResult(
                "readback", False, f"topology {desired.name} is not applied (nothing of it is live): "
                f"run `cnetctl apply {file}` first", {"applied": False})], desired.host)
        sockets.make_room(2 * len(desired.nodes))
        return VerifyReport(desired.name, readback(desired, current) + run_checks(desired, sockets), desired.host)


def destroy(name: str, directory: str | None = None, *, lock_timeout: float = 30.0,
            progress: Progress | None = None, on_plan: Callable[[Plan, list[str]], None] | None = None,
            before_step: StepHook | None = None, host: str | None = None) -> Plan:
    """Remove everything topology `name` owns, found by its labels and state file. With hosts:,
    that is this machine's slice (`host`, when given, must be the one applied here)."""
    require_root()
    directory = state_dir(directory)
    lock = TopologyLock(name, directory, lock_timeout)
    with lock, host_lock(directory, lock_timeout), Sockets() as sockets:
        st = State.load(name, directory)
        _same_slice(st, host)
        # What lives in the namespaces goes with them: only the namespaces and the host are read.
        current = observe(name, st, sockets, inside=False)
        the_plan = plan([], current.resources, collapse_netns=True)
        if on_plan:
            on_plan(the_plan, [f"skipped {c}; left it untouched" for c in current.conflicts])
        kernel = Kernel(name, st, sockets)
        # Forward only: a half-done destroy is finished by running destroy again.
        execute(kernel, the_plan, rollback=False, progress=progress, journal=journal_path(name, directory),
                before_step=before_step)
        for ns in current.owned_netns:
            st.forget_netns(ns)
        deleted = {a.resource.key for a in the_plan.actions}
        # The host's ends of veths into the deleted namespaces: the kernel removes them later.
        going = [r.ifname for r in current.resources
                 if isinstance(r, Link) and r.ns is None and r.owned and r.key not in deleted]
        _wait_until_gone(name, st, sockets, kernel, going, before_step=before_step)
        st.remove()
        lock.remove_on_exit = True   # nothing is left to lock: no <name>.lock stays behind
        return the_plan


def host_lock(directory: str, timeout: float) -> TopologyLock:
    """Serialises changes of different topologies: they share the host's routes, rules,
    sysctls and firewall tables (and the namespace list that observe() scans)."""
    return TopologyLock("host", directory, timeout, filename=".host.lock")


def journal_path(name: str, directory: str) -> str:
    return os.path.join(directory, f"{name}.journal")


def _wait_until_gone(name: str, st: State, sockets: Sockets, kernel: Kernel, going: list[str],
                     timeout: float = 10.0, before_step: StepHook | None = None) -> None:
    """The kernel tears a deleted namespace down asynchronously: veth peers outside it
    vanish some milliseconds to a second later. Wait for that (for the host interfaces
    `going`, told by the kernel's notifications), check that nothing of the topology is
    left, and delete by hand what lingers."""
    deadline = time.monotonic() + timeout
    klinks.wait_links_gone(going, deadline)
    delay = 0.005
    while True:
        left = observe(name, st, sockets).resources
        if not left:
            return
        if time.monotonic() >= deadline:
            execute(kernel, plan([], left, collapse_netns=True), rollback=False, before_step=before_step)
            left = observe(name, st, sockets).resources
            if left:
                raise KernelError("destroy left " + ", ".join(r.describe() for r in left))
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def name_of(file: str, host: str | None = None) -> str:
    """The topology a manifest names (valid as a whole; `host`, when given, one of its hosts)."""
    topo, src = load_topology(file)
    hostslib.check_host(topo, host)
    return normalize(topo, src, resolve_nat_backend(topo, None)).name


@dataclass
class TopologyStatus:
    name: str
    state_file: bool
    nodes: dict[str, str | None]
    resources: list[Resource]
    applied_at: float | None = None
    manifest: str | None = None
    host: str | None = None     # with hosts:, the machine whose slice is applied here

    def node_of(self, ns: str | None) -> str | None:
        """The node living in namespace `ns` (host: the namespace cnetctl runs in), None if unknown."""
        found = next((node for node, where in self.nodes.items() if where == ns), None)
        return "host" if found is None and ns is None else found

    def to_json(self) -> dict[str, Any]:
        namespaces = sorted(r.name for r in self.resources if isinstance(r, Netns))
        addresses: dict[tuple[str | None, str], list[str]] = {}
        for r in self.resources:
            if isinstance(r, Address):
                addresses.setdefault((r.ns, r.ifname), []).append(r.cidr)
        links = [{"netns": r.ns, "ifname": r.ifname, "kind": r.kind, "master": r.master, "mtu": r.mtu, "up": r.up,
                  "peer": {"netns": r.spec.peer_ns, "ifname": r.spec.peer_ifname} if isinstance(r.spec, VethSpec)
                  else None,
                  "node": self.node_of(r.ns), "addresses": addresses.get((r.ns, r.ifname), [])}
                 for r in self.resources if isinstance(r, Link) and r.owned]
        counts: dict[str, int] = {}
        for r in self.resources:
            counts[r.KIND] = counts.get(r.KIND, 0) + 1
        return {"name": self.name, "state_file": self.state_file, "manifest": self.manifest,
                "applied_at": self.applied_at, "nodes": self.nodes, "namespaces": namespaces,
                "links": links, "counts": counts, "by_node": self._by_node(namespaces, links, addresses),
                **({"host": self.host} if self.host else {})}

    def _by_node(self, namespaces: list[str], links: list[dict[str, Any]],
                 addresses: dict[tuple[str | None, str], list[str]]) -> list[dict[str, Any]]:
        """Per node (host first): its namespace, its interfaces with their addresses, its routes."""
        where = [None, *(ns for ns in self.nodes.values() if ns is not None),
                 *(ns for ns in namespaces if ns not in self.nodes.values())]
        out = []
        for ns in dict.fromkeys(where):
            interfaces = [link for link in links if link["netns"] == ns]
            # Addresses cnetctl manages on interfaces it does not own (host devices, lo).
            interfaces += [{"netns": ns, "ifname": ifname, "kind": None, "master": None, "mtu": None, "up": None,
                            "peer": None, "node": self.node_of(ns), "addresses": cidrs}
                           for (a_ns, ifname), cidrs in addresses.items()
                           if a_ns == ns and not any(link["ifname"] == ifname for link in interfaces)]
            routes = [_route_json(r) for r in self.resources if isinstance(r, Route) and r.ns == ns]
            if ns is None and not interfaces and not routes and None not in self.nodes.values():
                continue
            out.append({"node": self.node_of(ns), "netns": ns, "live": ns is None or ns in namespaces,
                        "interfaces": interfaces, "routes": routes})
        return out


def _route_json(r: Route) -> dict[str, Any]:
    return {"family": 6 if r.family == socket.AF_INET6 else 4,
            "to": "default" if r.dst in ("0.0.0.0/0", "::/0") else r.dst, "via": r.via, "dev": r.dev,
            "src": r.src, "table": r.table, "metric": r.metric, "type": r.type, "proto": RTPROT_CNETCTL}


def status(name: str | None = None, directory: str | None = None, host: str | None = None
           ) -> list[TopologyStatus]:
    """Every applied topology (or `name`), from the kernel; with `host`, only those applied here as
    that host's slice."""
    require_root()
    directory = state_dir(directory)
    with Sockets() as sockets:
        names = owned_names(directory, sockets)
        if name is not None:
            if name not in names:
                raise UsageError(f"no topology named {name} is applied")
            names = {name}
        out = []
        for n in sorted(names):
            st = State.load(n, directory)
            current = observe(n, st, sockets)
            if host is not None and st.host != host:
                if name is not None:
                    raise UsageError(f"topology {n} is not applied here as host {host}'s slice"
                                     + (f" (it is host {st.host}'s)" if st.host else ""))
                continue
            out.append(TopologyStatus(n, st.exists, st.nodes, current.resources, st.applied_at, st.manifest,
                                      st.host))
        return out


def owned_names(directory: str, sockets: Sockets) -> set[str]:
    """Every topology with something on this machine: a state file, a labelled namespace, a
    labelled link in the host namespace, NAT or forward rules marked as its own in the host
    namespace (what a lost state file leaves is still found)."""
    owners = scan_owners(sockets)
    names = set(list_state_names(directory)) | {o for o in owners.values() if o}
    names |= {owner for link in klinks.dump_links(sockets.nl(None))
              if (owner := owner_of(link.alias)) is not None}
    return names | nat_owners(None)


def destroy_all(directory: str | None = None, *, lock_timeout: float = 30.0, progress: Progress | None = None,
                on_plan: Callable[[str, Plan, list[str]], None] | None = None,
                on_done: Callable[[str, Plan], None] | None = None) -> dict[str, Plan]:
    """destroy() every topology found by owned_names(), one after the other. A label that
    names no valid topology is skipped with a warning; a topology that cannot be destroyed
    (locked, a kernel error) does not stop the others: the first such error is raised at
    the end, naming every topology that is left."""
    require_root()
    directory = state_dir(directory)
    with Sockets() as sockets:
        found = owned_names(directory, sockets)
    done: dict[str, Plan] = {}
    failed: list[tuple[str, CnetctlError]] = []
    for name in sorted(found):
        if not is_topology_name(name):
            if on_plan:
                on_plan(name, Plan([]), [f"skipped the label cnetctl:{name}: {name!r} is not a topology name"])
            continue
        try:
            done[name] = destroy(name, directory, lock_timeout=lock_timeout, progress=progress,
                                 on_plan=functools.partial(on_plan, name) if on_plan else None)
        except Interrupted:
            raise   # Ctrl-C / SIGTERM stop it all; what is left, destroy --all finishes
        except CnetctlError as err:
            failed.append((name, err))
            continue
        if on_done:
            on_done(name, done[name])
    if failed:
        left = "; ".join(f"{name}: {err}" for name, err in failed)
        error = CnetctlError(f"destroy --all left {len(failed)} topolog{'y' if len(failed) == 1 else 'ies'}: {left}")
        error.exit_code = failed[0][1].exit_code   # the exit code of the first failure
        raise error from failed[0][1]
    return done


def node_netns(name: str, node: str, directory: str | None = None) -> str | None:
    """The namespace of NODE in applied topology NAME (None for host)."""
    st = State.load(name, state_dir(directory))
    if node == "host" or (st.exists and node in st.nodes and st.nodes[node] is None):
        return None   # the machine's root namespace (with hosts:, the node named after the machine)
    ns = st.nodes.get(node, f"{name}-{node}") if st.exists else f"{name}-{node}"
    if ns is None:
        return None
    if not os.path.exists(netns_path(ns)):
        raise UsageError(_no_node(name, node, ns, st))
    with Sockets() as sockets:
        if lo_alias(sockets, ns) != owner_label(name):
            raise UsageError(f"netns {ns} is not owned by topology {name}")
    return ns


def _no_node(name: str, node: str, ns: str, st: State) -> str:
    """Why NODE cannot be entered, with what the user can type instead."""
    if not st.exists:
        return (f"topology {name} has no node {node} (no netns {ns}, and no state file of {name} here: "
                f"`cnetctl status` lists the applied topologies)")
    if node in st.nodes:
        return f"node {node} of topology {name} has no netns {ns} (removed by hand? `cnetctl apply` makes it again)"
    return f"topology {name} has no node {node} (its nodes: {', '.join(sorted(st.nodes))})"


def exec_in_node(name: str, node: str, argv: list[str], directory: str | None = None) -> None:
    """Replace this process with argv running inside the node's network namespace."""
    require_root()
    ns = node_netns(name, node, directory)
    if ns is not None:
        from .kernel.netns import _setns
        fd = os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
        _setns(fd)  # the main thread: exec keeps the namespace
        os.close(fd)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise UsageError(f"command not found: {argv[0]}") from None


@functools.lru_cache(maxsize=8)
def _table_names(manifest: str, mtime_ns: int) -> dict[int, str]:
    try:   # table names are a nicety: a manifest edited since apply must not stop explain
        return {v: k for k, v in load_topology(manifest)[0].tables.items()}
    except Exception:
        return {}


def explain(name: str, node: str, to: str, *, src: str | None = None, iif: str | None = None,
            fwmark: int | None = None, directory: str | None = None) -> Any:
    """The path of a packet to `to` through NODE of applied topology NAME (see explain.py)."""

    from .explain import explain as explain_in
    require_root()
    for what, value in (("--to", to), ("--from", src)):
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise UsageError(f"{what} {value!r} is not an IP address") from None
    ns = node_netns(name, node, directory)
    st = State.load(name, state_dir(directory))
    names = _table_names(st.manifest, os.stat(st.manifest).st_mtime_ns) \
        if st.manifest and os.path.exists(st.manifest) else {}
    with Sockets() as sockets:
        try:
            return explain_in(sockets.get(ns), ns, to, src=src, iif=iif, fwmark=fwmark, topology=name, node=node,
                              table_names=names)
        except ValueError as err:
            raise UsageError(str(err)) from None


__all__ = ["validate", "plan_file", "apply", "verify", "destroy", "status", "exec_in_node", "run_in_netns", "explain"]
