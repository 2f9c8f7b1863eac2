"""Real packets from inside a namespace: ICMP/ICMPv6 echo over raw sockets."""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time

from .netns import netns_socket

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(ns: str | None, dst: str, *, count: int = 1, timeout: float = 1.0,
         source: str | None = None) -> list[float | None]:
    """RTT in seconds of each echo (None: no reply within `timeout`)."""
    v6 = ipaddress.ip_address(dst).version == 6
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    sock = netns_socket(ns, family, socket.SOCK_RAW, proto)
    try:
        if source:
            sock.bind((source, 0))
        ident = int.from_bytes(os.urandom(2), "big")
        return [_echo(sock, dst, v6, ident, seq, timeout) for seq in range(1, count + 1)]
    finally:
        sock.close()


def _echo(sock: socket.socket, dst: str, v6: bool, ident: int, seq: int, timeout: float) -> float | None:
    body = b"cnetctl-" + struct.pack("!d", time.time())
    req_type, reply_type = (ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY) if v6 else (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
    header = struct.pack("!BBHHH", req_type, 0, 0, ident, seq)
    # The kernel fills in the ICMPv6 checksum (it needs the pseudo-header); ICMPv4's is ours.
    csum = 0 if v6 else _checksum(header + body)
    packet = struct.pack("!BBHHH", req_type, 0, csum, ident, seq) + body
    want = ipaddress.ip_address(dst)
    start = time.monotonic()
    try:
        sock.sendto(packet, (dst, 0))
    except OSError:
        return None  # no route, unreachable, prohibited: nothing can come back
    while (left := timeout - (time.monotonic() - start)) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        data, addr = sock.recvfrom(4096)
        # Raw ICMPv4 sockets deliver the IP header; ICMPv6 ones do not.
        offset = 0 if v6 else (data[0] & 0x0F) * 4
        if len(data) < offset + 8:
            continue
        typ, _code, _csum, rid, rseq = struct.unpack("!BBHHH", data[offset:offset + 8])
        if typ == reply_type and (rid, rseq) == (ident, seq) and ipaddress.ip_address(addr[0].split("%")[0]) == want:
            return time.monotonic() - start
    return None
