"""NAT defects of issue #8, each proven on the real kernel (traffic, nft -j, iptables-legacy-save).

1   a published port (DNAT without destination) must not catch the node's own
    connections to other machines on that port;
7   without libnftables: no traceback, exit 2 naming what to install, nothing touched;
16  a user's table or chain named like ours is never deleted, and never crashes cnetctl;
19  iptables backend: NAT inside pod namespaces is read from the right namespace, and
    plan creates no legacy table anywhere;
and: plan/apply keep the backend of the last apply; plan shows the NAT rules.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

from .conftest import cnetctl, netns_list, run
from .test_nat import CONNECT, DOCKER, TCP_SERVER, firewall_snapshot, in_ns, legacy_save, nft_ruleset  # noqa: F401

# Every test leaves both firewalls of the world as it found them.
pytestmark = pytest.mark.usefixtures("firewall_snapshot")
BACKENDS = ["nftables", "iptables"]
NO_TRACE = ("Traceback", "Exception ignored")


def write(tmp_path: Path, doc: dict[str, object], name: str = "topo.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def no_traceback(res: subprocess.CompletedProcess[str]) -> bool:
    return not any(t in res.stdout + res.stderr for t in NO_TRACE)


def nft_json() -> str:
    return run("nft", "-j", "list", "ruleset", check=True).stdout


def firewall() -> tuple[str, str, str]:
    """Both firewalls, byte for byte (legacy counters masked)."""
    return nft_json(), nft_ruleset(), legacy_save()


# --- 1: a published port must not catch the node's own outgoing traffic -----------------------------
PUBLISHED = {
    "apiVersion": "cnetctl/v1", "name": "pub",
    "nodes": {
        "host": {"bridges": {"pubbr0": {"addresses": ["172.18.0.1/24"]}},
                 "interfaces": {"wan0": {"addresses": ["10.211.0.1/24"]}},
                 "nat": [{"dnat": {"in_interface": "wan0", "protocol": "tcp", "port": 8443,
                                   "to": "172.18.0.3:443"}}]},
        "c1": {"interfaces": {"eth0": {"addresses": ["172.18.0.3/24"]}},
               "routes": [{"to": "default", "via": "172.18.0.1"}]},
        "srv": {"interfaces": {"eth0": {"addresses": ["10.211.0.2/24"]}}},
    },
    "links": [["c1:eth0", "host:pubbr0"], ["host:wan0", "srv:eth0"]],
}
OUT_COMMENT = "cnetctl:pub dnat in_interface=wan0 protocol=tcp port=8443 to=172.18.0.3:443"


def served_by(ns: str | None, dst: str, port: int, servers: dict[str, int]) -> str | None:
    """Connect from `ns` (None: the node itself) to dst:port; the namespace whose server took it."""
    procs = {name: subprocess.Popen(in_ns(name, TCP_SERVER, str(p)), stdout=subprocess.PIPE, text=True)
             for name, p in servers.items()}
    for proc in procs.values():
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    prefix = ["ip", "netns", "exec", ns] if ns else []
    run(*prefix, sys.executable, "-c", CONNECT, dst, str(port))
    took = None
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=1)  # the one that accepted prints the client and ends
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
        if out.strip():
            took = name
    return took


def assert_output_copy_local_only(backend: str) -> None:
    if backend == "nftables":
        chain = json.loads(run("nft", "-j", "list", "chain", "inet", "cnetctl-pub", "output", check=True).stdout)
        (rule,) = [i["rule"] for i in chain["nftables"] if "rule" in i]
        assert {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}},
                          "right": "local"}} in rule["expr"]
    else:
        assert re.search(r"-A CNET-PUB-OUT .*-m addrtype --dst-type LOCAL .*--to-destination 172\.18\.0\.3:443",
                         legacy_save())
        assert not re.search(r"-A CNET-PUB-PRE .*addrtype", legacy_save())  # arriving traffic: unchanged


@pytest.mark.parametrize("backend", BACKENDS)
def test_published_port_leaves_the_nodes_own_outgoing_connections_alone(backend, tmp_path, clean_world):
    manifest = write(tmp_path, PUBLISHED)
    res = cnetctl("apply", manifest, "--nat-backend", backend)
    assert res.returncode == 0, res.stdout + res.stderr
    servers = {"pub-srv": 8443, "pub-c1": 443}
    # The node's own connection to another machine's 8443 reaches that machine ...
    assert served_by(None, "10.211.0.2", 8443, servers) == "pub-srv"
    # ... while its connection to its own published port still lands in the container.
    assert served_by(None, "10.211.0.1", 8443, servers) == "pub-c1"
    assert_output_copy_local_only(backend)
    assert cnetctl("destroy", "--name", "pub").returncode == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_output_copy_without_the_local_limit_is_drift(backend, tmp_path, clean_world):
    """A rule written before the fix carries the same comment: the read-back looks at the rule itself."""
    manifest = write(tmp_path, PUBLISHED)
    assert cnetctl("apply", manifest, "--nat-backend", backend).returncode == 0
    if backend == "nftables":
        run("nft", "flush", "chain", "inet", "cnetctl-pub", "output", check=True)
        run("nft", "add", "rule", "inet", "cnetctl-pub", "output", "meta", "nfproto", "ipv4", "meta", "l4proto",
            "tcp", "tcp", "dport", "8443", "dnat", "ip", "to", "172.18.0.3:443", "comment", f'"{OUT_COMMENT}"',
            check=True)
    else:
        run("iptables-legacy", "-t", "nat", "-R", "CNET-PUB-OUT", "1", "-p", "tcp", "--dport", "8443", "-m",
            "comment", "--comment", OUT_COMMENT, "-j", "DNAT", "--to-destination", "172.18.0.3:443", check=True)
    assert served_by(None, "10.211.0.2", 8443, {"pub-srv": 8443, "pub-c1": 443}) == "pub-c1"  # the old bug
    res = cnetctl("verify", manifest, "-o", "json")
    assert res.returncode == 1, res.stdout
    assert any(not c["ok"] and "local-limit" in c["detail"] for c in json.loads(res.stdout)["checks"])
    assert cnetctl("apply", manifest, "--nat-backend", backend).returncode == 0
    assert_output_copy_local_only(backend)
    assert served_by(None, "10.211.0.2", 8443, {"pub-srv": 8443, "pub-c1": 443}) == "pub-srv"
    assert cnetctl("destroy", "--name", "pub").returncode == 0


# --- 7: without libnftables ---------------------------------------------------------------------------
def libnftables_path() -> str:
    out = run("ldconfig", "-p", check=True).stdout
    found = re.search(r"libnftables\.so\.1 \(.*x86-64.*\) => (\S+)", out) or \
        re.search(r"libnftables\.so\.1 \(.*\) => (\S+)", out)
    assert found, out
    return os.path.realpath(found.group(1))


def without_libnftables(*argv: str) -> subprocess.CompletedProcess[str]:
    """argv in a mount namespace of its own where libnftables.so.1 is /dev/null (dlopen fails).

    /run/netns is made shared (as `ip netns add` does), so that the namespaces the command
    creates are mounted in the test world too; the library's bind mount stays inside ("/"
    is private in the world)."""
    run("mount", "--make-shared", "/run/netns", check=True)
    return subprocess.run(["unshare", "--mount", "--propagation", "unchanged", "sh", "-c",
                           'mount --bind /dev/null "$0" && exec "$@"', libnftables_path(), *argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def cnetctl_without_libnftables(*args: str) -> subprocess.CompletedProcess[str]:
    return without_libnftables(sys.executable, "-m", "cnetctl", *args)


def test_the_simulation_really_hides_libnftables():
    assert without_libnftables(sys.executable, "-c", "import ctypes; ctypes.CDLL('libnftables.so.1')").returncode
    assert run(sys.executable, "-c", "import ctypes; ctypes.CDLL('libnftables.so.1')").returncode == 0


def test_without_libnftables_a_manifest_without_nat_works_without_traceback(clean_world):
    manifest = str(ROOT / "manifests" / "two-netns-veth.yaml")
    for args in (("plan", manifest), ("apply", manifest), ("verify", manifest), ("status",),
                 ("destroy", "--name", "two-netns-veth")):
        res = cnetctl_without_libnftables(*args)
        assert res.returncode == 0, (args, res.stdout + res.stderr)
        assert no_traceback(res), (args, res.stderr)
    assert netns_list() == []


def test_without_libnftables_nftables_nat_is_exit_2_naming_what_to_install(tmp_path, clean_world):
    doc = yaml.safe_load(Path(DOCKER).read_text())
    doc["settings"]["nat_backend"] = "nftables"
    explicit = write(tmp_path, doc)
    before = firewall()
    for args in (("apply", DOCKER, "--nat-backend", "nftables"), ("plan", DOCKER, "--nat-backend", "nftables"),
                 ("apply", explicit), ("plan", explicit)):
        res = cnetctl_without_libnftables(*args)
        assert res.returncode == 2, (args, res.stdout + res.stderr)
        assert "apt-get install libnftables1" in res.stderr and "nothing was changed" in res.stderr, res.stderr
        assert no_traceback(res), res.stderr
        assert netns_list() == [] and firewall() == before


def test_without_libnftables_auto_takes_the_iptables_backend_and_says_why(clean_world):
    assert "nf_tables" in run("iptables", "--version", check=True).stdout  # auto would say nftables here
    res = cnetctl_without_libnftables("apply", DOCKER)
    assert res.returncode == 0, res.stdout + res.stderr
    assert no_traceback(res), res.stderr
    assert "iptables backend" in res.stderr and "apt-get install libnftables1" in res.stderr
    assert '-A POSTROUTING -m comment --comment "cnetctl:docker" -j CNET-DOCKER-POST' in legacy_save()
    assert "cnetctl" not in nft_ruleset()
    res = cnetctl_without_libnftables("destroy", "--name", "docker")
    assert res.returncode == 0 and no_traceback(res), res.stderr


# --- 16: objects named like ours that are not ours ------------------------------------------------------
LAB = {
    "apiVersion": "cnetctl/v1", "name": "lab",
    "nodes": {
        "host": {"bridges": {"labbr0": {"addresses": ["10.41.0.1/24"]}},
                 "nat": [{"masquerade": {"source": "10.41.0.0/24", "out_interface": "!labbr0"}}]},
        "c1": {"interfaces": {"eth0": {"addresses": ["10.41.0.2/24"]}}},
    },
    "links": [["c1:eth0", "host:labbr0"]],
}
USER_OBJECTS = {
    "nft-table-with-chain-and-set": (
        [("nft", "add", "table", "inet", "cnetctl-lab"), ("nft", "add", "chain", "inet", "cnetctl-lab", "userchain"),
         ("nft", "add", "set", "inet", "cnetctl-lab", "userset", "{ type ipv4_addr ; }")],
        [("nft", "delete", "table", "inet", "cnetctl-lab")], "table inet cnetctl-lab in host"),
    "nft-table-with-rule": (
        [("nft", "add", "table", "inet", "cnetctl-lab"), ("nft", "add", "chain", "inet", "cnetctl-lab", "userchain"),
         ("nft", "add", "rule", "inet", "cnetctl-lab", "userchain", "ip", "saddr", "10.99.0.0/24", "counter")],
        [("nft", "delete", "table", "inet", "cnetctl-lab")], "table inet cnetctl-lab in host"),
    "legacy-chain-fwd": (
        [("iptables-legacy", "-N", "CNET-LAB-FWD"), ("iptables-legacy", "-A", "CNET-LAB-FWD", "-s", "10.99.0.0/24",
                                                     "-j", "ACCEPT")],
        [("iptables-legacy", "-F", "CNET-LAB-FWD"), ("iptables-legacy", "-X", "CNET-LAB-FWD")],
        "chain CNET-LAB-FWD in the iptables-legacy filter table of host"),
    "legacy-chain-post": (
        [("iptables-legacy", "-t", "nat", "-N", "CNET-LAB-POST"),
         ("iptables-legacy", "-t", "nat", "-A", "CNET-LAB-POST", "-s", "10.99.0.0/24", "-j", "MASQUERADE")],
        [("iptables-legacy", "-t", "nat", "-F", "CNET-LAB-POST"), ("iptables-legacy", "-t", "nat", "-X",
                                                                   "CNET-LAB-POST")],
        "chain CNET-LAB-POST in the iptables-legacy nat table of host"),
}


@pytest.fixture
def user_object(request: pytest.FixtureRequest) -> Iterator[str]:
    setup, teardown, what = USER_OBJECTS[request.param]
    for argv in setup:
        run(*argv, check=True)
    try:
        yield what
    finally:
        for argv in teardown:
            run(*argv)


@pytest.mark.parametrize("user_object", sorted(USER_OBJECTS), indirect=True)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_users_object_named_like_ours_is_refused_and_never_touched(backend, user_object, tmp_path, clean_world):
    manifest = write(tmp_path, LAB)
    before = firewall()
    for args in (("plan", manifest, "--nat-backend", backend), ("apply", manifest, "--nat-backend", backend)):
        res = cnetctl(*args)
        assert res.returncode == 2, (args, res.stdout + res.stderr)
        assert no_traceback(res), res.stderr
        assert user_object in res.stderr and "topology lab" in res.stderr and "nothing was changed" in res.stderr
        assert firewall() == before and netns_list() == []
    # destroy of a topology never applied (and with its state file gone) skips it and says so.
    res = cnetctl("destroy", "--name", "lab")
    assert res.returncode == 0, res.stdout + res.stderr
    assert no_traceback(res) and f"skipped {user_object}" in res.stderr, res.stderr
    assert firewall() == before


@pytest.mark.parametrize("key, backend", [("nft-table-with-rule", "iptables"), ("legacy-chain-post", "nftables")])
def test_destroy_removes_ours_and_skips_a_same_named_object_made_after_apply(key, backend, tmp_path, clean_world):
    setup, teardown, what = USER_OBJECTS[key]
    for argv in setup:
        run(*argv, check=True)
    with_users = (nft_ruleset(), legacy_save())  # text: a re-made nft table gets new handles
    for argv in teardown:
        run(*argv, check=True)
    try:
        assert cnetctl("apply", write(tmp_path, LAB), "--nat-backend", backend, "--no-verify").returncode == 0
        for argv in setup:
            run(*argv, check=True)
        res = cnetctl("destroy", "--name", "lab")
        assert res.returncode == 0 and no_traceback(res), res.stderr
        assert f"skipped {what}" in res.stderr
        assert (nft_ruleset(), legacy_save()) == with_users and netns_list() == []
    finally:
        for argv in teardown:
            run(*argv)


@pytest.mark.parametrize("backend", BACKENDS)
def test_owned_objects_carry_the_owner_marker_and_older_unmarked_ones_are_adopted(backend, tmp_path, clean_world):
    manifest = write(tmp_path, LAB)
    assert cnetctl("apply", manifest, "--nat-backend", backend).returncode == 0
    if backend == "nftables":
        assert 'comment "cnetctl:lab"' in run("nft", "list", "table", "inet", "cnetctl-lab", check=True).stdout
        # The table as cnetctl wrote it before the marker: same rules, no comment.
        listing = run("nft", "list", "table", "inet", "cnetctl-lab", check=True).stdout
        unmarked = listing.replace('\tcomment "cnetctl:lab"\n', "")
        assert unmarked != listing
        run("nft", "delete", "table", "inet", "cnetctl-lab", check=True)
        run("nft", "-f", "-", input=unmarked, check=True)
    else:
        assert '-A CNET-LAB-POST -m comment --comment "cnetctl:lab owner" -j RETURN' in legacy_save()
        run("iptables-legacy", "-t", "nat", "-D", "CNET-LAB-POST", "-m", "comment", "--comment", "cnetctl:lab owner",
            "-j", "RETURN", check=True)
    res = cnetctl("plan", manifest, "-o", "json")
    assert res.returncode == 0, res.stderr  # ours, proven by our jump / our rules: no conflict ...
    assert [a["op"] for a in json.loads(res.stdout)["actions"]] == ["update"]  # ... but drift: re-marked
    assert cnetctl("apply", manifest).returncode == 0
    if backend == "nftables":
        assert 'comment "cnetctl:lab"' in run("nft", "list", "table", "inet", "cnetctl-lab", check=True).stdout
    else:
        assert '-A CNET-LAB-POST -m comment --comment "cnetctl:lab owner" -j RETURN' in legacy_save()
    assert cnetctl("destroy", "--name", "lab").returncode == 0


# --- 19: iptables NAT inside pod namespaces -----------------------------------------------------------
class Machine:
    """A fresh network + mount namespace held by a sleeping process: a host whose root namespace
    has no legacy x_tables table at all (the test world's host may have them)."""

    def __init__(self, state_dir: Path):
        self.proc = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "sleep", "600"])
        ours = os.stat("/proc/self/ns/net").st_ino
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{self.proc.pid}/ns/net").st_ino == ours:
            assert time.monotonic() < deadline, "unshare did not start"
            time.sleep(0.01)
        self.state_dir = str(state_dir)
        self.run("sh", "-c", "mount -t tmpfs -o mode=755 tmpfs /run/netns && ip link set lo up", check=True)

    def run(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "--net", "--mount", f"--wd={ROOT}", *argv],
                              capture_output=True, text=True, check=check, timeout=120,
                              env={**os.environ, "CNETCTL_STATE_DIR": self.state_dir})

    def cnetctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "cnetctl", *args)

    def tables(self, ns: str | None) -> tuple[str, str]:
        """The legacy x_tables tables that exist in `ns` (IPv4, IPv6), as the kernel lists them."""
        prefix = ("ip", "netns", "exec", ns) if ns else ()
        v4, v6 = (self.run(*prefix, "cat", f"/proc/net/{v}_tables_names").stdout for v in ("ip", "ip6"))
        return v4, v6

    def legacy_save(self, ns: str) -> str:
        return self.run("ip", "netns", "exec", ns, "iptables-legacy-save", check=True).stdout

    def close(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    m = Machine(tmp_path / "state")
    try:
        yield m
    finally:
        m.close()


POD_NAT = {
    "apiVersion": "cnetctl/v1", "name": "pod", "settings": {"nat_backend": "iptables"},
    "nodes": {
        "r1": {"interfaces": {"eth0": {"addresses": ["10.31.0.1/24"]}},
               "nat": [{"masquerade": {"source": "10.32.0.0/24", "out_interface": "eth0"}}]},
        "r2": {"interfaces": {"eth0": {"addresses": ["10.31.0.2/24"]}}},
    },
    "links": [["r1:eth0", "r2:eth0"]],
}


def test_pod_nat_is_read_back_when_the_host_has_no_legacy_nat_table(machine, tmp_path):
    manifest = write(tmp_path, POD_NAT)
    res = machine.cnetctl("apply", manifest, "--no-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nat" not in machine.tables(None)[0]  # the condition of the defect
    saved = machine.legacy_save("pod-r1")
    assert "-A CNET-POD-POST -s 10.32.0.0/24 -o eth0" in saved
    res = machine.cnetctl("apply", manifest, "-o", "json", "--no-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["plan"]["changes"] == 0  # nothing re-added
    assert re.sub(r"\[\d+:\d+\]|#.*", "", machine.legacy_save("pod-r1")) == re.sub(r"\[\d+:\d+\]|#.*", "", saved)
    res = machine.cnetctl("verify", manifest)
    assert res.returncode == 0, res.stdout + res.stderr


def test_removed_pod_nat_leaves_the_kernel(machine, tmp_path):
    manifest = write(tmp_path, POD_NAT)
    assert machine.cnetctl("apply", manifest, "--no-verify").returncode == 0
    assert "CNET-POD-POST" in machine.legacy_save("pod-r1")
    doc = json.loads(json.dumps(POD_NAT))
    del doc["nodes"]["r1"]["nat"]
    res = machine.cnetctl("apply", write(tmp_path, doc, "no-nat.yaml"), "-o", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert [a["op"] for a in json.loads(res.stdout)["plan"]["actions"]] == ["delete"]
    assert "CNET-" not in machine.legacy_save("pod-r1")


@pytest.mark.long
def test_plan_and_verify_create_no_legacy_table_in_pod_namespaces(machine, tmp_path):
    manifest = write(tmp_path, POD_NAT)
    assert machine.cnetctl("apply", manifest, "--no-verify").returncode == 0
    # The host's own tables exist (any iptables-legacy command creates them): looking into a
    # pod must not take the host's list for the pod's.
    for table in ("filter", "nat"):
        machine.run("iptables-legacy", "-t", table, "-S", check=True)
        machine.run("ip6tables-legacy", "-t", table, "-S", check=True)
    before = {ns: machine.tables(ns) for ns in ("pod-r1", "pod-r2")}
    assert before["pod-r2"] == ("", "")
    for args in (("plan", manifest), ("verify", manifest), ("status",)):
        res = machine.cnetctl(*args)
        assert res.returncode in (0, 1), (args, res.stdout + res.stderr)  # verify's verdict: another test's
        assert {ns: machine.tables(ns) for ns in ("pod-r1", "pod-r2")} == before, args


# --- the backend of the last apply; the plan shows the rules ----------------------------------------------
@pytest.mark.long
def test_plan_and_apply_keep_the_backend_of_the_last_apply(tmp_path, clean_world):
    assert cnetctl("apply", DOCKER, "--nat-backend", "iptables", "--no-verify").returncode == 0
    res = cnetctl("plan", DOCKER, "-o", "json")
    assert res.returncode == 0 and json.loads(res.stdout)["changes"] == 0, res.stdout
    res = cnetctl("apply", DOCKER, "--no-verify")
    assert res.returncode == 0 and "no changes" in res.stdout, res.stdout
    assert "CNET-DOCKER-POST" in legacy_save() and "cnetctl" not in nft_ruleset()
    assert cnetctl("verify", DOCKER).returncode == 0
    # The flag (auto re-detects) and the manifest's explicit setting still move it.
    doc = yaml.safe_load(Path(DOCKER).read_text())
    doc["settings"]["nat_backend"] = "nftables"
    for args in (("plan", DOCKER, "--nat-backend", "auto"), ("plan", write(tmp_path, doc))):
        res = cnetctl(*args, "-o", "json")
        assert res.returncode == 0, res.stderr
        moves = {(a["op"], a["resource"]["backend"]) for a in json.loads(res.stdout)["actions"]
                 if a["resource"]["kind"] == "nat"}
        assert moves == {("delete", "iptables"), ("create", "nftables")}, args
    assert cnetctl("destroy", "--name", "docker").returncode == 0


MASQ = "masquerade source=10.17.0.0/24 out_interface=!cdocker0"
DNAT = "dnat destination=10.200.0.1 protocol=tcp port={} to=10.17.0.2:80"


@pytest.mark.parametrize("backend", BACKENDS)
def test_plan_and_apply_list_the_nat_rules_and_what_an_update_adds_and_removes(backend, tmp_path, clean_world):
    res = cnetctl("plan", DOCKER, "--nat-backend", backend)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("+ nat ("))
    assert lines[head + 1:head + 3] == [f"    {DNAT.format(8080)}", f"    {MASQ}"], res.stdout
    res = cnetctl("apply", DOCKER, "--nat-backend", backend, "--no-verify")
    assert res.returncode == 0 and f"    {MASQ}" in res.stdout.splitlines(), res.stdout

    doc = yaml.safe_load(Path(DOCKER).read_text())
    doc["nodes"]["host"]["nat"][1]["dnat"]["port"] = 8081
    changed = write(tmp_path, doc)
    for command in ("plan", "apply"):
        res = cnetctl(command, changed, "--nat-backend", backend, *(["--no-verify"] if command == "apply" else []))
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        head = next(i for i, line in enumerate(lines) if line.startswith("~ nat ("))
        assert lines[head + 1:head + 4] == [f"  - {DNAT.format(8080)}", f"  + {DNAT.format(8081)}", f"    {MASQ}"], \
            res.stdout
    if backend == "nftables":
        assert "tcp dport 8081" in nft_ruleset() and "tcp dport 8080" not in nft_ruleset()
    else:
        assert "--dport 8081" in legacy_save() and "--dport 8080" not in legacy_save()
    assert cnetctl("destroy", "--name", "docker").returncode == 0
