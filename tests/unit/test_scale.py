"""Issue 10: cost linear in the topology, and the light commands start without the kernel code.

Pure: planning is counted (calls, not seconds), start-up is read from sys.modules of a
real `python -m cnetctl` child.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import subprocess
import sys
from collections.abc import Iterable

import pytest

import cnetctl.plan as planmod
from cnetctl import api, generate
from cnetctl.model.resources import Address, Key, Link, Netns, Resource, Route, on_link
from cnetctl.plan import plan
from tests.conftest import ROOT


def bridge_resources(pods: int, tmp_path) -> list[Resource]:
    path = tmp_path / "b.yaml"
    path.write_text(generate.to_yaml(generate.bridge(pods, name="s")))
    return api.validate(str(path)).resources


def k8s_resources(tmp_path) -> list[Resource]:
    path = tmp_path / "k.yaml"
    path.write_text(generate.to_yaml(generate.k8s(3, 4, name="k")))
    return api.validate(str(path)).resources


def test_planning_a_destroy_is_linear(tmp_path, monkeypatch):
    """Each deleted link used to scan every current object (what sits on it, what it takes
    along), to a fixpoint: a 250-pod destroy spent seconds planning."""
    resources = bridge_resources(200, tmp_path)
    calls = 0

    def counting_on_link(res: Resource) -> tuple[str | None, str] | None:
        nonlocal calls
        calls += 1
        return on_link(res)

    monkeypatch.setattr(planmod, "on_link", counting_on_link)
    for collapse in (True, False):
        calls = 0
        assert len(plan([], resources, collapse_netns=collapse).actions) > 200
        assert calls <= 2 * len(resources), f"{calls} on_link calls for {len(resources)} resources"


def _reference_gone(cur: dict[Key, Resource], gone: set[Key]) -> set[Key]:
    """The closure as plan() computed it before issue 10 (a rescan of everything, to a fixpoint)."""
    gone = set(gone)

    def lives_in(res: Resource, ns: str) -> bool:
        if isinstance(res, Netns):
            return False
        return res.ns == ns or (isinstance(res, Link) and ns in res.reaches)

    def address_deps(addr: Address) -> list[Resource]:
        ip = ipaddress.ip_interface(addr.cidr)
        here = [ipaddress.ip_interface(r.cidr) for r in cur.values()
                if isinstance(r, Address) and (r.ns, r.ifname) == (addr.ns, addr.ifname)]
        last_v4 = ip.version == 4 and not any(
            a.version == 4 and Address(addr.ns, addr.ifname, str(a)).key not in gone for a in here)
        out: list[Resource] = []
        for r in cur.values():
            if not isinstance(r, Route) or r.ns != addr.ns:
                continue
            through = r.dev == addr.ifname or (r.dev is None and r.via is not None and any(
                ipaddress.ip_address(r.via) in a.network for a in here if a.version == ip.version))
            if r.src == str(ip.ip) or (last_v4 and r.family == socket.AF_INET and through):
                out.append(r)
        return out

    changed = True
    while changed:
        changed = False
        for k in list(gone):
            r = cur[k]
            deps: Iterable[Resource] = ()
            if isinstance(r, Link) and r.owned:
                deps = [x for x in cur.values() if on_link(x) == (r.ns, r.ifname) or r.link_kind.takes_along(r, x)]
            elif isinstance(r, Address):
                deps = address_deps(r)
            elif isinstance(r, Netns):
                deps = [x for x in cur.values() if lives_in(x, r.name)]
            for d in deps:
                if d.key not in gone:
                    gone.add(d.key)
                    changed = True
    return gone


@pytest.mark.parametrize("seed", range(40))
def test_what_the_kernel_takes_along_is_what_it_was(tmp_path, seed):
    """The indexed closure finds exactly what the full rescan found, for random removals."""
    rng = random.Random(seed)
    resources = bridge_resources(6, tmp_path) if seed % 2 else k8s_resources(tmp_path)
    extra = [Address(r.ns, r.ifname, f"10.{99 + i}.0.{rng.randrange(2, 200)}/24")
             for i, r in enumerate(x for x in resources if isinstance(x, Link) and x.kind == "veth")]
    cur = {r.key: r for r in resources + extra}
    gone = set(rng.sample(sorted(cur, key=repr), rng.randrange(1, 6)))
    assert planmod._taken_along(cur, gone) == _reference_gone(cur, gone)


def _modules_after(*argv: str) -> list[str]:
    """The modules `python -m cnetctl ARGV` has imported when it exits."""
    code = ("import json, runpy, sys\n"
            f"sys.argv = ['cnetctl', *{list(argv)!r}]\n"
            "try:\n    runpy.run_module('cnetctl', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "sys.__stdout__.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout.rsplit("MODULES ", 1)[1])


HEAVY = ("pyroute2", "cnetctl.kernel", "cnetctl.observe", "cnetctl.runner", "cnetctl.verify", "cnetctl.checks")


@pytest.mark.parametrize("argv", [("--help",), ("validate", "manifests/quickstart.yaml"), ("schema",),
                                  ("apply", "--help")])
def test_light_commands_do_not_load_the_kernel_side(argv):
    """--help, validate and schema took 0.6-0.9 s, mostly importing pyroute2 and the kernel code."""
    loaded = [m for m in _modules_after(*argv) if m.split(".")[0] == "pyroute2" or m.startswith(HEAVY[1:])]
    assert loaded == []
