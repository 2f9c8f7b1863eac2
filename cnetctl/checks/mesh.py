"""`mesh`: every ordered pair of the listed nodes, the first pinging every address of the second."""

from __future__ import annotations

import ipaddress
from typing import Any

from ..kernel.probe import PingHandle
from ..model.topology import MeshCheck
from ..normalize import DesiredState
from .base import CheckContext, CheckKind, CheckResult, Finisher, Probe, spec_fields
from .ping import replies

SHOWN_FAILURES = 8   # failed pings spelled out in the detail; the rest are counted (all are in the fields)

Sent = tuple[str, str, str, PingHandle]    # from, to, address, the echo in flight


def mesh_nodes(desired: DesiredState, spec: MeshCheck) -> list[str]:
    """`all` = every node but host (the machine itself is listed explicitly when wanted); with
    hosts:, every node on any machine but the machines' own."""
    if spec.nodes == "all":
        return desired.every_node()
    return list(dict.fromkeys(spec.nodes))


def _family_ok(addr: str, family: str) -> bool:
    v = ipaddress.ip_address(addr.split("/")[0]).version
    return family == "both" or (family == "ipv4") == (v == 4)


def start(ctx: CheckContext, spec: MeshCheck) -> Finisher:
    """Send every pair's echoes now; the returned function collects and judges them. On one
    machine of several, the pairs from the members living there (the others send theirs)."""
    desired = ctx.desired
    names = mesh_nodes(desired, spec)
    probes: list[Sent] = []
    senders = [a for a in names if desired.here(a)]
    for a in senders:
        for b in names:
            if a == b:
                continue
            for cidr in desired.node_addresses(b):
                addr = cidr.split("/")[0]
                if _family_ok(addr, spec.family):
                    probes.append((a, b, addr, ctx.prober.submit(desired.ns_of(a), addr, timeout=spec.timeout)))
    fields = spec_fields(spec)
    if len(senders) < len(names):
        fields["senders"] = senders
    return lambda: judge(spec, names, probes, fields, senders)


def judge(spec: MeshCheck, names: list[str], probes: list[Sent], fields: dict[str, Any],
          senders: list[str] | None = None) -> CheckResult:
    pair_ok: dict[tuple[str, str], bool] = {(a, b): True for a in (names if senders is None else senders)
                                            for b in names if a != b}
    failed = []
    for a, b, addr, handle in probes:
        rtts, error = replies(handle)
        if not rtts:
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
        return CheckResult("mesh", True, f"no pairs: the mesh has {len(names)} node(s) "
                           f"({', '.join(names) or 'none'})", fields)
    if not probes:
        return CheckResult("mesh", False, f"nothing to ping: no {spec.family} addresses among "
                           f"{', '.join(names)}", fields)
    return CheckResult("mesh", not failed, _detail(spec, fields), fields)


def _detail(spec: MeshCheck, fields: dict[str, Any]) -> str:
    failed, failed_pairs = fields["failed"], fields["failed_pairs"]
    detail = f"{fields['pairs_ok']}/{fields['pairs']} pairs ok ({fields['pings']} pings, {spec.family})"
    if "senders" in fields:
        detail += f" from {', '.join(fields['senders'])} (the other members' machines send theirs)"
    if failed_pairs:
        detail += f"; failed pairs: {', '.join(failed_pairs)}"
    if failed:
        shown = "; ".join(f"{f['from']} -> {f['to']} {f['address']}: {f['error']}" for f in failed[:SHOWN_FAILURES])
        more = f" (+{len(failed) - SHOWN_FAILURES} more)" if len(failed) > SHOWN_FAILURES else ""
        detail += f"; failed pings: {shown}{more}"
    if "untested" in fields:
        detail += f"; no {spec.family} address to test: {', '.join(fields['untested'])}"
    return detail


def what(f: dict[str, Any]) -> str:
    nodes = f.get("nodes")
    return f"{'all nodes' if nodes == 'all' else ', '.join(nodes or [])} ({f.get('family')})"


KIND = CheckKind(MeshCheck, Probe(start), what)
