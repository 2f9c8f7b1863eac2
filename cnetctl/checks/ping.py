"""`ping`: ICMP echo requests from a node to an address; reachable or not, as expected."""

from __future__ import annotations

from typing import Any

from ..kernel.probe import PingHandle
from ..model.topology import PingCheck
from .base import CheckContext, CheckKind, CheckResult, Finisher, Probe, aimed_fields


def replies(handle: PingHandle) -> tuple[list[float], str | None]:
    """The RTTs of the echoes answered, and the first error (an ICMP error, a failed send)."""
    rtts = handle.result()
    errors = handle.errors
    return [r for r in rtts if r is not None], (errors[0] if errors else None)


def start(ctx: CheckContext, spec: PingCheck) -> Finisher:
    """Send the echoes now; the returned function collects the replies and judges them."""
    target, fields = aimed_fields(ctx, spec)
    handle = ctx.prober.submit(ctx.desired.ns_of(spec.from_), target, count=spec.count, timeout=spec.timeout)
    return lambda: judge(spec, target, fields, *replies(handle))


def judge(spec: PingCheck, target: str, fields: dict[str, Any], rtts: list[float], error: str | None
          ) -> CheckResult:
    fields["replies"] = len(rtts)
    reached = bool(rtts)
    fields["actual"] = "reachable" if reached else "unreachable"
    if reached:
        detail = f"{len(rtts)}/{spec.count} replies from {target}, rtt {min(rtts) * 1000:.3f} ms"
    else:
        detail = f"no reply from {target}: {error}" if error else \
            f"no reply from {target} within {spec.timeout:g} s"
        if error:
            fields["error"] = error
    want = spec.expect == "reachable"
    if reached != want:
        detail = f"expected {spec.expect}, got {fields['actual']}: {detail}"
    return CheckResult("ping", reached == want, detail, fields)


def what(f: dict[str, Any]) -> str:
    return f"{f.get('from')} -> {f.get('to')}" + (f" (expect {f['expect']})" if f.get("expect") != "reachable"
                                                    else "")


KIND = CheckKind(PingCheck, Probe(start), what)
