"""UDP and TCP between namespaces: a listener in one, a sender in another, and what each saw.

These say what happened (the address the sender's kernel chose, the source the
listener saw, the error of each step); whether that is right is the caller's
judgement. Every socket is closed before a function returns.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import threading
import time
from contextlib import closing
from dataclasses import dataclass

from .netns import netns_socket

RESEND_EVERY = 0.2   # seconds between copies of a UDP probe (the first may meet an unresolved neighbour)

# Two probes of this process listening on the same address and port would take each
# other's datagrams (or fail with EADDRINUSE): they take turns.
_LISTENER_LOCKS: dict[tuple[str | None, str, int], threading.Lock] = {}
_LISTENER_LOCKS_GUARD = threading.Lock()


def _listener_lock(key: tuple[str | None, str, int]) -> threading.Lock:
    with _LISTENER_LOCKS_GUARD:
        return _LISTENER_LOCKS.setdefault(key, threading.Lock())


def oserror_text(err: OSError) -> str:
    """'Network is unreachable (ENETUNREACH)'."""
    name = errno.errorcode.get(err.errno or 0)
    return f"{err.strerror or err}" + (f" ({name})" if name else "")


def _family(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def _plain_ip(addr: str) -> str:
    """A socket's peer address without its %scope, as ipaddress writes it."""
    return str(ipaddress.ip_address(addr.split("%")[0]))


@dataclass
class UdpOutcome:
    """What one UDP probe saw. The first error set ends the probe."""

    listen_error: str | None = None   # the listener could not bind
    send_error: str | None = None     # the sender could not connect (no route, no source address …)
    sender: str | None = None         # the source address the sender's kernel chose
    seen: str | None = None           # the source the listener saw (None: nothing arrived)
    last_send_error: str | None = None  # an error of a send while retrying (an ICMP error, a route gone)


def udp_probe(listen_ns: str | None, address: str, port: int, send_ns: str | None, timeout: float) -> UdpOutcome:
    """A datagram from a socket in `send_ns` to `address:port`, where a socket bound in `listen_ns`
    waits for it; resent every RESEND_EVERY s until it arrives or `timeout` passes."""
    family = _family(address)
    out = UdpOutcome()
    with _listener_lock((listen_ns, address, port)), \
            closing(netns_socket(listen_ns, family, socket.SOCK_DGRAM)) as listener:
        try:
            listener.bind((address, port))
        except OSError as err:
            out.listen_error = oserror_text(err)
            return out
        listener.setblocking(False)
        with closing(netns_socket(send_ns, family, socket.SOCK_DGRAM)) as sender:
            try:
                sender.connect((address, port))
            except OSError as err:
                out.send_error = oserror_text(err)
                return out
            out.sender = sender.getsockname()[0]
            token = b"cnetctl-source-" + os.urandom(8).hex().encode()
            out.seen, out.last_send_error = _exchange(sender, listener, token, timeout)
    return out


def _exchange(sender: socket.socket, listener: socket.socket, token: bytes, timeout: float
              ) -> tuple[str | None, str | None]:
    """Send the token (again every RESEND_EVERY s) until the listener gets it; the source it saw."""
    deadline = time.monotonic() + timeout
    send_error = None
    while (left := deadline - time.monotonic()) > 0:
        try:
            sender.send(token)
        except OSError as err:      # an ICMP error for an earlier datagram, or no route now
            send_error = oserror_text(err)
        end = time.monotonic() + min(RESEND_EVERY, left)
        while (wait := end - time.monotonic()) > 0:
            if not select.select([listener], [], [], wait)[0]:
                break
            try:
                data, addr = listener.recvfrom(2048)
            except BlockingIOError:
                continue
            if data == token:
                return _plain_ip(addr[0]), send_error
    return None, send_error


@dataclass
class TcpOutcome:
    """What one TCP probe saw. The first error set ends the probe."""

    listen_error: str | None = None    # the listener could not bind or listen
    connect_error: str | None = None   # the client's connect failed ('timed out' after the timeout)
    client: str | None = None          # the client socket's own address, once connected
    seen: str | None = None            # the peer the listener accepted (None: the connection went elsewhere)

    @property
    def connected(self) -> bool:
        return self.client is not None


def tcp_probe(listen_ns: str | None, listen_port: int, connect_ns: str | None, address: str, port: int,
              timeout: float) -> TcpOutcome:
    """A connection from `connect_ns` to `address:port`, with a one-shot listener on any address,
    port `listen_port`, in `listen_ns`: did the connection land there, and from where?"""
    family = _family(address)
    out = TcpOutcome()
    with _listener_lock((listen_ns, "tcp", listen_port)), \
            closing(netns_socket(listen_ns, family, socket.SOCK_STREAM)) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", listen_port))
            listener.listen(8)
        except OSError as err:
            out.listen_error = oserror_text(err)
            return out
        listener.setblocking(False)
        with closing(netns_socket(connect_ns, family, socket.SOCK_STREAM)) as client:
            client.settimeout(timeout)
            try:
                client.connect((address, port))
            except OSError as err:
                out.connect_error = "timed out" if isinstance(err, TimeoutError) else oserror_text(err)
                return out
            out.client = client.getsockname()[0]
            if not select.select([listener], [], [], timeout)[0]:
                return out
            conn, peer = listener.accept()
            conn.close()
    out.seen = _plain_ip(peer[0])
    return out
