"""explain's model of the kernel's lookup, on synthetic snapshots (no root, no kernel)."""

from __future__ import annotations

import errno
import ipaddress
import socket

from cnetctl.explain import Flow, compare, explain_snapshot, fib_lookup, render_text, rule_text
from cnetctl.kernel.errnos import RPF_ERRNO
from cnetctl.kernel.routes import RouteAnswer
from cnetctl.kernel.snapshot import (
    FIB_RULE_IIF_DETACHED,
    FIB_RULE_INVERT,
    FR_ACT_GOTO,
    FR_ACT_NOP,
    FR_ACT_PROHIBIT,
    FR_ACT_TO_TBL,
    KRoute,
    KRule,
    Snapshot,
)
from cnetctl.kernel.sysctl import conf_key, read_sysctls, sysctl_path

V4 = socket.AF_INET
net = ipaddress.ip_network
ip = ipaddress.ip_address


def rule(priority: int, table: int = 0, action: int = FR_ACT_TO_TBL, **kw: object) -> KRule:
    return KRule(priority=priority, family=V4, action=action, table=table, **kw)  # type: ignore[arg-type]


def route(dst: str, table: int = 254, type: str = "unicast", **kw: object) -> KRoute:
    return KRoute(table=table, family=V4, dst=net(dst), type=type, **kw)  # type: ignore[arg-type]


DEFAULT_RULES = [rule(0, 255), rule(32766, 254), rule(32767, 253)]


def snap(rules: list[KRule], routes: list[KRoute], sysctls: dict[str, str] | None = None) -> Snapshot:
    tables: dict[int, list[KRoute]] = {}
    for r in routes:
        tables.setdefault(r.table, []).append(r)
    addrs = {"lo": [ipaddress.ip_interface("127.0.0.1/8")], "eth0": [ipaddress.ip_interface("10.0.0.1/24")],
             "eth1": [ipaddress.ip_interface("10.1.0.1/24")]}
    base = {"net.ipv4.ip_forward": "1"}
    for dev in ("all", "eth0", "eth1"):
        base.update({f"net.ipv4.conf.{dev}.{k}": "0" for k in ("rp_filter", "accept_local", "route_localnet")})
        base[f"net.ipv4.conf.{dev}.forwarding"] = "1"
        base[f"net.ipv4.conf.{dev}.send_redirects"] = "1"
    base.update(sysctls or {})
    return Snapshot(V4, sorted(rules, key=lambda r: r.priority), tables, addrs, base, ["lo", "eth0", "eth1"])


LOCAL = [route("10.0.0.1/32", 255, "local", dev="eth0", protocol=2),
         route("10.1.0.1/32", 255, "local", dev="eth1", protocol=2),
         route("127.0.0.0/8", 255, "local", dev="lo", protocol=2)]
MAIN = [route("0.0.0.0/0", gateway="10.0.0.254", dev="eth0"), route("10.0.0.0/24", dev="eth0", scope=253),
        route("10.1.0.0/24", dev="eth1", scope=253)]


def test_longest_prefix_then_metric_and_dead_routes_skipped():
    s = snap(DEFAULT_RULES, LOCAL + MAIN + [
        route("10.9.0.0/16", gateway="10.1.0.2", dev="eth1", metric=10),
        route("10.9.0.0/16", gateway="10.1.0.3", dev="eth1", metric=5),
        route("10.9.9.0/24", gateway="10.1.0.4", dev="eth1", flags=1)])     # RTNH_F_DEAD
    look = fib_lookup(s, Flow(ip("10.9.9.9")))
    assert look.table == 254 and look.route is not None and look.route.gateway == "10.1.0.3"
    assert [st.outcome for st in look.steps] == ["no route", "matched", "not reached"]


def test_rule_table_without_route_falls_through_and_throw_too():
    s = snap(DEFAULT_RULES + [rule(100, 200, src=net("10.0.0.0/24")), rule(110, 201)],
             LOCAL + MAIN + [route("10.50.0.0/16", 200, gateway="10.1.0.2", dev="eth1"),
                             route("10.60.0.0/16", 201, "throw")])
    look = fib_lookup(s, Flow(ip("10.60.1.1"), ip("10.0.0.1")))
    outcomes = {st.rule.priority: st.outcome for st in look.steps}
    assert outcomes == {0: "no route", 100: "no route", 110: "throw", 32766: "matched", 32767: "not reached"}
    look = fib_lookup(s, Flow(ip("10.50.1.1"), ip("10.0.0.1")))
    assert look.table == 200
    # Without a source, a from-rule does not match (the kernel looks up with saddr 0).
    look = fib_lookup(s, Flow(ip("10.50.1.1")))
    assert look.table == 254 and "no source address" in look.steps[1].why


