"""Rollback on failure, crash safety under SIGKILL, signals, locking — on the real kernel."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from .conftest import MANIFESTS, ROOT, cnetctl, default_signals, netns_list, run, snapshot
from .test_nat import legacy_save, nft_ruleset

DOCKER = str(MANIFESTS / "docker-bridge.yaml")
QUICK = str(MANIFESTS / "quickstart.yaml")


def world() -> tuple[dict[str, str], str, str]:
    return snapshot(), legacy_save(), nft_ruleset()


@pytest.fixture
def firewall_ready():
    # Legacy tables, once used in a namespace, stay: create them all before comparing.
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        for table in ("filter", "nat", "mangle", "raw", "security"):
            run(tool, "-t", table, "-S")


def plan_size(manifest: str, *extra: str) -> int:
    res = cnetctl("plan", manifest, "-o", "json", *extra)
    assert res.returncode == 0, res.stderr
    return int(json.loads(res.stdout)["changes"])


K8S = str(MANIFESTS / "k8s-pod-network.yaml")


@pytest.mark.long
@pytest.mark.parametrize("manifest,backend", [(DOCKER, "nftables"), (DOCKER, "iptables"), (K8S, "nftables")],
                         ids=["docker-nftables", "docker-iptables", "k8s"])
def test_fault_at_every_operation_rolls_back_to_the_exact_world(manifest, backend, firewall_ready, clean_world):
    before = world()
    name = yaml.safe_load(Path(manifest).read_text())["name"]
    steps = plan_size(manifest, "--nat-backend", backend)
    assert steps >= 20
    for step in range(1, steps + 1):
        res = cnetctl("apply", manifest, "--nat-backend", backend, env={"CNETCTL_FAULT_AT": str(step)})
        assert res.returncode == 3, (step, res.stdout, res.stderr)
        assert f"injected fault (CNETCTL_FAULT_AT={step})" in res.stderr
        assert world() == before, f"fault at step {step} left something behind"
    # Afterwards the topology still applies and destroys cleanly.
    assert cnetctl("apply", manifest, "--nat-backend", backend).returncode == 0
    assert cnetctl("destroy", "--name", name).returncode == 0
    assert world() == before


@pytest.mark.long
def test_failed_update_keeps_the_previous_state(clean_world, tmp_path):
    assert cnetctl("apply", QUICK, "--no-verify").returncode == 0
    applied = world()
    doc = yaml.safe_load(Path(QUICK).read_text())
    doc["nodes"]["web"]["interfaces"]["eth0"]["addresses"].append("10.88.0.20/24")
    doc["nodes"]["web"]["interfaces"]["eth0"]["mtu"] = 1400
    doc["nodes"]["db"]["routes"] = []
    doc["nodes"]["host"]["sysctls"]["net.ipv4.conf.all.rp_filter"] = 2
    changed = tmp_path / "quickstart.yaml"
    changed.write_text(yaml.safe_dump(doc))
    steps = plan_size(str(changed))
    assert steps >= 4
    for step in range(1, steps + 1):
        res = cnetctl("apply", str(changed), env={"CNETCTL_FAULT_AT": str(step)})
        assert res.returncode == 3, res.stderr
        assert world() == applied, f"fault at step {step}"
        assert cnetctl("plan", QUICK, "-o", "json").stdout.count('"op"') == 0
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0


@pytest.mark.long
def test_sigkill_at_every_operation_then_destroy_leaves_nothing(firewall_ready, clean_world):
    before = world()
    steps = plan_size(DOCKER)
    assert steps >= 20
    for step in range(1, steps + 1):
        res = cnetctl("apply", DOCKER, env={"CNETCTL_KILL_AT": str(step)})
        assert res.returncode == -signal.SIGKILL, res.stderr
        if step % 4 == 0:
            # A later apply converges (and says the previous run was interrupted) ...
            res = cnetctl("apply", DOCKER)
            assert res.returncode == 0, (step, res.stdout, res.stderr)
            assert "was interrupted" in res.stderr
        # ... and a later destroy removes everything.
        res = cnetctl("destroy", "--name", "docker")
        assert res.returncode == 0, res.stderr
        assert world() == before, f"SIGKILL at step {step} leaked"


@pytest.mark.long
def test_sigkill_during_destroy(firewall_ready, clean_world):
    before = world()
    killed = 0
    for step in range(1, 8):
        assert cnetctl("apply", DOCKER, "--no-verify").returncode == 0
        res = cnetctl("destroy", "--name", "docker", env={"CNETCTL_KILL_AT": str(step)})
        killed += res.returncode == -signal.SIGKILL
        res = cnetctl("destroy", "--name", "docker")
        assert res.returncode == 0, res.stderr
        assert world() == before, f"SIGKILL at destroy step {step} leaked"
    assert killed >= 6  # destroy of this topology has at least 6 steps: each was interrupted once


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_apply_rolls_back(sig, code, clean_world):
    before = world()
    proc = subprocess.Popen([sys.executable, "-m", "cnetctl", "apply", QUICK],
                            env={**os.environ, "CNETCTL_PAUSE_AT": "8"}, cwd=ROOT,
                            preexec_fn=default_signals,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    assert proc.stderr.readline().strip() == "cnetctl: paused before step 8"
    assert "quickstart-web" in netns_list()  # it really was half-way
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode == code
    assert world() == before


def test_lock_timeout_exit_5():
    state_dir = Path(os.environ["CNETCTL_STATE_DIR"])
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "quickstart.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        res = cnetctl("apply", QUICK, "--lock-timeout", "0.5")
    assert res.returncode == 5
    assert "locked by another cnetctl" in res.stderr
    assert "quickstart-web" not in netns_list()


@pytest.mark.long
def test_three_concurrent_applies_end_with_one_correct_topology(clean_world):
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [threading.Thread(target=lambda: results.append(cnetctl("apply", QUICK))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert sum("no changes" in r.stdout for r in results) == 2
    assert netns_list() == ["quickstart-db", "quickstart-web"]
    assert cnetctl("verify", QUICK).returncode == 0
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0


@pytest.mark.long
def test_two_topologies_applied_concurrently_both_pass(firewall_ready, clean_world):
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    threads = [threading.Thread(target=lambda m=m: results.__setitem__(m, cnetctl("apply", m)))
               for m in (QUICK, DOCKER)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results.values()), {m: r.stderr for m, r in results.items()}
    assert cnetctl("verify", QUICK).returncode == 0 and cnetctl("verify", DOCKER).returncode == 0
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0
    assert cnetctl("destroy", "--name", "docker").returncode == 0
    # ip_forward was 0 before either touched it; both restore it in turn.
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"


@pytest.mark.long
def test_shared_host_sysctl_is_restored_by_the_last_topology_only(firewall_ready, clean_world):
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    assert forward.read_text().strip() == "0"
    assert cnetctl("apply", QUICK, "--no-verify").returncode == 0
    assert cnetctl("apply", DOCKER, "--no-verify").returncode == 0
    # The first topology goes; the second still needs forwarding and still works.
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0
    assert forward.read_text().strip() == "1"
    assert cnetctl("verify", DOCKER).returncode == 0
    assert cnetctl("destroy", "--name", "docker").returncode == 0
    assert forward.read_text().strip() == "0"


def test_conflicts_are_reported_at_plan_time_and_touch_nothing(clean_world, tmp_path):
    # A user's bridge named like the declared one.
    run("ip", "link", "add", "cbr0", "type", "bridge", check=True)
    try:
        before = world()
        for cmd in ("plan", "apply"):
            res = cnetctl(cmd, QUICK)
            assert res.returncode == 2, res.stderr
            assert "interface cbr0 in host exists and is a user's interface" in res.stderr
        assert world() == before
    finally:
        run("ip", "link", "del", "cbr0")

    # A user's route in the way of a declared host route.
    doc = yaml.safe_load(Path(QUICK).read_text())
    doc["nodes"]["host"]["routes"] = [{"to": "10.77.0.0/16", "via": "10.88.0.2"}]
    with_route = tmp_path / "quickstart.yaml"
    with_route.write_text(yaml.safe_dump(doc))
    run("ip", "link", "add", "usr0", "type", "veth", "peer", "name", "usr1", check=True)
    run("ip", "link", "set", "usr0", "up", check=True)
    run("ip", "route", "add", "10.77.0.0/16", "dev", "usr0", check=True)
    try:
        before = world()
        res = cnetctl("apply", str(with_route))
        assert res.returncode == 2
        assert "route 10.77.0.0/16" in res.stderr and "is not cnetctl's" in res.stderr
        assert world() == before
    finally:
        run("ip", "link", "del", "usr0")


@pytest.mark.long
def test_another_topologys_objects_are_never_adopted(clean_world, tmp_path):
    assert cnetctl("apply", QUICK, "--no-verify").returncode == 0
    doc = yaml.safe_load(Path(QUICK).read_text())
    doc["name"] = "thief"
    doc["nodes"]["web"]["netns"] = "quickstart-web"        # quickstart's namespace
    doc["nodes"]["host"]["bridges"] = {"cbr0": {"addresses": ["10.89.0.1/24"]}}  # quickstart's bridge
    for node, ip4 in (("web", "10.89.0.2/24"), ("db", "10.89.0.3/24")):
        doc["nodes"][node]["interfaces"]["eth0"]["addresses"] = [ip4]
        doc["nodes"][node]["routes"] = []
    doc["checks"] = []
    thief = tmp_path / "thief.yaml"
    thief.write_text(yaml.safe_dump(doc))
    before = world()
    res = cnetctl("apply", str(thief))
    assert res.returncode == 2
    assert "netns quickstart-web exists and is owned by topology quickstart" in res.stderr
    assert "interface cbr0 in host exists and is owned by topology quickstart" in res.stderr
    assert world() == before
    assert cnetctl("destroy", "--name", "thief").returncode == 0  # owns nothing: touches nothing
    assert world() == before
    assert cnetctl("verify", QUICK).returncode == 0
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0


def test_users_objects_with_similar_names_survive_apply_and_destroy(firewall_ready, clean_world):
    """A user's netns, bridge, veth, route, rule, legacy chain and nft table, named like ours."""
    setup = [
        ("ip", "netns", "add", "docker-c1x"),
        ("ip", "link", "add", "docker1", "type", "bridge"),
        ("ip", "link", "add", "cnffffffffff", "type", "veth", "peer", "name", "cnuser1"),
        ("ip", "link", "set", "cnffffffffff", "up"),
        ("ip", "route", "add", "10.17.9.0/24", "dev", "cnffffffffff", "proto", "static"),
        ("ip", "route", "add", "10.17.8.0/24", "dev", "cnffffffffff", "table", "200"),
        ("ip", "rule", "add", "from", "10.17.0.0/24", "lookup", "200", "priority", "1000"),
        ("iptables-legacy", "-t", "nat", "-N", "CNET-DOCKERX-POST"),
        ("iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-s", "10.17.0.0/24", "-m", "comment",
         "--comment", "cnetctl:dockerx", "-j", "CNET-DOCKERX-POST"),
        ("nft", "add", "table", "inet", "cnetctl-dockerx"),
        ("nft", "add", "table", "ip", "cnetctl-docker"),     # same name, other family: not ours
    ]
    for argv in setup:
        run(*argv, check=True)
    try:
        before = world()
        for backend in ("nftables", "iptables"):
            res = cnetctl("apply", DOCKER, "--nat-backend", backend)
            assert res.returncode == 0, res.stdout + res.stderr
            assert cnetctl("destroy", "--name", "docker").returncode == 0
            assert world() == before, backend
    finally:
        for argv in (("ip", "netns", "del", "docker-c1x"), ("ip", "link", "del", "docker1"),
                     ("ip", "link", "del", "cnffffffffff"), ("ip", "rule", "del", "priority", "1000"),
                     ("iptables-legacy", "-t", "nat", "-D", "POSTROUTING", "-s", "10.17.0.0/24", "-m", "comment",
                      "--comment", "cnetctl:dockerx", "-j", "CNET-DOCKERX-POST"),
                     ("iptables-legacy", "-t", "nat", "-X", "CNET-DOCKERX-POST"),
                     ("nft", "delete", "table", "inet", "cnetctl-dockerx"),
                     ("nft", "delete", "table", "ip", "cnetctl-docker")):
            run(*argv)
