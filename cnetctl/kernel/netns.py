"""The one place that enters network namespaces, and the per-namespace netlink sockets.

setns() is per thread, so entering a namespace happens in a short-lived
thread: the caller's thread (and the rest of the process) stays where it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import queue
import resource
import signal
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..errors import KernelError
from .rtnl import Rtnl, new_socket

if TYPE_CHECKING:
    from pyroute2 import IPRoute

T = TypeVar("T")

NETNS_RUN_DIR = "/run/netns"
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
MS_BIND, MS_REC, MS_SHARED = 0x1000, 0x4000, 1 << 20
MNT_DETACH = 2


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def _same_ns(path: str) -> bool:
    want, got = os.stat(path), os.stat("/proc/thread-self/ns/net")
    return (want.st_dev, want.st_ino) == (got.st_dev, got.st_ino)


def run_in_netns(ns: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args) with the calling thread's network namespace set to `ns` (None = here)."""
    if ns is None:
        return fn(*args, **kwargs)
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            _enter(ns, -1)
            out["result"] = fn(*args, **kwargs)
        except BaseException as err:  # re-raised in the caller's thread
            out["error"] = err

    run_thread(body, f"netns-{ns}")
    if "error" in out:
        raise out["error"]
    return cast(T, out["result"])


def run_in_each(calls: list[tuple[str | None, Callable[[], T]]]) -> list[T | BaseException]:
    """Each fn inside its namespace (None: this process's own), one after the other, in ONE
    short-lived thread: what each returned, or the exception it raised.

    A thread start costs 0.05-3 ms (by the machine's load): observe's reads of 250
    namespaces, a thread each, cost seconds; here they cost one."""
    out: list[T | BaseException] = []
    if not calls:
        return out

    def body() -> None:
        home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)  # the main thread's: the process's own
        try:
            for ns, fn in calls:
                try:
                    _enter(ns, home)
                    out.append(fn())
                except Exception as err:  # noqa: BLE001 - the caller's to judge, call by call
                    out.append(err)
        finally:
            os.close(home)

    run_thread(body, "netns-each")
    return out


def _enter(ns: str | None, home: int) -> None:
    """Set the calling thread's namespace to `ns` (None: the one open at `home`), and prove it."""
    if ns is None:
        _setns(home)
        return
    fd = os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)
    if not _same_ns(netns_path(ns)):  # safety belt: never act on the wrong namespace
        raise KernelError(f"setns into {ns} did not take effect")


def run_thread(body: Callable[[], None], name: str) -> None:
    """Run `body` in a thread of its own (the namespace worker, see _Worker) and wait for it.
    Ctrl-C and SIGTERM are held back until it has finished, so that what it does in the kernel
    is complete (and can be undone) before the caller unwinds."""
    with signals_deferred():
        if threading.current_thread() is _worker.thread:
            # From inside a body: a thread of its own, so that the body's namespace stays.
            thread = threading.Thread(target=body, name=name)
            thread.start()
            thread.join()
        else:
            _worker.call(body)


class _Worker:
    """One long-lived thread that runs the bodies given to it, one at a time, each entering the
    namespace it needs first (setns or unshare, which only this thread's namespace follows).

    A thread per body cost 0.2-2 ms to start (more the more namespaces exist: a 1000-pod apply
    spent 1.5 s starting threads); a hand-over to this one costs tens of microseconds."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self._pid = 0
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def call(self, body: Callable[[], None]) -> None:
        done = threading.Event()
        with self._lock:
            if self.thread is None or self._pid != os.getpid() or not self.thread.is_alive():
                # (again in a forked child: the parent's worker thread is not there)
                self._jobs, self._pid = queue.SimpleQueue(), os.getpid()
                self.thread = threading.Thread(target=self._serve, args=(self._jobs,), name="cnetctl-netns",
                                               daemon=True)
                self.thread.start()
            self._jobs.put((body, done))
        done.wait()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]]) -> None:
        # Back home after every body: a thread left in a namespace keeps that namespace alive
        # (a deleted one would never be released).
        home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        while True:
            body, done = jobs.get()
            try:
                body()
            except BaseException:  # noqa: BLE001, S110 - every body reports its own outcome
                pass
            finally:
                try:
                    _setns(home)
                finally:
                    done.set()


_worker = _Worker()


# The C functions under signal.signal: the same calls without its enum conversions, which
# were a tenth of an apply's time spent per action.
_raw_signal: Any = getattr(signal, "_signal", signal)
_deferring = [0]   # depth of signals_deferred blocks in the main thread


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive inside the block take effect when it ends (a netlink
    request cut in half leaves the change half-known). Inside another such block it does
    nothing: the outer one delivers them when it ends, as the inner one's end would have."""
    if threading.current_thread() is not threading.main_thread() or _deferring[0]:
        yield
        return
    caught: list[int] = []
    saved = {int(sig): _raw_signal.signal(sig, lambda signum, frame: caught.append(signum))
             for sig in DEFERRED_SIGNALS}
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
        for sig, handler in saved.items():
            _raw_signal.signal(sig, handler)
        for signum in dict.fromkeys(caught):
            handler = saved[signum]
            if callable(handler):
                handler(signum, None)          # raises KeyboardInterrupt / SystemExit here
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)   # the default action, now


