"""cnetctl: declarative container networks on the real Linux kernel."""

__version__ = "0.1.0"

# Routing protocol number that marks routes and rules as installed by cnetctl
# (`ip route` prints "proto 147"); docs/SPEC.md §3 pins it.
RTPROT_CNETCTL = 147

OWNER_PREFIX = "cnetctl:"

# Where state files and locks live (--state-dir, CNETCTL_STATE_DIR override it). Here, not in
# state.py, so that the CLI shows it in --help without importing the models.
DEFAULT_STATE_DIR = "/var/lib/cnetctl"


def owner_label(topology: str) -> str:
    """The ifalias carried by every interface (and netns `lo`) a topology owns."""
    return f"{OWNER_PREFIX}{topology}"


def owner_of(label: str | None) -> str | None:
    """The topology an ownership label names (owner_label's inverse), or None when it is not one."""
    label = label or ""
    return label[len(OWNER_PREFIX):] if label.startswith(OWNER_PREFIX) else None
