"""``RelayConfig``: one TURN server as a ``Node`` consumes it (what the portal's relay entries become).

Its own small module so that a command that only allocates (``python -m connlib allocate``) need
not load the portal's message types; :mod:`connlib.core.messages` builds these from ``init`` and
``relays_presence`` (``merge_relays``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .addr import Address
from .credentials import REALM


@dataclass(frozen=True)
class RelayConfig:
    """One TURN server as connlib's Node consumes it: merged across address families.

    ``v4``/``v6`` are ``(host, port)`` with the IPv6 host unbracketed, ready for ``sendto``.
    """

    id: str
    v4: Address | None
    v6: Address | None
    username: str
    password: str
    realm: str = REALM