def test_fwmark_mask_iif_lo_invert_goto_nop_detached():
    s = snap(DEFAULT_RULES + [
        rule(50, 0, FR_ACT_NOP),
        rule(60, 0, FR_ACT_GOTO, goto=90, iif="eth0"),
        rule(70, 202, iif="eth9", flags=FIB_RULE_IIF_DETACHED),
        rule(80, 203, fwmark=0x10, fwmask=0xFF),
        rule(85, 204, iif="lo"),
        rule(90, 205, dst=net("10.0.0.0/8"), flags=FIB_RULE_INVERT),
    ], LOCAL + MAIN + [route("0.0.0.0/0", t, gateway="10.1.0.9", dev="eth1") for t in (203, 204, 205)])
    assert fib_lookup(s, Flow(ip("8.8.8.8"), mark=0x110)).table == 203           # 0x110 & 0xff == 0x10
    assert fib_lookup(s, Flow(ip("8.8.8.8"), mark=0x11)).table == 204            # local traffic: iif lo
    look = fib_lookup(s, Flow(ip("8.8.8.8"), ip("10.1.0.7"), iif="eth0"))         # goto 90 skips 70..85
    assert look.table == 205
    assert [st.outcome for st in look.steps[:6]] == ["no route", "nop", "goto", "not reached", "not reached",
                                                     "not reached"]
    look = fib_lookup(s, Flow(ip("10.1.0.5"), ip("10.1.0.7"), iif="eth1"))        # 'not to 10/8' fails
    assert look.table == 254


def test_suppress_prefixlength_and_reject_rules():
    s = snap(DEFAULT_RULES + [rule(10, 254, suppress_prefixlen=0), rule(20, 0, FR_ACT_PROHIBIT,
                                                                        dst=net("192.0.2.0/24"))],
             LOCAL + MAIN)
    look = fib_lookup(s, Flow(ip("10.1.0.9")))
    assert look.rule is not None and look.rule.priority == 10                    # /24 beats suppression
    look = fib_lookup(s, Flow(ip("192.0.2.1")))
    assert look.error == errno.EACCES and look.rule is not None and look.rule.priority == 20
    assert look.steps[1].outcome == "suppressed"                                 # default route, /0 <= 0


def test_verdicts_hooks_and_forwarding_off():
    s = snap(DEFAULT_RULES, LOCAL + MAIN + [route("10.66.0.0/16", type="blackhole")])
    out = explain_snapshot(s, Flow(ip("8.8.8.8")))
    assert (out.verdict, out.hooks, out.answer.via) == ("sent", ["OUTPUT", "POSTROUTING"], "10.0.0.254")
    out = explain_snapshot(s, Flow(ip("10.0.0.1")))
    assert out.verdict == "delivered locally" and out.answer.dev == "lo" and out.answer.table == 255
    out = explain_snapshot(s, Flow(ip("8.8.8.8"), ip("10.1.0.7"), iif="eth1"))
    assert out.verdict == "forwarded" and out.hooks == ["PREROUTING", "FORWARD", "POSTROUTING"]
    out = explain_snapshot(s, Flow(ip("10.0.0.1"), ip("10.1.0.7"), iif="eth1"))
    assert out.verdict == "delivered locally" and out.hooks == ["PREROUTING", "INPUT"]
    out = explain_snapshot(s, Flow(ip("10.66.1.1")))
    assert out.verdict == "blackhole" and out.answer.error == errno.EINVAL and out.hooks == []

    off = snap(DEFAULT_RULES, LOCAL + MAIN, {"net.ipv4.conf.eth1.forwarding": "0", "net.ipv4.ip_forward": "0"})
    out = explain_snapshot(off, Flow(ip("8.8.8.8"), ip("10.1.0.7"), iif="eth1"))
    assert out.verdict == "dropped: forwarding off" and out.answer.error == errno.EHOSTUNREACH
    assert "net.ipv4.ip_forward=1" in out.reason and out.forwarding and out.forwarding["enabled"] is False
    assert out.hooks == ["PREROUTING"]


