"""Where a manifest came from, and the line of every YAML path in it.

Shared by the YAML loader (which records the lines) and normalize (which reports
problems at them): neither owns it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import Problem, TopologyError

PathPart = str | int
YamlPath = tuple[PathPart, ...]

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")   # fullmatch: `$` would let "eth0\n" pass


def format_path(path: YamlPath) -> str:
    """('nodes', 'ns1', 'routes', 1, 'via') -> nodes.ns1.routes[1].via.

    A key that is not a plain word (a sysctl's dots, a space, an empty key …) is
    quoted, nodes.ns1.sysctls["net.ipv4.ip_forward"], so the path stays unambiguous."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


@dataclass
class Source:
    """Where a manifest came from and the line of every YAML node in it."""

    file: str
    lines: dict[YamlPath, int] = field(default_factory=dict)
    data: Any = None

    def line_of(self, path: YamlPath) -> int | None:
        # The deepest prefix that exists: a missing key is reported on its parent.
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None

    def problem(self, path: YamlPath, message: str) -> Problem:
        return Problem(format_path(path), message, self.line_of(path))

    def fail(self, problems: list[Problem]) -> TopologyError:
        return TopologyError(self.file, sorted(problems, key=lambda p: (p.line or 0, p.path)))
