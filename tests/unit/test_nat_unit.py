"""NAT pure logic: rule texts, the OUTPUT copy of a published port, backend choice, how plans show rules."""

from __future__ import annotations

import pytest

from cnetctl import render
from cnetctl.api import nat_backend_for
from cnetctl.load import load_topology_text
from cnetctl.model.natspec import NatSpec, canonical_order, spec_from_comment
from cnetctl.model.resources import Nat
from cnetctl.nat_rules import NFT_LOCAL_DADDR, nft_rule_exprs
from cnetctl.plan import Action, Plan, plan

PUBLISHED = NatSpec("dnat", in_interface="wan0", protocol="tcp", port=8443, to_addr="172.18.0.3", to_port=443)
PINNED = NatSpec("dnat", destination="10.200.0.1", protocol="tcp", port=8080, to_addr="10.17.0.2", to_port=80)
MASQ = NatSpec("masquerade", source="10.17.0.0/24", out_interface="!docker0")
V6 = NatSpec("dnat", destination="fd00::1", protocol="tcp", port=80, to_addr="fd00:17::2", to_port=8080)


def test_only_the_output_copy_of_a_dnat_without_destination_is_limited_to_local_destinations():
    assert NFT_LOCAL_DADDR in nft_rule_exprs(PUBLISHED, "OUT")
    assert NFT_LOCAL_DADDR not in nft_rule_exprs(PUBLISHED, "PRE")  # arriving traffic: any destination
    assert NFT_LOCAL_DADDR not in nft_rule_exprs(PINNED, "OUT")     # its destination already limits it
    assert PUBLISHED.output_local_only and not PINNED.output_local_only and not MASQ.output_local_only


def test_unknown_rules_are_records_that_never_crash_and_never_equal_a_declared_rule():
    odd = NatSpec.unknown("output copy without local limit")
    assert NatSpec.parse(odd.text()) == odd and odd.text() == "unknown note=output-copy-without-local-limit"
    assert odd.family == 4 and odd.hooks == ("POST",)
    assert canonical_order([odd, PUBLISHED]) == (PUBLISHED, odd)
    for bad in ("unknown foreign-rule", "unknown jumps=0", "dnat port=x"):
        with pytest.raises(ValueError):
            NatSpec.parse(bad)


def test_only_rule_comments_of_the_topology_become_rules():
    assert spec_from_comment("cnetctl:lab", f"cnetctl:lab {MASQ.text()}") == MASQ
    for comment in ("cnetctl:lab owner", "cnetctl:lab forward 10.0.0.0/24", "cnetctl:lab unknown note=x",
                    f"cnetctl:labx {MASQ.text()}", "user rule", None):
        assert spec_from_comment("cnetctl:lab", comment) is None


def topology(settings: str = ""):
    text = f"apiVersion: cnetctl/v1\nname: t\n{settings}nodes:\n  a: {{}}\n"
    return load_topology_text(text, "t.yaml")[0]


@pytest.mark.parametrize("settings, flag, last, chosen", [
    ("", None, None, None),                                          # auto: the host's flavour
    ("", None, "iptables", "iptables"),                              # the last apply's backend stays
    ("settings: {nat_backend: auto}\n", None, "iptables", "iptables"),
    ("", None, "auto", None),                                        # a last apply without NAT: auto
    ("settings: {nat_backend: nftables}\n", None, "iptables", "nftables"),  # the manifest names one
    ("settings: {nat_backend: nftables}\n", "iptables", None, "iptables"),  # the flag wins
    ("", "auto", "iptables", "auto"),                                # --nat-backend auto re-detects
])
def test_which_nat_backend_plan_and_apply_use(settings, flag, last, chosen):
    assert nat_backend_for(topology(settings), flag, last) == chosen


def text_of(p: Plan) -> str:
    with render.console.capture() as cap:
        render.print_plan(p, "t")
    return cap.get()


def test_a_nat_resource_shows_its_rules_one_per_line():
    nat = Nat(None, "nftables", (PUBLISHED.text(), V6.text(), MASQ.text()))
    out = text_of(plan([nat], []))
    assert out.splitlines()[:4] == ["+ nat (nftables, table inet cnetctl-…) in host: 3 rules",
                                    f"    {PUBLISHED.text()}", f"    {V6.text()}", f"    {MASQ.text()}"]
    assert "to=[fd00:17::2]:8080" in out  # not taken for rich markup


def test_an_update_shows_which_rules_are_added_and_removed():
    old = Nat(None, "iptables", (PINNED.text(), MASQ.text()))
    new = Nat(None, "iptables", (PUBLISHED.text(), MASQ.text()))
    (action,) = plan([new], [old]).actions
    assert action.describe().splitlines() == ["~ nat (iptables, chains CNET-…) in host: 2 rules",
                                              f"  - {PINNED.text()}", f"  + {PUBLISHED.text()}", f"    {MASQ.text()}"]
    assert action.to_json()["changes"] == {"rules": {"old": list(old.rules), "new": list(new.rules)}}
    swapped = Action("update", Nat(None, "iptables", (MASQ.text(), PINNED.text())), old)
    assert "(rules reordered)" in swapped.describe().splitlines()[0]
