"""`cnetctl graph`: the diagram model, Mermaid checked structurally, dot parsed by Graphviz itself."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cnetctl import api, generate, graph
from cnetctl.model.topology import Topology
from tests.conftest import ROOT

MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz (dot) is not installed")


def drawn(path: Path | str, fmt: str = "mermaid") -> str:
    desired = api.validate(str(path))
    return graph.render(desired.topology, fmt, desired.nodes).decode()


# --- Mermaid, checked line by line --------------------------------------------------------------

DEVICE = re.compile(r'^(d\d+)(\("|\[\["|\{\{"|>")([^"]*)("\)|"\]\]|"\}\}|"\])$')
SUBGRAPH = re.compile(r'^subgraph ([nm]\d+)\["([^"]*)"\]$')
EDGE = re.compile(r"^(d\d+) (---|-\.-)(?:\|([^|\"]*)\|)? (d\d+)$")
CLASS = re.compile(r"^class (d\d+(?:,d\d+)*) (bridge|vxlan)$")


def parse_mermaid(text: str) -> dict[str, Any]:
    """What a Mermaid flowchart of ours may hold, and nothing else: devices (quoted labels
    without a raw quote), nested subgraphs closed in order, edges between declared devices."""
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    devices: dict[str, str] = {}
    boxes: dict[str, tuple[str, str | None]] = {}   # id -> (label, parent box)
    where: dict[str, str | None] = {}
    stack: list[str] = []
    edges = []
    for raw in lines[1:]:
        line = raw.strip()
        if m := SUBGRAPH.match(line):
            assert m[1] not in boxes
            boxes[m[1]] = (m[2], stack[-1] if stack else None)
            stack.append(m[1])
        elif line == "end":
            stack.pop()
        elif m := DEVICE.match(line):
            assert m[1] not in devices, f"device {m[1]} declared twice"
            devices[m[1]] = m[3]
            where[m[1]] = stack[-1] if stack else None
        elif m := EDGE.match(line):
            edges.append((m[1], m[4], m[3] or "", m[2] == "-.-"))
        elif not (CLASS.match(line) or line.startswith("classDef ") or line.startswith("%% ")):
            raise AssertionError(f"unexpected Mermaid line {raw!r}")
    assert not stack, f"subgraphs left open: {stack}"
    for a, b, _, _ in edges:
        assert a in devices and b in devices, (a, b)
    return {"devices": devices, "boxes": boxes, "where": where, "edges": edges}


def unescape(label: str) -> str:
    return re.sub(r"#(\d+);", lambda m: chr(int(m[1])), label).replace("<br/>", "\n")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_every_manifest_draws_every_node_link_and_address(path):
    desired = api.validate(str(path))
    topo = desired.topology
    g = parse_mermaid(drawn(path))
    labels = {d: unescape(lbl) for d, lbl in g["devices"].items()}
    # With hosts:, each machine is a cluster around its nodes: those boxes are not nodes.
    machines = {f"host {h} ({spec.address})" for h, spec in (topo.hosts or {}).items()}
    boxes = {lbl.split(":")[0]: box for box, (lbl, _) in g["boxes"].items() if lbl not in machines}
    assert set(boxes) == set(topo.nodes)
    assert {lbl for lbl, _ in g["boxes"].values()} >= machines
    assert len([e for e in g["edges"] if not e[3]]) == len(topo.links)
    text = "\n".join(labels.values())
    for (_, _), cidrs in desired.addresses.items():
        for cidr in cidrs:
            assert str(ipaddress.ip_interface(cidr)) in text, cidr
    for node, spec in topo.nodes.items():
        mine = [lbl for d, lbl in labels.items() if g["where"][d] == boxes[node]]
        for bridge in spec.bridges:
            assert len([lbl for lbl in mine if lbl.startswith(f"{bridge} (bridge)")]) == 1, (node, bridge)
        for name, vx in spec.vxlans.items():
            assert len([lbl for lbl in mine if lbl.startswith(f"{name} (vxlan {vx.vni}")]) == 1, (node, name)


def test_a_bridge_end_meets_the_bridge_and_vteps_meet_across_the_overlay():
    g = parse_mermaid(drawn(ROOT / "manifests" / "k8s-vxlan.yaml"))
    labels = {d: unescape(lbl).split("\n")[0] for d, lbl in g["devices"].items()}
    box = {d: g["boxes"][b][0].split(":")[0] for d, b in g["where"].items() if b}
    named = {(box[d], labels[d].split(" ")[0]): d for d in labels}
    edges = {frozenset((a, b)): (label, dashed) for a, b, label, dashed in g["edges"]}
    assert edges[frozenset((named["pod1", "eth0"], named["node1", "cbr0"]))] == ("", False)
    assert edges[frozenset((named["node1", "eth0"], named["node2", "eth0"]))] == ("", False)
    assert edges[frozenset((named["node1", "flannel.1"], named["node2", "flannel.1"]))] == ("vni 1", True)
    assert len(edges) == len(g["edges"]) == 6


def test_odd_interface_names_cannot_break_out_of_a_label():
    topo = Topology.model_validate({
        "apiVersion": "cnetctl/v1", "name": "odd",
        "nodes": {"host": {"interfaces": {'e"x|<b>#;': {"addresses": ["10.9.0.1/24"]}}}}})
    text = graph.mermaid(graph.build(topo))
    g = parse_mermaid(text)
    assert [unescape(lbl) for lbl in g["devices"].values()] == ['e"x|<b>#;\n10.9.0.1/24']
    assert "<b>" not in text
    dot = graph.dot(graph.build(topo))
    assert r'label="e\"x|<b>#;\n10.9.0.1/24"' in dot


class _On:
    """A node that says where it lives, for the diagram before the model has `on:` (issue 11)."""

    def __init__(self, node: Any, on: str | None):
        self._node, self.on = node, on

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)


def _with_hosts(doc: dict[str, Any]) -> Any:
    """The generated --hosts manifest as build() sees it: hosts and on: beside a validated model."""
    plain = {k: v for k, v in doc.items() if k != "hosts"}
    plain["nodes"] = {n: {k: v for k, v in spec.items() if k != "on"} for n, spec in doc["nodes"].items()}
    topo = Topology.model_validate(plain)

    class WithHosts:
        name, links, hosts = topo.name, topo.links, doc["hosts"]
        nodes = {n: _On(spec, doc["nodes"][n].get("on")) for n, spec in topo.nodes.items()}
    return WithHosts()


def test_hosts_are_clusters_holding_their_nodes():
    doc = generate.k8s(3, 1, mode="vxlan", hosts=2)
    g = parse_mermaid(graph.mermaid(graph.build(_with_hosts(doc))))
    machines = {lbl: box for box, (lbl, parent) in g["boxes"].items() if parent is None}
    assert set(machines) == {"host machine1 (192.0.2.11)", "host machine2 (192.0.2.12)"}
    inside = {lbl.split(":")[0]: parent for lbl, parent in g["boxes"].values() if parent}
    m1, m2 = machines["host machine1 (192.0.2.11)"], machines["host machine2 (192.0.2.12)"]
    assert inside == {"machine1": m1, "node1": m1, "pod1-0": m1, "node2": m1, "pod2-0": m1,
                      "machine2": m2, "node3": m2, "pod3-0": m2}
    labels = {d: unescape(lbl) for d, lbl in g["devices"].items()}
    # The underlay's stitch: machine1's ulvx2 is a port of its bridge and meets machine2's ulvx1.
    ulvx = {lbl.split(" ")[0] + "@" + g["boxes"][g["where"][d]][0].split(":")[0]: d
            for d, lbl in labels.items() if lbl.startswith("ulvx")}
    edges = {frozenset((a, b)): label for a, b, label, _ in g["edges"]}
    assert edges[frozenset((ulvx["ulvx2@machine1"], ulvx["ulvx1@machine2"]))] == "vni 102"
    dot = graph.dot(graph.build(_with_hosts(doc)))
    assert dot.count("subgraph cluster_m") == 2


# --- dot, parsed by Graphviz ----------------------------------------------------------------------

@needs_dot
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_dot_output_parses(path):
    res = subprocess.run(["dot", "-Tsvg"], input=drawn(path, "dot"), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr, res.stderr
    assert "<svg" in res.stdout


@needs_dot
def test_svg_and_png_come_from_dot(tmp_path):
    quick = ROOT / "manifests" / "quickstart.yaml"
    svg = drawn(quick, "svg")
    assert svg.startswith("<?xml") and "10.88.0.2/24" in svg and "cbr0 (bridge)" in svg
    desired = api.validate(str(quick))
    assert graph.render(desired.topology, "png", desired.nodes)[:8] == b"\x89PNG\r\n\x1a\n"


def run_cli(monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes],
            *args: str) -> tuple[int, bytes, bytes]:
    from cnetctl import cli
    monkeypatch.setattr(sys, "argv", ["cnetctl", *args])
    with pytest.raises(SystemExit) as ex:
        cli.main()
    out = capsysbinary.readouterr()
    return int(ex.value.code or 0), out.out, out.err


def test_cli_writes_a_file_and_stdout(monkeypatch, capsysbinary, tmp_path):
    quick = str(ROOT / "manifests" / "quickstart.yaml")
    rc, out, err = run_cli(monkeypatch, capsysbinary, "graph", quick)
    assert rc == 0 and out.decode() == drawn(quick), err
    rc, out, err = run_cli(monkeypatch, capsysbinary, "graph", quick, "-f", "dot", "-o", str(tmp_path / "q.dot"))
    assert rc == 0 and out == b"" and (tmp_path / "q.dot").read_text() == drawn(quick, "dot")


def test_svg_without_graphviz_exits_2_saying_what_to_install(monkeypatch, capsysbinary, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))   # no dot here
    quick = str(ROOT / "manifests" / "quickstart.yaml")
    rc, out, err = run_cli(monkeypatch, capsysbinary, "graph", quick, "-f", "svg", "-o", str(tmp_path / "q.svg"))
    assert rc == 2 and out == b""
    assert b"needs Graphviz's `dot`" in err and b"apt-get install graphviz" in err and b"-f mermaid" in err
    assert not (tmp_path / "q.svg").exists()


def test_an_invalid_manifest_exits_2(monkeypatch, capsysbinary, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: cnetctl/v1\nname: bad\nnodes: {a: {}}\nlinks: [[a:eth0, b:eth0]]\n")
    rc, out, err = run_cli(monkeypatch, capsysbinary, "graph", str(bad))
    assert rc == 2 and out == b"" and b"bad.yaml:4" in err


def test_the_readme_shows_the_quickstart_as_drawn_now():
    readme = (ROOT / "README.md").read_text()
    assert "```mermaid\n" + drawn(ROOT / "manifests" / "quickstart.yaml") + "```" in readme
