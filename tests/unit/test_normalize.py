"""Topology -> DesiredState: defaults, generated names, references (pure, no root)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from cnetctl.load import load_topology_text
from cnetctl.model.linkkinds import VethSpec
from cnetctl.model.resources import Address, Link, Nat, Netns, Route, Rule, Sysctl
from cnetctl.normalize import generated_ifname, normalize

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"


def desired(text: str, backend: str | None = None):
    topo, src = load_topology_text(text, "t.yaml")
    return normalize(topo, src, backend)


BASE = """
apiVersion: cnetctl/v1
name: lab
tables: {eth0_table: 200}
nodes:
  host:
    sysctls: {net.ipv4.ip_forward: 1}
    bridges:
      br1: {addresses: [192.168.20.254/24], mtu: 1400}
    nat:
      - {masquerade: {source: 192.168.20.0/24, out_interface: "!br1"}}
      - {dnat: {protocol: tcp, port: 8080, to: "192.168.20.1:80"}}
  ns1:
    interfaces:
      eth0: {addresses: [192.168.20.1/24, "fd00:20::1/64"]}
    routes:
      - {to: default, via: 192.168.20.254}
      - {to: 10.1.0.0/16, via: 192.168.20.253, table: eth0_table, metric: 10}
      - {to: 10.9.0.0/16, type: blackhole}
      - {to: "fd00:99::/64", via: "fd00:20::2"}
      - {to: 10.2.0.0/16, dev: eth0}
    rules:
      - {from: 192.168.20.0/24, table: eth0_table, priority: 1000}
      - {fwmark: 0x10, table: 200}
      - {to: 10.3.0.5, table: main}
  ns2:
    netns: custom-ns
    interfaces:
      eth0: {addresses: [192.168.20.2/24]}
links:
  - [ns1:eth0, host:br1]
  - [ns2:eth0, host:br1]
"""


def test_namespaces_links_and_generated_bridge_ports():
    d = desired(BASE)
    assert d.nodes == {"host": None, "ns1": "lab-ns1", "ns2": "custom-ns"}
    res = d.resources
    assert Netns("lab-ns1") in res and Netns("custom-ns") in res
    port = generated_ifname("lab", "host", "br1/ns1/eth0")
    assert len(port) <= 15 and port.startswith("cn")
    veths = {(r.ns, r.ifname): r for r in res if isinstance(r, Link) and r.kind == "veth"}
    assert veths[("lab-ns1", "eth0")].spec == VethSpec(None, port)
    assert veths[(None, port)].master == "br1" and veths[(None, port)].mtu == 1400  # follows the bridge
    assert Link(None, "br1", "bridge", mtu=1400) in res
    assert Link("lab-ns1", "lo", "lo") in res  # every namespace's lo is brought up and labelled
    assert d.interfaces[("ns1", "eth0")] == "eth0"


def test_route_defaults_follow_the_kernel():
    routes = {(r.ns, r.dst, r.table): r for r in desired(BASE).resources if isinstance(r, Route)}
    default = routes[("lab-ns1", "0.0.0.0/0", 254)]
    assert (default.family, default.metric, default.scope, default.type) == (socket.AF_INET, 0, 0, "unicast")
    assert routes[("lab-ns1", "10.1.0.0/16", 200)].metric == 10            # named table resolved
    assert routes[("lab-ns1", "10.9.0.0/16", 254)].type == "blackhole"
    assert routes[("lab-ns1", "fd00:99::/64", 254)].metric == 1024        # IPv6's default metric
    assert routes[("lab-ns1", "10.2.0.0/16", 254)].scope == 253           # dev-only: scope link, like iproute2


def test_rules_get_stable_priorities_and_full_fwmask():
    rules = [r for r in desired(BASE).resources if isinstance(r, Rule)]
    by_table = {(r.table, r.priority): r for r in rules}
    assert by_table[(200, 1000)].src == "192.168.20.0/24"
    fw = by_table[(200, 32000)]
    assert (fw.fwmark, fw.fwmask) == (0x10, 0xFFFFFFFF)
    assert by_table[(254, 31999)].dst == "10.3.0.5/32"


def test_sysctl_values_and_addresses():
    res = desired(BASE).resources
    assert Sysctl(None, "net.ipv4.ip_forward", "1") in res
    assert Address("lab-ns1", "eth0", "fd00:20::1/64") in res


def test_nat_rules_are_canonical_and_backend_resolved():
    (nat,) = [r for r in desired(BASE, "iptables").resources if isinstance(r, Nat)]
    assert nat.backend == "iptables" and nat.ns is None
    # DNAT (PREROUTING/OUTPUT) before MASQUERADE (POSTROUTING), manifest order inside each.
    assert nat.rules == ("dnat protocol=tcp port=8080 to=192.168.20.1:80",
                         "masquerade source=192.168.20.0/24 out_interface=!br1")


@pytest.mark.parametrize("manifest", sorted(p.name for p in (ROOT / "manifests").glob("*.yaml")))
def test_manifest_desired_state_golden(manifest):
    """YAML -> desired kernel resources, pinned per example (CNETCTL_UPDATE_GOLDEN=1 rewrites)."""
    d = desired((ROOT / "manifests" / manifest).read_text(), "nftables")
    got = json.dumps([r.to_json() for r in d.resources], indent=1, sort_keys=True) + "\n"
    golden = GOLDEN / (manifest.removesuffix(".yaml") + ".json")
    if os.environ.get("CNETCTL_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(got)
    assert got == golden.read_text()
