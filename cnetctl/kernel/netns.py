"""The one place that enters network namespaces, and the per-namespace netlink sockets.

setns() is per thread, so entering a namespace happens in a short-lived
thread: the caller's thread (and the rest of the process) stays where it was.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import KernelError

T = TypeVar("T")

NETNS_RUN_DIR = "/run/netns"


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


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

    thread = threading.Thread(target=body, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return cast(T, out["result"])


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


def create_netns(name: str) -> None:
    try:
        netns.create(name)
    except FileExistsError:
        raise
    except OSError as err:
        raise KernelError(f"create netns {name}: {err}") from err


def delete_netns(name: str) -> None:
    try:
        netns.remove(name)
    except FileNotFoundError:
        pass
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.EINVAL):
            raise KernelError(f"delete netns {name}: {err}") from err


class Sockets:
    """One IPRoute per namespace, reused for the whole run, closed before a netns goes."""

    def __init__(self) -> None:
        self._by_ns: dict[str | None, IPRoute] = {}

    def get(self, ns: str | None) -> IPRoute:
        ipr = self._by_ns.get(ns)
        if ipr is None:
            if ns is None:
                ipr = IPRoute()
            else:
                if not netns_exists(ns):
                    raise KernelError(f"netns {ns} does not exist")
                raw = netns_socket(ns, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
                ipr = IPRoute(fileno=raw.detach())
            self._by_ns[ns] = ipr
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
