"""NAT and forward-accept rules, two backends with one behaviour.

- nftables: libnftables' JSON API (the `nftables` binding), one table
  `inet cnetctl-<name>` per topology and namespace, rewritten whole in one
  atomic transaction.
- iptables: python-iptables (libiptc, legacy x_tables), chains
  `CNET-<NAME>-<HOOK>` reached by one jump rule per hook commented
  `cnetctl:<name>`; run in a forked child that entered the namespace (no iptc
  handle outlives it, so none pins a namespace), under /run/xtables.lock.

Every rule carries its canonical text as a comment: reading the comments back
is how cnetctl knows which rules are live, in either backend.
"""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import os
import pickle
import shutil
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import KernelError
from ..model.natspec import NatSpec, canonical_order, comment_for, spec_from_comment
from .netns import netns_path, run_in_netns

T = TypeVar("T")
XTABLES_LOCK = "/run/xtables.lock"
HOOKS = {"PRE": "PREROUTING", "POST": "POSTROUTING", "OUT": "OUTPUT"}
__all__ = ["NatSpec", "canonical_order", "detect_backend", "BACKENDS"]


# --- backend selection -------------------------------------------------------------------------------
def detect_backend() -> str:
    """The family the host's own `iptables` command uses (nft -> nftables, legacy -> iptables)."""
    path = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    if path:
        real = os.path.basename(os.path.realpath(path))
        if "legacy" in real:
            return "iptables"
        if "nft" in real:
            return "nftables"
    return "nftables" if nft_available() else "iptables"


@functools.cache
def nft_available() -> bool:
    try:
        _nft()  # the binding imports without libnftables.so.1; making a context needs it
    except KernelError:
        return False
    return True


def require_backend(backend: str) -> None:
    """Fail before any change when a NAT backend's library is missing, saying what to install."""
    try:
        _nft() if backend == "nftables" else _iptc()
    except KernelError as err:
        raise KernelError(f"{err}; nothing was changed") from None


# --- nftables ----------------------------------------------------------------------------------------
def _nft() -> Any:
    try:
        import nftables
        nft = nftables.Nftables()
    except (ImportError, OSError) as err:
        raise KernelError("the nftables backend needs libnftables and its Python binding: "
                          "apt-get install libnftables1 (and pip install pip-nftables, or python3-nftables)") from err
    nft.set_json_output(True)
    nft.set_handle_output(True)
    return nft


def nft_run(ns: str | None, commands: list[dict[str, Any]], what: str) -> dict[str, Any]:
    """One libnftables batch (one atomic transaction) inside `ns`."""
    def body() -> tuple[int, Any, str]:
        nft = _nft()
        return nft.json_cmd({"nftables": commands})  # type: ignore[no-any-return]

    rc, out, err = run_in_netns(ns, body)
    if rc != 0:
        raise KernelError(f"{what}: nftables: {err.strip() or rc}")
    return out if isinstance(out, dict) else {}


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


def nft_table_name(topology: str) -> str:
    return f"cnetctl-{topology}"


