"""Credential derivations shared by connlib, fake_portal and the test fixtures.

coturn's TURN REST scheme (``use-auth-secret``): the username is ``"<expiry>:<salt>"`` and the
password is ``base64(HMAC-SHA1(secret, username))``. STUN long-term keys are MD5(user:realm:pass).
"""

from __future__ import annotations

import base64
import hashlib

TYPE_CHECKING = False  # ``typing`` for the type checker only: its import is ~10 % of ``allocate``'s start-up
if TYPE_CHECKING:
    from typing import Any

REALM = "firezone"


# HMAC-SHA1 with its key schedule computed once per key: a relay's long-term key or an ICE
# password signs every message of a session (connlib.core.stun), a relay's secret every peer's
# REST password (the portal's fan-out), and the key setup is a third of a short message's MAC.
# The two padded-key SHA-1 states are kept as hashlib objects: copying those is cheaper than copying
# an ``hmac.HMAC`` (a Python-level copy around OpenSSL's HMAC context, ~40 % more instructions).
_HMAC_STATES: dict[bytes, tuple[Any, Any]] = {}
_MAX_HMAC_KEYS = 256
_SHA1_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def hmac_sha1(key: bytes, data: bytes | bytearray) -> bytes:
    """RFC 2104 HMAC-SHA1 (what ``hmac.digest(key, data, "sha1")`` returns)."""
    states = _HMAC_STATES.get(key)
    if states is None:
        if len(_HMAC_STATES) >= _MAX_HMAC_KEYS:
            _HMAC_STATES.clear()
        block = hashlib.sha1(key).digest() if len(key) > _SHA1_BLOCK else key
        block = block.ljust(_SHA1_BLOCK, b"\x00")
        states = _HMAC_STATES[key] = (hashlib.sha1(block.translate(_IPAD)), hashlib.sha1(block.translate(_OPAD)))
    inner, outer = states
    inner = inner.copy()
    inner.update(data)
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.digest()


def rest_password(secret: str, username: str) -> str:
    return base64.b64encode(hmac_sha1(secret.encode(), username.encode())).decode()


def rest_credentials(secret: str, expires_at: int, salt: str) -> tuple[str, str]:
    """Return ``(username, password)`` valid on a coturn started with ``static-auth-secret=secret``."""
    username = f"{expires_at}:{salt}"
    return username, rest_password(secret, username)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()
