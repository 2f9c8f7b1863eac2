"""The issue-12 commands on the real kernel: generated manifests applied, verified and destroyed."""

from __future__ import annotations

import json

import pytest
import yaml

from .conftest import cnetctl, ip, netns_list

GENERATED = {
    "bridge-3": ["bridge", "--pods", "3", "--name", "gbr"],
    "host-gw-2x2": ["k8s", "--nodes", "2", "--pods-per-node", "2", "--mode", "host-gw", "--name", "ghg"],
    "vxlan-2x2": ["k8s", "--nodes", "2", "--pods-per-node", "2", "--mode", "vxlan", "--name", "gvx"],
}


@pytest.mark.parametrize("shape", GENERATED)
def test_a_generated_manifest_applies_verifies_and_destroys(shape, tmp_path, clean_world):
    made = cnetctl("generate", *GENERATED[shape])
    assert made.returncode == 0, made.stderr
    path = tmp_path / f"{shape}.yaml"
    path.write_text(made.stdout)
    doc = yaml.safe_load(made.stdout)
    name, pods = doc["name"], [n for n in doc["nodes"] if n.startswith("pod")]
    res = cnetctl("apply", str(path), "-o", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)["verify"]
    assert report["failed"] == 0 and report["passed"] == len(report["checks"]), report
    passed = {c["kind"] for c in report["checks"] if c["ok"]}
    assert {"ping", "mesh", "source", "readback"} <= passed, passed
    mesh = next(c for c in report["checks"] if c["kind"] == "mesh")
    assert mesh["pairs"] == mesh["pairs_ok"] >= 2
    # The kernel's own view: a namespace per pod, with the address the manifest gave it.
    assert {f"{name}-{p}" for p in pods} <= set(netns_list())
    for pod in pods:
        (eth0,) = ip(f"{name}-{pod}", "addr", "show", "dev", "eth0")  # type: ignore[misc]
        want = doc["nodes"][pod]["interfaces"]["eth0"]["addresses"][0]
        assert eth0["operstate"] == "UP" or "UP" in eth0["flags"]
        assert [f"{a['local']}/{a['prefixlen']}" for a in eth0["addr_info"] if a["family"] == "inet"] == [want]
    if shape.startswith("vxlan"):
        (vtep,) = ip(f"{name}-node1", "-d", "link", "show", "flannel.1")  # type: ignore[misc]
        assert vtep["linkinfo"]["info_kind"] == "vxlan" and vtep["linkinfo"]["info_data"]["id"] == 1
    gone = cnetctl("destroy", "--name", name)
    assert gone.returncode == 0, gone.stderr
    assert not [ns for ns in netns_list() if ns.startswith(f"{name}-")]
