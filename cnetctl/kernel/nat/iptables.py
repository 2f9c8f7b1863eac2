"""The iptables NAT backend: python-iptables (libiptc, legacy x_tables).

Chains `CNET-<NAME>-<HOOK>` reached by one jump rule per hook commented
`cnetctl:<name>`, holding the rules of nat_rules.ipt_nat_chains. Each change runs
in a forked child that entered the namespace: python-iptables keeps process-wide
table handles bound to the namespace where they were last refreshed, and an open
handle keeps a deleted namespace alive, so no handle may outlive the child. The
child holds /run/xtables.lock while it writes (libiptc takes no lock itself).
One family per child: python-iptables cannot load an extension (DNAT) for both.

Ownership marker: legacy chains cannot carry comments, so each owned chain ends
with a marker rule `-m comment --comment "cnetctl:<name> owner" -j RETURN` (a
no-op: a user chain returns at its end anyway). Chains from before the marker are
recognised by our commented jump from the built-in chain.
"""

from __future__ import annotations

import fcntl
import functools
import os
import pickle
from collections.abc import Callable
from typing import Any, TypeVar

from ... import owner_of
from ...errors import KernelError
from ...model.natspec import NatSpec, spec_from_comment
from ...nat_rules import HOOKS, IptRule, chain_name, ipt_nat_chains, owner_marker
from ..netns import netns_path, run_in_netns
from .backend import MissingLibrary, Owner, place

T = TypeVar("T")
XTABLES_LOCK = "/run/xtables.lock"
IPT_HINT = ("the iptables backend needs python-iptables and libiptc: apt-get install iptables "
            "(and pip install python-iptables)")


def load_iptc() -> Any:
    try:
        import iptc
    except (ImportError, OSError) as err:
        raise MissingLibrary(f"{IPT_HINT} ({err})") from err
    return iptc


@functools.cache
def iptc_available() -> bool:
    try:
        load_iptc()
    except KernelError:
        return False
    return True


# --- the forked child and what it shares -------------------------------------------------------------
def call_in_netns_child(ns: str | None, fn: Callable[..., T], *args: Any) -> T:
    """fork; the child enters `ns`, runs fn, and pickles the result back."""
    load_iptc()  # imported once here (≈300 ms), not again in every child
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            if ns is not None:
                from ..netns import _setns
                fd = os.open(netns_path(ns), os.O_RDONLY)
                _setns(fd)
                os.close(fd)
            result: tuple[bool, Any] = (True, fn(*args))
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            result = (False, f"{type(err).__name__}: {err}")
        with os.fdopen(w, "wb") as fh:
            pickle.dump(result, fh)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    if not data:
        raise KernelError(f"iptables helper for {ns or 'host'} died")
    ok, value = pickle.loads(data)
    if not ok:
        raise KernelError(f"iptables in {ns or 'host'}: {value}")
    return value  # type: ignore[no-any-return]


def legacy_tables(ns: str | None, v6: bool = False) -> set[str]:
    """Legacy x_tables that exist in `ns` (no table is instantiated by looking).

    /proc/thread-self: run_in_netns switches one thread, and /proc/net shows the namespace
    of the process's main thread."""
    path = f"/proc/thread-self/net/{'ip6' if v6 else 'ip'}_tables_names"

    def read() -> set[str]:
        try:
            with open(path) as fh:
                return set(fh.read().split())
        except FileNotFoundError:
            return set()
    return run_in_netns(ns, read)


