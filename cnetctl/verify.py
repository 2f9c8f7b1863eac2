"""Checks from the manifest, proven on the live kernel, plus the desired ⊆ current read-back."""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from .kernel.netns import Sockets, netns_socket
from .kernel.probe import PingHandle, Prober
from .kernel.routes import route_get
from .model.topology import Check, MeshCheck, SourceCheck, TcpCheck
from .normalize import HOST, DesiredState, resolve_table, resolve_target
from .observe import CurrentState
from .plan import plan

MAX_PARALLEL = 32


@dataclass
class CheckResult:
    kind: str
    ok: bool
    detail: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ok": self.ok, "detail": self.detail, **self.fields}


@dataclass
class VerifyReport:
    topology: str
    checks: list[CheckResult]

    @property
    def passed(self) -> int:
        return sum(1 for c in self.checks if c.ok)

    @property
    def failed(self) -> int:
        return sum(1 for c in self.checks if not c.ok)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_json(self) -> dict[str, Any]:
        return {"topology": self.topology, "passed": self.passed, "failed": self.failed,
                "checks": [c.to_json() for c in self.checks]}


def readback(desired: DesiredState, current: CurrentState) -> list[CheckResult]:
    """Every declared resource is live and as declared; each difference is one failed check."""
    drift = plan(desired.resources, current.resources)
    if drift.empty:
        return [CheckResult("readback", True, f"{len(desired.resources)} declared resources live and as declared",
                            {"resources": len(desired.resources)})]
    return [CheckResult("readback", False, f"drift: {a.describe()}", {"drift": a.to_json()})
            for a in drift.actions]


def _check_fields(check: Check) -> dict[str, Any]:
    return check.spec.model_dump(by_alias=True, exclude_none=True, mode="json")


def _family_ok(addr: str, family: str) -> bool:
    v = ipaddress.ip_address(addr.split("/")[0]).version
    return family == "both" or (family == "ipv4") == (v == 4)


def _ping_outcome(handle: PingHandle) -> tuple[list[float], str | None]:
    rtts = handle.result()
    errors = handle.errors
    return [r for r in rtts if r is not None], (errors[0] if errors else None)


def start_ping(desired: DesiredState, check: Check, prober: Prober) -> Callable[[], list[CheckResult]]:
    """Send the echoes now; the returned function collects the replies and judges them."""
    spec = check.spec
    fields = _check_fields(check)
    target = resolve_target(desired, spec.to)
    assert target is not None  # normalize() refused unresolvable targets
    fields["address"] = target
    handle = prober.submit(desired.ns_of(spec.from_), target, count=spec.count, timeout=spec.timeout)

    def finish() -> list[CheckResult]:
        replies, error = _ping_outcome(handle)
        fields["replies"] = len(replies)
        reached = bool(replies)
        fields["actual"] = "reachable" if reached else "unreachable"
        if reached:
            detail = f"{len(replies)}/{spec.count} replies from {target}, rtt {min(replies) * 1000:.3f} ms"
        else:
            detail = f"no reply from {target}: {error}" if error else \
                f"no reply from {target} within {spec.timeout:g} s"
            if error:
                fields["error"] = error
        want = spec.expect == "reachable"
        if reached != want:
            detail = f"expected {spec.expect}, got {fields['actual']}: {detail}"
        return [CheckResult("ping", reached == want, detail, fields)]
    return finish


def mesh_nodes(desired: DesiredState, spec: MeshCheck) -> list[str]:
    """`all` = every node but host (the machine itself is listed explicitly when wanted)."""
    if spec.nodes == "all":
        return [n for n in desired.topology.nodes if n != HOST]
    return list(dict.fromkeys(spec.nodes))


