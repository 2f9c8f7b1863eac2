"""apply / re-apply / drift repair / prune / destroy on the real kernel, read back with `ip -j`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from .conftest import MANIFESTS, cnetctl, ip, netns_list, ping, run

QUICK = str(MANIFESTS / "quickstart.yaml")


def links_by_name(ns: str | None) -> dict[str, dict]:
    return {link["ifname"]: link for link in ip(ns, "-d", "link", "show")}  # type: ignore[union-attr]


def addrs(ns: str | None, ifname: str) -> set[str]:
    (link,) = ip(ns, "addr", "show", "dev", ifname)  # type: ignore[misc]
    return {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a.get("scope") != "link"}


def test_quickstart_apply_builds_what_the_file_says(clean_world):
    res = cnetctl("apply", QUICK)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {"quickstart-web", "quickstart-db"} <= set(netns_list())

    host = links_by_name(None)
    assert host["cbr0"]["linkinfo"]["info_kind"] == "bridge"
    assert host["cbr0"]["ifalias"] == "cnetctl:quickstart"
    ports = [n for n, link in host.items() if link.get("master") == "cbr0"]
    assert len(ports) == 2 and all(host[p]["ifalias"] == "cnetctl:quickstart" for p in ports)
    assert addrs(None, "cbr0") == {"10.88.0.1/24", "fd00:88::1/64"}

    for ns, ip4, ip6 in (("quickstart-web", "10.88.0.2/24", "fd00:88::2/64"),
                         ("quickstart-db", "10.88.0.3/24", "fd00:88::3/64")):
        links = links_by_name(ns)
        assert links["eth0"]["linkinfo"]["info_kind"] == "veth"
        assert "UP" in links["eth0"]["flags"] and "UP" in links["lo"]["flags"]
        assert links["lo"]["ifalias"] == "cnetctl:quickstart"
        assert addrs(ns, "eth0") == {ip4, ip6}
        routes = ip(ns, "route", "show", "default")
        assert [(r["gateway"], r["protocol"]) for r in routes] == [("10.88.0.1", "147")]  # type: ignore[index]
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"

    # Real packets, both ways, IPv4 and IPv6 (no DAD stall right after apply) ...
    assert ping("quickstart-web", "10.88.0.3")
    assert ping("quickstart-db", "10.88.0.2")
    assert ping("quickstart-web", "fd00:88::3")
    # ... and what must not answer does not.
    assert not ping("quickstart-web", "10.88.0.99")

    res = cnetctl("destroy", "--name", "quickstart")
    assert res.returncode == 0, res.stderr
    assert not {"quickstart-web", "quickstart-db"} & set(netns_list())


def test_reapply_changes_nothing(clean_world):
    assert cnetctl("apply", QUICK, "--no-verify").returncode == 0
    before = {ns: {n: link["ifindex"] for n, link in links_by_name(ns).items()}
              for ns in (None, "quickstart-web", "quickstart-db")}
    # The kernel's own fe80:: address finishes DAD about a second after apply and only
    # then gets its `local` route: wait for that, or the comparison below races the kernel.
    deadline = time.monotonic() + 10
    while ip("quickstart-web", "-6", "addr", "show", "tentative") and time.monotonic() < deadline:
        time.sleep(0.1)
    routes_before = ip("quickstart-web", "route", "show", "table", "all")
    res = cnetctl("apply", QUICK, "--no-verify")
    assert res.returncode == 0
    assert "no changes" in res.stdout
    after = {ns: {n: link["ifindex"] for n, link in links_by_name(ns).items()}
             for ns in (None, "quickstart-web", "quickstart-db")}
    assert after == before
    assert ip("quickstart-web", "route", "show", "table", "all") == routes_before
    plan = json.loads(cnetctl("plan", QUICK, "-o", "json").stdout)
    assert plan["changes"] == 0
    assert cnetctl("destroy", QUICK).returncode == 0


def test_drift_is_repaired(clean_world):
    assert cnetctl("apply", QUICK, "--no-verify").returncode == 0
    # Drift made by hand: a route deleted, a link set down, an address removed, a sysctl flipped.
    run("ip", "-n", "quickstart-web", "route", "del", "default", "via", "10.88.0.1", check=True)
    run("ip", "-n", "quickstart-db", "link", "set", "eth0", "down", check=True)
    run("ip", "addr", "del", "10.88.0.1/24", "dev", "cbr0", check=True)
    Path("/proc/sys/net/ipv4/ip_forward").write_text("0")

    res = cnetctl("verify", QUICK, "-o", "json")
    assert res.returncode == 1
    report = json.loads(res.stdout)
    drift = {c["detail"] for c in report["checks"] if c["kind"] == "readback" and not c["ok"]}
    # The four hand-made changes, plus what the kernel did on its own when eth0 went
    # down: it flushed the IPv6 address and the IPv4 default route through it.
    assert drift == {
        "drift: + route default via 10.88.0.1 in netns quickstart-web",
        "drift: ~ veth eth0 in netns quickstart-db (peer cn6519d7ba53 in host) (up: False -> True)",
        "drift: + address 10.88.0.1/24 on cbr0 in host",
        "drift: ~ sysctl net.ipv4.ip_forward=1 in host (value: 0 -> 1)",
        "drift: + address fd00:88::3/64 on eth0 in netns quickstart-db",
        "drift: + route default via 10.88.0.1 in netns quickstart-db",
    }, drift
    assert not ping("quickstart-web", "10.88.0.3")

    plan = json.loads(cnetctl("plan", QUICK, "-o", "json").stdout)
    assert plan["create"] == 4 and plan["update"] == 2 and plan["delete"] == 0, plan

    res = cnetctl("apply", QUICK)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [r["gateway"] for r in ip("quickstart-web", "route", "show", "default")] == ["10.88.0.1"]  # type: ignore
    assert "UP" in links_by_name("quickstart-db")["eth0"]["flags"]
    assert "10.88.0.1/24" in addrs(None, "cbr0")
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    assert ping("quickstart-web", "10.88.0.3")
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0


def test_prune_removes_what_the_file_no_longer_declares(clean_world, tmp_path):
    assert cnetctl("apply", QUICK, "--no-verify").returncode == 0
    doc = yaml.safe_load(Path(QUICK).read_text())
    del doc["nodes"]["db"]
    doc["links"] = [link for link in doc["links"] if not link[0].startswith("db:")]
    doc["checks"] = [c for c in doc["checks"] if not any(s in json.dumps(c) for s in ("db", "10.88.0.3", "fd00:88::3"))]
    doc["nodes"]["web"]["routes"] = [{"to": "default", "via": "10.88.0.1"}]
    smaller = tmp_path / "quickstart.yaml"
    smaller.write_text(yaml.safe_dump(doc))
    ports_before = [n for n, link in links_by_name(None).items() if link.get("master") == "cbr0"]

    res = cnetctl("apply", str(smaller))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "quickstart-db" not in netns_list()
    ports = [n for n, link in links_by_name(None).items() if link.get("master") == "cbr0"]
    assert len(ports_before) == 2 and len(ports) == 1
    assert ip("quickstart-web", "-6", "route", "show", "default") == []
    assert ping("quickstart-web", "10.88.0.1")
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0


def test_destroy_without_state_file_or_manifest(clean_world, tmp_path):
    state = tmp_path / "state"
    env = {"CNETCTL_STATE_DIR": str(state)}
    assert cnetctl("apply", QUICK, "--no-verify", env=env).returncode == 0
    (state / "quickstart.json").unlink()
    res = cnetctl("destroy", "--name", "quickstart", env=env)
    assert res.returncode == 0, res.stderr
    assert not {"quickstart-web", "quickstart-db"} & set(netns_list())
    assert "cbr0" not in links_by_name(None)
    # Without the state file the original ip_forward cannot be known: restore it by hand
    # so clean_world compares what destroy could have done.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("0")
    # Idempotent: a second destroy finds nothing and succeeds.
    res = cnetctl("destroy", "--name", "quickstart", env=env)
    assert res.returncode == 0 and "nothing to destroy" in res.stdout


def test_users_objects_with_similar_names_survive(clean_world):
    run("ip", "netns", "add", "quickstart-other", check=True)
    run("ip", "link", "add", "cbr1", "type", "bridge", check=True)
    run("ip", "link", "add", "cnuser0", "type", "veth", "peer", "name", "cnuser1", check=True)
    try:
        assert cnetctl("apply", QUICK, "--no-verify").returncode == 0
        assert cnetctl("destroy", "--name", "quickstart").returncode == 0
        assert "quickstart-other" in netns_list()
        assert {"cbr1", "cnuser0", "cnuser1"} <= set(links_by_name(None))
    finally:
        run("ip", "netns", "del", "quickstart-other")
        run("ip", "link", "del", "cbr1")
        run("ip", "link", "del", "cnuser0")


def test_conflict_with_a_users_namespace_touches_nothing(clean_world):
    run("ip", "netns", "add", "quickstart-web", check=True)
    try:
        res = cnetctl("apply", QUICK)
        assert res.returncode == 2
        assert "netns quickstart-web exists" in res.stderr
        assert netns_list() == ["quickstart-web"]
        assert "cbr0" not in links_by_name(None)
    finally:
        run("ip", "netns", "del", "quickstart-web")