def netns_socket(ns: str | None, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket that lives in `ns` (sockets keep the namespace they were created in)."""
    return run_in_netns(ns, socket.socket, family, type_, proto)


def list_netns() -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_RUN_DIR) if not n.startswith("."))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


_run_dir_shared = False


def _share_run_dir() -> None:
    """/run/netns as a shared mount, as iproute2 makes it, so that namespaces mounted
    there are seen by every mount namespace that shares it (done once per process)."""
    global _run_dir_shared
    if _run_dir_shared:
        return
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    run_dir = NETNS_RUN_DIR.encode()
    if _libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None) != 0:
        _check(_libc.mount(run_dir, run_dir, b"none", MS_BIND | MS_REC, None), f"bind-mount {NETNS_RUN_DIR}")
        _check(_libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None), f"share {NETNS_RUN_DIR}")
    _run_dir_shared = True


def _new_netns_body(path: str, prepare: Callable[[socket.socket], None]) -> socket.socket:
    """In a thread of its own: unshare a fresh network namespace, let `prepare` label it
    through a netlink socket made inside it, and only then publish it at `path`.

    No fork: a child would inherit cnetctl's signal handlers and run its rollback on
    shared sockets when Ctrl-C hits the process group. Labelled before it is mounted:
    a namespace is never visible under its name without its owner's label."""
    _check(_libc.unshare(CLONE_NEWNET), "unshare")
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    try:
        prepare(nl)
        # The mount point exists for a few microseconds before the mount: a run killed
        # just there leaves an empty file, which delete_netns() and observe handle.
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
        try:
            _check(_libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None),
                   f"mount {path}")
        except BaseException:
            os.unlink(path)
            raise
    except BaseException:
        nl.close()
        raise
    return nl


def create_netns(name: str, prepare: Callable[[socket.socket], None]) -> socket.socket:
    """Create named namespace `name`, prepared (labelled) by `prepare` before it appears.

    Returns a netlink socket that lives in it. FileExistsError when the name is taken."""
    _share_run_dir()
    path = netns_path(name)
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            out["socket"] = _new_netns_body(path, prepare)
        except BaseException as err:  # re-raised in the caller's thread
            out["error"] = err

    try:
        run_thread(body, f"new-netns-{name}")
    except BaseException:
        if "socket" in out:
            out["socket"].close()  # an open socket would pin the namespace the rollback removes
        raise
    err = out.get("error")
    if isinstance(err, FileExistsError):
        raise err
    if err is not None:
        if isinstance(err, OSError):
            raise KernelError(f"create netns {name}: {err.strerror or err}") from err
        raise err
    return cast(socket.socket, out["socket"])


def is_stale_mountpoint(name: str) -> bool:
    """An entry of /run/netns that is a plain file, not a mounted namespace: what a run
    killed between creating the mount point and mounting leaves behind. (A mounted
    namespace lives on nsfs, so its device differs from the directory's.)"""
    try:
        return os.stat(netns_path(name)).st_dev == os.stat(NETNS_RUN_DIR).st_dev
    except OSError:
        return False


def delete_netns(name: str) -> None:
    path = netns_path(name)
    try:
        _check(_libc.umount2(path.encode(), MNT_DETACH), f"unmount {path}")
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not mounted (a stale mount point)
            raise KernelError(f"delete netns {name}: {err.strerror}") from err
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise KernelError(f"delete netns {name}: {err.strerror}") from err


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: hundreds of namespaces need sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
        except (ValueError, OSError):
            pass


SIOCGSKNS = 0x894C   # a socket's network namespace, as an fd