def _prefix_match(field: str, value: str) -> dict[str, Any]:
    net = ipaddress.ip_network(value, strict=False)
    proto = "ip" if net.version == 4 else "ip6"
    right: Any = str(net.network_address) if net.prefixlen == net.max_prefixlen else \
        {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
    return {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": field}}, "right": right}}


def _iface_match(key: str, value: str) -> dict[str, Any]:
    negated = value.startswith("!")
    return {"match": {"op": "!=" if negated else "==", "left": {"meta": {"key": key}},
                      "right": value.lstrip("!")}}


def nft_rule_exprs(spec: NatSpec, hook: str) -> list[dict[str, Any]]:
    fam = "ip" if spec.family == 4 else "ip6"
    exprs: list[dict[str, Any]] = [{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}},
                                              "right": "ipv4" if spec.family == 4 else "ipv6"}}]
    if spec.kind in ("masquerade", "snat"):
        exprs.append(_prefix_match("saddr", spec.source or ""))
        if spec.out_interface:
            exprs.append(_iface_match("oifname", spec.out_interface))
        if spec.kind == "masquerade":
            exprs.append({"masquerade": None})
        else:
            exprs.append({"snat": {"family": fam, "addr": spec.to_source}})
        return exprs
    if spec.destination:
        exprs.append(_prefix_match("daddr", spec.destination))
    if spec.in_interface and hook == "PRE":
        exprs.append(_iface_match("iifname", spec.in_interface))
    exprs.append({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": spec.protocol}})
    exprs.append({"match": {"op": "==", "left": {"payload": {"protocol": spec.protocol, "field": "dport"}},
                            "right": spec.port}})
    target: dict[str, Any] = {"family": fam, "addr": spec.to_addr}
    if spec.to_port:
        target["port"] = spec.to_port
    exprs.append({"dnat": target})
    return exprs


NFT_CHAINS = {"PRE": ("prerouting", "prerouting", -100), "OUT": ("output", "output", -100),
              "POST": ("postrouting", "postrouting", 100)}


def nft_apply(ns: str | None, topology: str, label: str, specs: list[NatSpec]) -> None:
    """add table; flush table; add chains and rules — one transaction that converges."""
    table = {"family": "inet", "name": nft_table_name(topology)}
    cmds: list[dict[str, Any]] = [{"add": {"table": table}}, {"flush": {"table": table}}]
    in_table = {"family": "inet", "table": table["name"]}
    for name, hook, prio in NFT_CHAINS.values():
        cmds.append({"add": {"chain": {**in_table, "name": name, "type": "nat", "hook": hook, "prio": prio,
                                       "policy": "accept"}}})
    for spec in specs:
        for hook in spec.hooks:
            cmds.append({"add": {"rule": {**in_table, "chain": NFT_CHAINS[hook][0],
                                          "expr": nft_rule_exprs(spec, hook), "comment": comment_for(label, spec)}}})
    nft_run(ns, cmds, f"write table inet {table['name']} in {ns or 'host'}")


def nft_delete(ns: str | None, topology: str) -> None:
    table = {"family": "inet", "name": nft_table_name(topology)}
    # "add" then "delete" in one batch: deleting a missing table is not an error.
    nft_run(ns, [{"add": {"table": table}}, {"delete": {"table": table}}],
            f"delete table inet {table['name']} in {ns or 'host'}")


def nft_read(ns: str | None, topology: str, label: str) -> list[NatSpec] | None:
    items = nft_list(ns, {"table": {"family": "inet", "name": nft_table_name(topology)}})
    if items is None:
        return None
    seen: list[NatSpec] = []
    for item in items:
        rule = item.get("rule")
        if rule:
            spec = spec_from_comment(label, rule.get("comment"))
            if spec is None:
                spec = NatSpec("unknown", to=str(rule.get("handle")))
            if spec not in seen:
                seen.append(spec)
    return seen


# --- iptables (python-iptables in a forked child) ------------------------------------------------------
def call_in_netns_child(ns: str | None, fn: Callable[..., T], *args: Any) -> T:
    """fork; the child enters `ns`, runs fn, and pickles the result back."""
    _iptc()  # imported once here (≈300 ms), not again in every child
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            if ns is not None:
                from .netns import _setns
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


def _iptc() -> Any:
    try:
        import iptc
    except (ImportError, OSError) as err:
        raise KernelError("the iptables backend needs python-iptables and libiptc: "
                          "apt-get install iptables (and pip install python-iptables)") from err
    return iptc


def legacy_tables(ns: str | None, v6: bool = False) -> set[str]:
    """Legacy x_tables that exist in `ns` (no table is instantiated by looking)."""
    path = "/proc/net/ip6_tables_names" if v6 else "/proc/net/ip_tables_names"

    def read() -> set[str]:
        try:
            with open(path) as fh:
                return set(fh.read().split())
        except FileNotFoundError:
            return set()
    return run_in_netns(ns, read)


def chain_name(topology: str, hook: str) -> str:
    return f"CNET-{topology.upper()}-{hook}"


class _XtablesLock:
    def __enter__(self) -> None:
        self.fd = os.open(XTABLES_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _ipt_table(iptc: Any, name: str, v6: bool) -> Any:
    table = (iptc.Table6 if v6 else iptc.Table)(name, autocommit=False)
    table.refresh()
    return table


def _ipt_comment(rule: Any) -> str | None:
    for m in rule.matches:
        if m.name == "comment":
            return str(m.comment)
    return None


def _ipt_rule(iptc: Any, spec: NatSpec, hook: str, comment: str, v6: bool) -> Any:
    rule = (iptc.Rule6 if v6 else iptc.Rule)()
    if spec.kind in ("masquerade", "snat"):
        rule.src = spec.source
        if spec.out_interface:
            rule.out_interface = spec.out_interface
        target = rule.create_target("MASQUERADE" if spec.kind == "masquerade" else "SNAT")
        if spec.kind == "snat":
            target.to_source = spec.to_source
    else:
        if spec.destination:
            rule.dst = spec.destination
        if spec.in_interface and hook == "PRE":
            rule.in_interface = spec.in_interface
        rule.protocol = spec.protocol
        match = rule.create_match(spec.protocol)
        match.dport = str(spec.port)
        target = rule.create_target("DNAT")
        addr = spec.to_addr if not v6 else f"[{spec.to_addr}]"
        target.to_destination = f"{addr}:{spec.to_port}" if spec.to_port else spec.to_addr
    m = rule.create_match("comment")
    m.comment = comment
    return rule


def _ipt_apply_child(topology: str, label: str, specs_text: list[str], delete: bool, v6: bool) -> None:
    """Converge our chains of one family's nat table, in one commit of that table.

    One family per process: python-iptables cannot load an extension (DNAT) for both."""
    iptc = _iptc()
    mine = [s for s in (NatSpec.parse(t) for t in specs_text) if (s.family == 6) == v6]
    with _XtablesLock():
        if not mine and "nat" not in legacy_tables(None, v6):
            return  # never instantiate a table just to find it empty
        table = _ipt_table(iptc, "nat", v6)
        for hook, builtin in HOOKS.items():
            rules = None if delete or not mine else \
                [_ipt_rule(iptc, spec, hook, comment_for(label, spec), v6) for spec in mine if hook in spec.hooks]
            _ipt_replace_owned_chain(iptc, table, builtin, chain_name(topology, hook), label, rules, v6)
        table.commit()
        table.close()


def _ipt_replace_owned_chain(iptc: Any, table: Any, builtin: str, name: str, label: str,
                             rules: list[Any] | None, v6: bool) -> None:
    """Our chain `name` holding exactly `rules`, reached from `builtin` by one jump commented
    `label`; with rules=None, neither chain nor jump. Staged in `table` until its commit."""
    base = iptc.Chain(table, builtin)
    for rule in list(base.rules):
        if _ipt_comment(rule) == label:
            base.delete_rule(rule)
    if table.is_chain(name):
        iptc.Chain(table, name).flush()
        iptc.Chain(table, name).delete()
    if rules is None:
        return
    chain = table.create_chain(name)
    for rule in rules:
        chain.append_rule(rule)
    jump = (iptc.Rule6 if v6 else iptc.Rule)()
    jump.create_target(name)
    comment = jump.create_match("comment")
    comment.comment = label
    base.insert_rule(jump)


def _ipt_read_child(topology: str, label: str, v6: bool) -> list[str] | None:
    iptc = _iptc()
    found: list[str] | None = None
    if "nat" in legacy_tables(None, v6):
        table = _ipt_table(iptc, "nat", v6)
        for hook, builtin in HOOKS.items():
            nm = chain_name(topology, hook)
            jumps = [r for r in iptc.Chain(table, builtin).rules if _ipt_comment(r) == label]
            if not table.is_chain(nm):
                if jumps:
                    found = found or []
                    found.append("unknown jump-without-chain")
                continue
            found = found or []
            if len(jumps) != 1:
                found.append(f"unknown jumps={len(jumps)}")
            for rule in iptc.Chain(table, nm).rules:
                spec = spec_from_comment(label, _ipt_comment(rule))
                text = spec.text() if spec else "unknown foreign-rule"
                if text not in found:
                    found.append(text)
        table.close()
    return found


def ipt_apply(ns: str | None, topology: str, label: str, specs: list[NatSpec]) -> None:
    for v6 in (False, True):
        call_in_netns_child(ns, _ipt_apply_child, topology, label, [s.text() for s in specs], False, v6)


def ipt_delete(ns: str | None, topology: str, label: str) -> None:
    for v6 in (False, True):
        if "nat" in legacy_tables(ns, v6):
            call_in_netns_child(ns, _ipt_apply_child, topology, label, [], True, v6)


def ipt_read(ns: str | None, topology: str, label: str) -> list[NatSpec] | None:
    texts: list[str] | None = None
    for v6 in (False, True):
        if "nat" in legacy_tables(ns, v6):
            part = call_in_netns_child(ns, _ipt_read_child, topology, label, v6)
            if part is not None:
                texts = (texts or []) + part
    return None if texts is None else [NatSpec.parse(t) for t in texts]


BACKENDS: dict[str, tuple[Callable[..., None], Callable[..., None], Callable[..., list[NatSpec] | None]]] = {
    "nftables": (nft_apply, lambda ns, topo, label: nft_delete(ns, topo), nft_read),
    "iptables": (ipt_apply, ipt_delete, ipt_read),
}


# --- forward: coexisting with a FORWARD policy DROP set by someone else --------------------------------
# A DROP verdict in any base chain is final, so an accept in our own table cannot
# rescue a forwarded packet: the owned, commented ACCEPT rules go into the chain
# that drops (the DOCKER-USER idea), and leave with destroy.

def _nft_forward_drop_chains(nft_items: list[dict[str, Any]], topology: str) -> list[str]:
    out = []
    for item in nft_items:
        chain = item.get("chain")
        if chain and chain.get("hook") == "forward" and chain.get("policy") == "drop" \
                and chain.get("table") != nft_table_name(topology):
            out.append(f"nft:{chain['family']} {chain['table']} {chain['name']}")
    return out


def _ipt_forward_policy_child(v6: bool) -> str | None:
    iptc = _iptc()
    table = _ipt_table(iptc, "filter", v6)
    policy = iptc.Chain(table, "FORWARD").get_policy().name
    table.close()
    return str(policy)


def forward_drop_chains(ns: str | None, topology: str, nft_items: list[dict[str, Any]]) -> list[str]:
    """Every FORWARD base chain with policy DROP in `ns`, both families of firewall.

    nft_items: `nft -j list ruleset` of `ns` (empty without libnftables), listed once by the caller."""
    out = _nft_forward_drop_chains(nft_items, topology)
    for v6, where in ((False, "iptables:filter FORWARD"), (True, "ip6tables:filter FORWARD")):
        if "filter" in legacy_tables(ns, v6) and \
                call_in_netns_child(ns, _ipt_forward_policy_child, v6) == "DROP":
            out.append(where)
    return out


def _nft_where(where: str) -> dict[str, str]:
    family, table, chain = where[len("nft:"):].split(" ")
    return {"family": family, "table": table, "chain": chain}


def _nft_forward_rules(ns: str | None, where: str, label: str) -> list[dict[str, Any]]:
    loc = _nft_where(where)
    items = nft_list(ns, {"chain": {"family": loc["family"], "table": loc["table"], "name": loc["chain"]}}) or []
    return [i["rule"] for i in items if "rule" in i and str(i["rule"].get("comment", "")).startswith(label + " ")]


def _forward_comment(label: str, subnet: str) -> str:
    return f"{label} forward {subnet}"


def forward_apply(ns: str | None, topology: str, label: str, where: str, subnets: tuple[str, ...]) -> None:
    if where.startswith("nft:"):
        loc = _nft_where(where)
        cmds: list[dict[str, Any]] = [{"delete": {"rule": {**loc, "handle": r["handle"]}}}
                                      for r in _nft_forward_rules(ns, where, label)]
        for subnet in reversed(subnets):
            for field in ("daddr", "saddr"):
                if loc["family"] in ("ip", "ip6") and (loc["family"] == "ip6") != (":" in subnet):
                    continue
                cmds.append({"insert": {"rule": {**loc, "expr": [_prefix_match(field, subnet), {"accept": None}],
                                                 "comment": _forward_comment(label, subnet)}}})
        nft_run(ns, cmds, f"accept forwarding in {where[4:]} of {ns or 'host'}")
    else:
        v6 = where.startswith("ip6tables")
        call_in_netns_child(ns, _ipt_forward_child, topology, label, list(subnets), v6)


def forward_delete(ns: str | None, topology: str, label: str, where: str) -> None:
    if where.startswith("nft:"):
        loc = _nft_where(where)
        rules = _nft_forward_rules(ns, where, label)
        if rules:
            nft_run(ns, [{"delete": {"rule": {**loc, "handle": r["handle"]}}} for r in rules],
                    f"remove forwarding accepts from {where[4:]} of {ns or 'host'}")
    else:
        v6 = where.startswith("ip6tables")
        if "filter" in legacy_tables(ns, v6):
            call_in_netns_child(ns, _ipt_forward_child, topology, label, [], v6)


def _ipt_forward_child(topology: str, label: str, subnets: list[str], v6: bool) -> None:
    iptc = _iptc()
    rules = []
    for subnet in (s for s in subnets if (":" in s) == v6):
        for attr in ("src", "dst"):
            rule = (iptc.Rule6 if v6 else iptc.Rule)()
            setattr(rule, attr, subnet)
            m = rule.create_match("comment")
            m.comment = _forward_comment(label, subnet)
            rule.create_target("ACCEPT")
            rules.append(rule)
    with _XtablesLock():
        table = _ipt_table(iptc, "filter", v6)
        _ipt_replace_owned_chain(iptc, table, "FORWARD", chain_name(topology, "FWD"), label, rules or None, v6)
        table.commit()
        table.close()


def _ipt_forward_read_child(topology: str, label: str, v6: bool) -> list[str] | None:
    iptc = _iptc()
    table = _ipt_table(iptc, "filter", v6)
    name = chain_name(topology, "FWD")
    jumps = [r for r in iptc.Chain(table, "FORWARD").rules if _ipt_comment(r) == label]
    if not table.is_chain(name) and not jumps:
        table.close()
        return None
    subnets: list[str] = []
    if table.is_chain(name):
        for rule in iptc.Chain(table, name).rules:
            c = _ipt_comment(rule) or ""
            if c.startswith(label + " forward ") and c.split()[-1] not in subnets:
                subnets.append(c.split()[-1])
    if len(jumps) != 1:
        subnets.append("?")  # a missing or doubled jump is drift
    table.close()
    return subnets


def forward_read(ns: str | None, topology: str, label: str,
                 nft_items: list[dict[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Where this topology has forward-accept rules in `ns`, and for which subnets (sorted).

    nft_items: `nft -j list ruleset` of `ns`, as for forward_drop_chains."""
    out: dict[str, tuple[str, ...]] = {}
    for item in nft_items:
        rule = item.get("rule")
        if rule and str(rule.get("comment", "")).startswith(label + " forward "):
            where = f"nft:{rule['family']} {rule['table']} {rule['chain']}"
            subnet = str(rule["comment"]).split()[-1]
            if subnet not in out.get(where, ()):
                out[where] = (*out.get(where, ()), subnet)
    for v6, where in ((False, "iptables:filter FORWARD"), (True, "ip6tables:filter FORWARD")):
        if "filter" in legacy_tables(ns, v6):
            found = call_in_netns_child(ns, _ipt_forward_read_child, topology, label, v6)
            if found is not None:
                out[where] = tuple(found)
    return {w: tuple(sorted(s)) for w, s in out.items()}
