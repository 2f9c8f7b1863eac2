"""The nftables NAT backend: libnftables' JSON API through the `nftables` binding.

One table `inet cnetctl-<name>` per topology and namespace, rewritten whole in
one atomic transaction (the batch of nat_rules.nft_apply_commands): a bad rule
rejects the whole batch and keeps the old state.

Ownership marker: the table's comment is the owner label (`comment "cnetctl:<name>"`).
nft 1.0.6's JSON API neither writes nor lists table comments, so the table is
created by one text command (`add table … { comment …; }`) before the JSON batch,
and its comment is read from the text listing. Tables written before this marker
existed are recognised by their rules: at least one, every one commented
`cnetctl:<name> …`; the next write re-creates them with the comment.
"""

from __future__ import annotations

import ctypes
import functools
import re
from typing import Any

from ... import owner_label, owner_of
from ...errors import KernelError
from ...model.natspec import NatSpec, spec_from_comment
from ...nat_rules import (
    NFT_LOCAL_DADDR,
    nft_apply_commands,
    nft_create_table,
    nft_delete_commands,
    nft_table_name,
)
from ..netns import run_in_netns
from .backend import MissingLibrary, Owner, place

NFT_LIBRARY = "libnftables.so.1"
NFT_HINT = ("the nftables backend needs libnftables and its Python binding: apt-get install libnftables1 "
            "(and pip install pip-nftables, or python3-nftables)")


def _nft(json: bool = True) -> Any:
    try:
        import nftables
        # Load the library first: the binding's constructor, failing on a missing library,
        # leaves a half-built object whose destructor prints a traceback at exit.
        ctypes.CDLL(NFT_LIBRARY)
        nft = nftables.Nftables(sofile=NFT_LIBRARY)
    except (ImportError, OSError) as err:
        raise MissingLibrary(f"{NFT_HINT} ({err})") from err
    nft.set_json_output(json)
    nft.set_handle_output(True)
    return nft


@functools.cache
def nft_available() -> bool:
    try:
        _nft()
    except KernelError:
        return False
    return True


def nft_run(ns: str | None, commands: list[dict[str, Any]], what: str) -> dict[str, Any]:
    """One libnftables batch (one atomic transaction) inside `ns`."""
    def body() -> tuple[int, Any, str]:
        nft = _nft()
        return nft.json_cmd({"nftables": commands})  # type: ignore[no-any-return]

    rc, out, err = run_in_netns(ns, body)
    if rc != 0:
        raise KernelError(f"{what}: nftables: {err.strip() or rc}")
    return out if isinstance(out, dict) else {}


def nft_text(ns: str | None, command: str) -> tuple[int, str, str]:
    """One nft command in its text syntax (one transaction) inside `ns`: for what the JSON API of
    nft 1.0.6 cannot express (table comments)."""
    def body() -> tuple[int, str, str]:
        return _nft(json=False).cmd(command)  # type: ignore[no-any-return]

    return run_in_netns(ns, body)


def nft_list(ns: str | None, obj: dict[str, Any]) -> list[dict[str, Any]] | None:
    """`nft -j list …` inside `ns`; None when the object does not exist."""
    def body() -> tuple[int, Any, str]:
        return _nft().json_cmd({"nftables": [{"list": obj}]})  # type: ignore[no-any-return]

    rc, out, err = run_in_netns(ns, body)
    if rc != 0:
        if "No such file" in err or "does not exist" in err:
            return None
        raise KernelError(f"nftables list {obj}: {err.strip()}")
    return list(out.get("nftables", [])) if isinstance(out, dict) else []


def nft_ruleset(ns: str | None) -> list[dict[str, Any]]:
    """`nft -j list ruleset` of `ns`; empty without libnftables (then no nft table is visible)."""
    return (nft_list(ns, {"ruleset": None}) or []) if nft_available() else []


# --- ownership -----------------------------------------------------------------------------------------
def _nft_table_comment(ns: str | None, name: str) -> str | None:
    rc, out, _ = nft_text(ns, f"list table inet {name}")
    for line in out.splitlines()[1:] if rc == 0 else []:
        if not line.strip() or line.rstrip().endswith("{"):
            break  # the table's own attributes come first, then its sets and chains
        found = re.fullmatch(r'\s*comment "(.*)"', line)
        if found:
            return found.group(1)
    return None


