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

Ownership is proven by a marker inside the object, never inferred from its name
(a user may well own a table or chain called like ours):
- nftables: the table's comment is the owner label (`comment "cnetctl:<name>"`).
  nft 1.0.6's JSON API neither writes nor lists table comments, so the table is
  created by one text command (`add table … { comment …; }`) before the JSON
  batch, and its comment is read from the text listing. Tables written before
  this marker existed are recognised by their rules: at least one, every one
  commented `cnetctl:<name> …`; the next write re-creates them with the comment.
- iptables: legacy chains cannot carry comments, so each owned chain ends with
  a marker rule `-m comment --comment "cnetctl:<name> owner" -j RETURN` (a no-op:
  a user chain returns at its end anyway). Chains from before the marker are
  recognised by our commented jump from the built-in chain.
A same-named table or chain without the marker is someone else's: observe
reports it (plan/apply refuse, destroy skips it), and the writers below refuse to
touch it, whatever the caller asked.

The OUTPUT copy of a DNAT without `destination` matches local destinations only
(nftables `fib daddr type local`, iptables `-m addrtype --dst-type LOCAL`), like
Docker's: the node's own connections to other machines keep their destination.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import ipaddress
import os
import pickle
import re
import shutil
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import KernelError, UsageError
from ..model.natspec import NatSpec, canonical_order, comment_for, spec_from_comment
from .netns import netns_path, run_in_netns

T = TypeVar("T")
XTABLES_LOCK = "/run/xtables.lock"
HOOKS = {"PRE": "PREROUTING", "POST": "POSTROUTING", "OUT": "OUTPUT"}
NFT_LIBRARY = "libnftables.so.1"
NFT_HINT = ("the nftables backend needs libnftables and its Python binding: apt-get install libnftables1 "
            "(and pip install pip-nftables, or python3-nftables)")
IPT_HINT = ("the iptables backend needs python-iptables and libiptc: apt-get install iptables "
            "(and pip install python-iptables)")
__all__ = ["NatSpec", "canonical_order", "detect_backend", "BACKENDS"]


class MissingLibrary(KernelError):
    """A NAT backend's library cannot be loaded (found before any change by require_backend)."""


def _place(ns: str | None) -> str:
    return f"netns {ns}" if ns else "host"


# --- backend selection -------------------------------------------------------------------------------
def host_flavour() -> str | None:
    """The family the host's own `iptables` command uses: nftables, iptables (legacy) or None."""
    path = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    if path:
        real = os.path.basename(os.path.realpath(path))
        if "legacy" in real:
            return "iptables"
        if "nft" in real:
            return "nftables"
    return None


def detect_backend() -> str:
    """`auto`: the family the host's own `iptables` command uses (nft -> nftables, legacy -> iptables).

    Without a loadable libnftables, nftables cannot work: auto then takes the iptables
    backend when python-iptables loads (observe's caller warns about it), and otherwise
    stays with nftables so that require_backend names what to install."""
    flavour = host_flavour() or "nftables"
    if flavour == "nftables" and not nft_available() and iptc_available():
        return "iptables"
    return flavour


@functools.cache
def nft_available() -> bool:
    try:
        _nft()
    except KernelError:
        return False
    return True


@functools.cache
def iptc_available() -> bool:
    try:
        _iptc()
    except KernelError:
        return False
    return True


def require_backend(backend: str) -> None:
    """Fail before any change when a NAT backend's library is missing, saying what to install.

    A missing dependency is a usage problem (exit 2), not a failed kernel operation."""
    try:
        _nft() if backend == "nftables" else _iptc()
    except KernelError as err:
        raise UsageError(f"{err}; nothing was changed") from None


def backend_warnings(backends: set[str]) -> list[str]:
    if "iptables" in backends and host_flavour() == "nftables" and not nft_available():
        return ["NAT goes to the iptables backend (legacy x_tables: iptables-legacy-save shows it, "
                "nft list ruleset does not) although this host's iptables is the nf_tables flavour, because "
                f"libnftables cannot be loaded: {NFT_HINT}"]
    return []


# --- nftables ----------------------------------------------------------------------------------------
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


def nft_table_name(topology: str) -> str:
    return f"cnetctl-{topology}"


def _nft_table_comment(ns: str | None, name: str) -> str | None:
    rc, out, _ = nft_text(ns, f"list table inet {name}")
    for line in out.splitlines()[1:] if rc == 0 else []:
        if not line.strip() or line.rstrip().endswith("{"):
            break  # the table's own attributes come first, then its sets and chains
        found = re.fullmatch(r'\s*comment "(.*)"', line)
        if found:
            return found.group(1)
    return None


