"""NAT rules as data (cnetctl/nat_rules.py), pinned by golden files without root.

What each backend writes for a namespace's NAT, from the manifest's YAML through
normalize to the libnftables JSON batches and the python-iptables rules: for every
example manifest with NAT and for hand-made cases. CNETCTL_UPDATE_GOLDEN=1 rewrites
the files under tests/golden/nat/ (then read the diff: it is what the kernel gets).

The canonical rule texts are also pinned literally: they are the comments in the
kernel, and rules written by earlier versions are read back through them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from cnetctl import owner_label
from cnetctl.load import load_topology_text
from cnetctl.model.natspec import DnatTarget, NatSpec
from cnetctl.model.resources import Nat, where
from cnetctl.model.topology import Topology
from cnetctl.nat_rules import (
    forward_subnets,
    ipt_forward_chain,
    ipt_nat_chains,
    nft_apply_commands,
    nft_create_table,
    nft_delete_commands,
    nft_forward_commands,
)
from cnetctl.normalize import normalize

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "nat"

# name -> (the node's `nat:` list as written in a manifest, the canonical texts earlier versions wrote)
CASES: dict[str, tuple[list[dict[str, Any]], list[str]]] = {
    "masquerade-not-iface": (
        [{"masquerade": {"source": "10.17.0.0/24", "out_interface": "!br0"}}],
        ["masquerade source=10.17.0.0/24 out_interface=!br0"]),
    "masquerade-any-iface-v4-v6": (
        [{"masquerade": {"source": "fd00:17::/64"}}, {"masquerade": {"source": "10.17.0.0/24"}}],
        ["masquerade source=10.17.0.0/24", "masquerade source=fd00:17::/64"]),
    "snat": (
        [{"snat": {"source": "10.1.0.0/16", "to_source": "192.0.2.1", "out_interface": "wan0"}}],
        ["snat source=10.1.0.0/16 out_interface=wan0 to_source=192.0.2.1"]),
    "dnat-with-destination": (
        [{"dnat": {"destination": "10.200.0.1", "protocol": "tcp", "port": 8080, "to": "10.17.0.2:80"}}],
        ["dnat destination=10.200.0.1 protocol=tcp port=8080 to=10.17.0.2:80"]),
    # No destination: the OUTPUT copy is limited to local destinations; in_interface is PREROUTING's only.
    "dnat-local-only-output-copy": (
        [{"dnat": {"in_interface": "wan0", "protocol": "tcp", "port": 8443, "to": "172.18.0.3:443"}}],
        ["dnat in_interface=wan0 protocol=tcp port=8443 to=172.18.0.3:443"]),
    "dnat-without-port": (
        [{"dnat": {"destination": "10.9.0.0/24", "in_interface": "!br0", "protocol": "udp", "port": 53,
                   "to": "10.17.0.9"}}],
        ["dnat destination=10.9.0.0/24 in_interface=!br0 protocol=udp port=53 to=10.17.0.9"]),
    "dnat-v6": (
        [{"dnat": {"destination": "fd00::1", "protocol": "tcp", "port": 80, "to": "[fd00::2]:8080"}},
         {"dnat": {"protocol": "udp", "port": 5353, "to": "fd00::3"}}],
        ["dnat destination=fd00::1 protocol=tcp port=80 to=[fd00::2]:8080",
         "dnat protocol=udp port=5353 to=fd00::3"]),
    "mixed": (
        [{"masquerade": {"source": "10.17.0.0/24", "out_interface": "!br0"}},
         {"dnat": {"protocol": "tcp", "port": 8080, "to": "10.17.0.2:80"}},
         {"snat": {"source": "fd00:17::/64", "to_source": "fd00::1"}},
         {"dnat": {"destination": "fd00::1", "protocol": "tcp", "port": 443, "to": "[fd00:17::2]:8443"}}],
        ["dnat protocol=tcp port=8080 to=10.17.0.2:80",
         "dnat destination=fd00::1 protocol=tcp port=443 to=[fd00:17::2]:8443",
         "masquerade source=10.17.0.0/24 out_interface=!br0",
         "snat source=fd00:17::/64 to_source=fd00::1"]),
}


def nat_of(text: str) -> tuple[str, list[Nat]]:
    topo, src = load_topology_text(text, "t.yaml")
    return topo.name, [r for r in normalize(topo, src, "nftables").resources if isinstance(r, Nat)]


def manifest(rules: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({"apiVersion": "cnetctl/v1", "name": "lab", "nodes": {"host": {"nat": rules}}})


def rules_as_data(topology: str, nat: Nat) -> dict[str, Any]:
    """Everything either backend writes for one namespace's NAT."""
    label, specs = owner_label(topology), [NatSpec.parse(t) for t in nat.rules]
    return {
        "rules": list(nat.rules),
        "nftables": {"create": nft_create_table(topology, label, replace=False),
                     "apply": {"nftables": nft_apply_commands(topology, label, specs)},
                     "delete": {"nftables": nft_delete_commands(topology)}},
        "iptables": {"ip": ipt_nat_chains(topology, label, specs, False),
                     "ip6": ipt_nat_chains(topology, label, specs, True)},
    }


