"""What a check kind is made of, and what it hands back.

A kind is one `CheckKind` entry (cnetctl/checks/__init__.py lists them): its spec
model (model/topology.py, which also names what normalize resolves), how it runs,
and how the text report describes it. `verify.run_checks` runs them all at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..model.topology import CheckSpec

if TYPE_CHECKING:
    from ..kernel.netns import Sockets
    from ..kernel.probe import Prober
    from ..normalize import DesiredState

S = TypeVar("S", bound=CheckSpec)


@dataclass
class CheckResult:
    kind: str
    ok: bool | None     # None: not run here (skipped: it runs on another machine)
    detail: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ok": self.ok, "detail": self.detail, **self.fields}


Finisher = Callable[[], CheckResult]


@dataclass(frozen=True)
class CheckContext:
    """What a running check may use; all of it is run_checks', closed when it returns."""

    desired: DesiredState
    prober: Prober      # shared raw ICMP sockets: submit() now, wait in the finisher
    sockets: Sockets    # one netlink socket per namespace: not thread-safe, for Serial kinds only


@dataclass(frozen=True)
class Probe(Generic[S]):
    """Sends at once through the shared Prober (no thread of its own); the finisher it returns
    waits for the replies and judges them."""

    start: Callable[[CheckContext, S], Finisher]


@dataclass(frozen=True)
class Pooled(Generic[S]):
    """Blocks on sockets of its own (kernel/transport.py): runs in run_checks' thread pool."""

    run: Callable[[CheckContext, S], CheckResult]


@dataclass(frozen=True)
class Serial(Generic[S]):
    """Asks the kernel through context.sockets: runs in run_checks' own thread, one after the
    other, while the probes and pooled checks are in flight."""

    run: Callable[[CheckContext, S], CheckResult]


@dataclass(frozen=True)
class CheckKind(Generic[S]):
    """Everything kind-specific about one kind of check."""

    spec: type[S]                             # the `{KIND: …}` model; spec.kind is the key
    run: Probe[S] | Pooled[S] | Serial[S]
    what: Callable[[dict[str, Any]], str]     # the report's "what" column, from the result's fields

    @property
    def name(self) -> str:
        return self.spec.kind


def spec_fields(spec: CheckSpec) -> dict[str, Any]:
    """The check as written (defaults filled in): every result of it starts with these fields."""
    return spec.model_dump(by_alias=True, exclude_none=True, mode="json")


def aimed_fields(ctx: CheckContext, spec: Any) -> tuple[str, dict[str, Any]]:
    """The address a check's `to` names (normalize refused what does not resolve), and the
    check's fields with that address in them."""
    from ..normalize import resolve_target

    target = resolve_target(ctx.desired, spec.to)
    assert target is not None
    return target, {**spec_fields(spec), "address": target}


def generic_what(f: dict[str, Any]) -> str:
    """from=…, to=…, port=…: for a kind without words of its own."""
    return ", ".join(f"{k}={v}" for k, v in f.items() if k in ("from", "to", "nodes", "family", "port"))
