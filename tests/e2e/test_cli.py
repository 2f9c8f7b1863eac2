"""End to end: exit codes, messages, status/exec/schema/plan as a user sees them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import unprivileged_prefix
from tests.kernel.conftest import MANIFESTS, ROOT, cnetctl, ip, netns_list

QUICK = str(MANIFESTS / "quickstart.yaml")


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """cnetctl without root's powers: as nobody, or as the checkout's owner without capabilities."""
    return subprocess.run([*unprivileged_prefix(), sys.executable, "-m", "cnetctl", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_not_root_exits_4_before_touching_anything():
    where = Path(tempfile.mkdtemp(prefix="cnetctl-e2e-"))  # readable by nobody, unlike pytest's tmp_path
    where.chmod(0o755)
    manifest = where / "q.yaml"
    manifest.write_text((MANIFESTS / "quickstart.yaml").read_text())
    manifest.chmod(0o644)
    res = as_nobody("--state-dir", str(where / "state"), "apply", str(manifest))
    assert res.returncode == 4, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "sudo" in res.stderr
    assert "Traceback" not in res.stderr
    assert "quickstart-web" not in netns_list()
    # validate needs no root
    assert as_nobody("validate", str(manifest)).returncode == 0
    shutil.rmtree(where)


def test_invalid_manifest_exit_2_names_file_line_path(tmp_path, clean_world):
    bad = tmp_path / "bad.yaml"
    bad.write_text((MANIFESTS / "quickstart.yaml").read_text().replace("via: 10.88.0.1}", "via: 10.99.0.1}", 1))
    res = cnetctl("apply", str(bad))
    assert res.returncode == 2
    assert f"{bad}:" in res.stderr and "routes[0].via" in res.stderr and "connected subnet" in res.stderr
    assert "Traceback" not in res.stderr
    assert not {"quickstart-web", "quickstart-db"} & set(netns_list())


def test_plan_apply_status_exec_destroy(clean_world):
    plan = json.loads(cnetctl("plan", QUICK, "-o", "json").stdout)
    assert plan["create"] == plan["changes"] > 0 and plan["delete"] == 0
    assert "quickstart-web" not in netns_list()  # plan touched nothing

    res = cnetctl("apply", QUICK, "-o", "json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)["verify"]
    assert report["failed"] == 0 and report["passed"] == len(report["checks"])
    assert {c["kind"] for c in report["checks"]} >= {"readback", "ping", "route"}

    status = json.loads(cnetctl("status", "-o", "json").stdout)["topologies"]
    (q,) = [t for t in status if t["name"] == "quickstart"]
    assert q["namespaces"] == ["quickstart-db", "quickstart-web"] and q["state_file"]
    text = cnetctl("status", "quickstart").stdout
    assert "cbr0" in text and "quickstart-web" in text

    res = subprocess.run([sys.executable, "-m", "cnetctl", "exec", "quickstart", "web", "--", "ip", "-j", "addr",
                          "show", "dev", "eth0"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    (eth0,) = json.loads(res.stdout)
    assert "10.88.0.2" in [a["local"] for a in eth0["addr_info"]]
    res = cnetctl("exec", "quickstart", "nosuchnode", "--", "true")
    assert res.returncode == 2 and "no node nosuchnode (its nodes: db, host, web)" in res.stderr
    res = cnetctl("explain", "quickstart", "nosuchnode", "--to", "10.88.0.3")
    assert res.returncode == 2 and "no node nosuchnode (its nodes: db, host, web)" in res.stderr
    res = cnetctl("exec", "notapplied", "web", "--", "true")
    assert res.returncode == 2 and "no state file of notapplied here" in res.stderr
    subprocess.run(["ip", "netns", "del", "quickstart-db"], check=True)   # a user's slip
    res = cnetctl("exec", "quickstart", "db", "--", "true")
    assert res.returncode == 2 and "node db of topology quickstart has no netns quickstart-db (removed by hand? " \
        "`cnetctl apply` makes it again)" in res.stderr, res.stderr

    assert cnetctl("destroy", QUICK).returncode == 0
    assert cnetctl("status", "quickstart").returncode == 2


def test_verify_fails_with_exit_1_and_says_why(clean_world):
    assert cnetctl("apply", QUICK, "--no-verify").returncode == 0
    subprocess.run(["ip", "-n", "quickstart-db", "link", "set", "eth0", "down"], check=True)
    res = cnetctl("verify", QUICK, "-o", "json")
    assert res.returncode == 1
    report = json.loads(res.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert any(c["kind"] == "ping" and c["to"] == "db:eth0" for c in failed)
    assert report["failed"] == len(failed) and report["topology"] == "quickstart"
    text = cnetctl("verify", QUICK)
    assert text.returncode == 1 and "FAIL" in text.stdout
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0


def test_schema_and_usage_errors():
    schema = json.loads(cnetctl("schema").stdout)
    assert "nodes" in schema["properties"] and schema["additionalProperties"] is False
    assert cnetctl("destroy").returncode == 2
    assert cnetctl("apply").returncode == 2
    assert cnetctl("frobnicate").returncode == 2
    assert cnetctl("destroy", "--name", "Bad/Name").returncode == 2


def test_host_link_reads_back(clean_world):
    assert cnetctl("apply", QUICK, "--no-verify").returncode == 0
    links = {link["ifname"]: link for link in ip(None, "-d", "link", "show")}  # type: ignore[union-attr]
    assert links["cbr0"]["ifalias"] == "cnetctl:quickstart"
    assert cnetctl("destroy", "--name", "quickstart").returncode == 0
