"""A NAT rule in canonical form, shared by normalize (desired) and both backends (current).

Its text is also the comment every rule carries in the kernel, so reading the
comments back tells which rules are live.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NatSpec:
    kind: str                       # masquerade | snat | dnat
    source: str | None = None
    out_interface: str | None = None
    to_source: str | None = None
    destination: str | None = None
    in_interface: str | None = None
    protocol: str | None = None
    port: int | None = None
    to: str | None = None

    FIELDS = ("source", "out_interface", "to_source", "destination", "in_interface", "protocol", "port", "to")

    def text(self) -> str:
        parts = [self.kind] + [f"{f}={getattr(self, f)}" for f in self.FIELDS if getattr(self, f) is not None]
        return " ".join(parts)

    @classmethod
    def parse(cls, text: str) -> NatSpec:
        kind, *pairs = text.split()
        values: dict[str, Any] = dict(p.split("=", 1) for p in pairs)
        if "port" in values:
            values["port"] = int(values["port"])
        return cls(kind, **values)

    @property
    def family(self) -> int:
        for addr in (self.source, self.to_source, self.destination, self.to_addr):
            if addr:
                return ipaddress.ip_network(addr, strict=False).version
        return 4

    @property
    def to_addr(self) -> str | None:
        if not self.to:
            return None
        if self.to.startswith("["):
            return self.to[1:].split("]")[0]
        return self.to.rsplit(":", 1)[0] if self.to.count(":") == 1 else self.to

    @property
    def to_port(self) -> int | None:
        if not self.to:
            return None
        if self.to.startswith("[") and "]:" in self.to:
            return int(self.to.rsplit(":", 1)[1])
        return int(self.to.rsplit(":", 1)[1]) if self.to.count(":") == 1 else None

    @property
    def hooks(self) -> tuple[str, ...]:
        # DNAT in PREROUTING for traffic that arrives, OUTPUT for the node's own.
        return ("PRE", "OUT") if self.kind == "dnat" else ("POST",)


def comment_for(label: str, spec: NatSpec) -> str:
    return f"{label} {spec.text()}"


def spec_from_comment(label: str, comment: str | None) -> NatSpec | None:
    if not comment or not comment.startswith(label + " "):
        return None
    try:
        return NatSpec.parse(comment[len(label) + 1:])
    except (ValueError, TypeError):
        return None


HOOK_ORDER = {"PRE": 0, "OUT": 1, "POST": 2}


def canonical_order(specs: list[NatSpec]) -> tuple[NatSpec, ...]:
    """Rules grouped by hook and family, manifest order kept inside each group.

    Only the order inside one chain of one family is meaningful to the kernel, and
    that is the order both backends read back."""
    return tuple(sorted(specs, key=lambda s: (HOOK_ORDER[s.hooks[0]], s.family)))


