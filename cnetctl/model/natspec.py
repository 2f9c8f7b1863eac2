"""A NAT rule in canonical form, shared by normalize (desired) and both backends (current).

Its text is also the comment every rule carries in the kernel, so reading the
comments back tells which rules are live. What the read-back cannot explain (a
rule without our comment, a rule that lacks part of what its comment promises)
becomes an `unknown note=WHY` record: never equal to a declared rule, so it shows
as drift and the next apply rewrites the table or chains.

The text format is a contract with the kernel's past: rules written by earlier
versions are read back through `NatSpec.parse`, so `text()` must keep writing
exactly what they wrote (tests/unit/test_nat_rules.py pins it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

DNAT_TARGET_HELP = "expected IP or IP:PORT, e.g. 10.0.0.2, 10.0.0.2:8080 or [fd00::2]:8080"


@dataclass(frozen=True)
class DnatTarget:
    """Where a DNAT sends connections: an address and, optionally, a port.

    Parsed once from its text (the manifest's `to`, a rule comment's `to=`); its
    text is the canonical one both the comments and iptables' --to-destination use:
    `10.0.0.2`, `10.0.0.2:80`, `fd00::2`, `[fd00::2]:8080`."""

    addr: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> DnatTarget:
        """ValueError, worded for the manifest's author, for anything but IP, IP:PORT or [IP]:PORT.

        An IPv6 address with a port needs brackets: `fd00::2:80` is the address fd00::2:80."""
        bracketed = text.startswith("[")
        host, sep, port = text.rpartition(":") if bracketed or text.count(":") == 1 else ("", "", "")
        try:
            addr = ipaddress.ip_address(host.strip("[]") if sep else text)
        except ValueError:
            raise ValueError(f"invalid dnat target {text!r}: {DNAT_TARGET_HELP}") from None
        if sep and (not port.isdigit() or not 1 <= int(port) <= 65535):
            raise ValueError(f"invalid port in {text!r}: 1..65535")
        return cls(str(addr), int(port) if sep else None)

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.addr).version

    def text(self) -> str:
        if self.port is None:
            return self.addr
        return f"[{self.addr}]:{self.port}" if self.family == 6 else f"{self.addr}:{self.port}"

    def __str__(self) -> str:
        return self.text()


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
    to_addr: str | None = None      # dnat: where to (its text is `to=`, see DnatTarget)
    to_port: int | None = None      # dnat: None keeps the destination port
    note: str | None = None         # kind "unknown" only: why the live rule is not one of ours (no spaces)

    # The fields of the text, in its order; `to` stands for to_addr and to_port together.
    FIELDS = ("source", "out_interface", "to_source", "destination", "in_interface", "protocol", "port", "to",
              "note")

    @property
    def to(self) -> DnatTarget | None:
        return DnatTarget(self.to_addr, self.to_port) if self.to_addr is not None else None

    def text(self) -> str:
        values = {f: getattr(self, f) for f in self.FIELDS}
        return " ".join([self.kind] + [f"{f}={v}" for f, v in values.items() if v is not None])

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
        if "to" in values:
            target = DnatTarget.parse(values.pop("to"))
            values.update(to_addr=target.addr, to_port=target.port)
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


