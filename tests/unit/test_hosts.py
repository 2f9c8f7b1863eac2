"""Topologies that span machines, without root: slicing, the tunnels' derivation, validation,
which host this is, the Ansible inventory, and how verify reports what runs elsewhere."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnetctl import hosts
from cnetctl.errors import TopologyError, UsageError
from cnetctl.load import load_topology_text
from cnetctl.model.linkkinds import VxlanSpec
from cnetctl.model.resources import Address, Link, Netns, Route
from cnetctl.normalize import normalize, resolve_target
from cnetctl.verify import CheckResult, VerifyReport

ROOT = Path(__file__).resolve().parents[2]
TWO = (ROOT / "manifests" / "two-hosts.yaml").read_text()

# A bridge end across machines, an IPv6 underlay, a mesh of every node, an MTU given on one end.
V6 = """
apiVersion: cnetctl/v1
name: six
hosts:
  a: {address: "2001:db8::a"}
  b: {address: "2001:db8::b"}
nodes:
  a: {bridges: {br0: {addresses: [10.9.0.1/24]}}}
  pod: {on: b, interfaces: {eth0: {addresses: [10.9.0.2/24], mtu: 1400}}}
  r1: {on: a, interfaces: {eth1: {addresses: ["fd00:1::1/64"]}}}
  r2: {on: b, interfaces: {eth1: {addresses: ["fd00:1::2/64"]}}}
links:
  - [pod:eth0, a:br0]
  - [r2:eth1, r1:eth1]
checks:
  - {mesh: {}}
  - {ping: {from: pod, to: "a:br0"}}
