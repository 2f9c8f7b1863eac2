"""Issue #8 (status, veth pairing, rollback of pod-to-pod links, the demo), on the real kernel.

Veth ends in two fresh namespaces usually have the same ifindex (2): these tests
build several such pairs so that pairing by ifindex alone is ambiguous.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, cnetctl, ip, netns_list, ping, run

PODS = """\
apiVersion: cnetctl/v1
name: uxpods
nodes:
  host:
    bridges:
      uxbr0: {addresses: [10.61.0.1/24]}
  a:
    interfaces:
      eth0: {addresses: [10.60.1.1/30]}
      eth1: {addresses: [10.61.0.2/24]}
    routes:
      - {to: 10.99.0.0/16, via: 10.60.1.2}
  b:
    interfaces:
      eth0: {addresses: [10.60.1.2/30]}
  c:
    interfaces:
      eth0: {addresses: [10.60.2.1/30]}
  d:
    interfaces:
      eth0: {addresses: [10.60.2.2/30]}
links:
  - [a:eth0, b:eth0]
  - [c:eth0, d:eth0]
  - [a:eth1, host:uxbr0]
checks:
  - {ping: {from: a, to: "b:eth0"}}
  - {ping: {from: c, to: "d:eth0"}}
"""


def write(tmp_path: Path, text: str, name: str = "pods.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def peer_of(ns: str | None, ifname: str) -> tuple[str | None, str]:
    """The other end of a veth, from iproute2's own view: IFLA_LINK + IFLA_LINK_NETNSID."""
    (link,) = ip(ns, "-d", "link", "show", "dev", ifname)  # type: ignore[misc]
    if "link_netnsid" in link:
        ids = {e["nsid"]: e.get("name") for e in ip(ns, "netns", "list-id")}  # type: ignore[union-attr]
        peer_ns = ids[link["link_netnsid"]]
    else:
        peer_ns = ns
    (peer,) = [p for p in ip(peer_ns, "link", "show") if p["ifindex"] == link["link_index"]]  # type: ignore[union-attr]
    return peer_ns, peer["ifname"]


def all_ifnames() -> dict[str | None, set[str]]:
    return {ns: {link["ifname"] for link in ip(ns, "link", "show")}  # type: ignore[union-attr]
            for ns in [None, *netns_list()]}


def test_status_pairs_veths_whose_ends_share_an_ifindex(tmp_path, clean_world):
    assert cnetctl("apply", write(tmp_path, PODS)).returncode == 0
    try:
        # The setup this test is about: several ends with the same ifindex.
        assert {ip(f"uxpods-{n}", "link", "show", "dev", "eth0")[0]["ifindex"]  # type: ignore[index]
                for n in "abcd"} == {2}
        res = cnetctl("status", "uxpods", "-o", "json")
        assert res.returncode == 0, res.stderr
        (topo,) = json.loads(res.stdout)["topologies"]
        veths = [link for link in topo["links"] if link["kind"] == "veth"]
        assert len(veths) == 6
        for link in veths:
            assert link["peer"]["ifname"] != "?", link
            assert (link["peer"]["netns"], link["peer"]["ifname"]) == peer_of(link["netns"], link["ifname"]), link
    finally:
        assert cnetctl("destroy", "--name", "uxpods").returncode == 0


