"""Bad input that used to validate, state files and journals that steered a root process,
and the cost of validating a big manifest (issue #8). No root needed."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest

from cnetctl import api
from cnetctl.errors import CnetctlError, TopologyError, UsageError
from cnetctl.load import load_topology_text
from cnetctl.model.resources import Sysctl
from cnetctl.model.topology import NETNS_NAME_RE, NODE_NAME_RE, TABLE_NAME_RE, TOPOLOGY_NAME_RE
from cnetctl.normalize import normalize
from cnetctl.runner import Journal, interrupted_run
from cnetctl.state import State, TopologyLock


def desired(text: str):
    topo, src = load_topology_text(text, "t.yaml")
    return normalize(topo, src, "iptables")


def problems(text: str) -> list[str]:
    """Every error of a manifest that must not validate, as 'path: message'."""
    with pytest.raises(TopologyError) as info:
        desired(text)
    return [f"{p.path}: {p.message}" for p in info.value.problems]


TWO = """
apiVersion: cnetctl/v1
name: lab
nodes:
  ns1:
    interfaces:
      eth0: {addresses: [10.0.0.1/24]}
  ns2:
    interfaces:
      eth0: {addresses: [10.0.0.2/24]}
links:
  - [ns1:eth0, ns2:eth0]
"""


# --- control characters and trailing newlines in kernel names --------------------------------

@pytest.mark.parametrize("old, new", [
    ("  ns1:\n    interfaces:\n      eth0:", '  ns1:\n    interfaces:\n      "eth0\\0x":'),
    ("[ns1:eth0, ns2:eth0]", '["ns1:eth0\\0x", ns2:eth0]'),
    ("      eth0: {addresses: [10.0.0.2/24]}", '      eth0: {addresses: [10.0.0.2/24]}\n'
     '    routes: [{to: 10.9.0.0/16, dev: "eth0\\0"}]'),
    ("      eth0: {addresses: [10.0.0.2/24]}", '      eth0: {addresses: [10.0.0.2/24]}\n'
     '    rules: [{iif: "eth\\x01", table: main}]'),
    ("      eth0: {addresses: [10.0.0.2/24]}", '      eth0: {addresses: [10.0.0.2/24]}\n'
     '    nat: [{masquerade: {source: 10.0.0.0/24, out_interface: "!eth0\\0"}}]'),
    ("  ns1:\n", '  host:\n    bridges: {"br\\0x": {}}\n  ns1:\n'),
    ("      eth0: {addresses: [10.0.0.2/24]}", '      eth0: {addresses: [10.0.0.2/24]}\n'
     '    sysctls: {"net.ipv4.conf.eth0\\0.rp_filter": 1}'),
])
def test_a_control_character_in_a_kernel_name_is_refused(old, new):
    # The kernel cuts a name at its NUL: the bridge "br\0x" is created as "br" and every
    # re-apply deleted and re-created it.
    assert old in TWO
    found = problems(TWO.replace(old, new, 1))
    assert any("control character" in p or "malformed sysctl key" in p for p in found), found


def test_name_patterns_do_not_accept_a_trailing_newline():
    # Python's `$` matches before a final newline: `destroy --name $'lab\n'` passed the check.
    for pattern, good in ((TOPOLOGY_NAME_RE, "lab"), (NODE_NAME_RE, "ns1"), (NETNS_NAME_RE, "lab-ns1"),
                          (TABLE_NAME_RE, "eth0_table")):
        assert re.match(pattern, good)
        assert re.match(pattern, good + "\n") is None
        assert pattern.match(good + "\n") is None


@pytest.mark.parametrize("old, new", [
    ("  ns1:\n    interfaces:\n      eth0:", '  ns1:\n    interfaces:\n      "eth0\\n":'),
    ("[ns1:eth0, ns2:eth0]", '["ns1:eth0\\n", ns2:eth0]'),
    ("      eth0: {addresses: [10.0.0.2/24]}", '      eth0: {addresses: [10.0.0.2/24]}\n'
     '    rules: [{from: 10.0.0.0/24, table: "t\\n"}]'),
    ("name: lab", 'name: "lab\\n"'),
])
def test_a_trailing_newline_in_a_name_is_refused(old, new):
    assert old in TWO
    found = problems(TWO.replace(old, new, 1))
    assert any("invalid" in p and "\\n" in repr(p) for p in found), found


# --- YAML tags --------------------------------------------------------------------------------

@pytest.mark.parametrize("doc, line", [
    (TWO.replace("nodes:\n", "nodes: !foo\n"), 4),
    (TWO.replace("name: lab", "name: !bar lab"), 3),
    (TWO.replace("[10.0.0.1/24]", "!!set {10.0.0.1/24}"), 7),
    (TWO.replace("[10.0.0.1/24]", "[!!binary aGVsbG8=]"), 7),
    (TWO.replace("[ns1:eth0, ns2:eth0]", "!!python/tuple [ns1:eth0, ns2:eth0]"), 12),
])
def test_an_unknown_yaml_tag_is_refused_with_its_line(doc, line):
    with pytest.raises(TopologyError) as info:
        load_topology_text(doc, "t.yaml")
    (p,) = info.value.problems
    assert "unknown tag" in p.message and p.line == line, p


def test_standard_tags_still_read():
    d = desired(TWO.replace("name: lab", "name: !!str lab").replace("[10.0.0.1/24]", "!!seq [10.0.0.1/24]"))
    assert d.name == "lab"


# --- cross-check wording --------------------------------------------------------------------------

TYPO = """
apiVersion: cnetctl/v1
name: lab
nodes:
  host:
    bridges: {br0: {addresses: [10.0.0.1/24]}}
  web:
    interfaces: {eth0: {addresses: [10.0.0.2/24]}}
    routes: [{to: default, via: 10.0.0.1}]
  db:
    interfaces: {eth0: {addresses: [10.0.0.3/24]}}
    routes: [{to: default, via: 10.0.0.1}, {to: 10.5.0.0/16, dev: eth0, src: 10.0.0.3}]
