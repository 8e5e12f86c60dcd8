#!/usr/bin/env python3
"""Peer container healthcheck: healthy while the peer's portal channel is joined.

    peer_health.py STATUS_FILE       # e.g. peer_health.py /run/connlib-status.json

``connlib run --status-file`` keeps its portal channel's state there (``{"portal": "joined", ...}``).
The check needs no access to the portal's admin API, which wants a token the peers do not hold.
Standard library only (runs with Debian's python3). The compose file lets the client start only once
its gateway is healthy, so the client's first connection request finds the gateway online.
"""

import json
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as status_file:
            state = json.load(status_file).get("portal")
    except (OSError, ValueError) as exc:
        print(f"no portal state yet: {exc}")
        return 1
    print(f"portal channel {state}")
    return 0 if state == "joined" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
