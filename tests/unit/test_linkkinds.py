"""The link-kind table: one entry per kind, both halves present, records round-trip."""

from __future__ import annotations

from cnetctl.kernel.linkkinds import KERNEL_LINK_KINDS
from cnetctl.model.linkkinds import LINK_KINDS, VethSpec
from cnetctl.model.resources import Link, resource_from_json
from cnetctl.plan import plan

BRIDGE = Link(None, "br0", "bridge", mtu=1400)
PORT = Link(None, "cn1", "veth", master="br0", spec=VethSpec("lab-a", "eth0"))
END = Link("lab-a", "eth0", "veth", spec=VethSpec(None, "cn1"))


def test_every_kind_has_its_kernel_half():
    assert set(KERNEL_LINK_KINDS) == set(LINK_KINDS)


def test_records_round_trip_through_json_with_the_kind_as_before():
    for link in (BRIDGE, PORT, END, Link("lab-a", "lo", "lo")):
        data = link.to_json()
        assert data["kind"] == link.kind and "spec" not in data
        assert resource_from_json(data) == link
    assert PORT.to_json()["peer_ns"] == "lab-a" and "peer_ns" not in BRIDGE.to_json()


def test_a_master_is_created_before_its_ports_and_a_veth_takes_its_peer_along():
    created = [a.resource for a in plan([END, PORT, BRIDGE], []).actions]
    assert created.index(BRIDGE) < created.index(PORT)
    gone = plan([BRIDGE], [BRIDGE, PORT, END]).actions
    assert {(a.op, a.resource.ifname) for a in gone} == {("delete", "cn1"), ("delete", "eth0")}
    assert END.reaches == (None,) and PORT.describe() == "veth cn1 in host (peer eth0 in netns lab-a) master br0"
