#!/usr/bin/env bash
# Run a command in a throw-away world: a new network namespace and mount
# namespace with a private /run/netns and state dir. Everything it creates
# (namespaces, links, routes, rules, iptables/nft rules, sysctls) vanishes
# with it; the real host's network is never touched.
set -euo pipefail
if [ "$#" -eq 0 ]; then echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; fi
# The namespace we start in: inside, tests prove they are elsewhere.
export CNETCTL_OUTER_NETNS=$(stat -L -c %i /proc/self/ns/net)
exec unshare --net --mount -- bash -c '
  set -e
  mount --make-rprivate /
  mkdir -p /run/netns && mount -t tmpfs -o mode=755 tmpfs /run/netns
  mount -t tmpfs tmpfs /run/xtables.lock 2>/dev/null || true
  export CNETCTL_STATE_DIR=$(mktemp -d /tmp/cnetctl-state.XXXXXX)
  export CNETCTL_ISOLATED=1
  ip link set lo up
  trap "rm -rf \"\$CNETCTL_STATE_DIR\"" EXIT
  "$@"
' world "$@"
