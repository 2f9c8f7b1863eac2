"""`cnetctl try FILE`: apply, verify and destroy a manifest inside a throw-away world.

The world is the one the pytest plugin uses (kernel/world.py: network, mount and PID
namespaces held by one PID 1); a forked child enters it and does each step there, and hands
its result back. A topology with `hosts:` gets one world per machine, joined by an underlay
that carries each machine's address (kernel/world.machines): every slice is applied first,
then each machine verifies its own checks (they cross machines), then every slice is
destroyed. The worlds vanish with everything in them when `try` ends, however it ends; the
machine's network is never touched. The manifest is validated here first, so bad input
exits 2 before any of it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import api
from .errors import CnetctlError, KernelError, TopologyError
from .plan import Plan

if TYPE_CHECKING:
    from .kernel.world import World
    from .render import ActionProgress


@dataclass
class TryOutcome:
    topology: str
    host: str | None = None    # the machine, for a topology with hosts:
    applied: api.ApplyResult | None = None
    destroyed: Plan | None = None
    errors: list[str] = field(default_factory=list)
    code: int = 0

    @property
    def ok(self) -> bool:
        return self.code == 0


INTERRUPTED = (130, 143)   # Ctrl-C, SIGTERM


def _message(err: CnetctlError) -> str:
    return str(err) if isinstance(err, TopologyError) else f"cnetctl: {err}"


class _Stopped(Exception):
    """A step ended without a result (Ctrl-C, SIGTERM): its exit code is try's."""

    def __init__(self, code: int) -> None:
        self.code = code


def _step(world: World, outcome: TryOutcome, fn: Callable[[], Any],
          progress: ActionProgress | None = None) -> Any:
    """fn() inside `world`; a CnetctlError becomes the outcome's error and exit code (the
    first one wins), and None is returned."""
    def body() -> tuple[str, Any]:
        try:
            return "ok", fn()
        except CnetctlError as err:
            return "error", (err.exit_code, _message(err))
        finally:
            if progress is not None:
                progress.close()   # the bar lives in the child: stop it there

    code, result = world.returning(body)
    if result is None:
        raise _Stopped(code)
    kind, value = result
    if kind == "ok":
        return value
    outcome.errors.append(value[1])
    outcome.code = outcome.code or value[0]
    return None


def try_manifest(file: str, show: Callable[[list[TryOutcome]], None], *, nat_backend: str | None = None,
                 progress: ActionProgress | None = None,
                 on_plan: Callable[[str, Plan, list[str], str | None], None] | None = None,
                 destroy_progress: api.Progress | None = None) -> int:
    """The exit code: verify's (0 all checks passed, 1 not), or the code of the first error
    that stopped an apply or a destroy. `show` renders the outcomes (one per machine)."""
    from .hosts import host_addresses
    from .kernel.world import WorldError, worlds_for

    desired = api.validate(file, nat_backend)
    api.require_root()
    addresses = host_addresses(desired.topology)
    try:
        with worlds_for(addresses) as worlds:
            outcomes = [TryOutcome(desired.name, host) for host in worlds]
            try:
                _run(file, desired.name, worlds, outcomes, nat_backend, progress, on_plan, destroy_progress)
            except _Stopped as stop:
                return stop.code
    except WorldError as err:
        raise KernelError(f"cannot make the throw-away world: {err}") from None
    show(outcomes)
    return next((o.code for o in outcomes if o.code), 0)


def _run(file: str, name: str, worlds: dict[str | None, World], outcomes: list[TryOutcome],
         nat_backend: str | None, progress: ActionProgress | None,
         on_plan: Callable[[str, Plan, list[str], str | None], None] | None,
         destroy_progress: api.Progress | None) -> None:
    """Apply every slice, then verify each (a check may need the other machines' slices),
    then destroy every slice that was applied; a machine whose apply failed is not verified.
    Ctrl-C or SIGTERM during an apply (rolled back there) skips what was still to apply and
    every verify."""
    together = len(worlds) == 1
    steps: list[tuple[tuple[str | None, World], TryOutcome]] = []
    for (host, world), outcome in zip(worlds.items(), outcomes, strict=True):
        if any(o.code in INTERRUPTED for o in outcomes):
            break
        steps.append(((host, world), outcome))
        announce = _for_host(on_plan, host) if on_plan else None
        outcome.applied = _step(world, outcome, functools.partial(
            api.apply, file, world.state_dir, verify=together, progress=progress, on_plan=announce,
            nat_backend=nat_backend, host=host), progress)
    if not together and not any(o.code in INTERRUPTED for o in outcomes):
        for (host, world), outcome in steps:
            if outcome.applied is not None:
                outcome.applied.report = _step(world, outcome, functools.partial(
                    api.verify, file, world.state_dir, nat_backend, host=host))
    for (host, world), outcome in reversed(steps):
        outcome.destroyed = _step(world, outcome, functools.partial(
            api.destroy, name, world.state_dir, progress=destroy_progress, host=host))
    for outcome in outcomes:
        report = outcome.applied.report if outcome.applied else None
        if not outcome.code and report is not None and not report.ok:
            outcome.code = 1


def _for_host(on_plan: Callable[[str, Plan, list[str], str | None], None], host: str | None
              ) -> Callable[[str, Plan, list[str]], None]:
    def announce(name: str, plan: Plan, warnings: list[str]) -> None:
        on_plan(name, plan, warnings, host)
    return announce


def outcome_json(outcome: TryOutcome) -> dict[str, Any]:
    from .render import plan_json
    applied = outcome.applied
    return {"topology": outcome.topology, "ok": outcome.ok, "exit_code": outcome.code,
            "plan": plan_json(applied.plan, outcome.topology) if applied else None,
            "warnings": applied.warnings if applied else [],
            "verify": applied.report.to_json() if applied and applied.report else None,
            "destroyed": plan_json(outcome.destroyed, outcome.topology) if outcome.destroyed else None,
            "errors": outcome.errors}


def outcomes_json(outcomes: list[TryOutcome]) -> dict[str, Any]:
    """One machine: its outcome_json. Several: the topology's verdict and each machine's."""
    if len(outcomes) == 1 and outcomes[0].host is None:
        return outcome_json(outcomes[0])
    code = next((o.code for o in outcomes if o.code), 0)
    return {"topology": outcomes[0].topology, "ok": code == 0, "exit_code": code,
            "hosts": {o.host: outcome_json(o) for o in outcomes}}
