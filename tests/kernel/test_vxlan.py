"""VXLAN devices, their forwarding entries and static neighbours, on the real kernel:
read back with `ip -j -d link`, `bridge -j fdb`, `ip -j neigh`, proven with real pings."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .conftest import MANIFESTS, cnetctl, ip, ping, run

VXLAN = MANIFESTS / "k8s-vxlan.yaml"
NODE1 = "k8s-vxlan-node1"


def vtep(ns: str) -> dict:
    (link,) = ip(ns, "-d", "link", "show", "flannel.1")  # type: ignore[misc]
    return link


def fdb(ns: str) -> list[tuple[str, str]]:
    out = json.loads(run("ip", "netns", "exec", ns, "bridge", "-j", "fdb", "show", "dev", "flannel.1",
                         check=True).stdout or "[]")
    return [(e["mac"], e["dst"]) for e in out if "dst" in e]


def neighbours(ns: str) -> list[tuple[str, str, list[str]]]:
    return [(n["dst"], n["lladdr"], n["state"]) for n in ip(ns, "neigh", "show", "dev", "flannel.1")]  # type: ignore


def write(tmp_path: Path, doc: dict) -> str:
    path = tmp_path / "vx.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_the_overlay_is_built_as_declared_and_carries_pod_traffic(clean_world):
    res = cnetctl("apply", str(VXLAN), "-o", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)["verify"]
    assert report["failed"] == 0 and report["passed"] == 7, report
    link = vtep(NODE1)
    data = link["linkinfo"]["info_data"]
    assert link["linkinfo"]["info_kind"] == "vxlan" and link["ifalias"] == "cnetctl:k8s-vxlan"
    assert (data["id"], data["port"], data["local"], data["learning"]) == (1, 8472, "10.241.0.11", False)
    assert link["address"] == "02:42:0a:f5:01:00" and link["mtu"] == 1450 and data["link"] == "eth0"
    assert fdb(NODE1) == [("02:42:0a:f5:02:00", "10.241.0.12")]
    assert neighbours(NODE1) == [("10.245.2.0", "02:42:0a:f5:02:00", ["PERMANENT"])]
    # Real packets, pod to pod across the overlay, both ways, and what must not answer does not.
    assert ping("k8s-vxlan-pod1", "10.245.2.3") and ping("k8s-vxlan-pod4", "10.245.1.2")
    assert not ping("k8s-vxlan-pod1", "10.245.3.2")
    again = cnetctl("apply", str(VXLAN), "--no-verify")
    assert "no changes" in again.stdout, again.stdout
    assert cnetctl("destroy", "--name", "k8s-vxlan").returncode == 0


def test_drift_in_the_overlay_is_found_and_repaired(clean_world):
    assert cnetctl("apply", str(VXLAN), "--no-verify").returncode == 0
    run("ip", "netns", "exec", NODE1, "bridge", "fdb", "del", "02:42:0a:f5:02:00", "dev", "flannel.1",
        "dst", "10.241.0.12", check=True)
    run("ip", "-n", NODE1, "neigh", "del", "10.245.2.0", "dev", "flannel.1", check=True)
    assert not ping("k8s-vxlan-pod1", "10.245.2.3")
    res = cnetctl("verify", str(VXLAN), "-o", "json")
    assert res.returncode == 1
    drift = [c["detail"] for c in json.loads(res.stdout)["checks"] if c["kind"] == "readback" and not c["ok"]]
    assert any("fdb 02:42:0a:f5:02:00 dst 10.241.0.12" in d for d in drift), drift
    assert any("neighbor 10.245.2.0" in d for d in drift), drift
    assert cnetctl("apply", str(VXLAN)).returncode == 0
    assert fdb(NODE1) == [("02:42:0a:f5:02:00", "10.241.0.12")] and ping("k8s-vxlan-pod1", "10.245.2.3")
    assert cnetctl("destroy", "--name", "k8s-vxlan").returncode == 0


def test_a_changed_vni_recreates_the_device_and_a_fault_rolls_it_back(tmp_path, clean_world):
    assert cnetctl("apply", str(VXLAN), "--no-verify").returncode == 0
    doc = yaml.safe_load(VXLAN.read_text())
    for node in ("node1", "node2"):
        doc["nodes"][node]["vxlans"]["flannel.1"]["vni"] = 7
    changed = write(tmp_path, doc)
    plan = json.loads(cnetctl("plan", changed, "-o", "json").stdout)
    ops = {(a["op"], a["resource"]["kind"], a["resource"].get("ns")) for a in plan["actions"]}
    assert ("delete", "vxlan", NODE1) in ops and ("create", "vxlan", NODE1) in ops
    # A fault at the last step: everything, the old VNI included, is as before.
    res = cnetctl("apply", changed, env={"CNETCTL_FAULT_AT": str(plan["changes"])})
    assert res.returncode == 3, res.stderr
    assert vtep(NODE1)["linkinfo"]["info_data"]["id"] == 1 and fdb(NODE1) and neighbours(NODE1)
    assert ping("k8s-vxlan-pod1", "10.245.2.3")
    res = cnetctl("apply", changed)
    assert res.returncode == 0, res.stdout + res.stderr
    assert vtep(NODE1)["linkinfo"]["info_data"]["id"] == 7 and ping("k8s-vxlan-pod1", "10.245.2.3")
    assert cnetctl("destroy", "--name", "k8s-vxlan").returncode == 0


def test_a_vxlan_on_the_host_with_a_flood_entry_and_a_remote(tmp_path, clean_world):
    doc = {"apiVersion": "cnetctl/v1", "name": "vxhost",
           "nodes": {"host": {"vxlans": {"vx0": {"vni": 42, "remote": "192.0.2.12",
                                                  "fdb": [{"dst": "192.0.2.13"}], "addresses": ["10.99.0.1/24"]}}}}}
    res = cnetctl("apply", write(tmp_path, doc))
    assert res.returncode == 0, res.stdout + res.stderr
    (link,) = ip(None, "-d", "link", "show", "vx0")  # type: ignore[misc]
    assert link["linkinfo"]["info_data"]["remote"] == "192.0.2.12"
    entries = json.loads(run("bridge", "-j", "fdb", "show", "dev", "vx0", check=True).stdout)
    assert ("00:00:00:00:00:00", "192.0.2.13") in [(e["mac"], e.get("dst")) for e in entries]
    assert "no changes" in cnetctl("apply", write(tmp_path, doc), "--no-verify").stdout
    assert cnetctl("destroy", "--name", "vxhost").returncode == 0
    assert not [x for x in ip(None, "link", "show") if x["ifname"] == "vx0"]  # type: ignore[union-attr]


LEARNING = {"apiVersion": "cnetctl/v1", "name": "learn", "nodes": {
    name: {"interfaces": {"u0": {"addresses": [f"10.98.0.{me}/24"]}},
           "vxlans": {"vx0": {"vni": 42, "dev": "u0", "local": f"10.98.0.{me}", "remote": f"10.98.0.{peer}",
                              "learning": True, "addresses": [f"10.99.0.{me}/24"]}}}
    for name, me, peer in (("a", 1, 2), ("b", 2, 1))},
    "links": [["a:u0", "b:u0"]], "checks": [{"ping": {"from": "a", "to": "10.99.0.2"}}]}


def test_entries_a_learning_vxlan_picks_up_from_traffic_are_not_drift(tmp_path, clean_world):
    manifest = write(tmp_path, LEARNING)
    res = cnetctl("apply", manifest)
    assert res.returncode == 0, res.stdout + res.stderr
    (peer,) = ip("learn-b", "link", "show", "vx0")  # type: ignore[misc]
    entries = json.loads(run("ip", "netns", "exec", "learn-a", "bridge", "-j", "fdb", "show", "dev", "vx0",
                             check=True).stdout)
    learned = [e for e in entries if e["mac"] == peer["address"]]
    assert learned and learned[0]["dst"] == "10.98.0.2" and "permanent" not in learned[0]["state"], entries
    plan = cnetctl("plan", manifest, "-o", "json")
    assert plan.returncode == 0 and json.loads(plan.stdout)["changes"] == 0, plan.stdout
    assert cnetctl("verify", manifest).returncode == 0
    assert "no changes" in cnetctl("apply", manifest, "--no-verify").stdout
    after = json.loads(run("ip", "netns", "exec", "learn-a", "bridge", "-j", "fdb", "show", "dev", "vx0",
                           check=True).stdout)
    assert [e for e in after if e["mac"] == peer["address"]] == learned  # apply left the kernel's entry alone
    assert cnetctl("destroy", "--name", "learn").returncode == 0
