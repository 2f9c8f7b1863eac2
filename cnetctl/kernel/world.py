"""A throw-away world: new network, mount and PID namespaces with a private /run/netns, sysfs,
xtables lock and state dir (tmpfs), held open by one process.

Both users of a throw-away world go through World: `cnetctl try` runs its apply, verify and destroy
in it (`call`: a forked child that entered the world with setns), and the pytest plugin
cnetctl.testing runs any number of commands in it, one after the other or at once (`run`, `popen`:
through nsenter). Closing it (or the death of the process that started it, however it dies) ends
the world's PID 1, and the kernel then kills every process in it; with the last of them go every
namespace, interface, route, rule, NAT table, sysctl and state file made there. Nothing done inside
reaches the machine's own network.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute

from .netns import _check, _libc

Completed = subprocess.CompletedProcess
T = TypeVar("T")
IFA_F_NODAD, RT_SCOPE_LINK = 0x02, 253

# PID 1 of the world. Its stdin is a pipe from the process that started it: when that closes
# (close(), or that process dies however it dies) PID 1 exits and takes the world with it.
# The state dir is a tmpfs of the world's: a state file never reaches the machine's disk.
_HOLDER = r"""
set -e
mount --make-rprivate /
mkdir -p /run/netns
mount -t tmpfs -o mode=755 tmpfs /run/netns
mount -t tmpfs -o mode=700 tmpfs "$2"
mount -t sysfs sysfs /sys 2>/dev/null || true
if [ -e /run/xtables.lock ]; then mount --bind "$1" /run/xtables.lock; fi
echo ready
read -r _ || true
"""
# Making a world takes unshare and mount (util-linux, on every Debian and Ubuntu); `call` enters it
# with setns. The plugin's commands go in with nsenter, and into a node with `ip netns exec`.
MAKE_TOOLS = ("unshare", "mount")
TOOLS = (*MAKE_TOOLS, "nsenter", "ip")
_PACKAGE = {"unshare": "util-linux", "mount": "mount", "nsenter": "util-linux", "ip": "iproute2"}
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000


class WorldError(Exception):
    """The world cannot be made here (not root, a tool missing, namespaces refused)."""


def _child_of(pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(kids[0]) if kids else None
    except OSError:   # a kernel without CONFIG_PROC_CHILDREN
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    return int(stat.parent.name)
            except (OSError, ValueError, IndexError):
                continue
    return None


def why_not(tools: tuple[str, ...] = TOOLS) -> str | None:
    """Why a world (with `tools` at hand) cannot be made in this process, or None."""
    try:
        with open("/proc/self/status") as fh:
            caps = int(next(line.split()[1] for line in fh if line.startswith("CapEff:")), 16)
    except (OSError, StopIteration, ValueError):
        caps = 0 if os.geteuid() else ~0
    if not caps >> CAP_SYS_ADMIN & 1 or not caps >> CAP_NET_ADMIN & 1:
        return "a throw-away world needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN, for unshare); run the tests " \
               "with sudo"
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        packages = dict.fromkeys(_PACKAGE.get(tool, tool) for tool in missing)
        return f"a throw-away world needs {', '.join(missing)} ({', '.join(packages)})"
    return None


def _setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


@contextlib.contextmanager
def _ns_fds(pid: int | str, *kinds: str) -> Iterator[dict[str, int]]:
    fds: dict[str, int] = {}
    try:
        for kind in kinds:
            fds[kind] = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


def _in_netns_of(pid: int, body: Callable[[IPRoute], None]) -> None:
    """body(IPRoute) in the network namespace of process `pid`, from a short-lived thread (setns is
    per thread: this process stays where it is); netlink, not ip(8)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            with _ns_fds(pid, "net") as ns:
                _setns(ns["net"], CLONE_NEWNET)
            with IPRoute() as ipr:
                body(ipr)
        except BaseException as err:   # re-raised in the caller's thread
            failed.append(err)

    thread = threading.Thread(target=run, name="world-netns")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def _lo_up(pid: int) -> None:
    _in_netns_of(pid, lambda ipr: ipr.link("set", index=1, state="up"))