def _socket_in(sock: socket.socket, path: str) -> bool:
    """Whether `sock` lives in the namespace at `path` (the same nsfs inode)."""
    try:
        fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
        try:
            mine = os.fstat(fd)
        finally:
            os.close(fd)
        there = os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def socket_budget() -> int:
    """How many namespace sockets to keep open at once: what the descriptor limit leaves once
    the libraries, the journal, locks and pipes have theirs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(16, soft - 128)


class Sockets:
    """A netlink socket per namespace, made once and reused for the run, closed before its
    namespace goes (an open socket would keep the namespace alive).

    nl(ns): kernel/rtnl.py's Rtnl (one descriptor), for everything apply and observe do.
    get(ns): a pyroute2 IPRoute (four descriptors, 0.4-1 ms a request), for the rest.
    Beyond socket_budget() the least recently used are closed, so that a topology of
    a thousand namespaces runs under `ulimit -n 1024`; not strictly: an apply visits the
    namespaces in the same order once per kind of object, and least-recently-used closes
    each socket just before it is needed again. The victim is the (KEEP+1)-th most recently
    used instead (never the host's): most sockets then stay open from one pass to the next,
    and the few a caller may be holding are never closed under it."""

    KEEP = 8

    IPROUTE_LIMIT = 16

    def __init__(self, limit: int | None = None) -> None:
        raise_fd_limit()
        self._nl: OrderedDict[str | None, Rtnl] = OrderedDict()
        self._ipr: OrderedDict[str | None, IPRoute] = OrderedDict()
        self.limit = limit or socket_budget()

    def nl(self, ns: str | None) -> Rtnl:
        sock = self._nl.get(ns)
        if sock is not None:
            self._nl.move_to_end(ns)
            return sock
        return self.adopt(ns, self._new_socket(ns))

    def open_many(self, namespaces: list[str]) -> None:
        """Make the sockets of `namespaces` not open yet (as many as the budget holds), all in
        one thread; a namespace that cannot be entered is left for nl() to report."""
        missing = [ns for ns in dict.fromkeys(namespaces) if ns not in self._nl][:self.limit]
        for ns, made in zip(missing, run_in_each([(ns, new_socket) for ns in missing]), strict=True):
            if isinstance(made, socket.socket):
                self.adopt(ns, made)

    def nl_in_place(self, ns: str) -> Rtnl:
        """nl(ns), proven to speak for the namespace mounted at that name now: a socket kept
        since before the name was given to another namespace would answer for the old one."""
        sock = self._nl.get(ns)
        if sock is not None and not _socket_in(sock.sock, netns_path(ns)):
            self.close(ns)
        return self.nl(ns)

    def get(self, ns: str | None) -> IPRoute:
        ipr = self._ipr.get(ns)
        if ipr is not None:
            self._ipr.move_to_end(ns)
            return ipr
        from pyroute2 import IPRoute  # imported here: apply and observe never need it

        ipr = IPRoute(fileno=self._new_socket(ns).detach()) if ns is not None else IPRoute()
        self._ipr[ns] = ipr
        while len(self._ipr) > self.IPROUTE_LIMIT:
            self._ipr.popitem(last=False)[1].close()
        return ipr

    @staticmethod
    def _new_socket(ns: str | None) -> socket.socket:
        if ns is None:
            return new_socket()
        if not netns_exists(ns):
            raise KernelError(f"netns {ns} does not exist")
        return run_in_netns(ns, new_socket)

    def adopt(self, ns: str | None, raw: socket.socket) -> Rtnl:
        """Use `raw`, a NETLINK_ROUTE socket made inside `ns`, as that namespace's socket."""
        old = self._nl.pop(ns, None)
        if old is not None:
            old.close()
        sock = self._nl[ns] = Rtnl(raw)
        while len(self._nl) > self.limit:
            victim = next((k for i, k in enumerate(reversed(self._nl)) if i > self.KEEP and k is not None), None)
            if victim is None:
                break
            self._nl.pop(victim).close()
        return sock

    def make_room(self, count: int) -> None:
        """Close the least recently used sockets until `count` more descriptors fit in the budget
        (verify's ping sockets, one per namespace and family)."""
        while len(self._nl) > max(0, self.limit - count):
            self._nl.popitem(last=False)[1].close()

    def close(self, ns: str | None) -> None:
        for cache in (self._nl, self._ipr):
            sock = cache.pop(ns, None)
            if sock is not None:
                sock.close()

    def close_all(self) -> None:
        for ns in list(self._nl) + list(self._ipr):
            self.close(ns)

    def __enter__(self) -> Sockets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()


def is_errno(err: BaseException, *codes: int) -> bool:
    """Whether `err` carries one of `codes`: an OSError's errno, or a netlink error's code
    (kernel/rtnl.py's or pyroute2's, both have .code)."""
    code = getattr(err, "code", None)
    if not isinstance(code, int):
        code = getattr(err, "errno", None)
    return code in codes