links:
  - [web:eth0, host:br0]
  - [dbb:eth0, host:br0]
checks:
  - {ping: {from: web, to: "db:eth0"}}
"""


def test_a_typo_in_a_node_name_reports_the_root_cause_only():
    assert problems(TYPO) == [
        "links[1][0]: unknown node 'dbb' (did you mean 'db'? declared nodes: host, web, db)"]


def test_root_causes_come_first():
    found = problems(TYPO.replace("via: 10.0.0.1}]\n  db", "via: 10.0.9.1}]\n  db"))
    assert found[0].startswith("links[1][0]: unknown node 'dbb'")
    assert found[1].startswith("nodes.web.routes[0].via: gateway 10.0.9.1 is not on a connected subnet")
    assert len(found) == 2


def test_a_duplicate_address_is_not_also_a_gateway_error():
    doc = TWO.replace("[10.0.0.2/24]}", "[10.0.0.1/24]}\n    routes: [{to: default, via: 10.0.0.9}]")
    assert problems(doc) == ["nodes.ns2.interfaces.eth0.addresses[0]: address 10.0.0.1 is already assigned "
                             "to ns1:eth0"]


def test_a_long_node_name_in_a_link_is_a_node_name_error():
    long = "n" * 33
    found = problems(TWO.replace("[ns1:eth0, ns2:eth0]", f"[ns1:eth0, {long}:eth0]"))
    assert f"links[0][1]: invalid link end '{long}:eth0': invalid node name '{long}': 33 characters, at most " \
           "32" in found


# --- what the kernel would refuse, caught at validate time ---------------------------------

V6 = """
apiVersion: cnetctl/v1
name: lab
nodes:
  host:
    bridges: {br0: {addresses: ["fd00:1::1/64"]}}
    interfaces: {eth9: {addresses: ["fd00:9::1/64"]}}
  ns1:
    interfaces: {eth0: {addresses: [10.0.0.1/24, "fd00::1/64"]}}
  ns2:
    interfaces: {eth0: {addresses: [10.0.0.2/24, "fd00::2/64"]}}
  ns3:
    interfaces: {eth0: {addresses: ["fd00:1::3/64"]}}
links:
  - [ns1:eth0, ns2:eth0]
  - [ns3:eth0, host:br0]
