"""What every manifest field means, written once: the JSON Schema's descriptions and the field
reference in docs/manifest.md are both made from the table below, and tests/unit/test_docs.py
fails when a model field has no entry here (or an entry names a field that is gone).

A field's type and default are read from the models themselves; only the meaning is written here.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from . import topology as t

SCHEMA_ID = "urn:cnetctl:schema:manifest:v1"
# Draft 7, not pydantic's 2020-12: the YAML language server behind editors' completion and
# checking implements draft 7 (a 2020-12 `prefixItems` is an error to it).
SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"
SCHEMA_FILE = "docs/cnetctl.schema.json"


@dataclass(frozen=True)
class ModelDoc:
    model: type[BaseModel]
    where: str                 # the YAML path where it is written
    about: str                 # what it is
    fields: dict[str, str]     # field as written in YAML (its alias) -> what it means


_NODE = "nodes.NODE"
# Fields of the same meaning in several models: one wording.
_TABLE = "a number, `main`, `local`, `default` or a name from `tables`"
_NAT_SOURCE = "The source network to translate."
_NOT_IFACE = "; `!IFACE` for every interface but that one."
_OUT_INTERFACE = "Only traffic leaving by this interface" + _NOT_IFACE
_IN_INTERFACE = "Only traffic arriving by this interface" + _NOT_IFACE

MODELS: tuple[ModelDoc, ...] = (
    ModelDoc(t.Topology, "the top level of the file",
             "A topology: what cnetctl applies, verifies and destroys as one unit.", {
        "apiVersion": "Always `cnetctl/v1`.",
        "name": "The topology's name. It owns every resource cnetctl creates for it (the ifalias `cnetctl:NAME`, "
                "routes and rules with `proto 147`, the nft table `inet cnetctl-NAME`), prefixes the namespaces "
                "of its nodes (`NAME-NODE`) and names its state file.",
        "settings": "Options for the whole topology.",
        "hosts": "The machines the topology spans, by name (SPEC §6). Without it the topology lives on the machine "
                 "cnetctl runs on; with it, `host` is not a node name and every other node says `on:` which "
                 "machine it lives on.",
        "tables": "Names for routing table ids, usable wherever a table is expected (routes, rules, route "
                  "checks): `{eth0_table: 200}`.",
        "nodes": "The nodes by name. `host` is the network namespace cnetctl runs in (never created or "
                 "deleted); any other node is a network namespace of its own.",
        "links": "veth pairs, one `[NODE:IFNAME, NODE:IFNAME]` per pair. An end naming a bridge of that node "
                 "plugs a generated veth (`cn` + 10 hex digits) into the bridge; any other end is a veth of that "
                 "name, used by one link only.",
        "checks": "What `apply` and `verify` prove with real traffic and kernel lookups: each item is "
                  "`{KIND: SPEC}` with one of the kinds below.",
    }),
    ModelDoc(t.Settings, "settings", "Options for the whole topology.", {
        "nat_backend": "Where NAT rules go: `nftables` (one table `inet cnetctl-NAME` per namespace), `iptables` "
                       "(legacy x_tables chains `CNET-NAME-*`), or `auto`: the family the host's own `iptables` "
                       "command uses. The CLI flag `--nat-backend` overrides it.",
        "forward": "`accept`: where another tool (Docker, firewalld) set a FORWARD policy DROP, add owned, "
                   "commented ACCEPT rules for the topology's subnets to that chain (removed on destroy). `none`: "
                   "leave the chain alone; `plan` and `apply` warn, naming the table and chain that will drop "
                   "the traffic.",
    }),
    ModelDoc(t.HostSpec, "hosts.HOST", "A machine the topology spans.", {
        "address": "The machine's own underlay address, already configured on it: cnetctl finds the host it runs "
                   "on by it, and links between machines are VXLAN tunnels between these addresses.",
    }),
    ModelDoc(t.Node, _NODE, "A node: `host`, or a network namespace (a container, a pod, a router, a machine "
             "of a lab). Its `lo` is brought up.", {
        "netns": "The exact namespace name to use instead of `TOPOLOGY-NODE`. Not allowed on `host`.",
        "on": "With `hosts:`: the machine this node lives on. A node named after a host is that machine's root "
              "namespace.",
        "interfaces": "Interfaces by name: each must be a link end of this node, a bridge of this node or `lo`; "
                      "on `host` it may also name an existing device, which cnetctl configures (addresses, MTU) "
                      "but never creates or deletes.",
        "bridges": "Linux bridges created on this node, by name. A link end `NODE:BRIDGE` adds a port to it.",
        "vxlans": "VXLAN devices created on this node, by name.",
        "neighbors": "Static ARP/NDP entries (permanent) on interfaces this topology creates; removed on "
                     "destroy.",
        "routes": "Routes in any routing table of this node.",
        "rules": "Policy routing rules of this node.",
        "sysctls": "Network-namespaced sysctls (`net.ipv4.*`, `net.ipv6.*`, `net.netfilter.*`, `net.unix.*`, "
                   "`net.core.somaxconn` …), as `key: value`; a key may be written with dots or slashes. On "
                   "`host`, the value from before the first apply is restored on destroy.",
        "nat": "NAT rules of this node, each one of `masquerade`, `snat` or `dnat`.",
    }),
    ModelDoc(t.InterfaceSpec, f"{_NODE}.interfaces.IFNAME", "An interface's settings.", {
        "addresses": "Addresses with their prefix (`10.0.0.1/24`, `fd00::1/64`), IPv4 and IPv6 mixed. An "
                     "address already on a host device is counted as present, never taken over.",
        "mtu": "MTU. Both ends of a veth pair get one MTU: an end's own, else its peer's, else that of the "
               "bridge it is plugged into. Unset: the kernel's default (1500).",
    }),
    ModelDoc(t.BridgeSpec, f"{_NODE}.bridges.IFNAME", "A Linux bridge created on the node.", {
        "addresses": "Addresses of the bridge itself (typically the gateway of the containers plugged into it).",
        "mtu": "MTU of the bridge. Unset: the kernel's choice (the smallest MTU of its ports).",
    }),
    ModelDoc(t.VxlanSpec, f"{_NODE}.vxlans.IFNAME", "A VXLAN device (a VTEP). A changed VNI, port, underlay or "
             "MAC re-creates it.", {
        "vni": "The VXLAN network identifier.",
        "port": "UDP destination port.",
        "local": "The underlay source address (on a node other than `host`: one of its declared addresses).",
        "dev": "The underlay device.",
        "remote": "The peer VTEP of a point-to-point tunnel; leave it out and list peers under `fdb` instead.",
        "fdb": "Forwarding entries: which VTEP the frames for a MAC go to; an entry without `mac` is a flood "
               "entry (broadcast and unknown unicast).",
        "learning": "Learn remote MACs from received frames. Turn off where `fdb` and `neighbors` say it all "
                    "(flannel-style).",
        "mac": "The device's MAC address (unicast). Unset: the kernel picks a random one.",
        "mtu": "MTU. VXLAN adds 50 bytes of headers: 1450 on a 1500-byte underlay.",
        "master": "A bridge of this node to enslave the device to.",
        "addresses": "Addresses of the device (flannel gives its VTEP the node's pod subnet address `/32`).",
    }),
    ModelDoc(t.FdbEntry, f"{_NODE}.vxlans.IFNAME.fdb[]", "A forwarding entry of a VXLAN device.", {
        "mac": "The destination MAC; the default all-zero MAC makes the flood entry.",
        "dst": "The underlay address of the VTEP that receives these frames.",
    }),
    ModelDoc(t.NeighborSpec, f"{_NODE}.neighbors[]", "A permanent ARP (IPv4) or NDP (IPv6) entry.", {
        "dev": "An interface this topology creates on the node (bridge, veth or VXLAN).",
        "ip": "The neighbour's IP address.",
        "mac": "Its MAC address (unicast).",
    }),
    ModelDoc(t.RouteSpec, f"{_NODE}.routes[]", "A route. A unicast route needs `via` or `dev`; "
             "`blackhole`, `unreachable` and `prohibit` routes take neither.", {
        "to": "Destination network (CIDR, host bits zero) or `default` (0.0.0.0/0 or ::/0, the family "
              "following `via`/`src`).",
        "via": "Gateway. It must be on a connected subnet of the node (an address the manifest gives it), "
               "unless `onlink: true`.",
        "dev": "Output interface (a name the manifest declares on this node; on `host`, any device).",
        "src": "Preferred source address: an address of this node.",
        "metric": "Route priority, lower wins. Unset: the kernel's default (0 for IPv4, 1024 for IPv6).",
        "scope": "`universe`/`global`, `site`, `link`, `host`, `nowhere` or a number 0–255. Unset: `link` for a "
                 "unicast route without `via`, else `universe`.",
        "onlink": "Use `via` even though no address of the node is on its subnet (needs `dev`): the gateway is "
                  "on that link (VXLAN overlays, point-to-point links).",
        "table": f"Routing table: {_TABLE}.",
        "type": "`unicast` forwards; `blackhole` drops silently; `unreachable` and `prohibit` drop with an ICMP "
                "error.",
    }),
    ModelDoc(t.RuleSpec, f"{_NODE}.rules[]", "A policy routing rule: traffic that matches every selector "
             "given is looked up in `table`.", {
        "from": "Source address or network.",
        "to": "Destination address or network.",
        "iif": "Incoming interface (`lo` matches the node's own traffic).",
        "oif": "Outgoing interface (for sockets bound to a device).",
        "fwmark": "Packet mark: `VALUE` or `VALUE/MASK`, decimal or `0x` hex.",
        "priority": "Rule priority, lower is tried first. Unset: a stable one per family in file order "
                    "(32000, 31999, …) so that re-applying changes nothing.",
        "table": f"The table to look up: {_TABLE}.",
    }),
    ModelDoc(t.NatRule, f"{_NODE}.nat[]", "One NAT rule: exactly one of its keys.", {
        "masquerade": "Source NAT to the outgoing interface's address (POSTROUTING).",
        "snat": "Source NAT to a fixed address (POSTROUTING).",
        "dnat": "Destination NAT of a port (PREROUTING, and OUTPUT for the node's own traffic).",
    }),
    ModelDoc(t.Masquerade, f"{_NODE}.nat[].masquerade", "Masquerade traffic from a network.", {
        "source": _NAT_SOURCE,
        "out_interface": _OUT_INTERFACE,
    }),
    ModelDoc(t.Snat, f"{_NODE}.nat[].snat", "Source NAT to a fixed address.", {
        "source": _NAT_SOURCE,
        "to_source": "The address the traffic leaves with.",
        "out_interface": _OUT_INTERFACE,
    }),
    ModelDoc(t.Dnat, f"{_NODE}.nat[].dnat", "Destination NAT: a published port.", {
        "destination": "Only traffic to this address or network. Unset: any destination.",
        "in_interface": _IN_INTERFACE,
        "protocol": "`tcp` or `udp`.",
        "port": "The destination port to translate.",
        "to": "Where connections go: `IP` (port unchanged), `IP:PORT` or `[IPv6]:PORT`.",
    }),
    ModelDoc(t.PingCheck, "checks[].ping", "ICMP/ICMPv6 echo requests sent from inside a node.", {
        "from": "The node that pings.",
        "to": "An IP address, or `NODE:IFNAME` for that interface's first address.",
        "count": "Echo requests to send; one reply is enough to count as reachable.",
        "timeout": "Seconds to wait for the replies.",
        "expect": "`reachable` passes when a reply comes; `unreachable` passes only when none does.",
    }),
    ModelDoc(t.RouteCheck, "checks[].route", "The kernel's own route lookup in a node (RTM_GETROUTE, as "
             "`ip route get`), compared with what is expected.", {
        "node": "The node whose routing decides.",
        "to": "The destination address to look up.",
        "from": "Source address of the packet (policy rules may select on it).",
        "iif": "The packet arrives on this interface (a forwarded packet) instead of being sent by the node.",
        "fwmark": "Packet mark: `VALUE` or `VALUE/MASK`.",
        "expect": "What the lookup must give; fields left out are not compared.",
    }),
    ModelDoc(t.RouteExpect, "checks[].route.expect", "The result a route check expects.", {
        "via": "The gateway.",
        "dev": "The output interface (the name the manifest uses).",
        "table": "The table the route was found in: a number, `main`, `local`, `default` or a name from "
                 "`tables`.",
        "src": "The source address the kernel picks.",
        "type": "The route type found; `none` means no route at all (\"Network is unreachable\").",
    }),
    ModelDoc(t.MeshCheck, "checks[].mesh", "Every ordered pair of nodes: the first pings every address of "
             "the second.", {
        "nodes": "`all` (every node but `host`) or a list of node names (`host` may be listed).",
        "family": "Which addresses to ping: `ipv4`, `ipv6` or `both`.",
        "timeout": "Seconds to wait for each reply.",
    }),
    ModelDoc(t.SourceCheck, "checks[].source", "A UDP datagram to a one-shot listener in the node that owns "
             "`to`: the source address it arrives with (proves SNAT/MASQUERADE, or its absence).", {
        "from": "The sending node.",
        "to": "An address of the topology, or `NODE:IFNAME`: the listener runs in the node that has it.",
        "port": "The UDP port to listen on.",
        "expect": "`preserved` (the sender's own address arrives: no NAT on the path) or the source address "
                  "the listener must see.",
        "timeout": "Seconds to wait for the datagram.",
    }),
    ModelDoc(t.TcpCheck, "checks[].tcp", "A TCP connection to `to:port` must arrive at a one-shot listener in "
             "`serve.node` (proves a DNAT end to end).", {
        "from": "The connecting node.",
        "to": "The address connected to (an IP or `NODE:IFNAME`), e.g. a published address.",
        "port": "The port connected to.",
        "serve": "Where the connection must arrive.",
        "timeout": "Seconds to wait for the connection.",
    }),
    ModelDoc(t.TcpServe, "checks[].tcp.serve", "The listener of a tcp check.", {
        "node": "The node the listener runs in.",
        "port": "The port it listens on (the DNAT target's port).",
    }),
)


# --- the models behind a manifest ------------------------------------------------------------------

def _models_in(tp: Any) -> list[type[BaseModel]]:
    """Every pydantic model named inside a type annotation (through Optional, list, dict, Annotated)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    found: list[type[BaseModel]] = []
    for arg in get_args(tp):
        found += _models_in(arg)
    return found


