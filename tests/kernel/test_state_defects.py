"""What cnetctl reads back from its state directory, on the real kernel (issue #8): one
spelling per sysctl key across topologies, corrupt state files, a state file that tries
to steer a write outside /proc/sys/net, a state directory others can write."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import cnetctl, ip, netns_list

FORWARD = Path("/proc/sys/net/ipv4/ip_forward")

SMALL = """apiVersion: cnetctl/v1
name: {name}
nodes:
  host:
    sysctls: {{"{key}": 1}}
    bridges: {{br-{name}: {{addresses: [10.77.{n}.1/24]}}}}
  n1:
    interfaces: {{eth0: {{addresses: [10.77.{n}.2/24]}}}}
    routes: [{{to: default, via: 10.77.{n}.1}}]
links:
  - [n1:eth0, host:br-{name}]
"""


def manifest(where: Path, name: str, n: int, key: str = "net.ipv4.ip_forward") -> str:
    path = where / f"{name}.yaml"
    path.write_text(SMALL.format(name=name, n=n, key=key))
    return str(path)


def state_file(name: str) -> Path:
    return Path(os.environ["CNETCTL_STATE_DIR"]) / f"{name}.json"


def owned_links(name: str) -> list[str]:
    return [link["ifname"] for link in ip(None, "link", "show")  # type: ignore[union-attr]
            if link.get("ifalias") == f"cnetctl:{name}"]


def test_two_spellings_of_a_host_sysctl_are_one_shared_obligation(tmp_path, clean_world):
    assert FORWARD.read_text().strip() == "0"
    for name, n, key in (("sa", 1, "net.ipv4.ip_forward"), ("sb", 2, "net/ipv4/ip_forward")):
        res = cnetctl("apply", manifest(tmp_path, name, n, key), "--no-verify")
        assert res.returncode == 0, res.stderr
    assert FORWARD.read_text().strip() == "1"
    assert cnetctl("destroy", "--name", "sa").returncode == 0
    assert FORWARD.read_text().strip() == "1"      # sb still needs forwarding
    assert cnetctl("destroy", "--name", "sb").returncode == 0
    assert FORWARD.read_text().strip() == "0"      # the last one out restores the original


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], str]:
    def change(data: dict[str, Any]) -> str:
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        return json.dumps(data)
    return change


# shape -> (how to corrupt the state file, whether the original ip_forward survives it)
SHAPES: dict[str, tuple[Callable[[dict[str, Any]], str], bool]] = {
    "list": (lambda d: "[1, 2, 3]", False),
    "string": (lambda d: '"a state file"', False),
    "not-json": (lambda d: json.dumps(d)[:-5], False),
    "format-string": (_set(("format",), "1"), False),
    "name-number": (_set(("name",), 5), False),
    "nodes-list": (_set(("nodes",), ["n1"]), True),
    "sysctls-list": (_set(("sysctl_originals", ""), ["net.ipv4.ip_forward"]), False),
    "sysctl-number": (_set(("sysctl_originals", ""), {"net.ipv4.ip_forward": 0}), False),
    "sysctls-string": (_set(("sysctl_originals",), "net.ipv4.ip_forward=0"), False),
    "host-resources-string": (_set(("host_resources",), "10.77.9.1/24"), True),
    "host-resource-missing-keys": (_set(("host_resources",), [{"kind": "route"}]), True),
    "host-resource-wrong-types": (_set(("host_resources",), [{"kind": "address", "ns": None, "ifname": 5,
                                                              "cidr": ["10.77.9.1/24"]}]), True),
    "device-originals-list": (_set(("device_originals",), [1500]), True),
    "applied-at-string": (_set(("applied_at",), "yesterday"), True),
}


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_destroy_with_a_wrong_shaped_state_file_removes_everything(tmp_path, clean_world, shape):
    res = cnetctl("apply", manifest(tmp_path, "sc", 3), "--no-verify")
    assert res.returncode == 0, res.stderr
    path = state_file("sc")
    corrupt, original_survives = SHAPES[shape]
    path.write_text(corrupt(json.loads(path.read_text())))
    res = cnetctl("destroy", "--name", "sc")
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    assert res.returncode == 0, res.stderr
    assert f"warning: state file {path}" in res.stderr
    assert "sc-n1" not in netns_list()
    assert owned_links("sc") == []
    assert [a for link in ip(None, "addr", "show") for a in link["addr_info"]  # type: ignore[union-attr]
            if a["local"].startswith("10.77.3.")] == []
    if original_survives:
        assert FORWARD.read_text().strip() == "0"
    else:   # the original was in the part that was unreadable: nobody can know it
        FORWARD.write_text("0")
    assert not path.exists()


def test_a_state_file_cannot_steer_a_write_outside_proc_sys_net(tmp_path, clean_world):
    target = tmp_path / "root-only"
    target.write_text("secret\n")
    target.chmod(0o600)
    assert cnetctl("apply", manifest(tmp_path, "sd", 4), "--no-verify").returncode == 0
    path = state_file("sd")
    data = json.loads(path.read_text())
    data["sysctl_originals"][""]["../../.." + str(target)] = "pwned"
    path.write_text(json.dumps(data))
    res = cnetctl("destroy", "--name", "sd")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert target.read_text() == "secret\n"
    assert f"warning: state file {path}" in res.stderr and "not a network-namespaced sysctl key" in res.stderr
    assert FORWARD.read_text().strip() == "0"       # the real key is still restored
    assert "sd-n1" not in netns_list()


@pytest.mark.parametrize("mode", [0o777, 0o1777])
def test_apply_refuses_a_state_directory_others_can_write(tmp_path, clean_world, mode):
    state = tmp_path / "open"
    state.mkdir()
    state.chmod(mode)
    res = cnetctl("--state-dir", str(state), "apply", manifest(tmp_path, "se", 5), "--no-verify")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "writable by others" in res.stderr
    assert "se-n1" not in netns_list() and owned_links("se") == []
    assert FORWARD.read_text().strip() == "0"
    assert list(state.iterdir()) == []
