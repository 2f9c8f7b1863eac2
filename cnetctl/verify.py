"""Checks from the manifest, proven on the live kernel, plus the desired ⊆ current read-back."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .kernel.netns import Sockets
from .kernel.probe import ping
from .kernel.routes import route_get
from .model.topology import Check
from .normalize import DesiredState, resolve_table, resolve_target
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


def run_ping(desired: DesiredState, check: Check) -> CheckResult:
    spec = check.spec
    fields = _check_fields(check)
    target = resolve_target(desired, spec.to)
    assert target is not None  # normalize() refused unresolvable targets
    fields["address"] = target
    rtts = ping(desired.ns_of(spec.from_), target, count=spec.count, timeout=spec.timeout)
    replies = [r for r in rtts if r is not None]
    fields["replies"] = len(replies)
    reached = bool(replies)
    if reached:
        detail = f"{len(replies)}/{len(rtts)} replies from {target}, rtt {min(replies) * 1000:.3f} ms"
    else:
        detail = f"no reply from {target} within {spec.timeout:g} s"
    want = spec.expect == "reachable"
    if reached != want:
        detail = f"expected {spec.expect}, got {'reachable' if reached else 'unreachable'}: {detail}"
    return CheckResult("ping", reached == want, detail, fields)


def run_route(desired: DesiredState, check: Check, sockets: Sockets) -> CheckResult:
    spec = check.spec
    fields = _check_fields(check)
    fwmark = int(str(spec.fwmark).split("/")[0], 16) if spec.fwmark is not None else None
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
    if wrong:
        detail = "expected " + ", ".join(f"{k} {w}, got {h}" for k, (w, h) in wrong.items())
    else:
        detail = f"kernel chose {shown}"
    return CheckResult("route", not wrong, detail, fields)


def run_checks(desired: DesiredState, sockets: Sockets, extra: dict[str, Callable[..., list[CheckResult]]] | None = None
               ) -> list[CheckResult]:
    """Run the manifest's checks concurrently; results keep the manifest's order."""
    def one(check: Check) -> list[CheckResult]:
        try:
            if check.kind == "ping":
                return [run_ping(desired, check)]
            if check.kind == "route":
                return [run_route(desired, check, sockets)]
            if extra and check.kind in extra:
                return extra[check.kind](desired, check, sockets)
            return [CheckResult(check.kind, False, f"check kind {check.kind} is not supported yet",
                                _check_fields(check))]
        except Exception as err:  # a check that cannot run has failed; say why
            return [CheckResult(check.kind, False, f"could not run: {err}", _check_fields(check))]

    checks = list(desired.topology.checks)
    # Route lookups share one netlink socket per namespace: run them here, serially.
    serial = [c.kind == "route" for c in checks]
    results: list[list[CheckResult] | None] = [None] * len(checks)
    with ThreadPoolExecutor(max_workers=MAX_PARALLEL) as pool:
        futures = {i: pool.submit(one, c) for i, c in enumerate(checks) if not serial[i]}
        for i, c in enumerate(checks):
            if serial[i]:
                results[i] = one(c)
        for i, fut in futures.items():
            results[i] = fut.result()
    return [r for rs in results if rs for r in rs]
