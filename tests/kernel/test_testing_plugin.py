"""cnetctl.testing, the pytest plugin for users' own network software: a topology applied in a
throw-away world per test or module, and the world cleaned up after it whatever the test did.

The first tests use the plugin as a user would; the last ones run pytest on small test files
(in a subprocess) and check, from outside, that nothing of their worlds is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from cnetctl.testing import Lab, LabError, lab_fixture, machines_for
from tests.conftest import ROOT, unprivileged_prefix
from tests.kernel.conftest import ip, netns_list

QUICKSTART = ROOT / "manifests" / "quickstart.yaml"

quickstart = lab_fixture(QUICKSTART)   # one world for the module, as a user's module would have it

ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.88.0.3", 9000)); s.listen(1); print("listening", flush=True)
c, peer = s.accept(); c.sendall(c.recv(100).upper() + b" from " + peer[0].encode()); c.close()
"""
ECHO_CLIENT = """
import socket
c = socket.create_connection(("10.88.0.3", 9000), timeout=5); c.sendall(b"hello"); print(c.recv(100).decode())
"""
_seen: dict[str, int] = {}


def test_a_lab_runs_network_software_in_its_nodes(quickstart):
    # Applied and verified in a world of its own: the test's world shows none of it.
    assert quickstart.name == "quickstart" and quickstart.report["failed"] == 0
    assert quickstart.nodes == {"host": None, "web": "quickstart-web", "db": "quickstart-db"}
    assert netns_list() == [] and "cbr0" not in {link["ifname"] for link in ip(None, "link")}  # type: ignore
    _seen["world"] = quickstart.world.netns_id
    assert quickstart.world.netns_id != os.stat("/proc/self/ns/net").st_ino

    server = quickstart.popen("db", sys.executable, "-c", ECHO_SERVER, stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"
    client = quickstart.exec("web", sys.executable, "-c", ECHO_CLIENT, timeout=30)
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == "HELLO from 10.88.0.2"   # routed through the host's bridge, no NAT
    assert server.wait(timeout=10) == 0

    eth0 = quickstart.ip("web", "-4", "addr", "show", "dev", "eth0")
    assert [a["local"] for a in eth0[0]["addr_info"]] == ["10.88.0.2"]
    assert quickstart.ping("web", "10.88.0.1") and not quickstart.ping("web", "10.88.0.99")


def test_a_module_scoped_lab_is_one_world_for_every_test(quickstart):
    assert quickstart.world.netns_id == _seen.get("world", quickstart.world.netns_id)
    quickstart.exec("db", "ip", "link", "set", "eth0", "down", check=True)   # drift, as a test may cause
    report = quickstart.verify()
    assert report["failed"] > 0 and any(c["kind"] == "readback" for c in report["checks"] if not c["ok"])
    quickstart.exec("db", "ip", "link", "set", "eth0", "up", check=True)


@pytest.mark.cnetctl_manifest("../../manifests/router-no-forward.yaml")
def test_the_marker_gives_a_test_its_own_lab(cnetctl_lab):
    assert cnetctl_lab.name == "router-nofwd" and cnetctl_lab.report["failed"] == 0
    assert not cnetctl_lab.ping("north", "10.31.2.10")      # gw does not forward
    cnetctl_lab.exec("gw", "sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
    assert cnetctl_lab.ping("north", "10.31.2.10", count=3)
    assert cnetctl_lab.verify()["failed"] > 0                # the manifest said 0: drift


@pytest.mark.cnetctl_manifest("../../manifests/two-hosts.yaml")
def test_a_topology_on_two_machines_gets_a_world_per_machine(cnetctl_lab):
    lab = cnetctl_lab
    assert set(lab.worlds) == {"node1", "node2"} and len({w.netns_id for w in lab.worlds.values()}) == 2
    assert lab.machines == {"node1": "node1", "node2": "node2", "pod-a": "node1", "pod-b": "node2",
                            "r1": "node1", "r2": "node2"}
    assert lab.nodes == {"node1": None, "node2": None, "pod-a": "two-hosts-pod-a", "pod-b": "two-hosts-pod-b",
                         "r1": "two-hosts-r1", "r2": "two-hosts-r2"}
    # Each machine verified its slice: every check ran where it starts (the mesh on both members'
    # machines, each from its own pod) and passed, with each machine's read-back.
    ran = Counter((c["kind"], c["host"]) for c in lab.report["checks"])
    assert ran == {("mesh", "node1"): 1, ("mesh", "node2"): 1, ("ping", "node1"): 3, ("ping", "node2"): 2,
                   ("source", "node1"): 1, ("route", "node1"): 1, ("readback", "node1"): 1, ("readback", "node2"): 1}
    assert lab.report["failed"] == 0 and lab.report["passed"] == len(lab.report["checks"])
    with pytest.raises(LabError, match="spans machines"):
        lab.world   # noqa: B018

    # Each machine's kernel holds its own slice only, and its root namespace is that machine's.
    for machine, mine, theirs in (("node1", {"two-hosts-pod-a", "two-hosts-r1"}, "two-hosts-pod-b"),
                                  ("node2", {"two-hosts-pod-b", "two-hosts-r2"}, "two-hosts-pod-a")):
        netns = lab.worlds[machine].run("ip", "netns", "list", check=True).stdout
        listed = {line.split()[0] for line in netns.splitlines()}
        assert listed == mine and theirs not in listed
    underlay = lab.ip("node2", "-4", "addr", "show", "dev", "underlay0")
    assert [a["local"] for a in underlay[0]["addr_info"]] == ["192.0.2.12"]
    eth1 = lab.ip("r1", "-d", "link", "show", "dev", "eth1")[0]["linkinfo"]
    assert eth1["info_kind"] == "vxlan" and eth1["info_data"]["remote"] == "192.0.2.12"

    # Real traffic between machines: a server in pod-a (node1), its client in pod-b (node2), no NAT.
    server = lab.popen("pod-a", sys.executable, "-c", ECHO_SERVER.replace("10.88.0.3", "10.246.1.2"),
                       stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"
    client = lab.exec("pod-b", sys.executable, "-c", ECHO_CLIENT.replace("10.88.0.3", "10.246.1.2"), timeout=30)
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == "HELLO from 10.246.2.2" and server.wait(timeout=10) == 0
    assert lab.ping("r1", "10.0.12.2") and not lab.ping("pod-a", "10.246.3.2")

    # Drift on one machine is that machine's failed read-back (and node1's pings to pod-b fail).
    lab.exec("pod-b", "ip", "link", "set", "eth0", "down", check=True)
    report = lab.verify()
    readback = {c["host"]: c["ok"] for c in report["checks"] if c["kind"] == "readback"}
    assert readback == {"node1": True, "node2": False} and report["hosts"]["node2"]["failed"] > 0
    assert report["failed"] == report["hosts"]["node1"]["failed"] + report["hosts"]["node2"]["failed"]
    lab.exec("pod-b", "ip", "link", "set", "eth0", "up", check=True)

    route = lab.ip("node2", "route", "get", "10.246.1.2")[0]   # host-gw: node1's pods via node1
    assert (route["gateway"], route["dev"]) == ("192.0.2.11", "underlay0")

    gone = lab.destroy()
    assert gone.returncode == 0, gone.stderr
    for world in lab.worlds.values():
        assert world.run("ip", "netns", "list", check=True).stdout == ""
        assert "cbr0" not in world.run("ip", "-o", "link", "show", check=True).stdout


PAIR_ON_TWO = {"apiVersion": "cnetctl/v1", "name": "split",
               "hosts": {"m1": {"address": "192.0.2.21"}, "m2": {"address": "192.0.2.22"}},
               "nodes": {"a": {"on": "m1", "interfaces": {"eth0": {"addresses": ["10.7.1.1/24"]}}},
                         "b": {"on": "m2", "interfaces": {"eth0": {"addresses": ["10.7.1.2/24"]}}}},
               "links": [["a:eth0", "b:eth0"]],
               "checks": [{"ping": {"from": "a", "to": "b:eth0"}}, {"ping": {"from": "b", "to": "a:eth0"}}]}


def test_machines_for_gives_a_test_machines_to_apply_its_own_topologies_on(request):
    with machines_for(request.config, {"m1": "192.0.2.21", "m2": "192.0.2.22"}) as worlds:
        assert set(worlds) == {"m1", "m2"}
        assert worlds["m1"].run("ping", "-c1", "-W1", "-n", "192.0.2.22").returncode == 0
        lab = Lab.apply(worlds, PAIR_ON_TWO)
        assert (lab.report["passed"], lab.report["failed"]) == (4, 0)    # a ping and a read-back on each
        eth0 = json.loads(worlds["m1"].run("ip", "-j", "-d", "link", "show", "dev", "eth0", netns="split-a",
                                           check=True).stdout)[0]["linkinfo"]
        assert eth0["info_kind"] == "vxlan" and eth0["info_data"]["remote"] == "192.0.2.22"
        assert worlds["m2"].run("ip", "netns", "list", check=True).stdout.split() == ["split-b"]
        with pytest.raises(LabError, match=r"its machines \(m1, m2, m3\) are not the worlds' \(m1, m2\)"):
            Lab.apply(worlds, {**PAIR_ON_TWO, "name": "three",
                               "hosts": {**PAIR_ON_TWO["hosts"], "m3": {"address": "192.0.2.23"}}})
        held = dict(worlds)
    for world in held.values():    # every topology destroyed, the worlds ended, their files gone
        assert not world.alive and not Path(world.tmp).exists()


# --- cleanup, seen from outside ---------------------------------------------------------------------

USER_TESTS = """
import json, os, sys, time
import pytest
from cnetctl.testing import apply_manifest

RECORD = os.environ["RECORD"]
PAIR = {"apiVersion": "cnetctl/v1", "name": "pair",
        "nodes": {"a": {"interfaces": {"eth0": {"addresses": ["10.7.0.1/24"]}}},
                  "b": {"interfaces": {"eth0": {"addresses": ["10.7.0.2/24"]}}}},
        "links": [["a:eth0", "b:eth0"]],
        "checks": [{"ping": {"from": "a", "to": "b:eth0"}}]}
BROKEN = {**PAIR, "name": "broken", "checks": [{"ping": {"from": "a", "to": "10.7.0.99"}}]}
TWO = {**PAIR, "name": "two", "hosts": {"m1": {"address": "192.0.2.21"}, "m2": {"address": "192.0.2.22"}},
       "nodes": {"a": {**PAIR["nodes"]["a"], "on": "m1"}, "b": {**PAIR["nodes"]["b"], "on": "m2"}}}


def record(world, **more):
    netns = {n: os.stat(f"/proc/{world.pid}/root/run/netns/{n}").st_ino
             for n in os.listdir(f"/proc/{world.pid}/root/run/netns")}
    earlier = [json.loads(line) for line in open(RECORD)] if os.path.exists(RECORD) else []
    # What the earlier tests' teardown should have ended by now, while this runner still runs.
    alive = [p for r in earlier for p in (r["pid"], r.get("server")) if p and os.path.exists(f"/proc/{p}")]
    alive += [r["tmp"] for r in earlier if os.path.exists(r["tmp"])]
    with open(RECORD, "a") as f:
        f.write(json.dumps({"pid": world.pid, "world": world.netns_id, "tmp": world.tmp, "netns": netns,
                            "earlier_alive": alive, **more}) + "\\n")


@pytest.fixture
def broken_lab(cnetctl_world, request):
    try:
        return apply_manifest(cnetctl_world, request, BROKEN)
    finally:
        record(cnetctl_world)


@pytest.mark.cnetctl_manifest(PAIR)
def test_fails_with_a_server_running(cnetctl_lab):
    server = cnetctl_lab.popen("b", "sleep", "1000")
    record(cnetctl_lab.world, server=server.pid)
    assert cnetctl_lab.ping("a", "10.7.0.2")
    assert False, "the user's test fails here"


def test_setup_fails(broken_lab):
    pass


@pytest.mark.cnetctl_manifest(TWO)
def test_fails_on_two_machines(cnetctl_lab):
    server = cnetctl_lab.popen("b", "sleep", "1000")
    for machine, world in cnetctl_lab.worlds.items():
        record(world, machine=machine, **({"server": server.pid} if machine == "m2" else {}))
    assert cnetctl_lab.ping("a", "10.7.0.2")
    assert False, "the user's test fails on two machines"


@pytest.mark.cnetctl_manifest(TWO, verify=False)
def test_runner_dies_on_two_machines(cnetctl_lab):
    for machine, world in cnetctl_lab.worlds.items():
        record(world, machine=machine)
    os.kill(os.getpid(), 9)


def test_runner_dies(cnetctl_world):
    cnetctl_world.run("ip", "netns", "add", "left-behind", check=True)
    record(cnetctl_world)
    os.kill(os.getpid(), 9)
"""


def run_user_tests(tmp_path: Path, *select: str, prefix: tuple[str, ...] = (),
                   extra: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    record = tmp_path / "record.jsonl"
    (tmp_path / "tmp").mkdir(exist_ok=True)
    os.chmod(tmp_path / "tmp", 0o1777)   # the worlds' own directories land here: worlds_left
    env = {**os.environ, "RECORD": str(record), "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp")}
    res = subprocess.run([*prefix, sys.executable, "-m", "pytest", "-q", "-rs", "-p", "cnetctl.testing",
                          "-p", "no:cacheprovider", *extra, *(f"test_user.py::{s}" for s in select)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    records = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return res, records


def gone(rec: dict, timeout: float = 10.0, files: bool = True) -> list[str]:
    """What of a recorded world is still there: its processes, namespaces (and files)."""
    deadline = time.monotonic() + timeout
    while True:
        inodes = {rec["world"], *rec["netns"].values()}
        holders = []
        for ns in Path("/proc").glob("[0-9]*/ns/net"):
            try:
                if os.stat(ns).st_ino in inodes:
                    holders.append(ns.parent.parent.name)
            except OSError:
                continue
        left = [f"process {p} in the world's namespaces" for p in holders]
        left += [f"pid {rec[k]} ({k})" for k in ("pid", "server") if k in rec and Path(f"/proc/{rec[k]}").exists()]
        left += [rec["tmp"]] if files and Path(rec["tmp"]).exists() else []
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def worlds_left(tmp_path: Path, timeout: float = 10.0, files: bool = True) -> list[str]:
    """What is left of any world the user's tests made (a world between machines included, which
    no test sees): a process started with one of their directories, or (files) that directory."""
    deadline = time.monotonic() + timeout
    tmp = str(tmp_path / "tmp")
    while True:
        left = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if tmp.encode() in cmdline.read_bytes():
                    left.append(f"process {cmdline.parent.name}")
            except OSError:
                continue
        left += [str(d) for d in Path(tmp).iterdir()] if files else []
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def test_a_failing_test_still_ends_its_world(tmp_path, clean_world):
    res, records = run_user_tests(tmp_path, "test_fails_with_a_server_running", "test_setup_fails")
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "1 failed, 1 error" in out, out
    assert "the user's test fails here" in out
    assert "applied, but 1 check(s) failed" in out and "10.7.0.99" in out     # cnetctl's words, no traceback
    assert len(records) == 2 and set(records[0]["netns"]) == {"pair-a", "pair-b"}
    assert records[1]["earlier_alive"] == []     # the failed test's world ended before the next test began
    for rec in records:
        assert gone(rec) == []


def test_a_failing_test_on_two_machines_still_ends_every_world(tmp_path, clean_world):
    res, records = run_user_tests(tmp_path, "test_fails_on_two_machines", "test_setup_fails")
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "1 failed, 1 error" in out, out
    assert "the user's test fails on two machines" in out
    assert [(r.get("machine"), set(r["netns"])) for r in records] == [("m1", {"two-a"}), ("m2", {"two-b"}),
                                                                     (None, {"broken-a", "broken-b"})]
    assert records[2]["earlier_alive"] == []    # both machines' worlds ended before the next test began
    for rec in records:
        assert gone(rec) == []
    assert worlds_left(tmp_path) == []


def test_a_runner_killed_on_two_machines_leaves_no_world(tmp_path, clean_world):
    res, records = run_user_tests(tmp_path, "test_runner_dies_on_two_machines")
    assert res.returncode == -signal.SIGKILL, res.stdout + res.stderr
    assert [r["machine"] for r in records] == ["m1", "m2"]
    for rec in records:
        assert gone(rec, files=False) == []
    assert worlds_left(tmp_path, files=False) == []   # the world between them too (its directory stays)
    subprocess.run(["rm", "-rf", str(tmp_path / "tmp")], check=True)


def test_a_runner_killed_mid_test_leaves_no_world(tmp_path, clean_world):
    res, records = run_user_tests(tmp_path, "test_runner_dies")
    assert res.returncode == -signal.SIGKILL, res.stdout + res.stderr
    assert len(records) == 1 and "left-behind" in records[0]["netns"]
    # The world's PID 1 reads a pipe from the runner: the runner's death ends it (the temp dir stays).
    assert gone(records[0], files=False) == []
    subprocess.run(["rm", "-rf", records[0]["tmp"]], check=True)


def test_without_root_the_world_tests_skip_or_fail_as_asked():
    prefix = unprivileged_prefix()
    tmp_path = Path(tempfile.mkdtemp(prefix="cnetctl-plugin-"))   # one an unprivileged user can reach
    os.chmod(tmp_path, 0o777)
    res, _ = run_user_tests(tmp_path, "test_fails_with_a_server_running", prefix=prefix)
    assert res.returncode == 0 and "1 skipped" in res.stdout, res.stdout + res.stderr
    assert "needs root" in res.stdout
    res, _ = run_user_tests(tmp_path, "test_fails_with_a_server_running", prefix=prefix,
                            extra=("--cnetctl-require-world",))
    assert res.returncode == 1 and "needs root" in res.stdout, res.stdout + res.stderr
    shutil.rmtree(tmp_path)
