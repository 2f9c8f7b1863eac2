"""Execute a Plan; on failure undo, in reverse, what this run did."""

from __future__ import annotations

import os
from collections.abc import Callable

from .errors import KernelError
from .kernel import Kernel
from .plan import Action, Plan

FAULT_ENV = "CNETCTL_FAULT_AT"  # tests only: fail the N-th kernel operation (1-based)


class InjectedFault(KernelError):
    pass


def run_action(kernel: Kernel, action: Action) -> None:
    if action.op == "create":
        kernel.create(action.resource)
    elif action.op == "delete":
        kernel.delete(action.resource)
    else:
        assert action.old is not None
        kernel.update(action.old, action.resource)


def execute(kernel: Kernel, plan: Plan, *, rollback: bool = True,
            progress: Callable[[int, Action], None] | None = None) -> list[Action]:
    """Run every action; return the ones done. On KernelError (or Ctrl-C), undo them and re-raise."""
    done: list[Action] = []
    fault_at = int(os.environ.get(FAULT_ENV, "0") or 0)
    try:
        for i, action in enumerate(plan.actions, 1):
            if progress:
                progress(i, action)
            if i == fault_at:
                raise InjectedFault(f"{action.op} {action.resource.describe()}: injected fault ({FAULT_ENV}={i})")
            run_action(kernel, action)
            done.append(action)
    except BaseException as err:
        if rollback and done:
            undo_errors = undo(kernel, done)
            if undo_errors and isinstance(err, KernelError):
                raise KernelError(f"{err}; rollback also failed: {'; '.join(undo_errors)}") from err
        raise
    return done


def undo(kernel: Kernel, done: list[Action]) -> list[str]:
    errors = []
    for action in reversed(done):
        try:
            run_action(kernel, action.inverse())
        except KernelError as err:
            errors.append(str(err))
    return errors