def start_mesh(desired: DesiredState, check: Check, prober: Prober) -> Callable[[], list[CheckResult]]:
    """Every ordered pair of the listed nodes: the first pings every address of the second."""
    spec: MeshCheck = check.spec
    fields = _check_fields(check)
    names = mesh_nodes(desired, spec)
    probes: list[tuple[str, str, str, PingHandle]] = []
    for a in names:
        for b in names:
            if a == b:
                continue
            for cidr in desired.node_addresses(b):
                addr = cidr.split("/")[0]
                if _family_ok(addr, spec.family):
                    probes.append((a, b, addr, prober.submit(desired.ns_of(a), addr, timeout=spec.timeout)))

    def finish() -> list[CheckResult]:
        pair_ok: dict[tuple[str, str], bool] = {(a, b): True for a in names for b in names if a != b}
        failed = []
        for a, b, addr, handle in probes:
            replies, error = _ping_outcome(handle)
            if not replies:
                pair_ok[(a, b)] = False
                failed.append({"from": a, "to": b, "address": addr,
                               "error": error or f"no reply within {spec.timeout:g} s"})
        tested = {(a, b) for a, b, _, _ in probes}
        untested = sorted(p for p in pair_ok if p not in tested)
        ok_pairs = sum(1 for p in tested if pair_ok[p])
        failed_pairs = [f"{a}->{b}" for a, b in sorted(tested) if not pair_ok[(a, b)]]
        fields.update({"members": names, "pairs": len(tested), "pairs_ok": ok_pairs, "pings": len(probes),
                       "failed_pairs": failed_pairs, "failed": failed})
        if untested:
            fields["untested"] = [f"{a}->{b}" for a, b in untested]
        if len(names) < 2:
            # e.g. `all` after the other nodes were pruned from the file: no pair, nothing wrong.
            return [CheckResult("mesh", True, f"no pairs: the mesh has {len(names)} node(s) "
                                f"({', '.join(names) or 'none'})", fields)]
        if not probes:
            return [CheckResult("mesh", False, f"nothing to ping: no {spec.family} addresses among "
                                f"{', '.join(names)}", fields)]
        detail = f"{ok_pairs}/{len(tested)} pairs ok ({len(probes)} pings, {spec.family})"
        if failed_pairs:
            detail += f"; failed pairs: {', '.join(failed_pairs)}"
        if failed:
            shown = "; ".join(f"{f['from']} -> {f['to']} {f['address']}: {f['error']}" for f in failed[:8])
            more = f" (+{len(failed) - 8} more)" if len(failed) > 8 else ""
            detail += f"; failed pings: {shown}{more}"
        if untested:
            detail += f"; no {spec.family} address to test: {', '.join(fields['untested'])}"
        return [CheckResult("mesh", not failed, detail, fields)]
    return finish


def address_owner(desired: DesiredState, addr: str) -> tuple[str, str] | None:
    """(node, ifname) whose declared addresses include `addr`."""
    want = ipaddress.ip_address(addr)
    for (node, ifname), cidrs in desired.addresses.items():
        if any(ipaddress.ip_interface(c).ip == want for c in cidrs):
            return node, ifname
    return None


_SOURCE_LOCKS: dict[tuple[str | None, str, int], threading.Lock] = {}
_SOURCE_LOCKS_GUARD = threading.Lock()


def _source_lock(key: tuple[str | None, str, int]) -> threading.Lock:
    with _SOURCE_LOCKS_GUARD:
        return _SOURCE_LOCKS.setdefault(key, threading.Lock())


def _oserror(err: OSError) -> str:
    name = errno.errorcode.get(err.errno or 0)
    return f"{err.strerror or err}" + (f" ({name})" if name else "")


def run_source(desired: DesiredState, check: Check) -> CheckResult:
    """A UDP datagram from `from` to `to`; the listener (in the node that owns `to`) reports its source."""
    spec: SourceCheck = check.spec
    fields = _check_fields(check)
    target = resolve_target(desired, spec.to)
    assert target is not None
    fields["address"] = target
    owner = address_owner(desired, target)
    if owner is None:
        return CheckResult("source", False, f"no node declares address {target}: cnetctl cannot start a "
                           "listener for it (give `to` as NODE:IFNAME or an address of the topology)", fields)
    fields["receiver"] = f"{owner[0]}:{owner[1]}"
    v6 = ipaddress.ip_address(target).version == 6
    family = socket.AF_INET6 if v6 else socket.AF_INET
    with _source_lock((desired.ns_of(owner[0]), target, spec.port)):
        return _source_probe(desired, spec, fields, owner[0], target, family)