def nft_owner(ns: str | None, topology: str, label: str, items: list[dict[str, Any]]) -> str | None:
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
    rules = [i["rule"] for i in items if i.get("rule", {}).get("family") == "inet" and i["rule"].get("table") == name]
    if comment is None and rules and all(str(r.get("comment", "")).startswith(label + " ") for r in rules):
        return "unmarked"
    return "foreign"


def nft_foreign(ns: str | None, topology: str, label: str) -> str:
    return (f"table inet {nft_table_name(topology)} in {_place(ns)} exists and is not cnetctl's "
            f"(it has no comment \"{label}\" marking it as topology {topology}'s)")


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


NFT_LOCAL_DADDR = {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}


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
    if hook == "OUT" and spec.output_local_only:
        exprs.append(NFT_LOCAL_DADDR)
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
    """add table; flush table; add chains and rules — one transaction that converges.

    The table is first created with its owner comment (text syntax: see the module docstring)."""
    name = nft_table_name(topology)
    owner = nft_owner(ns, topology, label, nft_ruleset(ns))
    if owner == "foreign":
        raise KernelError(f"write table inet {name}: {nft_foreign(ns, topology, label)}")
    if owner != "mine":
        # A table from before the marker cannot get a comment in place: re-create it.
        text = (f"delete table inet {name}\n" if owner == "unmarked" else "") + \
            f'add table inet {name} {{ comment "{label}" ; }}'
        rc, _, err = nft_text(ns, text)
        if rc != 0:
            raise KernelError(f"create table inet {name} in {_place(ns)}: nftables: {err.strip() or rc}")
    table = {"family": "inet", "name": name}
    cmds: list[dict[str, Any]] = [{"add": {"table": table}}, {"flush": {"table": table}}]
    in_table = {"family": "inet", "table": name}
    for chain, hook, prio in NFT_CHAINS.values():
        cmds.append({"add": {"chain": {**in_table, "name": chain, "type": "nat", "hook": hook, "prio": prio,
                                       "policy": "accept"}}})
    for spec in specs:
        for hook in spec.hooks:
            cmds.append({"add": {"rule": {**in_table, "chain": NFT_CHAINS[hook][0],
                                          "expr": nft_rule_exprs(spec, hook), "comment": comment_for(label, spec)}}})
    try:
        nft_run(ns, cmds, f"write table inet {name} in {_place(ns)}")
    except KernelError:
        if owner is None:  # the empty table made just above: leave nothing behind
            nft_run(ns, [{"delete": {"table": table}}], f"delete table inet {name} in {_place(ns)}")
        raise


def nft_delete(ns: str | None, topology: str, label: str) -> None:
    """Delete our table; a missing table, or a same-named one that is not ours, is left alone."""
    if nft_owner(ns, topology, label, nft_ruleset(ns)) in ("mine", "unmarked"):
        name = nft_table_name(topology)
        nft_run(ns, [{"delete": {"table": {"family": "inet", "name": name}}}],
                f"delete table inet {name} in {_place(ns)}")


def _nft_local_only(rule: dict[str, Any]) -> bool:
    return any(e == NFT_LOCAL_DADDR for e in rule.get("expr", []))


def nft_read(ns: str | None, topology: str, label: str, items: list[dict[str, Any]],
             foreign: list[str]) -> list[NatSpec] | None:
    """Our rules in `ns` (None: no table of ours); a same-named table of someone else goes to `foreign`.

    items: `nft -j list ruleset` of `ns`."""
    owner = nft_owner(ns, topology, label, items)
    if owner is None:
        return None
    if owner == "foreign":
        foreign.append(nft_foreign(ns, topology, label))
        return None
    name = nft_table_name(topology)
    seen: list[NatSpec] = []
    for item in items:
        rule = item.get("rule")
        if not rule or rule.get("family") != "inet" or rule.get("table") != name:
            continue
        spec = spec_from_comment(label, rule.get("comment"))
        if spec is None:
            spec = NatSpec.unknown(f"rule-{rule.get('handle')}-in-{rule.get('chain')}")
        elif rule.get("chain") == "output" and spec.output_local_only and not _nft_local_only(rule):
            spec = NatSpec.unknown(f"output-copy-without-local-limit-of {spec.text()}")
        if spec not in seen:
            seen.append(spec)
    if owner == "unmarked":
        seen.append(NatSpec.unknown("table-without-owner-comment"))  # drift: the next apply marks it
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
        raise MissingLibrary(f"{IPT_HINT} ({err})") from err
    return iptc


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


