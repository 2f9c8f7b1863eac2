"""`cnetctl explain` against the kernel: our own rule walk + table lookup must give what
iproute2's `ip -j route get` gives, on hundreds of random destinations.

Fixture topology (written to a tmp file):
A small policy-routing topology (written to a tmp file by the tests that use it).

    c1 --eth0-- r1 --eth1-- up1        r1: tables isp2 (200) and inbound (201), rules on
                  \\--eth2-- up2        from / to / fwmark / iif, blackhole/unreachable/prohibit
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cnetctl import api
from cnetctl.explain import explain
from cnetctl.kernel.netns import Sockets
from cnetctl.kernel.snapshot import read_snapshot

from .conftest import MANIFESTS, cnetctl, run

QUICK = str(MANIFESTS / "quickstart.yaml")

PRT = """
apiVersion: cnetctl/v1
name: prt
tables: {isp2: 200, inbound: 201}
nodes:
  r1:
    sysctls: {net.ipv4.ip_forward: 1, net.ipv6.conf.all.forwarding: 1}
    interfaces:
      lo: {addresses: [10.10.9.1/32]}
      eth0: {addresses: [10.10.1.1/24, "fd00:a1::1/64"]}
      eth1: {addresses: [10.10.2.1/24, "fd00:a2::1/64"]}
      eth2: {addresses: [10.10.3.1/24, "fd00:a3::1/64"]}
    routes:
      - {to: default, via: 10.10.2.2}
      - {to: default, via: "fd00:a2::2"}
      - {to: default, via: 10.10.3.2, table: isp2}
      - {to: "::/0", via: "fd00:a3::2", table: isp2}
      - {to: 10.50.0.0/16, via: 10.10.3.2, table: isp2}
      - {to: 10.50.7.0/24, via: 10.10.2.2, metric: 5}
      - {to: 10.66.0.0/16, type: blackhole}
      - {to: 10.67.0.0/16, type: unreachable, table: isp2}
      - {to: 10.68.0.0/16, type: prohibit}
      - {to: 172.16.0.0/12, via: 10.10.1.2}
      - {to: 10.70.0.0/16, via: 10.10.2.2, table: inbound}
      - {to: "fd00:66::/32", type: blackhole}
      - {to: "fd00:67::/32", type: unreachable}
      - {to: "2001:db8:5::/48", via: "fd00:a1::2", table: isp2}
    rules:
      - {from: 10.10.9.1, table: isp2, priority: 100}
      - {to: 10.50.0.0/16, table: isp2, priority: 110}
      - {fwmark: 0x10/0xff, table: isp2, priority: 120}
      - {iif: eth1, table: inbound, priority: 130}
      - {from: "fd00:a1::/64", to: "2001:db8::/32", table: isp2, priority: 140}
  c1:
    interfaces:
      eth0: {addresses: [10.10.1.2/24, "fd00:a1::2/64"]}
    routes:
      - {to: default, via: 10.10.1.1}
      - {to: default, via: "fd00:a1::1"}
  up1:
    interfaces:
      eth0: {addresses: [10.10.2.2/24, "fd00:a2::2/64"]}
    routes:
      - {to: 10.10.0.0/16, via: 10.10.2.1}
      - {to: "fd00:a1::/64", via: "fd00:a2::1"}
  up2:
    interfaces:
      eth0: {addresses: [10.10.3.2/24]}
    routes:
      - {to: 10.10.0.0/16, via: 10.10.3.1}
links:
  - [r1:eth0, c1:eth0]
  - [r1:eth1, up1:eth0]
  - [r1:eth2, up2:eth0]
checks:
  - {ping: {from: c1, to: 10.10.2.2}}
  - {ping: {from: c1, to: "fd00:a2::2"}}
  - {mesh: {nodes: [c1, up1], family: both}}
  - {source: {from: c1, to: "up1:eth0", expect: preserved}}
  - {route: {node: r1, to: 10.50.1.1, expect: {via: 10.10.3.2, dev: eth2, table: isp2}}}