def _source_probe(desired: DesiredState, spec: SourceCheck, fields: dict[str, Any], owner: str, target: str,
                  family: int) -> CheckResult:
    where = f"{target}:{spec.port} in {owner}"
    with closing(netns_socket(desired.ns_of(owner), family, socket.SOCK_DGRAM)) as listener:
        try:
            listener.bind((target, spec.port))
        except OSError as err:
            return CheckResult("source", False, f"cannot listen on {where}: {_oserror(err)}", fields)
        listener.setblocking(False)
        with closing(netns_socket(desired.ns_of(spec.from_), family, socket.SOCK_DGRAM)) as sender:
            try:
                sender.connect((target, spec.port))
            except OSError as err:
                return CheckResult("source", False, f"{spec.from_} cannot send to {target}: {_oserror(err)}", fields)
            sent_from = sender.getsockname()[0]
            fields["sender"] = sent_from
            want = sent_from if spec.expect == "preserved" else spec.expect
            fields["expected"] = want
            token = b"cnetctl-source-" + os.urandom(8).hex().encode()
            seen, send_error = _exchange(sender, listener, token, spec.timeout)
    if seen is None:
        fields["seen"] = None
        why = f" (last send error: {send_error})" if send_error else ""
        return CheckResult("source", False, f"nothing arrived at {where} within {spec.timeout:g} s{why}", fields)
    fields["seen"] = seen
    ok = ipaddress.ip_address(seen) == ipaddress.ip_address(want)
    nat = "" if seen == sent_from else f", translated from {sent_from}"
    label = "preserved" if spec.expect == "preserved" else "expected"
    if ok:
        detail = f"{where} saw source {seen} ({label}{nat})"
    else:
        detail = f"expected source {want} ({spec.expect}), {owner} saw {seen}" + \
            (f" (the sender used {sent_from}: translated on the path)" if seen != sent_from else "")
    return CheckResult("source", ok, detail, fields)


def _exchange(sender: socket.socket, listener: socket.socket, token: bytes, timeout: float
              ) -> tuple[str | None, str | None]:
    """Send the token (again every 200 ms) until the listener gets it; the source it saw."""
    deadline = time.monotonic() + timeout
    send_error = None
    while (left := deadline - time.monotonic()) > 0:
        try:
            sender.send(token)
        except OSError as err:      # an ICMP error for an earlier datagram, or no route now
            send_error = _oserror(err)
        end = time.monotonic() + min(0.2, left)
        while (wait := end - time.monotonic()) > 0:
            if not select.select([listener], [], [], wait)[0]:
                break
            try:
                data, addr = listener.recvfrom(2048)
            except BlockingIOError:
                continue
            if data == token:
                return str(ipaddress.ip_address(addr[0].split("%")[0])), send_error
    return None, send_error


def run_tcp(desired: DesiredState, check: Check) -> CheckResult:
    """A TCP connection from `from` to `to:port` must arrive at a one-shot listener in `serve`
    (proves a DNAT end to end: the connection lands where the rule says)."""
    spec: TcpCheck = check.spec
    fields = _check_fields(check)
    target = resolve_target(desired, spec.to)
    assert target is not None
    fields["address"] = target
    family = socket.AF_INET6 if ipaddress.ip_address(target).version == 6 else socket.AF_INET
    serve_ns = desired.ns_of(spec.serve.node)
    where = f"{spec.serve.node}:{spec.serve.port}"
    with _source_lock((serve_ns, "tcp", spec.serve.port)), \
            closing(netns_socket(serve_ns, family, socket.SOCK_STREAM)) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", spec.serve.port))
            listener.listen(8)
        except OSError as err:
            return CheckResult("tcp", False, f"cannot listen on {where}: {_oserror(err)}", fields)
        listener.setblocking(False)
        with closing(netns_socket(desired.ns_of(spec.from_), family, socket.SOCK_STREAM)) as client:
            client.settimeout(spec.timeout)
            try:
                client.connect((target, spec.port))
            except OSError as err:
                fields["connected"] = False
                return CheckResult("tcp", False, f"{spec.from_} could not connect to {target}:{spec.port}: "
                                   f"{_oserror(err) if not isinstance(err, TimeoutError) else 'timed out'}", fields)
            fields["connected"] = True
            fields["client"] = client.getsockname()[0]
            if not select.select([listener], [], [], spec.timeout)[0]:
                return CheckResult("tcp", False, f"connected to {target}:{spec.port}, but not to the listener on "
                                   f"{where}: something else answered", fields)
            conn, peer = listener.accept()
            conn.close()
    fields["seen"] = str(ipaddress.ip_address(peer[0].split("%")[0]))
    return CheckResult("tcp", True, f"{spec.from_} -> {target}:{spec.port} arrived at {where} "
                       f"from {fields['seen']}", fields)


