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


# --- the table of check kinds ---------------------------------------------------------------------

ONE_OF_EACH = """
  - {ping: {from: a, to: "b:eth0"}}
  - {route: {node: a, to: 10.0.0.3, expect: {dev: eth0}}}
  - {mesh: {}}
  - {source: {from: a, to: "b:eth0"}}
  - {tcp: {from: a, to: "b:eth0", port: 80, serve: {node: b, port: 80}}}
"""


def test_every_kind_is_one_entry_whose_model_its_items_parse_into():
    from cnetctl.checks import KINDS
    from cnetctl.model.topology import CHECK_KINDS, CHECK_SPECS

    assert list(KINDS) == list(CHECK_KINDS) == ["ping", "route", "mesh", "source", "tcp"]
    assert [k.spec for k in KINDS.values()] == list(CHECK_SPECS)
    topo, _ = load_topology_text(MANIFEST.split("checks:")[0] + "checks:" + ONE_OF_EACH, "t.yaml")
    assert [c.kind for c in topo.checks] == list(CHECK_KINDS)
    assert [type(c.spec) for c in topo.checks] == list(CHECK_SPECS)


def test_the_schema_gives_checks_items_as_one_of_kind_spec():
    from cnetctl.model.topology import CHECK_KINDS, Topology

    schema = Topology.model_json_schema(by_alias=True)
    members = [schema["$defs"][m["$ref"].split("/")[-1]] for m in schema["properties"]["checks"]["items"]["oneOf"]]
    assert [m["required"] for m in members] == [[k] for k in CHECK_KINDS]
    assert all(m["additionalProperties"] is False and list(m["properties"]) == m["required"] for m in members)


def _fake_kinds(log: list[tuple[str, str]]):
    """ping/mesh as Probe, source as Pooled, route as Serial; each logs the thread it ran in."""
    import threading

    from cnetctl.checks import KINDS, CheckKind, CheckResult, Pooled, Probe, Serial

    def note(kind: str) -> CheckResult:
        log.append((kind, threading.current_thread().name))
        return CheckResult(kind, True, f"{kind} ran")

    def start(ctx, spec):
        if spec.kind == "mesh":
            raise RuntimeError("no prober today")
        log.append((f"{spec.kind} sent", threading.current_thread().name))
        return lambda: note(spec.kind)

    def pooled(ctx, spec):
        if spec.port == 1:
            raise OSError("listener gone")
        return note("source")

    return {"ping": CheckKind(KINDS["ping"].spec, Probe(start), str),
            "mesh": CheckKind(KINDS["mesh"].spec, Probe(start), str),
            "source": CheckKind(KINDS["source"].spec, Pooled(pooled), str),
            "route": CheckKind(KINDS["route"].spec, Serial(lambda ctx, spec: note("route")), str)}


def test_run_checks_runs_each_kind_its_own_way_in_manifest_order_and_leaves_no_thread():
    import threading

    from cnetctl.verify import run_checks

    checks = ONE_OF_EACH + '  - {source: {from: a, to: "b:eth0", port: 1}}\n'
    topo, src = load_topology_text(MANIFEST.split("checks:")[0] + "checks:" + checks, "t.yaml")
    d = normalize(topo, src)
    log: list[tuple[str, str]] = []
    threads = threading.active_count()
    results = run_checks(d, None, _fake_kinds(log))   # type: ignore[arg-type]
    assert threading.active_count() == threads
    here = threading.current_thread().name
    assert [(r.kind, r.ok) for r in results] == [("ping", True), ("route", True), ("mesh", False), ("source", True),
                                                ("tcp", False), ("source", False)]
    assert results[2].detail == "could not run: no prober today" and results[2].fields["nodes"] == "all"
    assert results[4].detail == "check kind tcp is not supported yet" and results[4].fields["port"] == 80
    assert results[5].detail == "could not run: listener gone" and results[5].fields["port"] == 1
    # Probes are sent while launching, before anything is collected; route runs here, the source check not.
    assert log[0] == ("ping sent", here) and ("route", here) in log and ("ping", here) in log
    assert [t for k, t in log if k == "source"] != [here]


def test_report_says_what_each_kind_checked():
    report = VerifyReport("t", [
        CheckResult("readback", True, "7 declared resources live and as declared", {"resources": 7}),
        CheckResult("ping", True, "1/1 replies", {"from": "a", "to": "b:eth0", "expect": "reachable"}),
        CheckResult("ping", True, "no reply", {"from": "a", "to": "10.0.0.9", "expect": "unreachable"}),
        CheckResult("route", True, "kernel chose …", {"node": "a", "to": "10.0.0.3", "from": "10.0.0.2"}),
        CheckResult("tcp", True, "arrived", {"from": "a", "to": "b:eth0", "port": 80, "serve": {"node": "b"}}),
    ])
    from cnetctl.verify import describe
    assert [describe(c) for c in report.checks] == [
        "declared = live", "a -> b:eth0", "a -> 10.0.0.9 (expect unreachable)", "a: to 10.0.0.3 from 10.0.0.2",
        "from=a, to=b:eth0, port=80"]


def test_source_and_tcp_judge_what_the_kernel_probes_saw():
    from cnetctl.checks import source, tcp
    from cnetctl.kernel.transport import TcpOutcome, UdpOutcome
    from cnetctl.model.topology import SourceCheck, TcpCheck

    spec = SourceCheck.model_validate({"from": "a", "to": "b:eth0"})
    res = source.judge(spec, "b", "10.0.0.3", UdpOutcome(sender="10.0.0.2", seen="10.0.0.1"), {})
    assert not res.ok and res.fields == {"sender": "10.0.0.2", "expected": "10.0.0.2", "seen": "10.0.0.1"}
    assert res.detail == "expected source 10.0.0.2 (preserved), b saw 10.0.0.1 (the sender used 10.0.0.2: " \
                         "translated on the path)"
    res = source.judge(spec, "b", "10.0.0.3", UdpOutcome(listen_error="Address in use (EADDRINUSE)"), {})
    assert not res.ok and res.detail == "cannot listen on 10.0.0.3:7777 in b: Address in use (EADDRINUSE)"
    assert res.fields == {}

    spec6 = TcpCheck.model_validate({"from": "a", "to": "10.0.0.3", "port": 80, "serve": {"node": "b", "port": 8080}})
    res = tcp.judge(spec6, "10.0.0.3", TcpOutcome(client="10.0.0.2"), {})
    assert not res.ok and res.fields == {"connected": True, "client": "10.0.0.2"}
    assert res.detail == "connected to 10.0.0.3:80, but not to the listener on b:8080: something else answered"
    res = tcp.judge(spec6, "10.0.0.3", TcpOutcome(connect_error="timed out"), {})
    assert res.fields == {"connected": False} and res.detail == "a could not connect to 10.0.0.3:80: timed out"


def test_checks_open_no_socket_outside_the_kernel_package():
    import ast
    from pathlib import Path

    import cnetctl
    root = Path(cnetctl.__file__).parent
    for path in [root / "verify.py", *sorted((root / "checks").glob("*.py"))]:
        imported = {a.name.split(".")[0] for n in ast.walk(ast.parse(path.read_text()))
                    if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(ast.parse(path.read_text()))
                     if isinstance(n, ast.ImportFrom) and not n.level}
        assert not imported & {"socket", "select", "selectors"}, path
