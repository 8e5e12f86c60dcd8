#!/usr/bin/env python3
"""Peer container healthcheck: healthy while the portal's admin API lists this peer as online.

    peer_health.py ROLE ID [ADMIN_URL]       # e.g. peer_health.py gateway gateway http://portal:8080

Standard library only (runs with Debian's python3). The compose file lets the client start only once
its gateway is healthy, so the client's first connection request finds the gateway online.
"""

import json
import sys
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    role, peer_id = argv[0], argv[1]
    admin = argv[2] if len(argv) > 2 else "http://portal:8080"
    try:
        with urllib.request.urlopen(f"{admin}/api/{role}s", timeout=1.5) as response:
            peers = json.load(response)
    except OSError as exc:
        print(f"portal admin API unreachable: {exc}")
        return 1
    online = any(p.get("external_id") == peer_id and p.get("online") for p in peers)
    print(f"{role} {peer_id} {'online' if online else 'not online'} at the portal")
    return 0 if online else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
