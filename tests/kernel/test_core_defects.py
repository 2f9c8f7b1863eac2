"""Defects of issue 8 in the core (plan, observe, kernel adapter, apply), each proven on the
real kernel of the throw-away world and read back with `ip -j`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import MANIFESTS, ROOT, cnetctl, default_signals, ip, netns_list, ping, run, snapshot

QUICK = MANIFESTS / "quickstart.yaml"


def write(tmp_path: Path, doc: dict, name: str = "m.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def link(ns: str | None, ifname: str) -> dict:
    (found,) = ip(ns, "-d", "addr", "show", "dev", ifname)  # type: ignore[misc]
    return found


def addrs(ns: str | None, ifname: str) -> set[str]:
    return {f"{a['local']}/{a['prefixlen']}" for a in link(ns, ifname)["addr_info"] if a.get("scope") != "link"}


@pytest.fixture
def uplink():
    """A user's device on the world's host, as a real machine's eth1 would be."""
    # (This kernel has no dummy driver: a veth pair plays the NIC and its cable.)
    run("ip", "link", "add", "uplink0", "mtu", "1500", "type", "veth", "peer", "name", "uplink0p", check=True)
    run("ip", "addr", "add", "192.0.2.1/24", "dev", "uplink0", check=True)
    run("ip", "link", "set", "uplink0p", "up", check=True)
    run("ip", "link", "set", "uplink0", "up", check=True)
    yield "uplink0"
    run("ip", "link", "del", "uplink0")


def host_device_doc(name: str, **iface: object) -> dict:
    return {"apiVersion": "cnetctl/v1", "name": name,
            "nodes": {"host": {"interfaces": {"uplink0": iface}}, "c1": {}}}


# --- 3 and 18: a user's device is put back as it was ------------------------------------------
def test_destroy_restores_a_user_device_mtu_and_removes_only_its_own_address(uplink, tmp_path):
    before = link(None, uplink)
    doc = host_device_doc("dev", addresses=["198.51.100.1/24", "192.0.2.1/24"], mtu=1400)
    res = cnetctl("apply", write(tmp_path, doc))
    assert res.returncode == 0, res.stdout + res.stderr
    assert link(None, uplink)["mtu"] == 1400
    assert addrs(None, uplink) == {"198.51.100.1/24", "192.0.2.1/24"}
    # Re-apply is a no-op (the user's own 192.0.2.1/24 counts as present, not as to create).
    again = cnetctl("apply", write(tmp_path, doc), "--no-verify")
    assert "no changes" in again.stdout, again.stdout
    res = cnetctl("destroy", "--name", "dev")
    assert res.returncode == 0, res.stderr
    after = link(None, uplink)
    assert after["mtu"] == before["mtu"] == 1500
    # The address cnetctl added is gone; the user's, declared too, stays.
    assert addrs(None, uplink) == {"192.0.2.1/24"}


