"""Property: whatever a mutated manifest looks like, validate ends in success or a
located TopologyError, never another exception, and never touches the kernel.

The seeds are the real manifests in manifests/; each example applies one to three
mutations (delete a key, add an unknown key, rename a key, replace a value with a
random scalar/list/mapping/huge int/odd string, duplicate a list item, swap a
container's type) at a random place, writes the YAML to a temp file and calls
cnetctl.api.validate in-process.
"""

from __future__ import annotations

import copy
import os
import re
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnetctl import api
from cnetctl.errors import TopologyError
from tests import yaml12

ROOT = Path(__file__).resolve().parents[2]
# More examples for a long hunt: CNETCTL_FUZZ_EXAMPLES=5000 pytest tests/unit/test_fuzz_manifests.py
EXAMPLES = int(os.environ.get("CNETCTL_FUZZ_EXAMPLES", "300"))
# Seeds: the valid manifests of the project (another directory: CNETCTL_FUZZ_SEEDS=DIR).
SEED_DIR = Path(os.environ.get("CNETCTL_FUZZ_SEEDS") or ROOT / "manifests")


SEEDS = {p.name: yaml12.load(p.read_text()) for p in sorted(SEED_DIR.glob("*.yaml"))}

# Values that look plausible somewhere in a manifest: the mutations should reach the
# cross-checks, not only the type checks.
ODD_STRINGS = [
    "", " ", "default", "main", "local", "host", "lo", "eth0", "br0", "ns1:eth0", "host:br0", "web:eth0",
    "10.0.0.1", "10.0.0.1/24", "10.0.0.0/24", "10.88.0.1", "10.88.0.0/24", "300.1.1.1/24", "fd00::1",
    "fd00:88::1/64", "fe80::1", "0.0.0.0/0", "::/0", "0x10", "0x10/0xff", "0xffffffffff", "..", ".", "/",
    "!eth0", "!", "a" * 300, "eth0-way-too-long-name", "blackhole", "unicast", "link", "tcp", "udp",
    "10.0.0.2:8080", "[fd00::2]:80", "net.ipv4.ip_forward", "kernel.sysrq", "preserved", "reachable",
    "unreachable", "all", "cnetctl/v1", "null", "true", "1e3", "-1", "٣", "é", "名前", "tab\there",
    "line\nbreak", "colon: space", "# not a comment", "&anchor", "*alias", "{a: 1}", "[1, 2]",
]
KEYS = ["to", "via", "dev", "src", "from", "table", "metric", "mtu", "addresses", "interfaces", "bridges",
        "routes", "rules", "nat", "sysctls", "netns", "checks", "links", "ping", "route", "expect", "extra",
        "from_", "Name", "1", "x" * 40]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 67, 68, 65535, 65536, 2**32 - 1, 2**32, 2**63, 10**40]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=3),
), max_leaves=6)

Path_ = tuple[Any, ...]


def _containers(doc: Any, path: Path_ = ()) -> list[Path_]:
    """Paths of every mapping and list in doc (the root included)."""
    out = []
    if isinstance(doc, dict | list):
        out.append(path)
        items = doc.items() if isinstance(doc, dict) else enumerate(doc)
        for k, v in items:
            out.extend(_containers(v, (*path, k)))
    return out


def _get(doc: Any, path: Path_) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _swap_type(v: Any) -> Any:
    if isinstance(v, dict):
        return list(v.values()) or list(v)
    if isinstance(v, list):
        return {str(i): x for i, x in enumerate(v)}
    if isinstance(v, str):
        return [v]
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int | float):
        return str(v)
    return v


@st.composite
def mutated_manifests(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _containers(doc)
        if not paths:
            break
        where = draw(st.sampled_from(paths))
        box = _get(doc, where)
        keys = list(box) if isinstance(box, dict) else list(range(len(box)))
        op = draw(st.sampled_from(["delete", "add", "rename", "replace", "duplicate", "swap"]))
        if op == "add" or not keys:
            if isinstance(box, dict):
                box[draw(st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=12)))] = draw(values)
            else:
                box.append(draw(values))
            continue
        key = draw(st.sampled_from(keys))
        if op == "delete":
            del box[key]
        elif op == "rename" and isinstance(box, dict):
            box[draw(st.sampled_from(KEYS))] = box.pop(key)
        elif op == "replace":
            box[key] = draw(values)
        elif op == "duplicate" and isinstance(box, list):
            box.insert(key, copy.deepcopy(box[key]))
        elif op == "swap":
            box[key] = _swap_type(box[key])
        else:
            box[key] = draw(values)
    return doc


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=10_000)


