"""The pytest plugin's packaging: installed, pytest loads it through its entry point, and a project
(like this one) that also names it in `pytest_plugins` or `-p` gets it once, not an error."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import ROOT

PYPROJECT = (ROOT / "pyproject.toml").read_text()


def test_the_entry_point_is_named_as_its_module():
    section = re.search(r"^\[project\.entry-points\.pytest11\]\n(.*?)(?:\n\[|\Z)", PYPROJECT, re.M | re.S)
    assert section, "pyproject.toml declares no pytest11 entry point"
    assert '"cnetctl.testing" = "cnetctl.testing"' in section.group(1)


def test_installed_and_named_again_it_loads_once(tmp_path):
    # What `pip install cnetctl` leaves for importlib.metadata to find: the entry point.
    dist = tmp_path / "site" / "cnetctl_plugin_probe-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cnetctl-plugin-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\ncnetctl.testing = cnetctl.testing\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text('pytest_plugins = ["cnetctl.testing"]\n')
    (project / "test_x.py").write_text(
        "import pytest\n"
        "def test_loaded(request):\n"
        "    names = [n for n, p in request.config.pluginmanager.list_name_plugin() if n == 'cnetctl.testing']\n"
        "    assert names == ['cnetctl.testing']\n"
        "    assert request.config.pluginmanager.hasplugin('cnetctl.testing')\n"
        "@pytest.mark.cnetctl_manifest('lab.yaml')\n"
        "def test_marker_known():\n"
        "    pass\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "--strict-markers", "-p", "cnetctl.testing",
                          "-p", "no:cacheprovider"], cwd=project, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "2 passed" in res.stdout, res.stdout + res.stderr
    bare = tmp_path / "bare"      # no conftest, no -p: the entry point alone brings the fixtures
    bare.mkdir()
    fixtures = subprocess.run([sys.executable, "-m", "pytest", "-q", "--fixtures", "-p", "no:cacheprovider"],
                              cwd=bare, env=env, capture_output=True, text=True, timeout=120)
    assert all(f in fixtures.stdout for f in ("cnetctl_world", "cnetctl_lab")), fixtures.stdout


def test_loading_the_plugin_imports_no_kernel_module():
    """It loads in every pytest session of a venv with cnetctl: the world's code comes when a test asks."""
    probe = ("import sys, cnetctl.testing; assert not any(m.startswith('cnetctl.kernel') for m in sys.modules); "
             "from cnetctl.testing import Lab, World\n"
             "assert Lab.__module__ == World.__module__ == 'cnetctl.kernel.world'")
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