class World:
    """One throw-away world. `run`, `popen`, `cnetctl` and `call` work inside it; `close` ends it.
    `tools`: the commands its user needs (the plugin's by default; `cnetctl try` needs only MAKE_TOOLS)."""

    def __init__(self, tools: tuple[str, ...] = TOOLS) -> None:
        problem = why_not(tools)
        if problem:
            raise WorldError(problem)
        self.tmp = tempfile.mkdtemp(prefix="cnetctl-world-")
        self.state_dir = os.path.join(self.tmp, "state")
        os.mkdir(self.state_dir, 0o700)
        lock = os.path.join(self.tmp, "xtables.lock")
        Path(lock).touch()
        self._children: list[subprocess.Popen[str]] = []
        # A session of its own: Ctrl-C at the terminal reaches the commands run inside, never PID 1.
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
             "sh", "-c", _HOLDER, "world", lock, self.state_dir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "ready":
            err = self.holder.communicate(timeout=10)[1] if self.holder.poll() is not None else ""
            self.close()
            raise WorldError(f"the throw-away world did not start: {err.strip() or 'no reason given'}")
        pid = _child_of(self.holder.pid)
        if pid is None:
            self.close()
            raise WorldError("the throw-away world started, but its first process cannot be found")
        self.pid = pid
        self.netns_id = os.stat(f"/proc/{pid}/ns/net").st_ino   # the world's identity, for tests
        ns = os.stat(f"/proc/{pid}/ns/pid")
        self._pidns = (ns.st_dev, ns.st_ino)
        self.topologies: list[str] = []     # applied through Lab.apply: destroy_all's list
        try:
            _lo_up(pid)
        except Exception as err:   # OSError from setns, NetlinkError from the link request
            self.close()
            raise WorldError(f"the throw-away world started, but its lo cannot be set up: {err}") from None

    # --- inside ---------------------------------------------------------------------------------
    def argv(self, argv: list[str], netns: str | None = None, cwd: str | None = None) -> list[str]:
        """argv as run inside the world (and in its network namespace `netns`, when given)."""
        inner = ["ip", "netns", "exec", netns, *argv] if netns else argv
        return ["nsenter", "-t", str(self.pid), "-n", "-m", "-p", f"--wd={cwd or os.getcwd()}", "--", *inner]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "CNETCTL_STATE_DIR": self.state_dir, **(extra or {})}

    def run(self, *argv: str, netns: str | None = None, env: Mapping[str, str] | None = None,
            input: str | None = None, timeout: float = 120, check: bool = False,
            cwd: str | None = None) -> Completed[str]:
        """Run a command inside the world and wait for it (output captured, as text)."""
        return subprocess.run(self.argv(list(argv), netns, cwd), env=self.env(env), input=input,
                              capture_output=True, text=True, timeout=timeout, check=check)

    def popen(self, *argv: str, netns: str | None = None, env: Mapping[str, str] | None = None,
              cwd: str | None = None, **kwargs: Any) -> subprocess.Popen[str]:
        """Start a command inside the world (a server, say); it dies with the world at the latest."""
        proc: subprocess.Popen[str] = subprocess.Popen(self.argv(list(argv), netns, cwd), env=self.env(env),
                                                       text=True, **kwargs)
        self._children.append(proc)
        return proc

    def cnetctl(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300,
                cwd: str | None = None) -> Completed[str]:
        """The cnetctl of this Python, inside the world, with the world's state dir."""
        return self.run(sys.executable, "-m", "cnetctl", *args, env=env, timeout=timeout, cwd=cwd)

    def call(self, body: Callable[[], int]) -> int:
        """body() in a forked child inside the world (its network, mount and PID namespaces, this
        working directory), for Python code that must run there (`cnetctl try`); its return value is
        the exit code. This process never changes namespace. While it waits, Ctrl-C reaches the child
        through the terminal's process group and is handled there; SIGTERM is passed on."""
        sys.stdout.flush()
        sys.stderr.flush()
        with _ns_fds(self.pid, "net", "mnt", "pid") as ns, _ns_fds("self", "pid") as own:
            _setns(ns["pid"], CLONE_NEWPID)   # only for the child forked next: born in the world's PID namespace
            try:
                pid = os.fork()
                if pid == 0:   # pragma: no cover - the child (measured through its exit code)
                    os._exit(self._child(body, ns))
            finally:
                _setns(own["pid"], CLONE_NEWPID)
            with _passing_signals_to(pid):
                _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)

    def returning(self, fn: Callable[[], T]) -> tuple[int, T | None]:
        """fn() in the world (as `call`), and what it returned, handed back pickled: (0, value),
        or (exit code, None) when it ended without returning (Ctrl-C, SIGTERM, an exception)."""
        with tempfile.TemporaryFile() as fh:
            def body() -> int:
                pickle.dump(fn(), fh)
                fh.flush()
                return 0

            code = self.call(body)
            fh.seek(0)
            return (0, pickle.load(fh)) if code == 0 else (code, None)

    def _child(self, body: Callable[[], int], ns: dict[str, int]) -> int:
        code = 3
        try:
            try:
                self._enter(ns)
            except OSError as err:
                sys.stderr.write(f"cnetctl: cannot enter the throw-away world: {err}\n")
                return 3
            code = body()
        except SystemExit as ex:
            code = ex.code if isinstance(ex.code, int) else 1
        except KeyboardInterrupt:
            sys.stderr.write("cnetctl: interrupted\n")
            code = 130
        except BaseException as err:  # the child exits with a code; it never unwinds into the caller
            sys.stderr.write(f"cnetctl: {type(err).__name__}: {err}\n")
            code = 3
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
        return code

    def _enter(self, ns: dict[str, int]) -> None:
        # The lifeline to PID 1 is the parent's alone: a copy here would keep the world (and this
        # child) alive after the parent was killed.
        assert self.holder.stdin is not None
        os.close(self.holder.stdin.fileno())
        cwd = os.getcwd()
        _setns(ns["net"], CLONE_NEWNET)
        _setns(ns["mnt"], CLONE_NEWNS)   # which also moves root and working directory to the world's /
        os.chdir(cwd)

    def write_manifest(self, manifest: Mapping[str, Any]) -> Path:
        """A manifest given as data, as a file cnetctl can read (JSON is YAML)."""
        fd, path = tempfile.mkstemp(prefix="manifest-", suffix=".yaml", dir=self.tmp)
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=1)
        return Path(path)

    # --- the end --------------------------------------------------------------------------------
    def processes(self) -> list[int]:
        """Every live process of the world but its PID 1, by its pid on the host."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.pid:
                continue
            try:
                ns = os.stat(entry / "ns" / "pid")
            except OSError:   # gone, or a zombie (which holds no namespace)
                continue
            if (ns.st_dev, ns.st_ino) == self._pidns:
                found.append(int(entry.name))
        return found

    def stop_processes(self, grace: float = 2.0) -> None:
        """SIGTERM to every process of the world, SIGKILL to what is left after `grace` seconds: a
        process still in a node would keep its namespace (and the topology's veths) alive."""
        deadline = time.monotonic() + grace
        sig = signal.SIGTERM
        while self.alive and (left := self.processes()):
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if time.monotonic() >= deadline:
                sig = signal.SIGKILL
            time.sleep(0.02)

    @property
    def alive(self) -> bool:
        return self.holder.poll() is None

    def close(self) -> None:
        """End the world and everything in it; idempotent."""
        if self.holder.poll() is None:
            assert self.holder.stdin is not None
            self.holder.stdin.close()
            try:
                self.holder.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.holder.kill()   # --kill-child: PID 1 gets SIGKILL too
                self.holder.wait()
        for stream in (self.holder.stdout, self.holder.stderr, self.holder.stdin):
            if stream is not None:
                stream.close()
        for proc in self._children:   # their processes died with the world: collect them
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _passing_signals_to(pid: int) -> Iterator[None]:
    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    saved = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
             signal.SIGTERM: signal.signal(signal.SIGTERM, forward)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


UNDERLAY = "underlay0"


@contextlib.contextmanager
def machines(addresses: Mapping[str, str], tools: tuple[str, ...] = MAKE_TOOLS) -> Iterator[dict[str, World]]:
    """A world per machine, joined as machines on one network: a bridge in a world of its own,
    and in each machine's world a veth UNDERLAY with that machine's address (/32 or /128) and a
    route to each other machine's address over it — any addresses work, as on a cloud
    underlay, without a subnet to share. Every world ends with the block."""
    with contextlib.ExitStack() as stack:
        fabric = stack.enter_context(World(MAKE_TOOLS))
        worlds = {name: stack.enter_context(World(tools)) for name in addresses}
        _in_netns_of(fabric.pid, lambda ipr: _fabric(ipr, [w.pid for w in worlds.values()]))
        for name, world in worlds.items():
            others = [a for other, a in addresses.items() if other != name]
            _in_netns_of(world.pid, functools.partial(_machine_side, me=addresses[name], others=others))
        yield worlds


@contextlib.contextmanager
def worlds_for(addresses: Mapping[str, str], tools: tuple[str, ...] = MAKE_TOOLS) -> Iterator[dict[str | None, World]]:
    """The worlds a topology runs in: one, as {None: world}, without machines; else machines()."""
    if not addresses:
        with World(tools) as world:
            yield {None: world}
        return
    with machines(addresses, tools) as worlds:
        named: dict[str | None, World] = {name: world for name, world in worlds.items()}
        yield named


def _fabric(ipr: IPRoute, pids: list[int]) -> None:
    """The bridge, and a veth to each machine: its UNDERLAY end moved into that machine's world."""
    ipr.link("add", ifname="underlay", kind="bridge")
    (bridge,) = ipr.link_lookup(ifname="underlay")
    ipr.link("set", index=bridge, state="up")
    for i, pid in enumerate(pids):
        ipr.link("add", ifname=f"m{i}", kind="veth", peer=UNDERLAY)
        (port,) = ipr.link_lookup(ifname=f"m{i}")
        (inside,) = ipr.link_lookup(ifname=UNDERLAY)
        ipr.link("set", index=inside, net_ns_pid=pid)
        ipr.link("set", index=port, master=bridge, state="up")


def _machine_side(ipr: IPRoute, me: str, others: list[str]) -> None:
    (index,) = ipr.link_lookup(ifname=UNDERLAY)
    ipr.link("set", index=index, state="up")
    bits = ipaddress.ip_address(me).max_prefixlen
    # No duplicate address detection: the address is usable at once, as a configured one is.
    ipr.addr("add", index=index, address=me, prefixlen=bits, flags=IFA_F_NODAD if bits == 128 else 0)
    for other in others:
        ipr.route("add", dst=other, dst_len=ipaddress.ip_address(other).max_prefixlen, oif=index,
                  scope=RT_SCOPE_LINK)


class LabError(Exception):
    """A topology could not be applied (or its checks failed) in the world."""


Worlds = Mapping[str | None, World]   # machine -> its world; one machine: {None: world}
LabManifest = str | Path | Mapping[str, Any]


def manifest_hosts(manifest: LabManifest) -> dict[str, str]:
    """The machines of a manifest (`hosts:` name -> address): a world each. {} for a topology on
    one machine, and for a manifest that does not load (applying it says why, in cnetctl's words)."""
    from ..errors import CnetctlError
    from ..hosts import host_addresses
    from ..load import load_topology, load_topology_text

    try:
        topo = (load_topology_text(json.dumps(manifest), "<manifest>")[0] if isinstance(manifest, Mapping)
                else load_topology(str(manifest))[0])
    except CnetctlError:
        return {}
    return host_addresses(topo)


class Lab:
    """A topology applied in a world, or in one world per machine (a manifest with `hosts:`):
    its nodes, and commands run in them, each in the world of the machine it lives on."""

    def __init__(self, worlds: World | Worlds, name: str, manifest: Path, report: dict[str, Any] | None):
        self.worlds: dict[str | None, World] = {None: worlds} if isinstance(worlds, World) else dict(worlds)
        self.name = name
        self.manifest = manifest
        self.report = report          # apply's verify report (`verify -o json`), None with verify=False
        from ..hosts import HOST, homes
        from ..load import load_topology
        from ..normalize import netns_name

        topo = load_topology(str(manifest))[0]
        self.nodes: dict[str, str | None] = {node: netns_name(name, node, spec, node if node in topo.hosts else HOST)
                                             for node, spec in topo.nodes.items()}
        if topo.hosts:
            home = homes(topo)
            self.machines: dict[str, str | None] = {node: home.get(node) for node in self.nodes}
        else:
            self.nodes.setdefault(HOST, None)
            self.machines = dict.fromkeys(self.nodes)

    @property
    def world(self) -> World:
        """The world of a topology on one machine (with several: `worlds[machine]`, `world_of(node)`)."""
        if len(self.worlds) != 1:
            raise LabError(f"topology {self.name} spans machines ({', '.join(map(str, self.worlds))}): "
                           "use lab.worlds[machine] or lab.world_of(node)")
        return next(iter(self.worlds.values()))

    @classmethod
    def apply(cls, worlds: World | Worlds, manifest: LabManifest, *, verify: bool = True,
              extra: tuple[str, ...] = ()) -> Lab:
        """`cnetctl apply` the manifest: in the world, or each machine's slice in its world
        (`--host`), then, with verify, every machine's checks (they may need the others'
        slices). LabError, with cnetctl's words, unless it applied and every check passed."""
        worlds = {None: worlds} if isinstance(worlds, World) else dict(worlds)
        first = next(iter(worlds.values()))
        path = first.write_manifest(manifest) if isinstance(manifest, Mapping) else Path(manifest).absolute()
        together = list(worlds) == [None]
        hosts = list(manifest_hosts(path))
        if hosts and not together and sorted(hosts) != sorted(map(str, worlds)):
            raise LabError(f"{path}: its machines ({', '.join(sorted(hosts))}) are not the worlds' "
                           f"({', '.join(sorted(map(str, worlds)))})")
        for machine, world in worlds.items():
            where = () if machine is None else ("--host", machine)
            res = world.cnetctl("apply", str(path), "-o", "json", *where,
                                *(() if verify and together else ("--no-verify",)), *extra)
            if res.returncode not in (0, 1):
                hint = ("\n(a topology with hosts: gets a world per machine from the cnetctl_lab fixture, "
                        "lab_fixture or machines_for)" if together and hosts else "")
                raise LabError(f"{path}: cnetctl apply{_on(machine)} exited {res.returncode}:\n"
                               f"{res.stderr.strip()}{hint}")
            out = json.loads(res.stdout)
            if out["topology"] not in world.topologies:
                world.topologies.append(out["topology"])
        lab = cls(worlds, out["topology"], path, None)
        if verify:
            lab.report = lab._verified(out.get("verify") if together else None)
        return lab

    def _verified(self, report: dict[str, Any] | None) -> dict[str, Any]:
        """The report (verify's now, when None); LabError naming every failed check."""
        report = report if report is not None else self.verify()
        failed = [f"{c['kind']}: {c['detail']}{_on(c.get('host'))}" for c in report["checks"] if c["ok"] is False]
        if failed:
            raise LabError(f"{self.manifest}: applied, but {len(failed)} check(s) failed:\n  " + "\n  ".join(failed))
        return report

    def _json(self, machine: str | None, *args: str) -> Any:
        res = self.worlds[machine].cnetctl(*args)
        if res.returncode not in (0, 1):
            raise LabError(f"cnetctl {' '.join(args)}{_on(machine)} exited {res.returncode}: {res.stderr.strip()}")
        return json.loads(res.stdout)

    def netns(self, node: str) -> str | None:
        """The network namespace of `node` (None: the root namespace of its machine's world)."""
        if node not in self.nodes:
            raise LabError(f"topology {self.name} has no node {node!r} (nodes: {', '.join(self.nodes)})")
        return self.nodes[node]

    def world_of(self, node: str) -> World:
        """The world of the machine `node` lives on."""
        self.netns(node)
        machine = self.machines[node]
        if machine not in self.worlds:
            raise LabError(f"node {node!r} of topology {self.name} lives on no machine of this lab")
        return self.worlds[machine]

    def exec(self, node: str, *argv: str, **kwargs: Any) -> Completed[str]:
        """Run a command in a node and wait for it (World.run's keywords: check, input, timeout, env)."""
        return self.world_of(node).run(*argv, netns=self.netns(node), **kwargs)

    def popen(self, node: str, *argv: str, **kwargs: Any) -> subprocess.Popen[str]:
        """Start a command in a node (a server); it is killed with the world at the latest."""
        return self.world_of(node).popen(*argv, netns=self.netns(node), **kwargs)

    def ping(self, node: str, to: str, count: int = 1, timeout: float = 1.0) -> bool:
        """A real ping(8) from `node`: True when a reply came back."""
        res = self.exec(node, "ping", "-c", str(count), "-W", f"{timeout:g}", "-n", "-q", to,
                        timeout=timeout * count + 10)
        return res.returncode == 0

    def ip(self, node: str, *args: str) -> Any:
        """`ip -j ARGS` in `node`, parsed."""
        out = self.exec(node, "ip", "-j", *args, check=True).stdout
        return json.loads(out) if out.strip() else []

    def verify(self) -> dict[str, Any]:
        """`cnetctl verify -o json` now: {"topology", "passed", "failed", "checks": […]}. On several
        machines, each verifies its slice: "checks" holds the checks each ran (with its "host"),
        "hosts" each machine's own report."""
        if list(self.worlds) == [None]:
            report: dict[str, Any] = self._json(None, "verify", str(self.manifest), "-o", "json")
            return report
        reports = {m: self._json(m, "verify", str(self.manifest), "--host", str(m), "-o", "json") for m in self.worlds}
        ran = [{**c, "host": m} for m, r in reports.items() for c in r["checks"] if c["ok"] is not None]
        return {"topology": self.name, "passed": sum(c["ok"] is True for c in ran),
                "failed": sum(c["ok"] is False for c in ran), "checks": ran, "hosts": reports}

    def destroy(self) -> Completed[str]:
        """`cnetctl destroy` now, on every machine (the fixture does it anyway): the exit code is the
        first that is not 0, the outputs are the machines' one after the other."""
        done = [self.worlds[m].cnetctl("destroy", "--name", self.name) for m in self.worlds]
        if len(done) == 1:
            return done[0]
        return Completed([d.args for d in done], next((d.returncode for d in done if d.returncode), 0),
                         "".join(d.stdout for d in done), "".join(d.stderr for d in done))


def _on(machine: str | None) -> str:
    return f" (on {machine})" if machine else ""


def destroy_all(world: World) -> list[str]:
    """Stop the world's processes, then `cnetctl destroy` every topology Lab.apply applied in it;
    what went wrong, in cnetctl's words."""
    world.stop_processes()
    problems = []
    for name in world.topologies:
        gone = world.cnetctl("destroy", "--name", name)
        if gone.returncode != 0:
            problems.append(f"cnetctl destroy --name {name} exited {gone.returncode}: {gone.stderr.strip()}")
    world.topologies.clear()
    return problems