def assert_located(err: TopologyError, path: str, text: str = "") -> None:
    """Every line: PATH:LINE: message, or PATH: message for a problem of the whole file."""
    lines = str(err).splitlines()
    assert lines, "a TopologyError with no problems"
    assert len(lines) == len(err.problems)
    for problem, line in zip(err.problems, lines, strict=True):
        if problem.path:
            assert problem.line is not None, f"no line for {line!r}"
            assert re.match(rf"^{re.escape(path)}:\d+: \S.*$", line), line
        else:
            assert re.match(rf"^{re.escape(path)}(:\d+)?: \S.*$", line), line
        # pydantic's own wording or internal field names must not reach the user
        assert "Input should" not in line and "instance of" not in line, line
        if "from_" not in text:  # the YAML says `from`; pydantic's field is from_
            assert not re.search(r"\bfrom_\b", problem.path), line


@pytest.fixture(scope="module")
def workdir() -> Any:
    with tempfile.TemporaryDirectory(prefix="cnetctl-fuzz-") as d:
        yield Path(d)


def validate_text(text: str, workdir: Path) -> None:
    path = str(workdir / "manifest.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    try:
        api.validate(path)
    except TopologyError as err:
        assert_located(err, path, text)


def test_seeds_are_valid(workdir: Path) -> None:
    assert SEEDS, "no manifests/*.yaml to mutate"
    for doc in SEEDS.values():
        path = workdir / "seed.yaml"
        path.write_text(_dump(doc))
        api.validate(str(path))


@pytest.mark.long
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(doc=mutated_manifests())
def test_mutated_manifest_is_valid_or_located_error(doc: Any, workdir: Path) -> None:
    validate_text(_dump(doc), workdir)


@settings(max_examples=max(EXAMPLES // 3, 1), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(sorted(SEEDS)), data=st.data())
def test_mutated_text_is_valid_or_located_error(seed: str, data: st.DataObject, workdir: Path) -> None:
    """Byte-level damage (cut, inserted characters, swapped lines) to the seed's own text."""
    text = (SEED_DIR / seed).read_text()
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    op = data.draw(st.sampled_from(["truncate", "insert", "delete", "swap_lines"]))
    if op == "truncate":
        text = text[:cut]
    elif op == "insert":
        text = text[:cut] + data.draw(st.sampled_from(["\t", ":", "- ", "{", "[", '"', "'", "&a ", "*a ", "\n  ",
                                                       "!!int ", "? ", "|", ">", "%", "@", "`", "\x00", "\ufeff",
                                                       "é", "---\n"])) + text[cut:]
    elif op == "delete":
        text = text[:cut] + text[cut + data.draw(st.integers(min_value=1, max_value=20)):]
    else:
        lines = text.splitlines(keepends=True)
        if len(lines) > 1:
            i = data.draw(st.integers(min_value=0, max_value=len(lines) - 2))
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        text = "".join(lines)
    validate_text(text, workdir)


class KernelTouched(AssertionError):
    pass


@pytest.fixture
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any netlink socket, pyroute2 handle, namespace switch or child process fails the test."""
    import pyroute2
    import pyroute2.netns

    import cnetctl.kernel.netns as knetns
    import cnetctl.kernel.routes as kroutes

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise KernelTouched(f"kernel access during validate: {args!r} {kwargs!r}")

    for module, name in [(pyroute2, "IPRoute"), (pyroute2, "NetNS"), (knetns, "IPRoute"), (kroutes, "IPRoute"),
                         (pyroute2.netns, "create"), (pyroute2.netns, "remove"), (pyroute2.netns, "setns"),
                         (subprocess, "Popen"), (os, "setns"), (os, "unshare")]:
        if hasattr(module, name):
            monkeypatch.setattr(module, name, forbidden)

    real_socket = socket.socket

    class GuardedSocket(real_socket):  # type: ignore[misc,valid-type]
        def __init__(self, family: int = -1, *args: Any, **kwargs: Any) -> None:
            if family == getattr(socket, "AF_NETLINK", -2):
                raise KernelTouched("netlink socket opened during validate")
            super().__init__(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", GuardedSocket)


def test_guard_catches_kernel_access(no_kernel: None) -> None:
    import pyroute2
    with pytest.raises(KernelTouched):
        pyroute2.IPRoute()
    with pytest.raises(KernelTouched):
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)


@settings(max_examples=max(EXAMPLES // 5, 1), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(doc=mutated_manifests())
def test_validate_never_touches_the_kernel(doc: Any, workdir: Path, no_kernel: None) -> None:
    validate_text(_dump(doc), workdir)


def test_valid_and_corpus_manifests_never_touch_the_kernel(no_kernel: None) -> None:
    for path in sorted(SEED_DIR.glob("*.yaml")):
        api.validate(str(path))
    for path in sorted((ROOT / "tests" / "corpus" / "bad").glob("*.yaml")):
        with pytest.raises(TopologyError):
            api.validate(str(path))
