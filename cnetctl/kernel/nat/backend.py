"""The contract every NAT backend keeps, whatever firewall it writes to.

A backend owns, per topology and namespace, a set of firewall objects that hold
exactly the topology's NAT rules, each rule commented with its canonical text
(`cnetctl:<name> <NatSpec.text()>`); the rules themselves come from the pure
functions of cnetctl/nat_rules.py.

Ownership is proven by a marker inside the object, never inferred from its name
(a user may well own a table or chain called like ours). Each backend has its own
marker (see its module) and the same three answers: ours ("mine"), ours from
before the marker ("unmarked": adopted, and marked by the next write), someone
else's ("foreign"). A foreign object is reported by `read` (plan/apply refuse,
destroy skips it), refused by `apply` and left alone by `delete`, whatever the
caller asked.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from ...errors import KernelError
from ...model.natspec import NatSpec

# Who owns a table or chain named like ours; None: there is none.
Owner = Literal["mine", "unmarked", "foreign"] | None


class MissingLibrary(KernelError):
    """A NAT backend's library cannot be loaded (found before any change by require_backend)."""


class NatBackend(Protocol):
    """One firewall NAT can be written to (the registry: BACKENDS in kernel/nat/__init__.py)."""

    name: str   # as settings.nat_backend and --nat-backend spell it

    def load(self) -> None:
        """Load the backend's library; MissingLibrary saying what to install."""

    def available(self) -> bool:
        """Whether load() succeeds (cached: asked often, answered once)."""

    def apply(self, ns: str | None, topology: str, label: str, specs: list[NatSpec]) -> None:
        """Make our objects in `ns` hold exactly `specs`, marked as ours; KernelError, touching
        nothing, when a same-named object is someone else's."""

    def delete(self, ns: str | None, topology: str, label: str) -> None:
        """Remove our objects from `ns`; missing or foreign ones are left alone."""

    def read(self, ns: str | None, topology: str, label: str, nft_items: list[dict[str, Any]],
             foreign: list[str]) -> list[NatSpec] | None:
        """Our rules in `ns` as read back (None: no object of ours there); what the read-back cannot
        explain is a NatSpec.unknown record; same-named objects of someone else go to `foreign`.

        nft_items: `nft -j list ruleset` of `ns`, listed once by the caller (empty without libnftables)."""


def place(ns: str | None) -> str:
    return f"netns {ns}" if ns else "host"
