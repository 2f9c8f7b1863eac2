"""The kernel tests' fork server (tests/forkserver.py) must be indistinguishable from a real
`python -m cnetctl`: same exit code, stdout and stderr, the call's environment, working
directory and stdin, a process of its own that a signal really kills."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.forkserver import ForkServer, _spawn, cnetctl_call

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((ROOT / "tests" / "corpus" / "bad").glob("*.yaml"))[0].relative_to(ROOT).as_posix()


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1", "TERM": "dumb", **extra}


@pytest.mark.parametrize("args,extra", [
    (["--version"], {}),
    (["validate", "manifests/quickstart.yaml"], {}),
    (["validate", BAD], {}),
    (["frobnicate"], {}),
    (["validate", "--help"], {"COLUMNS": "60"}),   # rich builds its console for the call's terminal
    (["validate", "--help"], {"COLUMNS": "150"}),
    (["graph", "manifests/quickstart.yaml", "-f", "mermaid"], {}),
], ids=["version", "valid", "invalid", "usage", "help-60", "help-150", "graph"])
def test_a_call_is_the_same_as_a_spawned_cnetctl(args, extra):
    forked = cnetctl_call(args, env(**extra), ROOT)
    spawned = _spawn(args, env(**extra), ROOT, 60, None)
    assert (forked.returncode, forked.stdout, forked.stderr) == \
        (spawned.returncode, spawned.stdout, spawned.stderr)
    assert forked.args == [sys.executable, "-m", "cnetctl", *args]


def test_working_directory_and_stdin_are_the_calls():
    res = cnetctl_call(["validate", "quickstart.yaml"], env(), ROOT / "manifests")
    assert res.returncode == 0 and res.stdout.startswith("quickstart.yaml: topology quickstart is valid"), res
    text = (ROOT / "manifests" / "quickstart.yaml").read_text()
    res = cnetctl_call(["validate", "/dev/stdin"], env(), ROOT, input=text)
    assert res.returncode == 0 and "topology quickstart is valid" in res.stdout, res


def test_settings_read_at_interpreter_start_get_a_real_interpreter(tmp_path):
    # A PYTHONPATH that shadows a module only works in a new interpreter: the call spawns one.
    (tmp_path / "ruamel").mkdir()
    (tmp_path / "ruamel" / "__init__.py").write_text("raise ImportError('shadowed')\n")
    res = cnetctl_call(["validate", "manifests/quickstart.yaml"], env(PYTHONPATH=str(tmp_path)), ROOT)
    assert res.returncode != 0 and "shadowed" in res.stderr, res


@pytest.fixture
def server():
    own = ForkServer()
    yield own
    own.close()


def test_a_call_that_does_not_end_is_killed_at_its_timeout(tmp_path, server):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it blocks until a writer comes: none will
    pids: list[int] = []
    with pytest.raises(subprocess.TimeoutExpired):
        server.run(["validate", str(fifo)], env(), ROOT, timeout=1, started=pids.append)
    assert pids and not Path(f"/proc/{pids[0]}").exists()  # killed and reaped


def test_a_signal_kills_the_call_and_concurrent_calls_do_not_wait_for_each_other(tmp_path, server):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    pids: queue.Queue[int] = queue.Queue()
    results: list[subprocess.CompletedProcess[str]] = []
    blocked = threading.Thread(target=lambda: results.append(
        server.run(["validate", str(fifo)], env(), ROOT, timeout=60, started=pids.put)))
    blocked.start()
    pid = pids.get(timeout=30)
    # Meanwhile another call runs to its end.
    assert server.run(["--version"], env(), ROOT, timeout=60).returncode == 0
    assert Path(f"/proc/{pid}").exists() and not results
    os.kill(pid, signal.SIGKILL)
    blocked.join(timeout=30)
    assert results and results[0].returncode == -signal.SIGKILL
