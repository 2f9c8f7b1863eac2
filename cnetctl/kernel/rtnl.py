"""Route netlink (NETLINK_ROUTE) spoken directly: the requests apply makes and the dumps observe reads.

pyroute2's IPRoute costs 0.4-1 ms a request (an asyncio loop turned per call, every
attribute of every reply decoded into objects) and 4 file descriptors a socket; a
250-pod apply makes thousands of requests over a socket per namespace. Here a
request is one struct.pack, one send and one recv on a plain socket (1 descriptor),
and a dump decodes only the attributes cnetctl reads. The messages are those
pyroute2 sends for the same calls (same header fields, same attributes). pyroute2
stays for the rare requests (VXLAN creation, neighbours, fdb entries, route lookups,
explain's snapshot): Sockets.get() still hands out an IPRoute.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable

# netlink(7), rtnetlink(7)
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
CREATE = NLM_F_CREATE | NLM_F_EXCL        # pyroute2's "add"
REPLACE = NLM_F_CREATE | NLM_F_REPLACE    # pyroute2's "replace"
NLA_TYPE_MASK = 0x3FFF
NETLINK_ADD_MEMBERSHIP = 1
SOL_NETLINK = 270

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_GETNEIGH = 30
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RTM_GETNSID = 90
RTMGRP_LINK = 0x1   # the link notifications' multicast group, as a bind() mask

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD, IFLA_LINK_NETNSID = 18, 20, 28, 37
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BR_FORWARD_DELAY, IFLA_BR_STP_STATE = 1, 5
IFF_UP = 0x1
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
FRA_DST, FRA_SRC, FRA_IIFNAME, FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK, FRA_OIFNAME, FRA_PROTOCOL = (
    1, 2, 3, 6, 10, 15, 16, 17, 21)
FR_ACT_TO_TBL = 1
NDA_DST, NDA_LLADDR = 1, 2
NETNSA_NSID, NETNSA_FD = 1, 3

HEADER = struct.Struct("=IHHII")       # nlmsghdr: length, type, flags, sequence, port
IFINFO = struct.Struct("=BxHiII")      # ifinfomsg: family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")       # ifaddrmsg: family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")    # rtmsg / fib_rule_hdr: family, dst_len, src_len, tos, table, proto|res1,
#                                        scope|res2, type|action, flags
NDMSG = struct.Struct("=BxxxiHBB")     # ndmsg: family, ifindex, state, flags, type
NLA = struct.Struct("=HH")
U32 = struct.Struct("=I")
S32 = struct.Struct("=i")
RECV_SIZE = 1 << 16   # a dump comes in datagrams of at most 32 KiB; below malloc's mmap threshold


class NetlinkError(Exception):
    """The kernel refused a request: `code` is the errno (the same shape as pyroute2's)."""

    def __init__(self, code: int, msg: str | None = None):
        msg = msg or os.strerror(code)
        super().__init__(code, msg)
        self.code = code


# --- attributes ----------------------------------------------------------------------------------
def attr(kind: int, payload: bytes) -> bytes:
    length = NLA.size + len(payload)
    return NLA.pack(length, kind) + payload + b"\0" * (-length % 4)


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, U32.pack(value & 0xFFFFFFFF))


def attr_ip(kind: int, address: str) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return attr(kind, socket.inet_pton(family, address))


def attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes from `offset` on, by type (the last of a repeated type wins)."""
    out: dict[int, bytes] = {}
    end = len(data)
    while offset + NLA.size <= end:
        length, kind = NLA.unpack_from(data, offset)
        if length < NLA.size:
            break
        out[kind & NLA_TYPE_MASK] = data[offset + NLA.size:offset + length]
        offset += (length + 3) & ~3
    return out


def text(value: bytes | None) -> str | None:
    return value.split(b"\0", 1)[0].decode(errors="replace") if value is not None else None


def u32(value: bytes | None) -> int | None:
    return U32.unpack_from(value)[0] if value is not None and len(value) >= 4 else None


def ip_text(value: bytes | None) -> str | None:
    if value is None:
        return None
    if len(value) == 4:
        return socket.inet_ntop(socket.AF_INET, value)
    if len(value) == 16:
        return socket.inet_ntop(socket.AF_INET6, value)
    return None


def mac_text(value: bytes | None) -> str | None:
    return ":".join(f"{b:02x}" for b in value) if value is not None else None


def messages(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each netlink message in one datagram."""
    out = []
    offset = 0
    while offset + HEADER.size <= len(data):
        length, mtype, _, _, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            break
        out.append((mtype, data[offset + HEADER.size:offset + length]))
        offset += (length + 3) & ~3
    return out


# --- the socket ------------------------------------------------------------------------------------
class Rtnl:
    """A NETLINK_ROUTE socket (made in the namespace it speaks for) and its request/reply loop.

    Replies are matched by sequence number: a reply left over from a request cut short
    (Ctrl-C between send and recv) is skipped, never taken for the next one's."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._seq = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def _send(self, mtype: int, flags: int, body: bytes) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        self.sock.send(HEADER.pack(HEADER.size + len(body), mtype, flags, self._seq, 0) + body)
        return self._seq

    def _replies(self, seq: int, until_ack: bool) -> tuple[list[bytes], bool]:
        """The payloads answering `seq` until its ack (or, for a dump, its DONE; for a plain
        get, its one reply), and whether the dump was interrupted by a change meanwhile."""
        out: list[bytes] = []
        interrupted = False
        while True:
            data = self.sock.recv(RECV_SIZE)
            offset = 0
            while offset + HEADER.size <= len(data):
                length, mtype, flags, mseq, _ = HEADER.unpack_from(data, offset)
                if length < HEADER.size:
                    break
                start, offset = offset, offset + ((length + 3) & ~3)
                if mseq != seq:
                    continue   # a late reply to an earlier request
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if mtype == NLMSG_ERROR or mtype == NLMSG_DONE:
                    code = -S32.unpack_from(data, start + HEADER.size)[0] if length >= HEADER.size + 4 else 0
                    if code > 0:
                        raise NetlinkError(code)
                    return out, interrupted
                out.append(data[start + HEADER.size:start + length])
                if not until_ack and not flags & NLM_F_MULTI:
                    return out, interrupted

    def request(self, mtype: int, body: bytes, flags: int = 0) -> None:
        """A change, acknowledged (NetlinkError when refused)."""
        self._replies(self._send(mtype, NLM_F_REQUEST | NLM_F_ACK | flags, body), until_ack=True)

    def get(self, mtype: int, body: bytes) -> bytes:
        """One object (NetlinkError when there is none: ENODEV, ENOENT …)."""
        replies, _ = self._replies(self._send(mtype, NLM_F_REQUEST, body), until_ack=False)
        return replies[0]

    def dump(self, mtype: int, body: bytes) -> list[bytes]:
        """Every object of a kind; retried when a change meanwhile made the dump inconsistent."""
        for _ in range(10):
            replies, interrupted = self._replies(self._send(mtype, NLM_F_REQUEST | NLM_F_DUMP, body),
                                                 until_ack=True)
            if not interrupted:
                break
        return replies


def new_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)


# --- message bodies -------------------------------------------------------------------------------
def ifinfo(index: int = 0, flags: int = 0, change: int = 0, family: int = 0) -> bytes:
    return IFINFO.pack(family, 0, index, flags, change)


def link_body(index: int = 0, items: Iterable[bytes] = (), up: bool | None = None) -> bytes:
    """An ifinfomsg (with IFF_UP set or cleared when `up` is given) and its attributes."""
    flags, change = (0, 0) if up is None else (IFF_UP if up else 0, IFF_UP)
    return ifinfo(index, flags, change) + b"".join(items)


def linkinfo(kind: str, data: bytes = b"") -> bytes:
    return attr(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, kind) + (attr(IFLA_INFO_DATA, data) if data else b""))
