"""`python -m cnetctl ARGS` for the kernel tests, without paying interpreter start-up each time.

Most of the suite's CPU went into starting Python and importing cnetctl's dependencies
(~0.3 s of CPU per call, over a thousand calls per run on a 2-core machine). One server per
pytest worker imports them once; each call is then a fresh process forked from it, which
runs cnetctl's real entry point (`cnetctl.__main__.main`, what `python -m cnetctl` runs) with
the caller's argv, environment, working directory, and stdin/stdout/stderr — and exits
through the interpreter's normal shutdown. What it shares with a spawned `python -m
cnetctl`: a process of its own (SIGKILL and exit codes are real), no state left from
another call (the server only imports; it never runs cnetctl code). What it skips: the
imports. Modules that read the environment or the terminal when imported (cnetctl.render
builds its rich consoles then) are not pre-imported, so they see the call's own.

CNETCTL_TEST_SPAWN=1 runs every call as a real `python -m cnetctl` instead.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What an apply/verify/destroy/explain loads (read off sys.modules after real runs), minus
# cnetctl.render (its consoles read NO_COLOR, TERM, COLUMNS... when built).
PRELOAD = (
    "cnetctl.__main__", "cnetctl.cli", "cnetctl.api", "cnetctl.verify", "cnetctl.observe",
    "cnetctl.plan", "cnetctl.runner", "cnetctl.state", "cnetctl.statecheck", "cnetctl.normalize",
    "cnetctl.load", "cnetctl.hosts", "cnetctl.checks", "cnetctl.nat_rules", "cnetctl.explain",
    "cnetctl.kernel.links", "cnetctl.kernel.netns", "cnetctl.kernel.routes", "cnetctl.kernel.rtnl",
    "cnetctl.kernel.sysctl", "cnetctl.kernel.addresses", "cnetctl.kernel.probe",
    "cnetctl.kernel.transport", "cnetctl.kernel.nat", "cnetctl.kernel.nat.iptables",
    "cnetctl.kernel.nat.nftables", "cnetctl.faults", "rich.console", "rich.table", "rich._emoji_codes",
    "typer._adapters", "typer._click.decorators", "pydantic.type_adapter", "pyroute2", "iptc", "nftables",
)


def _preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # e.g. no libnftables here: the call imports (and fails) as it would anyway
    # A fork copies only the forking thread: a thread started by an import would be missing in
    # every child, and a lock it held would stay held there.
    assert threading.active_count() == 1, threading.enumerate()
    # Children then never scan (and so never copy) the pages of everything imported here.
    gc.freeze()


def _child(request: dict, fds: list[int]) -> None:
    """In the forked process: become `python -m cnetctl ARGS`, then exit as Python would."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [str(ROOT / "cnetctl" / "__main__.py"), *request["args"]]
    from cnetctl.__main__ import main

    code = 0
    try:
        main()
    except SystemExit as ex:
        if ex.code is None or isinstance(ex.code, int):
            code = ex.code or 0
        else:
            print(ex.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    _finish()
    os._exit(code)


def _finish() -> None:
    """What the interpreter does at exit before it tears the modules down: wait for the
    threads, run atexit callbacks, flush stdio. The teardown itself (which writes to every
    page inherited from the server, ~50 ms) ends with the process anyway."""
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass


def _handle(conn: socket.socket, server: socket.socket) -> None:
    """In a per-call process: fork the cnetctl child, send its pid, then its wait status."""
    server.close()
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    pid = os.fork()
    if pid == 0:
        conn.close()
        try:
            _child(json.loads(message), fds)   # ends the process itself
        except BaseException:
            traceback.print_exc()   # failed before cnetctl ran (a cwd that is gone, say)
        os._exit(70)
    for fd in fds:
        os.close(fd)
    conn.send(str(pid).encode())
    _, status = os.waitpid(pid, 0)
    conn.send(str(status).encode())
    os._exit(0)


def serve(path: str) -> None:
    """Answer calls on the unix socket PATH until stdin (a pipe from the test process) closes."""
    _preload()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    server.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        readable, _, _ = select.select([server, sys.stdin], [], [])
        if sys.stdin in readable:
            return
        conn, _ = server.accept()
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            try:
                _handle(conn, server)
            finally:   # a caller that went away (BrokenPipeError): never back into this loop
                os._exit(0)
        conn.close()
        while True:  # reap the per-call processes that have ended
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


class ForkServer:
    """The test side: one server per test process, started on first use."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="cnetctl-forkserver.")
        self._path = os.path.join(self._dir, "socket")
        self.settings = _interpreter_settings(dict(os.environ))
        self._proc = subprocess.Popen([sys.executable, "-m", "tests.forkserver", self._path], cwd=ROOT,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        if self._proc.stdout.readline() != "ready\n":
            raise RuntimeError(f"the cnetctl fork server did not start (exit {self._proc.wait()})")

    def run(self, args: list[str], env: dict[str, str], cwd: str | Path, timeout: float,
            input: str | None = None, started: Callable[[int], None] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """The call's result; `started` is told the pid of its process when it has one."""
        argv = [sys.executable, "-m", "cnetctl", *args]
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as out, \
                tempfile.TemporaryFile() as err, \
                socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            stdin.write((input or "").encode())
            stdin.seek(0)
            conn.connect(self._path)
            request = {"args": list(args), "env": env, "cwd": str(cwd)}
            socket.send_fds(conn, [json.dumps(request).encode()], [stdin.fileno(), out.fileno(), err.fileno()])
            pid = int(conn.recv(64))
            if started is not None:
                started(pid)
            conn.settimeout(timeout)
            try:
                status = int(conn.recv(64))
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                conn.settimeout(None)
                conn.recv(64)
                raise subprocess.TimeoutExpired(argv, timeout, *_read(out, err)) from None
            return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), *_read(out, err))

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=10)
        os.unlink(self._path)
        os.rmdir(self._dir)


def _read(*files: object) -> list[str]:
    texts = []
    for f in files:
        f.seek(0)  # type: ignore[attr-defined]
        texts.append(f.read().decode(errors="replace"))  # type: ignore[attr-defined]
    return texts


_server: ForkServer | None = None
_server_lock = threading.Lock()


def cnetctl_call(args: list[str], env: dict[str, str], cwd: str | Path, timeout: float = 120,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m cnetctl ARGS` with this environment and working directory, stdout and stderr
    captured as text — through the fork server unless CNETCTL_TEST_SPAWN=1."""
    global _server
    if os.environ.get("CNETCTL_TEST_SPAWN") == "1":
        return _spawn(args, env, cwd, timeout, input)
    with _server_lock:
        if _server is None:
            _server = ForkServer()
    if _interpreter_settings(env) != _server.settings:
        # The server's interpreter started with other settings (a PYTHONPATH that shadows a
        # module, an LD_PRELOAD): only a new interpreter honours the call's.
        return _spawn(args, env, cwd, timeout, input)
    return _server.run(args, env, cwd, timeout, input)


def _spawn(args: list[str], env: dict[str, str], cwd: str | Path, timeout: float,
           input: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnetctl", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd, input=input)


def _interpreter_settings(env: dict[str, str]) -> dict[str, str]:
    """The variables read once, when an interpreter starts (and the dynamic linker with it)."""
    return {k: v for k, v in env.items()
            if (k.startswith(("PYTHON", "LD_")) and k != "PYTHONDONTWRITEBYTECODE")}


def stop() -> None:
    global _server
    if _server is not None:
        _server.close()
        _server = None


if __name__ == "__main__":
    serve(sys.argv[1])
