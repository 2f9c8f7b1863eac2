"""NAT and forward-accept rules, two backends with one behaviour.

- nftables.py: libnftables' JSON API (the `nftables` binding), one table
  `inet cnetctl-<name>` per topology and namespace, rewritten whole in one
  atomic transaction; owned by the table's comment `cnetctl:<name>`.
- iptables.py: python-iptables (libiptc, legacy x_tables), chains
  `CNET-<NAME>-<HOOK>` reached by one jump rule per hook commented
  `cnetctl:<name>`; run in a forked child that entered the namespace (no iptc
  handle outlives it, so none pins a namespace), under /run/xtables.lock; each
  chain owned by its last rule, the marker `cnetctl:<name> owner`.
- backend.py: the NatBackend protocol both keep (apply, delete, read; ownership
  proven by a marker inside the object, never inferred from its name), and
  BACKENDS below, the one table of them.
- forward.py: owned ACCEPT rules in a FORWARD chain whose policy DROP is someone
  else's, in either firewall.
What the backends write is computed by the pure functions of cnetctl/nat_rules.py.

Every rule carries its canonical text as a comment: reading the comments back
is how cnetctl knows which rules are live, in either backend.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
from typing import Any

from ...errors import KernelError, UsageError
from ...model.natspec import NatSpec, canonical_order
from ..netns import run_in_each, run_in_netns
from ..rtnl import NetlinkError, Rtnl
from .backend import MissingLibrary, NatBackend
from .forward import forward_apply, forward_delete, forward_drop_chains, forward_read
from .iptables import Iptables, ipt_owners, iptc_available
from .nftables import NFT_HINT, Nftables, nft_available, nft_owners, nft_ruleset

BACKENDS: dict[str, NatBackend] = {backend.name: backend for backend in (Nftables(), Iptables())}

__all__ = ["BACKENDS", "MissingLibrary", "NatBackend", "NatSpec", "backend_warnings", "canonical_order",
           "detect_backend", "firewall_empty", "forward_apply", "forward_delete", "forward_drop_chains", "forward_read",
           "nat_owners", "nat_read", "nft_ruleset", "require_backend"]


# --- backend selection -------------------------------------------------------------------------------
def host_flavour() -> str | None:
    """The family the host's own `iptables` command uses: nftables, iptables (legacy) or None."""
    path = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    if path:
        real = os.path.basename(os.path.realpath(path))
        if "legacy" in real:
            return "iptables"
        if "nft" in real:
            return "nftables"
    return None


def detect_backend() -> str:
    """`auto`: the family the host's own `iptables` command uses (nft -> nftables, legacy -> iptables).

    Without a loadable libnftables, nftables cannot work: auto then takes the iptables
    backend when python-iptables loads (observe's caller warns about it), and otherwise
    stays with nftables so that require_backend names what to install."""
    flavour = host_flavour() or "nftables"
    if flavour == "nftables" and not nft_available() and iptc_available():
        return "iptables"
    return flavour


def require_backend(backend: str) -> None:
    """Fail before any change when a NAT backend's library is missing, saying what to install.

    A missing dependency is a usage problem (exit 2), not a failed kernel operation."""
    try:
        BACKENDS[backend].load()
    except KernelError as err:
        raise UsageError(f"{err}; nothing was changed") from None


def backend_warnings(backends: set[str]) -> list[str]:
    if "iptables" in backends and host_flavour() == "nftables" and not nft_available():
        return ["NAT goes to the iptables backend (legacy x_tables: iptables-legacy-save shows it, "
                "nft list ruleset does not) although this host's iptables is the nf_tables flavour, because "
                f"libnftables cannot be loaded: {NFT_HINT}"]
    return []


# --- reading -----------------------------------------------------------------------------------------
def nat_read(ns: str | None, topology: str, label: str, nft_items: list[dict[str, Any]],
             foreign: list[str]) -> dict[str, list[NatSpec]]:
    """backend -> our NAT rules in `ns`, for each backend holding a table or chains of ours.

    nft_items: `nft -j list ruleset` of `ns`; empty without libnftables, and then the nftables
    backend finds no table without loading the library."""
    out = {}
    for name, backend in BACKENDS.items():
        specs = backend.read(ns, topology, label, nft_items, foreign)
        if specs is not None:
            out[name] = specs
    return out


# --- which namespaces have a firewall at all -----------------------------------------------------------
NETLINK_NETFILTER = 12
NFT_GETTABLE = (10 << 8) | 1    # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETTABLE


def _firewall_empty_here() -> bool:
    """In the calling thread's namespace: no legacy x_tables table and no nf_tables table
    instantiated (False when that cannot be told). Looking instantiates nothing."""
    for v6 in ("", "6"):
        try:
            with open(f"/proc/thread-self/net/ip{v6}_tables_names") as fh:
                if fh.read().split():
                    return False
        except FileNotFoundError:
            pass
    return _nft_tables_here() is False


def _nft_tables_here() -> bool | None:
    """In the calling thread's namespace: whether any nf_tables table exists (None: cannot tell)."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as sock:
            return bool(Rtnl(sock).dump(NFT_GETTABLE, struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)))
    except (OSError, NetlinkError):
        return None


def nat_owners(ns: str | None = None) -> set[str]:
    """Topologies with NAT or forward-accept objects in `ns`, by their owner markers: what
    is left when a state file was lost and the namespaces are gone. Loads libnftables only
    where nf_tables tables exist."""
    owners = ipt_owners(ns)
    if run_in_netns(ns, _nft_tables_here) is not False and nft_available():
        owners |= nft_owners(ns, nft_ruleset(ns))
    return owners


def firewall_empty(namespaces: list[str]) -> set[str]:
    """The namespaces among `namespaces` without any firewall table (nftables or legacy
    iptables), found in one thread: observe reads NAT and forward rules only elsewhere
    (four namespace visits each, most of a 250-pod re-apply)."""
    found = run_in_each([(ns, _firewall_empty_here) for ns in namespaces])
    return {ns for ns, empty in zip(namespaces, found, strict=True) if empty is True}