def run_route(desired: DesiredState, check: Check, sockets: Sockets) -> CheckResult:
    spec = check.spec
    fields = _check_fields(check)
    fwmark = spec.fwmark.value if spec.fwmark is not None else None
    answer = route_get(sockets.get(desired.ns_of(spec.node)), spec.to, src=spec.from_, iif=spec.iif, fwmark=fwmark)
    fields["actual"] = answer.to_json()
    expect = spec.expect
    want: dict[str, Any] = {k: v for k, v in expect.model_dump(exclude_none=True).items()}
    if "table" in want:
        want["table"] = resolve_table(desired.topology, want["table"])
    if "dev" in want:
        # A bridge-plugged link end lives in the kernel under its generated name.
        want["dev"] = desired.interfaces.get((spec.node, want["dev"]), want["dev"])
    have = answer.to_json()
    if not answer.ok:
        have.setdefault("type", answer.type)
    wrong = {k: (v, have.get(k)) for k, v in want.items() if have.get(k) != v}
    if not answer.ok and not (set(want) == {"type"} and not wrong):
        wrong.setdefault("route", ("found", answer.error))
    shown = ", ".join(f"{k} {v}" for k, v in have.items() if k != "ok")
    if not wrong:
        return CheckResult("route", True, f"kernel chose {shown}", fields)
    if not answer.ok:
        detail = f"expected a route ({', '.join(f'{k} {v}' for k, v in want.items())}), got {answer.error}"
    else:
        detail = "expected " + ", ".join(f"{k} {w}, got {_got(h, k)}" for k, (w, h) in wrong.items())
    return CheckResult("route", False, detail, fields)


def _got(value: Any, what: str) -> str:
    """A missing attribute of the kernel's answer, said in words (never "None")."""
    if value is not None:
        return str(value)
    return {"via": "no gateway (directly connected)", "src": "no source address"}.get(what, "none")


Finisher = Callable[[], list[CheckResult]]


def run_checks(desired: DesiredState, sockets: Sockets, extra: dict[str, Callable[..., list[CheckResult]]] | None = None
               ) -> list[CheckResult]:
    """Run the manifest's checks concurrently; results keep the manifest's order.

    Pings (and mesh pings) all go out at once through one shared Prober and cost
    no thread; UDP source checks and extra kinds run in a small thread pool; route
    lookups share one netlink socket per namespace and run here, serially, while
    the others are in flight. Every socket and thread is gone when this returns.
    """
    checks = list(desired.topology.checks)

    def failed(check: Check, err: BaseException) -> list[CheckResult]:  # a check that cannot run has failed
        return [CheckResult(check.kind, False, f"could not run: {err}", _check_fields(check))]

    def guarded(check: Check, fn: Finisher) -> Finisher:
        def run() -> list[CheckResult]:
            try:
                return fn()
            except Exception as err:
                return failed(check, err)
        return run

    def pooled(check: Check) -> list[CheckResult]:
        if check.kind == "source":
            return guarded(check, lambda: [run_source(desired, check)])()
        if check.kind == "tcp":
            return guarded(check, lambda: [run_tcp(desired, check)])()
        if extra and check.kind in extra:
            return guarded(check, lambda: extra[check.kind](desired, check, sockets))()
        return [CheckResult(check.kind, False, f"check kind {check.kind} is not supported yet",
                            _check_fields(check))]

    def route(check: Check) -> Finisher:
        return guarded(check, lambda: [run_route(desired, check, sockets)])

    finishers: list[Finisher] = []
    workers = sum(1 for c in checks if c.kind not in ("ping", "mesh", "route"))
    with Prober() as prober, ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, workers))) as pool:
        for check in checks:
            if check.kind in ("ping", "mesh"):
                starter = start_ping if check.kind == "ping" else start_mesh
                try:
                    finishers.append(guarded(check, starter(desired, check, prober)))
                except Exception as err:
                    finishers.append(functools.partial(failed, check, err))
            elif check.kind == "route":
                finishers.append(route(check))
            else:
                finishers.append(pool.submit(pooled, check).result)
        results = [finish() for finish in finishers]
    return [r for rs in results for r in rs]
