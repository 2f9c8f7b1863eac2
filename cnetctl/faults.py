"""Fault injection for the safety tests (like CNI's debugPostIPAMError), kept out of the
plan runner: the CLI installs it as the runner's per-step hook only when one of the
variables below is set.

    CNETCTL_FAULT_AT=N   fail the N-th kernel operation (1-based), as the kernel would
    CNETCTL_KILL_AT=N    SIGKILL this process right before it
    CNETCTL_PAUSE_AT=N   announce it on stderr and sleep, so a test can signal mid-run
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping

from .errors import KernelError
from .plan import Action
from .runner import StepHook

FAULT_ENV = "CNETCTL_FAULT_AT"
KILL_ENV = "CNETCTL_KILL_AT"
PAUSE_ENV = "CNETCTL_PAUSE_AT"


class InjectedFault(KernelError):
    pass


def _step(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env.get(name, "0") or 0)
    except ValueError:
        return 0


def hook_from_env(env: Mapping[str, str] = os.environ) -> StepHook | None:
    """The fault-injection hook the variables ask for, or None when none is set."""
    if not any(name in env for name in (FAULT_ENV, KILL_ENV, PAUSE_ENV)):
        return None
    kill_at, pause_at, fault_at = _step(env, KILL_ENV), _step(env, PAUSE_ENV), _step(env, FAULT_ENV)

    def before_step(i: int, action: Action) -> None:
        if i == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if i == pause_at:
            sys.stderr.write(f"cnetctl: paused before step {i}\n")
            sys.stderr.flush()
            time.sleep(60)
        if i == fault_at:
            raise InjectedFault(f"{action.op} {action.resource.describe()}: injected fault ({FAULT_ENV}={i})")
    return before_step
