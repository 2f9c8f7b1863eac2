"""The lab around cnetctl, checked as far as this machine allows: the Vagrantfiles (Ruby syntax,
`vagrant validate`) and the CI workflow (its YAML, and every cnetctl command and flag it runs)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from cnetctl.cli import app
from tests.conftest import ROOT

VAGRANTFILES = [ROOT / "vagrant" / "Vagrantfile", ROOT / "vagrant" / "two-vm" / "Vagrantfile"]
VM_BASE = ROOT / "vagrant" / "cnetctl_vm.rb"   # what both Vagrantfiles' VMs share
WORKFLOW = ROOT / ".github" / "workflows" / "cnetctl-lab.yml"
ANSIBLE = ROOT / "deploy" / "ansible"


def vagrant(where: Path, tmp_path: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (apt-get install vagrant)")
    # Its state (.vagrant, ~/.vagrant.d) goes to tmp_path: the checkout and $HOME stay as they were.
    env = {**os.environ, "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"), "VAGRANT_HOME": str(tmp_path / "home"),
           "VAGRANT_CHECKPOINT_DISABLE": "1", **(env or {})}
    return subprocess.run(["vagrant", *args], cwd=where, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("vagrantfile", [*VAGRANTFILES, VM_BASE],
                         ids=lambda p: p.parent.name if p.name == "Vagrantfile" else p.name)
def test_vagrantfile_is_valid_ruby(vagrantfile: Path) -> None:
    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed")
    res = subprocess.run(["ruby", "-c", str(vagrantfile)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "Syntax OK" in res.stdout, res.stderr


@pytest.mark.parametrize("vagrantfile", VAGRANTFILES, ids=lambda p: p.parent.name)
def test_vagrant_validates_it(vagrantfile: Path, tmp_path: Path) -> None:
    """Every config.vm and provisioner setting is checked; the provider blocks are not (--ignore-provider):
    no VirtualBox or libvirt here, and vagrant refuses to validate them without the provider."""
    res = vagrant(vagrantfile.parent, tmp_path, "validate", "--ignore-provider")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Vagrantfile validated successfully" in res.stdout


def test_the_two_vms_are_the_manifests_hosts(tmp_path: Path) -> None:
    manifest = tmp_path / "lab.yaml"
    manifest.write_text("apiVersion: cnetctl/v1\nname: lab\nhosts:\n  alpha: {address: 192.168.56.21}\n"
                        "  beta: {address: 192.168.56.22}\n  gamma: {address: 192.168.56.23}\nnodes: {}\n")
    res = vagrant(VAGRANTFILES[1].parent, tmp_path, "validate", "--ignore-provider",
                  env={"CNETCTL_MANIFEST": str(manifest)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.findall(r"==> (\w+): Ignoring provider config", res.stdout) == ["alpha", "beta", "gamma"]
    text = VAGRANTFILES[1].read_text()
    assert 'machine.vm.network "private_network", ip: address' in text
    bad = tmp_path / "one.yaml"
    bad.write_text("apiVersion: cnetctl/v1\nname: one\nnodes: {}\n")
    res = vagrant(VAGRANTFILES[1].parent, tmp_path, "validate", "--ignore-provider",
                  env={"CNETCTL_MANIFEST": str(bad)})
    assert res.returncode != 0 and "no hosts: section" in res.stdout + res.stderr


def test_what_the_vagrantfiles_run_exists() -> None:
    lab = VAGRANTFILES[0].read_text()
    assert 'config.vm.box = "debian/bookworm64"' in VM_BASE.read_text()
    assert all('require_relative "' in v.read_text() and "cnetctl_vm(config, " in v.read_text() for v in VAGRANTFILES)
    assert "make -C /cnetctl demo VENV=/opt/cnetctl" in lab
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^VENV\s*\?=", makefile, re.M)
    two = VAGRANTFILES[1].read_text()
    assert '"manifests/two-hosts.yaml"' in two and 'File.join(ROOT, "deploy", "ansible", "deploy.yml")' in two
    missing = [p for p in (ANSIBLE / "deploy.yml", ANSIBLE / "roles" / "cnetctl" / "defaults" / "main.yml",
                           ROOT / "manifests" / "two-hosts.yaml") if not p.exists()]
    if missing:
        names = ", ".join(str(p.relative_to(ROOT)) for p in missing)
        pytest.skip(f"not in this checkout yet (issue 11's branches): {names}")
    defaults = (ANSIBLE / "roles" / "cnetctl" / "defaults" / "main.yml").read_text()
    for var in ("cnetctl_manifest", "cnetctl_pip_spec", "cnetctl_host"):
        assert f'"{var}"' in two and re.search(rf"^#? ?{var}:", defaults, re.M), var
    assert "cnetctl_group | default('cnetctl')" in (ANSIBLE / "deploy.yml").read_text()


# --- the CI workflow ------------------------------------------------------------------------------

def workflow() -> dict[Any, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(doc, dict)
    return doc


def steps() -> list[dict[str, Any]]:
    jobs = workflow()["jobs"]
    assert list(jobs) == ["lab"]
    return list(jobs["lab"]["steps"])


def cnetctl_calls(script: str, env: dict[str, str]) -> list[list[str]]:
    """Every cnetctl command line of a step's script, as argv after the program."""
    calls = []
    for line in script.splitlines():
        words = shlex.split(line, comments=True)
        for i, word in enumerate(words):
            if word == "$CNETCTL" or word.endswith("/cnetctl") or word == "cnetctl":
                calls.append(words[i + 1:])
                break
    return calls


