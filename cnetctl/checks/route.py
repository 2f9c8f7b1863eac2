"""`route`: the kernel's own route lookup (`ip route get`) in a node, against what is expected."""

from __future__ import annotations

from typing import Any

from ..kernel.routes import RouteAnswer, route_get
from ..model.topology import RouteCheck
from ..normalize import DesiredState, resolve_table
from .base import CheckContext, CheckKind, CheckResult, Serial, spec_fields


def run(ctx: CheckContext, spec: RouteCheck) -> CheckResult:
    desired = ctx.desired
    fields = spec_fields(spec)
    fwmark = spec.fwmark.value if spec.fwmark is not None else None   # parsed once, in the model
    answer = route_get(ctx.sockets.nl(desired.ns_of(spec.node)), spec.to, src=spec.from_, iif=spec.iif,
                       fwmark=fwmark)
    fields["actual"] = answer.to_json()
    return judge(spec, expected(desired, spec), answer, fields)


def expected(desired: DesiredState, spec: RouteCheck) -> dict[str, Any]:
    """What the check expects, in the kernel's terms (table numbers, kernel interface names)."""
    want: dict[str, Any] = spec.expect.model_dump(exclude_none=True)
    if "table" in want:
        want["table"] = resolve_table(desired.topology, want["table"])
    if "dev" in want:
        # A bridge-plugged link end lives in the kernel under its generated name.
        want["dev"] = desired.interfaces.get((spec.node, want["dev"]), want["dev"])
    return want


def judge(spec: RouteCheck, want: dict[str, Any], answer: RouteAnswer, fields: dict[str, Any]) -> CheckResult:
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


def what(f: dict[str, Any]) -> str:
    return f"{f.get('node')}: to {f.get('to')}" + (f" from {f['from']}" if f.get("from") else "")


KIND = CheckKind(RouteCheck, Serial(run), what)
