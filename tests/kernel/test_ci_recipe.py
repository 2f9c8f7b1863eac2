"""The CI recipe (.github/workflows/cnetctl-lab.yml) run for real, step by step as GitHub runs them:
its cnetctl steps on this kernel (inside the test world), with `if:` honoured. The install steps and
the actions (checkout, upload) are left out: the cnetctl under test is this checkout's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "cnetctl-lab.yml"


def run_workflow(tmp_path: Path, manifest: Path) -> list[tuple[str, int | None]]:
    """(step name, exit code) for each step, None for a step GitHub would skip."""
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["lab"]
    shim = tmp_path / "bin"
    shim.mkdir()
    # sudo would reset the environment (and with it the test world's state dir): we are root already.
    (shim / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (shim / "sudo").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "MANIFEST": str(manifest),
           "CNETCTL": f"{sys.executable} -m cnetctl", "REPORT": job["env"]["REPORT"], "PYTHONPATH": str(ROOT)}
    failed, out = False, []
    for step in job["steps"]:
        if "run" not in step or step["name"].startswith("Install"):
            continue
        condition = step.get("if")
        if (condition is None and failed) or (condition == "failure()" and not failed):
            out.append((step["name"], None))
            continue
        res = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
        out.append((step["name"], res.returncode))
        failed = failed or res.returncode != 0
    return out


def test_the_recipe_applies_verifies_reports_and_destroys(tmp_path, clean_world):
    steps = run_workflow(tmp_path, ROOT / "manifests" / "two-netns-veth.yaml")
    assert steps == [("Validate", 0), ("Apply", 0), ("Verify", 0), ("Show the failed checks", None), ("Destroy", 0)]
    report = json.loads((tmp_path / "cnetctl-report.json").read_text())
    assert report["topology"] == "two-netns-veth" and report["failed"] == 0 and report["passed"] > 5


def test_a_failed_check_fails_the_job_keeps_the_report_and_still_destroys(tmp_path, clean_world):
    manifest = tmp_path / "broken.yaml"
    text = (ROOT / "manifests" / "two-netns-veth.yaml").read_text()
    manifest.write_text(text.replace("{ping: {from: left, to: 10.10.0.3, expect: unreachable}}",
                                     "{ping: {from: left, to: 10.10.0.3}}"))
    steps = run_workflow(tmp_path, manifest)
    assert steps == [("Validate", 0), ("Apply", 0), ("Verify", 1), ("Show the failed checks", 0), ("Destroy", 0)]
    report = json.loads((tmp_path / "cnetctl-report.json").read_text())
    assert report["failed"] == 1 and [c["to"] for c in report["checks"] if not c["ok"]] == ["10.10.0.3"]
