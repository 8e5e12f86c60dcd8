"""Issue 9 item 10: bounded Retry-After, early reject of oversized junk datagrams."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from connlib.aio import portal_client
from connlib.core import stun


@pytest.mark.parametrize(("header", "expected"), [("99999999", 300.0), ("5", 5.0), ("soon", None)])
def test_retry_after_is_bounded(header, expected):
    exc = SimpleNamespace(response=SimpleNamespace(headers={"Retry-After": header}))
    assert portal_client._retry_after(exc) == expected  # type: ignore[arg-type]


def test_oversized_junk_datagram_is_rejected_before_parsing():
    # A valid-looking header over 64 KiB of junk attributes (type 0x8000 comprehension-optional).
    body = b"\x80\x00\x00\x00" * (65528 // 4)
    junk = bytes([0x00, 0x01]) + len(body).to_bytes(2, "big") + stun.MAGIC_COOKIE.to_bytes(4, "big") + os.urandom(12)
    junk += body
    started = time.perf_counter()
    for _ in range(20):
        with pytest.raises(stun.StunParseError, match="longer than"):
            stun.decode(junk)
    assert (time.perf_counter() - started) / 20 < 0.002  # ~20 ms each without the early reject
