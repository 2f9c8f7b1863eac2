"""Ansible as the distribution engine, run for real: ansible-playbook in the test world drives
simulated machines (tests/machines.py) over ssh (tests/sshd.py), and each machine's kernel is
read with its own `ip -j`.

One test, in order: deploy (install + apply + verify) → the kernel of every machine holds what
its apply created; deploy again → nothing changes; a manifest with a failing check → the play
fails and names the check; destroy → nothing of it is left.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from ruamel.yaml import YAML

from tests.conftest import ROOT
from tests.kernel.conftest import MANIFESTS, cnetctl
from tests.machines import Machine, machines
from tests.sshd import SSHD, SshAccess, controller_on_underlay, ssh_servers

# The one switch: a manifest with `hosts:` (e.g. manifests/two-hosts.yaml, underlay 192.0.2.11
# and .12) is deployed as its slices, with the inventory `cnetctl inventory` prints; a manifest
# without `hosts:` is deployed whole onto each of ONE_MACHINE_HOSTS.
MANIFEST = MANIFESTS / "two-hosts.yaml"
ONE_MACHINE_HOSTS = {"m1": "192.0.2.11", "m2": "192.0.2.12"}

PLAYBOOKS = ROOT / "deploy" / "ansible"
MACHINE_PYTHON = "/usr/bin/python3"   # the distribution's, as on a fresh machine
LINK_KINDS = {"veth", "bridge", "vxlan", "dummy", "lo", "macvlan", "vlan"}


def _setuptools_builds_cnetctl() -> bool:
    """pyproject.toml needs setuptools>=77 (SPDX license); the world has no network to fetch it."""
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= 77
    except importlib.metadata.PackageNotFoundError:
        return False


pytestmark = [
    pytest.mark.skipif(not (shutil.which("ansible-playbook") and os.path.exists(SSHD)
                            and os.path.exists(MACHINE_PYTHON)),
                       reason="needs ansible-playbook (apt: ansible-core), sshd (apt: openssh-server), python3"),
    pytest.mark.skipif(not _setuptools_builds_cnetctl(),
                       reason="needs setuptools>=77 in the test venv to build cnetctl: pip install -e '.[test]'")]


def _inventory(manifest: Path, directory: Path) -> tuple[Path, dict[str, str]]:
    """The inventory the user would use, and {host: underlay address} from it."""
    if "hosts" in (yaml.safe_load(manifest.read_text()) or {}):
        out = cnetctl("inventory", str(manifest))
        assert out.returncode == 0, out.stderr
        text = out.stdout
    else:
        text = yaml.safe_dump({"cnetctl": {"hosts": {name: {"ansible_host": address}
                                                      for name, address in ONE_MACHINE_HOSTS.items()}}})
    path = directory / "inventory.yml"
    path.write_text(text)
    return path, dict(_hosts(yaml.safe_load(text)))


def _hosts(node: Any) -> Iterator[tuple[str, str]]:
    """(name, ansible_host) of every host in a YAML inventory, wherever its group nests it."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "hosts" and isinstance(value, dict):
                yield from ((name, hv["ansible_host"]) for name, hv in value.items())
            else:
                yield from _hosts(value)


