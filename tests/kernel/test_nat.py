"""NAT on both backends, proven by traffic and read back with nft -j / iptables-legacy-save."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import MANIFESTS, cnetctl, ping, run

DOCKER = str(MANIFESTS / "docker-bridge.yaml")
BACKENDS = ["nftables", "iptables"]

UDP_RECEIVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.settimeout(5)
print("ready", flush=True)
data, (src, _) = s.recvfrom(100)
print(src, flush=True)
"""
TCP_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(5)
print("ready", flush=True)
c, (src, _) = s.accept(); c.sendall(b"hello from " + socket.gethostname().encode()); c.close()
print(src, flush=True)
"""
SEND = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.sendto(b'x', (sys.argv[1], int(sys.argv[2])))")
CONNECT = ("import socket, sys; c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); "
           "print(c.recv(100).decode())")


def in_ns(ns: str, code: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-c", code, *args]


def serve(ns: str, code: str, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(in_ns(ns, code, str(port)), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def source_seen(sender: str, receiver: str, dst: str, port: int = 7000) -> str:
    """The source address the receiver's kernel reports for a datagram from `sender`."""
    proc = serve(receiver, UDP_RECEIVER, port)
    run(*in_ns(sender, SEND, dst, str(port)), check=True)
    out, _ = proc.communicate(timeout=10)
    return out.strip()


def legacy_save() -> str:
    text = run("iptables-legacy-save", check=True).stdout + run("ip6tables-legacy-save", check=True).stdout
    # Comments with timestamps and packet counters change on their own.
    return "\n".join(re.sub(r"\[\d+:\d+\]", "[]", line) for line in text.splitlines() if not line.startswith("#"))


def nft_ruleset() -> str:
    return run("nft", "list", "ruleset", check=True).stdout