def chain_name(topology: str, hook: str) -> str:
    return f"CNET-{topology.upper()}-{hook}"


def owner_marker(label: str) -> str:
    """The comment of the marker rule that ends every chain cnetctl owns."""
    return f"{label} owner"


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


def _ipt_owner(iptc: Any, table: Any, builtin: str, name: str, label: str) -> str | None:
    """"mine" (the chain holds our marker rule, or our commented jump from `builtin` reaches
    it: chains from before the marker), "foreign", or None (no such chain)."""
    if not table.is_chain(name):
        return None
    if any(_ipt_comment(r) == owner_marker(label) for r in iptc.Chain(table, name).rules):
        return "mine"
    if any(_ipt_comment(r) == label and r.target is not None and r.target.name == name
           for r in iptc.Chain(table, builtin).rules):
        return "mine"
    return "foreign"


def ipt_foreign(ns: str | None, topology: str, label: str, table: str, name: str, v6: bool) -> str:
    return (f"chain {name} in the {'ip6tables' if v6 else 'iptables'}-legacy {table} table of {_place(ns)} "
            f"exists and is not cnetctl's (it has no rule commented \"{owner_marker(label)}\" marking it as "
            f"topology {topology}'s)")


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
        if hook == "OUT" and spec.output_local_only:
            rule.create_match("addrtype").dst_type = "LOCAL"
        rule.protocol = spec.protocol
        match = rule.create_match(spec.protocol)
        match.dport = str(spec.port)
        target = rule.create_target("DNAT")
        addr = spec.to_addr if not v6 else f"[{spec.to_addr}]"
        target.to_destination = f"{addr}:{spec.to_port}" if spec.to_port else spec.to_addr
    m = rule.create_match("comment")
    m.comment = comment
    return rule


def _ipt_local_only(rule: Any) -> bool:
    return any(m.name == "addrtype" and str(m.dst_type).upper() == "LOCAL" for m in rule.matches)


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
    """Our chain `name` holding exactly `rules` and ending with the owner marker, reached from
    `builtin` by one jump commented `label`; with rules=None, neither chain nor jump. Staged in
    `table` until its commit. A same-named chain that is not ours is never touched."""
    owner = _ipt_owner(iptc, table, builtin, name, label)
    if owner == "foreign" and rules is not None:
        raise RuntimeError(f"chain {name} exists and is not cnetctl's (no rule commented "
                           f"\"{owner_marker(label)}\"); it was left untouched")
    base = iptc.Chain(table, builtin)
    for rule in list(base.rules):
        if _ipt_comment(rule) == label:
            base.delete_rule(rule)
    if owner == "mine":
        iptc.Chain(table, name).flush()
        iptc.Chain(table, name).delete()
    if rules is None:
        return
    chain = table.create_chain(name)
    for rule in rules:
        chain.append_rule(rule)
    marker = (iptc.Rule6 if v6 else iptc.Rule)()
    marker.create_match("comment").comment = owner_marker(label)
    marker.create_target("RETURN")
    chain.append_rule(marker)
    jump = (iptc.Rule6 if v6 else iptc.Rule)()
    jump.create_target(name)
    comment = jump.create_match("comment")
    comment.comment = label
    base.insert_rule(jump)


def _ipt_read_chain(iptc: Any, table: Any, name: str, label: str) -> list[str]:
    texts: list[str] = []
    for rule in iptc.Chain(table, name).rules:
        comment = _ipt_comment(rule)
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


def _ipt_read_child(topology: str, label: str, v6: bool) -> tuple[list[str] | None, list[str]]:
    """(our rules' texts or None when nothing of ours is there, names of same-named foreign chains)."""
    iptc = _iptc()
    found: list[str] | None = None
    foreign: list[str] = []
    if "nat" not in legacy_tables(None, v6):
        return None, foreign
    table = _ipt_table(iptc, "nat", v6)
    for hook, builtin in HOOKS.items():
        nm = chain_name(topology, hook)
        jumps = [r for r in iptc.Chain(table, builtin).rules if _ipt_comment(r) == label]
        owner = _ipt_owner(iptc, table, builtin, nm, label)
        if owner == "foreign":
            foreign.append(nm)
        if owner != "mine":
            if jumps:
                found = found or []
                found.append(NatSpec.unknown("jump-without-chain").text())
            continue
        found = found or []
        if len(jumps) != 1:
            found.append(NatSpec.unknown(f"jumps={len(jumps)}").text())
        if not any(_ipt_comment(r) == owner_marker(label) for r in iptc.Chain(table, nm).rules):
            found.append(NatSpec.unknown("chain-without-owner-marker").text())  # drift: the next apply marks it
        found += [t for t in _ipt_read_chain(iptc, table, nm, label) if t not in found]
    table.close()
    return found, foreign


