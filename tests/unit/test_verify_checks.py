"""mesh membership, source ownership, the prober's demultiplexing and the report rendering (no root)."""

from __future__ import annotations

import ipaddress
import struct

from cnetctl.checks import CheckContext
from cnetctl.checks.mesh import mesh_nodes
from cnetctl.checks.source import address_owner
from cnetctl.kernel.probe import Echo, Prober, _checksum
from cnetctl.load import load_topology_text
from cnetctl.normalize import normalize
from cnetctl.render import console, print_report
from cnetctl.verify import CheckResult, VerifyReport

MANIFEST = """
apiVersion: cnetctl/v1
name: t
nodes:
  host:
    bridges: {br0: {addresses: [10.0.0.1/24]}}
  a: {interfaces: {eth0: {addresses: [10.0.0.2/24, "fd00::2/64"]}}}
  b: {interfaces: {eth0: {addresses: [10.0.0.3/24]}}}
links: [[a:eth0, host:br0], [b:eth0, host:br0]]
checks:
  - {mesh: {}}
  - {mesh: {nodes: [host, a, a], family: ipv6}}
  - {source: {from: a, to: "b:eth0"}}
"""


def desired():
    topo, src = load_topology_text(MANIFEST, "t.yaml")
    return normalize(topo, src)


def test_mesh_all_means_every_node_but_host_unless_listed():
    d = desired()
    assert mesh_nodes(d, d.topology.checks[0].spec) == ["a", "b"]
    assert mesh_nodes(d, d.topology.checks[1].spec) == ["host", "a"]


def test_source_listener_goes_where_the_address_is_declared():
    d = desired()
    assert address_owner(d, "10.0.0.3") == ("b", "eth0")
    assert address_owner(d, "10.0.0.1") == ("host", "br0")
    assert address_owner(d, "fd00::2") == ("a", "eth0")
    assert address_owner(d, "10.0.0.99") is None


def _reply_v4(src: str, ident: int, seq: int) -> bytes:
    ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 1, 0, b"\0" * 4,
                            ipaddress.ip_address(src).packed)
    icmp = struct.pack("!BBHHH", 0, 0, 0, ident, seq)
    return ip_header + icmp


def test_prober_matches_replies_by_id_seq_and_source_and_reads_icmp_errors():
    p = Prober()
    key = ("ns", False, 7, 9, ipaddress.ip_address("10.0.0.3"))
    echo = Echo("10.0.0.3", sent=0.0)
    p._pending[key] = echo
    p._dispatch("ns", False, _reply_v4("10.0.0.4", 7, 9), "10.0.0.4", 1.0)   # wrong source
    p._dispatch("ns", False, _reply_v4("10.0.0.3", 7, 8), "10.0.0.3", 1.0)   # wrong seq
    p._dispatch("other", False, _reply_v4("10.0.0.3", 7, 9), "10.0.0.3", 1.0)  # other namespace
    assert not echo.done.is_set()
    p._dispatch("ns", False, _reply_v4("10.0.0.3", 7, 9), "10.0.0.3", 1.5)
    assert echo.done.is_set() and echo.rtt == 1.5

    # Destination unreachable from a router, quoting our echo request to 10.0.0.9.
    key2 = ("ns", False, 7, 10, ipaddress.ip_address("10.0.0.9"))
    echo2 = Echo("10.0.0.9")
    p._pending[key2] = echo2
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 1, 0, b"\x0a\0\0\x02", b"\x0a\0\0\x09") + \
        struct.pack("!BBHHH", 8, 0, 0, 7, 10)
    outer = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 56, 0, 0, 64, 1, 0, b"\x0a\0\0\x01", b"\x0a\0\0\x02") + \
        struct.pack("!BBHI", 3, 1, 0, 0) + inner
    p._dispatch("ns", False, outer, "10.0.0.1", 2.0)
    assert echo2.done.is_set() and echo2.rtt is None
    assert echo2.error == "host unreachable (ICMP from 10.0.0.1)"
    p.close()
    p.close()   # idempotent


def test_checksum_of_an_echo_request_verifies():
    header = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"abc"
    csum = _checksum(header)
    assert _checksum(struct.pack("!BBHHH", 8, 0, csum, 1, 1) + b"abc") == 0


def test_report_renders_mesh_and_source_rows_with_expected_vs_actual():
    report = VerifyReport("t", [
        CheckResult("mesh", False, "1/2 pairs ok (2 pings, both); failed: a -> b 10.0.0.3: no reply within 1 s",
                    {"nodes": "all", "family": "both", "failed": [{"from": "a", "to": "b"}]}),
        CheckResult("source", False, "expected source 10.0.0.2 (preserved), b saw 10.0.0.1",
                    {"from": "a", "to": "b:eth0", "port": 7777, "expect": "preserved"}),
    ])
    with console.capture() as cap:
        print_report(report)
    out = cap.get()
    assert "all nodes (both)" in out and "a -> b:eth0 udp/7777" in out
    assert "expected source 10.0.0.2" in out and "0 passed, 2 failed" in out
    assert report.to_json()["checks"][0]["failed"] == [{"from": "a", "to": "b"}]


def test_a_mesh_of_one_node_has_no_pairs_and_passes_but_no_addresses_fails():
    from cnetctl.checks.mesh import start as start_mesh
    d = desired()
    one = load_topology_text(MANIFEST.replace("  - {mesh: {}}", "  - {mesh: {nodes: [a]}}"), "t.yaml")
    d1 = normalize(*one)
    with Prober() as p:
        res = start_mesh(CheckContext(d1, p, None), d1.topology.checks[0].spec)()
        assert res.ok and res.fields["pairs"] == 0 and "no pairs" in res.detail
        v6 = load_topology_text(MANIFEST.replace("  - {mesh: {}}", "  - {mesh: {nodes: [b, host], family: ipv6}}"),
                                "t.yaml")
        d6 = normalize(*v6)
        res = start_mesh(CheckContext(d6, p, None), d6.topology.checks[0].spec)()
        assert not res.ok and "no ipv6 addresses" in res.detail
    assert d.name == "t"