def _cnetctl_wheel(directory: Path) -> Path:
    """cnetctl's wheel, built from this checkout (a copy of it: no build/ or egg-info left
    behind) with the test venv's setuptools: the test world has no network for an isolated build."""
    src = directory / "src"
    shutil.copytree(ROOT / "cnetctl", src / "cnetctl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                          "--no-build-isolation", "--no-index", "-w", str(directory / "dist"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return next((directory / "dist").glob("cnetctl-*.whl"))


def _dependencies(directory: Path) -> Path:
    """The test venv's installed packages, cnetctl's own files left out, as one directory of
    symlinks: the machines import cnetctl's dependencies (and pip) from there (PYTHONPATH), as
    they have no network to download them. The playbook still creates the venv, copies the
    wheel and pip-installs cnetctl into it, resolving the dependencies against these."""
    site = directory / "site"
    site.mkdir()
    for path in {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}:
        for entry in path.iterdir():
            if entry.name.startswith(("cnetctl", "__editable__")) or entry.suffix == ".pth" \
                    or (site / entry.name).exists():
                continue
            (site / entry.name).symlink_to(entry)
    return site


def _test_vars(ms: dict[str, Machine], access: SshAccess, wheel: Path, site: Path, report: Path) -> dict[str, Any]:
    """What this test adds to the user's inventory: how to reach the machines, and how to install
    offline (the venv from the interpreter the dependencies were built for)."""
    return {"cnetctl": {
        "hosts": {name: {"cnetctl_state_dir": m.state_dir} for name, m in ms.items()},
        "vars": {
            "ansible_user": "root", "ansible_become": False, "ansible_python_interpreter": MACHINE_PYTHON,
            "ansible_ssh_private_key_file": str(access.client_key),
            "ansible_remote_tmp": "/opt/ansible-tmp",   # each machine's own /opt, not the shared /root
            "cnetctl_python": os.path.realpath(sys.executable),
            "cnetctl_venv_args": ["--without-pip"],
            "cnetctl_environment": {"PYTHONPATH": str(site)},
            "cnetctl_src": [str(wheel)],
            "cnetctl_pip_args": "--no-index",        # a string, as -e cnetctl_pip_args=… gives it
            "cnetctl_report": str(report)}}}


class Playbooks:
    def __init__(self, inventories: list[Path], access: SshAccess, directory: Path, report: Path) -> None:
        self.inventories, self.report = inventories, report
        # One master connection per machine for all the runs, at a path of ours, so close() finds it.
        self.ssh = access.ssh_options() + ["-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
                                           "-o", f"ControlPath={directory}/cp-%C"]
        self.env = {**os.environ, "ANSIBLE_CONFIG": str(PLAYBOOKS / "ansible.cfg"),
                    "ANSIBLE_HOME": str(directory / "ansible-home"),
                    "ANSIBLE_LOCAL_TEMP": str(directory / "ansible-tmp"),
                    "ANSIBLE_SSH_ARGS": " ".join(self.ssh), "ANSIBLE_HOST_KEY_CHECKING": "True",
                    "ANSIBLE_STDOUT_CALLBACK": "default", "ANSIBLE_NOCOLOR": "1"}

    def run(self, playbook: str, manifest: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
        """(exit status, output, the run's report {host: {apply, verify}})."""
        self.report.unlink(missing_ok=True)
        # A manifest in the checkout is named as a user would, relative to where they run from.
        path = manifest.relative_to(ROOT) if manifest.is_relative_to(ROOT) else manifest
        argv = ["ansible-playbook", str(PLAYBOOKS / playbook), "-e", f"cnetctl_manifest={path}", *args]
        for inventory in self.inventories:
            argv += ["-i", str(inventory)]
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=600, cwd=ROOT)
        text = out.stdout + out.stderr
        return out.returncode, text, json.loads(self.report.read_text()) if self.report.exists() else {}


    def close(self, addresses: list[str]) -> None:
        """End the master connections (ControlPersist) before their sshd goes."""
        for address in addresses:
            subprocess.run(["ssh", *self.ssh, "-O", "exit", f"root@{address}"], capture_output=True, timeout=30)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: {host: {ok, changed, unreachable, failed, ...}}."""
    found = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        found[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return found


def task_results(output: str, task: str) -> dict[str, str]:
    """{host: ok|changed|failed|skipping|fatal} as the default callback printed them for one task."""
    section = output.split(f"TASK [cnetctl : {task}]", 1)[1].split("\nTASK [", 1)[0].split("\nPLAY", 1)[0]
    return dict((host, status) for status, host in re.findall(r"^(\w+): \[([^\]\s]+)", section, re.M))


def _ip(m: Machine, ns: str | None, *args: str) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], m.ip_json(*(["-n", ns] if ns else []), *args))


def _links(m: Machine, ns: str | None) -> set[str]:
    return {link["ifname"] for link in _ip(m, ns, "link")}


def _addresses(m: Machine, ns: str | None) -> set[tuple[str, str]]:
    return {(link["ifname"], f"{a['local']}/{a['prefixlen']}")
            for link in _ip(m, ns, "addr") for a in link.get("addr_info", [])}


def _netns(m: Machine) -> set[str]:
    return {e["name"] for e in _ip(m, None, "netns", "list")}


def created(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [a["resource"] for a in report["apply"]["plan"]["actions"] if a["op"] == "create"]


def assert_live(m: Machine, resources: list[dict[str, Any]]) -> None:
    """Every namespace, link and address this machine's apply created is in its kernel."""
    assert {r["ns"] for r in resources if r["kind"] == "netns"} <= _netns(m)
    for r in resources:
        if r["kind"] in LINK_KINDS:
            assert r["ifname"] in _links(m, r["ns"]), (m.name, r)
        elif r["kind"] == "address":
            cidr = str(ipaddress.ip_interface(r["cidr"]))
            assert (r["ifname"], cidr) in _addresses(m, r["ns"]), (m.name, r)


def assert_gone(m: Machine, resources: list[dict[str, Any]]) -> None:
    """Nothing of it is left: no namespace at all, none of its links or addresses on the host."""
    assert _netns(m) == set(), m.name
    links, addresses = _links(m, None), _addresses(m, None)
    for r in resources:
        if r["ns"] is None and r["kind"] in LINK_KINDS - {"lo"}:
            assert r["ifname"] not in links, (m.name, r)
        elif r["ns"] is None and r["kind"] == "address":
            assert (r["ifname"], str(ipaddress.ip_interface(r["cidr"]))) not in addresses, (m.name, r)


def failing_variant(manifest: Path, directory: Path) -> tuple[Path, dict[str, Any]]:
    """The manifest with its first ping check expecting the opposite: same topology, one check
    that must fail wherever it runs. Round-tripped as YAML 1.2, as cnetctl reads it (YAML 1.1
    would turn an `on:` key into True)."""
    rt = YAML()
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.width = 4096
    doc = rt.load(manifest.read_text())
    check = next(c["ping"] for c in doc["checks"] if "ping" in c)
    check["expect"] = "reachable" if check.get("expect") == "unreachable" else "unreachable"
    path = directory / f"failing-{manifest.name}"
    with path.open("w") as f:
        rt.dump(doc, f)
    return path, dict(check)


def test_ansible_deploys_verifies_and_destroys_on_every_machine() -> None:
    directory = Path(tempfile.mkdtemp(prefix="cnetctl-ansible-"))
    try:
        _scenario(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _scenario(directory: Path) -> None:
    inventory, hosts = _inventory(MANIFEST, directory)
    wheel, site = _cnetctl_wheel(directory), _dependencies(directory)
    report_file = directory / "cnetctl-report.json"
    with machines(list(hosts.items())) as ms, controller_on_underlay(), ssh_servers(list(ms.values())) as access:
        extra = directory / "test-vars.yml"
        extra.write_text(yaml.safe_dump(_test_vars(ms, access, wheel, site, report_file)))
        play = Playbooks([inventory, extra], access, directory, report_file)
        try:
            _runs(play, ms, directory, site)
        finally:
            play.close([m.address for m in ms.values()])


def _runs(play: Playbooks, ms: dict[str, Machine], directory: Path, site: Path) -> None:
    rc, out, report = play.run("deploy.yml", MANIFEST)
    assert rc == 0, out
    assert set(report) == set(ms), out
    assert task_results(out, "Apply this host's slice") == {name: "changed" for name in ms}, out
    for name, m in ms.items():
        assert recap(out)[name]["failed"] == 0, out
        assert report[name]["verify"]["failed"] == 0, report[name]["verify"]
        assert report[name]["apply"]["plan"]["changes"] > 0, report[name]["apply"]
        assert_live(m, created(report[name]))
        assert m.run("/opt/cnetctl/venv/bin/cnetctl", "--version", env={"PYTHONPATH": str(site)}).returncode == 0
    first = {name: created(report[name]) for name in ms}

    rc, out, report = play.run("deploy.yml", MANIFEST)
    assert rc == 0, out
    assert task_results(out, "Apply this host's slice") == {name: "ok" for name in ms}, out
    for name in ms:
        assert recap(out)[name]["changed"] == 0, out          # install, copy and apply alike
        assert report[name]["apply"]["plan"]["changes"] == 0, report[name]["apply"]

    failing, check = failing_variant(MANIFEST, directory)
    rc, out, report = play.run("deploy.yml", failing, "--tags", "apply,verify")
    assert rc == 2 and set(report) == set(ms), out           # ansible-playbook: a host failed
    failed = {name for name in ms if report[name]["verify"]["failed"]}
    assert failed, report                                    # the check runs on some machine
    line = f"- ping from={check['from']} to={check['to']} expect={check['expect']}: "
    for name in ms:
        assert recap(out)[name]["failed"] == (name in failed), out
        assert report[name]["apply"]["plan"]["changes"] == 0
    assert task_results(out, "Every check passed") == {n: "fatal" if n in failed else "ok" for n in ms}, out
    for name in failed:
        assert re.search(rf"\S+ on {name}: 1 of \d+ checks failed\n\s*{re.escape(line)}", out), out

    rc, out, _ = play.run("destroy.yml", MANIFEST)
    assert rc == 0, out
    for name, m in ms.items():
        assert recap(out)[name]["changed"] == 1, out
        assert_gone(m, first[name])