def test_martians_and_strict_rp_filter():
    s = snap(DEFAULT_RULES, LOCAL + MAIN)
    out = explain_snapshot(s, Flow(ip("8.8.8.8"), ip("10.0.0.1"), iif="eth1"))   # our own address, from outside
    assert out.answer.error == errno.EINVAL and out.verdict == "martian"
    out = explain_snapshot(s, Flow(ip("8.8.8.8"), iif="eth1"))
    assert out.answer.error == errno.EINVAL and "needs --from" in out.reason
    strict = snap(DEFAULT_RULES, LOCAL + MAIN, {"net.ipv4.conf.all.rp_filter": "1"})
    out = explain_snapshot(strict, Flow(ip("10.0.0.9"), ip("8.8.4.4"), iif="eth1"))  # back via eth0, not eth1
    assert out.answer.error == RPF_ERRNO and out.verdict == "rp_filter drop"
    out = explain_snapshot(s, Flow(ip("8.8.8.8"), ip("192.0.2.9")))                   # not our address
    assert out.answer.error == errno.ENETUNREACH and out.verdict == "invalid source"


def test_compare_reports_a_disagreement_loudly():
    s = snap(DEFAULT_RULES + [rule(5, 200)], LOCAL + MAIN + [route("0.0.0.0/0", 200, gateway="10.1.0.2",
                                                                   dev="eth1")])
    out = explain_snapshot(s, Flow(ip("8.8.8.8")))
    assert out.answer.table == 200
    kernel = RouteAnswer(ok=True, type="unicast", table=254, via="10.0.0.254", dev="eth0")
    out.kernel, out.mismatch = kernel, compare(out, kernel, s.default_rules_only)
    assert not out.agrees
    assert set(out.mismatch) == {"table: ours 200, kernel main (254)", "gateway: ours 10.1.0.2, kernel 10.0.0.254",
                                 "dev: ours eth1, kernel eth0"}
    text = "\n".join(render_text(out))
    assert "MISMATCH" in text and out.to_json()["agrees"] is False
    # Errors compare by errno; the merged local/main trie quirk is not a mismatch.
    assert compare(out, RouteAnswer(ok=False, error="no route (ENETUNREACH)"), False)
    plain = snap(DEFAULT_RULES, LOCAL + MAIN)
    local = explain_snapshot(plain, Flow(ip("10.0.0.1")))
    assert compare(local, RouteAnswer(ok=True, type="local", table=254, dev="lo"), plain.default_rules_only) == []


def test_rule_text_reads_like_ip_rule():
    assert rule_text(rule(100, 200, src=net("10.0.0.0/24")), {200: "isp2"}) == "from 10.0.0.0/24 lookup isp2"
    assert rule_text(rule(1, 254, fwmark=0x10, fwmask=0xFF, iif="eth0")) == \
        "from all fwmark 0x10/0xff iif eth0 lookup main"
    assert rule_text(rule(2, 0, FR_ACT_GOTO, goto=9, flags=FIB_RULE_INVERT, dst=net("10.0.0.0/8"))) == \
        "not from all to 10.0.0.0/8 goto 9"


def test_sysctl_keys_keep_an_interface_name_with_a_dot_whole():
    assert conf_key("ipv4", "eth0", "rp_filter") == "net.ipv4.conf.eth0.rp_filter"
    assert conf_key("ipv4", "e0.100", "rp_filter") == "net/ipv4/conf/e0.100/rp_filter"
    assert sysctl_path(conf_key("ipv6", "e0.100", "forwarding")) == "/proc/sys/net/ipv6/conf/e0.100/forwarding"
    s = snap(DEFAULT_RULES, LOCAL + MAIN, {"net/ipv4/conf/e0.100/rp_filter": "2"})
    assert s.conf("e0.100", "rp_filter") == (0, 2)


def test_a_slash_spelled_key_is_read_from_proc_not_from_a_relative_path():
    with open("/proc/sys/net/ipv4/ip_forward") as fh:
        want = fh.read().strip()
    assert read_sysctls(None, ["net/ipv4/ip_forward", "net.ipv4.conf.nosuch0.rp_filter"]) == \
        {"net.ipv4.ip_forward": want}
