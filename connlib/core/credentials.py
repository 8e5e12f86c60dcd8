"""Credential derivations shared by connlib, fake_portal and the test fixtures.

coturn's TURN REST scheme (``use-auth-secret``): the username is ``"<expiry>:<salt>"`` and the
password is ``base64(HMAC-SHA1(secret, username))``. STUN long-term keys are MD5(user:realm:pass).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

REALM = "firezone"


def rest_password(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def rest_credentials(secret: str, expires_at: int, salt: str) -> tuple[str, str]:
    """Return ``(username, password)`` valid on a coturn started with ``static-auth-secret=secret``."""
    username = f"{expires_at}:{salt}"
    return username, rest_password(secret, username)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()
