"""Run a Plan, step by step; on failure undo, in reverse, what this run did."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from typing import IO

from .errors import ConflictError, Interrupted, KernelError
from .kernel import Kernel
from .kernel.netns import signals_deferred
from .plan import Action, Plan
from .statecheck import check_journal_entry, read_private_bytes


class Journal:
    """Write-ahead journal: each change is written (write(2), in the kernel's page cache)
    before the kernel sees it.

    After a crash it tells the next run what was in flight; the ownership labels
    and the state file let that run converge or destroy without it.

    Not fsync'd: what a write(2) put in the page cache is there for the next process
    however this one dies (SIGKILL, OOM, a crash), and what fsync adds, surviving a power
    loss or a kernel panic, is moot for a journal of kernel objects (namespaces, links,
    routes, firewall rules), none of which survive those either. Two fsyncs per action
    were a third of a 250-pod apply (14 s of 39)."""

    def __init__(self, path: str | None):
        self.path = path
        self.fh: IO[str] | None = self._open(path) if path else None

    @staticmethod
    def _open(path: str) -> IO[str]:
        """Opened without following a symlink (root writing through a link planted in the state
        directory would overwrite any file), never inherited by a child, readable by root only."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ConflictError(f"journal {path} is a symbolic link; cnetctl does not follow links in its "
                                    "state directory: remove it (nothing was changed)") from None
            raise ConflictError(f"cannot write the journal {path}: {err.strerror or err} (nothing was "
                                "changed)") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ConflictError(f"journal {path} is not a regular file: remove it (nothing was changed)")
        os.fchmod(fd, 0o600)   # a file that was there before keeps its mode through O_CREAT
        os.set_blocking(fd, True)
        return os.fdopen(fd, "w")

    def write(self, entry: dict[str, object]) -> None:
        if self.fh:
            self.fh.write(json.dumps(entry) + "\n")
            self.fh.flush()

    def close(self, remove: bool) -> None:
        if self.fh:
            self.fh.close()
            self.fh = None
            if remove and self.path:
                os.unlink(self.path)


def interrupted_run(path: str) -> str | None:
    """What an earlier run left in its journal, if it did not finish. Only a hint: a journal
    that cannot be read, or lines of the wrong shape, are passed over."""
    raw, _ = read_private_bytes(path)
    if raw is None:
        return None
    started = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            entry = check_journal_entry(json.loads(line))
        except (ValueError, RecursionError):
            continue
        if entry is not None:
            started.append(entry)
    if not started:
        return None
    step, text = started[-1]
    return f"step {step} ({text})"


def run_action(kernel: Kernel, action: Action) -> None:
    if action.op == "create":
        kernel.create(action.resource)
    elif action.op == "delete":
        kernel.delete(action.resource)
    else:
        assert action.old is not None
        kernel.update(action.old, action.resource)


Progress = Callable[[str, Action], None]   # phase ("apply" | "undo"), the action being run
# Called with the step number (1-based) and its action right before the kernel sees it, once
# the journal names it; may raise (a KernelError is rolled back like the kernel's own).
StepHook = Callable[[int, Action], None]


def execute(kernel: Kernel, plan: Plan, *, rollback: bool = True, journal: str | None = None,
            progress: Progress | None = None, before_step: StepHook | None = None,
            done: list[Action] | None = None) -> list[Action]:
    """Run every action; return the ones done. On a KernelError, Ctrl-C or SIGTERM, undo
    them and raise an error that says so.

    `done`, if given, is the list the done actions go to: a caller whose own code a signal
    may cut short right after this returns can still tell what stands."""
    done = [] if done is None else done
    log = Journal(journal if plan.actions else None)
    try:
        for i, action in enumerate(plan.actions, 1):
            # Not inside the progress output either: an exception raised from a signal handler
            # in the middle of rich's console code can leave it buffering for good (the rollback's
            # lines were lost), nor inside a journal line.
            with signals_deferred():
                if progress:
                    progress("apply", action)
                log.write({"start": i, "op": action.op, "text": action.describe(),
                           "resource": action.resource.to_json()})
            if before_step:
                before_step(i, action)
            # A signal takes effect between two actions, never inside one: each action is
            # either done (and counted, so undone) or not started.
            with signals_deferred():
                run_action(kernel, action)
                done.append(action)
                log.write({"done": i})
    except BaseException as err:
        if not rollback:
            log.close(remove=True)
            stopped = _interrupted(err, "stopped part-way; run destroy again to finish")
            if stopped is not None:
                raise stopped from err
            raise
        log.write({"rollback": len(done)})
        undo_errors = undo(kernel, done, progress)
        log.close(remove=not undo_errors)
        raise _rolled_back(err, len(done), undo_errors) from err
    with signals_deferred():   # every action stands now: a signal here must not leave the journal behind
        log.close(remove=True)
    return done


@contextlib.contextmanager
def interrupted_says(outcome: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C or SIGTERM inside the block ends the run (exit 130 or 143) with `outcome()`,
    what the run had done by then, said after it."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as err:
        stopped = _interrupted(err, outcome())
        if stopped is None:
            raise
        raise stopped from err


def changes_stand(count: int, checks_pending: bool) -> str:
    """What a run that a signal stopped outside its changes leaves: nothing, or all `count`."""
    if not count:
        return "nothing had been changed yet"
    checks = "; `cnetctl verify` runs its checks" if checks_pending else ""
    return f"the apply had finished: its {count} change(s) stand{checks}"


def _interrupted(err: BaseException, outcome: str) -> Interrupted | None:
    if isinstance(err, KeyboardInterrupt):
        return Interrupted(f"interrupted (Ctrl-C); {outcome}", 130)
    if isinstance(err, SystemExit) and err.code == 143:
        return Interrupted(f"terminated (SIGTERM); {outcome}", 143)
    return None


def _rolled_back(err: BaseException, count: int, undo_errors: list[str]) -> BaseException:
    if undo_errors:
        outcome = (f"rollback of the {count} changes made so far FAILED for {len(undo_errors)}: "
                   f"{'; '.join(undo_errors)}; run apply again to converge, or destroy")
    elif count:
        outcome = f"rolled back: the {count} change(s) this run made were undone; the previous state stands"
    else:
        outcome = changes_stand(0, checks_pending=False)
    interrupted = _interrupted(err, outcome)
    if interrupted:
        return interrupted
    if isinstance(err, KernelError):
        return type(err)(f"{err}\n{outcome}")
    return err


def undo(kernel: Kernel, done: list[Action], progress: Progress | None = None) -> list[str]:
    """Run the inverses of `done` in reverse. Ctrl-C and SIGTERM are ignored meanwhile:
    a second Ctrl-C must not leave the rollback half-way."""
    errors = []
    with _signals_ignored():
        for action in reversed(done):
            inverse = action.inverse()
            if progress:
                progress("undo", inverse)
            try:
                run_action(kernel, inverse)
            except KernelError as err:
                errors.append(str(err))
    return errors


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
