"""Forward-accepts: coexisting with a FORWARD policy DROP set by someone else.

A DROP verdict in any base chain is final, so an accept in our own table cannot
rescue a forwarded packet (Docker sets FORWARD policy DROP when it enables
ip_forward). The owned, commented ACCEPT rules for the topology's subnets go into
the chain that drops (the DOCKER-USER idea), and leave with destroy:
- nftables: rules inserted at the head of that base chain, commented
  `cnetctl:<name> forward <subnet>` (the rule comments are the ownership: the
  chain is someone else's);
- legacy iptables: our chain CNET-<NAME>-FWD (owner marker and jump as for NAT,
  see iptables.py) jumped to from the filter table's FORWARD.

A chain is named by `where` (see nat_rules.FORWARD_FAMILIES), the key of the
ForwardAccept record.
"""

from __future__ import annotations

from typing import Any

from ...nat_rules import (
    chain_name,
    forward_comment,
    ipt_forward_chain,
    nft_forward_commands,
    nft_forward_place,
    nft_table_name,
    owner_marker,
)
from .iptables import (
    XtablesLock,
    call_in_netns_child,
    ipt_comment,
    ipt_foreign,
    ipt_owner,
    ipt_replace_owned_chain,
    ipt_table,
    legacy_tables,
    load_iptc,
)
from .nftables import nft_list, nft_run

LEGACY_FORWARD = ((False, "iptables:filter FORWARD"), (True, "ip6tables:filter FORWARD"))


def _is_nft(where: str) -> bool:
    return where.startswith("nft:")


# --- where forwarding is dropped ---------------------------------------------------------------------------
def _nft_forward_drop_chains(nft_items: list[dict[str, Any]], topology: str) -> list[str]:
    out = []
    for item in nft_items:
        chain = item.get("chain")
        if chain and chain.get("hook") == "forward" and chain.get("policy") == "drop" \
                and chain.get("table") != nft_table_name(topology):
            out.append(f"nft:{chain['family']} {chain['table']} {chain['name']}")
    return out


def _ipt_forward_policy_child(v6: bool) -> str | None:
    iptc = load_iptc()
    if "filter" not in legacy_tables(None, v6):
        return None  # looking must not instantiate the table
    table = ipt_table(iptc, "filter", v6)
    policy = iptc.Chain(table, "FORWARD").get_policy().name
    table.close()
    return str(policy)


def forward_drop_chains(ns: str | None, topology: str, nft_items: list[dict[str, Any]]) -> list[str]:
    """Every FORWARD base chain with policy DROP in `ns`, both families of firewall.

    nft_items: `nft -j list ruleset` of `ns` (empty without libnftables), listed once by the caller."""
    out = _nft_forward_drop_chains(nft_items, topology)
    for v6, where in LEGACY_FORWARD:
        if "filter" in legacy_tables(ns, v6) and \
                call_in_netns_child(ns, _ipt_forward_policy_child, v6) == "DROP":
            out.append(where)
    return out


# --- writing ---------------------------------------------------------------------------------------------------
def _nft_forward_rules(ns: str | None, where: str, label: str) -> list[dict[str, Any]]:
    place = nft_forward_place(where)
    items = nft_list(ns, {"chain": {"family": place["family"], "table": place["table"], "name": place["chain"]}}) \
        or []
    return [i["rule"] for i in items if "rule" in i and str(i["rule"].get("comment", "")).startswith(label + " ")]


def _ipt_forward_child(topology: str, label: str, subnets: list[str], v6: bool) -> None:
    iptc = load_iptc()
    chain = ipt_forward_chain(topology, label, subnets, v6)
    with XtablesLock():
        table = ipt_table(iptc, "filter", v6)
        ipt_replace_owned_chain(iptc, table, label, chain, v6)
        table.commit()
        table.close()


def forward_apply(ns: str | None, topology: str, label: str, where: str, subnets: tuple[str, ...]) -> None:
    if _is_nft(where):
        stale = [r["handle"] for r in _nft_forward_rules(ns, where, label)]
        nft_run(ns, nft_forward_commands(where, label, subnets, stale),
                f"accept forwarding in {where[4:]} of {ns or 'host'}")
    else:
        v6 = where.startswith("ip6tables")
        call_in_netns_child(ns, _ipt_forward_child, topology, label, list(subnets), v6)


def forward_delete(ns: str | None, topology: str, label: str, where: str) -> None:
    if _is_nft(where):
        stale = [r["handle"] for r in _nft_forward_rules(ns, where, label)]
        if stale:
            nft_run(ns, nft_forward_commands(where, label, (), stale),
                    f"remove forwarding accepts from {where[4:]} of {ns or 'host'}")
    else:
        v6 = where.startswith("ip6tables")
        if "filter" in legacy_tables(ns, v6):
            call_in_netns_child(ns, _ipt_forward_child, topology, label, [], v6)


# --- reading -----------------------------------------------------------------------------------------------------
def _ipt_forward_read_child(topology: str, label: str, v6: bool) -> tuple[list[str] | None, bool]:
    """(our forward-accept subnets or None when nothing of ours is there, whether a same-named
    chain of someone else is there)."""
    iptc = load_iptc()
    if "filter" not in legacy_tables(None, v6):
        return None, False
    table = ipt_table(iptc, "filter", v6)
    name = chain_name(topology, "FWD")
    jumps = [r for r in iptc.Chain(table, "FORWARD").rules if ipt_comment(r) == label]
    owner = ipt_owner(iptc, table, "FORWARD", name, label)
    if owner != "mine" and not jumps:
        table.close()
        return None, owner == "foreign"
    subnets: list[str] = []
    if owner == "mine":
        rules = iptc.Chain(table, name).rules
        for rule in rules:
            c = ipt_comment(rule) or ""
            if c.startswith(forward_comment(label, "")) and c.split()[-1] not in subnets:
                subnets.append(c.split()[-1])
        if not any(ipt_comment(r) == owner_marker(label) for r in rules):
            subnets.append("?")  # a chain from before the marker: the next apply marks it
    if len(jumps) != 1 or owner != "mine":
        subnets.append("?")  # a missing or doubled jump, or a jump to no chain of ours, is drift
    table.close()
    return subnets, owner == "foreign"


def _nft_forward_read(label: str, nft_items: list[dict[str, Any]]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for item in nft_items:
        rule = item.get("rule")
        if rule and str(rule.get("comment", "")).startswith(forward_comment(label, "")):
            where = f"nft:{rule['family']} {rule['table']} {rule['chain']}"
            subnet = str(rule["comment"]).split()[-1]
            if subnet not in out.get(where, ()):
                out[where] = (*out.get(where, ()), subnet)
    return out


def forward_read(ns: str | None, topology: str, label: str, nft_items: list[dict[str, Any]],
                 foreign: list[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Where this topology has forward-accept rules in `ns`, and for which subnets (sorted);
    a same-named legacy chain of someone else goes to `foreign`.

    nft_items: `nft -j list ruleset` of `ns`, as for forward_drop_chains."""
    out = _nft_forward_read(label, nft_items)
    for v6, where in LEGACY_FORWARD:
        if "filter" in legacy_tables(ns, v6):
            found, others = call_in_netns_child(ns, _ipt_forward_read_child, topology, label, v6)
            if others and foreign is not None:
                foreign.append(ipt_foreign(ns, topology, label, "filter", chain_name(topology, "FWD"), v6))
            if found is not None:
                out[where] = tuple(found)
    return {w: tuple(sorted(set(s))) for w, s in out.items()}