"""


STRERROR = {os.strerror(code): name for code, name in errno.errorcode.items()}
TABLES = {"local": 255, "main": 254, "default": 253}


@pytest.fixture
def prt(tmp_path: Path) -> str:
    path = tmp_path / "prt.yaml"
    path.write_text(PRT)
    res = cnetctl("apply", str(path), "-o", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    yield str(path)
    assert cnetctl("destroy", "--name", "prt").returncode == 0


def iproute_get(ns: str | None, dst: str, src: str | None = None, iif: str | None = None,
                mark: int | None = None) -> dict[str, Any]:
    """iproute2's answer, normalised like Answer.to_json(): {ok, type, table, via, dev} or {ok, error}."""
    argv = ["ip", "-j"] + (["-n", ns] if ns else []) + ["route", "get", dst]
    if src:
        argv += ["from", src]
    if iif:
        argv += ["iif", iif]
    if mark is not None:
        argv += ["mark", hex(mark)]
    res = run(*argv)
    if res.returncode != 0:
        msg = res.stderr.strip().split("RTNETLINK answers: ")[-1]
        return {"ok": False, "error": STRERROR.get(msg, msg)}
    (r,) = json.loads(res.stdout)
    table = r.get("table", "main")
    out = {"ok": True, "type": r.get("type", "unicast"), "table": TABLES.get(table) or int(table), "dev": r.get("dev")}
    if r.get("gateway"):
        out["via"] = r["gateway"]
    return out


def agree(expl: Any, ip_answer: dict[str, Any]) -> list[str]:
    """Differences between explain's computed answer and iproute2's (empty: same)."""
    ours = expl.answer.to_json()
    if not ip_answer["ok"] or not ours["ok"]:
        if not ours["ok"] and ip_answer["ok"] and expl.answer.type == ip_answer["type"]:
            return []
        return [] if ours == ip_answer else [f"ours {ours}, iproute2 {ip_answer}"]
    diffs = []
    for key in ("type", "via", "dev", "table"):
        if key == "table" and not expl.answer.compare_table:
            continue
        a, b = ours.get(key), ip_answer.get(key)
        if key == "table" and a == 255 and b == 254 and "share one trie" in " ".join(expl.notes):
            continue
        if a != b:
            diffs.append(f"{key}: ours {a}, iproute2 {b}")
    return diffs


def check(name: str, node: str, ns: str | None, dst: str, **kw: Any) -> list[str]:
    """explain (through the API, as the CLI does) vs iproute2, for one packet."""
    return _judge(api.explain(name, node, dst, **kw), ns, dst, kw)


def _judge(expl: Any, ns: str | None, dst: str, kw: dict[str, Any]) -> list[str]:
    ip_answer = iproute_get(ns, dst, kw.get("src"), kw.get("iif"), kw.get("fwmark"))
    problems = agree(expl, ip_answer)
    if not expl.agrees:
        problems.append(f"explain reported a mismatch with RTM_GETROUTE: {expl.mismatch}")
    return [f"{dst} {kw}: {p}" for p in problems]


class Bulk:
    """Many packets through one namespace: one netlink socket, one snapshot per (family, iif)
    (the kernel is not changed meanwhile; `reset()` after changing a sysctl)."""

    def __init__(self, ns: str):
        self.ns, self.sockets, self.snaps = ns, Sockets(), {}

    def reset(self) -> None:
        self.snaps.clear()

    def check(self, dst: str, **kw: Any) -> list[str]:
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        ipr = self.sockets.get(self.ns)
        key = (family, kw.get("iif"))
        if key not in self.snaps:
            self.snaps[key] = read_snapshot(ipr, self.ns, family, kw.get("iif"))
        expl = explain(ipr, self.ns, dst, snapshot=self.snaps[key], **kw)
        return _judge(expl, self.ns, dst, kw)

    def close(self) -> None:
        self.sockets.close_all()


@pytest.fixture
def r1(prt: str) -> Iterator[Bulk]:
    bulk = Bulk("prt-r1")
    yield bulk
    bulk.close()


PRT_V4_PREFIXES = ["10.10.1.0/24", "10.10.2.0/24", "10.10.3.0/24", "10.10.9.1/32", "10.50.0.0/16", "10.50.7.0/24",
                   "10.66.0.0/16", "10.67.0.0/16", "10.68.0.0/16", "172.16.0.0/12", "10.70.0.0/16", "127.0.0.0/8",
                   "10.10.0.0/16"]


