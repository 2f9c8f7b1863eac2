"""Checks from the manifest, proven on the live kernel, plus the desired ⊆ current read-back.

What each kind of check does lives in cnetctl/checks/ (one module per kind, listed in KINDS);
here they are run together, and the read-back is judged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .checks import KINDS, CheckContext, CheckKind, CheckResult, Finisher, Pooled, Probe, spec_fields
from .checks.base import generic_what
from .kernel.netns import Sockets
from .kernel.probe import Prober
from .model.topology import Check
from .normalize import DesiredState
from .observe import CurrentState
from .plan import plan

__all__ = ["CheckResult", "VerifyReport", "describe", "readback", "run_checks"]

MAX_PARALLEL = 32


@dataclass
class VerifyReport:
    topology: str
    checks: list[CheckResult]
    host: str | None = None     # the machine whose slice this is (a topology that spans machines)

    @property
    def passed(self) -> int:
        return sum(1 for c in self.checks if c.ok is True)

    @property
    def failed(self) -> int:
        return sum(1 for c in self.checks if c.ok is False)

    @property
    def skipped(self) -> int:
        return sum(1 for c in self.checks if c.ok is None)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_json(self) -> dict[str, Any]:
        out = {"topology": self.topology, "passed": self.passed, "failed": self.failed,
               "checks": [c.to_json() for c in self.checks]}
        if self.host is not None:
            out.update(host=self.host, skipped=self.skipped)
        return out


def readback(desired: DesiredState, current: CurrentState) -> list[CheckResult]:
    """Every declared resource is live and as declared; each difference is one failed check."""
    drift = plan(desired.resources, current.resources)
    if drift.empty:
        return [CheckResult("readback", True, f"{len(desired.resources)} declared resources live and as declared",
                            {"resources": len(desired.resources)})]
    return [CheckResult("readback", False, f"drift: {a.describe()}", {"drift": a.to_json()})
            for a in drift.actions]


def describe(result: CheckResult, kinds: Mapping[str, CheckKind[Any]] = KINDS) -> str:
    """What a result is about, in a few words (the text report's "what" column)."""
    if result.kind == "readback":
        return "declared = live"
    kind = kinds.get(result.kind)
    return kind.what(result.fields) if kind else generic_what(result.fields)


def run_checks(desired: DesiredState, sockets: Sockets, kinds: Mapping[str, CheckKind[Any]] = KINDS
               ) -> list[CheckResult]:
    """Run the manifest's checks concurrently; results keep the manifest's order.

    Each kind says how it runs (checks/base.py): Probe kinds (pings, mesh pings) all go
    out at once through one shared Prober and cost no thread; Pooled kinds (UDP source,
    TCP) run in a small thread pool; Serial kinds (route lookups) share one netlink socket
    per namespace and run here, one after the other, while the others are in flight.
    Every socket and thread is gone when this returns.
    """
    with checks_started(desired, sockets, kinds) as results:
        return results()


@contextlib.contextmanager
def checks_started(desired: DesiredState, sockets: Sockets, kinds: Mapping[str, CheckKind[Any]] = KINDS
                   ) -> Iterator[Callable[[], list[CheckResult]]]:
    """run_checks in two halves: the checks are started on entering, the yielded function waits
    for their results (Serial kinds run then). What the caller does in between overlaps their
    waiting for replies (verify reads the kernel back meanwhile)."""
    checks = list(desired.topology.checks)
    elsewhere = [desired.placement.skipped_by(k) if desired.placement else None for k in range(len(checks))]
    workers = sum(1 for c in checks if c.kind in kinds and isinstance(kinds[c.kind].run, Pooled))
    with Prober() as prober, ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, workers))) as pool:
        context = CheckContext(desired, prober, sockets)
        finishers = [functools.partial(_skipped, check, host) if host else
                     _launch(context, pool, check, kinds.get(check.kind))
                     for check, host in zip(checks, elsewhere, strict=True)]
        yield lambda: [finish() for finish in finishers]


def _skipped(check: Check, host: str) -> CheckResult:
    """A check that starts from a node on another machine: that machine's verify runs it."""
    return CheckResult(check.kind, None, f"skipped (runs on {host})", {**spec_fields(check.spec), "skipped": host})


def _launch(context: CheckContext, pool: ThreadPoolExecutor, check: Check, kind: CheckKind[Any] | None
            ) -> Finisher:
    """Start `check` the way its kind runs; the finisher returns its result (waiting if need be)."""
    if kind is None:
        return functools.partial(CheckResult, check.kind, False, f"check kind {check.kind} is not supported yet",
                                 spec_fields(check.spec))
    run = kind.run
    if isinstance(run, Probe):
        try:
            return _guarded(check, run.start(context, check.spec))
        except Exception as err:
            return functools.partial(_could_not_run, check, err)
    job = _guarded(check, functools.partial(run.run, context, check.spec))
    if isinstance(run, Pooled):
        return pool.submit(job).result
    return job      # Serial: runs when its turn comes, in this thread


def _could_not_run(check: Check, err: BaseException) -> CheckResult:
    """A check that cannot run has failed."""
    return CheckResult(check.kind, False, f"could not run: {err}", spec_fields(check.spec))


def _guarded(check: Check, fn: Callable[[], CheckResult]) -> Finisher:
    def run() -> CheckResult:
        try:
            return fn()
        except Exception as err:
            return _could_not_run(check, err)
    return run
