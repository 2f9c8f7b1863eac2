"""`cnetctl try FILE`: apply, verify and destroy a manifest inside a throw-away world.

The world is the one the pytest plugin uses (kernel/world.py: network, mount and PID
namespaces held by one PID 1); a forked child enters it and does the work there. The world
vanishes with everything in it when `try` ends, however it ends; the machine's network is
never touched. The manifest is validated here first, so bad input exits 2 before any of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import api
from .errors import CnetctlError, KernelError, TopologyError
from .plan import Plan


@dataclass
class TryOutcome:
    topology: str
    applied: api.ApplyResult | None = None
    destroyed: Plan | None = None
    errors: list[str] = field(default_factory=list)
    code: int = 0

    @property
    def ok(self) -> bool:
        return self.code == 0


def _message(err: CnetctlError) -> str:
    return str(err) if isinstance(err, TopologyError) else f"cnetctl: {err}"


def try_manifest(file: str, show: Callable[[TryOutcome], None], *, nat_backend: str | None = None,
                 progress: api.Progress | None = None, on_plan: Callable[[str, Plan, list[str]], None] | None = None,
                 destroy_progress: api.Progress | None = None) -> int:
    """The exit code: verify's (0 all checks passed, 1 not), or the code of the error that
    stopped apply or destroy. `show` renders the outcome inside the world, before it goes."""
    from .kernel.world import WorldError, run_in_world

    desired = api.validate(file, nat_backend)
    api.require_root()

    def body(state_dir: str) -> int:
        outcome = TryOutcome(desired.name)
        try:
            outcome.applied = api.apply(file, state_dir, verify=True, progress=progress, on_plan=on_plan,
                                        nat_backend=nat_backend)
        except CnetctlError as err:
            outcome.errors.append(_message(err))
            outcome.code = err.exit_code
        try:
            outcome.destroyed = api.destroy(desired.name, state_dir, progress=destroy_progress)
        except CnetctlError as err:
            outcome.errors.append(_message(err))
            outcome.code = outcome.code or err.exit_code
        report = outcome.applied.report if outcome.applied else None
        if not outcome.code and report is not None and not report.ok:
            outcome.code = 1
        show(outcome)
        return outcome.code

    try:
        return run_in_world(body)
    except WorldError as err:
        raise KernelError(f"cannot make the throw-away world: {err}") from None


def outcome_json(outcome: TryOutcome) -> dict[str, Any]:
    from .render import plan_json
    applied = outcome.applied
    return {"topology": outcome.topology, "ok": outcome.ok, "exit_code": outcome.code,
            "plan": plan_json(applied.plan, outcome.topology) if applied else None,
            "warnings": applied.warnings if applied else [],
            "verify": applied.report.to_json() if applied and applied.report else None,
            "destroyed": plan_json(outcome.destroyed, outcome.topology) if outcome.destroyed else None,
            "errors": outcome.errors}
