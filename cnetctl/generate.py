"""Manifests made by program: N pods on a bridge, and the Kubernetes-style pod network.

Pure functions returning the manifest as plain data (what the YAML loader would
give), so that `cnetctl generate`, the benchmarks and the tests share one source.

The address plan (what the limits below come from):

- bridge: the pods in 10.220.0.0/16, the bridge (gateway) at .0.1.
- k8s: node N owns the pod CIDR 10.244.N.0/24 (gateway .1 on its cbr0, pods from .2; in
  vxlan mode .0 is its VTEP address) and has the underlay address 10.240.0.(10+N)/16.
- `hosts`: machine K has the underlay address 192.0.2.(10+K) (TEST-NET-1, as the
  simulated machines of the tests use); the nodes' underlay bridge is stretched over the
  machines by one VXLAN from machine1 to every other machine (a star: no loop, no STP).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .errors import UsageError
from .model.topology import TOPOLOGY_NAME_PATTERN, TOPOLOGY_NAME_RE, name_problem

Manifest = dict[str, Any]

BRIDGE_SUBNET = ipaddress.IPv4Network("10.220.0.0/16")
UNDERLAY = ipaddress.IPv4Network("10.240.0.0/16")
POD_SUPERNET = ipaddress.IPv4Network("10.244.0.0/16")
MACHINES = ipaddress.IPv4Network("192.0.2.0/24")
MESH_SAMPLE = 8   # a mesh of n nodes is n*(n-1) pings: beyond a sample, pings to gateways prove each pod

MAX_BRIDGE_PODS = BRIDGE_SUBNET.num_addresses - 3   # network, gateway, broadcast
MAX_K8S_NODES = 254       # 10.244.N.0/24 with 10.244.(N+1).0/24 left free for the "unreachable" check
MAX_PODS_PER_NODE = 253   # 10.244.N.2 .. 10.244.N.254
MAX_MACHINES = 200        # 192.0.2.11 .. 192.0.2.210
MODES = ("host-gw", "vxlan")
VXLAN_VNI, VXLAN_PORT = 1, 8472                 # flannel's defaults
STITCH_VNI, STITCH_PORT = 100, 4789             # the underlay stretched across machines: VNI 100 + K
STITCH_MTU = 1450                               # 1500 of the machines' network minus VXLAN's 50 bytes


class GenerateError(UsageError, ValueError):
    """An argument outside what the generator (or its address plan) can make (exit 2).
    Also a ValueError: what callers caught before it existed."""


def _host(net: ipaddress.IPv4Network, index: int) -> str:
    return str(net.network_address + index)


def _check_name(name: str) -> None:
    if not TOPOLOGY_NAME_RE.match(name):
        raise GenerateError(f"--name: {name_problem(TOPOLOGY_NAME_PATTERN, name)}")


def _check_count(option: str, value: int, limit: int, why: str) -> None:
    if value < 1:
        raise GenerateError(f"{option} {value}: must be at least 1")
    if value > limit:
        raise GenerateError(f"{option} {value}: at most {limit} ({why})")


def bridge(pods: int, name: str = "pods", checks: bool = True) -> Manifest:
    """`pods` namespaces on one host bridge (docker0/cbr0 style), each with a default route."""
    _check_name(name)
    _check_count("--pods", pods, MAX_BRIDGE_PODS, f"the pods' subnet is {BRIDGE_SUBNET}")
    plen = BRIDGE_SUBNET.prefixlen
    gateway = _host(BRIDGE_SUBNET, 1)
    nodes: dict[str, Any] = {"host": {"bridges": {"cbr0": {"addresses": [f"{gateway}/{plen}"]}}}}
    for i in range(pods):
        nodes[f"pod{i}"] = {"interfaces": {"eth0": {"addresses": [f"{_host(BRIDGE_SUBNET, i + 2)}/{plen}"]}},
                            "routes": [{"to": "default", "via": gateway}]}
    doc: Manifest = {"apiVersion": "cnetctl/v1", "name": name, "nodes": nodes,
                     "links": [[f"pod{i}:eth0", "host:cbr0"] for i in range(pods)]}
    if checks:
        doc["checks"] = _bridge_checks(pods, gateway)
    return doc


def _bridge_checks(pods: int, gateway: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"ping": {"from": f"pod{i}", "to": gateway}} for i in range(pods)]
    if pods >= 2:
        sample = [f"pod{i}" for i in range(min(pods, MESH_SAMPLE))]
        out.append({"mesh": {"nodes": sample, "family": "ipv4"}})
        out.append({"source": {"from": "pod0", "to": f"pod{pods - 1}:eth0", "expect": "preserved"}})
    out.append({"ping": {"from": "pod0", "to": _host(BRIDGE_SUBNET, pods + 2), "expect": "unreachable"}})
    return out


def check_k8s_args(nodes: int, pods_per_node: int, mode: str, name: str, hosts: int | None) -> None:
    _check_name(name)
    if mode not in MODES:
        raise GenerateError(f"--mode {mode!r}: one of {', '.join(MODES)}")
    _check_count("--nodes", nodes, MAX_K8S_NODES, f"node N owns the pod CIDR 10.244.N.0/24 in {POD_SUPERNET}")
    _check_count("--pods-per-node", pods_per_node, MAX_PODS_PER_NODE,
                 "a node's pods are 10.244.N.2 .. 10.244.N.254")
    if hosts is not None:
        _check_count("--hosts", hosts, min(nodes, MAX_MACHINES),
                     "every machine holds at least one node" if hosts > nodes else
                     f"the machines' addresses are 192.0.2.11 .. 192.0.2.{10 + MAX_MACHINES}")


def k8s(nodes: int, pods_per_node: int, mode: str = "host-gw", name: str = "k8s",
        hosts: int | None = None) -> Manifest:
    """The Kubernetes pod network: each node a namespace with a pod bridge and a /24 pod
    CIDR, the nodes on one underlay bridge, every pod reaching every pod by its own IP.

    host-gw: each node routes the other nodes' pod CIDRs via their underlay addresses,
    in table `pods` chosen by a policy rule for the pod supernet (routes and rules).
    vxlan: flannel's VXLAN backend: a VTEP `flannel.1` per node (address 10.244.N.0/32,
    a fixed MAC), and for every other node an onlink route to its pod CIDR via its VTEP
    address, a static neighbour (VTEP address -> MAC) and a forwarding entry (MAC ->
    underlay address); no learning, no multicast.
    hosts: the nodes spread over that many machines (`hosts:` and `on:`)."""
    check_k8s_args(nodes, pods_per_node, mode, name, hosts)
    machines = [f"machine{k}" for k in range(1, (hosts or 0) + 1)]
    doc: Manifest = {"apiVersion": "cnetctl/v1", "name": name}
    if mode == "host-gw":
        doc["tables"] = {"pods": 100}
    if machines:
        doc["hosts"] = {m: {"address": _machine_ip(k)} for k, m in enumerate(machines, 1)}
        doc["nodes"] = {m: _machine(k, len(machines)) for k, m in enumerate(machines, 1)}
    else:
        doc["nodes"] = {"host": {"bridges": {"underlay": {}}}}
    doc["links"] = []
    pod_mtu = _pod_mtu(mode, bool(machines))
    for n in range(1, nodes + 1):
        where = machines[(n - 1) * len(machines) // nodes] if machines else None
        node = _k8s_node(n, nodes) if mode == "host-gw" else _vxlan_node(n, nodes, bool(machines))
        if where:
            node = {"on": where, **node}
            node["interfaces"]["eth0"]["mtu"] = STITCH_MTU
        doc["nodes"][f"node{n}"] = node
        doc["links"].append([f"node{n}:eth0", f"{where or 'host'}:underlay"])
        for p in range(pods_per_node):
            pod = f"pod{n}-{p}"
            eth0: dict[str, Any] = {"addresses": [f"{_pod_ip(n, p)}/24"]}
            if pod_mtu:
                eth0["mtu"] = pod_mtu
            doc["nodes"][pod] = {**({"on": where} if where else {}), "interfaces": {"eth0": eth0},
                                 "routes": [{"to": "default", "via": _pod_ip(n, -1)}]}
            doc["links"].append([f"{pod}:eth0", f"node{n}:cbr0"])
    doc["checks"] = (_k8s_checks(nodes, pods_per_node, _node_ip(nodes), "eth0", "pods") if mode == "host-gw"
                     else _vxlan_checks(nodes, pods_per_node))
    if machines:
        doc["checks"] = _sources_on_one_machine(doc)
    return doc


def _sources_on_one_machine(doc: Manifest) -> list[dict[str, Any]]:
    """A `source` check runs on one machine, both ends there: across machines, aim it at the
    first pod of the last other node on the sender's machine (still node to node, no NAT
    between), or leave it out when the sender's node is alone on its machine."""
    nodes = doc["nodes"]
    out = []
    for check in doc["checks"]:
        spec = check.get("source")
        if spec is not None:
            where = nodes[spec["from"]]["on"]
            if nodes[spec["to"].split(":")[0]]["on"] != where:
                sender_node = spec["from"].split("-")[0].replace("pod", "node")
                peers = [n for n, v in nodes.items() if n.startswith("node") and v.get("on") == where
                         and n != sender_node]
                if not peers:
                    continue
                check = {"source": {**spec, "to": f"{peers[-1].replace('node', 'pod')}-0:eth0"}}
        out.append(check)
    return out