@pytest.fixture
def firewall_snapshot():
    # The kernel creates a legacy x_tables table in a namespace on first use and never
    # removes it: instantiate them all first, so the comparison is about rules.
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        for table in ("filter", "nat", "mangle", "raw", "security"):
            run(tool, "-t", table, "-S")
    before = (legacy_save(), nft_ruleset())
    yield before
    assert (legacy_save(), nft_ruleset()) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_masquerade_and_published_port(backend, clean_world, firewall_snapshot):
    res = cnetctl("apply", DOCKER, "--nat-backend", backend)
    assert res.returncode == 0, res.stdout + res.stderr

    # Read back with each backend's own tool.
    if backend == "nftables":
        table = json.loads(run("nft", "-j", "list", "table", "inet", "cnetctl-docker", check=True).stdout)
        rules = [i["rule"] for i in table["nftables"] if "rule" in i]
        assert sorted(r["chain"] for r in rules) == ["output", "postrouting", "prerouting"]
        assert "cnetctl-docker" not in legacy_save()
    else:
        saved = legacy_save()
        assert '-A POSTROUTING -m comment --comment "cnetctl:docker" -j CNET-DOCKER-POST' in saved
        assert re.search(r"-A CNET-DOCKER-POST -s 10\.17\.0\.0/24 ! -o cdocker0 .*-j MASQUERADE", saved)
        assert re.search(r"-A CNET-DOCKER-PRE -d 10\.200\.0\.1/32 -p tcp .*--dport 8080 .*--to-destination "
                         r"10\.17\.0\.2:80", saved)
        assert "cnetctl-docker" not in nft_ruleset()

    # Outbound: the outside sees the host's uplink address, not the container's.
    assert source_seen("docker-c1", "docker-outside", "10.200.0.2") == "10.200.0.1"
    assert ping("docker-c1", "10.200.0.2")
    # Published port: a TCP connection to the host's 8080 lands on c1:80.
    server = serve("docker-c1", TCP_SERVER, 80)
    reply = run(*in_ns("docker-outside", CONNECT, "10.200.0.1", "8080"), check=True).stdout
    out, _ = server.communicate(timeout=10)
    assert reply.strip() == "hello from " + run("hostname", check=True).stdout.strip()
    assert out.strip() == "10.200.0.2"  # DNAT keeps the client's address
    # Not NAT'd: the containers are still not routable from outside.
    assert not ping("docker-outside", "10.17.0.2")

    # Re-apply adds no rule.
    before = (legacy_save(), nft_ruleset())
    res = cnetctl("apply", DOCKER, "--nat-backend", backend, "--no-verify")
    assert "no changes" in res.stdout
    assert (legacy_save(), nft_ruleset()) == before

    assert cnetctl("destroy", "--name", "docker").returncode == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_nat_drift_and_removal(backend, clean_world, firewall_snapshot, tmp_path):
    assert cnetctl("apply", DOCKER, "--nat-backend", backend, "--no-verify").returncode == 0
    # Drift: the MASQUERADE rule removed by hand.
    if backend == "nftables":
        table = json.loads(run("nft", "-j", "list", "chain", "inet", "cnetctl-docker", "postrouting").stdout)
        handle = next(i["rule"]["handle"] for i in table["nftables"] if "rule" in i)
        run("nft", "delete", "rule", "inet", "cnetctl-docker", "postrouting", "handle", str(handle), check=True)
    else:
        run("iptables-legacy", "-t", "nat", "-F", "CNET-DOCKER-POST", check=True)
    assert source_seen("docker-c1", "docker-outside", "10.200.0.2", 7001) == "10.17.0.2"  # no NAT now
    res = cnetctl("verify", DOCKER, "-o", "json")
    assert res.returncode == 1
    assert any(c["kind"] == "readback" and not c["ok"] and "nat" in c["detail"]
               for c in json.loads(res.stdout)["checks"])
    assert cnetctl("apply", DOCKER, "--nat-backend", backend, "--no-verify").returncode == 0
    assert source_seen("docker-c1", "docker-outside", "10.200.0.2", 7002) == "10.200.0.1"

    # The file drops its NAT rules: apply removes them.
    doc = yaml.safe_load(Path(DOCKER).read_text())
    del doc["nodes"]["host"]["nat"]
    doc["checks"] = []
    no_nat = tmp_path / "docker.yaml"
    no_nat.write_text(yaml.safe_dump(doc))
    assert cnetctl("apply", str(no_nat), "--nat-backend", backend).returncode == 0
    assert "cnetctl" not in nft_ruleset() and "CNET-" not in legacy_save()
    assert not ping("docker-c1", "10.200.0.2")  # no way back without MASQUERADE
    assert cnetctl("destroy", "--name", "docker").returncode == 0


@pytest.mark.parametrize("drop_with", ["iptables-nft", "iptables-legacy"])
def test_forward_drop_of_another_tool(drop_with, clean_world, firewall_snapshot, tmp_path):
    had_nft_filter = run("nft", "list", "table", "ip", "filter").returncode == 0
    run(drop_with, "-P", "FORWARD", "DROP", check=True)
    # A rule of another tool in the same chain, and another table, must survive.
    run(drop_with, "-A", "FORWARD", "-s", "10.99.0.0/24", "-j", "ACCEPT", check=True)
    run("nft", "add", "table", "inet", "usertable", check=True)
    saved = (legacy_save(), nft_ruleset())
    try:
        doc = yaml.safe_load(Path(DOCKER).read_text())
        doc["settings"]["forward"] = "none"
        plain = tmp_path / "docker.yaml"
        plain.write_text(yaml.safe_dump(doc))
        res = cnetctl("apply", str(plain))
        assert res.returncode == 1  # the checks through the host fail ...
        assert "warning: FORWARD policy DROP" in res.stderr  # ... and the preflight said why
        assert not ping("docker-c1", "10.200.0.2")
        assert cnetctl("destroy", "--name", "docker").returncode == 0

        res = cnetctl("apply", DOCKER)  # forward: accept
        assert res.returncode == 0, res.stdout + res.stderr
        assert ping("docker-c1", "10.200.0.2")
        if drop_with == "iptables-nft":
            assert 'comment "cnetctl:docker forward 10.17.0.0/24"' in nft_ruleset()
        else:
            assert '-A FORWARD -m comment --comment "cnetctl:docker" -j CNET-DOCKER-FWD' in legacy_save()
        assert cnetctl("destroy", "--name", "docker").returncode == 0
        assert (legacy_save(), nft_ruleset()) == saved  # the other tool's rules and table untouched
    finally:
        run(drop_with, "-D", "FORWARD", "-s", "10.99.0.0/24", "-j", "ACCEPT")
        run(drop_with, "-P", "FORWARD", "ACCEPT")
        run("nft", "delete", "table", "inet", "usertable")
        if drop_with == "iptables-nft" and not had_nft_filter:
            run("nft", "delete", "table", "ip", "filter")