def random_v4(rng: random.Random, prefixes: list[str], n: int) -> list[str]:
    """Half uniformly random addresses, half inside the topology's prefixes (incl. their edges)."""
    out = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(n // 2)]
    while len(out) < n:
        net = ipaddress.ip_network(rng.choice(prefixes))
        pick = rng.choice(["first", "last", "any", "any"])
        off = {"first": 0, "last": net.num_addresses - 1}.get(pick, rng.randrange(net.num_addresses))
        out.append(str(net.network_address + off))
    return out


def test_explain_matches_the_kernel_on_random_ipv4(r1):
    rng = random.Random(4711)
    dests = random_v4(rng, PRT_V4_PREFIXES, 200)
    variants: list[dict[str, Any]] = [
        {"src": "10.10.1.1"},                                  # a local source no rule selects
        {"fwmark": 0x10}, {"fwmark": 0x110}, {"fwmark": 0x11},  # 0x10/0xff: the first two match
        {"iif": "eth0", "src": "10.10.1.2"},                   # forwarded from c1
        {"iif": "eth1", "src": "203.0.113.7"},                 # from upstream: rule iif eth1 -> inbound
        {"iif": "eth2", "src": "10.10.3.2"},
        {"iif": "eth0", "src": "10.10.2.1"},                   # spoofing r1's own address: martian
        {"src": "192.0.2.1"},                                  # not r1's address: output refuses it
    ]
    problems = []
    for i, dst in enumerate(dests):
        problems += r1.check(dst)
        problems += r1.check(dst, src="10.10.9.1")        # rule 100 -> isp2
        problems += r1.check(dst, **variants[i % len(variants)])
        if i % 10 == 0:   # and through the API, the way the CLI does it (fresh socket and snapshot)
            problems += check("prt", "r1", "prt-r1", dst, **variants[(i + 1) % len(variants)])
    assert not problems, "\n".join(problems[:20])


def test_explain_matches_the_kernel_with_rp_filter_and_forwarding_off(r1):
    rng = random.Random(99)
    dests = random_v4(rng, PRT_V4_PREFIXES, 60)
    problems = []
    run("ip", "netns", "exec", "prt-r1", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", check=True)
    r1.reset()
    for i, dst in enumerate(dests):
        src = ["10.10.1.2", "203.0.113.9", "10.10.3.2"][i % 3]
        problems += r1.check(dst, iif="eth0", src=src)
        problems += r1.check(dst, iif="eth1", src=src)
    run("ip", "netns", "exec", "prt-r1", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2", check=True)
    r1.reset()
    for i, dst in enumerate(dests[:20]):
        problems += r1.check(dst, iif="eth2", src=["10.10.1.2", "198.51.100.1"][i % 2])
    run("ip", "netns", "exec", "prt-r1", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", check=True)
    run("ip", "netns", "exec", "prt-r1", "sysctl", "-qw", "net.ipv4.ip_forward=0", check=True)
    r1.reset()
    for dst in dests:
        problems += r1.check(dst, iif="eth0", src="10.10.1.2")
    assert not problems, "\n".join(problems[:20])


def test_explain_matches_the_kernel_on_random_ipv6(r1):
    rng = random.Random(6)
    prefixes = ["fd00:a1::/64", "fd00:a2::/64", "fd00:a3::/64", "2001:db8::/32", "2001:db8:5::/48",
                "fd00:66::/32", "fd00:67::/32"]
    dests = [str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(40)]
    for _ in range(60):
        net = ipaddress.ip_network(rng.choice(prefixes))
        dests.append(str(net.network_address + rng.randrange(min(net.num_addresses, 2**64))))
    dests += ["fd00:a1::1", "fd00:a2::1", "::1"]
    problems = []
    for i, dst in enumerate(dests):
        problems += r1.check(dst)
        problems += r1.check(dst, src="fd00:a1::1")      # rule 140 for 2001:db8::/32
        if i % 2:
            problems += r1.check(dst, iif="eth0", src="fd00:a1::2")
    assert not problems, "\n".join(problems[:20])


def test_explain_on_quickstart_agrees_with_the_kernel(clean_world):
    res = cnetctl("apply", QUICK, "--no-verify")
    assert res.returncode == 0, res.stderr
    rng = random.Random(1)
    dests = random_v4(rng, ["10.88.0.0/24", "127.0.0.0/8"], 50) + ["fd00:88::3", "fd00:88::1", "2001:db8::1"]
    problems = []
    for dst in dests:
        for node, ns in (("web", "quickstart-web"), ("db", "quickstart-db"), ("host", None)):
            problems += check("quickstart", node, ns, dst)
        if ":" not in dst:
            problems += check("quickstart", "host", None, dst, iif="cbr0", src="10.88.0.2")
    assert not problems, "\n".join(problems[:20])
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0


def test_explain_cli_names_the_rule_table_route_and_hooks(prt):
    res = cnetctl("explain", "prt", "r1", "--to", "10.50.1.1", "-o", "json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["matched_rule"] == 110 and out["table"] == 200
    assert out["route"]["via"] == "10.10.3.2" and out["route"]["dev"] == "eth2"
    assert out["verdict"] == "sent" and out["hooks"] == ["OUTPUT", "POSTROUTING"]
    assert out["agrees"] and out["kernel"]["table"] == 200
    walked = [(r["priority"], r["outcome"]) for r in out["rules"]]
    assert walked[:3] == [(0, "no route"), (100, "skipped"), (110, "matched")]

    # A rule whose table has no route falls through: iif eth1 -> inbound (201) -> main.
    res = cnetctl("explain", "prt", "r1", "--to", "10.10.1.2", "--from", "203.0.113.1", "--iif", "eth1",
                  "-o", "json")
    out = json.loads(res.stdout)
    assert res.returncode == 0, res.stdout
    outcomes = {r["priority"]: r["outcome"] for r in out["rules"]}
    assert outcomes[130] == "no route" and outcomes[32766] == "matched"
    assert out["verdict"] == "forwarded" and out["hooks"] == ["PREROUTING", "FORWARD", "POSTROUTING"]

    # Incoming, to the node itself.
    out = json.loads(cnetctl("explain", "prt", "r1", "--to", "10.10.9.1", "--from", "10.10.1.2", "--iif", "eth0",
                             "-o", "json").stdout)
    assert out["verdict"] == "delivered locally" and out["hooks"] == ["PREROUTING", "INPUT"]
    assert out["table"] == 255

    # Rejections, each as the kernel says it.
    for dst, verdict, err in (("10.66.1.1", "blackhole", "EINVAL"), ("10.68.1.1", "prohibit", "EACCES"),
                              ("10.67.1.1", "unreachable", "EHOSTUNREACH")):
        args = ["--from", "10.10.9.1"] if dst.startswith("10.67") else []
        out = json.loads(cnetctl("explain", "prt", "r1", "--to", dst, *args, "-o", "json").stdout)
        assert (out["verdict"], out["answer"]["error"]) == (verdict, err), out
        assert out["hooks"] == [] and out["agrees"]

    # Forwarding off: the route exists, the kernel drops the packet, and explain says why.
    run("ip", "netns", "exec", "prt-r1", "sysctl", "-qw", "net.ipv4.ip_forward=0", check=True)
    res = cnetctl("explain", "prt", "r1", "--to", "10.10.2.2", "--from", "10.10.1.2", "--iif", "eth0")
    assert res.returncode == 0, res.stdout
    assert "forwarding is off" in res.stdout and "net.ipv4.ip_forward=1" in res.stdout
    assert "agrees" in res.stdout
    out = json.loads(cnetctl("explain", "prt", "r1", "--to", "10.10.2.2", "--from", "10.10.1.2", "--iif", "eth0",
                             "-o", "json").stdout)
    assert out["verdict"] == "dropped: forwarding off" and out["forwarding"]["enabled"] is False
    assert out["kernel"]["error"].endswith("(EHOSTUNREACH)") and out["route"]["dev"] == "eth1"

    # The text view: every rule on its own line, the matched one marked.
    res = cnetctl("explain", "prt", "r1", "--to", "8.8.8.8", "--fwmark", "0x110")
    assert res.returncode == 0
    assert "=>   120: from all fwmark 0x10/0xff lookup isp2" in res.stdout, res.stdout
    assert "kernel   RTM_GETROUTE says" in res.stdout


def test_explain_usage_errors(prt):
    assert cnetctl("explain", "prt", "nosuch", "--to", "10.0.0.1").returncode == 2
    assert cnetctl("explain", "nosuch", "r1", "--to", "10.0.0.1").returncode == 2
    assert cnetctl("explain", "prt", "r1", "--to", "not-an-ip").returncode == 2
    assert cnetctl("explain", "prt", "r1", "--to", "10.0.0.1", "--fwmark", "zz").returncode == 2


@pytest.mark.parametrize("manifest", sorted(p.name for p in MANIFESTS.glob("*.yaml")))
def test_explain_agrees_with_the_kernel_on_every_manifest(manifest, clean_world):
    """Every node of every example: random destinations, from each of the node's own addresses."""
    path = str(MANIFESTS / manifest)
    desired = api.validate(path)
    if desired.topology.hosts:
        pytest.skip("spans machines (hosts:): tests/kernel/test_multihost.py applies it on two simulated machines")
    res = cnetctl("apply", path, "--no-verify")
    assert res.returncode == 0, res.stderr
    rng = random.Random(manifest)
    v4_nets = [n for n in desired.subnets() if ":" not in n]
    dests = random_v4(rng, v4_nets, 24) + [n.split("/")[0] for n in desired.subnets() if ":" in n]
    problems: list[str] = []
    for node, ns in desired.nodes.items():
        sources = [None] + [c.split("/")[0] for c in desired.node_addresses(node)][:2]
        for dst in dests:
            for src in sources:
                if src is not None and (":" in src) != (":" in dst):
                    continue
                problems += check(desired.name, node, ns, dst, **({"src": src} if src else {}))
    assert not problems, "\n".join(problems[:20])
    assert cnetctl("destroy", "--name", desired.name).returncode == 0


DOTTED = """
apiVersion: cnetctl/v1
name: dotif
nodes:
  r1:
    sysctls: {net.ipv4.ip_forward: 1}
    interfaces:
      e0.100: {addresses: [10.20.1.1/24]}
      eth1: {addresses: [10.20.2.1/24]}
  c1:
    interfaces:
      eth0: {addresses: [10.20.1.2/24]}
    routes:
      - {to: default, via: 10.20.1.1}
  up1:
    interfaces:
      eth0: {addresses: [10.20.2.2/24]}
    routes:
      - {to: default, via: 10.20.2.1}
links:
  - [r1:e0.100, c1:eth0]
  - [r1:eth1, up1:eth0]
"""


def r1_sysctl(path: str, value: str | None = None) -> str:
    """Read (and first write) /proc/sys/PATH inside dotif-r1, by the file itself."""
    file = f"/proc/sys/{path}"
    if value is not None:
        run("ip", "netns", "exec", "dotif-r1", "sh", "-c", f"echo {value} > {file}", check=True)
    return run("ip", "netns", "exec", "dotif-r1", "cat", file, check=True).stdout.strip()


def test_explain_reads_the_sysctls_of_an_interface_named_with_a_dot(tmp_path):
    """An interface like eth0.100 has its sysctls under net/ipv4/conf/eth0.100/, not
    net/ipv4/conf/eth0/100/: explain must read them there, not fall back to 0."""
    path = tmp_path / "dotif.yaml"
    path.write_text(DOTTED)
    res = cnetctl("apply", str(path), "--no-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    try:
        kw: dict[str, Any] = {"iif": "e0.100", "src": "10.20.1.2"}
        # Forwarding on for e0.100 (its own switch, not only `all`): the kernel forwards.
        assert r1_sysctl("net/ipv4/conf/e0.100/forwarding") == "1"
        expl = api.explain("dotif", "r1", "10.20.2.2", **kw)
        assert check("dotif", "r1", "dotif-r1", "10.20.2.2", **kw) == []
        assert expl.verdict == "forwarded", expl.reason
        assert expl.forwarding and expl.forwarding["net/ipv4/conf/e0.100/forwarding"] == "1"

        # Strict rp_filter on e0.100 only (`all` stays 0): a source routed back via eth1 is dropped.
        assert r1_sysctl("net/ipv4/conf/all/rp_filter", "0") == "0"
        assert r1_sysctl("net/ipv4/conf/e0.100/rp_filter", "1") == "1"
        spoofed = {"iif": "e0.100", "src": "10.20.2.99"}
        assert iproute_get("dotif-r1", "10.20.2.2", spoofed["src"], spoofed["iif"])["ok"] is False
        assert check("dotif", "r1", "dotif-r1", "10.20.2.2", **spoofed) == []
        assert api.explain("dotif", "r1", "10.20.2.2", **spoofed).verdict == "rp_filter drop"
        assert check("dotif", "r1", "dotif-r1", "10.20.2.2", **kw) == []          # the right source passes

        # Forwarding off on e0.100 only (`all` stays 1): the kernel drops what it would forward.
        assert r1_sysctl("net/ipv4/conf/e0.100/forwarding", "0") == "0"
        assert r1_sysctl("net/ipv4/conf/all/forwarding") == "1"
        assert check("dotif", "r1", "dotif-r1", "10.20.2.2", **kw) == []
        assert api.explain("dotif", "r1", "10.20.2.2", **kw).verdict == "dropped: forwarding off"
    finally:
        assert cnetctl("destroy", "--name", "dotif").returncode == 0
