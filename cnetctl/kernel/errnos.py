"""What the kernel's errnos mean to cnetctl: the one table.

A refused change (apply) and a failed route lookup (`ip route get`, explain, route
checks) are read from the same entries, so one errno never gets two stories.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from dataclasses import dataclass

from ..model.resources import Address, Resource

_ROOT = "not permitted: run as root, outside a restricted container"


@dataclass(frozen=True)
class Errno:
    cause: str | None = None    # the likely cause when the kernel refuses a change with it
    route: str | None = None    # what a route lookup failing with it means (fib_props[], ip6_rt_type_to_error)


ERRNOS: dict[int, Errno] = {
    errno.EEXIST: Errno(cause="something of that name or key exists already (made by hand or another tool?)"),
    errno.EPERM: Errno(cause=_ROOT),
    errno.EACCES: Errno(cause=_ROOT, route="prohibit"),
    errno.ENODEV: Errno(cause="the interface vanished meanwhile (deleted by another tool?)"),
    errno.ENETUNREACH: Errno(cause="the gateway is not on a connected subnet of that node", route="no route"),
    errno.EHOSTUNREACH: Errno(route="unreachable"),
    errno.EINVAL: Errno(cause="the kernel refused a value", route="blackhole"),
    errno.ENOSPC: Errno(cause="a kernel limit was reached"),
    errno.EMFILE: Errno(cause="too many open files: raise `ulimit -n`"),
    errno.ENFILE: Errno(cause="too many open files on the system"),
    errno.EBUSY: Errno(cause="the object is in use"),
    errno.ERANGE: Errno(cause="a name or value is out of the kernel's range (interface names: at most 15 bytes)"),
}

# errno -> what the failed route lookup means ("unreachable", "blackhole", "prohibit", "no route").
ROUTE_ERRORS: dict[int, str] = {code: e.route for code, e in ERRNOS.items() if e.route}
# A reject route type (or a reject rule) -> the errno the lookup returns.
REJECT_ERRNO: dict[str, int] = {kind: code for code, kind in ROUTE_ERRORS.items() if kind != "no route"}


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def likely_cause(code: int, res: Resource) -> str:
    """A hint for the user after the kernel's own words."""
    cause = ERRNOS[code].cause if code in ERRNOS else None
    if code == errno.EINVAL and isinstance(res, Address) and ipaddress.ip_interface(res.cidr).version == 6:
        cause = f"{cause} (IPv6 needs an MTU of at least 1280 on that link)"
    return f"; likely cause: {cause}" if cause else ""


def _kernel_version() -> tuple[int, int]:
    try:
        major, minor = os.uname().release.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


# A reverse-path (rp_filter) failure: -EXDEV until 6.12; since 6.13 the input path returns
# drop reasons and RTM_GETROUTE turns every one of them into -EINVAL.
RPF_ERRNO = errno.EINVAL if _kernel_version() >= (6, 13) else errno.EXDEV
