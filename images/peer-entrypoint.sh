#!/bin/sh
# Entry point of the peer image (connlib client or gateway).
#
# PEER_ROUTES: comma-separated `ip route replace` specs applied before the peer starts, e.g.
#   "172.31.233.11/32 via 172.31.231.11, 172.31.233.12/32 via 172.31.231.12, unreachable default"
# The relays advertise their address on the relay-to-relay network; a peer reaches it through that
# relay's leg on the peer's own network (the relay accepts it: the address is local to it). The
# container needs CAP_NET_ADMIN for this. Nothing else is routed: `unreachable default` replaces Docker's
# default route, so client and gateway networks stay apart even while Docker rebuilds its isolation rules
# (they are briefly absent whenever any network on the host is created or removed).
set -eu
if [ -n "${PEER_ROUTES:-}" ]; then
  echo "$PEER_ROUTES" | tr ',' '\n' | while read -r route; do
    [ -n "$route" ] || continue
    # shellcheck disable=SC2086
    ip route replace $route
    echo "peer-entrypoint: route $route" >&2
  done
fi
# PEER_START_GATE (a TCP port; the harness's stacks, not compose's): the container's first start waits
# until one connection to that port comes in before connlib starts, so that the harness can start the
# container early (an engine round of half a second or more under load) and let connlib go the moment
# it should (the gateway once the relays are online at the portal, the client once the gateway holds
# its relays). Once per container: a restart of it starts connlib at once.
if [ -n "${PEER_START_GATE:-}" ] && [ ! -e /run/peer-start-gate-passed ]; then
  /usr/bin/python3 -S -c 'import socket, sys; socket.create_server(("0.0.0.0", int(sys.argv[1]))).accept()' "$PEER_START_GATE"
  touch /run/peer-start-gate-passed
fi
# exec: the peer becomes tini's child itself, so the signals tini forwards reach it (SIGTERM ends it;
# SIGUSR1/SIGUSR2 idle and resume a client's stream, harness/docker_faults.py).
exec "$@"
