"""cnetctl: declarative container networks on the real Linux kernel."""

__version__ = "0.1.0"

# Routing protocol number that marks routes and rules as installed by cnetctl
# (`ip route` prints "proto 147"); docs/SPEC.md §3 pins it.
RTPROT_CNETCTL = 147


def owner_label(topology: str) -> str:
    """The ifalias carried by every interface (and netns `lo`) a topology owns."""
    return f"cnetctl:{topology}"