def test_status_shows_nodes_addresses_and_routes_without_truncating(tmp_path, clean_world):
    assert cnetctl("apply", write(tmp_path, PODS)).returncode == 0
    try:
        (topo,) = json.loads(cnetctl("status", "uxpods", "-o", "json").stdout)["topologies"]
        # Backwards compatible: the old keys are all there.
        assert {"name", "state_file", "manifest", "applied_at", "nodes", "namespaces", "links",
                "counts"} <= set(topo)
        by_node = {n["node"]: n for n in topo["by_node"]}
        assert set(by_node) == {"host", "a", "b", "c", "d"}
        a = by_node["a"]
        assert a["netns"] == "uxpods-a" and by_node["host"]["netns"] is None
        eth0 = {i["ifname"]: i for i in a["interfaces"]}["eth0"]
        assert eth0["addresses"] == ["10.60.1.1/30"] and eth0["peer"] == {"netns": "uxpods-b", "ifname": "eth0"}
        assert {i["ifname"]: i["addresses"] for i in by_node["host"]["interfaces"]}["uxbr0"] == ["10.61.0.1/24"]
        (route,) = a["routes"]
        assert (route["to"], route["via"], route["dev"], route["table"]) == ("10.99.0.0/16", "10.60.1.2", "eth0",
                                                                            254)
        # ... as the kernel has it:
        (kroute,) = ip("uxpods-a", "route", "show", "proto", "147")  # type: ignore[misc]
        assert (kroute["dst"], kroute["gateway"], kroute["dev"]) == ("10.99.0.0/16", "10.60.1.2", "eth0")
        flat = {(link["netns"], link["ifname"]): link for link in topo["links"]}
        assert flat[("uxpods-a", "eth0")]["addresses"] == ["10.60.1.1/30"]

        host_end = peer_of("uxpods-a", "eth1")[1]
        for columns in ("30", "200"):
            text = cnetctl("status", "uxpods", env={"COLUMNS": columns}).stdout
            assert "…" not in text and "?" not in text, text
            for needle in ("node a", "netns uxpods-a", "eth0@uxpods-b", f"{host_end}@host", "eth1@uxpods-a",
                           "10.60.1.1/30", "10.61.0.1/24", "10.99.0.0/16 via 10.60.1.2 dev eth0"):
                assert needle in text, (needle, text)
    finally:
        assert cnetctl("destroy", "--name", "uxpods").returncode == 0


def test_rollback_of_a_removed_pod_to_pod_link_restores_it(tmp_path, clean_world):
    assert cnetctl("apply", write(tmp_path, PODS)).returncode == 0
    try:
        before = {n: peer_of(f"uxpods-{n}", "eth0") for n in "abcd"}
        without = PODS.replace("      eth0: {addresses: [10.60.1.1/30]}\n", "") \
            .replace("    routes:\n      - {to: 10.99.0.0/16, via: 10.60.1.2}\n", "") \
            .replace("  b:\n    interfaces:\n      eth0: {addresses: [10.60.1.2/30]}\n", "  b: {}\n") \
            .replace("  - [a:eth0, b:eth0]\n", "").replace('  - {ping: {from: a, to: "b:eth0"}}\n', "")
        v2 = write(tmp_path, without, "v2.yaml")
        plan = json.loads(cnetctl("plan", v2, "-o", "json").stdout)
        deleted = {(a["resource"].get("ns"), a["resource"].get("ifname")) for a in plan["actions"]
                   if a["op"] == "delete" and a["resource"]["kind"] == "veth"}
        assert deleted == {("uxpods-a", "eth0"), ("uxpods-b", "eth0")}
        res = cnetctl("apply", v2, env={"CNETCTL_FAULT_AT": str(plan["changes"])})
        assert res.returncode == 3 and "injected fault" in res.stderr, res.stderr
        # Both ends are back, in their namespaces, with their names, paired with each other.
        assert {n: peer_of(f"uxpods-{n}", "eth0") for n in "abcd"} == before
        assert before["a"] == ("uxpods-b", "eth0")
        assert not [(ns, names) for ns, names in all_ifnames().items() if "?" in names]
        assert ping("uxpods-a", "10.60.1.2")
        assert cnetctl("verify", write(tmp_path, PODS)).returncode == 0
    finally:
        assert cnetctl("destroy", "--name", "uxpods").returncode == 0
    assert not [(ns, names) for ns, names in all_ifnames().items() if "?" in names]


@pytest.mark.parametrize("peer", [None, "?"])
def test_kernel_refuses_a_veth_whose_peer_is_unknown(peer, tmp_path, clean_world):
    from cnetctl.errors import KernelError
    from cnetctl.kernel import Kernel
    from cnetctl.model.linkkinds import VethSpec
    from cnetctl.model.resources import Link
    from cnetctl.state import State

    kernel = Kernel("uxref", State.load("uxref", str(tmp_path)))
    try:
        with pytest.raises(KernelError, match="peer"):
            kernel.create(Link(None, "uxref0", "veth", spec=VethSpec(None, peer)))
    finally:
        kernel.close()
    names = all_ifnames()[None]
    assert "uxref0" not in names and "?" not in names


# --- the demo (make demo) where another tool set FORWARD policy DROP --------------------------------

HINT = "Remove it:"


