"""Manifests made by program: N pods on a bridge, and the Kubernetes-style pod network.

Pure functions returning the manifest as plain data (what the YAML loader would
give), so that `cnetctl generate`, the benchmarks and the tests share one source.
"""

from __future__ import annotations

import ipaddress
from typing import Any

Manifest = dict[str, Any]

BRIDGE_SUBNET = ipaddress.IPv4Network("10.220.0.0/16")
UNDERLAY = ipaddress.IPv4Network("10.240.0.0/16")
POD_SUPERNET = ipaddress.IPv4Network("10.244.0.0/16")
MESH_SAMPLE = 8   # a mesh of n nodes is n*(n-1) pings: beyond a sample, pings to gateways prove each pod


def _host(net: ipaddress.IPv4Network, index: int) -> str:
    return str(net.network_address + index)


def bridge(pods: int, name: str = "pods", checks: bool = True) -> Manifest:
    """`pods` namespaces on one host bridge (docker0/cbr0 style), each with a default route."""
    if not 1 <= pods <= BRIDGE_SUBNET.num_addresses - 3:
        raise ValueError(f"pods must be 1..{BRIDGE_SUBNET.num_addresses - 3}")
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


def k8s(nodes: int, pods_per_node: int, mode: str = "host-gw", name: str = "k8s") -> Manifest:
    """The Kubernetes pod network: each node a namespace with a pod bridge and a /24 pod
    CIDR, the nodes on one underlay bridge, every pod reaching every pod by its own IP.

    host-gw: each node routes the other nodes' pod CIDRs via their underlay addresses,
    in table `pods` chosen by a policy rule for the pod supernet (routes and rules)."""
    if mode != "host-gw":
        raise ValueError(f"mode {mode!r} is not available yet (host-gw)")
    if not 1 <= nodes <= 250 or not 1 <= pods_per_node <= 250:
        raise ValueError("nodes and pods-per-node must be 1..250")
    doc: Manifest = {"apiVersion": "cnetctl/v1", "name": name, "tables": {"pods": 100},
                     "nodes": {"host": {"bridges": {"underlay": {}}}}, "links": []}
    for n in range(1, nodes + 1):
        doc["nodes"][f"node{n}"] = _k8s_node(n, nodes)
        doc["links"].append([f"node{n}:eth0", "host:underlay"])
        for p in range(pods_per_node):
            pod = f"pod{n}-{p}"
            doc["nodes"][pod] = {"interfaces": {"eth0": {"addresses": [f"{_pod_ip(n, p)}/24"]}},
                                 "routes": [{"to": "default", "via": _pod_ip(n, -1)}]}
            doc["links"].append([f"{pod}:eth0", f"node{n}:cbr0"])
    doc["checks"] = _k8s_checks(nodes, pods_per_node)
    return doc


def _pod_ip(node: int, pod: int) -> str:
    """pod -1 is the node's gateway address on its cbr0."""
    return f"10.244.{node}.{pod + 2}"


def _node_ip(node: int) -> str:
    return _host(UNDERLAY, node + 10)


def _k8s_node(n: int, nodes: int) -> dict[str, Any]:
    routes = [{"to": f"10.244.{m}.0/24", "via": _node_ip(m), "table": "pods"}
              for m in range(1, nodes + 1) if m != n]
    return {"sysctls": {"net.ipv4.ip_forward": 1},
            "interfaces": {"eth0": {"addresses": [f"{_node_ip(n)}/{UNDERLAY.prefixlen}"]}},
            "bridges": {"cbr0": {"addresses": [f"{_pod_ip(n, -1)}/24"]}},
            "routes": routes,
            "rules": [{"to": str(POD_SUPERNET), "table": "pods", "priority": 1000}] if routes else []}


def _k8s_checks(nodes: int, pods_per_node: int) -> list[dict[str, Any]]:
    firsts = [f"pod{n}-0" for n in range(1, nodes + 1)][:MESH_SAMPLE]
    out: list[dict[str, Any]] = [{"ping": {"from": f"pod{n}-{p}", "to": _pod_ip(n, -1)}}
                                 for n in range(1, nodes + 1) for p in range(pods_per_node)]
    if len(firsts) >= 2:
        out.append({"mesh": {"nodes": firsts, "family": "ipv4"}})
        out.append({"source": {"from": "pod1-0", "to": f"pod{nodes}-0:eth0", "expect": "preserved"}})
        out.append({"route": {"node": "node1", "to": _pod_ip(nodes, 0), "from": _pod_ip(1, 0), "iif": "cbr0",
                              "expect": {"via": _node_ip(nodes), "dev": "eth0", "table": "pods"}}})
    return out


def to_yaml(doc: Manifest) -> str:
    """Block style for the structure, flow style for the leaves: one line per pod route."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    def convert(value: Any, depth: int) -> Any:
        if isinstance(value, dict):
            out = CommentedMap((k, convert(v, depth + 1)) for k, v in value.items())
            if depth >= 3 or not any(isinstance(v, dict | list) for v in value.values()):
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
    yaml.dump(convert(doc, 0), buf)
    return buf.getvalue()
