"""The manifest (apiVersion cnetctl/v1) as strict, frozen pydantic models.

Field-level syntax lives here (types, ranges, name patterns, CIDRs); checks that
need the whole topology (references, duplicates, gateways) live in normalize.py.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NamedTuple, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    GetPydanticSchema,
    Tag,
    create_model,
    model_validator,
)
from pydantic_core import CoreSchema, core_schema

from .natspec import DnatTarget

# Name patterns. The *_PATTERN strings go to pydantic and the JSON Schema, where `$` means the
# end of the text; the compiled *_RE end in \Z because Python's `$` also matches before a
# trailing newline (`re.match(TOPOLOGY_NAME_RE, "lab\n")` must fail).
TOPOLOGY_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,15}$"
NODE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"
NETNS_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
TABLE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"


def _python_re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern[:-1] + r"\Z")


TOPOLOGY_NAME_RE = _python_re(TOPOLOGY_NAME_PATTERN)
NODE_NAME_RE = _python_re(NODE_NAME_PATTERN)
NETNS_NAME_RE = _python_re(NETNS_NAME_PATTERN)
TABLE_NAME_RE = _python_re(TABLE_NAME_PATTERN)
IFNAME_RE = re.compile(r"[^/:\s]{1,15}")      # use with fullmatch
# What a name pattern means, for error messages: pattern -> (what, max length, rule).
PATTERN_HELP = {
    TOPOLOGY_NAME_PATTERN: ("topology name", 16, "1-16 characters: lowercase letters, digits and '-', "
                                                 "starting with a letter"),
    NODE_NAME_PATTERN: ("node name", 32, "1-32 characters: letters, digits, '_' and '-', starting with a letter "
                                         "or digit"),
    NETNS_NAME_PATTERN: ("netns name", 64, "1-64 characters: letters, digits, '_', '.' and '-', starting with a "
                                           "letter, digit or '_'"),
    TABLE_NAME_PATTERN: ("table name", 64, "1-64 characters: letters, digits, '_' and '-', starting with a "
                                           "letter or '_'"),
}


def is_topology_name(v: str) -> bool:
    return TOPOLOGY_NAME_RE.match(v) is not None


def is_node_name(v: str) -> bool:
    return NODE_NAME_RE.match(v) is not None


def is_netns_name(v: str) -> bool:
    return NETNS_NAME_RE.match(v) is not None and v not in (".", "..")


def name_problem(pattern: str, v: str) -> str:
    """Why `v` does not match one of the name patterns above, as an error message."""
    what, limit, rule = PATTERN_HELP[pattern]
    if len(v) > limit:
        return f"invalid {what} {v!r}: {len(v)} characters, at most {limit}"
    return f"invalid {what} {v!r}: {rule}"


U32_MAX = 2**32 - 1
TABLE_ALIASES = {"main": 254, "local": 255, "default": 253}
SCOPES = {"universe": 0, "global": 0, "site": 200, "link": 253, "host": 254, "nowhere": 255}
ROUTE_TYPES = ("unicast", "blackhole", "unreachable", "prohibit")

# Sysctls that follow the network namespace. Keys outside these would change
# the whole machine from inside a "container", so they are refused.
NAMESPACED_SYSCTL_PREFIXES = ("net.ipv4.", "net.ipv6.", "net.netfilter.", "net.unix.", "net.mpls.")
NAMESPACED_SYSCTL_KEYS = {"net.core.somaxconn", "net.core.xfrm_acq_expires", "net.core.xfrm_aevent_etime",
                          "net.core.xfrm_aevent_rseqth", "net.core.xfrm_larval_drop"}


def control_character(v: str) -> str | None:
    """The first control (or other unprintable) character of `v`, as U+XXXX: a NUL in a name
    is where the kernel cuts it, and none of them belongs in a name a user has to type."""
    for c in v:
        if not c.isprintable() and c != " ":
            return f"U+{ord(c):04X}"
    return None


def ifname_problem(v: str) -> str | None:
    """Why the kernel would refuse (or, for a NUL, silently truncate) interface name `v`."""
    bad = control_character(v)
    if bad:
        return f"invalid interface name {v!r}: contains the control character {bad}"
    if v in (".", "..") or not IFNAME_RE.fullmatch(v) or len(v.encode()) > 15:
        return f"invalid interface name {v!r}: 1-15 bytes, no '/', ':' or whitespace"
    return None


def _ifname(v: str) -> str:
    problem = ifname_problem(v)
    if problem:
        raise ValueError(problem)
    return v


def _cidr(v: str) -> str:
    try:
        iface = ipaddress.ip_interface(v)
    except ValueError:
        raise ValueError(f"invalid address {v!r}: expected ADDRESS/PREFIX, e.g. 10.0.0.1/24") from None
    if "/" not in v:
        raise ValueError(f"address {v!r} needs a prefix length, e.g. {v}/24")
    return str(iface)


def _network(v: str) -> str:
    try:
        return str(ipaddress.ip_network(v, strict=True))
    except ValueError as err:
        if "has host bits set" in str(err):
            net = ipaddress.ip_network(v, strict=False)
            raise ValueError(f"{v!r} has host bits set (did you mean {net}?)") from None
        raise ValueError(f"invalid network {v!r}: expected CIDR, e.g. 10.0.0.0/24") from None


def _route_dst(v: str) -> str:
    return v if v == "default" else _network(v)


def _ip(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        if "/" in v:
            raise ValueError(f"invalid IP address {v!r}: give a single address, without /PREFIX") from None
        raise ValueError(f"invalid IP address {v!r}") from None


def _ip_or_network(v: str) -> str:
    return _network(v) if "/" in v else _ip(v)


def _ifname_maybe_negated(v: str) -> str:
    problem = ifname_problem(v[1:] if v.startswith("!") else v)
    if problem and "control character" in problem:
        raise ValueError(problem)
    if problem:
        raise ValueError(f"invalid interface name {v!r}: IFNAME or !IFNAME, 1-15 bytes, no '/', ':' or "
                         "whitespace")
    return v


def sysctl_parts(key: str) -> list[str]:
    """The path components of a sysctl key, as sysctl(8) reads it: when the first separator is
    '/', '/' separates and a '.' belongs to a name (net/ipv4/conf/eth0.100/rp_filter); otherwise
    '.' separates and a '/' stands for a '.' in a name (net.ipv4.conf.eth0/100.rp_filter)."""
    slash, dot = key.find("/"), key.find(".")
    if slash != -1 and (dot == -1 or slash < dot):
        return key.split("/")
    return [part.replace("/", ".") for part in key.split(".")]


def canonical_sysctl(key: str) -> str:
    """One spelling per sysctl: dotted unless a component holds a dot (an interface such as
    eth0.100), then the '/' form. net/ipv4/ip_forward -> net.ipv4.ip_forward."""
    parts = sysctl_parts(key)
    return "/".join(parts) if any("." in p for p in parts) else ".".join(parts)


def sysctl_key_problem(key: str) -> str | None:
    """Why `key` is not a network-namespaced sysctl that resolves under /proc/sys/net/, or None."""
    parts = sysctl_parts(key)
    namespaced = (len(parts) >= 3 and parts[0] == "net" and f"net.{parts[1]}." in NAMESPACED_SYSCTL_PREFIXES) \
        or ".".join(parts) in NAMESPACED_SYSCTL_KEYS
    if not namespaced:
        return (f"{key!r} is not a network-namespaced sysctl (allowed: net.ipv4.*, net.ipv6.*, "
                "net.netfilter.*, net.unix.*, net.core.somaxconn …)")
    if len(key) > 255 or any(p in ("", ".", "..") or control_character(p) or any(c.isspace() for c in p)
                             for p in parts):
        return f"malformed sysctl key {key!r}"
    return None


def _sysctl_key(v: str) -> str:
    problem = sysctl_key_problem(v)
    if problem:
        raise ValueError(problem)
    return v


class Fwmark(NamedTuple):
    """A packet mark as a manifest writes it, 'VALUE' or 'VALUE/MASK' (decimal or 0x hex),
    parsed once here: nothing downstream splits the text again."""

    value: int
    mask: int | None = None   # None: none written; a rule then compares every bit

    @property
    def rule_mask(self) -> int:
        """The mask a policy rule matches with (the kernel's default: every bit)."""
        return U32_MAX if self.mask is None else self.mask

    def text(self) -> str:
        """In hex, as written: 0x10 or 0x10/0xff."""
        return "/".join(hex(n) for n in (self.value, self.mask) if n is not None)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # Validated as what a manifest may write (an integer or a string: the JSON Schema says
        # so), then parsed; a report (model_dump) quotes it back as its text.
        return core_schema.no_info_after_validator_function(
            _fwmark, handler.generate_schema(StrictInt | str),
            serialization=core_schema.plain_serializer_function_ser_schema(cls.text))


def _fwmark(v: int | str) -> Fwmark:
    """fwmark as 'VALUE' or 'VALUE/MASK' (decimal or 0x hex)."""
    text = str(v)
    parts = text.split("/")
    try:
        if len(parts) > 2:
            raise ValueError
        nums = [int(p, 0) for p in parts]
    except ValueError:
        raise ValueError(f"invalid fwmark {text!r}: expected 0x10 or 0x10/0xff") from None
    if any(n < 0 or n > U32_MAX for n in nums):
        raise ValueError(f"fwmark {text!r} out of range 0..0xffffffff")
    return Fwmark(nums[0], nums[1] if len(nums) > 1 else None)


def _table(v: int | str) -> int | str:
    if isinstance(v, bool):
        raise ValueError("table must be a number or a name")
    if isinstance(v, int):
        if not 1 <= v <= U32_MAX:
            raise ValueError(f"table {v} out of range 1..{U32_MAX}")
        return v
    if v.isdigit():
        return _table(int(v))
    if not TABLE_NAME_RE.match(v):
        raise ValueError(f"invalid table name {v!r}")
    return v


def _scope(v: int | str) -> int | str:
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255:
        return v
    if isinstance(v, str) and v in SCOPES:
        return v
    raise ValueError(f"invalid scope {v!r}: one of {', '.join(SCOPES)} or 0..255")


def _link(v: Any) -> Any:
    """A link is a pair of ends; say so instead of pydantic's tuple wording."""
    if isinstance(v, list | tuple) and len(v) != 2:
        raise ValueError(f"a link has exactly 2 ends, [NODE:IFNAME, NODE:IFNAME]; got {len(v)}")
    if not isinstance(v, list | tuple):
        raise ValueError("a link is a list of 2 ends, e.g. [ns1:eth0, host:br0]")
    return v


def _endpoint(v: str) -> str:
    node, sep, ifname = v.partition(":")
    if not sep:
        raise ValueError(f"invalid link end {v!r}: expected NODE:IFNAME (interface 1-15 chars)")
    if not is_node_name(node):
        raise ValueError(f"invalid link end {v!r}: {name_problem(NODE_NAME_PATTERN, node)}")
    problem = ifname_problem(ifname)
    if problem and "control character" in problem:
        raise ValueError(f"invalid link end {v!r}: {problem}")
    if problem:
        raise ValueError(f"invalid link end {v!r}: expected NODE:IFNAME (interface 1-15 chars)")
    return v


IfName = Annotated[str, AfterValidator(_ifname)]
Cidr = Annotated[str, AfterValidator(_cidr)]
Network = Annotated[str, AfterValidator(_network)]
RouteDst = Annotated[str, AfterValidator(_route_dst)]
IP = Annotated[str, AfterValidator(_ip)]
IpOrNetwork = Annotated[str, AfterValidator(_ip_or_network)]
IfNameMaybeNegated = Annotated[str, AfterValidator(_ifname_maybe_negated)]
# A DNAT target is split into (address, port) here, once: a string in the manifest and its
# JSON Schema, a DnatTarget from then on.
DnatTo = Annotated[DnatTarget, GetPydanticSchema(lambda _type, _handler: core_schema.no_info_after_validator_function(
    DnatTarget.parse, core_schema.str_schema(), serialization=core_schema.to_string_ser_schema()))]
SysctlKey = Annotated[str, AfterValidator(_sysctl_key)]
StrictInt = Annotated[int, Field(strict=True)]   # `true` is not 1
Table = Annotated[StrictInt | str, AfterValidator(_table)]
Scope = Annotated[StrictInt | str, AfterValidator(_scope)]
Endpoint = Annotated[str, AfterValidator(_endpoint)]
Link = Annotated[tuple[Endpoint, Endpoint], BeforeValidator(_link)]
# Numbers are strict: YAML gives real integers, and lax mode would read `mtu: true`
# as 1 or `metric: "10"` as 10 without a word.
Mtu = Annotated[int, Field(strict=True, ge=68, le=65535)]
Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
U32 = Annotated[int, Field(strict=True, ge=0, le=U32_MAX)]
U32NonZero = Annotated[int, Field(strict=True, ge=1, le=U32_MAX)]


def _timeout(default: float) -> Any:
    return Field(default, strict=True, gt=0, le=60)



class Strict(BaseModel):
    # No populate_by_name: the manifest spells fields by alias only (`from`, never `from_`).
    model_config = ConfigDict(extra="forbid", frozen=True)


def _exactly_one(model: BaseModel, kinds: tuple[str, ...], what: str) -> None:
    given = [k for k in kinds if getattr(model, k) is not None]
    if len(given) != 1:
        got = f"got {' and '.join(given)}" if given else "got none"
        raise ValueError(f"{what} needs exactly one of: {', '.join(kinds)} ({got})")


class Settings(Strict):
    nat_backend: Literal["auto", "nftables", "iptables"] = "auto"
    forward: Literal["none", "accept"] = "none"


class InterfaceSpec(Strict):
    addresses: list[Cidr] = []
    mtu: Mtu | None = None


class BridgeSpec(Strict):
    addresses: list[Cidr] = []
    mtu: Mtu | None = None


class RouteSpec(Strict):
    to: RouteDst
    via: IP | None = None
    dev: IfName | None = None
    src: IP | None = None
    metric: U32 | None = None
    scope: Scope | None = None
    onlink: bool = False
    table: Table = "main"
    type: Literal["unicast", "blackhole", "unreachable", "prohibit"] = "unicast"

    @model_validator(mode="after")
    def _coherent(self) -> RouteSpec:
        if self.type != "unicast" and (self.via or self.dev):
            raise ValueError(f"a {self.type} route takes no via/dev")
        if self.type == "unicast" and not (self.via or self.dev):
            raise ValueError("a unicast route needs via or dev")
        if self.onlink and not self.via:
            raise ValueError("onlink needs via")
        if self.onlink and not self.dev:
            raise ValueError("onlink needs dev (the kernel cannot guess the interface)")
        return self


class RuleSpec(Strict):
    from_: IpOrNetwork | None = Field(None, alias="from")
    to: IpOrNetwork | None = None
    iif: IfName | None = None
    oif: IfName | None = None
    fwmark: Fwmark | None = None
    priority: U32NonZero | None = None
    table: Table


class Masquerade(Strict):
    source: Network
    out_interface: IfNameMaybeNegated | None = None


class Snat(Strict):
    source: Network
    to_source: IP
    out_interface: IfNameMaybeNegated | None = None


class Dnat(Strict):
    destination: IpOrNetwork | None = None
    in_interface: IfNameMaybeNegated | None = None
    protocol: Literal["tcp", "udp"]
    port: Port
    to: DnatTo


class NatRule(Strict):
    masquerade: Masquerade | None = None
    snat: Snat | None = None
    dnat: Dnat | None = None

    @model_validator(mode="after")
    def _one(self) -> NatRule:
        _exactly_one(self, ("masquerade", "snat", "dnat"), "a NAT rule")
        return self


SysctlValue = Annotated[int | str, Field(union_mode="left_to_right")]


MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")


def _mac(v: str) -> str:
    mac = v.lower()
    if not MAC_RE.match(mac):
        raise ValueError(f"invalid MAC address {v!r}: expected six hex pairs, e.g. 02:42:0a:f4:01:00")
    return mac


def _unicast_mac(v: str) -> str:
    mac = _mac(v)
    if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        raise ValueError(f"MAC address {v!r} is multicast or all-zero: an interface needs a unicast one")
    return mac


Mac = Annotated[str, AfterValidator(_mac)]
UnicastMac = Annotated[str, AfterValidator(_unicast_mac)]
VNI_MAX = 2**24 - 1


class FdbEntry(Strict):
    """Where frames for `mac` go; without mac, the flood entry (broadcast, unknown unicast)."""

    mac: Mac = "00:00:00:00:00:00"
    dst: IP


class VxlanSpec(Strict):
    vni: Annotated[int, Field(strict=True, ge=1, le=VNI_MAX)]
    port: Port = 4789
    local: IP | None = None
    dev: IfName | None = None
    remote: IP | None = None
    fdb: list[FdbEntry] = []
    learning: bool = True
    mac: UnicastMac | None = None
    mtu: Mtu | None = None
    master: IfName | None = None
    addresses: list[Cidr] = []

    @model_validator(mode="after")
    def _one_family(self) -> VxlanSpec:
        given = {name: v for name, v in (("local", self.local), ("remote", self.remote)) if v}
        given.update({f"fdb[{i}].dst": e.dst for i, e in enumerate(self.fdb)})
        versions = {ipaddress.ip_address(v).version for v in given.values()}
        if len(versions) > 1:
            raise ValueError("the underlay mixes IPv4 and IPv6: " +
                             ", ".join(f"{k} {v}" for k, v in given.items()))
        return self


class NeighborSpec(Strict):
    dev: IfName
    ip: IP
    mac: UnicastMac


NodeName = Annotated[str, Field(pattern=NODE_NAME_PATTERN)]


class HostSpec(Strict):
    """A machine a topology spans: `address` is its own underlay address, already configured on
    it (cnetctl finds which host it runs on by it, and tunnels cross-machine links between them)."""

    address: IP


class Node(Strict):
    netns: Annotated[str, Field(pattern=NETNS_NAME_PATTERN)] | None = None
    on: NodeName | None = None      # the host (of `hosts:`) this node lives on
    interfaces: dict[IfName, InterfaceSpec] = {}
    bridges: dict[IfName, BridgeSpec] = {}
    vxlans: dict[IfName, VxlanSpec] = {}
    neighbors: list[NeighborSpec] = []
    routes: list[RouteSpec] = []
    rules: list[RuleSpec] = []
    sysctls: dict[SysctlKey, SysctlValue] = {}
    nat: list[NatRule] = []

    @model_validator(mode="after")
    def _netns_name(self) -> Node:
        if self.netns in (".", ".."):
            raise ValueError("netns may not be '.' or '..'")
        return self


# --- checks ---------------------------------------------------------------------------------------
# A `checks:` item is `{KIND: SPEC}`. Each kind is one CheckSpec subclass in CHECK_SPECS (its fields
# and the names it refers to); cnetctl/checks/ says how it runs and how a report shows it.


@dataclass(frozen=True)
class Ref:
    """A name a check refers to, which normalize resolves (and refuses when it cannot)."""

    what: Literal["node", "target", "table"]   # a node; an IP or NODE:IFNAME to aim at; a routing table
    path: tuple[str | int, ...]                 # below the check's spec, as written in YAML
    value: str | int


class CheckSpec(Strict):
    """What one kind of check takes: the value under its key in a `checks:` item."""

    kind: ClassVar[str]

    def refs(self) -> list[Ref]:
        """The nodes, targets and tables this check names, for normalize to resolve."""
        return []

    def origins(self) -> list[str] | None:
        """The nodes it runs from (None: every node). In a topology that spans machines, a check
        runs on the machine(s) these live on."""
        return []


class PingCheck(CheckSpec):
    kind: ClassVar[str] = "ping"
    from_: str = Field(alias="from")
    to: str
    count: Annotated[int, Field(strict=True, ge=1, le=100)] = 1
    timeout: float = _timeout(1.0)
    expect: Literal["reachable", "unreachable"] = "reachable"

    def refs(self) -> list[Ref]:
        return [Ref("node", ("from",), self.from_), Ref("target", ("to",), self.to)]

    def origins(self) -> list[str] | None:
        return [self.from_]


class RouteExpect(Strict):
    via: IP | None = None
    dev: IfName | None = None
    table: Table | None = None
    src: IP | None = None
    # "none": the kernel finds no route at all ("Network is unreachable")
    type: Literal["unicast", "local", "broadcast", "blackhole", "unreachable", "prohibit", "none"] | None = None


class RouteCheck(CheckSpec):
    kind: ClassVar[str] = "route"
    node: str
    to: IP
    from_: IP | None = Field(None, alias="from")
    iif: IfName | None = None
    fwmark: Fwmark | None = None
    expect: RouteExpect

    def refs(self) -> list[Ref]:
        table = [Ref("table", ("expect", "table"), self.expect.table)] if self.expect.table is not None else []
        return [Ref("node", ("node",), self.node), *table]

    def origins(self) -> list[str] | None:
        return [self.node]


class MeshCheck(CheckSpec):
    kind: ClassVar[str] = "mesh"
    nodes: Literal["all"] | list[str] = "all"
    family: Literal["ipv4", "ipv6", "both"] = "both"
    timeout: float = _timeout(1.0)

    def refs(self) -> list[Ref]:
        return [] if self.nodes == "all" else [Ref("node", ("nodes", j), n) for j, n in enumerate(self.nodes)]

    def origins(self) -> list[str] | None:
        return None if self.nodes == "all" else list(self.nodes)


def _preserved_or_ip(v: str) -> str:
    if v == "preserved":
        return v
    try:
        return _ip(v)
    except ValueError:
        raise ValueError(f"expect is 'preserved' or the source IP the server should see, got {v!r}") from None


class SourceCheck(CheckSpec):
    kind: ClassVar[str] = "source"
    from_: str = Field(alias="from")
    to: str
    port: Port = 7777
    expect: Annotated[str, AfterValidator(_preserved_or_ip)] = "preserved"
    timeout: float = _timeout(2.0)

    def refs(self) -> list[Ref]:
        return [Ref("node", ("from",), self.from_), Ref("target", ("to",), self.to)]

    def origins(self) -> list[str] | None:
        return [self.from_]


class TcpServe(Strict):
    node: str
    port: Port


class TcpCheck(CheckSpec):
    kind: ClassVar[str] = "tcp"
    from_: str = Field(alias="from")
    to: str
    port: Port
    serve: TcpServe
    timeout: float = _timeout(2.0)

    def refs(self) -> list[Ref]:
        return [Ref("node", ("from",), self.from_), Ref("target", ("to",), self.to),
                Ref("node", ("serve", "node"), self.serve.node)]

    def origins(self) -> list[str] | None:
        return [self.from_]


# Every kind, in the order error messages list them.
CHECK_SPECS: tuple[type[CheckSpec], ...] = (PingCheck, RouteCheck, MeshCheck, SourceCheck, TcpCheck)
CHECK_KINDS = tuple(spec.kind for spec in CHECK_SPECS)


class Check(Strict):
    """One `checks:` item: a subclass per kind (made by _item_model), whose one field is its spec."""

    @property
    def kind(self) -> str:
        return next(iter(type(self).model_fields))

    @property
    def spec(self) -> CheckSpec:
        spec = getattr(self, self.kind)
        assert isinstance(spec, CheckSpec)
        return spec


def _item_model(spec: type[CheckSpec]) -> type[Check]:
    """`{KIND: SPEC}` as a model: the manifest's syntax, and in the JSON Schema one `oneOf` member."""
    field: dict[str, Any] = {spec.kind: (spec, ...)}
    return create_model(f"{spec.__name__}Item", __base__=Check, **field)


_ITEMS = {spec.kind: _item_model(spec) for spec in CHECK_SPECS}


class _AnyCheck(Strict):
    """Every kind optional: what an item that is not `{KIND: SPEC}` is parsed as, so that its errors
    are the ones a user can act on (an unknown key and the kinds allowed, 'exactly one of …')."""

    @model_validator(mode="after")
    def _one(self) -> _AnyCheck:
        _exactly_one(self, CHECK_KINDS, "a check")
        return self


_ALL_OPTIONAL: dict[str, Any] = {spec.kind: (spec | None, None) for spec in CHECK_SPECS}
_ANY_CHECK = create_model("AnyCheck", __base__=_AnyCheck, **_ALL_OPTIONAL)


def _tag(kind: str) -> str:
    # A location part with '[' is a type tag to load.py, not a YAML key: errors stay at checks[0].ping.to.
    return f"check[{kind}]"


def _check_tag(v: Any) -> str | None:
    if isinstance(v, Check):
        return _tag(v.kind)
    if isinstance(v, dict) and len(v) == 1:
        return _tag(next(iter(v)))
    return None


def _one_kind(v: Any) -> Any:
    """`{KIND: SPEC}` goes on to its kind; anything else fails as the item with every kind optional.
    A kind given as null counts as not given, as it always has: `{mesh: {}, ping: null}` is a mesh."""
    if isinstance(v, Check):
        return v
    if isinstance(v, dict):
        given = {k: x for k, x in v.items() if not (k in _ITEMS and x is None)}
        if len(given) == 1 and next(iter(given)) in _ITEMS:
            return given
    _ANY_CHECK.model_validate(v)
    raise AssertionError(f"a check that is not {{KIND: SPEC}} passed: {v!r}")   # _AnyCheck refuses it


if TYPE_CHECKING:
    AnyCheck = Check
else:
    # A tagged union: the item's one key picks the model; `check.spec` is that kind's CheckSpec.
    AnyCheck = Annotated[Union[tuple(Annotated[m, Tag(_tag(k))] for k, m in _ITEMS.items())],
                         Discriminator(_check_tag), BeforeValidator(_one_kind)]


class Topology(Strict):
    apiVersion: Literal["cnetctl/v1"]
    name: Annotated[str, Field(pattern=TOPOLOGY_NAME_PATTERN)]
    settings: Settings = Settings()
    tables: dict[Annotated[str, Field(pattern=TABLE_NAME_PATTERN)],
                 U32NonZero] = {}
    # The machines a topology spans (none: the one cnetctl runs on; see cnetctl/hosts.py).
    hosts: dict[NodeName, HostSpec] = {}
    nodes: dict[NodeName, Node]
    links: list[Link] = []
    checks: list[AnyCheck] = []
