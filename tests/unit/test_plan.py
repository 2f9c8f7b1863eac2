"""Planning is pure: diff, dependency order, what the kernel takes along, undo."""

from __future__ import annotations

import socket

from cnetctl.model.linkkinds import VethSpec
from cnetctl.model.resources import Address, Link, Netns, Route, Rule, Sysctl
from cnetctl.plan import plan

NS = "t-a"
ETH0 = Link(NS, "eth0", "veth", mtu=None, spec=VethSpec(None, "cnx"))
PEER = Link(None, "cnx", "veth", master="br0", spec=VethSpec(NS, "eth0"))
BR = Link(None, "br0", "bridge")
ADDR = Address(NS, "eth0", "10.0.0.2/24")
ROUTE = Route(NS, socket.AF_INET, 254, "0.0.0.0/0", 0, via="10.0.0.1", scope=0)
RULE = Rule(NS, socket.AF_INET, 1000, 200, src="10.0.0.0/24")
FWD = Sysctl(None, "net.ipv4.ip_forward", "1")
ALL = [Netns(NS), BR, ETH0, PEER, ADDR, ROUTE, RULE, FWD]


def ops(p):
    return [(a.op, a.resource.describe()) for a in p.actions]


def test_create_everything_in_dependency_order():
    p = plan(ALL[::-1], [])
    kinds = [type(a.resource).__name__ for a in p.actions]
    assert all(a.op == "create" for a in p.actions)
    assert kinds.index("Netns") < kinds.index("Link") < kinds.index("Address") < kinds.index("Sysctl") \
        < kinds.index("Route") < kinds.index("Rule")
    links = [a.resource.kind for a in p.actions if isinstance(a.resource, Link)]
    assert links == ["bridge", "veth", "veth"]  # a bridge exists before its ports


def test_no_changes_when_equal():
    assert plan(ALL, ALL).empty


def test_dont_care_fields_are_ignored():
    live = Route(NS, socket.AF_INET, 254, "0.0.0.0/0", 0, via="10.0.0.1", dev="eth0", src="10.0.0.2", scope=0)
    assert plan([ROUTE], [live]).empty


def test_update_in_place_for_mutable_fields():
    live = Link(NS, "eth0", "veth", mtu=1500, up=False, spec=VethSpec(None, "cnx"))
    p = plan([ETH0], [live])
    assert [(a.op, a.changes()) for a in p.actions] == [("update", {"up": (False, True)})]
    assert p.actions[0].inverse().resource == live


def test_deletes_run_first_in_reverse_order():
    p = plan([Netns(NS)], ALL)
    assert all(a.op == "delete" for a in p.actions)
    kinds = [type(a.resource).__name__ for a in p.actions]
    assert kinds.index("Rule") < kinds.index("Route") < kinds.index("Address") < kinds.index("Link")
    assert "Netns" not in kinds


def test_recreating_a_link_recreates_what_the_kernel_takes_along():
    moved = Link(NS, "eth0", "veth", spec=VethSpec(None, "cny"))
    new_peer = Link(None, "cny", "veth", master="br0", spec=VethSpec(NS, "eth0"))
    live_route = Route(NS, socket.AF_INET, 254, "0.0.0.0/0", 0, via="10.0.0.1", dev="eth0", scope=0)
    p = plan([Netns(NS), BR, moved, new_peer, ADDR, ROUTE], [Netns(NS), BR, ETH0, PEER, ADDR, live_route])
    deleted = {a.resource.key for a in p.actions if a.op == "delete"}
    created = {a.resource.key for a in p.actions if a.op == "create"}
    assert {ETH0.key, PEER.key, ADDR.key, ROUTE.key} <= deleted
    assert {moved.key, new_peer.key, ADDR.key, ROUTE.key} <= created


def test_destroy_collapses_into_the_namespace_delete():
    p = plan([], ALL, collapse_netns=True)
    assert ops(p) == [("delete", "sysctl net.ipv4.ip_forward=1 in host"), ("delete", "bridge br0 in host"),
                      ("delete", f"netns {NS}")]


def test_apply_mode_deletes_namespace_contents_one_by_one_for_exact_undo():
    p = plan([], ALL)
    assert len(p.actions) == len(ALL)
    assert p.actions[-1].resource == Netns(NS)


def test_ports_of_a_recreated_bridge_are_reattached():
    br2 = Link(None, "br0", "bridge", mtu=9000)
    live_br = Link(None, "br0", "bridge", mtu=1500)
    p = plan([br2, PEER], [live_br, PEER])
    assert [a.op for a in p.actions] == ["update"]  # mtu is mutable: no re-create, port stays
