"""The issue-12 commands on the real kernel: generated manifests applied, verified and destroyed."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from tests import yaml12

from .conftest import MANIFESTS, ROOT, cnetctl, default_signals, ip, netns_list, run

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

FAILING = """apiVersion: cnetctl/v1
name: failing
nodes:
  a: {interfaces: {eth0: {addresses: [10.31.0.1/30]}}}
  b: {interfaces: {eth0: {addresses: [10.31.0.2/30]}}}
links: [[a:eth0, b:eth0]]
checks:
  - {ping: {from: a, to: 10.31.0.2}}
  - {ping: {from: a, to: "b:eth0", expect: unreachable}}
"""


def test_try_applies_verifies_and_destroys_elsewhere(tmp_path, clean_world):
    """`try` works in a world of its own: this world (the test's "machine") stays byte-identical,
    its state directory gains nothing, and the exit code is verify's."""
    state_dir = os.environ["CNETCTL_STATE_DIR"]
    files_before = sorted(os.listdir(state_dir))
    # A namespace of the user's under a name the manifest needs: apply here would refuse (exit 2).
    run("ip", "netns", "add", "quickstart-web", check=True)
    user_ns = os.stat("/run/netns/quickstart-web").st_ino
    res = cnetctl("try", str(MANIFESTS / "quickstart.yaml"), "-o", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["verify"]["failed"] == 0 and out["verify"]["passed"] == 9, out["verify"]
    assert out["plan"]["create"] == 19, out["plan"]
    assert out["destroyed"]["delete"] > 0 and out["errors"] == []
    assert netns_list() == ["quickstart-web"] and os.stat("/run/netns/quickstart-web").st_ino == user_ns
    assert ip("quickstart-web", "link", "show")[0]["ifname"] == "lo"  # type: ignore[index]
    assert len(ip("quickstart-web", "link", "show")) == 1  # type: ignore[arg-type]
    run("ip", "netns", "del", "quickstart-web", check=True)
    assert sorted(os.listdir(state_dir)) == files_before
    # A check that fails: exit 1, the report says which, and still nothing is left here.
    failing = tmp_path / "failing.yaml"
    failing.write_text(FAILING)
    res = cnetctl("try", str(failing))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "2 passed, 1 failed" in res.stdout and "destroyed" in res.stdout, res.stdout
    assert netns_list() == [] and sorted(os.listdir(state_dir)) == files_before
    # Bad input: exit 2 before any world is made.
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: cnetctl/v1\nname: Bad\nnodes: {}\n")
    res = cnetctl("try", str(bad))
    assert res.returncode == 2 and "bad.yaml:2: name" in res.stderr, res.stderr


def test_try_a_topology_on_two_machines_runs_every_check_once_across_them(tmp_path, clean_world):
    """manifests/two-hosts.yaml in two machine worlds joined by an underlay: each slice applied,
    each machine verifying its own checks — pod-b reaches pod-a, which lives only in the other
    world, over the VXLAN between the machines — and nothing left here."""
    state_dir = os.environ["CNETCTL_STATE_DIR"]
    files_before = sorted(os.listdir(state_dir))
    res = cnetctl("try", str(MANIFESTS / "two-hosts.yaml"), "-o", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["exit_code"] == 0 and sorted(out["hosts"]) == ["node1", "node2"], out
    checks = {host: data["verify"]["checks"] for host, data in out["hosts"].items()}
    for host, data in out["hosts"].items():
        assert data["plan"]["create"] > 0 and data["destroyed"]["delete"] > 0 and data["errors"] == [], data
        assert data["verify"]["host"] == host and data["verify"]["failed"] == 0
    # Together the machines ran every check, and none failed: each ran on one side at least.
    assert len(checks["node1"]) == len(checks["node2"])
    for mine, theirs in zip(checks["node1"], checks["node2"], strict=True):
        assert True in (mine["ok"], theirs["ok"]) and False not in (mine["ok"], theirs["ok"]), (mine, theirs)
    across = [c for c in checks["node2"] if c["kind"] == "ping" and c["ok"] and c["from"] == "pod-b"
              and c["to"] == "pod-a:eth0"]
    assert across, checks["node2"]   # pod-b -> pod-a: a reply from the other world
    assert netns_list() == [] and sorted(os.listdir(state_dir)) == files_before
    assert not [link for link in ip(None, "link", "show") if link["ifname"] != "lo"]  # type: ignore[union-attr]
    # A wrong expectation on one machine: exit 1, that machine says which check, the other passes.
    doc: dict = yaml12.load((MANIFESTS / "two-hosts.yaml").read_text())  # type: ignore[assignment]
    unreachable = next(c for c in doc["checks"] if c.get("ping", {}).get("expect") == "unreachable")
    unreachable["ping"]["expect"] = "reachable"
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    res = cnetctl("try", str(tmp_path / "wrong.yaml"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "on 2 machines together:" in res.stdout and " 1 failed" in res.stdout, res.stdout
    assert res.stdout.count("world goes with it") == 2 and netns_list() == []


def test_machine_worlds_reach_each_other_only_over_their_underlay():
    from cnetctl.kernel.world import UNDERLAY, machines

    addresses = {"a": "192.0.2.11", "b": "198.51.100.7", "c": "2001:db8::c"}
    with machines(addresses) as worlds:
        for name, world in worlds.items():
            links = json.loads(world.run("ip", "-j", "addr", "show", check=True).stdout)
            assert sorted(link["ifname"] for link in links) == ["lo", UNDERLAY]
            (underlay,) = [link for link in links if link["ifname"] == UNDERLAY]
            assert addresses[name] in [a["local"] for a in underlay["addr_info"]]
        assert worlds["a"].run("ping", "-c", "1", "-W", "2", "-n", "-q", "198.51.100.7").returncode == 0
        assert worlds["b"].run("ping", "-c", "1", "-W", "2", "-n", "-q", "192.0.2.11").returncode == 0
        pids = [w.pid for w in worlds.values()]
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]   # every world ended with the block
    assert netns_list() == []


def processes_naming(text: str, timeout: float = 10.0) -> list[str]:
    """The processes whose command line names `text`, once none are left or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for cmdline in os.listdir("/proc"):
            try:
                with open(f"/proc/{cmdline}/cmdline", "rb") as f:
                    argv = f.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, NotADirectoryError):
                continue
            if text in argv and cmdline.isdigit() and int(cmdline) != os.getpid():
                found.append(f"{cmdline}: {argv[:120]}")
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def trysig_manifest(machines: int) -> dict:
    """80 nodes, on one machine or spread over two (then the second machine's apply is the one hit)."""
    if machines == 1:
        return {"apiVersion": "cnetctl/v1", "name": "trysig", "nodes": {f"n{i}": {} for i in range(80)}}
    return {"apiVersion": "cnetctl/v1", "name": "trysig",
            "hosts": {"m1": {"address": "192.0.2.21"}, "m2": {"address": "192.0.2.22"}},
            "nodes": {"m1": {}, "m2": {}, **{f"n{i}": {"on": f"m{i % 2 + 1}"} for i in range(80)}}}


@pytest.mark.parametrize("machines", [1, 2], ids=["one-machine", "two-machines"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_try_interrupted_or_killed_mid_apply_leaves_nothing(sig, machines, tmp_path, clean_world):
    """Ctrl-C (SIGINT to the process group), SIGTERM to `try`, or SIGKILL to `try` while it applies: it
    exits as apply would (130, 143, killed), every process of its worlds ends with it, and nothing of the
    worlds stays here (no namespace, no state file; after SIGKILL at most its empty temporary directory).
    With two machines the second machine's apply is interrupted, and no check is run."""
    state_dir = os.environ["CNETCTL_STATE_DIR"]
    files_before = sorted(os.listdir(state_dir))
    doc = trysig_manifest(machines)
    manifest = tmp_path / "trysig.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    tmp = tmp_path / "tmp"   # the world's temporary files, and a name its processes carry
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "cnetctl", "try", str(manifest)], cwd=ROOT,
                            preexec_fn=default_signals, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "TMPDIR": str(tmp)})
    assert proc.stdout is not None
    if machines == 2:
        while "in machine m2's throw-away world" not in proc.stdout.readline():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    while not proc.stdout.readline().startswith("+ netns trysig-"):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    proc.wait(timeout=60)   # a hang fails here
    # At once, not when the world's work is done: what holds the pipes is gone as well.
    assert processes_naming(str(tmp_path), timeout=3) == []
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}[sig], err
    assert "checks of topology" not in out
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert netns_list() == [] and sorted(os.listdir(state_dir)) == files_before
    left = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    if sig == signal.SIGKILL:
        assert not [p for p in tmp.rglob("*.json")], left
    else:
        assert left == []


def test_destroy_all_finds_every_topology_by_state_file_and_by_label(tmp_path, clean_world):
    """Two topologies, one of them without its state file (found by its labels alone), beside a
    namespace of the user's: destroy --all removes both, says so, leaves the user's, and is idempotent."""
    state_dir = os.environ["CNETCTL_STATE_DIR"]
    gen = cnetctl("generate", "bridge", "--pods", "1", "--name", "gall")
    (tmp_path / "gall.yaml").write_text(gen.stdout)
    (tmp_path / "failing.yaml").write_text(FAILING)
    for path in ("gall.yaml", "failing.yaml"):
        assert cnetctl("apply", str(tmp_path / path), "--no-verify").returncode == 0
    os.unlink(os.path.join(state_dir, "failing.json"))
    run("ip", "netns", "add", "failing-user", check=True)
    res = cnetctl("destroy", "--all")
    assert res.returncode == 0, res.stderr
    assert "topology failing: destroyed (" in res.stdout and "topology gall: destroyed (" in res.stdout, res.stdout
    assert "- netns gall-pod0" in res.stdout    # each operation, as a plain line (stdout is not a terminal)
    assert netns_list() == ["failing-user"]
    assert not [link for link in ip(None, "link", "show") if link.get("ifalias", "").startswith("cnetctl:")]  # type: ignore[union-attr]
    assert not [f for f in os.listdir(state_dir) if f.endswith(".json")]
    again = cnetctl("destroy", "--all", "-o", "json")
    assert again.returncode == 0 and json.loads(again.stdout) == {"topologies": []}, again.stdout
    assert cnetctl("destroy", "--all", "--name", "gall").returncode == 2
    run("ip", "netns", "del", "failing-user", check=True)


def firewall_text() -> str:
    return "".join(run(*argv, check=True).stdout for argv in (
        ("iptables-legacy-save",), ("ip6tables-legacy-save",), ("nft", "list", "ruleset")))


@pytest.mark.parametrize("manifest,backend,drop_with", [
    ("docker-bridge.yaml", "nftables", None), ("docker-bridge.yaml", "iptables", None),
    # settings.forward: accept under a FORWARD policy DROP: commented rules in the other tool's
    # nf_tables chain, or a chain CNET-QUICKSTART-FWD in the legacy filter table
    ("quickstart.yaml", "nftables", "iptables-nft"), ("quickstart.yaml", "iptables", "iptables-legacy"),
], ids=["nat-nftables", "nat-iptables", "forward-accept-nftables", "forward-accept-iptables"])
def test_destroy_all_finds_what_only_the_firewall_still_has(manifest, backend, drop_with, clean_world):
    """State file, namespaces and labelled links gone (deleted by hand): the NAT table or chains
    and forward-accepts left in the host namespace still carry the owner's label, and status
    and destroy --all find them by it."""
    name = yaml.safe_load((MANIFESTS / manifest).read_text())["name"]
    # The value ip_forward had before apply was in the state file: with it lost, destroy
    # cannot restore it (nothing else records it); the test puts it back itself.
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    forward_before = forward.read_text()
    had_nft_filter = run("nft", "list", "table", "ip", "filter").returncode == 0
    if drop_with:
        run(drop_with, "-P", "FORWARD", "DROP", check=True)
    try:
        res = cnetctl("apply", str(MANIFESTS / manifest), "--nat-backend", backend, "--no-verify")
        assert res.returncode == 0, res.stderr
        os.unlink(os.path.join(os.environ["CNETCTL_STATE_DIR"], f"{name}.json"))
        for ns in netns_list():
            run("ip", "netns", "del", ns, check=True)
        for link in ip(None, "link", "show"):  # type: ignore[union-attr]
            if link.get("ifalias", "").startswith("cnetctl:"):
                run("ip", "link", "del", link["ifname"])
        assert f"cnetctl:{name}" in firewall_text()   # what is left is only in the firewall
        status = cnetctl("status", "-o", "json")
        assert [t["name"] for t in json.loads(status.stdout)["topologies"]] == [name], status.stdout
        res = cnetctl("destroy", "--all")
        assert res.returncode == 0 and f"topology {name}: destroyed (" in res.stdout, res.stdout + res.stderr
        left = firewall_text()
        assert "cnetctl" not in left and "CNET-" not in left, left
        again = cnetctl("destroy", "--all", "-o", "json")
        assert again.returncode == 0 and json.loads(again.stdout) == {"topologies": []}, again.stdout
    finally:
        if drop_with:
            run(drop_with, "-P", "FORWARD", "ACCEPT", check=True)
        if drop_with == "iptables-nft" and not had_nft_filter:
            run("nft", "delete", "table", "ip", "filter", check=True)
        forward.write_text(forward_before)


def on_a_terminal(*args: str) -> tuple[int, str]:
    """cnetctl with stdout on a pseudo-terminal (120 columns); what the terminal received, escapes removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM", "COLUMNS")}
    proc = subprocess.Popen([sys.executable, "-m", "cnetctl", *args], stdin=slave, stdout=slave, stderr=slave,
                            cwd=ROOT, env={**env, "TERM": "xterm"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:   # EIO: the other end is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    rc = proc.wait(timeout=120)
    return rc, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode()).replace("\r", "\n")


def test_a_long_apply_shows_a_bar_on_a_terminal_and_lines_in_a_pipe(tmp_path, clean_world):
    path = tmp_path / "gbar.yaml"
    path.write_text(cnetctl("generate", "bridge", "--pods", "20", "--name", "gbar").stdout)
    rc, screen = on_a_terminal("apply", str(path), "--no-verify")
    assert rc == 0, screen
    assert "topology gbar: applying 122 to create" in screen and "122/122" in screen and "━" in screen, screen
    assert not [line for line in screen.splitlines() if line.startswith("+ ")], screen
    piped = cnetctl("destroy", "--name", "gbar")
    assert piped.returncode == 0 and "- netns gbar-pod0\n" in piped.stdout and "━" not in piped.stdout
    assert netns_list() == []
