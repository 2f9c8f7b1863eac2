"""YAML file -> Topology, with every error located by file, YAML path and line."""

from __future__ import annotations

import difflib
import os
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from . import fastyaml
from .errors import Problem, TopologyError
from .model.topology import PATTERN_HELP, Topology
from .source import PathPart, Source, format_path

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Values after expanding YAML aliases: far above any real manifest, far below
# what a "billion laughs" file (aliases of aliases) would make us build.
MAX_MANIFEST_VALUES = 1_000_000


class _TooBig(Exception):
    pass


class _Recursive(Exception):
    def __init__(self, path: tuple[PathPart, ...]):
        self.path = path


def _plain(node: Any, path: tuple[PathPart, ...], lines: dict[tuple[PathPart, ...], int]) -> Any:
    """ruamel's round-trip nodes -> plain Python values, recording 1-based lines.

    Aliases are expanded (a value may be shared); a recursive alias raises
    _Recursive, more than MAX_MANIFEST_VALUES values raise _TooBig.
    """
    return _Expander(lines).plain(node, path)


class _Expander:
    def __init__(self, lines: dict[tuple[PathPart, ...], int]):
        self.lines = lines
        self.budget = MAX_MANIFEST_VALUES
        self.active: set[int] = set()       # containers being expanded (a cycle = a recursive alias)
        self.done: dict[int, tuple[Any, int]] = {}  # container -> (plain value, number of values in it)

    def plain(self, node: Any, path: tuple[PathPart, ...]) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _TooBig
        if isinstance(node, CommentedMap | CommentedSeq):
            key = id(node)
            if key in self.active:
                raise _Recursive(path)
            if key in self.done:
                # An alias of a value already expanded: share it, charge its size (so aliases
                # of aliases fail long before they are built); errors inside it are reported
                # on the line of the alias.
                value, size = self.done[key]
                self.budget -= size
                if self.budget < 0:
                    raise _TooBig
                return value
            before = self.budget
            self.active.add(key)
            try:
                out = self.collection(node, path)
            finally:
                self.active.discard(key)
            self.done[key] = (out, before - self.budget)
            return out
        if isinstance(node, bool) or node is None:
            return node
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return float(node)
        return str(node)

    def collection(self, node: CommentedMap | CommentedSeq, path: tuple[PathPart, ...]) -> Any:
        lines = self.lines
        if isinstance(node, CommentedMap):
            out = {}
            for key, value in node.items():
                if not isinstance(key, str | int) or isinstance(key, bool):
                    key = str(key)
                sub = (*path, key if isinstance(key, str) else str(key))
                try:
                    lines[sub] = node.lc.key(key)[0] + 1
                except (KeyError, TypeError):
                    lines[sub] = lines.get(path, 0)
                out[sub[-1]] = self.plain(value, sub)
            return out
        out_list = []
        for i, value in enumerate(node):
            sub = (*path, i)
            try:
                lines[sub] = node.lc.item(i)[0] + 1
            except (KeyError, TypeError, IndexError):
                lines[sub] = lines.get(path, 0)
            out_list.append(self.plain(value, sub))
        return out_list


# ruamel names tokens as they appear in its grammar; say what they are instead.
_TOKENS = {"'<block mapping start>'": "a new indented mapping", "'<block sequence start>'": "a new indented list",
           "<block end>": "the end of the indented block", "'<block end>'": "the end of the indented block",
           "'?'": "a key", "'<stream end>'": "the end of the file", "'-'": "a list item '-'"}


def _syntax_problem(err: MarkedYAMLError, what: str = "YAML syntax error") -> Problem:
    """ruamel's error as one line: the problem, where the construct it was parsing began, a hint."""
    mark = err.problem_mark or err.context_mark
    line = mark.line + 1 if mark else None
    problem = " ".join(str(err.problem or "").split()) or "invalid YAML"
    for token, words in _TOKENS.items():
        problem = problem.replace(token, words)
    msg = f"{what}: {problem}"
    context = " ".join(str(err.context or "").split())
    if context.startswith("while"):
        if err.context_mark is not None and err.context_mark.line + 1 != line:
            context += f" that starts on line {err.context_mark.line + 1}"
        msg += f" ({context})"
    elif context:  # e.g. "expected a single document in the stream" + "but found another document"
        msg = f"{what}: {context} {problem}"
    if "\\t" in problem or "\t" in problem:
        msg += "; indent with spaces, YAML does not allow tabs"
    elif "mapping values are not allowed" in problem:
        msg += "; quote a value that contains ': ', or check the indentation"
    elif "block" in msg:
        msg += "; check the indentation"
    return Problem("", msg, line)