def test_removing_the_device_from_the_file_restores_it(uplink, tmp_path):
    doc = host_device_doc("dev", addresses=["198.51.100.1/24"], mtu=1400)
    assert cnetctl("apply", write(tmp_path, doc), "--no-verify").returncode == 0
    del doc["nodes"]["host"]
    res = cnetctl("apply", write(tmp_path, doc), "--no-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert link(None, uplink)["mtu"] == 1500
    assert addrs(None, uplink) == {"192.0.2.1/24"}
    assert cnetctl("destroy", "--name", "dev").returncode == 0


def test_another_topologys_bridge_cannot_be_reconfigured(tmp_path):
    assert cnetctl("apply", str(QUICK), "--no-verify").returncode == 0
    mtu = link(None, "cbr0")["mtu"]
    doc = {"apiVersion": "cnetctl/v1", "name": "thief",
           "nodes": {"host": {"interfaces": {"cbr0": {"mtu": 1300, "addresses": ["10.66.0.1/24"]}}}}}
    res = cnetctl("apply", write(tmp_path, doc))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "cbr0" in res.stderr and "topology quickstart" in res.stderr
    assert link(None, "cbr0")["mtu"] == mtu
    assert "10.66.0.1/24" not in addrs(None, "cbr0")


# --- 4: one apply converges when an address changes ---------------------------------------------
def test_changing_an_address_converges_in_one_apply(tmp_path):
    assert cnetctl("apply", str(QUICK), "--no-verify").returncode == 0
    doc = yaml.safe_load(QUICK.read_text())
    doc["nodes"]["web"]["interfaces"]["eth0"]["addresses"][0] = "10.88.0.5/24"
    doc["checks"] = [c for c in doc["checks"] if "source" not in c and "10.88.0.2" not in json.dumps(c)]
    res = cnetctl("apply", write(tmp_path, doc))
    assert res.returncode == 0, res.stdout + res.stderr
    routes = ip("quickstart-web", "-4", "route", "show", "default")
    assert [(r["gateway"], r["protocol"]) for r in routes] == [("10.88.0.1", "147")]  # type: ignore[index]
    assert "10.88.0.5/24" in addrs("quickstart-web", "eth0")
    assert ping("quickstart-web", "10.88.0.3")
    assert json.loads(cnetctl("plan", write(tmp_path, doc), "-o", "json").stdout)["changes"] == 0
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0


# --- 5: overlapping subnets are refused -------------------------------------------------------
def bridge_doc(name: str, cidr: str) -> dict:
    return {"apiVersion": "cnetctl/v1", "name": name,
            "nodes": {"host": {"bridges": {f"br-{name}": {"addresses": [cidr]}}}}}


def test_overlapping_subnet_of_another_topology_is_refused(tmp_path):
    assert cnetctl("apply", str(QUICK), "--no-verify").returncode == 0
    before = snapshot()
    res = cnetctl("apply", write(tmp_path, bridge_doc("second", "10.88.0.254/16")))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "topology quickstart" in res.stderr and "10.88.0.0/24" in res.stderr and "10.88.0.0/16" in res.stderr
    assert snapshot() == before
    assert cnetctl("plan", write(tmp_path, bridge_doc("second", "10.88.0.254/16"))).returncode == 2


def test_subnet_overlapping_a_users_connected_route_is_refused(uplink, tmp_path):
    before = snapshot()
    res = cnetctl("apply", write(tmp_path, bridge_doc("third", "192.0.2.129/25")))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "uplink0" in res.stderr and "192.0.2.0/24" in res.stderr
    assert snapshot() == before
    # A subnet of its own is fine.
    assert cnetctl("apply", write(tmp_path, bridge_doc("third", "198.51.100.1/24"))).returncode == 0
    assert cnetctl("destroy", "--name", "third").returncode == 0


# --- 17: host routes and rules belong to one topology -----------------------------------------
def host_route_doc(name: str, **extra: object) -> dict:
    return {"apiVersion": "cnetctl/v1", "name": name,
            "nodes": {"host": {"routes": [{"to": "10.50.0.0/24", "via": "192.0.2.254"}],
                               "rules": [{"from": "10.60.0.0/24", "table": 100, "priority": 1000}], **extra}}}


def host_rules() -> list[dict]:
    return [r for r in ip(None, "rule", "show") if r.get("priority") == 1000]  # type: ignore[union-attr]


def test_a_second_topology_cannot_take_over_host_routes_and_rules(uplink, tmp_path):
    assert cnetctl("apply", write(tmp_path, host_route_doc("first"), "a.yaml")).returncode == 0
    res = cnetctl("apply", write(tmp_path, host_route_doc("second"), "b.yaml"))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "topology first" in res.stderr
    assert cnetctl("destroy", "--name", "second").returncode == 0
    # The first topology's route and rule survive the other's destroy.
    assert ip(None, "route", "show", "10.50.0.0/24")
    assert len(host_rules()) == 1
    assert cnetctl("destroy", "--name", "first").returncode == 0
    assert not ip(None, "route", "show", "10.50.0.0/24") and not host_rules()


def test_a_hand_made_proto_147_route_is_not_adopted(uplink, tmp_path):
    run("ip", "route", "add", "10.50.0.0/24", "via", "192.0.2.254", "proto", "147", check=True)
    run("ip", "rule", "add", "from", "10.60.0.0/24", "table", "100", "priority", "1000", "proto", "147", check=True)
    res = cnetctl("apply", write(tmp_path, host_route_doc("first")))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "10.50.0.0/24" in res.stderr and "10.60.0.0/24" in res.stderr
    assert cnetctl("destroy", "--name", "first").returncode == 0
    assert ip(None, "route", "show", "10.50.0.0/24") and len(host_rules()) == 1
    run("ip", "route", "del", "10.50.0.0/24")
    run("ip", "rule", "del", "priority", "1000")


# --- 6: a rollback says so ------------------------------------------------------------------
def test_a_fault_says_what_was_rolled_back():
    before = snapshot()
    res = cnetctl("apply", str(QUICK), env={"CNETCTL_FAULT_AT": "6"})
    assert res.returncode == 3
    assert "rolled back: the 5 change(s) this run made were undone" in res.stderr
    undone = [line for line in res.stdout.splitlines() if line.startswith("rollback: ")]
    assert len(undone) == 5 and undone[0].startswith("rollback: - ") and "netns quickstart-" in undone[-1]
    assert snapshot() == before


def test_a_kernel_error_names_the_resource_and_the_likely_cause(uplink, tmp_path):
    doc = {"apiVersion": "cnetctl/v1", "name": "badgw",
           "nodes": {"host": {"routes": [{"to": "10.52.0.0/24", "via": "203.0.113.9"}]}}}
    res = cnetctl("apply", write(tmp_path, doc))
    assert res.returncode == 3, res.stdout + res.stderr
    assert "route 10.52.0.0/24 via 203.0.113.9" in res.stderr
    assert "likely cause: the gateway is not on a connected subnet" in res.stderr
    assert "nothing had been changed yet" in res.stderr or "rolled back" in res.stderr
    assert not ip(None, "route", "show", "10.52.0.0/24")


# --- 13 and 14: signals during namespace creation, stale mount points, fd limits -------------------
def many_namespaces(tmp_path: Path, n: int, name: str = "many") -> str:
    doc = {"apiVersion": "cnetctl/v1", "name": name, "nodes": {f"n{i}": {} for i in range(n)}}
    return write(tmp_path, doc, f"{name}.yaml")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_process_group_never_hangs_or_leaks(sig, tmp_path):
    """Ctrl-C (or SIGTERM) to the whole process group while namespaces are being created."""
    manifest = many_namespaces(tmp_path, 150)
    before = snapshot()
    for delay in (0.0, 0.03, 0.07, 0.15, 0.3):
        proc = subprocess.Popen([sys.executable, "-m", "cnetctl", "apply", manifest, "--no-verify"], cwd=ROOT,
                                preexec_fn=default_signals,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert proc.stdout is not None
        head: list[str] = []   # the lines read before the signal count too
        while not head or not head[-1].startswith("+ netns"):
            head.append(proc.stdout.readline())
        time.sleep(delay)
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=60)  # a hang fails here
        out = "".join(head) + out
        assert proc.returncode in (0, 130, 143), (delay, err)
        assert "Traceback" not in err and "Exception ignored" not in err, err
        assert run("pgrep", "-g", str(proc.pid)).stdout == ""  # no orphaned helper
        applied = sum(1 for line in out.splitlines() if line.startswith("+ "))
        if proc.returncode != 0 and "the apply had finished" in err:
            # The signal came after the last change (a fast apply): every change stands, and says so.
            assert f"the apply had finished: its {applied} change(s) stand" in err, err
            assert len([n for n in netns_list() if n.startswith("many-")]) == 150
        elif proc.returncode != 0:
            # Every undone change has its rollback line (a fast apply is past the namespaces and
            # at their `lo` settings by the time the signal comes).
            undone = sum(1 for line in out.splitlines() if line.startswith("rollback: "))
            if undone:
                assert f"rolled back: the {undone} change(s) this run made were undone" in err, err
            else:
                assert "nothing had been changed yet" in err, err
            assert snapshot() == before, f"signal after {delay} s left something"
        # Nothing holds a lock, and whatever is left is this topology's: destroy converges.
        res = cnetctl("destroy", "--name", "many", "--lock-timeout", "0")
        assert res.returncode == 0, res.stderr
        assert snapshot() == before


def test_a_signal_after_the_changes_leaves_them_applied_and_says_so(tmp_path):
    """SIGTERM while the checks run: the apply is done (state recorded, nothing undone)."""
    doc = {"apiVersion": "cnetctl/v1", "name": "late",
           "nodes": {"host": {"bridges": {"br-late": {"addresses": ["10.61.0.1/24"]}}},
                     "c1": {"interfaces": {"eth0": {"addresses": ["10.61.0.2/24"]}}}},
           "links": [["c1:eth0", "host:br-late"]],
           "checks": [{"ping": {"from": "c1", "to": "10.61.0.99", "expect": "unreachable", "timeout": 20}}]}
    state_file = Path(os.environ["CNETCTL_STATE_DIR"]) / "late.json"
    proc = subprocess.Popen([sys.executable, "-m", "cnetctl", "apply", write(tmp_path, doc)], cwd=ROOT,
                            preexec_fn=default_signals, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (state_file.exists() and json.loads(state_file.read_text()).get("applied_at")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.3)   # into the check's 20-second wait
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    changes = sum(1 for line in out.splitlines() if line.startswith("+ "))
    assert proc.returncode == 143, err
    assert changes > 0 and "rollback" not in out
    assert (f"cnetctl: terminated (SIGTERM); the apply had finished: its {changes} change(s) stand; "
            "`cnetctl verify` runs its checks") in err, err
    assert "Traceback" not in err
    assert addrs("late-c1", "eth0") == {"10.61.0.2/24"}
    assert addrs(None, "br-late") == {"10.61.0.1/24"}
    assert not (Path(os.environ["CNETCTL_STATE_DIR"]) / "late.journal").exists()
    res = cnetctl("status", "-o", "json")
    assert "late" in res.stdout, res.stdout + res.stderr
    assert cnetctl("destroy", "--name", "late").returncode == 0
    assert "late-c1" not in netns_list()


def test_a_stale_mount_point_is_replaced_by_apply_and_removed_by_destroy(tmp_path):
    Path("/run/netns/quickstart-web").touch()  # what a kill between open() and mount() leaves
    res = cnetctl("apply", str(QUICK))
    assert res.returncode == 0, res.stdout + res.stderr
    assert ip("quickstart-web", "link", "show", "lo")[0]["ifalias"] == "cnetctl:quickstart"  # type: ignore[index]
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0
    # Destroy after such a kill: the state file names the namespace, the empty file goes.
    assert cnetctl("apply", str(QUICK), env={"CNETCTL_KILL_AT": "1"}).returncode == -signal.SIGKILL
    Path("/run/netns/quickstart-db").touch()
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0
    assert not {"quickstart-web", "quickstart-db"} & set(os.listdir("/run/netns"))


def test_a_users_namespace_of_the_same_name_is_still_refused():
    run("ip", "netns", "add", "quickstart-web", check=True)
    try:
        res = cnetctl("apply", str(QUICK))
        assert res.returncode == 2 and "a user's namespace" in res.stderr, res.stderr
        assert cnetctl("destroy", "--name", "quickstart").returncode == 0
        assert "quickstart-web" in netns_list()
    finally:
        run("ip", "netns", "del", "quickstart-web")


@pytest.mark.long
def test_hundreds_of_namespaces_under_ulimit_1024(tmp_path):
    manifest = many_namespaces(tmp_path, 300, "wide")
    res = run("prlimit", "--nofile=1024:1024", sys.executable, "-m", "cnetctl", "apply", manifest, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len([n for n in netns_list() if n.startswith("wide-")]) == 300
    res = run("prlimit", "--nofile=1024:1024", sys.executable, "-m", "cnetctl", "destroy", "--name", "wide",
              timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not [n for n in netns_list() if n.startswith("wide-")]


# --- 11: wording -------------------------------------------------------------------------------
def test_plan_and_destroy_wording(tmp_path):
    plan = cnetctl("plan", str(QUICK)).stdout
    assert "+ lo in netns quickstart-web" in plan and "lo lo" not in plan
    assert cnetctl("apply", str(QUICK), "--no-verify").returncode == 0
    again = cnetctl("plan", str(QUICK))
    assert "no changes" in again.stdout and again.stderr == "", again.stderr  # its own state file reads clean
    out = cnetctl("destroy", "--name", "quickstart").stdout
    assert "- sysctl net.ipv4.ip_forward in host: restore its value from before cnetctl" in out
    # Nothing of the topology stays behind in the state directory either (its lock file included).
    assert not [f for f in os.listdir(os.environ["CNETCTL_STATE_DIR"]) if f.startswith("quickstart")]


def test_verify_of_a_topology_never_applied_says_so():
    res = cnetctl("verify", str(QUICK), "-o", "json")
    assert res.returncode == 1
    report = json.loads(res.stdout)
    assert report["failed"] == 1 and "is not applied" in report["checks"][0]["detail"]


def test_a_failing_route_check_says_no_route_not_none(tmp_path):
    doc = yaml.safe_load(QUICK.read_text())
    doc["checks"] = [{"route": {"node": "db", "to": "fd00:99::1", "expect": {"via": "fd00:88::1", "dev": "eth0"}}}]
    assert cnetctl("apply", write(tmp_path, doc), "--no-verify").returncode == 0
    res = cnetctl("verify", write(tmp_path, doc), "-o", "json")
    assert res.returncode == 1
    (check,) = [c for c in json.loads(res.stdout)["checks"] if c["kind"] == "route"]
    assert "None" not in check["detail"] and "got no route" in check["detail"], check
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0
