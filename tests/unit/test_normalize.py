"""Topology -> DesiredState: defaults, generated names, references (pure, no root)."""

from __future__ import annotations

import inspect
import json
import os
import socket
from pathlib import Path

import pytest

from cnetctl.load import load_topology_text
from cnetctl.model.linkkinds import VethSpec
from cnetctl.model.resources import Address, Link, Nat, Netns, Route, Rule, Sysctl
from cnetctl.normalize import STAGES, Normalizer, Stage, generated_ifname, normalize

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


# --- the stages, one at a time (issue 9) -------------------------------------------------------

def stages_of(text: str, backend: str | None = None) -> Normalizer:
    topo, src = load_topology_text(text, "t.yaml")
    return Normalizer(topo, src, backend)


def run_until(n: Normalizer, last: Stage) -> Normalizer:
    """Run the stages in order, up to and including `last`."""
    for stage in STAGES[:STAGES.index(last) + 1]:
        stage(n)
    return n


def test_stages_are_named_in_order_and_small():
    assert [s.__name__ for s in STAGES] == [
        "on_hosts", "namespaces", "links", "tunnels", "declared", "bridges_and_interfaces", "veths", "vxlans",
        "all_addresses", "neighbors",
        "sysctls",
        "routes_and_rules", "check_references", "nat"]
    for stage in STAGES:
        lines, _ = inspect.getsourcelines(stage)
        assert len(lines) <= 50, f"{stage.__name__} has {len(lines)} lines"


def test_running_every_stage_is_normalize():
    n = run_until(stages_of(BASE, "nftables"), STAGES[-1])
    assert not n.err
    assert n.state.resources == desired(BASE, "nftables").resources


def test_namespaces_stage_alone():
    n = stages_of(BASE)
    n.namespaces()
    assert n.nodes == {"host": None, "ns1": "lab-ns1", "ns2": "custom-ns"}
    assert n.resources == [] and not n.err
    clash = BASE.replace("    netns: custom-ns\n", "    netns: lab-ns1\n")
    n = stages_of(clash)
    n.namespaces()
    assert [p.message for p in n.err.problems] == ["netns 'lab-ns1' is already used by node 'ns1'"]


def test_sysctls_stage_alone_keeps_one_spelling_per_key():
    text = BASE.replace("sysctls: {net.ipv4.ip_forward: 1}",
                        "sysctls: {net.ipv4.ip_forward: 1, net/ipv4/ip_forward: 0, net.ipv4.conf.all.rp_filter: true}")
    n = stages_of(text)
    n.namespaces()
    n.sysctls()
    assert n.resources == [Sysctl(None, "net.ipv4.ip_forward", "1"), Sysctl(None, "net.ipv4.conf.all.rp_filter", "1")]
    (problem,) = n.err.problems
    assert problem.path == 'nodes.host.sysctls["net/ipv4/ip_forward"]' and problem.line == 7


def test_rules_of_one_node_from_parsed_values():
    n = stages_of(BASE.replace("{fwmark: 0x10, table: 200}", "{fwmark: 0x10/0xff, table: 200, priority: 5}"))
    n.namespaces()
    n.rules("ns1", n.topo.nodes["ns1"])
    fw = next(r for r in n.resources if isinstance(r, Rule) and r.priority == 5)
    assert (fw.family, fw.fwmark, fw.fwmask, fw.table) == (socket.AF_INET, 0x10, 0xFF, 200)
    assert [r.priority for r in n.resources] == [1000, 5, 32000]   # the unprioritised one counts from 32000


def test_routes_stage_after_what_it_reads():
    n = run_until(stages_of(BASE), Normalizer.all_addresses)
    n.routes("ns1", n.topo.nodes["ns1"])
    assert {(r.dst, r.family) for r in n.resources if isinstance(r, Route)} == {
        ("0.0.0.0/0", socket.AF_INET), ("10.1.0.0/16", socket.AF_INET), ("10.9.0.0/16", socket.AF_INET),
        ("fd00:99::/64", socket.AF_INET6), ("10.2.0.0/16", socket.AF_INET)}
    mixed = BASE.replace("{to: 10.2.0.0/16, dev: eth0}", '{to: "fd00:98::/64", via: 192.168.20.253}')
    n = run_until(stages_of(mixed), Normalizer.all_addresses)
    n.routes("ns1", n.topo.nodes["ns1"])
    assert [p.message for p in n.err.problems] == [
        "mixes IPv4 and IPv6: to fd00:98::/64 is IPv6, via 192.168.20.253 is IPv4"]


def test_nat_stage_is_pure(monkeypatch):
    """normalize asks nothing of the host: `auto` stays `auto` unless the caller resolved it."""
    import cnetctl.kernel.nat as knat

    def detect() -> str:
        raise AssertionError("normalize must not look at the host")
    monkeypatch.setattr(knat, "detect_backend", detect)
    n = stages_of(BASE)
    n.namespaces()
    n.nat()
    (nat,) = n.resources
    assert isinstance(nat, Nat) and nat.backend == "auto" and n.state.nat_backend == "auto"
    assert {r.backend for r in desired(BASE, "iptables").resources if isinstance(r, Nat)} == {"iptables"}


def test_the_api_resolves_auto_before_normalize(monkeypatch):
    from cnetctl import api
    monkeypatch.setattr(api, "detect_backend", lambda: "iptables")
    topo, _ = load_topology_text(BASE, "t.yaml")
    assert api.resolve_nat_backend(topo, None) == "iptables"          # settings.nat_backend: auto
    assert api.resolve_nat_backend(topo, "auto") == "iptables"
    assert api.resolve_nat_backend(topo, "nftables") == "nftables"
    no_nat, _ = load_topology_text(BASE.split("    nat:\n")[0] + "  ns9: {}\n", "t.yaml")
    assert api.resolve_nat_backend(no_nat, None) == "auto"           # nothing to put anywhere: not asked


def test_fwmark_is_parsed_once_in_the_model():
    from cnetctl.model.topology import Fwmark, RouteCheck, RuleSpec
    rule = RuleSpec.model_validate({"fwmark": "0x10/0xff", "table": 1})
    assert rule.fwmark == Fwmark(0x10, 0xFF) and rule.fwmark.rule_mask == 0xFF
    assert RuleSpec.model_validate({"fwmark": 16, "table": 1}).fwmark == Fwmark(0x10, None)
    assert Fwmark(0x10).rule_mask == 0xFFFFFFFF
    check = RouteCheck.model_validate({"node": "a", "to": "10.0.0.1", "fwmark": "16/255", "expect": {}})
    assert check.fwmark is not None and check.fwmark.value == 0x10
    # A report quotes it as written, in hex (the JSON Schema still says: an integer or a string).
    assert check.model_dump(by_alias=True, exclude_none=True, mode="json")["fwmark"] == "0x10/0xff"
    schema = RuleSpec.model_json_schema(by_alias=True)["properties"]["fwmark"]
    assert schema["anyOf"] == [{"type": "integer"}, {"type": "string"}, {"type": "null"}]


def test_source_locates_a_missing_key_on_its_parent():
    from cnetctl.source import Source, format_path
    src = Source("t.yaml", {(): 1, ("nodes",): 3, ("nodes", "ns1"): 4})
    assert src.line_of(("nodes", "ns1", "routes", 0)) == 4
    assert src.problem(("nodes", "ns1", "sysctls", "net.ipv4.x"), "m").render("t.yaml") == \
        't.yaml:4: nodes.ns1.sysctls["net.ipv4.x"]: m'
    assert format_path(("links", 0, 1)) == "links[0][1]"