def _duplicate_keys(yaml: YAML, text: str) -> list[Problem]:
    """Every key given twice in one mapping, by YAML path, with the line of its first use."""
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    problems: list[Problem] = []
    seen_nodes: set[int] = set()

    def walk(node: Any, path: tuple[PathPart, ...]) -> None:
        if id(node) in seen_nodes:  # an alias: already walked
            return
        seen_nodes.add(id(node))
        if isinstance(node, MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                ident = (getattr(key.tag, "value", None) or str(key.tag), str(key.value)) \
                    if isinstance(key, ScalarNode) else ("", str(id(key)))
                sub = (*path, str(key.value) if isinstance(key, ScalarNode) else "?")
                line = key.start_mark.line + 1
                if ident in first:
                    problems.append(Problem(format_path(sub), f"duplicate key: already given on line "
                                                              f"{first[ident]} (keys must be unique)", line))
                else:
                    first[ident] = line
                walk(value, sub)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    try:
        walk(yaml.compose(text), ())
    except (YAMLError, RecursionError):
        return []
    return problems


class _UnknownTag(Exception):
    def __init__(self, tag: str, line: int | None):
        self.tag, self.line = tag, line


class _LocatingConstructor(RoundTripConstructor):
    """Notes on a scalar that cannot be constructed (a 5000-digit integer, 2024-13-45,
    `!!int abc`) the line it is on: ruamel raises a bare ValueError without a mark.
    Refuses a tag that is not one of the standard ones a manifest can use: ruamel would
    read `nodes: !foo {…}` as a plain mapping and drop the tag without a word."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        tag = getattr(node.tag, "value", None) or str(node.tag)
        if tag not in fastyaml.ALLOWED_TAGS:
            mark = getattr(node, "start_mark", None)
            raise _UnknownTag(tag, mark.line + 1 if mark is not None else None)
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as err:
            if not hasattr(err, "cnetctl_line") and getattr(node, "start_mark", None) is not None:
                err.cnetctl_line = node.start_mark.line + 1  # type: ignore[union-attr]
            raise


def _tag_problem(err: _UnknownTag) -> Problem:
    tag = err.tag.replace(fastyaml.STANDARD, "!!")
    return Problem("", f"YAML error: unknown tag {tag} (a manifest is plain YAML: remove the tag; the standard "
                       "tags !!str, !!int, !!float, !!bool, !!null, !!map and !!seq are the ones allowed)", err.line)


def parse_yaml(text: str, file: str) -> Source:
    src = Source(file)
    # Most manifests are plain YAML that libyaml reads 10 times faster than ruamel; anything
    # the fast reader cannot vouch for (an error, a tag, an anchor cycle, an odd scalar …)
    # is read by ruamel below, whose answer (and error message) is the reference.
    fast = fastyaml.parse(text, MAX_MANIFEST_VALUES)
    if fast is not None:
        src.data, src.lines = fast
        return src
    yaml = YAML(typ="rt")
    yaml.Constructor = _LocatingConstructor
    yaml.allow_duplicate_keys = False
    try:
        doc = yaml.load(text)
    except DuplicateKeyError as err:
        raise src.fail(_duplicate_keys(yaml, text) or [_syntax_problem(err, "duplicate key")]) from None
    except _UnknownTag as err:
        raise src.fail([_tag_problem(err)]) from None
    except MarkedYAMLError as err:
        raise src.fail([_syntax_problem(err)]) from None
    except ReaderError as err:
        line = text.count("\n", 0, err.position) + 1 if isinstance(err.position, int) else None
        char = f"#x{err.character:04x}" if isinstance(err.character, int) else repr(err.character)
        raise src.fail([Problem("", f"YAML error: character {char} is not allowed in YAML ({err.reason})",
                                line)]) from None
    except YAMLError as err:
        raise src.fail([Problem("", "YAML error: " + " ".join(str(err).split()))]) from None
    except RecursionError:
        raise src.fail([Problem("", "YAML error: the document is nested too deeply")]) from None
    except (ValueError, TypeError, OverflowError) as err:
        # A scalar ruamel resolves but cannot construct: an integer of more than
        # 4300 digits, a date like 2024-13-45, `!!int abc` …
        raise src.fail([Problem("", f"YAML error: a value cannot be read: {str(err).split(';')[0]}",
                                getattr(err, "cnetctl_line", None))]) from None
    src.lines[()] = 1
    try:
        src.data = _plain(doc, (), src.lines)
    except _UnknownTag as err:
        raise src.fail([_tag_problem(err)]) from None
    except _Recursive as err:
        raise src.fail([src.problem(err.path, "a YAML alias refers to a value that contains it (recursive "
                                    "anchor)")]) from None
    except _TooBig:
        raise src.fail([Problem("", f"the manifest expands to more than {MAX_MANIFEST_VALUES} values "
                                    "(YAML aliases of aliases?)")]) from None
    except RecursionError:
        raise src.fail([Problem("", "YAML error: the document is nested too deeply")]) from None
    return src


def read_manifest_text(file: str) -> str:
    def fail(msg: str) -> TopologyError:
        return TopologyError(file, [Problem("", msg)])

    if os.path.isdir(file):
        raise fail("is a directory, expected a YAML manifest")
    try:
        size = os.path.getsize(file)
        if size > MAX_MANIFEST_BYTES:
            raise fail(f"file is {size} bytes; manifests are limited to {MAX_MANIFEST_BYTES} bytes")
        with open(file, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:  # a device or pipe reports no size: /dev/zero, <(yes)
            raise fail(f"more than {MAX_MANIFEST_BYTES} bytes; manifests are limited to {MAX_MANIFEST_BYTES} "
                       "bytes")
    except FileNotFoundError:
        raise fail("no such file") from None
    except PermissionError:
        raise fail("permission denied (cannot read the file)") from None
    except OSError as err:
        raise fail(f"cannot read: {err.strerror or err}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise TopologyError(file, [Problem("", f"not UTF-8 text: byte 0x{raw[err.start]:02x} at line {line}, "
                                               f"column {column} (save the file as UTF-8)", line)]) from None


def _describe(value: Any) -> str:
    """A YAML value as a user wrote it: 'the string "x"', 'a list', 'null' …"""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = str(value)
        return f"the number {text if len(text) <= 24 else text[:20] + '…'}"
    if isinstance(value, str):
        return f"the string {value if len(value) <= 40 else value[:37] + '…'!r}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# pydantic's "Input should be a valid X" errors, by type: what was expected, in YAML words.
_EXPECTED = {"int": "an integer", "string": "a string", "float": "a number", "bool": "true or false",
             "dict": "a mapping", "model": "a mapping", "model_attributes": "a mapping", "list": "a list",
             "tuple": "a list", "set": "a list", "frozen_set": "a list"}
_EXPECTED_PARSING = {"int_parsing": "an integer", "int_from_float": "an integer", "float_parsing": "a number",
                     "bool_parsing": "true or false"}


def _expected(error: Any) -> str | None:
    """What a type-like error expected ('an integer', "'tcp' or 'udp'"), None for other errors."""
    typ = error["type"]
    if typ == "literal_error":
        return str((error.get("ctx") or {}).get("expected", "")) or None
    if typ in _EXPECTED_PARSING:
        return _EXPECTED_PARSING[typ]
    if typ.endswith("_type"):
        return _EXPECTED.get(typ[: -len("_type")])
    return None


def _number(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:20] + "…"


def _message(error: Any, path: tuple[PathPart, ...]) -> str:
    """One pydantic error as a sentence about the YAML the user wrote."""
    typ, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if typ == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        allowed = _allowed_keys(error["loc"][:-1])
        if allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return f"unknown key {key!r} ({hint}allowed: {', '.join(allowed)})"
        return f"unknown key {key!r}"
    if typ == "missing":
        return "required key is missing"
    bounds = {"greater_than_equal": ("at least", "ge"), "less_than_equal": ("at most", "le"),
              "greater_than": ("greater than", "gt"), "less_than": ("less than", "lt")}
    if typ in bounds:
        words, key = bounds[typ]
        return f"must be {words} {_number(ctx.get(key))}, got {_number(value)}"
    if typ == "string_pattern_mismatch":
        help_ = PATTERN_HELP.get(ctx.get("pattern", ""))
        if help_ and isinstance(value, str):
            what, limit, rule = help_
            if len(value) > limit:
                return f"invalid {what} {value!r}: {len(value)} characters, at most {limit}"
            return f"invalid {what} {value!r}: {rule}"
        return f"{value!r} does not match {ctx.get('pattern')}"
    if typ == "too_short":
        return f"needs at least {ctx.get('min_length')} items, got {ctx.get('actual_length')}"
    if typ == "too_long":
        return f"takes at most {ctx.get('max_length')} items, got {ctx.get('actual_length')}"
    if typ == "finite_number":
        return f"must be a finite number, got {_number(value)}"
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def _unwrap(tp: Any) -> Any:
    """Annotated[X, …] -> X; Optional[X] -> X; a union with one model among its members -> that model."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        if get_origin(tp) in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            models = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(members) == 1:
                tp = members[0]
                continue
            if len(models) == 1:
                tp = models[0]
                continue
        return tp


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _union_models(tp: Any) -> list[tuple[str | None, type[BaseModel]]]:
    """A union whose every member is a model (a `checks:` item): (its Tag, if any, model) per member."""
    if get_origin(tp) not in (Union, types.UnionType):
        return []
    out = []
    for member in get_args(tp):
        tags = [m.tag for m in get_args(member)[1:] if isinstance(m, Tag)] if get_origin(member) is Annotated else []
        model = _unwrap(member)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        out.append((tags[0] if tags else None, model))
    return out


def _allowed_keys(loc: tuple[Any, ...]) -> list[str] | None:
    """The keys the model at pydantic location `loc` accepts (as written in YAML), if known."""
    tp: Any = Topology
    for part in loc:
        tp = _unwrap(tp)
        members = _union_models(tp)
        if members:
            # A union of models: the member the part is the tag of, or the one that has the part as a key.
            tagged = [m for tag, m in members if tag == part]
            if tagged:
                tp = tagged[0]
                continue
            tp = next((m for _, m in members if part in _keys(m)), None)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            found = [f for name, f in tp.model_fields.items() if part in (name, f.alias)]
            if found:
                tp = found[0].annotation
            # else: a tag pydantic adds to a location (e.g. 'function-after[…]'): stay
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        elif get_origin(tp) is tuple:
            args = get_args(tp)
            tp = args[part] if isinstance(part, int) and 0 <= part < len(args) else args[0]
        else:
            return None
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return _keys(tp)
    members = _union_models(tp)
    return [k for _, m in members for k in _keys(m)] or None


def _pydantic_problems(src: Source, err: ValidationError) -> list[Problem]:
    problems = []
    # A value that fits no member of a union (int | str, 'all' | list) gets one error per
    # member, all at the same path: merged into "expected an integer or a string, got a list".
    expected: dict[tuple[PathPart, ...], tuple[list[str], Any]] = {}
    for e in err.errors(include_url=False):
        path = _data_path(src.data, e["loc"])
        want = _expected(e)
        if want is not None:
            expected.setdefault(path, ([], e.get("input")))[0].append(want)
            continue
        problems.append(src.problem(path, _message(e, path)))
    for path, (wants, value) in expected.items():
        msg = f"expected {' or '.join(dict.fromkeys(wants))}, got {_describe(value)}"
        if isinstance(value, str) and "an integer" in wants and value.strip().lstrip("-").isdigit():
            msg += " (write the number without quotes)"
        problems.append(src.problem(path, msg))
    # One message per path: a union reports the same input once per member.
    seen: dict[tuple[str, str], Problem] = {}
    for p in problems:
        seen.setdefault((p.path, p.message), p)
    return list(seen.values())


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[PathPart, ...]:
    """pydantic's loc, less its type tags (e.g. 'function-after[...]'), as a YAML path."""
    path: list[PathPart] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part.endswith("_") and part[:-1] in node:
            path.append(part[:-1])
            node = node[part[:-1]]
        elif isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "list", "dict")):
            continue
        elif isinstance(node, dict) and isinstance(part, str) and part.rstrip("_") not in node:
            # a missing field: name it (aliases: 'from_' is written 'from')
            path.append(part.rstrip("_"))
            node = None
        else:
            continue
    return tuple(path)


def load_topology_text(text: str, file: str) -> tuple[Topology, Source]:
    src = parse_yaml(text, file)
    if src.data is None:
        raise src.fail([Problem("", "empty manifest: expected a mapping with apiVersion, name, nodes", 1)])
    if not isinstance(src.data, dict):
        raise src.fail([Problem("", f"the manifest must be a mapping (apiVersion: …, name: …, nodes: …), "
                                    f"not {_describe(src.data)}", 1)])
    try:
        topo = Topology.model_validate(src.data)
    except ValidationError as err:
        raise src.fail(_pydantic_problems(src, err)) from None
    return topo, src


def load_topology(file: str) -> tuple[Topology, Source]:
    return load_topology_text(read_manifest_text(file), file)
