"""A fast reader for the plain YAML most manifests are, on libyaml's C parser (PyYAML).

ruamel's pure-Python parser needs ~10 s for a 10,000-node manifest; libyaml parses
it in ~1 s. This reader builds the same plain values and the same YAML-path -> line
map as load.py does from ruamel, from libyaml's event stream, and resolves plain
scalars with ruamel's own YAML 1.2 resolver. It gives up (returns None) on anything
it cannot vouch for: a syntax error, a duplicate key, a tag, a merge key, a
directive, a scalar that is not a plain string, null, boolean, decimal integer or
simple decimal number, an alias cycle, too deep or too many values. ruamel then
reads the file, and its answer (and error message) is the reference.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from ruamel.yaml.reader import Reader
from ruamel.yaml.resolver import VersionedResolver


def _libyaml() -> tuple[Any, Any]:
    """PyYAML and its libyaml parser; (None, None) when either is missing: ruamel then reads
    every manifest (slower, same result)."""
    try:
        return importlib.import_module("yaml"), importlib.import_module("yaml.cyaml").CParser
    except (ImportError, AttributeError):
        return None, None


_pyyaml, _CParser = _libyaml()

STANDARD = "tag:yaml.org,2002:"
# Tags a manifest may carry (explicitly, or resolved from a plain scalar): the core
# schema, plus what ruamel resolves implicitly (dates, '<<' merge keys, '=').
ALLOWED_TAGS = frozenset(STANDARD + t for t in ("str", "int", "float", "bool", "null", "map", "seq",
                                                "timestamp", "merge", "value"))
MAX_DEPTH = 100
_STR, _NULL, _BOOL, _INT, _FLOAT = (STANDARD + t for t in ("str", "null", "bool", "int", "float"))
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_SIMPLE_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]+")
# ruamel's own YAML 1.2 implicit resolvers: first character -> [(tag, regexp)], as its
# Resolver.resolve uses them (read once: resolve() looks the version up on every call).
_IMPLICIT: dict[Any, list[tuple[str, Any]]] = VersionedResolver(version=None).versioned_resolver


def _implicit_tag(value: str) -> str:
    for tag, regexp in [*_IMPLICIT.get(value[0] if value else "", ()), *_IMPLICIT.get(None, ())]:
        if regexp.match(value):
            return str(tag)
    return _STR

PathPart = str | int
Lines = dict[tuple[PathPart, ...], int]


class _GiveUp(Exception):
    """This document is for ruamel to read."""


def available() -> bool:
    return _CParser is not None


def parse(text: str, max_values: int) -> tuple[Any, Lines] | None:
    """(plain data, lines) of a plain-YAML document, or None: let ruamel read it."""
    if _CParser is None or _pyyaml is None or Reader.NON_PRINTABLE.search(text):
        return None
    parser = _CParser(text)
    try:
        return _Builder(max_values).build(parser)
    except (_GiveUp, _pyyaml.YAMLError, ValueError, RecursionError):
        return None
    finally:
        parser.dispose()


def _scalar(ev: Any) -> Any:
    """A scalar's value as ruamel (YAML 1.2) reads it, or _GiveUp when it is not a plain one."""
    if ev.tag is not None:
        if ev.tag != _STR:
            raise _GiveUp
        return ev.value
    if not ev.implicit[0]:          # quoted: a string
        return ev.value
    value = ev.value
    tag = _implicit_tag(value)
    if tag == _STR:
        return value
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return value in ("true", "True", "TRUE")
    if tag == _INT and _DECIMAL.fullmatch(value):
        return int(value)          # ValueError past 4300 digits: ruamel words that error
    if tag == _FLOAT and _SIMPLE_FLOAT.fullmatch(value):
        return float(value)
    raise _GiveUp


def _key(ev: Any) -> str:
    """A mapping key as load.py keeps it: a string (an integer key as its decimal text)."""
    if not isinstance(ev, _pyyaml.ScalarEvent):
        raise _GiveUp               # a complex key, an alias as a key
    key = _scalar(ev)
    if isinstance(key, bool) or key is None or isinstance(key, float) or key == "<<":
        raise _GiveUp
    if isinstance(key, int):
        if str(key) != ev.value:
            raise _GiveUp
        return str(key)
    return str(key)


class _Frame:
    __slots__ = ("value", "path", "key", "anchor", "budget")

    def __init__(self, value: Any, path: tuple[PathPart, ...], anchor: str | None, budget: int):
        self.value, self.path, self.anchor, self.budget = value, path, anchor, budget
        self.key: str | None = None


class _Builder:
    def __init__(self, max_values: int):
        self.budget = max_values
        self.lines: Lines = {(): 1}
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.stack: list[_Frame] = []
        self.root: Any = None
        self.done = False

    def build(self, parser: Any) -> tuple[Any, Lines]:
        ev_types = _pyyaml.events
        documents = 0
        while True:
            ev = parser.get_event()
            if isinstance(ev, ev_types.StreamEndEvent):
                break
            if isinstance(ev, ev_types.DocumentStartEvent):
                documents += 1
                if documents > 1 or ev.version or ev.tags:
                    raise _GiveUp
            elif isinstance(ev, ev_types.CollectionEndEvent):
                self.close()
            elif isinstance(ev, ev_types.NodeEvent):
                self.node(ev)
        if not self.done or self.root is None:
            raise _GiveUp               # empty, or only a null: ruamel words these
        return self.root, self.lines

    def charge(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            raise _GiveUp

    def node(self, ev: Any) -> None:
        top = self.stack[-1] if self.stack else None
        if top is not None and isinstance(top.value, dict) and top.key is None:
            top.key = _key(ev)
            if top.key in top.value:
                raise _GiveUp           # a duplicate key: ruamel names both lines
            where = (*top.path, top.key)   # (a star in a subscript needs Python 3.11)
            self.lines[where] = ev.start_mark.line + 1
            return
        self.charge(1)
        path = self.child_path(top, ev.start_mark.line + 1)
        if isinstance(ev, _pyyaml.AliasEvent):
            if ev.anchor not in self.anchors:
                raise _GiveUp           # undefined, or recursive (its collection is still open)
            value, size = self.anchors[ev.anchor]
            self.charge(size)
            self.place(value)
        elif isinstance(ev, _pyyaml.ScalarEvent):
            value = _scalar(ev)
            if ev.anchor:
                self.anchors[ev.anchor] = (value, 0)
            self.place(value)
        else:
            if ev.tag is not None and ev.tag not in (STANDARD + "map", STANDARD + "seq"):
                raise _GiveUp
            if len(self.stack) >= MAX_DEPTH:
                raise _GiveUp
            container: Any = {} if isinstance(ev, _pyyaml.MappingStartEvent) else []
            self.stack.append(_Frame(container, path, ev.anchor, self.budget))

    def child_path(self, top: _Frame | None, line: int) -> tuple[PathPart, ...]:
        if top is None:
            return ()
        if isinstance(top.value, dict):
            assert top.key is not None
            return (*top.path, top.key)
        path = (*top.path, len(top.value))
        self.lines[path] = line
        return path

    def close(self) -> None:
        frame = self.stack.pop()
        if frame.anchor:
            self.anchors[frame.anchor] = (frame.value, frame.budget - self.budget)
        self.place(frame.value)

    def place(self, value: Any) -> None:
        if not self.stack:
            self.root, self.done = value, True
            return
        top = self.stack[-1]
        if isinstance(top.value, dict):
            assert top.key is not None
            top.value[top.key] = value
            top.key = None
        else:
            top.value.append(value)