def check_golden(name: str, data: Any) -> None:
    got = json.dumps(data, indent=1, sort_keys=True) + "\n"
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("CNETCTL_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(got)
    assert got == golden.read_text()


MANIFESTS_WITH_NAT = sorted(p.name for p in (ROOT / "manifests").glob("*.yaml") if nat_of(p.read_text())[1])


def test_the_examples_with_nat_are_covered():
    assert "docker-bridge.yaml" in MANIFESTS_WITH_NAT


@pytest.mark.parametrize("name", MANIFESTS_WITH_NAT)
def test_nat_of_each_example_manifest_golden(name):
    topology, nats = nat_of((ROOT / "manifests" / name).read_text())
    check_golden("manifest-" + name.removesuffix(".yaml"), {where(n.ns): rules_as_data(topology, n) for n in nats})


@pytest.mark.parametrize("case", sorted(CASES))
def test_nat_of_hand_made_cases_golden(case):
    rules, texts = CASES[case]
    topology, (nat,) = nat_of(manifest(rules))
    assert list(nat.rules) == texts  # the comments in the kernel, as earlier versions wrote them
    check_golden(case, rules_as_data(topology, nat))


def test_forward_accepts_golden():
    subnets = ("10.17.0.0/24", "fd00:17::/64", "10.18.0.0/24")
    label = owner_label("lab")
    check_golden("forward", {
        "nftables": {where_: {"nftables": nft_forward_commands(where_, label, subnets, [4, 9])}
                     for where_ in ("nft:ip filter FORWARD", "nft:ip6 filter FORWARD", "nft:inet filter forward")},
        "nftables-delete": {"nftables": nft_forward_commands("nft:inet filter forward", label, (), [4, 9])},
        "iptables": {"ip": ipt_forward_chain("lab", label, list(subnets), False),
                     "ip6": ipt_forward_chain("lab", label, list(subnets), True),
                     "none": ipt_forward_chain("lab", label, [], False)},
    })


def test_an_unmarked_table_is_replaced_by_the_create_command():
    assert nft_create_table("lab", "cnetctl:lab", replace=True) == \
        'delete table inet cnetctl-lab\nadd table inet cnetctl-lab { comment "cnetctl:lab" ; }'


def test_forward_families_are_told_by_ipaddress():
    subnets = ("10.17.0.0/24", "fd00:17::/64", "::ffff:10.0.0.0/120")
    assert forward_subnets("iptables:filter FORWARD", subnets) == ("10.17.0.0/24",)
    assert forward_subnets("nft:ip6 t c", subnets) == ("fd00:17::/64", "::ffff:10.0.0.0/120")
    assert forward_subnets("nft:inet t c", subnets) == subnets


# --- the DNAT target: parsed once, at the YAML boundary -------------------------------------------------
@pytest.mark.parametrize("text, addr, port", [
    ("10.17.0.2", "10.17.0.2", None), ("10.17.0.2:80", "10.17.0.2", 80), ("fd00::2", "fd00::2", None),
    ("[fd00::2]:8080", "fd00::2", 8080), ("fd00::2:80", "fd00::2:80", None),  # no brackets: all address
])
def test_the_dnat_target_is_split_into_address_and_port(text, addr, port):
    target = DnatTarget.parse(text)
    assert (target.addr, target.port) == (addr, port) and target.text() == text
    topology, (nat,) = nat_of(manifest([{"dnat": {"protocol": "tcp", "port": 1, "to": text}}]))
    spec = NatSpec.parse(nat.rules[0])
    assert (spec.to_addr, spec.to_port) == (addr, port) and nat.rules[0].endswith(f" to={text}")


def test_the_manifest_model_holds_the_parsed_target_and_its_schema_a_string():
    topo, _ = load_topology_text(manifest([{"dnat": {"protocol": "tcp", "port": 1, "to": "[fd00::2]:8080"}}]), "t")
    dnat = topo.nodes["host"].nat[0].dnat
    assert dnat is not None and dnat.to == DnatTarget("fd00::2", 8080)
    assert Topology.model_json_schema(by_alias=True)["$defs"]["Dnat"]["properties"]["to"]["type"] == "string"


@pytest.mark.parametrize("written, canonical", [
    ("dnat protocol=tcp port=80 to=[FD00:0::2]:8080", "dnat protocol=tcp port=80 to=[fd00::2]:8080"),
    ("dnat protocol=tcp port=80 to=[10.0.0.2]:080", "dnat protocol=tcp port=80 to=10.0.0.2:80"),
])
def test_odd_spellings_in_older_comments_read_back_as_the_canonical_rule(written, canonical):
    """Earlier versions wrote the target as the manifest spelled it: such a rule is the same rule."""
    assert NatSpec.parse(written) == NatSpec.parse(canonical) and NatSpec.parse(written).text() == canonical
    spelled = written.split("to=")[1]
    _, (nat,) = nat_of(manifest([{"dnat": {"protocol": "tcp", "port": 80, "to": spelled}}]))
    assert nat.rules == (canonical,)


def test_a_comment_with_a_broken_target_is_no_rule_of_ours():
    for bad in ("dnat protocol=tcp port=80 to=ns2:eth0", "dnat protocol=tcp port=80 to=10.0.0.2:0"):
        with pytest.raises(ValueError):
            NatSpec.parse(bad)