def ipt_apply(ns: str | None, topology: str, label: str, specs: list[NatSpec]) -> None:
    for v6 in (False, True):
        call_in_netns_child(ns, _ipt_apply_child, topology, label, [s.text() for s in specs], False, v6)


def ipt_delete(ns: str | None, topology: str, label: str) -> None:
    for v6 in (False, True):
        if "nat" in legacy_tables(ns, v6):
            call_in_netns_child(ns, _ipt_apply_child, topology, label, [], True, v6)


def ipt_read(ns: str | None, topology: str, label: str, items: list[dict[str, Any]],
             foreign: list[str]) -> list[NatSpec] | None:
    """Our rules in `ns` (None: no chain of ours); same-named chains of someone else go to `foreign`."""
    texts: list[str] | None = None
    for v6 in (False, True):
        if "nat" in legacy_tables(ns, v6):
            part, others = call_in_netns_child(ns, _ipt_read_child, topology, label, v6)
            foreign += [ipt_foreign(ns, topology, label, "nat", name, v6) for name in others]
            if part is not None:
                texts = (texts or []) + part
    return None if texts is None else [NatSpec.parse(t) for t in texts]


BACKENDS: dict[str, tuple[Callable[..., None], Callable[..., None], Callable[..., list[NatSpec] | None]]] = {
    "nftables": (nft_apply, nft_delete, nft_read),
    "iptables": (ipt_apply, ipt_delete, ipt_read),
}


def nat_read(ns: str | None, topology: str, label: str, items: list[dict[str, Any]],
             foreign: list[str]) -> dict[str, list[NatSpec]]:
    """backend -> our NAT rules in `ns`, for each backend holding a table or chains of ours.

    items: `nft -j list ruleset` of `ns` (empty without libnftables)."""
    out = {}
    for backend, (_, _, read) in BACKENDS.items():
        if backend == "nftables" and not nft_available():
            continue
        specs = read(ns, topology, label, items, foreign)
        if specs is not None:
            out[backend] = specs
    return out


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
    if "filter" not in legacy_tables(None, v6):
        return None  # looking must not instantiate the table
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


def _ipt_forward_read_child(topology: str, label: str, v6: bool) -> tuple[list[str] | None, bool]:
    """(our forward-accept subnets or None when nothing of ours is there, whether a same-named
    chain of someone else is there)."""
    iptc = _iptc()
    if "filter" not in legacy_tables(None, v6):
        return None, False
    table = _ipt_table(iptc, "filter", v6)
    name = chain_name(topology, "FWD")
    jumps = [r for r in iptc.Chain(table, "FORWARD").rules if _ipt_comment(r) == label]
    owner = _ipt_owner(iptc, table, "FORWARD", name, label)
    if owner != "mine" and not jumps:
        table.close()
        return None, owner == "foreign"
    subnets: list[str] = []
    if owner == "mine":
        rules = iptc.Chain(table, name).rules
        for rule in rules:
            c = _ipt_comment(rule) or ""
            if c.startswith(label + " forward ") and c.split()[-1] not in subnets:
                subnets.append(c.split()[-1])
        if not any(_ipt_comment(r) == owner_marker(label) for r in rules):
            subnets.append("?")  # a chain from before the marker: the next apply marks it
    if len(jumps) != 1 or owner != "mine":
        subnets.append("?")  # a missing or doubled jump, or a jump to no chain of ours, is drift
    table.close()
    return subnets, owner == "foreign"


def forward_read(ns: str | None, topology: str, label: str, nft_items: list[dict[str, Any]],
                 foreign: list[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Where this topology has forward-accept rules in `ns`, and for which subnets (sorted);
    a same-named legacy chain of someone else goes to `foreign`.

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
            found, others = call_in_netns_child(ns, _ipt_forward_read_child, topology, label, v6)
            if others and foreign is not None:
                foreign.append(ipt_foreign(ns, topology, label, "filter", chain_name(topology, "FWD"), v6))
            if found is not None:
                out[where] = tuple(found)
    return {w: tuple(sorted(set(s))) for w, s in out.items()}
