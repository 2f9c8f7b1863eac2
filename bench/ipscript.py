"""The same kernel work as a cnetctl apply, written as `ip` commands: the baselines.

From a topology's desired resources (cnetctl's own planner puts them in order) this
makes (a) a shell script of one `ip` command per operation, and (b) `ip -batch`
files: one for the root namespace and one per namespace, the floor of what the
iproute2 tools can do. Teardown: delete the namespaces (their veths go with them)
and the host's bridges.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable

from cnetctl.model.linkkinds import VethSpec
from cnetctl.model.natspec import NatSpec
from cnetctl.model.resources import Address, Link, Nat, Netns, Resource, Route, Rule, Sysctl

Command = tuple[str | None, list[str]]   # (namespace, ip arguments) ; namespace None = root


def _veth(link: Link, spec: VethSpec) -> list[str]:
    args = ["link", "add", link.ifname]
    if link.ns:
        args += ["netns", link.ns]
    args += ["type", "veth", "peer", "name", spec.peer_ifname or ""]
    if spec.peer_ns:
        args += ["netns", spec.peer_ns]
    return args


def _link_set(link: Link) -> list[str]:
    args = ["link", "set", link.ifname]
    if link.mtu:
        args += ["mtu", str(link.mtu)]
    if link.master:
        args += ["master", link.master]
    return args + ["up"]


def _route(r: Route) -> list[str]:
    args = ["route", "add"] + ([] if r.type == "unicast" else [r.type]) + [r.dst]
    for word, value in (("via", r.via), ("dev", r.dev), ("src", r.src)):
        if value:
            args += [word, value]
    args += ["table", str(r.table), "metric", str(r.metric), "proto", "147"]
    return args + (["onlink"] if r.onlink else [])


def _rule(r: Rule) -> list[str]:
    args = ["rule", "add"]  # the family follows from/to (batch files take no -4/-6)
    for word, value in (("from", r.src), ("to", r.dst), ("iif", r.iif), ("oif", r.oif)):
        if value:
            args += [word, value]
    if r.fwmark is not None:
        args += ["fwmark", f"{r.fwmark:#x}/{r.fwmask if r.fwmask is not None else 0xFFFFFFFF:#x}"]
    return args + ["priority", str(r.priority), "table", str(r.table), "proto", "147"]


def _commands(res: Resource, seen_pairs: set[object]) -> list[Command]:
    if isinstance(res, Netns):
        return [(None, ["netns", "add", res.ns])]
    if isinstance(res, Link):
        out: list[Command] = []
        if res.kind == "bridge":
            out.append((res.ns, ["link", "add", res.ifname, "type", "bridge", "stp_state", "0", "forward_delay",
                                 "0"]))
        elif isinstance(res.spec, VethSpec):
            pair = frozenset({(res.ns, res.ifname), (res.spec.peer_ns, res.spec.peer_ifname)})
            if pair not in seen_pairs:
                seen_pairs.add(pair)
                out.append((None, _veth(res, res.spec)))
        return out + [(res.ns, _link_set(res))]
    if isinstance(res, Address):
        nodad = ["nodad"] if ipaddress.ip_interface(res.cidr).version == 6 else []
        return [(res.ns, ["addr", "add", res.cidr, "dev", res.ifname, *nodad])]
    if isinstance(res, Sysctl):
        path = "/proc/sys/" + res.name.replace(".", "/")
        return [(res.ns, ["__sh__", f"echo {shlex.quote(res.value or '')} > {path}"])]
    if isinstance(res, Route):
        return [(res.ns, _route(res))]
    if isinstance(res, Rule):
        return [(res.ns, _rule(res))]
    if isinstance(res, Nat):
        return [(res.ns, ["__nft__", nft_script(res)])]
    return []


def commands(resources: Iterable[Resource]) -> list[Command]:
    """Every operation of building `resources`, in the planner's order."""
    from cnetctl.plan import plan

    seen: set[object] = set()
    return [c for action in plan(resources, []).actions for c in _commands(action.resource, seen)]


def nft_script(res: Nat) -> str:
    """The topology's NAT of one namespace as an `nft -f` script (one table, three chains)."""
    rules = []
    for spec in (NatSpec.parse(t) for t in res.rules):
        fam = "ip" if spec.family == 4 else "ip6"
        if spec.kind in ("masquerade", "snat"):
            oif = f" oifname {spec.out_interface.replace('!', '!= ')}" if spec.out_interface else ""
            verdict = "masquerade" if spec.kind == "masquerade" else f"snat {fam} to {spec.to_source}"
            rules.append(f"add rule inet bench-nat post {fam} saddr {spec.source}{oif} {verdict}")
        else:
            dst = f" {fam} daddr {spec.destination}" if spec.destination else ""
            rules.append(f"add rule inet bench-nat pre{dst} {spec.protocol} dport {spec.port} dnat {fam} to {spec.to}")
    return ("table inet bench-nat {\n"
            "  chain pre { type nat hook prerouting priority -100; }\n"
            "  chain post { type nat hook postrouting priority 100; }\n}\n" + "\n".join(rules) + "\n")


def _shell_line(ns: str | None, args: list[str]) -> str:
    if args[0] == "__sh__":
        prefix = f"ip netns exec {ns} " if ns else ""
        return f"{prefix}sh -c {shlex.quote(args[1])}"
    if args[0] == "__nft__":
        prefix = f"ip netns exec {ns} " if ns else ""
        return f"{prefix}nft -f - <<'EOF'\n{args[1]}EOF"
    return "ip " + (f"-n {ns} " if ns else "") + " ".join(shlex.quote(a) for a in args)


def shell_script(cmds: list[Command]) -> str:
    return "set -e\n" + "\n".join(_shell_line(ns, args) for ns, args in cmds) + "\n"


def batch_script(cmds: list[Command], workdir: str) -> str:
    """A shell script running one `ip -batch` for the root namespace, then one per namespace
    (writing the batch files into `workdir` first, outside the timed part)."""
    per_ns: dict[str | None, list[str]] = {}
    extra: list[str] = []
    for ns, args in cmds:
        if args[0] in ("__sh__", "__nft__"):
            extra.append(_shell_line(ns, args))
        else:
            per_ns.setdefault(ns, []).append(" ".join(shlex.quote(a) for a in args))
    lines = ["set -e"]
    for i, (ns, ops) in enumerate(per_ns.items()):
        path = f"{workdir}/batch{i}"
        with open(path, "w") as fh:
            fh.write("\n".join(ops) + "\n")
        lines.append(f"ip {'-n ' + ns + ' ' if ns else ''}-batch {path}")
    return "\n".join(lines + extra) + "\n"


def teardown(resources: Iterable[Resource]) -> list[Command]:
    out: list[Command] = []
    for r in resources:
        if isinstance(r, Netns):
            out.append((None, ["netns", "del", r.ns]))
        elif isinstance(r, Link) and r.ns is None and r.kind == "bridge":
            out.append((None, ["link", "del", r.ifname]))
    return out