def _pod_mtu(mode: str, across_machines: bool) -> int | None:
    """Each VXLAN on the path takes 50 bytes: flannel's, and the one joining the machines."""
    return (STITCH_MTU if mode == "host-gw" else STITCH_MTU - 50) if across_machines else \
        (None if mode == "host-gw" else 1450)


def _pod_ip(node: int, pod: int) -> str:
    """pod -1 is the node's gateway address on its cbr0."""
    return f"10.244.{node}.{pod + 2}"


def _node_ip(node: int) -> str:
    return _host(UNDERLAY, node + 10)


def _machine_ip(k: int) -> str:
    return _host(MACHINES, k + 10)


def _machine(k: int, machines: int) -> dict[str, Any]:
    """Machine K's root namespace: the nodes' underlay bridge, joined to machine1's (K > 1) or
    to every other machine's (machine1) by a point-to-point VXLAN enslaved to it."""
    peers = range(2, machines + 1) if k == 1 else [1]
    vxlans = {f"ulvx{p}": {"vni": STITCH_VNI + max(k, p), "port": STITCH_PORT, "local": _machine_ip(k),
                           "remote": _machine_ip(p), "mtu": STITCH_MTU, "master": "underlay"} for p in peers}
    return {"bridges": {"underlay": {}}, **({"vxlans": vxlans} if vxlans else {})}


