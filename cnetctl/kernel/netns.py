"""The one place that enters network namespaces, and the per-namespace netlink sockets.

setns() is per thread, so entering a namespace happens in a short-lived
thread: the caller's thread (and the rest of the process) stays where it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import signal
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import KernelError

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
            fd = os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            if not _same_ns(netns_path(ns)):  # safety belt: never act on the wrong namespace
                raise KernelError(f"setns into {ns} did not take effect")
            out["result"] = fn(*args, **kwargs)
        except BaseException as err:  # re-raised in the caller's thread
            out["error"] = err

    run_thread(body, f"netns-{ns}")
    if "error" in out:
        raise out["error"]
    return cast(T, out["result"])


def run_thread(body: Callable[[], None], name: str) -> None:
    """Run `body` in a thread and wait for it. Ctrl-C and SIGTERM are held back until it
    has finished, so that what it does in the kernel is complete (and can be undone)
    before the caller unwinds."""
    thread = threading.Thread(target=body, name=name)
    with signals_deferred():
        thread.start()
        thread.join()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive inside the block take effect when it ends (a netlink
    request cut in half leaves pyroute2's socket unusable, and the change half-known)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(caught):
            handler = saved[signal.Signals(signum)]
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


class Sockets:
    """One IPRoute per namespace, reused, closed before a netns goes.

    An IPRoute holds 4 file descriptors, so the least recently used ones are closed
    beyond `limit`: a topology of hundreds of namespaces runs under `ulimit -n 1024`."""

    def __init__(self, limit: int = 64) -> None:
        raise_fd_limit()
        self._by_ns: OrderedDict[str | None, IPRoute] = OrderedDict()
        self.limit = limit

    def get(self, ns: str | None) -> IPRoute:
        ipr = self._by_ns.get(ns)
        if ipr is not None:
            self._by_ns.move_to_end(ns)
            return ipr
        if ns is None:
            return self._keep(ns, IPRoute())
        if not netns_exists(ns):
            raise KernelError(f"netns {ns} does not exist")
        return self.adopt(ns, netns_socket(ns, socket.AF_NETLINK, socket.SOCK_DGRAM, 0))

    def adopt(self, ns: str | None, raw: socket.socket) -> IPRoute:
        """Use `raw`, a netlink socket made inside `ns`, as that namespace's IPRoute."""
        self.close(ns)
        return self._keep(ns, IPRoute(fileno=raw.detach()))

    def _keep(self, ns: str | None, ipr: IPRoute) -> IPRoute:
        self._by_ns[ns] = ipr
        while len(self._by_ns) > self.limit:
            _, old = self._by_ns.popitem(last=False)
            old.close()
        return ipr

    def close(self, ns: str | None) -> None:
        ipr = self._by_ns.pop(ns, None)
        if ipr is not None:
            ipr.close()

    def close_all(self) -> None:
        for ns in list(self._by_ns):
            self.close(ns)

    def __enter__(self) -> Sockets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()


def is_errno(err: BaseException, *codes: int) -> bool:
    code = err.code if isinstance(err, NetlinkError) else getattr(err, "errno", None)
    return code in codes
