"""Every scenario manifest under manifests/, proven on the real kernel.

Parametrised over manifests/*.yaml, so a new manifest is covered by adding the
file. What cnetctl claims (its exit code, `verify -o json`) is cross-examined
with the kernel's own view: `ip -j` read-back of namespaces, addresses, routes,
rules and sysctls, `ip route get`, and real ping(8) from inside the namespaces.
The manifest is read here with PyYAML, independently of cnetctl's loader.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import MANIFESTS, cnetctl, ip, netns_list, ping, run

FILES = sorted(MANIFESTS.glob("*.yaml"))
HOST = "host"
SPANS_MACHINES = "spans machines (hosts:): tests/kernel/test_multihost.py applies it on two simulated machines"
TABLES = {"main": 254, "local": 255, "default": 253}


# --- the manifest, read independently of cnetctl --------------------------------------------

def load(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.safe_load(fh)


def ns_of(topo: dict[str, Any], node: str) -> str | None:
    if node == HOST or node in (topo.get("hosts") or {}):   # a machine's root namespace
        return None
    return (topo["nodes"][node] or {}).get("netns") or f"{topo['name']}-{node}"


def namespaces(topo: dict[str, Any]) -> set[str]:
    return {ns for node in topo["nodes"] if (ns := ns_of(topo, node))}


def table_id(topo: dict[str, Any], table: int | str | None) -> int:
    if table is None:
        return TABLES["main"]
    if isinstance(table, int) or str(table).isdigit():
        return int(table)
    return topo.get("tables", {}).get(table) or TABLES[table]


def kernel_table(table: str | None) -> int:
    """`ip -j` names a table by number, or by its rt_tables name; no "table" key means main."""
    if table is None:
        return TABLES["main"]
    return TABLES[table] if table in TABLES else int(table)


def declared_addresses(topo: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(node, ifname) -> CIDRs, for interfaces and bridges alike."""
    out: dict[tuple[str, str], list[str]] = {}
    for node, spec in topo["nodes"].items():
        spec = spec or {}
        for kind in ("interfaces", "bridges"):
            for ifname, ispec in (spec.get(kind) or {}).items():
                if ispec and ispec.get("addresses"):
                    out[(node, ifname)] = [str(ipaddress.ip_interface(a)) for a in ispec["addresses"]]
    return out


def resolve(topo: dict[str, Any], target: str) -> str:
    """A check's `to`: an IP, or NODE:IFNAME -> that interface's first address."""
    if ":" in target and target.split(":", 1)[0] in topo["nodes"]:
        node, ifname = target.split(":", 1)
        return declared_addresses(topo)[(node, ifname)][0].split("/")[0]
    return str(ipaddress.ip_address(target))