def make_demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`make demo` as a user runs it, with a venv whose stamps are fresh: its python and cnetctl
    are this test run's interpreter running the checkout's code (nothing is installed)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, argv in (("python", ""), ("cnetctl", " -m cnetctl")):
        script = venv / "bin" / name
        script.write_text(f'#!/bin/sh\nexec {sys.executable}{argv} "$@"\n')
        script.chmod(0o755)
    (venv / ".installed-runtime").touch()
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "demo", f"VENV={venv}", *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.fixture(params=[("iptables-nft",), ("iptables-legacy", "ip6tables-legacy")])
def forward_drop(request):
    """What Docker (and several distros) leave behind: FORWARD policy DROP (nft or legacy, v4 or both)."""
    had_filter = run("nft", "list", "table", "ip", "filter").returncode == 0
    for tool in request.param:
        run(tool, "-P", "FORWARD", "DROP", check=True)
    yield request.param
    for tool in request.param:
        run(tool, "-P", "FORWARD", "ACCEPT", check=True)
    if not had_filter and "iptables-nft" in request.param:
        run("nft", "delete", "table", "ip", "filter", check=True)


def test_demo_passes_where_forward_policy_is_drop(tmp_path, forward_drop, clean_world):
    try:
        res = make_demo(tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "0 failed" in res.stdout and HINT in res.stdout, res.stdout
        assert ping("quickstart-web", "10.88.0.3") and ping("quickstart-db", "10.88.0.2")
        assert ping("quickstart-web", "fd00:88::3")
        if "iptables-nft" in forward_drop:
            assert 'comment "cnetctl:quickstart forward 10.88.0.0/24"' in run("nft", "list", "ruleset").stdout
        else:
            saved = run("iptables-legacy-save").stdout + run("ip6tables-legacy-save").stdout
            assert '-A FORWARD -m comment --comment "cnetctl:quickstart" -j CNET-QUICKSTART-FWD' in saved
            assert "fd00:88::/64" in saved
    finally:
        assert cnetctl("destroy", "--name", "quickstart").returncode == 0
    saved = run("iptables-legacy-save").stdout + run("ip6tables-legacy-save").stdout
    assert "cnetctl:quickstart" not in run("nft", "list", "ruleset").stdout + saved
    for tool in forward_drop:  # the other tool's policy stays
        assert "-P FORWARD DROP" in run(tool, "-S", "FORWARD").stdout


@pytest.mark.parametrize("how", ["kernel-failure", "invalid-manifest"])
def test_demo_prints_how_to_clean_up_when_apply_fails(how, tmp_path, clean_world):
    if how == "kernel-failure":
        res = make_demo(tmp_path, env={"CNETCTL_FAULT_AT": "3"})
        expected = "exit 3"
    else:
        bad = tmp_path / "bad.yaml"
        bad.write_text("apiVersion: cnetctl/v1\nname: bad\nnodes: {x: {frob: 1}}\n")
        res = make_demo(tmp_path, f"MANIFEST={bad}")
        expected = "exit 2"
    assert res.returncode != 0
    assert HINT in res.stdout and expected in res.stdout, res.stdout + res.stderr
    assert "quickstart-web" not in netns_list()


DOCKER0 = ("docker0", "172.17.0.1/16")


def test_docker_bridge_example_leaves_a_real_docker0_alone(clean_world):
    """A Docker host has docker0 with 172.17.0.1/16: the example must neither collide nor touch it."""
    run("ip", "link", "add", "docker0", "type", "bridge", check=True)
    run("ip", "addr", "add", DOCKER0[1], "dev", "docker0", check=True)
    run("ip", "link", "set", "docker0", "up", check=True)

    def docker0() -> object:
        (link,) = ip(None, "addr", "show", "dev", "docker0")  # type: ignore[misc]
        routes = ip(None, "route", "show", "dev", "docker0")
        return ({k: link.get(k) for k in ("ifindex", "flags", "mtu", "address", "master", "ifalias")},
                [(a["local"], a["prefixlen"]) for a in link["addr_info"]], routes)

    before = docker0()
    manifest = str(Path(ROOT, "manifests", "docker-bridge.yaml"))
    try:
        res = cnetctl("apply", manifest)
        assert res.returncode == 0, res.stdout + res.stderr
        assert docker0() == before
        res = cnetctl("verify", manifest)
        assert res.returncode == 0, res.stdout + res.stderr
        assert cnetctl("destroy", manifest).returncode == 0
        assert docker0() == before
    finally:
        cnetctl("destroy", "--name", "docker")
        run("ip", "link", "del", "docker0")