def test_the_workflow_runs_real_cnetctl_commands_and_flags() -> None:
    doc = workflow()
    assert doc["name"] and set(doc[True]) >= {"push", "pull_request"}   # YAML 1.1 reads `on:` as true
    env = doc["jobs"]["lab"]["env"]
    assert env["CNETCTL"] == ".venv/bin/cnetctl"
    root = typer.main.get_command(app)
    global_opts = {o for p in root.params for o in p.opts + p.secondary_opts}   # type: ignore[attr-defined]
    seen = []
    for step in steps():
        for argv in cnetctl_calls(step.get("run", ""), env):
            opts = [a.split("=")[0] for a in argv if a.startswith("-")]
            args = [a for a in argv if not a.startswith("-") and a not in (">",)]
            if opts == ["--version"]:
                assert "--version" in global_opts
                continue
            command = root.commands.get(args[0])   # type: ignore[attr-defined]
            assert command is not None, f"{step['name']}: cnetctl has no command {args[0]!r}"
            known = {o for p in command.params for o in p.opts + p.secondary_opts} | global_opts
            assert set(opts) <= known, f"{step['name']}: cnetctl {args[0]} has no {set(opts) - known}"
            seen.append((args[0], tuple(opts)))
    assert seen == [("validate", ()), ("apply", ("--no-verify",)), ("verify", ("-o",)), ("status", ()),
                    ("destroy", ())]


def test_the_workflow_keeps_the_report_and_always_destroys() -> None:
    by_name = {s.get("name"): s for s in steps()}
    verify = by_name["Verify"]["run"]
    assert '-o json > "$REPORT"' in verify
    upload = by_name["Upload the report"]
    assert upload["if"] == "always()" and upload["uses"].startswith("actions/upload-artifact@")
    assert upload["with"]["path"] == "${{ env.REPORT }}"
    destroy = steps()[-1]
    assert destroy["name"] == "Destroy" and destroy["if"] == "always()" and "destroy" in destroy["run"]


def test_the_workflow_installs_what_the_makefile_installs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    wanted = set(re.search(r"^APT_PACKAGES := (.*)$", makefile, re.M).group(1).split())   # type: ignore[union-attr]
    script = next(s["run"] for s in steps() if "apt-get install" in s.get("run", ""))
    assert wanted <= set(script.split())
