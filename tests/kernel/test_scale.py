"""Issue 10 on the real kernel: many namespaces under a small descriptor limit, and a destroy
that returns only once the kernel has released everything (an immediate re-apply works)."""

from __future__ import annotations

import os
import subprocess
import sys

from cnetctl import generate
from tests.conftest import ROOT

from .conftest import ip, netns_list

PODS = 40
NOFILE = 128   # `ulimit -n 128`: soft and hard


def limited(*args: str) -> subprocess.CompletedProcess[str]:
    """cnetctl ARGS with RLIMIT_NOFILE lowered to NOFILE, hard limit included (as `ulimit -n` does)."""
    return subprocess.run(["prlimit", f"--nofile={NOFILE}:{NOFILE}", sys.executable, "-m", "cnetctl", *args],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=300)


def host_veths() -> list[str]:
    return sorted(link["ifname"] for link in ip(None, "link", "show", "type", "veth"))  # type: ignore[union-attr]


def test_many_namespaces_under_a_small_descriptor_limit(tmp_path, clean_world):
    """A socket per namespace was an IPRoute of 4 descriptors, 64 of them kept: a few dozen
    namespaces failed with "Too many open files" under a low limit. Now one descriptor a
    namespace, within a budget taken from the limit; and destroy waits for the kernel."""
    path = tmp_path / "many.yaml"
    path.write_text(generate.to_yaml(generate.bridge(PODS, name="many")))
    pods = [f"many-pod{i}" for i in range(PODS)]
    for _ in range(2):   # the second round: right after a destroy, nothing half-deleted collides
        out = limited("apply", str(path))
        assert out.returncode == 0, out.stderr[-2000:]
        assert netns_list() == sorted(pods)
        assert len(host_veths()) == PODS
        for ns in (pods[0], pods[-1]):
            (eth0,) = ip(ns, "link", "show", "eth0")  # type: ignore[misc]
            assert eth0["ifalias"] == "cnetctl:many" and eth0["operstate"] == "UP"
            (addr,) = ip(ns, "-4", "addr", "show", "eth0")  # type: ignore[misc]
            assert [a["local"] for a in addr["addr_info"]] == [f"10.220.0.{pods.index(ns) + 2}"]
            assert ip(ns, "route", "show", "default")
        again = limited("apply", str(path), "--no-verify")
        assert again.returncode == 0 and "no changes" in again.stdout, again.stderr[-2000:]
        gone = limited("destroy", "--name", "many")
        assert gone.returncode == 0, gone.stderr[-2000:]
        # Returned only once the kernel released the pods' host ends (they go with the namespaces).
        assert netns_list() == [] and host_veths() == []


def test_no_thread_is_left_in_a_namespace():
    """Namespaces are entered by one long-lived worker thread: left in a namespace, it would keep
    that namespace alive after its deletion (destroy then waited out its whole timeout)."""
    from cnetctl.kernel.netns import Sockets, run_in_each, run_in_netns

    def namespaces_of_threads() -> set[int]:
        return {os.stat(f"/proc/self/task/{tid}/ns/net").st_ino for tid in os.listdir("/proc/self/task")}

    home = os.stat("/proc/self/ns/net").st_ino
    subprocess.run(["ip", "netns", "add", "lone"], check=True)
    try:
        inside = run_in_netns("lone", lambda: os.stat("/proc/thread-self/ns/net").st_ino)
        assert inside != home
        assert namespaces_of_threads() == {home}
        assert run_in_each([("lone", lambda: 1), (None, lambda: 2)]) == [1, 2]
        with Sockets() as sockets:
            sockets.open_many(["lone"])
            assert namespaces_of_threads() == {home}
    finally:
        subprocess.run(["ip", "netns", "del", "lone"], check=True)
