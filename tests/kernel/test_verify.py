"""`cnetctl verify` on the real kernel: every check kind passes when it should, and fails
with the actual values when the network is broken by hand (link down, route deleted, NAT
inserted) or the manifest expects something else."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cnetctl import api

from .conftest import MANIFESTS, cnetctl, run
from .test_explain import PRT

QUICK = str(MANIFESTS / "quickstart.yaml")


def verify_json(path: str) -> tuple[int, dict[str, Any]]:
    res = cnetctl("verify", path, "-o", "json")
    assert res.returncode in (0, 1), res.stdout + res.stderr
    return res.returncode, json.loads(res.stdout)


def by_kind(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [c for c in report["checks"] if c["kind"] == kind]


def with_checks(tmp_path: Path, base: str, checks: list[dict[str, Any]], name: str = "q.yaml") -> str:
    doc = yaml.safe_load(Path(base).read_text()) if not base.lstrip().startswith("apiVersion") \
        else yaml.safe_load(base)
    doc["checks"] = checks
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


@pytest.fixture
def quick() -> Any:
    res = cnetctl("apply", QUICK, "--no-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    yield QUICK
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0


@pytest.fixture
def prt(tmp_path: Path) -> Any:
    path = tmp_path / "prt.yaml"
    path.write_text(PRT)
    res = cnetctl("apply", str(path), "--no-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    yield str(path)
    assert cnetctl("destroy", "--name", "prt").returncode == 0


def test_quickstart_every_kind_passes_right_after_apply(clean_world):
    # apply runs the checks at once: IPv6 pings and the IPv6 half of the mesh must not
    # trip over duplicate address detection.
    res = cnetctl("apply", QUICK, "-o", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    applied = json.loads(res.stdout)["verify"]
    assert applied["failed"] == 0, applied

    rc, report = verify_json(QUICK)
    assert rc == 0 and report["failed"] == 0 and report["topology"] == "quickstart"
    assert {c["kind"] for c in report["checks"]} == {"readback", "ping", "route", "mesh", "source"}
    (mesh,) = by_kind(report, "mesh")
    assert mesh["ok"] and mesh["members"] == ["web", "db"]          # host is not in "all"
    assert (mesh["pairs"], mesh["pairs_ok"], mesh["pings"], mesh["failed"], mesh["failed_pairs"]) == (2, 2, 4, [], [])
    (source,) = by_kind(report, "source")
    assert source["ok"] and source["receiver"] == "db:eth0" and source["address"] == "10.88.0.3"
    assert source["sender"] == source["seen"] == source["expected"] == "10.88.0.2"
    (route,) = by_kind(report, "route")
    assert route["actual"] == {"ok": True, "type": "unicast", "table": 254, "via": "10.88.0.1", "dev": "eth0",
                               "src": "10.88.0.2"}
    pings = by_kind(report, "ping")
    assert [p["actual"] for p in pings] == ["reachable"] * 4 + ["unreachable"]

    text = cnetctl("verify", QUICK)
    assert text.returncode == 0
    assert "mesh" in text.stdout and "2/2 pairs ok" in text.stdout and "9 passed, 0 failed" in text.stdout
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0


def test_link_down_fails_ping_mesh_and_source_with_what_happened(clean_world, quick):
    run("ip", "-n", "quickstart-db", "link", "set", "eth0", "down", check=True)
    rc, report = verify_json(QUICK)
    assert rc == 1
    ping = next(c for c in by_kind(report, "ping") if c["to"] == "db:eth0")
    assert not ping["ok"] and ping["actual"] == "unreachable" and ping["replies"] == 0
    assert ping["detail"].startswith("expected reachable, got unreachable")
    back = next(c for c in by_kind(report, "ping") if c["from"] == "db")
    assert not back["ok"] and "Network is unreachable" in back["error"]   # db has no route left at all

    (mesh,) = by_kind(report, "mesh")
    assert not mesh["ok"] and mesh["pairs_ok"] == 0 and mesh["pairs"] == 2
    failed = {(f["from"], f["to"], f["address"]) for f in mesh["failed"]}
    assert {("web", "db", "10.88.0.3"), ("web", "db", "fd00:88::3"), ("db", "web", "10.88.0.2")} <= failed
    assert set(mesh["failed_pairs"]) == {"web->db", "db->web"}
    assert "failed pairs: db->web, web->db" in mesh["detail"] and "web -> db 10.88.0.3" in mesh["detail"]

    (source,) = by_kind(report, "source")
    assert not source["ok"] and source["seen"] is None and "nothing arrived at 10.88.0.3:7777" in source["detail"]


def test_deleted_route_fails_the_route_check_with_the_kernels_answer(clean_world, quick):
    run("ip", "-n", "quickstart-web", "route", "del", "default", "via", "10.88.0.1", check=True)
    rc, report = verify_json(QUICK)
    assert rc == 1
    (route,) = by_kind(report, "route")
    assert not route["ok"]
    assert route["actual"] == {"ok": False, "type": "none", "error": "no route (ENETUNREACH)"}
    # Said in words: what was expected, and that the kernel found no route at all.
    assert "expected a route (via 10.88.0.1" in route["detail"] and "got no route (ENETUNREACH)" in route["detail"]
    assert "None" not in route["detail"]


def test_wrong_expectations_fail_and_show_the_actual_values(clean_world, quick, tmp_path):
    path = with_checks(tmp_path, QUICK, [
        {"route": {"node": "web", "to": "10.99.0.1", "expect": {"via": "10.88.0.254", "table": 200}}},
        {"ping": {"from": "web", "to": "10.88.0.3", "expect": "unreachable"}},
        {"source": {"from": "web", "to": "db:eth0", "expect": "10.88.0.99"}},
        {"source": {"from": "web", "to": "10.88.0.77"}},
        {"mesh": {"nodes": ["web", "db", "host"], "family": "ipv4"}},
        {"source": {"from": "db", "to": "fd00:88::2"}},          # IPv6, on-link: preserved
        # Routed by web to the host, which has no route for it: the host's ICMP error comes back.
        {"ping": {"from": "web", "to": "10.99.0.1", "expect": "unreachable", "timeout": 5}},
    ])
    started = time.monotonic()
    rc, report = verify_json(path)
    assert rc == 1
    route, ping, source, nowhere, mesh, source6, icmp = report["checks"][1:]
    assert source6["ok"] and source6["seen"] == "fd00:88::3" and source6["receiver"] == "web:eth0", source6
    assert not route["ok"] and route["actual"]["via"] == "10.88.0.1" and route["actual"]["table"] == 254
    assert "expected via 10.88.0.254, got 10.88.0.1" in route["detail"]
    assert not ping["ok"] and ping["actual"] == "reachable" and ping["replies"] == 1
    assert not source["ok"] and source["seen"] == "10.88.0.2" and source["expected"] == "10.88.0.99"
    assert "expected source 10.88.0.99" in source["detail"]
    assert not nowhere["ok"] and "no node declares address 10.88.0.77" in nowhere["detail"]
    # host listed explicitly: it is a member; 3 nodes -> 6 ordered pairs, all fine.
    assert mesh["ok"] and mesh["members"] == ["web", "db", "host"] and mesh["pairs"] == 6
    # Failing fast on the ICMP error, not after the 5 s timeout.
    assert icmp["ok"] and "ICMP from 10.88.0.1" in icmp["detail"], icmp
    assert time.monotonic() - started < 4.5


def test_source_preserved_fails_under_nat_and_shows_the_translated_address(clean_world, prt, tmp_path):
    rc, report = verify_json(prt)
    assert rc == 0, report
    (source,) = by_kind(report, "source")
    assert source["seen"] == source["sender"] == "10.10.1.2"

    run("ip", "netns", "exec", "prt-r1", "iptables-legacy", "-t", "nat", "-A", "POSTROUTING",
        "-s", "10.10.1.0/24", "-o", "eth1", "-j", "MASQUERADE", check=True)
    rc, report = verify_json(prt)
    assert rc == 1
    (source,) = by_kind(report, "source")
    assert not source["ok"]
    assert (source["sender"], source["seen"], source["expected"]) == ("10.10.1.2", "10.10.2.1", "10.10.1.2")
    assert "up1 saw 10.10.2.1" in source["detail"] and "translated" in source["detail"]

    # The same path, expecting the translated address explicitly, passes.
    path = with_checks(tmp_path, PRT, [{"source": {"from": "c1", "to": "up1:eth0", "expect": "10.10.2.1"}}])
    rc, report = verify_json(path)
    assert rc == 0, report


def test_source_preserved_fails_under_nftables_snat(clean_world, prt):
    nft = """table ip handnat {
  chain post {
    type nat hook postrouting priority 100;
    ip saddr 10.10.1.0/24 oifname "eth1" snat to 10.10.2.1
  }
}
"""
    run("ip", "netns", "exec", "prt-r1", "nft", "-f", "-", input=nft, check=True)
    rc, report = verify_json(prt)
    assert rc == 1
    (source,) = by_kind(report, "source")
    assert source["seen"] == "10.10.2.1" and source["sender"] == "10.10.1.2"


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _children() -> set[str]:
    out: set[str] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as fh:
            out |= set(fh.read().split())
    return out


def test_verify_in_process_leaves_nothing_behind_and_runs_checks_concurrently(clean_world, quick, tmp_path):
    path = with_checks(tmp_path, QUICK, yaml.safe_load(Path(QUICK).read_text())["checks"] + [
        {"ping": {"from": "web", "to": f"10.88.0.{200 + i}", "expect": "unreachable", "timeout": 1.0}}
        for i in range(8)])
    api.verify(path)                       # warm-up: lazy imports, caches
    fds, threads, children = _fds(), threading.active_count(), _children()
    started = time.monotonic()
    report = api.verify(path)
    elapsed = time.monotonic() - started
    assert report.ok, [c.detail for c in report.checks if not c.ok]
    # Eight 1 s timeouts and a 2 s source check, concurrently: nowhere near their sum.
    assert elapsed < 3.0, elapsed
    # Failing checks (timeouts, a link down) must not leak either.
    run("ip", "-n", "quickstart-db", "link", "set", "eth0", "down", check=True)
    assert not api.verify(path).ok
    time.sleep(0.05)
    assert _fds() == fds
    assert threading.active_count() == threads
    assert _children() == children

