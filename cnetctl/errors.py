"""One exception hierarchy; each class carries the exit code of docs/SPEC.md §4."""

from __future__ import annotations

from dataclasses import dataclass


class CnetctlError(Exception):
    exit_code = 1


class VerificationFailed(CnetctlError):
    """Checks failed or drift was found: read the report for expected vs actual."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located by YAML path (and line when known)."""

    path: str
    message: str
    line: int | None = None

    def render(self, file: str) -> str:
        """FILE:LINE: path: message, always one line (characters that would break it are escaped)."""
        where = f"{file}:{self.line}" if self.line else file
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TopologyError(CnetctlError):
    """The manifest (or a command-line argument) is invalid: fix the input; nothing was touched."""

    exit_code = 2

    def __init__(self, file: str, problems: list[Problem]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))


class UsageError(CnetctlError):
    """A command was used wrongly (unknown topology, node, option): nothing was touched."""

    exit_code = 2


class ConflictError(CnetctlError):
    """Something the topology needs exists but is not ours: rename, or remove it by hand."""

    exit_code = 2


class KernelError(CnetctlError):
    """A kernel operation failed; what this run changed has been rolled back."""

    exit_code = 3


class Interrupted(CnetctlError):
    """Ctrl-C (130) or SIGTERM (143) stopped the run; the message says what was undone."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class NotPermitted(CnetctlError):
    """Not root / no CAP_NET_ADMIN: run with sudo."""

    exit_code = 4


class LockedError(CnetctlError):
    """Another cnetctl holds this topology's lock: wait for it, or raise --lock-timeout."""

    exit_code = 5
