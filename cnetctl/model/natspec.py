"""A NAT rule in canonical form, shared by normalize (desired) and both backends (current).

Its text is also the comment every rule carries in the kernel, so reading the
comments back tells which rules are live. What the read-back cannot explain (a
rule without our comment, a rule that lacks part of what its comment promises)
becomes an `unknown note=WHY` record: never equal to a declared rule, so it shows
as drift and the next apply rewrites the table or chains.
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
    note: str | None = None         # kind "unknown" only: why the live rule is not one of ours (no spaces)

    FIELDS = ("source", "out_interface", "to_source", "destination", "in_interface", "protocol", "port", "to",
              "note")

    def text(self) -> str:
        parts = [self.kind] + [f"{f}={getattr(self, f)}" for f in self.FIELDS if getattr(self, f) is not None]
        return " ".join(parts)

    @classmethod
    def parse(cls, text: str) -> NatSpec:
        """The record of `text()`; ValueError for anything else."""
        kind, *pairs = text.split()
        if any("=" not in p for p in pairs):
            raise ValueError(f"not a NAT rule text: {text!r}")
        values: dict[str, Any] = dict(p.split("=", 1) for p in pairs)
        if set(values) - set(cls.FIELDS):
            raise ValueError(f"not a NAT rule text: {text!r}")
        if "port" in values:
            values["port"] = int(values["port"])
        return cls(kind, **values)

    @classmethod
    def unknown(cls, why: str) -> NatSpec:
        return cls("unknown", note="-".join(why.split()))

    @property
    def family(self) -> int:
        if self.kind == "unknown":
            return 4
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

    @property
    def output_local_only(self) -> bool:
        """The OUTPUT copy of a DNAT without `destination` matches local destinations only.

        Like Docker's `--dst-type LOCAL`: a published port is a port of this node, and
        the node's own connections to other machines on that port must go where they
        were sent."""
        return self.kind == "dnat" and not self.destination


def comment_for(label: str, spec: NatSpec) -> str:
    return f"{label} {spec.text()}"


def spec_from_comment(label: str, comment: str | None) -> NatSpec | None:
    if not comment or not comment.startswith(label + " "):
        return None
    try:
        spec = NatSpec.parse(comment[len(label) + 1:])
    except (ValueError, TypeError):
        return None
    return spec if spec.kind in ("masquerade", "snat", "dnat") else None


HOOK_ORDER = {"PRE": 0, "OUT": 1, "POST": 2}


def canonical_order(specs: list[NatSpec]) -> tuple[NatSpec, ...]:
    """Rules grouped by hook and family, manifest order kept inside each group.

    Only the order inside one chain of one family is meaningful to the kernel, and
    that is the order both backends read back."""
    return tuple(sorted(specs, key=lambda s: (HOOK_ORDER[s.hooks[0]], s.family)))