def _k8s_node(n: int, nodes: int) -> dict[str, Any]:
    routes = [{"to": f"10.244.{m}.0/24", "via": _node_ip(m), "table": "pods"}
              for m in range(1, nodes + 1) if m != n]
    return {"sysctls": {"net.ipv4.ip_forward": 1},
            "interfaces": {"eth0": {"addresses": [f"{_node_ip(n)}/{UNDERLAY.prefixlen}"]}},
            "bridges": {"cbr0": {"addresses": [f"{_pod_ip(n, -1)}/24"]}},
            "routes": routes,
            "rules": [{"to": str(POD_SUPERNET), "table": "pods", "priority": 1000}] if routes else []}


def _vtep_ip(node: int) -> str:
    return f"10.244.{node}.0"


def _vtep_mac(node: int) -> str:
    """02:42 (locally administered, as Docker's) then the pod CIDR's first three bytes."""
    return f"02:42:0a:f4:{node:02x}:00"


def _vxlan_node(n: int, nodes: int, across_machines: bool) -> dict[str, Any]:
    others = [m for m in range(1, nodes + 1) if m != n]
    vtep: dict[str, Any] = {"vni": VXLAN_VNI, "port": VXLAN_PORT, "local": _node_ip(n), "dev": "eth0",
                            "learning": False, "mtu": 1450 - (50 if across_machines else 0),
                            "mac": _vtep_mac(n), "addresses": [f"{_vtep_ip(n)}/32"]}
    if others:
        vtep["fdb"] = [{"mac": _vtep_mac(m), "dst": _node_ip(m)} for m in others]
    node: dict[str, Any] = {
        "sysctls": {"net.ipv4.ip_forward": 1},
        "interfaces": {"eth0": {"addresses": [f"{_node_ip(n)}/{UNDERLAY.prefixlen}"]}},
        "bridges": {"cbr0": {"addresses": [f"{_pod_ip(n, -1)}/24"]}},
        "vxlans": {"flannel.1": vtep}}
    if others:
        node["neighbors"] = [{"dev": "flannel.1", "ip": _vtep_ip(m), "mac": _vtep_mac(m)} for m in others]
        node["routes"] = [{"to": f"10.244.{m}.0/24", "via": _vtep_ip(m), "dev": "flannel.1", "onlink": True}
                          for m in others]
    return node


