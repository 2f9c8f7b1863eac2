"""Real packets from inside a namespace: ICMP/ICMPv6 echo over raw sockets.

A `Prober` keeps ONE raw socket per (namespace, family) and one receiver
thread for all of them, so any number of concurrent pings cost no thread and no
socket each: requests are told apart by (identifier, sequence, source), the
way ping(8) does it. Everything it opens is closed by `close()` (or `with`).
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .netns import netns_socket

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED = 3, 11
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129
ICMP6_DEST_UNREACH, ICMP6_PACKET_TOO_BIG, ICMP6_TIME_EXCEEDED = 1, 2, 3

# Raw socket filters (linux/icmp.h ICMP_FILTER, netinet/icmp6.h ICMP6_FILTER): a set
# bit blocks that type. Only replies and errors that may quote our echo get through.
SOL_RAW, ICMP_FILTER, ICMP6_FILTER = 255, 1, 1
RCVBUF = 1 << 20

ICMP_UNREACH_TEXT = {0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
                     3: "port unreachable", 4: "fragmentation needed", 9: "network prohibited",
                     10: "host prohibited", 13: "administratively prohibited"}
ICMP6_UNREACH_TEXT = {0: "no route", 1: "administratively prohibited", 3: "address unreachable",
                      4: "port unreachable", 5: "source address failed policy", 6: "reject route"}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


@dataclass
class Echo:
    """One echo request in flight, and what came of it."""

    dst: str
    sent: float = 0.0
    rtt: float | None = None
    error: str | None = None       # an ICMP error quoting it, or the send error
    done: threading.Event = field(default_factory=threading.Event)


class PingHandle:
    """The outcome of one `Prober.submit()`: `result()` waits for it (never longer than its timeout)."""

    def __init__(self, prober: Prober, keys: Sequence[tuple[object, ...]], echoes: list[Echo], timeout: float):
        self._prober, self._keys, self.echoes, self.timeout = prober, keys, echoes, timeout

    def wait(self) -> None:
        for echo in self.echoes:
            left = echo.sent + self.timeout - time.monotonic()
            if left > 0:
                echo.done.wait(left)
        self._prober._forget(self._keys)

    def result(self) -> list[float | None]:
        """RTT in seconds of each echo (None: no reply within the timeout)."""
        self.wait()
        return [e.rtt for e in self.echoes]

    @property
    def errors(self) -> list[str]:
        return [e.error for e in self.echoes if e.error]


class Prober:
    """Shared raw ICMP sockets (one per namespace and family) and one receiver thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: dict[tuple[str | None, int, str | None], socket.socket] = {}
        self._pending: dict[tuple[object, ...], Echo] = {}
        self._ident = int.from_bytes(os.urandom(2), "big")
        self._seq = itertools.count(1)
        self._sel: selectors.BaseSelector | None = None
        self._wake: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, wake = self._thread, self._wake
        if wake is not None:
            os.write(wake[1], b"x")
        if thread is not None:
            thread.join()
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
        if self._sel is not None:
            self._sel.close()
        if wake is not None:
            os.close(wake[0])
            os.close(wake[1])
        for echo in self._pending.values():
            echo.done.set()
        self._pending.clear()

    def _start(self) -> None:
        """Under self._lock: the selector, the wake-up pipe and the receiver thread, once."""
        if self._thread is None:
            self._sel = selectors.DefaultSelector()
            self._wake = os.pipe()
            self._sel.register(self._wake[0], selectors.EVENT_READ, None)
            self._thread = threading.Thread(target=self._receive, name="cnetctl-ping-rx", daemon=True)
            self._thread.start()

    def _socket(self, ns: str | None, v6: bool, source: str | None) -> socket.socket:
        family = socket.AF_INET6 if v6 else socket.AF_INET
        key = (ns, family, source)
        with self._lock:
            if self._closed:
                raise RuntimeError("prober is closed")
            sock = self._socks.get(key)
            if sock is not None:
                return sock
            self._start()
        # Creating it enters the namespace (a short thread): outside the lock.
        proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
        sock = netns_socket(ns, family, socket.SOCK_RAW, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            if v6:
                blocked = [0xFFFFFFFF] * 8
                for t in (ICMP6_ECHO_REPLY, ICMP6_DEST_UNREACH, ICMP6_PACKET_TOO_BIG, ICMP6_TIME_EXCEEDED):
                    blocked[t >> 5] &= ~(1 << (t & 31))
                sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *blocked))
            else:
                passed = (1 << ICMP_ECHO_REPLY) | (1 << ICMP_DEST_UNREACH) | (1 << ICMP_TIME_EXCEEDED)
                sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", ~passed & 0xFFFFFFFF))
            if source:
                sock.bind((source, 0))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            if self._closed:
                sock.close()
                raise RuntimeError("prober is closed")
            if key in self._socks:          # another thread won the race
                sock.close()
                return self._socks[key]
            self._socks[key] = sock
            assert self._sel is not None and self._wake is not None
            self._sel.register(sock, selectors.EVENT_READ, (ns, v6))
            os.write(self._wake[1], b"x")
        return sock

    # --- sending ---------------------------------------------------------------------------------
    def submit(self, ns: str | None, dst: str, *, count: int = 1, timeout: float = 1.0,
               source: str | None = None) -> PingHandle:
        """Send `count` echo requests to `dst` from inside `ns` now; the handle collects the replies."""
        addr = ipaddress.ip_address(dst)
        v6 = addr.version == 6
        sock = self._socket(ns, v6, source)
        keys, echoes = [], []
        for _ in range(count):
            with self._lock:
                n = next(self._seq)
                ident, seq = (self._ident + (n >> 16)) & 0xFFFF, n & 0xFFFF
                key = (ns, v6, ident, seq, addr)
                echo = Echo(str(addr))
                self._pending[key] = echo
            keys.append(key)
            echoes.append(echo)
            echo.sent = time.monotonic()
            try:
                sock.sendto(self._packet(v6, ident, seq), (str(addr), 0))
            except OSError as err:
                # No route, unreachable, prohibited, blackholed: nothing can come back.
                name = errno.errorcode.get(err.errno or 0)
                echo.error = f"send failed: {os.strerror(err.errno) if err.errno else err}" + \
                    (f" ({name})" if name else "")
                echo.done.set()
        return PingHandle(self, keys, echoes, timeout)

    def ping(self, ns: str | None, dst: str, *, count: int = 1, timeout: float = 1.0,
             source: str | None = None) -> list[float | None]:
        return self.submit(ns, dst, count=count, timeout=timeout, source=source).result()

    @staticmethod
    def _packet(v6: bool, ident: int, seq: int) -> bytes:
        body = b"cnetctl-" + struct.pack("!d", time.time())
        req_type = ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST
        header = struct.pack("!BBHHH", req_type, 0, 0, ident, seq)
        # The kernel fills in the ICMPv6 checksum (it needs the pseudo-header); ICMPv4's is ours.
        csum = 0 if v6 else _checksum(header + body)
        return struct.pack("!BBHHH", req_type, 0, csum, ident, seq) + body

    def _forget(self, keys: Sequence[tuple[object, ...]]) -> None:
        with self._lock:
            for key in keys:
                self._pending.pop(key, None)

    # --- receiving -------------------------------------------------------------------------------
    def _receive(self) -> None:
        assert self._sel is not None and self._wake is not None
        while True:
            for key, _ in self._sel.select():
                if key.data is None:
                    os.read(self._wake[0], 512)
                    if self._closed:
                        return
                    continue
                ns, v6 = key.data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                while True:
                    try:
                        data, addr = sock.recvfrom(4096)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break   # e.g. a queued ICMP error reported on the socket: not ours to keep
                    self._dispatch(ns, v6, data, addr[0], time.monotonic())

    def _dispatch(self, ns: str | None, v6: bool, data: bytes, src: str, now: float) -> None:
        # Raw ICMPv4 sockets deliver the IP header; ICMPv6 ones do not.
        off = 0 if v6 else (data[0] & 0x0F) * 4
        if len(data) < off + 8:
            return
        typ, code, _csum, rid, rseq = struct.unpack("!BBHHH", data[off:off + 8])
        try:
            peer = ipaddress.ip_address(src.split("%")[0])
        except ValueError:
            return
        if typ == (ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY):
            with self._lock:
                echo = self._pending.get((ns, v6, rid, rseq, peer))
            if echo is not None and echo.rtt is None and not echo.done.is_set():
                echo.rtt = now - echo.sent
                echo.done.set()
            return
        # An ICMP error quoting one of our echo requests: fail it now, and say who refused.
        inner = data[off + 8:]
        if v6:
            if len(inner) < 48 or inner[6] != socket.IPPROTO_ICMPV6:
                return
            dst = ipaddress.ip_address(inner[24:40])
            quoted = inner[40:48]
            text = {ICMP6_DEST_UNREACH: ICMP6_UNREACH_TEXT.get(code, f"unreachable code {code}"),
                    ICMP6_PACKET_TOO_BIG: "packet too big", ICMP6_TIME_EXCEEDED: "time exceeded"}.get(typ)
        else:
            if len(inner) < 20 or inner[9] != socket.IPPROTO_ICMP:
                return
            ihl = (inner[0] & 0x0F) * 4
            dst = ipaddress.ip_address(inner[16:20])
            quoted = inner[ihl:ihl + 8]
            text = {ICMP_DEST_UNREACH: ICMP_UNREACH_TEXT.get(code, f"unreachable code {code}"),
                    ICMP_TIME_EXCEEDED: "time exceeded"}.get(typ)
        if text is None or len(quoted) < 8:
            return
        qtype, _, _, qid, qseq = struct.unpack("!BBHHH", quoted)
        if qtype != (ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST):
            return
        with self._lock:
            echo = self._pending.get((ns, v6, qid, qseq, dst))
        if echo is not None and not echo.done.is_set():
            echo.error = f"{text} (ICMP from {peer})"
            echo.done.set()


def ping(ns: str | None, dst: str, *, count: int = 1, timeout: float = 1.0,
         source: str | None = None) -> list[float | None]:
    """RTT in seconds of each echo (None: no reply within `timeout`); a one-off Prober."""
    with Prober() as prober:
        return prober.ping(ns, dst, count=count, timeout=timeout, source=source)