def _our_rules(items: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [i["rule"] for i in items if i.get("rule", {}).get("family") == "inet" and i["rule"].get("table") == name]


def nft_owner(ns: str | None, topology: str, label: str, items: list[dict[str, Any]]) -> Owner:
    """Who owns table inet cnetctl-<topology> in `ns`: "mine" (the comment is our label),
    "unmarked" (made before the marker: our rules only), "foreign", or None (no such table).

    items: `nft -j list ruleset` of `ns`."""
    name = nft_table_name(topology)
    tables = [i["table"] for i in items if i.get("table", {}).get("family") == "inet"
              and i["table"].get("name") == name]
    if not tables:
        return None
    comment = tables[0].get("comment")  # listed by nft versions newer than 1.0.6
    if comment is None:
        comment = _nft_table_comment(ns, name)
    if comment == label:
        return "mine"
    rules = _our_rules(items, name)
    if comment is None and rules and all(str(r.get("comment", "")).startswith(label + " ") for r in rules):
        return "unmarked"
    return "foreign"


def nft_owners(ns: str | None, items: list[dict[str, Any]]) -> set[str]:
    """Topologies with nftables objects in `items` (`nft -j list ruleset` of `ns`): a table
    cnetctl-<name> of theirs, or rules commented with their label (forward-accepts in a
    chain that is someone else's)."""
    owners: set[str] = set()
    prefix = nft_table_name("")
    for item in items:
        table, rule = item.get("table", {}), item.get("rule", {})
        name = str(table.get("name", ""))
        if table.get("family") == "inet" and name.startswith(prefix):
            topology = name[len(prefix):]
            if nft_owner(ns, topology, owner_label(topology), items) in ("mine", "unmarked"):
                owners.add(topology)
        elif owner := owner_of(str(rule.get("comment", "")).split(" ")[0]):
            owners.add(owner)
    return owners


def nft_foreign(ns: str | None, topology: str, label: str) -> str:
    return (f"table inet {nft_table_name(topology)} in {place(ns)} exists and is not cnetctl's "
            f"(it has no comment \"{label}\" marking it as topology {topology}'s)")


# --- the backend -----------------------------------------------------------------------------------------
def _read_rule(label: str, rule: dict[str, Any]) -> NatSpec:
    """A rule of our table as a record: its comment's, unless the rule is not what the comment says."""
    spec = spec_from_comment(label, rule.get("comment"))
    if spec is None:
        return NatSpec.unknown(f"rule-{rule.get('handle')}-in-{rule.get('chain')}")
    if rule.get("chain") == "output" and spec.output_local_only and NFT_LOCAL_DADDR not in rule.get("expr", []):
        return NatSpec.unknown(f"output-copy-without-local-limit-of {spec.text()}")
    return spec


class Nftables:
    name = "nftables"

    def load(self) -> None:
        _nft()

    def available(self) -> bool:
        return nft_available()

    def apply(self, ns: str | None, topology: str, label: str, specs: list[NatSpec]) -> None:
        """Create the table with its owner comment if need be (text syntax: see the module
        docstring), then one converging batch."""
        name = nft_table_name(topology)
        owner = nft_owner(ns, topology, label, nft_ruleset(ns))
        if owner == "foreign":
            raise KernelError(f"write table inet {name}: {nft_foreign(ns, topology, label)}")
        if owner != "mine":
            # A table from before the marker cannot get a comment in place: re-create it.
            rc, _, err = nft_text(ns, nft_create_table(topology, label, replace=owner == "unmarked"))
            if rc != 0:
                raise KernelError(f"create table inet {name} in {place(ns)}: nftables: {err.strip() or rc}")
        try:
            nft_run(ns, nft_apply_commands(topology, label, specs), f"write table inet {name} in {place(ns)}")
        except KernelError:
            if owner is None:  # the empty table made just above: leave nothing behind
                nft_run(ns, nft_delete_commands(topology), f"delete table inet {name} in {place(ns)}")
            raise

    def delete(self, ns: str | None, topology: str, label: str) -> None:
        """Delete our table; a missing table, or a same-named one that is not ours, is left alone."""
        if nft_owner(ns, topology, label, nft_ruleset(ns)) in ("mine", "unmarked"):
            nft_run(ns, nft_delete_commands(topology),
                    f"delete table inet {nft_table_name(topology)} in {place(ns)}")

    def read(self, ns: str | None, topology: str, label: str, nft_items: list[dict[str, Any]],
             foreign: list[str]) -> list[NatSpec] | None:
        owner = nft_owner(ns, topology, label, nft_items)
        if owner is None:
            return None
        if owner == "foreign":
            foreign.append(nft_foreign(ns, topology, label))
            return None
        seen: list[NatSpec] = []
        for spec in (_read_rule(label, rule) for rule in _our_rules(nft_items, nft_table_name(topology))):
            if spec not in seen:
                seen.append(spec)
        if owner == "unmarked":
            seen.append(NatSpec.unknown("table-without-owner-comment"))  # drift: the next apply marks it
        return seen