def reachable_models(root: type[BaseModel] = t.Topology) -> list[type[BaseModel]]:
    """Every model a manifest is made of, the root first; the generated `{KIND: SPEC}` check items
    (whose one field is their kind's spec) are skipped for the spec itself."""
    seen: list[type[BaseModel]] = []
    todo = [root]
    while todo:
        model = todo.pop(0)
        if model in seen:
            continue
        if issubclass(model, t.Check):
            todo += [spec for spec in t.CHECK_SPECS if spec.kind in model.model_fields]
            continue
        seen.append(model)
        for field in model.model_fields.values():
            todo += _models_in(field.annotation)
    return seen


def yaml_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields as a manifest spells them (`from`, not `from_`)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def problems() -> list[str]:
    """What the table above lacks or names wrongly: empty when it matches the models."""
    documented = {doc.model: doc for doc in MODELS}
    out = []
    for model in reachable_models():
        doc = documented.get(model)
        if doc is None:
            out.append(f"model {model.__name__} has no ModelDoc in cnetctl/model/fielddocs.py MODELS")
            continue
        out += [f"{model.__name__}.{f}: no description in cnetctl/model/fielddocs.py"
                for f, info in yaml_fields(model).items() if not doc.fields.get(f, "").strip()]
    for doc in MODELS:
        if doc.model not in reachable_models():
            out.append(f"{doc.model.__name__}: documented but no longer part of a manifest")
        out += [f"{doc.model.__name__}.{f}: documented but the model has no such field"
                for f in doc.fields if f not in yaml_fields(doc.model)]
    return out


