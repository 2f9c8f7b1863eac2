"""CLI wording (issue #8): validate -o json for an invalid file, and what --help shows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.kernel.conftest import MANIFESTS, ROOT


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("CNETCTL_STATE_DIR", None)  # --help shows the built-in default
    return subprocess.run([sys.executable, "-m", "cnetctl", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=60)


def test_validate_json_of_an_invalid_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((MANIFESTS / "quickstart.yaml").read_text().replace("via: 10.88.0.1}", "via: 10.99.0.1}", 1))
    res = cli("validate", str(bad), "-o", "json")
    assert res.returncode == 2
    out = json.loads(res.stdout)
    assert out["valid"] is False and out["topology"] == "quickstart"
    (err,) = out["errors"]
    assert set(err) == {"file", "line", "path", "message"}
    assert err["file"] == str(bad) and isinstance(err["line"], int) and err["line"] > 1
    assert err["path"] == "nodes.web.routes[0].via" and "connected subnet" in err["message"]
    assert f"{bad}:{err['line']}: nodes.web.routes[0].via:" in res.stderr

    text = cli("validate", str(bad))
    assert text.returncode == 2 and text.stdout == "" and f"{bad}:{err['line']}:" in text.stderr


def test_validate_json_when_the_name_is_unknown(tmp_path):
    res = cli("validate", str(tmp_path / "missing.yaml"), "-o", "json")
    assert res.returncode == 2
    out = json.loads(res.stdout)
    assert out == {"valid": False, "topology": None, "errors": [
        {"file": str(tmp_path / "missing.yaml"), "line": None, "path": "", "message": "no such file"}]}
    bad_name = tmp_path / "n.yaml"
    bad_name.write_text("apiVersion: cnetctl/v1\nname: Bad/Name\nnodes: {}\n")
    out = json.loads(cli("validate", str(bad_name), "-o", "json").stdout)
    assert out["topology"] is None and [e["path"] for e in out["errors"]] == ["name"]


def test_valid_file_json_unchanged():
    out = json.loads(cli("validate", str(MANIFESTS / "quickstart.yaml"), "-o", "json").stdout)
    assert out["valid"] is True and out["topology"] == "quickstart"


def help_line(text: str, option: str) -> str:
    (line,) = [line for line in text.splitlines() if re.search(rf"{re.escape(option)}\b", line)]
    return line


def test_help_shows_the_state_dir_default_and_no_value_for_flags():
    top = cli("--help")
    assert top.returncode == 0
    assert "[default: /var/lib/cnetctl]" in top.stdout, top.stdout
    assert "CNETCTL_STATE_DIR" in top.stdout
    for option in ("--version", "--help"):
        line = help_line(top.stdout, option)
        assert "bool" not in line and "default" not in line, line
    apply = cli("apply", "--help").stdout
    line = help_line(apply, "--no-verify")
    assert "bool" not in line and "False" not in line and "default" not in line, line
    assert "[default: 30.0]" in apply  # options with a value keep theirs


def test_a_missing_argument_says_which_with_the_usage_like_every_usage_error():
    for args, missing in ((["apply"], "file"), (["explain", "quickstart", "--to", "10.88.0.3"], "node")):
        res = cli(*args)
        assert res.returncode == 2 and res.stdout == ""
        assert f"Usage: cnetctl {args[0]} [OPTIONS]" in res.stderr, res.stderr
        assert f"Missing argument '{missing}'" in res.stderr and "Missing parameter" not in res.stderr
    res = cli("apply", "--bogus")  # the same shape as an unknown option
    assert res.returncode == 2 and "Usage: cnetctl apply [OPTIONS]" in res.stderr and "No such option" in res.stderr