def checks(topo: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [c[kind] for c in topo.get("checks") or [] if kind in c]


def is_v6(*values: str | None) -> bool:
    return any(v and v != "default" and ":" in v for v in values)


def norm_dst(dst: str) -> str:
    return "default" if dst == "default" else str(ipaddress.ip_network(dst, strict=False))


# --- the kernel's view --------------------------------------------------------------------------

def route_get(ns: str | None, to: str, src: str | None = None, iif: str | None = None,
              fwmark: str | int | None = None) -> tuple[dict[str, Any] | None, str]:
    """`ip -j route get`: (the answer, "") or (None, iproute2's error message)."""
    argv = ["ip", "-j"] + (["-n", ns] if ns else []) + ["route", "get", to]
    if src:
        argv += ["from", src]
    if iif:
        argv += ["iif", iif]
    if fwmark is not None:
        argv += ["mark", str(fwmark).split("/")[0]]
    res = run(*argv)
    if res.returncode != 0:
        return None, res.stderr.strip()
    (answer,) = json.loads(res.stdout)
    return answer, ""


# iproute2 prints the errno the kernel's lookup returned for these route types.
ROUTE_GET_ERRORS = {"unreachable": "No route to host", "prohibit": "Permission denied",
                    "blackhole": "Invalid argument"}


def route_get_mismatches(topo: dict[str, Any], check: dict[str, Any]) -> list[str]:
    """What `ip route get` disagrees with in a route check's expectation (empty: all agree)."""
    ns = ns_of(topo, check["node"])
    want = check["expect"]
    answer, error = route_get(ns, check["to"], check.get("from"), check.get("iif"), check.get("fwmark"))
    if answer is None:
        wtype = want.get("type")
        if wtype in ROUTE_GET_ERRORS and ROUTE_GET_ERRORS[wtype] in error and set(want) == {"type"}:
            return []
        return [f"ip route get failed: {error}"]
    wrong = []
    have = {
        "via": answer.get("gateway"),
        "dev": answer.get("dev"),
        "table": kernel_table(answer.get("table")),
        "src": answer.get("prefsrc") or answer.get("from"),
        "type": answer.get("type", "unicast"),
    }
    for key, value in want.items():
        expected = table_id(topo, value) if key == "table" else value
        if have[key] != expected:
            wrong.append(f"{key}: expected {expected}, kernel says {have[key]} ({answer})")
    return wrong


def ping_until(ns: str | None, dst: str, want: bool, tries: int = 3) -> bool:
    """Real ping(8). A reachable target gets a few tries (first packet may wait for ARP/ND);
    an unreachable one is asked once, with the same 1 s timeout cnetctl's checks use."""
    for _ in range(tries if want else 1):
        if ping(ns, dst):
            return True
    return False


def sysctl(ns: str | None, key: str) -> str:
    path = "/proc/sys/" + key.replace(".", "/")
    if ns is None:
        return Path(path).read_text().strip()
    return run("ip", "netns", "exec", ns, "cat", path, check=True).stdout.strip()


def verify_json(path: Path) -> dict[str, Any]:
    res = cnetctl("verify", str(path), "-o", "json")
    assert res.returncode in (0, 1), res.stdout + res.stderr
    return json.loads(res.stdout)


# --- read-back assertions ----------------------------------------------------------------------

def assert_addresses(topo: dict[str, Any]) -> None:
    for (node, ifname), cidrs in declared_addresses(topo).items():
        ns = ns_of(topo, node)
        (link,) = ip(ns, "addr", "show", "dev", ifname)  # type: ignore[misc]
        live = {f"{a['local']}/{a['prefixlen']}": a for a in link["addr_info"]}
        for cidr in cidrs:
            assert cidr in live, f"{cidr} missing on {ifname} in {ns or 'host'}: {sorted(live)}"
            assert not live[cidr].get("dadfailed"), f"{cidr} on {ifname} in {ns}: DAD failed"
        assert "UP" in link["flags"], f"{ifname} in {ns} is down"


def assert_routes(topo: dict[str, Any]) -> None:
    for node, spec in topo["nodes"].items():
        ns = ns_of(topo, node)
        for r in (spec or {}).get("routes") or []:
            fam = "-6" if is_v6(r["to"], r.get("via"), r.get("src")) else "-4"
            live = ip(ns, fam, "route", "show", "table", "all")
            table = table_id(topo, r.get("table"))
            found = [x for x in live  # type: ignore[union-attr]
                     if norm_dst(x["dst"]) == norm_dst(r["to"]) and kernel_table(x.get("table")) == table
                     and x.get("type", "unicast") == r.get("type", "unicast")
                     and x.get("gateway") == r.get("via")
                     and (r.get("dev") is None or x.get("dev") == r["dev"])
                     and (r.get("metric") is None or x.get("metric", 0) == r["metric"])]
            assert found, f"route {r} missing in {ns or 'host'} table {table}: {live}"
            assert [x["protocol"] for x in found] == ["147"], f"route {r} in {ns}: {found}"


def assert_rules(topo: dict[str, Any]) -> None:
    for node, spec in topo["nodes"].items():
        ns = ns_of(topo, node)
        for rl in (spec or {}).get("rules") or []:
            fam = "-6" if is_v6(rl.get("from"), rl.get("to")) else "-4"
            live = ip(ns, fam, "rule", "show")
            table = table_id(topo, rl["table"])

            def sel(x: dict[str, Any], key: str, lenkey: str) -> str | None:
                if x.get(key) in (None, "all"):
                    return None
                return str(ipaddress.ip_network(f"{x[key]}/{x.get(lenkey, 128 if ':' in x[key] else 32)}"))

            found = [x for x in live  # type: ignore[union-attr]
                     if kernel_table(x.get("table")) == table
                     and sel(x, "src", "srclen") == (norm_dst(rl["from"]) if rl.get("from") else None)
                     and sel(x, "dst", "dstlen") == (norm_dst(rl["to"]) if rl.get("to") else None)
                     and (rl.get("priority") is None or x["priority"] == rl["priority"])]
            assert [x.get("protocol") for x in found] == ["147"], f"rule {rl} in {ns}: {live}"


def assert_sysctls(topo: dict[str, Any]) -> None:
    for node, spec in topo["nodes"].items():
        for key, value in ((spec or {}).get("sysctls") or {}).items():
            assert sysctl(ns_of(topo, node), key) == str(int(value) if isinstance(value, bool) else value)


def assert_pings(topo: dict[str, Any]) -> None:
    wrong = []
    for c in checks(topo, "ping"):
        dst = resolve(topo, c["to"])
        want = c.get("expect", "reachable") == "reachable"
        if ping_until(ns_of(topo, c["from"]), dst, want) != want:
            wrong.append(f"{c['from']} -> {c['to']} ({dst}): expected {c.get('expect', 'reachable')}")
    assert not wrong, wrong


def assert_route_checks(topo: dict[str, Any]) -> None:
    wrong = {json.dumps(c): m for c in checks(topo, "route") if (m := route_get_mismatches(topo, c))}
    assert not wrong, wrong


# --- the tests ---------------------------------------------------------------------------------

@pytest.fixture(params=FILES, ids=[f.stem for f in FILES])
def manifest(request: pytest.FixtureRequest) -> Path:
    return request.param


def test_manifests_are_distinct():
    """Several manifests may be applied at once: names, namespaces, host bridges and subnets never clash."""
    topos = {f.name: load(f) for f in FILES}
    names = [t["name"] for t in topos.values()]
    assert len(set(names)) == len(names)
    seen_ns: dict[str, str] = {}
    seen_host_ifs: dict[str, str] = {}
    nets: dict[str, set[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
    for fname, topo in topos.items():
        for ns in namespaces(topo):
            assert ns not in seen_ns, f"{fname} and {seen_ns[ns]} both use netns {ns}"
            seen_ns[ns] = fname
        for ifname in ((topo["nodes"].get(HOST) or {}).get("bridges") or {}):
            assert ifname not in seen_host_ifs, f"{fname} and {seen_host_ifs[ifname]} both own host bridge {ifname}"
            seen_host_ifs[ifname] = fname
        nets[fname] = {ipaddress.ip_interface(c).network
                       for cidrs in declared_addresses(topo).values() for c in cidrs}
        for cidrs in declared_addresses(topo).values():
            for c in cidrs:
                addr = ipaddress.ip_interface(c).ip
                assert addr.is_private and (addr.version == 6 or addr in ipaddress.ip_network("10.0.0.0/8")), c
    for (fa, na), (fb, nb) in itertools.combinations(nets.items(), 2):
        clash = [(a, b) for a in na for b in nb if a.version == b.version and a.overlaps(b)]
        assert not clash, f"{fa} and {fb} overlap: {clash}"


def test_manifest_has_checks(manifest: Path):
    topo = load(manifest)
    assert checks(topo, "ping"), "every scenario proves itself with real packets"
    assert any(c.get("expect") == "unreachable" for c in checks(topo, "ping")), \
        "every scenario shows something that must NOT be reachable"
    assert manifest.read_text().startswith("#"), "every manifest opens with a comment explaining it"


def test_manifest_end_to_end(manifest: Path, clean_world):
    topo = load(manifest)
    if topo.get("hosts"):
        pytest.skip(SPANS_MACHINES)
    name, nss = topo["name"], namespaces(topo)

    res = cnetctl("validate", str(manifest), "-o", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["checks"] == len(topo.get("checks") or [])

    res = cnetctl("apply", str(manifest))
    assert res.returncode == 0, res.stdout + res.stderr
    report = verify_json(manifest)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert (report["passed"], report["failed"]) == (len(topo["checks"]) + 1, 0), failed
    assert [c["kind"] for c in report["checks"]][0] == "readback"

    # The kernel's own view, not cnetctl's report.
    assert nss <= set(netns_list())
    for ns in nss:
        (lo,) = ip(ns, "link", "show", "lo")  # type: ignore[misc]
        assert lo["ifalias"] == f"cnetctl:{name}" and "UP" in lo["flags"]
    assert_addresses(topo)
    assert_routes(topo)
    assert_rules(topo)
    assert_sysctls(topo)
    assert_route_checks(topo)
    assert_pings(topo)

    res = cnetctl("apply", str(manifest), "--no-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"topology {name}: no changes" in res.stdout

    res = cnetctl("destroy", str(manifest))
    assert res.returncode == 0, res.stdout + res.stderr
    assert not nss & set(netns_list())
    # clean_world: the world's host namespace is byte-identical to before.


@pytest.mark.long
def test_all_manifests_coexist(clean_world):
    """Applied together, every manifest still passes all its checks; destroyed, nothing is left.
    (A manifest that spans machines has a slice per machine, none of them this one.)"""
    files = [f for f in FILES if not load(f).get("hosts")]
    for f in files:
        res = cnetctl("apply", str(f), "--no-verify")
        assert res.returncode == 0, f"{f.name}: {res.stdout}{res.stderr}"
    for f in files:
        report = verify_json(f)
        assert report["failed"] == 0, (f.name, [c for c in report["checks"] if not c["ok"]])
    for f in files:
        assert cnetctl("destroy", str(f)).returncode == 0
    every = set().union(*(namespaces(load(f)) for f in files))
    assert not every & set(netns_list())


# --- scenario-specific proofs --------------------------------------------------------------------

NOFWD = MANIFESTS / "router-no-forward.yaml"
POLICY = MANIFESTS / "policy-routing.yaml"


def test_router_no_forward_fails_only_because_forwarding_is_off(clean_world):
    """The far side is unreachable; writing 1 to the router's ip_forward by hand makes it reachable,
    so the manifest's `expect: unreachable` checks are able to fail."""
    topo = load(NOFWD)
    gw, north, south = (ns_of(topo, n) for n in ("gw", "north", "south"))
    assert topo["nodes"]["gw"]["sysctls"]["net.ipv4.ip_forward"] == 0
    assert cnetctl("apply", str(NOFWD)).returncode == 0

    assert sysctl(gw, "net.ipv4.ip_forward") == "0"
    assert not ping(north, "10.31.2.10") and not ping(south, "10.31.1.10")
    assert ping(north, "10.31.1.1") and ping(south, "10.31.2.1")       # the router's near addresses
    assert ping(north, "10.31.2.1")                                      # local delivery, not forwarding
    answer, error = route_get(gw, "10.31.2.10", "10.31.1.10", "eth0")
    assert answer is None and "No route to host" in error

    run("ip", "netns", "exec", gw, "sysctl", "-w", "net.ipv4.ip_forward=1", check=True)  # type: ignore[arg-type]
    assert ping_until(north, "10.31.2.10", True) and ping_until(south, "10.31.1.10", True)
    answer, _ = route_get(gw, "10.31.2.10", "10.31.1.10", "eth0")
    assert answer and answer["dev"] == "eth1"
    report = verify_json(NOFWD)
    failed = {(c["kind"], c.get("to")) for c in report["checks"] if not c["ok"]}
    assert {("ping", "south:eth0"), ("ping", "north:eth0"), ("readback", None)} <= failed
    assert ("ping", "fd00:31:2::10") not in failed                      # IPv6 forwarding is still off

    # Re-apply repairs the drift: back to 0, the far side is gone again.
    res = cnetctl("apply", str(NOFWD))
    assert res.returncode == 0, res.stdout + res.stderr
    assert sysctl(gw, "net.ipv4.ip_forward") == "0"
    assert not ping(north, "10.31.2.10")
    assert cnetctl("destroy", str(NOFWD)).returncode == 0


def test_policy_routing_uses_the_named_table_only_for_from_traffic(clean_world):
    topo = load(POLICY)
    edge = ns_of(topo, "edge")
    assert topo["tables"] == {"eth0_table": 200}
    assert cnetctl("apply", str(POLICY)).returncode == 0

    rules = [r for r in ip(edge, "rule", "show") if r.get("protocol") == "147"]  # type: ignore[union-attr]
    assert [(r["priority"], r["src"], r["srclen"], r["table"]) for r in rules] == [(1000, "10.40.10.0", 24, "200")]
    t200 = ip(edge, "route", "show", "table", "200")
    assert {(r["dst"], r.get("gateway"), r["dev"], r["protocol"]) for r in t200} == {  # type: ignore[union-attr]
        ("default", "10.40.1.1", "eth0", "147"), ("10.40.10.0/24", None, "eth2", "147")}

    # Every route check of the manifest, against `ip -j -n NS route get TO from SRC`.
    route_checks = checks(topo, "route")
    tables = {table_id(topo, c["expect"]["table"]) for c in route_checks}
    assert tables == {200, 254}, "the checks cover both the named table and main"
    for c in route_checks:
        assert route_get_mismatches(topo, c) == [], c

    # The same destination, three sources: only the LAN's goes through table 200.
    lan, _ = route_get(edge, "10.40.100.1", "10.40.10.10", "eth2")
    own, _ = route_get(edge, "10.40.100.1", "10.40.2.2")
    plain, _ = route_get(edge, "10.40.100.1")
    assert lan and (lan["table"], lan["gateway"], lan["dev"]) == ("200", "10.40.1.1", "eth0")
    for other in (own, plain):
        assert other
        assert (kernel_table(other.get("table")), other["gateway"], other["dev"]) == (254, "10.40.2.1", "eth1")

    # Without the rule, the LAN falls back to main: the table-200 checks fail.
    run("ip", "-n", edge, "rule", "del", "priority", "1000", check=True)  # type: ignore[arg-type]
    lan, _ = route_get(edge, "10.40.100.1", "10.40.10.10", "eth2")
    assert lan and kernel_table(lan.get("table")) == 254 and lan["gateway"] == "10.40.2.1"
    report = verify_json(POLICY)
    assert report["failed"] >= 4
    assert cnetctl("destroy", str(POLICY)).returncode == 0
    assert edge not in netns_list()
