"""`tcp`: a TCP connection from a node to `to:port` must arrive at a one-shot listener in
`serve` (proves a DNAT end to end: the connection lands where the rule says)."""

from __future__ import annotations

from typing import Any

from ..kernel.transport import TcpOutcome, tcp_probe
from ..model.topology import TcpCheck
from .base import CheckContext, CheckKind, CheckResult, Pooled, aimed_fields, generic_what


def run(ctx: CheckContext, spec: TcpCheck) -> CheckResult:
    desired = ctx.desired
    target, fields = aimed_fields(ctx, spec)
    seen = tcp_probe(desired.ns_of(spec.serve.node), spec.serve.port, desired.ns_of(spec.from_), target, spec.port,
                     spec.timeout)
    return judge(spec, target, seen, fields)


def judge(spec: TcpCheck, target: str, seen: TcpOutcome, fields: dict[str, Any]) -> CheckResult:
    where = f"{spec.serve.node}:{spec.serve.port}"
    if seen.listen_error:
        return CheckResult("tcp", False, f"cannot listen on {where}: {seen.listen_error}", fields)
    fields["connected"] = seen.connected
    if not seen.connected:
        return CheckResult("tcp", False, f"{spec.from_} could not connect to {target}:{spec.port}: "
                           f"{seen.connect_error}", fields)
    fields["client"] = seen.client
    if seen.seen is None:
        return CheckResult("tcp", False, f"connected to {target}:{spec.port}, but not to the listener on "
                           f"{where}: something else answered", fields)
    fields["seen"] = seen.seen
    return CheckResult("tcp", True, f"{spec.from_} -> {target}:{spec.port} arrived at {where} "
                       f"from {seen.seen}", fields)


KIND = CheckKind(TcpCheck, Pooled(run), generic_what)