def _gateway_pings(nodes: int, pods_per_node: int) -> list[dict[str, Any]]:
    return [{"ping": {"from": f"pod{n}-{p}", "to": _pod_ip(n, -1)}}
            for n in range(1, nodes + 1) for p in range(pods_per_node)]


def _across(nodes: int) -> list[dict[str, Any]]:
    """Pod to pod by their own addresses: a mesh of each node's first pod, and no NAT between."""
    firsts = [f"pod{n}-0" for n in range(1, nodes + 1)][:MESH_SAMPLE]
    return [{"mesh": {"nodes": firsts, "family": "ipv4"}},
            {"source": {"from": "pod1-0", "to": f"pod{nodes}-0:eth0", "expect": "preserved"}}]


def _k8s_checks(nodes: int, pods_per_node: int, via: str, dev: str, table: str) -> list[dict[str, Any]]:
    """Every pod its gateway, pods across nodes, and the route node1 takes to the last node's first
    pod: over `dev` to `via`, found in `table` (the underlay for host-gw, the VTEP for vxlan)."""
    out = _gateway_pings(nodes, pods_per_node)
    if nodes >= 2:
        out += _across(nodes)
        out.append({"route": {"node": "node1", "to": _pod_ip(nodes, 0), "from": _pod_ip(1, 0), "iif": "cbr0",
                              "expect": {"via": via, "dev": dev, "table": table}}})
    return out


def _vxlan_checks(nodes: int, pods_per_node: int) -> list[dict[str, Any]]:
    out = _k8s_checks(nodes, pods_per_node, _vtep_ip(nodes), "flannel.1", "main")
    # A pod CIDR no node owns goes nowhere.
    out.append({"ping": {"from": "pod1-0", "to": _pod_ip(nodes + 1, 0), "expect": "unreachable"}})
    return out


def _has_entries(value: Any) -> bool:
    """Holds, at any depth, a list of mappings."""
    if isinstance(value, dict):
        return any(_has_entries(v) for v in value.values())
    if isinstance(value, list):
        return any(isinstance(v, dict) for v in value) or any(_has_entries(v) for v in value)
    return False


def to_yaml(doc: Manifest, comment: str | None = None) -> str:
    """Block style for the structure, flow style for the leaves: one line per pod route.
    `comment` (lines) goes first, as `# ` lines."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    def convert(value: Any, depth: int) -> Any:
        if isinstance(value, dict):
            out = CommentedMap((k, convert(v, depth + 1)) for k, v in value.items())
            # A list of entries (a VXLAN's fdb) stays one entry per line, also deep down.
            if (depth >= 3 and not _has_entries(value)) or not any(isinstance(v, dict | list) for v in value.values()):
                out.fa.set_flow_style()
            return out
        if isinstance(value, list):
            seq = CommentedSeq(convert(v, depth + 1) for v in value)
            if all(not isinstance(v, dict | list) for v in value):
                seq.fa.set_flow_style()
            return seq
        return value

    yaml = YAML()
    yaml.width = 160
    buf = io.StringIO()
    if comment:
        buf.write("".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines()))
    yaml.dump(convert(doc, 0), buf)
    return buf.getvalue()
