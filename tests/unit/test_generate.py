"""`cnetctl generate`: every output at small N is a valid manifest with its checks; bad arguments exit 2.

The kernel side (apply, verify, destroy of each shape) is tests/kernel/test_cmds.py."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cnetctl import api, generate
from cnetctl.model.topology import Topology

SHAPES = {
    "bridge-1": lambda: generate.bridge(1),
    "bridge-3": lambda: generate.bridge(3, name="b3"),
    "host-gw-1x1": lambda: generate.k8s(1, 1),
    "host-gw-2x2": lambda: generate.k8s(2, 2),
    "host-gw-3x2": lambda: generate.k8s(3, 2, "host-gw", "hg"),
    "vxlan-1x1": lambda: generate.k8s(1, 1, mode="vxlan"),
    "vxlan-2x2": lambda: generate.k8s(2, 2, mode="vxlan"),
    "vxlan-3x2": lambda: generate.k8s(3, 2, mode="vxlan", name="vx"),
}


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from cnetctl import cli
    monkeypatch.setattr(sys, "argv", ["cnetctl", *args])
    with pytest.raises(SystemExit) as ex:
        cli.main()
    out = capsys.readouterr()
    return int(ex.value.code or 0), out.out, out.err


def kinds(doc: dict[str, Any]) -> list[str]:
    return [next(iter(c)) for c in doc.get("checks", [])]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_is_a_valid_manifest_with_checks(shape, tmp_path):
    doc = SHAPES[shape]()
    path = tmp_path / f"{shape}.yaml"
    path.write_text(generate.to_yaml(doc, comment="a comment\nof two lines"))
    desired = api.validate(str(path))
    assert desired.name == doc["name"]
    # The YAML says what the data says (the MACs, `on`, flow style … all read back as written).
    assert yaml.safe_load(path.read_text()) == doc
    assert path.read_text().startswith("# a comment\n# of two lines\n")
    pods = [n for n in doc["nodes"] if n.startswith("pod")]
    assert all(desired.nodes[p] == f"{doc['name']}-{p}" for p in pods)
    if len(pods) >= 2 and not shape.endswith("1x1"):
        assert {"ping", "mesh", "source"} <= set(kinds(doc)), kinds(doc)


def test_the_vxlan_shape_is_flannel_like():
    doc = generate.k8s(3, 1, mode="vxlan")
    node2 = doc["nodes"]["node2"]
    vtep = node2["vxlans"]["flannel.1"]
    assert (vtep["vni"], vtep["port"], vtep["learning"], vtep["dev"], vtep["local"]) == \
        (1, 8472, False, "eth0", "10.240.0.12")
    assert vtep["addresses"] == ["10.244.2.0/32"] and vtep["mac"] == "02:42:0a:f4:02:00"
    # For each other node: a forwarding entry (its MAC at its underlay address), a static
    # neighbour (its VTEP address at its MAC) and an onlink route to its pod CIDR.
    assert vtep["fdb"] == [{"mac": "02:42:0a:f4:01:00", "dst": "10.240.0.11"},
                           {"mac": "02:42:0a:f4:03:00", "dst": "10.240.0.13"}]
    assert node2["neighbors"] == [{"dev": "flannel.1", "ip": "10.244.1.0", "mac": "02:42:0a:f4:01:00"},
                                  {"dev": "flannel.1", "ip": "10.244.3.0", "mac": "02:42:0a:f4:03:00"}]
    assert node2["routes"] == [{"to": "10.244.1.0/24", "via": "10.244.1.0", "dev": "flannel.1", "onlink": True},
                               {"to": "10.244.3.0/24", "via": "10.244.3.0", "dev": "flannel.1", "onlink": True}]
    assert "tables" not in doc and "rules" not in node2
    route = next(c["route"] for c in doc["checks"] if "route" in c)
    assert route["expect"] == {"via": "10.244.3.0", "dev": "flannel.1", "table": "main"}
    assert {"ping": {"from": "pod1-0", "to": "10.244.4.2", "expect": "unreachable"}} in doc["checks"]


def test_bench_keeps_its_calls():
    """bench/bench.py calls bridge(n, name=) and k8s(nodes, pods, name=): host-gw by default."""
    doc = generate.k8s(2, 3, name="bench")
    assert doc["tables"] == {"pods": 100} and "vxlans" not in doc["nodes"]["node1"]
    assert len([n for n in doc["nodes"] if n.startswith("pod")]) == 6
    assert generate.bridge(10_000, name="bench")["nodes"]["pod9999"]["interfaces"]["eth0"]["addresses"] == \
        ["10.220.39.17/16"]


# --- --hosts -----------------------------------------------------------------------------------

def _hosts_doc(mode: str) -> dict[str, Any]:
    return generate.k8s(5, 2, mode=mode, hosts=3)


@pytest.mark.parametrize("mode", generate.MODES)
def test_hosts_spread_the_nodes_over_the_machines(mode):
    doc = _hosts_doc(mode)
    machines = {"machine1": "192.0.2.11", "machine2": "192.0.2.12", "machine3": "192.0.2.13"}
    assert doc["hosts"] == {m: {"address": a} for m, a in machines.items()}
    nodes = doc["nodes"]
    assert "host" not in nodes and all(m in nodes for m in machines)
    # Every node that is not a machine says where it lives; pods live where their node does.
    on = {n: spec["on"] for n, spec in nodes.items() if n not in machines}
    assert set(on) == {n for n in nodes if n not in machines} and set(on.values()) == set(machines)
    assert [on[f"node{n}"] for n in range(1, 6)] == ["machine1", "machine1", "machine2", "machine2", "machine3"]
    assert all(on[f"pod{n}-{p}"] == on[f"node{n}"] for n in range(1, 6) for p in range(2))
    # Each node plugs into the underlay bridge of its own machine; links never cross machines.
    where = {**{m: m for m in machines}, **on}
    for a, b in doc["links"]:
        assert where[a.split(":")[0]] == where[b.split(":")[0]], (a, b)
    assert ["node3:eth0", "machine2:underlay"] in doc["links"]


@pytest.mark.parametrize("mode", generate.MODES)
def test_hosts_stretch_the_underlay_by_a_star_of_vxlans(mode):
    doc = _hosts_doc(mode)
    nodes = doc["nodes"]
    hub = nodes["machine1"]["vxlans"]
    assert set(hub) == {"ulvx2", "ulvx3"}
    for k in (2, 3):
        spoke = nodes[f"machine{k}"]["vxlans"]
        assert list(spoke) == ["ulvx1"]
        there, back = hub[f"ulvx{k}"], spoke["ulvx1"]
        assert there["vni"] == back["vni"] == 100 + k and there["port"] == back["port"]
        assert (there["local"], there["remote"]) == (back["remote"], back["local"]) == \
            (doc["hosts"]["machine1"]["address"], doc["hosts"][f"machine{k}"]["address"])
        assert there["master"] == back["master"] == "underlay" and f"machine{k}" in nodes
    # The VXLANs on the path each take 50 bytes of the machines' 1500.
    assert nodes["node1"]["interfaces"]["eth0"]["mtu"] == 1450
    pod_mtu = nodes["pod1-0"]["interfaces"]["eth0"]["mtu"]
    assert pod_mtu == (1450 if mode == "host-gw" else 1400)
    if mode == "vxlan":
        assert nodes["node1"]["vxlans"]["flannel.1"]["mtu"] == 1400


def test_one_host_makes_no_stitch():
    doc = generate.k8s(2, 1, hosts=1)
    assert doc["nodes"]["machine1"] == {"bridges": {"underlay": {}}}
    assert {spec.get("on") for n, spec in doc["nodes"].items() if n != "machine1"} == {"machine1"}


@pytest.mark.skipif("hosts" not in Topology.model_fields,
                    reason="the manifest model has no `hosts:` yet (issue 11, branch i11-hosts); "
                           "this test validates --hosts output once it has")
@pytest.mark.parametrize("mode", generate.MODES)
def test_hosts_output_validates(mode, tmp_path):
    path = tmp_path / "k.yaml"
    path.write_text(generate.to_yaml(_hosts_doc(mode)))
    desired = api.validate(str(path))
    assert desired.name == "k8s"


# --- the command line --------------------------------------------------------------------------

def test_cli_prints_what_the_library_makes(monkeypatch, capsys, tmp_path):
    rc, out, err = run_cli(monkeypatch, capsys, "generate", "k8s", "--nodes", "2", "--pods-per-node", "2",
                           "--mode", "vxlan", "--name", "vx")
    assert rc == 0, err
    assert yaml.safe_load(out) == generate.k8s(2, 2, mode="vxlan", name="vx")
    assert out.startswith("# made by: cnetctl generate k8s --nodes 2 --pods-per-node 2 --mode vxlan --name vx\n")
    Path(tmp_path / "vx.yaml").write_text(out)
    assert api.validate(str(tmp_path / "vx.yaml")).name == "vx"
    rc, out, err = run_cli(monkeypatch, capsys, "generate", "bridge", "--pods", "3")
    assert rc == 0 and yaml.safe_load(out) == generate.bridge(3)


@pytest.mark.parametrize("args, message", [
    (["bridge", "--pods", "0"], "--pods 0: must be at least 1"),
    (["bridge", "--pods", "-3"], "--pods -3: must be at least 1"),
    (["bridge", "--pods", "65534"], "--pods 65534: at most 65533 (the pods' subnet is 10.220.0.0/16)"),
    (["bridge", "--pods", "2", "--name", "a-name-much-too-long"],
     "--name: invalid topology name 'a-name-much-too-long': 20 characters, at most 16"),
    (["bridge", "--pods", "2", "--name", "Lab"], "--name: invalid topology name 'Lab': 1-16 characters"),
    (["k8s", "--nodes", "0", "--pods-per-node", "1"], "--nodes 0: must be at least 1"),
    (["k8s", "--nodes", "255", "--pods-per-node", "1"], "--nodes 255: at most 254"),
    (["k8s", "--nodes", "2", "--pods-per-node", "254"], "--pods-per-node 254: at most 253 (a node's pods are "
                                                       "10.244.N.2 .. 10.244.N.254)"),
    (["k8s", "--nodes", "2", "--pods-per-node", "1", "--hosts", "3"],
     "--hosts 3: at most 2 (every machine holds at least one node)"),
    (["k8s", "--nodes", "2", "--pods-per-node", "1", "--hosts", "0"], "--hosts 0: must be at least 1"),
    (["k8s", "--nodes", "2", "--pods-per-node", "1", "--mode", "calico"], "calico"),
])
def test_bad_arguments_exit_2_with_a_message(monkeypatch, capsys, args, message):
    rc, out, err = run_cli(monkeypatch, capsys, "generate", *args)
    assert rc == 2 and out == ""
    assert message in err and "Traceback" not in err, err


def test_the_library_raises_a_usage_error_that_is_also_a_value_error():
    with pytest.raises(ValueError, match="--pods-per-node 0"):
        generate.k8s(1, 0)
    with pytest.raises(generate.GenerateError) as ex:
        generate.k8s(1, 1, mode="vxlan", name="x" * 17)
    assert ex.value.exit_code == 2


def test_the_address_plan_has_no_overlaps_at_its_limits():
    doc = generate.k8s(generate.MAX_K8S_NODES, 1, mode="vxlan")
    cidrs = [a for spec in doc["nodes"].values() for what in ("interfaces", "bridges", "vxlans")
             for dev in spec.get(what, {}).values() for a in dev.get("addresses", [])]
    addrs = [ipaddress.ip_interface(c).ip for c in cidrs]
    assert len(addrs) == len(set(addrs))
    pods = generate.k8s(1, generate.MAX_PODS_PER_NODE)["nodes"]
    assert pods[f"pod1-{generate.MAX_PODS_PER_NODE - 1}"]["interfaces"]["eth0"]["addresses"] == ["10.244.1.254/24"]