# --- the JSON Schema ---------------------------------------------------------------------------------

def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (from the models), with `$id` and every description from the table."""
    schema = t.Topology.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})   # made draft 7's `definitions` at the end
    for doc in MODELS:
        target = schema if doc.model is t.Topology else defs.get(doc.model.__name__)
        if target is None:
            continue
        target["description"] = doc.about
        for name, meaning in doc.fields.items():
            prop = target.get("properties", {}).get(name)
            if prop is not None:
                prop["description"] = meaning
    about = {doc.model: doc.about for doc in MODELS}
    for spec in t.CHECK_SPECS:     # the `{KIND: SPEC}` items
        item = defs.get(f"{spec.__name__}Item")
        if item is not None:
            item["description"] = f"A `{spec.kind}` check."
            item["properties"][spec.kind]["description"] = about.get(spec, "")
    head = {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, "title": "cnetctl manifest (apiVersion cnetctl/v1)"}
    schema.pop("title", None)
    draft7: dict[str, Any] = _as_draft7({**head, **schema})
    return draft7


def _as_draft7(node: Any) -> Any:
    """The 2020-12 words pydantic writes, in draft 7's: `$defs` -> `definitions` (and the `$ref`s to
    them), `prefixItems` -> an `items` list with no further items."""
    if isinstance(node, list):
        return [_as_draft7(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            value = value.replace("#/$defs/", "#/definitions/")
        out["definitions" if key == "$defs" else key] = _as_draft7(value)
    if "prefixItems" in out:
        out["items"] = out.pop("prefixItems")
        out["additionalItems"] = False
    return out


# --- docs/manifest.md --------------------------------------------------------------------------------

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _named_types() -> list[tuple[Any, str]]:
    """The manifest's own value types, by what a reader needs to write."""
    return [
        (t.IfName, "interface name"), (t.Cidr, "ADDRESS/PREFIX"), (t.Network, "network (CIDR)"),
        (t.RouteDst, "network (CIDR) or `default`"), (t.IP, "IP address"), (t.IpOrNetwork, "IP address or network"),
        (t.IfNameMaybeNegated, "interface name or `!NAME`"), (t.DnatTo, "`IP`, `IP:PORT` or `[IPv6]:PORT`"),
        (t.SysctlKey, "sysctl key"), (t.SysctlValue, "integer or string"), (t.Table, "table: number or name"),
        (t.Scope, "scope name or 0–255"), (t.Endpoint, "`NODE:IFNAME`"), (t.Link, "`[NODE:IFNAME, NODE:IFNAME]`"),
        (t.Mac, "MAC address"), (t.UnicastMac, "unicast MAC address"), (t.Fwmark, "`VALUE` or `VALUE/MASK`"),
    ]


