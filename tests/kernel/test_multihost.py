"""One topology on two machines (manifests/two-hosts.yaml, SPEC §6), each applying its own
slice, on simulated machines (tests/machines.py: a network + mount namespace each, joined
by an underlay 192.0.2.0/24). Judged by each machine's own `ip -j` and real traffic.

One test, in the order a user goes: apply both slices (by auto-detection and by --host),
read the tunnel back, send real packets across, re-apply (a no-op), verify (each machine
runs its own checks, skips the others'), destroy one machine's slice (the other stays
byte-identical), SIGKILL an apply (the next converges), destroy everything.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from typing import Any

import yaml

from tests.machines import Machine, machines

from .conftest import MANIFESTS

MANIFEST = str(MANIFESTS / "two-hosts.yaml")
NAME = "two-hosts"
R1, R2, POD_A, POD_B = (f"{NAME}-{n}" for n in ("r1", "r2", "pod-a", "pod-b"))

# UDP: the receiving pod prints the source address it saw; the sender keeps sending until then.
LISTEN = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('10.246.2.2', 7799)); "
          "s.settimeout(10); print('ready', flush=True); data, peer = s.recvfrom(100); print(peer[0], flush=True)")
SEND = ("import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(50):\n    s.sendto(b'x', ('10.246.2.2', 7799)); time.sleep(0.1)")


def expected_vni(ends: tuple[str, str]) -> int:
    """The documented derivation (README, docs/ARCHITECTURE.md), computed here independently."""
    key = "\n".join([NAME, *sorted(ends)])
    return (1 << 23) + int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % (1 << 23)


def stable(value: Any) -> Any:
    """Without the countdowns a bridge reports (gc_timer …): they change by the second."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if not k.endswith("_timer")}
    return [stable(v) for v in value] if isinstance(value, list) else value


def settle(m: Machine, pre: list[str], timeout: float = 5.0) -> None:
    """Wait for IPv6 duplicate address detection of new links' link-local addresses (it adds
    local routes when it completes), as the world's own snapshot does."""
    deadline = time.monotonic() + timeout
    while "tentative" in m.run("ip", *pre, "-6", "addr", "show").stdout and time.monotonic() < deadline:
        time.sleep(0.1)


def kernel_view(m: Machine) -> dict[str, Any]:
    """Everything a slice could touch on a machine, as its kernel shows it: root namespace and
    every named namespace (links with details, addresses, routes of every table, rules)."""
    view: dict[str, Any] = {"netns": sorted(n["name"] for n in m.ip_json("netns", "list")),  # type: ignore[union-attr]
                            "ip_forward": m.run("cat", "/proc/sys/net/ipv4/ip_forward", check=True).stdout}
    for ns in [None, *view["netns"]]:
        pre = ["-n", ns] if ns else []
        settle(m, pre)
        view[ns or "root"] = {what: stable(m.ip_json(*pre, *argv)) for what, argv in {
            "link": ["-d", "link", "show"], "addr": ["addr", "show"], "route": ["route", "show", "table", "all"],
            "route6": ["-6", "route", "show", "table", "all"], "rule": ["rule", "show"]}.items()}
    return view


def vxlan(m: Machine, ns: str) -> dict[str, Any]:
    (link,) = m.ip_json("-n", ns, "-d", "link", "show", "eth1")  # type: ignore[misc]
    return link  # type: ignore[no-any-return]


def ping(m: Machine, ns: str, dst: str) -> bool:
    return any(m.run("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-n", "-q", dst).returncode == 0
               for _ in range(3))


def ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def source_seen_across(m1: Machine, m2: Machine) -> str:
    """The source address a socket in pod-b (machine node2) sees for a datagram from pod-a (node1)."""
    listener = m2.popen("ip", "netns", "exec", POD_B, sys.executable, "-c", LISTEN, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    sender = m1.popen("ip", "netns", "exec", POD_A, sys.executable, "-c", SEND)
    try:
        seen, _ = listener.communicate(timeout=15)
    finally:
        sender.kill()
        sender.wait()
    return seen.strip()


def verify_json(m: Machine) -> dict[str, Any]:
    res = m.cnetctl("verify", MANIFEST, "-o", "json")
    assert res.returncode in (0, 1), res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def assert_tunnels(m1: Machine, m2: Machine) -> None:
    vni = expected_vni(("r1:eth1", "r2:eth1"))
    for m, ns, local, remote in ((m1, R1, "192.0.2.11", "192.0.2.12"), (m2, R2, "192.0.2.12", "192.0.2.11")):
        link = vxlan(m, ns)
        data = link["linkinfo"]["info_data"]
        assert link["linkinfo"]["info_kind"] == "vxlan" and link["ifalias"] == f"cnetctl:{NAME}"
        assert (data["id"], data["port"], data["local"], data["remote"], data["learning"]) == \
            (vni, 4789, local, remote, False)
        # Its socket is in the machine's root namespace (the underlay), the device in the router's.
        assert "link_netnsid" in link and link["mtu"] == 1450 and "UP" in link["flags"]
        assert not [x for x in m.ip_json("-d", "link") if x.get("linkinfo", {}).get("info_kind") == "vxlan"]  # type: ignore[union-attr]


def assert_verify_splits_the_checks(reports: dict[str, dict[str, Any]]) -> None:
    """`verify -o json` of each machine: its own checks run and pass, the others' are skipped
    (ok null, naming the machine that runs them); together they run every check."""
    checks = yaml.safe_load(open(MANIFEST))["checks"]
    ran: dict[str, set[int]] = {}
    for host, report in reports.items():
        assert (report["topology"], report["failed"], report["host"]) == (NAME, 0, host), report
        results = report["checks"][1:]                      # after the read-back
        assert report["checks"][0]["kind"] == "readback" and len(results) == len(checks)
        skipped = [c for c in results if c["ok"] is None]
        assert report["skipped"] == len(skipped) > 0 and report["passed"] == len(results) - len(skipped) + 1
        other = "node2" if host == "node1" else "node1"
        assert all(c["skipped"] == other and c["detail"] == f"skipped (runs on {other})" for c in skipped)
        ran[host] = {k for k, c in enumerate(results) if c["ok"] is not None}
    # Together the machines run every check; only the mesh (members on both) runs on both.
    assert ran["node1"] | ran["node2"] == set(range(len(checks)))
    assert [checks[k] for k in sorted(ran["node1"] & ran["node2"])] == [c for c in checks if "mesh" in c]


def test_a_topology_on_two_machines(clean_world) -> None:
    with machines([("node1", "192.0.2.11"), ("node2", "192.0.2.12")]) as ms:
        m1, m2 = ms["node1"], ms["node2"]
        pristine = {m.name: kernel_view(m) for m in (m1, m2)}
        ok(m1.cnetctl("apply", MANIFEST, "--no-verify"))                 # found by its address
        ok(m2.cnetctl("apply", MANIFEST, "--host", "node2", "--no-verify"))
        assert {n["name"] for n in m1.ip_json("netns", "list")} == {POD_A, R1}  # type: ignore[union-attr]
        assert {n["name"] for n in m2.ip_json("netns", "list")} == {POD_B, R2}  # type: ignore[union-attr]
        assert kernel_view(m1)["ip_forward"] == "1\n" and pristine["node1"]["ip_forward"] == "0\n"
        assert_tunnels(m1, m2)

        # Real traffic: the routers' point-to-point link, both ways; pod to pod across the underlay,
        # the receiving pod seeing the sender's own address.
        assert ping(m1, R1, "10.0.12.2") and ping(m2, R2, "10.0.12.1")
        assert ping(m1, POD_A, "10.246.2.2") and ping(m2, POD_B, "10.246.1.2")
        assert source_seen_across(m1, m2) == "10.246.1.2"

        # Re-applying on each machine (the other way of naming it) changes nothing; each verifies
        # its own checks and reports the other's as skipped.
        before = {m.name: kernel_view(m) for m in (m1, m2)}
        text = ok(m1.cnetctl("apply", MANIFEST, "--host", "node1")).stdout
        assert "topology two-hosts: no changes" in text and "skipped (runs on node2)" in text, text
        assert "7 passed, 0 failed, 2 skipped (they run on other machines)" in text, text
        again = json.loads(ok(m2.cnetctl("apply", MANIFEST, "-o", "json")).stdout)
        assert again["plan"]["changes"] == 0
        for m in (m1, m2):
            assert kernel_view(m) == before[m.name]
        assert_verify_splits_the_checks({"node1": verify_json(m1), "node2": again["verify"]})

        # One machine holds one slice: another host's is refused, nothing touched.
        res = m1.cnetctl("apply", MANIFEST, "--host", "node2")
        assert res.returncode == 2 and "applied here as host node1's slice" in res.stderr, res.stderr
        (status,) = json.loads(ok(m1.cnetctl("status", MANIFEST, "-o", "json")).stdout)["topologies"]
        assert status["host"] == "node1" and status["nodes"] == {"node1": None, "pod-a": POD_A, "r1": R1}

        # Destroying node2's slice leaves node1 byte-identical, and node2 as it was before.
        ok(m2.cnetctl("destroy", MANIFEST))
        assert kernel_view(m1) == before["node1"]
        assert kernel_view(m2) == pristine["node2"]

        # Killed mid-apply, the next apply converges and the checks pass again on both machines.
        killed = m2.cnetctl("apply", MANIFEST, env={"CNETCTL_KILL_AT": "7"})
        assert killed.returncode == -9, killed.stdout + killed.stderr
        assert {n["name"] for n in m2.ip_json("netns", "list")} == {POD_B, R2}  # type: ignore[union-attr]
        again = json.loads(ok(m2.cnetctl("apply", MANIFEST, "-o", "json")).stdout)
        assert any("was interrupted" in w for w in again["warnings"]) and again["verify"]["failed"] == 0
        assert_tunnels(m1, m2)
        assert verify_json(m1)["failed"] == 0

        for m in (m1, m2):
            ok(m.cnetctl("destroy", MANIFEST))
            assert kernel_view(m) == pristine[m.name]