@pytest.mark.parametrize("backend", BACKENDS)
def test_tcp_and_source_checks_fail_without_the_nat_rules(backend, clean_world, firewall_snapshot):
    assert cnetctl("apply", DOCKER, "--nat-backend", backend).returncode == 0
    if backend == "nftables":
        run("nft", "flush", "table", "inet", "cnetctl-docker", check=True)
    else:
        for chain in ("CNET-DOCKER-PRE", "CNET-DOCKER-OUT", "CNET-DOCKER-POST"):
            run("iptables-legacy", "-t", "nat", "-F", chain, check=True)
    res = cnetctl("verify", DOCKER, "-o", "json")
    assert res.returncode == 1
    checks = {c["kind"] + ":" + str(c.get("to")): c for c in json.loads(res.stdout)["checks"]}
    tcp = checks["tcp:10.200.0.1"]
    assert not tcp["ok"] and tcp["connected"] is False  # nothing listens on the host's 8080 itself
    masq = checks["source:outside:eth0"]
    assert not masq["ok"] and masq["seen"] == "10.17.0.2"  # the container's own address got out ...
    # ... as the receiver's kernel confirms independently of cnetctl:
    assert source_seen("docker-c1", "docker-outside", "10.200.0.2", 7003) == "10.17.0.2"
    assert checks["source:c2:eth0"]["ok"]  # bridged traffic never needed NAT
    assert cnetctl("apply", DOCKER, "--nat-backend", backend).returncode == 0  # repaired, checks pass
    assert cnetctl("destroy", "--name", "docker").returncode == 0


def test_auto_follows_the_hosts_iptables_flavour(tmp_path):
    """`auto` reads where the host's `iptables` points: legacy -> iptables backend, nft -> nftables."""
    for target, backend in (("xtables-legacy-multi", "iptables"), ("xtables-nft-multi", "nftables")):
        shim = tmp_path / backend
        shim.mkdir()
        (shim / "iptables").symlink_to(f"/usr/sbin/{target}")
        res = cnetctl("plan", DOCKER, "-o", "json", env={"PATH": f"{shim}:/usr/sbin:/usr/bin:/sbin:/bin"})
        assert res.returncode == 0, res.stderr
        nat = [a["resource"] for a in json.loads(res.stdout)["actions"] if a["resource"]["kind"] == "nat"]
        assert [n["backend"] for n in nat] == [backend]


def test_missing_nftables_library_is_named_before_any_change(tmp_path, clean_world):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "nftables.py").write_text("raise ImportError('libnftables.so.1: cannot open shared object file')\n")
    res = cnetctl("apply", DOCKER, "--nat-backend", "nftables", env={"PYTHONPATH": str(shim)})
    assert res.returncode == 2  # a missing dependency is a usage problem, not a failed kernel operation
    assert "apt-get install libnftables1" in res.stderr and "nothing was changed" in res.stderr
    assert "docker-c1" not in run("ip", "netns", "list").stdout
