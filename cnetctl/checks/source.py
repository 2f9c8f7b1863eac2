"""`source`: a UDP datagram from a node to an address; the listener, in the node that declares the
address, says which source it saw: the sender's own (preserved) or the one expected (e.g. after SNAT)."""

from __future__ import annotations

import ipaddress
from typing import Any

from ..kernel.transport import UdpOutcome, udp_probe
from ..model.topology import SourceCheck
from ..normalize import DesiredState
from .base import CheckContext, CheckKind, CheckResult, Pooled, aimed_fields


def address_owner(desired: DesiredState, addr: str) -> tuple[str, str] | None:
    """(node, ifname) whose declared addresses include `addr`."""
    want = ipaddress.ip_address(addr)
    for (node, ifname), cidrs in desired.addresses.items():
        if any(ipaddress.ip_interface(c).ip == want for c in cidrs):
            return node, ifname
    return None


def run(ctx: CheckContext, spec: SourceCheck) -> CheckResult:
    desired = ctx.desired
    target, fields = aimed_fields(ctx, spec)
    owner = address_owner(desired, target)
    if owner is None:
        return CheckResult("source", False, f"no node declares address {target}: cnetctl cannot start a "
                           "listener for it (give `to` as NODE:IFNAME or an address of the topology)", fields)
    fields["receiver"] = f"{owner[0]}:{owner[1]}"
    seen = udp_probe(desired.ns_of(owner[0]), target, spec.port, desired.ns_of(spec.from_), spec.timeout)
    return judge(spec, owner[0], target, seen, fields)


def judge(spec: SourceCheck, owner: str, target: str, seen: UdpOutcome, fields: dict[str, Any]) -> CheckResult:
    where = f"{target}:{spec.port} in {owner}"
    if seen.listen_error:
        return CheckResult("source", False, f"cannot listen on {where}: {seen.listen_error}", fields)
    if seen.send_error or seen.sender is None:
        return CheckResult("source", False, f"{spec.from_} cannot send to {target}: {seen.send_error}", fields)
    sent_from = fields["sender"] = seen.sender
    want = fields["expected"] = sent_from if spec.expect == "preserved" else spec.expect
    fields["seen"] = seen.seen
    if seen.seen is None:
        why = f" (last send error: {seen.last_send_error})" if seen.last_send_error else ""
        return CheckResult("source", False, f"nothing arrived at {where} within {spec.timeout:g} s{why}", fields)
    ok = ipaddress.ip_address(seen.seen) == ipaddress.ip_address(want)
    nat = "" if seen.seen == sent_from else f", translated from {sent_from}"
    label = "preserved" if spec.expect == "preserved" else "expected"
    if ok:
        detail = f"{where} saw source {seen.seen} ({label}{nat})"
    else:
        detail = f"expected source {want} ({spec.expect}), {owner} saw {seen.seen}" + \
            (f" (the sender used {sent_from}: translated on the path)" if seen.seen != sent_from else "")
    return CheckResult("source", ok, detail, fields)


def what(f: dict[str, Any]) -> str:
    return f"{f.get('from')} -> {f.get('to')} udp/{f.get('port')} (expect source {f.get('expect')})"


KIND = CheckKind(SourceCheck, Pooled(run), what)
