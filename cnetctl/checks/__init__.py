"""The check kinds, one entry each: `KINDS[name]` is everything kind-specific about it.

Adding a kind: its spec model in model/topology.py (a CheckSpec with `kind` and `refs()`,
listed in CHECK_SPECS), one module here with its `KIND = CheckKind(…)`, listed below.
"""

from __future__ import annotations

from typing import Any

from . import mesh, ping, route, source, tcp
from .base import CheckContext, CheckKind, CheckResult, Finisher, Pooled, Probe, Serial, spec_fields

KINDS: dict[str, CheckKind[Any]] = {k.name: k for k in (ping.KIND, route.KIND, mesh.KIND, source.KIND, tcp.KIND)}

__all__ = ["KINDS", "CheckContext", "CheckKind", "CheckResult", "Finisher", "Pooled", "Probe", "Serial",
           "spec_fields"]
