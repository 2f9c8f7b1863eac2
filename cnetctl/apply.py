"""Execute a Plan; on failure undo, in reverse, what this run did."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable

from .errors import KernelError
from .kernel import Kernel
from .plan import Action, Plan

# Test hooks (like CNI's debugPostIPAMError): fail, or SIGKILL this process, right
# before the N-th kernel operation (1-based).
FAULT_ENV = "CNETCTL_FAULT_AT"
KILL_ENV = "CNETCTL_KILL_AT"
PAUSE_ENV = "CNETCTL_PAUSE_AT"   # announce on stderr and sleep, so a test can signal mid-run


class Journal:
    """Write-ahead journal: each change is on disk (fsync'd) before the kernel sees it.

    After a crash it tells the next run what was in flight; the ownership labels
    and the state file let that run converge or destroy without it."""

    def __init__(self, path: str | None):
        self.path = path
        self.fh = open(path, "w") if path else None  # noqa: SIM115 - closed in close()

    def write(self, entry: dict[str, object]) -> None:
        if self.fh:
            self.fh.write(json.dumps(entry) + "\n")
            self.fh.flush()
            os.fsync(self.fh.fileno())

    def close(self, remove: bool) -> None:
        if self.fh:
            self.fh.close()
            self.fh = None
            if remove and self.path:
                os.unlink(self.path)


def interrupted_run(path: str) -> str | None:
    """What an earlier run left in its journal, if it did not finish."""
    try:
        with open(path) as fh:
            entries = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError):
        return None
    started = [e for e in entries if "start" in e]
    if not started:
        return None
    last = started[-1]
    return f"step {last['start']} ({last['text']})"


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


def execute(kernel: Kernel, plan: Plan, *, rollback: bool = True, journal: str | None = None,
            progress: Callable[[int, Action], None] | None = None) -> list[Action]:
    """Run every action; return the ones done. On KernelError, Ctrl-C or SIGTERM, undo them and re-raise."""
    done: list[Action] = []
    fault_at = int(os.environ.get(FAULT_ENV, "0") or 0)
    kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
    pause_at = int(os.environ.get(PAUSE_ENV, "0") or 0)
    log = Journal(journal if plan.actions else None)
    try:
        for i, action in enumerate(plan.actions, 1):
            if progress:
                progress(i, action)
            log.write({"start": i, "op": action.op, "text": action.describe(), "resource": action.resource.to_json()})
            if i == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if i == pause_at:
                sys.stderr.write(f"cnetctl: paused before step {i}\n")
                sys.stderr.flush()
                time.sleep(60)
            if i == fault_at:
                raise InjectedFault(f"{action.op} {action.resource.describe()}: injected fault ({FAULT_ENV}={i})")
            run_action(kernel, action)
            done.append(action)
            log.write({"done": i})
    except BaseException as err:
        if rollback and done:
            log.write({"rollback": len(done)})
            undo_errors = undo(kernel, done)
            if undo_errors:
                log.close(remove=False)
                if isinstance(err, KernelError):
                    raise KernelError(f"{err}; rollback also failed: {'; '.join(undo_errors)}") from err
        log.close(remove=True)
        raise
    log.close(remove=True)
    return done


def undo(kernel: Kernel, done: list[Action]) -> list[str]:
    errors = []
    for action in reversed(done):
        try:
            run_action(kernel, action.inverse())
        except KernelError as err:
            errors.append(str(err))
    return errors