def _constraints(metadata: list[Any]) -> str:
    parts = []
    for m in metadata:
        if isinstance(m, FieldInfo):
            parts.append(_constraints(m.metadata))
        elif isinstance(m, annotated_types.Gt):
            parts.append(f"> {m.gt}")
        elif isinstance(m, annotated_types.Ge):
            parts.append(f"≥ {m.ge}")
        elif isinstance(m, annotated_types.Le):
            parts.append(f"≤ {m.le}")
        elif getattr(m, "pattern", None):
            parts.append(f"matching `{m.pattern}`")
    return ", ".join(p for p in parts if p)


def type_text(tp: Any, metadata: list[Any] | None = None) -> str:
    """A field's type in words: `list of ADDRESS/PREFIX`, `integer, ≥ 68, ≤ 65535`, a link to a model."""
    params = (tp, *(metadata or ()))
    whole = cast(Any, Annotated)[params] if metadata else tp
    for named, words in _named_types():
        if whole == named or tp is named:
            return words
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return type_text(args[0], [*args[1:], *(metadata or [])])
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return " or ".join(type_text(a, metadata if len(rest) == 1 else None) for a in rest)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"map of {type_text(args[0])} → {type_text(args[1])}"
    if isinstance(tp, type) and issubclass(tp, t.Check):     # a generated `{KIND: SPEC}` item
        kind, spec = next(iter(tp.model_fields.items()))
        return f"`{{{kind}: …}}` ({type_text(spec.annotation)})"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    base = _SCALARS.get(tp, getattr(tp, "__name__", str(tp)))
    extra = _constraints(metadata or [])
    return f"{base}, {extra}" if extra else base


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "`{" + ", ".join(f"{k}: {v}" for k, v in value.model_dump(by_alias=True).items()) + "}`"
    if value in ([], {}):
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if "\\|" not in text else text


def markdown() -> str:
    """The field reference: one section per model, a table of its fields (type, default, meaning)."""
    lines: list[str] = []
    for doc in MODELS:
        where = doc.where if doc.model is t.Topology else f"`{doc.where}`"
        lines += [f"### {doc.model.__name__}", "", f"Written at {where}. {doc.about}", "",
                  "| field | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in yaml_fields(doc.model).items():
            lines.append(f"| `{name}` | {_cell(type_text(field.annotation, field.metadata))} | "
                         f"{default_text(field)} | {_cell(doc.fields.get(name, ''))} |")
        lines.append("")
    return "\n".join(lines)