"""


@pytest.mark.parametrize("old, new, where", [
    # the interface's own mtu
    ('eth0: {addresses: [10.0.0.1/24, "fd00::1/64"]}', 'eth0: {addresses: [10.0.0.1/24, "fd00::1/64"], mtu: 1200}',
     "nodes.ns1.interfaces.eth0.addresses[1]"),
    # the veth peer's mtu: both ends of a pair get it
    ('eth0: {addresses: [10.0.0.1/24, "fd00::1/64"]}', 'eth0: {addresses: [10.0.0.1/24], mtu: 1200}',
     "nodes.ns2.interfaces.eth0.addresses[1]"),
    # a bridge's own mtu
    ('br0: {addresses: ["fd00:1::1/64"]}', 'br0: {addresses: ["fd00:1::1/64"], mtu: 1000}',
     "nodes.host.bridges.br0.addresses[0]"),
    # a bridge without an mtu follows its smallest port (the kernel then drops its IPv6 addresses)
    ('eth0: {addresses: ["fd00:1::3/64"]}', 'eth0: {addresses: [10.1.0.3/24], mtu: 1200}',
     "nodes.host.bridges.br0.addresses[0]"),
    # an existing host device given an mtu
    ('eth9: {addresses: ["fd00:9::1/64"]}', 'eth9: {addresses: ["fd00:9::1/64"], mtu: 576}',
     "nodes.host.interfaces.eth9.addresses[0]"),
])
def test_ipv6_on_a_link_below_1280_is_refused_at_validate_time(old, new, where):
    assert old in V6
    found = problems(V6.replace(old, new, 1))
    assert any(p.startswith(f"{where}: IPv6 address") and "at least 1280" in p for p in found), found


def test_ipv6_at_1280_and_ipv4_below_it_are_fine():
    desired(V6.replace('eth0: {addresses: [10.0.0.1/24, "fd00::1/64"]}',
                       'eth0: {addresses: [10.0.0.1/24, "fd00::1/64"], mtu: 1280}'))
    d = desired(V6.replace('eth0: {addresses: ["fd00:1::3/64"]}', 'eth0: {addresses: [10.1.0.3/24]}')
                .replace('br0: {addresses: ["fd00:1::1/64"]}', 'br0: {addresses: [10.1.0.1/24], mtu: 600}'))
    ports = [r for r in d.resources if getattr(r, "master", None) == "br0"]
    assert [p.mtu for p in ports] == [600]


@pytest.mark.parametrize("old, new, words", [
    ('"fd00::1/64"', '"ff02::5/64"', "multicast"),
    ('"fd00::1/64"', '"::/64"', "unspecified"),
    ('"fd00::1/64"', '"::1/128"', "loopback"),
    ('"fd00::2/64"]}}', '"fd00::2/64"]}}\n    routes: [{to: 10.9.0.0/16, via: 224.0.0.9}]', "multicast"),
    ('"fd00::2/64"]}}', '"fd00::2/64"]}}\n    routes: [{to: 10.9.0.0/16, via: 10.0.0.255}]', "broadcast"),
    ('"fd00::2/64"]}}', '"fd00::2/64"]}}\n    routes: [{to: 10.9.0.0/16, via: 10.0.0.1, scope: link}]', "scope"),
    ('"fd00::2/64"]}}', '"fd00::2/64"]}}\n    routes: [{to: "fd09::/64", via: "ff02::1", dev: eth0}]',
     "multicast"),
])
def test_other_kernel_refusals_are_caught(old, new, words):
    assert old in V6
    found = problems(V6.replace(old, new, 1))
    assert any(words in p for p in found), found


# --- sysctl keys: one spelling ----------------------------------------------------------------

def sysctls(doc: str) -> list[Sysctl]:
    return [r for r in desired(doc).resources if isinstance(r, Sysctl)]


def test_sysctl_keys_are_canonical():
    from cnetctl.kernel.sysctl import sysctl_path
    doc = TWO.replace("  ns1:\n", "  host:\n    sysctls: {SYSCTLS}\n  ns1:\n")
    got = sysctls(doc.replace("SYSCTLS", '"net/ipv4/ip_forward": 1, "net/ipv4/conf/eth0.100/rp_filter": 2, '
                                         '"net.ipv6.conf.eth0/200.forwarding": 1'))
    assert [s.name for s in got] == ["net.ipv4.ip_forward", "net/ipv4/conf/eth0.100/rp_filter",
                                     "net/ipv6/conf/eth0.200/forwarding"]
    assert sysctl_path("net/ipv4/ip_forward") == sysctl_path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert sysctl_path("net.ipv4.conf.eth0/100.rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    found = problems(doc.replace("SYSCTLS", '"net.ipv4.ip_forward": 1, "net/ipv4/ip_forward": 0'))
    assert any("same sysctl" in p for p in found), found


@pytest.mark.parametrize("key", ["net/ipv4/../../../etc/shadow", "net.ipv4.conf.eth0/../x", "net/ipv4/./ip_forward",
                                 "net.ipv4.conf.//.x", "net/ipv4//ip_forward", "/net/ipv4/ip_forward"])
def test_sysctl_keys_that_leave_proc_sys_net_are_refused(key):
    from cnetctl.kernel.sysctl import sysctl_path
    found = problems(TWO.replace("  ns1:\n", f'  host:\n    sysctls: {{"{key}": 1}}\n  ns1:\n'))
    assert found and "sysctl" in found[0]
    with pytest.raises(CnetctlError):
        sysctl_path(key)


# --- 10,000 nodes -----------------------------------------------------------------------------

def big_manifest(n: int) -> str:
    lines = ["apiVersion: cnetctl/v1", "name: big", "nodes:", "  host:", "    bridges:",
             "      br0: {addresses: [10.0.0.1/16]}"]
    for i in range(n):
        a, b = divmod(i + 2, 256)
        lines += [f"  p{i}:", "    interfaces:", f"      eth0: {{addresses: [10.0.{a}.{b}/16]}}"]
    lines.append("links:")
    lines += [f"  - [p{i}:eth0, host:br0]" for i in range(n)]
    return "\n".join(lines) + "\n"


def test_validating_10000_nodes(tmp_path):
    # How long it takes is measured by bench/bench.py (speed targets live in benchmarks).
    path = tmp_path / "big.yaml"
    path.write_text(big_manifest(10_000))
    d = api.validate(str(path))
    assert len(d.nodes) == 10_001


def test_an_unknown_node_among_10000_names_a_few_close_ones(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(big_manifest(10_000).replace("  - [p9999:eth0, host:br0]", "  - [p99999:eth0, host:br0]"))
    with pytest.raises(TopologyError) as info:
        api.validate(str(path))
    (p,) = info.value.problems
    assert p.message.startswith("unknown node 'p99999' (did you mean 'p9999'?")
    assert "10001 nodes are declared" in p.message and len(p.message) < 200


# --- state files: checked value by value ------------------------------------------------------

GOOD_STATE = {
    "format": 1, "name": "lab", "manifest": "/x/lab.yaml", "nat_backend": "iptables", "applied_at": 1.5,
    "nodes": {"host": None, "ns1": "lab-ns1"},
    "sysctl_originals": {"": {"net/ipv4/ip_forward": "0"}, "lab-ns1": {"net.ipv4.conf.all.rp_filter": "2"}},
    "host_resources": [{"kind": "address", "ns": None, "ifname": "br0", "cidr": "10.0.0.1/24"}],
    "device_originals": {"eth9": {"mtu": 1500}},
}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d


def write_state(d: Path, data: object, name: str = "lab") -> Path:
    path = d / f"{name}.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    path.chmod(0o600)
    return path


def test_a_good_state_file_loads_with_canonical_sysctl_keys(state_dir):
    write_state(state_dir, GOOD_STATE)
    st = State.load("lab", str(state_dir))
    assert st.exists and st.nodes == {"host": None, "ns1": "lab-ns1"}
    assert st.sysctl_original(None, "net.ipv4.ip_forward") == "0"
    assert st.sysctl_original(None, "net/ipv4/ip_forward") == "0"
    assert [r.describe() for r in st.host_records()] == ["address 10.0.0.1/24 on br0 in host"]


def with_(**changes: object) -> dict[str, object]:
    return {**GOOD_STATE, **changes}


BAD_SHAPES = {
    "list": [1, 2],
    "string": "just text",
    "null": None,
    "not-json": "{nope",
    "wrong-format": with_(format=99),
    "other-name": with_(name="other"),
    "nodes-list": with_(nodes=["ns1"]),
    "nodes-number": with_(nodes={"ns1": 5}),
    "netns-escape": with_(nodes={"ns1": "../../etc"}),
    "sysctl-escape": with_(sysctl_originals={"": {"../../../tmp/pwned": "x"}}),
    "sysctl-not-net": with_(sysctl_originals={"": {"kernel.sysrq": "1"}}),
    "sysctl-value-number": with_(sysctl_originals={"": {"net.ipv4.ip_forward": 0}}),
    "sysctl-value-list": with_(sysctl_originals={"": ["net.ipv4.ip_forward"]}),
    "sysctl-bad-ns": with_(sysctl_originals={"../x": {"net.ipv4.ip_forward": "0"}}),
    "sysctl-newline": with_(sysctl_originals={"": {"net.ipv4.ip_forward": "0\n1"}}),
    "host-resources-dict": with_(host_resources={"kind": "address"}),
    "host-resource-string": with_(host_resources=["address 10.0.0.1/24"]),
    "host-resource-missing-keys": with_(host_resources=[{"kind": "route", "ns": None}]),
    "host-resource-unknown-kind": with_(host_resources=[{"kind": "netns", "ns": "x"}]),
    "host-resource-string-number": with_(host_resources=[{"kind": "route", "ns": None, "family": "2", "table": 254,
                                                          "dst": "10.0.0.0/8", "metric": 0}]),
    "host-resource-bad-cidr": with_(host_resources=[{"kind": "address", "ns": None, "ifname": "br0",
                                                     "cidr": "10.0.0.300/24"}]),
    "host-resource-extra-key": with_(host_resources=[{"kind": "address", "ns": None, "ifname": "br0",
                                                      "cidr": "10.0.0.1/24", "evil": 1}]),
    "host-resource-in-netns": with_(host_resources=[{"kind": "address", "ns": "x", "ifname": "br0",
                                                     "cidr": "10.0.0.1/24"}]),
    "device-mtu-string": with_(device_originals={"eth9": {"mtu": "1500"}}),
    "device-list": with_(device_originals=[1500]),
    "applied-at-string": with_(applied_at="yesterday"),
    "applied-at-nan": '{"format": 1, "name": "lab", "applied_at": NaN}',
    "manifest-number": with_(manifest=5),
    "backend-unknown": with_(nat_backend="ebtables"),
    "deep": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("shape", BAD_SHAPES, ids=list(BAD_SHAPES))
def test_a_wrong_shaped_state_file_is_reported_and_left_out(state_dir, capsys, shape):
    path = write_state(state_dir, BAD_SHAPES[shape])
    st = State.load("lab", str(state_dir))
    err = capsys.readouterr().err
    assert str(path) in err and "warning:" in err, err
    # What destroy and apply use, all well-typed whatever the file held.
    assert isinstance(st.nodes, dict) and all(isinstance(v, str | None) for v in st.nodes.values())
    for ns, key in st.managed_sysctls():
        assert st.sysctl_original(ns, key) is not None and (key.startswith("net.") or key.startswith("net/"))
        assert ".." not in key.split("/") and ".." not in key.split(".")
    st.host_records()
    assert all(isinstance(v.get("mtu"), int) for v in st.device_originals.values())
    assert st.applied_at is None or isinstance(st.applied_at, float | int)
    assert st.manifest is None or isinstance(st.manifest, str)
    assert isinstance(st.empty, bool)


def test_another_topologys_spelling_is_the_same_host_sysctl(state_dir):
    write_state(state_dir, with_(name="a", sysctl_originals={"": {"net/ipv4/ip_forward": "0"}}), "a")
    b = State("b", str(state_dir))
    assert b.host_sysctl_managers("net.ipv4.ip_forward") == {"a": "0"}


@pytest.mark.parametrize("mode", [0o666, 0o620])
def test_a_state_file_others_can_write_is_ignored(state_dir, capsys, mode):
    path = write_state(state_dir, GOOD_STATE)
    path.chmod(mode)
    st = State.load("lab", str(state_dir))
    assert not st.exists and st.sysctl_originals == {}
    assert "writable by others" in capsys.readouterr().err


def test_a_symlinked_state_file_is_not_followed(state_dir, tmp_path, capsys):
    real = write_state(tmp_path, GOOD_STATE, "elsewhere")
    (state_dir / "lab.json").symlink_to(real)
    st = State.load("lab", str(state_dir))
    assert not st.exists and "symbolic link" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o722])
def test_a_state_directory_others_can_write_is_refused(state_dir, mode):
    state_dir.chmod(mode)
    if mode & 0o070 and not mode & 0o007:
        os.chown(state_dir, -1, 100)   # a group other than root's
    with pytest.raises(UsageError, match="writable by"):
        with TopologyLock("lab", str(state_dir), timeout=0.1):
            pass
    with pytest.raises(UsageError, match="writable by"):
        State.load("lab", str(state_dir))
    assert not (state_dir / "lab.lock").exists()


def test_a_state_directory_under_another_users_directory_is_refused(tmp_path):
    parent = tmp_path / "theirs"
    parent.mkdir(mode=0o755)
    os.chown(parent, 65534, -1)
    (parent / "state").mkdir(mode=0o700)
    with pytest.raises(UsageError, match="owned by uid 65534"):
        with TopologyLock("lab", str(parent / "state"), timeout=0.1):
            pass


# --- the journal --------------------------------------------------------------------------------

def test_the_journal_does_not_follow_a_symlink(state_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state_dir / "lab.journal").symlink_to(victim)
    with pytest.raises(CnetctlError, match="symbolic link"):
        Journal(str(state_dir / "lab.journal"))
    assert victim.read_text() == "precious\n"


def test_the_journal_is_private(state_dir):
    path = state_dir / "lab.journal"
    path.write_text("")
    path.chmod(0o666)
    j = Journal(str(path))
    j.write({"start": 1, "text": "x"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.get_inheritable(j.fh.fileno()) is False  # type: ignore[union-attr]
    j.close(remove=False)


@pytest.mark.parametrize("content", [
    "[1, 2]\n", '"text"\n', '{"start": "3", "text": "x"}\n', '{"start": 3}\n', '{"text": "x"}\n', "5\n", "null\n",
    '{"start": true, "text": "x"}\n', '{"start": 2, "text": ["x"]}\n', "{nope\n", "[" * 50_000 + "\n", "\x00\xff\n",
])
def test_a_wrong_shaped_journal_is_passed_over(state_dir, content):
    path = state_dir / "lab.journal"
    path.write_text(content, errors="surrogateescape")
    path.chmod(0o600)
    assert interrupted_run(str(path)) is None
    with open(path, "a") as fh:
        fh.write('{"start": 4, "op": "create", "text": "netns lab-ns1"}\n')
    assert interrupted_run(str(path)) == "step 4 (netns lab-ns1)"


# --- the lock file --------------------------------------------------------------------------------

def test_release_remove_deletes_the_lock_file(state_dir):
    lock = TopologyLock("lab", str(state_dir), timeout=1)
    with lock:
        assert (state_dir / "lab.lock").exists()
        lock.remove_on_exit = True
    assert not (state_dir / "lab.lock").exists()
    with TopologyLock("lab", str(state_dir), timeout=1) as again:
        again.release(remove=True)
    assert not (state_dir / "lab.lock").exists()


def test_a_waiter_on_a_removed_lock_file_locks_the_new_one(state_dir):
    first = TopologyLock("lab", str(state_dir), timeout=5).__enter__()
    got: list[TopologyLock] = []
    waiter = threading.Thread(target=lambda: got.append(TopologyLock("lab", str(state_dir), timeout=5).__enter__()))
    waiter.start()
    time.sleep(0.3)          # the waiter has opened the old file and waits for its flock
    first.release(remove=True)
    waiter.join()
    (second,) = got
    # It holds the file the path names now, so a third process is kept out.
    assert os.fstat(second.fd).st_ino == os.stat(state_dir / "lab.lock").st_ino  # type: ignore[arg-type]
    from cnetctl.errors import LockedError
    with pytest.raises(LockedError):
        with TopologyLock("lab", str(state_dir), timeout=0.2):
            pass
    second.release()


# --- the fast YAML reader reads what ruamel reads -----------------------------------------------

def test_the_fast_yaml_reader_agrees_with_ruamel(monkeypatch):
    from cnetctl import fastyaml, load
    root = Path(__file__).resolve().parents[2]
    files = sorted((root / "manifests").glob("*.yaml")) + sorted((root / "tests" / "corpus" / "bad").glob("*.yaml"))
    texts = [f.read_text() for f in files] + [big_manifest(50), TWO, TYPO, V6]
    fast_read = 0
    for text in texts:
        fast = fastyaml.parse(text, load.MAX_MANIFEST_VALUES)
        if fast is None:
            continue
        fast_read += 1
        with monkeypatch.context() as m:
            m.setattr(fastyaml, "parse", lambda *a: None)
            try:
                src = load.parse_yaml(text, "t.yaml")
            except TopologyError as err:
                pytest.fail(f"ruamel refuses what the fast reader read: {err}\n{text}")
        assert fast == (src.data, src.lines), text
    assert fast_read > 150