class XtablesLock:
    def __enter__(self) -> None:
        self.fd = os.open(XTABLES_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def ipt_table(iptc: Any, name: str, v6: bool) -> Any:
    table = (iptc.Table6 if v6 else iptc.Table)(name, autocommit=False)
    table.refresh()
    return table


def ipt_comment(rule: Any) -> str | None:
    for m in rule.matches:
        if m.name == "comment":
            return str(m.comment)
    return None


def ipt_owner(iptc: Any, table: Any, builtin: str, name: str, label: str) -> Owner:
    """"mine" (the chain holds our marker rule, or our commented jump from `builtin` reaches
    it: chains from before the marker), "foreign", or None (no such chain)."""
    if not table.is_chain(name):
        return None
    if any(ipt_comment(r) == owner_marker(label) for r in iptc.Chain(table, name).rules):
        return "mine"
    if any(ipt_comment(r) == label and r.target is not None and r.target.name == name
           for r in iptc.Chain(table, builtin).rules):
        return "mine"
    return "foreign"


def ipt_foreign(ns: str | None, topology: str, label: str, table: str, name: str, v6: bool) -> str:
    return (f"chain {name} in the {'ip6tables' if v6 else 'iptables'}-legacy {table} table of {place(ns)} "
            f"exists and is not cnetctl's (it has no rule commented \"{owner_marker(label)}\" marking it as "
            f"topology {topology}'s)")


def ipt_build(iptc: Any, data: IptRule, v6: bool) -> Any:
    """An iptc rule from its data (nat_rules' module docstring gives the format and the order)."""
    rule = (iptc.Rule6 if v6 else iptc.Rule)()
    for field in ("src", "dst", "in_interface", "out_interface", "protocol"):
        if field in data:
            setattr(rule, field, data[field])
    for name, params in data.get("matches", []):
        match = rule.create_match(name)
        for key, value in params.items():
            setattr(match, key, value)
    name, params = data["target"]
    target = rule.create_target(name)
    for key, value in params.items():
        setattr(target, key, value)
    return rule


def ipt_replace_owned_chain(iptc: Any, table: Any, label: str, chain: dict[str, Any], v6: bool) -> None:
    """Our chain holding exactly `chain["rules"]` (the last one the owner marker), reached from its
    built-in chain by one jump commented `label`; with rules None, neither chain nor jump (see
    nat_rules.ipt_owned_chain). Staged in `table` until its commit. A same-named chain that is not
    ours is never touched."""
    builtin, name, rules = chain["builtin"], chain["chain"], chain["rules"]
    owner = ipt_owner(iptc, table, builtin, name, label)
    if owner == "foreign" and rules is not None:
        raise RuntimeError(f"chain {name} exists and is not cnetctl's (no rule commented "
                           f"\"{owner_marker(label)}\"); it was left untouched")
    base = iptc.Chain(table, builtin)
    for rule in list(base.rules):
        if ipt_comment(rule) == label:
            base.delete_rule(rule)
    if owner == "mine":
        iptc.Chain(table, name).flush()
        iptc.Chain(table, name).delete()
    if rules is None:
        return
    created = table.create_chain(name)
    for data in rules:
        created.append_rule(ipt_build(iptc, data, v6))
    base.insert_rule(ipt_build(iptc, chain["jump"], v6))


# --- children: NAT ---------------------------------------------------------------------------------------
def _ipt_apply_child(topology: str, label: str, specs_text: list[str], v6: bool) -> None:
    """Converge our chains of one family's nat table, in one commit of that table."""
    iptc = load_iptc()
    chains = ipt_nat_chains(topology, label, [NatSpec.parse(t) for t in specs_text], v6)
    with XtablesLock():
        if all(c["rules"] is None for c in chains) and "nat" not in legacy_tables(None, v6):
            return  # never instantiate a table just to find it empty
        table = ipt_table(iptc, "nat", v6)
        for chain in chains:
            ipt_replace_owned_chain(iptc, table, label, chain, v6)
        table.commit()
        table.close()


def _ipt_local_only(rule: Any) -> bool:
    return any(m.name == "addrtype" and str(m.dst_type).upper() == "LOCAL" for m in rule.matches)


def _ipt_read_chain(iptc: Any, table: Any, name: str, label: str) -> list[str]:
    texts: list[str] = []
    for rule in iptc.Chain(table, name).rules:
        comment = ipt_comment(rule)
        if comment == owner_marker(label):
            continue
        spec = spec_from_comment(label, comment)
        if spec is None:
            spec = NatSpec.unknown("foreign-rule")
        elif name.endswith("-OUT") and spec.output_local_only and not _ipt_local_only(rule):
            spec = NatSpec.unknown(f"output-copy-without-local-limit-of {spec.text()}")
        if spec.text() not in texts:
            texts.append(spec.text())
    return texts


def _ipt_read_hook(iptc: Any, table: Any, builtin: str, name: str, label: str
                   ) -> tuple[list[str] | None, list[str], bool]:
    """(drift notes about our chain `name` and its jump, None when nothing of ours is there; the texts
    of its rules; whether a same-named chain of someone else is there)."""
    jumps = [r for r in iptc.Chain(table, builtin).rules if ipt_comment(r) == label]
    owner = ipt_owner(iptc, table, builtin, name, label)
    if owner != "mine":
        return ([NatSpec.unknown("jump-without-chain").text()] if jumps else None), [], owner == "foreign"
    notes = [] if len(jumps) == 1 else [NatSpec.unknown(f"jumps={len(jumps)}").text()]
    if not any(ipt_comment(r) == owner_marker(label) for r in iptc.Chain(table, name).rules):
        notes.append(NatSpec.unknown("chain-without-owner-marker").text())  # drift: the next apply marks it
    return notes, _ipt_read_chain(iptc, table, name, label), False


def _ipt_read_child(topology: str, label: str, v6: bool) -> tuple[list[str] | None, list[str]]:
    """(our rules' texts or None when nothing of ours is there, names of same-named foreign chains)."""
    iptc = load_iptc()
    found: list[str] | None = None
    foreign: list[str] = []
    if "nat" not in legacy_tables(None, v6):
        return None, foreign
    table = ipt_table(iptc, "nat", v6)
    for hook, builtin in HOOKS.items():
        name = chain_name(topology, hook)
        notes, texts, theirs = _ipt_read_hook(iptc, table, builtin, name, label)
        if theirs:
            foreign.append(name)
        if notes is not None:
            found = (found or []) + notes
            found += [t for t in texts if t not in found]
    table.close()
    return found, foreign


def _ipt_owners_child(v6: bool) -> set[str]:
    """Topologies named by the comments of legacy nat/filter rules (jumps, owner markers,
    forward-accepts all start with the owner label)."""
    iptc = load_iptc()
    owners: set[str] = set()
    for name in sorted({"nat", "filter"} & legacy_tables(None, v6)):
        table = ipt_table(iptc, name, v6)
        for chain in table.chains:
            owners |= {o for rule in chain.rules if (o := owner_of((ipt_comment(rule) or "").split(" ")[0]))}
        table.close()
    return owners


def ipt_owners(ns: str | None) -> set[str]:
    """Topologies with legacy iptables rules in `ns`, by their comments."""
    owners: set[str] = set()
    for v6 in (False, True):
        if {"nat", "filter"} & legacy_tables(ns, v6) and iptc_available():
            owners |= call_in_netns_child(ns, _ipt_owners_child, v6)
    return owners


# --- the backend -----------------------------------------------------------------------------------------
class Iptables:
    name = "iptables"

    def load(self) -> None:
        load_iptc()

    def available(self) -> bool:
        return iptc_available()

    def apply(self, ns: str | None, topology: str, label: str, specs: list[NatSpec]) -> None:
        for v6 in (False, True):
            call_in_netns_child(ns, _ipt_apply_child, topology, label, [s.text() for s in specs], v6)

    def delete(self, ns: str | None, topology: str, label: str) -> None:
        for v6 in (False, True):
            if "nat" in legacy_tables(ns, v6):
                call_in_netns_child(ns, _ipt_apply_child, topology, label, [], v6)

    def read(self, ns: str | None, topology: str, label: str, nft_items: list[dict[str, Any]],
             foreign: list[str]) -> list[NatSpec] | None:
        texts: list[str] | None = None
        for v6 in (False, True):
            if "nat" in legacy_tables(ns, v6):
                part, others = call_in_netns_child(ns, _ipt_read_child, topology, label, v6)
                foreign += [ipt_foreign(ns, topology, label, "nat", name, v6) for name in others]
                if part is not None:
                    texts = (texts or []) + part
        return None if texts is None else [NatSpec.parse(t) for t in texts]
