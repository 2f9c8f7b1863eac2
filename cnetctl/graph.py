"""`cnetctl graph`: the topology as a diagram (Mermaid or Graphviz dot; svg/png through dot).

A pure model first (build: Topology -> Graph), then one renderer per language, so both
draw the same picture: each node a box (a cluster) holding its interfaces, bridges and
VXLAN devices with their addresses; links between interfaces (an end naming a bridge
meets the bridge itself); a VXLAN joined to its bridge (`master`) and to the VTEPs it
sends to (`remote`, `fdb`) by dashed lines; with `hosts:`, the machines as outer clusters.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .model.topology import Topology

HOST = "host"
FORMATS = ("mermaid", "dot", "svg", "png")


@dataclass
class Device:
    id: str
    lines: list[str]          # the first is the name (and kind); then the addresses
    kind: str                 # interface | bridge | vxlan | remote


@dataclass
class Box:
    """A node of the topology (a namespace), or a machine holding nodes."""
    id: str
    label: str
    devices: list[Device] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)


@dataclass(frozen=True)
class Edge:
    a: str
    b: str
    label: str = ""
    dashed: bool = False


@dataclass
class Graph:
    title: str
    boxes: list[Box]              # machines (with hosts:) or nodes
    edges: list[Edge]
    outside: list[Device] = field(default_factory=list)   # VTEPs the topology does not declare


class _Ids:
    def __init__(self) -> None:
        self.devices: dict[tuple[str, str], Device] = {}

    def device(self, node: str, name: str, lines: list[str], kind: str) -> Device:
        dev = Device(f"d{len(self.devices)}", lines, kind)
        self.devices[(node, name)] = dev
        return dev


def build(topo: Topology, netns: dict[str, str | None] | None = None) -> Graph:
    """The picture of `topo`; `netns` (node -> namespace, as normalize names them) labels the boxes."""
    netns = netns or {}
    ids = _Ids()
    plugged = {end for link in topo.links for end in link}
    nodes = {name: Box(f"n{i}", f"{name}: {_where(topo, name, netns)}", _devices(ids, name, spec, plugged))
             for i, (name, spec) in enumerate(topo.nodes.items())}
    edges = [Edge(ids.devices[_end(a)].id, ids.devices[_end(b)].id, _link_label(topo, a, b))
             for a, b in (tuple(link) for link in topo.links)]
    outside: list[Device] = []
    edges += _vxlan_edges(topo, ids, outside)
    return Graph(topo.name, _machines(topo, nodes), edges, outside)


def _where(topo: Topology, name: str, netns: dict[str, str | None]) -> str:
    if name == HOST or name in _hosts(topo) or (name in netns and netns[name] is None):
        return "root namespace"
    return f"netns {netns.get(name) or topo.nodes[name].netns or f'{topo.name}-{name}'}"


def _end(end: str) -> tuple[str, str]:
    node, _, ifname = end.partition(":")
    return node, ifname


def _devices(ids: _Ids, node: str, spec: Any, plugged: set[str]) -> list[Device]:
    out = [ids.device(node, name, [name, *iface.addresses], "interface") for name, iface in spec.interfaces.items()]
    for end in sorted(plugged):    # link ends the node does not list under interfaces (no address)
        n, ifname = _end(end)
        if n == node and (n, ifname) not in ids.devices and ifname not in spec.bridges:
            out.append(ids.device(node, ifname, [ifname], "interface"))
    out += [ids.device(node, name, [f"{name} (bridge)", *br.addresses], "bridge") for name, br in spec.bridges.items()]
    out += [ids.device(node, name, [f"{name} (vxlan {vx.vni}" + (f", on {vx.dev})" if vx.dev else ")"),
                                    *vx.addresses], "vxlan") for name, vx in spec.vxlans.items()]
    if not out:   # a namespace with nothing declared still shows (a cluster needs a member)
        out.append(ids.device(node, "lo", ["lo"], "interface"))
    return out


def _hosts(topo: Topology) -> dict[str, Any]:
    """`hosts:` (issue 11) when the model has it."""
    return dict(getattr(topo, "hosts", None) or {})


def machine_of(topo: Topology, node: str) -> str | None:
    hosts = _hosts(topo)
    if not hosts:
        return None
    return node if node in hosts else getattr(topo.nodes[node], "on", None)


def _link_label(topo: Topology, a: str, b: str) -> str:
    ma, mb = machine_of(topo, _end(a)[0]), machine_of(topo, _end(b)[0])
    return "vxlan between machines" if ma and mb and ma != mb else ""


def _address_of(spec: Any) -> str | None:
    return spec.get("address") if isinstance(spec, dict) else getattr(spec, "address", None)


def _machines(topo: Topology, nodes: dict[str, Box]) -> list[Box]:
    hosts = _hosts(topo)
    if not hosts:
        return list(nodes.values())
    boxes = {h: Box(f"m{i}", f"host {h}" + (f" ({addr})" if (addr := _address_of(spec)) else ""))
             for i, (h, spec) in enumerate(hosts.items())}
    loose: list[Box] = []
    for name, box in nodes.items():
        machine = machine_of(topo, name)
        (boxes[machine].boxes if machine in boxes else loose).append(box)
    return list(boxes.values()) + loose


def _vxlan_edges(topo: Topology, ids: _Ids, outside: list[Device]) -> list[Edge]:
    """master: the bridge a VXLAN is a port of; remote/fdb: the VTEPs it sends to, found by
    their `local` address (else by who has that address; else drawn as outside the topology)."""
    vteps = {vx.local: (n, name) for n, spec in topo.nodes.items() for name, vx in spec.vxlans.items() if vx.local}
    owners = {ipaddress.ip_interface(a).ip: (n, name) for n, spec in topo.nodes.items()
              for kind in (spec.interfaces, spec.bridges) for name, dev in kind.items() for a in dev.addresses}
    edges: list[Edge] = []
    seen: set[frozenset[str]] = set()
    for node, spec in topo.nodes.items():
        for name, vx in spec.vxlans.items():
            me = ids.devices[(node, name)].id
            if vx.master and (node, vx.master) in ids.devices:
                edges.append(Edge(me, ids.devices[(node, vx.master)].id, "master", dashed=True))
            for dst in _dsts(vx):
                peer = vteps.get(dst) or owners.get(ipaddress.ip_address(dst))
                if peer is None:
                    peer = ("", dst)
                    if peer not in ids.devices:
                        outside.append(ids.device("", dst, [f"VTEP {dst}", "(outside the topology)"], "remote"))
                other = ids.devices[peer].id
                if frozenset((me, other)) not in seen and other != me:
                    seen.add(frozenset((me, other)))
                    edges.append(Edge(me, other, f"vni {vx.vni}", dashed=True))
    return edges


def _dsts(vx: Any) -> Iterable[str]:
    return dict.fromkeys(([vx.remote] if vx.remote else []) + [e.dst for e in vx.fdb])


# --- Mermaid -------------------------------------------------------------------------------------

_MERMAID_SAFE = re.compile(r"[^A-Za-z0-9 .,:/()_+-]")


def _mermaid_text(text: str) -> str:
    """Inside a quoted label every other character is written as an entity code (#35; …): a
    quote, '<', '|' or '#' in an interface name must not end the label or become HTML."""
    return _MERMAID_SAFE.sub(lambda m: f"#{ord(m.group())};", text)


_MERMAID_SHAPES = {"interface": ('("', '")'), "bridge": ('[["', '"]]'), "vxlan": ('{{"', '"}}'),
                   "remote": ('>"', '"]')}


def _nest(g: Graph, opening: Callable[[Box], list[str]], device: Callable[[Device], str], closing: str) -> list[str]:
    """Every box as its `opening` lines, the boxes and devices inside it indented below, and its
    `closing` line; then the devices outside every box. Both renderers nest the same way."""
    lines: list[str] = []

    def box(b: Box, indent: str) -> None:
        lines.extend(indent + line for line in opening(b))
        for inner in b.boxes:
            box(inner, indent + "  ")
        lines.extend(f"{indent}  {device(d)}" for d in b.devices)
        lines.append(indent + closing)

    for b in g.boxes:
        box(b, "  ")
    return lines + [f"  {device(d)}" for d in g.outside]


def mermaid(g: Graph) -> str:
    lines = ["flowchart LR", f"  %% cnetctl graph of topology {g.title}"]
    lines += _nest(g, lambda b: [f'subgraph {b.id}["{_mermaid_text(b.label)}"]'], _mermaid_device, "end")
    for e in g.edges:
        label = f"|{_mermaid_text(e.label)}|" if e.label else ""
        lines.append(f"  {e.a} {'-.-' if e.dashed else '---'}{label} {e.b}")
    for kind, style in (("bridge", "fill:#e8f0fe,stroke:#4a6fa5"), ("vxlan", "fill:#fdf0e0,stroke:#b7791f")):
        members = [d.id for d in _all_devices(g) if d.kind == kind]
        if members:
            lines += [f"  class {','.join(members)} {kind}", f"  classDef {kind} {style}"]
    return "\n".join(lines) + "\n"


def _mermaid_device(d: Device) -> str:
    start, end = _MERMAID_SHAPES[d.kind]
    return f"{d.id}{start}{'<br/>'.join(_mermaid_text(line) for line in d.lines)}{end}"


def _all_devices(g: Graph) -> list[Device]:
    out = list(g.outside)
    stack = list(g.boxes)
    while stack:
        b = stack.pop(0)
        out += b.devices
        stack[:0] = b.boxes
    return out


# --- Graphviz dot --------------------------------------------------------------------------------

def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_DOT_SHAPES = {"interface": "shape=box, style=rounded", "bridge": 'shape=box, style=filled, fillcolor="#e8f0fe"',
               "vxlan": 'shape=hexagon, style=filled, fillcolor="#fdf0e0"', "remote": "shape=box, style=dashed"}


def dot(g: Graph) -> str:
    lines = [f"graph {_dot_text(g.title)} {{", "  rankdir=LR;", "  compound=true;",
             '  node [fontname="monospace", fontsize=10];', '  edge [fontname="monospace", fontsize=9];',
             f"  label={_dot_text('topology ' + g.title)}; labelloc=t;"]

    def opening(b: Box) -> list[str]:
        style = "dashed" if b.id.startswith("m") else "rounded"   # a machine's box, or a node's
        return [f"subgraph cluster_{b.id} {{", f"  label={_dot_text(b.label)}; style={style};"]

    lines += _nest(g, opening, _dot_device, "}")
    for e in g.edges:
        attrs = ([f"label={_dot_text(e.label)}"] if e.label else []) + (["style=dashed"] if e.dashed else [])
        lines.append(f"  {e.a} -- {e.b}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_device(d: Device) -> str:
    label = _dot_text("\n".join(d.lines)).replace("\n", "\\n")
    return f"{d.id} [label={label}, {_DOT_SHAPES[d.kind]}];"


def render(topo: Topology, fmt: str, netns: dict[str, str | None] | None = None) -> bytes:
    """The diagram in `fmt` (one of FORMATS); svg and png run Graphviz's dot."""
    g = build(topo, netns)
    if fmt == "mermaid":
        return mermaid(g).encode()
    if fmt == "dot":
        return dot(g).encode()
    from .kernel.graphviz import run_dot
    return run_dot(dot(g), fmt)
