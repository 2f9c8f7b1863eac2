"""deploy/ansible without running it (tests/kernel/test_ansible.py runs it): it parses, it uses
ansible-core's own modules only, and `make test` installs what that test needs without ever
letting the system's sshd start."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.unit.test_packaging import make_n

ANSIBLE = ROOT / "deploy" / "ansible"
PLAYBOOKS = ("deploy.yml", "destroy.yml")
KEYWORDS = {"name", "register", "when", "vars", "loop", "changed_when", "failed_when", "environment", "delegate_to",
            "become", "run_once", "tags", "args"}


def test_playbooks_pass_ansibles_syntax_check(tmp_path: Path) -> None:
    if shutil.which("ansible-playbook") is None:
        pytest.skip("ansible-playbook is not installed (apt: ansible-core)")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
           "ANSIBLE_HOME": str(tmp_path / "ansible"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")}
    out = subprocess.run(["ansible-playbook", "--syntax-check", "-i", "localhost,",
                          *(str(ANSIBLE / p) for p in PLAYBOOKS)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr


def _tasks() -> list[tuple[str, dict[str, object]]]:
    found = []
    for path in sorted(ANSIBLE.rglob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        if path.parent.name == "tasks":
            found += [(path.name, task) for task in doc]
        elif path.name in PLAYBOOKS:
            found += [(path.name, task) for play in doc for task in play.get("tasks", [])]
    return found


def test_only_ansible_builtin_modules_so_no_collection_is_needed() -> None:
    tasks = _tasks()
    assert len(tasks) > 15
    for where, task in tasks:
        modules = [key for key in task if key not in KEYWORDS]
        assert len(modules) == 1 and modules[0].startswith("ansible.builtin."), (where, task)


def test_make_test_installs_sshd_and_ansible_but_never_starts_the_system_sshd(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    demo, test = make_n(venv, "demo"), make_n(venv, "test")
    assert "openssh-server" not in demo and "ansible-core" not in demo
    assert "openssh-server ansible-core" in test
    # Both guards are in place before apt-get runs: no service start during the install, and
    # Debian's own switch that keeps the init script and ssh.service from ever starting sshd.
    before = test[:test.index("--no-install-recommends")]
    assert "touch /etc/ssh/sshd_not_to_be_run" in before
    assert "exit 101" in before and "/usr/sbin/policy-rc.d" in before