"""


def topo(text: str):  # type: ignore[no-untyped-def]
    return load_topology_text(text, "t.yaml")


def vni_by_hand(name: str, a: str, b: str, attempt: int = 0) -> int:
    """The derivation as documented (README, docs/ARCHITECTURE.md)."""
    key = "\n".join([name, *sorted((a, b))] + ([str(attempt)] if attempt else []))
    return 2**23 + int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 2**23


def test_each_machine_gets_its_nodes_links_and_one_end_of_each_tunnel():
    t, _ = topo(TWO)
    one, two = hosts.slice_topology(t, "node1"), hosts.slice_topology(t, "node2")
    assert list(one.topology.nodes) == ["node1", "pod-a", "r1"] and list(two.topology.nodes) == ["node2", "pod-b", "r2"]
    assert one.topology.links == [("pod-a:eth0", "node1:cbr0")] and one.links == (0,)
    assert two.topology.links == [("pod-b:eth0", "node2:cbr0")] and two.links == (1,)
    (t1,), (t2,) = one.tunnels, two.tunnels
    vni = vni_by_hand("two-hosts", "r1:eth1", "r2:eth1")
    assert 2**23 <= vni < 2**24
    assert (t1.node, t1.ifname, t1.peer, t1.vni, t1.port, t1.local, t1.remote, t1.mtu) == \
        ("r1", "eth1", ("r2", "eth1"), vni, 4789, "192.0.2.11", "192.0.2.12", 1450)
    assert (t2.node, t2.ifname, t2.vni, t2.local, t2.remote) == ("r2", "eth1", vni, "192.0.2.12", "192.0.2.11")
    assert one.topology.checks == t.checks        # every check, for its references; runs_on picks
    assert one.runs_on[0] == ("node1", "node2")    # the mesh: its members live on both
    assert [one.skipped_by(k) for k in range(len(t.checks))] == \
        [None, None, "node2", None, None, "node2", None, None]
    assert [two.skipped_by(k) for k in range(len(t.checks))] == \
        [None, "node1", None, "node1", "node1", None, "node1", "node1"]


def test_a_slice_normalizes_with_its_root_node_as_the_machine_itself():
    t, src = topo(TWO)
    d = normalize(t, src, "nftables", host="node1")
    assert d.host == "node1" and d.nodes == {"node1": None, "pod-a": "two-hosts-pod-a", "r1": "two-hosts-r1"}
    (tunnel,) = [r for r in d.resources if isinstance(r, Link) and r.kind == "vxlan"]
    assert (tunnel.ns, tunnel.ifname, tunnel.mtu) == ("two-hosts-r1", "eth1", 1450)
    assert tunnel.spec == VxlanSpec(vni_by_hand("two-hosts", "r1:eth1", "r2:eth1"), 4789, "192.0.2.11", None,
                                    "192.0.2.12", learning=False, underlay_host=True)
    assert Address("two-hosts-r1", "eth1", "10.0.12.1/30") in d.resources
    assert Link(None, "cbr0", "bridge") in d.resources and Netns("two-hosts-pod-b") not in d.resources
    assert any(isinstance(r, Route) and r.ns is None and r.via == "192.0.2.12" for r in d.resources)
    # Checks aim at nodes of the other machine by their declared addresses.
    assert resolve_target(d, "pod-b:eth0") == "10.246.2.2" and resolve_target(d, "r2:eth1") == "10.0.12.2"
    assert d.node_addresses("pod-b") == ["10.246.2.2/24"] and d.every_node() == ["pod-a", "pod-b", "r1", "r2"]
    # Without a host: every machine's resources, for validate's counts.
    assert len(normalize(t, src, "nftables").resources) == len(d.resources) + len(
        normalize(t, src, "nftables", host="node2").resources)


def test_a_bridge_end_across_machines_is_a_vxlan_port_and_ipv6_underlays_carry_less():
    t, src = topo(V6)
    a, b = normalize(t, src, host="a"), normalize(t, src, host="b")
    (port,) = [r for r in a.resources if isinstance(r, Link) and r.kind == "vxlan" and r.master == "br0"]
    assert port.ns is None and port.ifname.startswith("cn") and port.spec.underlay_host is False  # type: ignore
    assert port.mtu == 1400                                           # the pod end's own MTU, both ends
    (pod_end,) = [r for r in b.resources if isinstance(r, Link) and r.ns == "six-pod" and r.kind != "lo"]
    assert pod_end.kind == "vxlan" and pod_end.mtu == 1400 and pod_end.spec.remote == "2001:db8::a"  # type: ignore
    (r1,) = [r for r in a.resources if isinstance(r, Link) and r.ns == "six-r1" and r.kind != "lo"]
    assert r1.mtu == 1500 - 70                                        # IPv6 outer headers
    assert a.every_node() == ["pod", "r1", "r2"]                      # mesh `all`: no machine's own node
    assert a.placement is not None and a.placement.runs_on == (("a", "b"), ("b",))


def test_vnis_are_stable_agree_and_skip_what_is_taken():
    t, _ = topo(TWO)
    first = vni_by_hand("two-hosts", "r2:eth1", "r1:eth1")
    assert hosts.tunnel_vnis(t) == {2: first}
    # A hand-written VXLAN on the tunnel port with that VNI: the link takes the next candidate.
    taken = TWO.replace("  node2:\n    sysctls", f"  node2:\n    vxlans: {{vx9: {{vni: {first}}}}}\n    sysctls", 1)
    t2, _ = topo(taken)
    assert hosts.tunnel_vnis(t2) == {2: vni_by_hand("two-hosts", "r1:eth1", "r2:eth1", 1)}
    # The same VNI on another port is no clash.
    t3, _ = topo(taken.replace(f"vni: {first}}}", f"vni: {first}, port: 8472}}"))
    assert hosts.tunnel_vnis(t3) == {2: first}


@pytest.mark.parametrize(("text", "path", "line", "words"), [
    ("apiVersion: cnetctl/v1\nname: x\nnodes:\n  a: {on: m1}\n", "nodes.a.on", 4, "needs a hosts: section"),
    ("apiVersion: cnetctl/v1\nname: x\nhosts: {m1: {address: 10.0.0.1}}\nnodes:\n  a: {}\n", "nodes.a.on", 5,
     "needs on: HOST"),
    ("apiVersion: cnetctl/v1\nname: x\nhosts: {m1: {address: 10.0.0.1}}\nnodes:\n  host: {}\n", "nodes.host", 5,
     "no node is called 'host'"),
])
def test_hosts_and_on_are_checked_with_their_yaml_path(text: str, path: str, line: int, words: str):
    t, src = topo(text)
    with pytest.raises(TopologyError) as info:
        normalize(t, src)
    (p,) = info.value.problems
    assert (p.path, p.line) == (path, line) and words in p.message


def test_which_machine_this_is():
    t, src = topo(TWO)
    assert hosts.pick_host(t, {"127.0.0.1", "192.0.2.12"}) == "node2"
    with pytest.raises(UsageError, match=r"node1 \(192.0.2.11\), node2 \(192.0.2.12\).*--host NAME"):
        hosts.pick_host(t, {"10.1.1.1"})
    with pytest.raises(UsageError, match=r"several .*\(node1, node2\)"):
        hosts.pick_host(t, {"192.0.2.11", "192.0.2.12"})
    with pytest.raises(UsageError, match="has no host 'node3'"):
        hosts.check_host(t, "node3")
    one, src1 = topo((ROOT / "manifests" / "quickstart.yaml").read_text())
    with pytest.raises(UsageError, match="declares no hosts"):
        hosts.check_host(one, "node1")
    with pytest.raises(UsageError, match="declares no hosts"):
        normalize(one, src1, host="node1")


def test_the_inventory_is_ansible_yaml_with_names_kept_as_strings():
    t, _ = topo(TWO.replace("node2", "yes"))
    inv = yaml.safe_load(hosts.inventory(t, "two.yaml"))
    group = inv["all"]["children"]["cnetctl"]
    assert group["hosts"] == {"node1": {"ansible_host": "192.0.2.11", "cnetctl_host": "node1"},
                              "yes": {"ansible_host": "192.0.2.12", "cnetctl_host": "yes"}}
    assert group["vars"] == {"cnetctl_topology": "two-hosts"}


def test_a_report_counts_skipped_checks_apart_and_keeps_its_keys():
    checks = [CheckResult("readback", True, "ok"), CheckResult("ping", False, "no reply"),
              CheckResult("ping", None, "skipped (runs on node2)", {"skipped": "node2"})]
    report = VerifyReport("lab", checks, "node1")
    assert (report.passed, report.failed, report.skipped, report.ok) == (1, 1, 1, False)
    data = report.to_json()
    assert list(data) == ["topology", "passed", "failed", "checks", "host", "skipped"] and data["skipped"] == 1
    assert data["checks"][2] == {"kind": "ping", "ok": None, "detail": "skipped (runs on node2)", "skipped": "node2"}
    assert list(VerifyReport("lab", checks[:2]).to_json()) == ["topology", "passed", "failed", "checks"]


def test_the_inventory_command(tmp_path: Path):
    """`cnetctl inventory FILE`, as Ansible's caller runs it: YAML on stdout; exit 2 for a
    manifest on one machine."""
    res = subprocess.run([sys.executable, "-m", "cnetctl", "inventory", "manifests/two-hosts.yaml"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout)["all"]["children"]["cnetctl"]["hosts"]["node2"]["cnetctl_host"] == "node2"
    res = subprocess.run([sys.executable, "-m", "cnetctl", "inventory", "manifests/quickstart.yaml"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout) == (2, "") and "declares no hosts" in res.stderr
