"""STUN codec throughput: connlib.core.stun next to aioice.stun on the same messages, same run.

One operation = encode the message (computing MESSAGE-INTEGRITY and FINGERPRINT where the message
has them) + decode the canonical wire bytes (FINGERPRINT checked by both decoders) + verify
MESSAGE-INTEGRITY where present. Figures are the median of several repeats (time.perf_counter).

    python -m bench.codec [--repeats 7] [--seconds 0.25]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from aioice import stun as aio

from bench import median_rate
from connlib.core import stun
from connlib.core.credentials import long_term_key

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
SHORT_TERM_KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
LONG_TERM_KEY = long_term_key("1700000000:bench", "firezone", "c2VjcmV0LXBhc3N3b3Jk")


@dataclass
class Case:
    name: str
    connlib_op: Callable[[], object]
    aioice_op: Callable[[], object]
    note: str = ""


def _binding_request() -> Case:
    """Like RFC 5769 §2.1: SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME, MI, FINGERPRINT."""
    attrs = [
        ("SOFTWARE", "STUN test client"),
        ("PRIORITY", 0x6E0001FF),
        ("ICE-CONTROLLED", 0x932FF9B151263B36),
        ("USERNAME", "evtj:h6vY"),
    ]
    key = SHORT_TERM_KEY
    ours = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, TID, list(attrs))
    wire = ours.encode(key, fingerprint=True)

    def theirs_encode() -> bytes:
        m = aio.Message(aio.Method.BINDING, aio.Class.REQUEST, TID, dict(attrs))
        m.add_message_integrity(key)  # adds FINGERPRINT too
        return bytes(m)

    assert theirs_encode() == wire, "aioice and connlib must produce the same bytes"

    def connlib_op() -> None:
        stun.Message(stun.Method.BINDING, stun.Class.REQUEST, TID, list(attrs)).encode(key, fingerprint=True)
        assert stun.decode(wire).verify_integrity(key)

    def aioice_op() -> None:
        theirs_encode()
        assert aio.parse_message(wire).check_message_integrity(key)

    return Case("Binding request (2.1-like, MI+FP)", connlib_op, aioice_op)


def _allocate_success() -> Case:
    """ALLOCATE success: XOR-RELAYED-ADDRESS x2 (v4, v6), XOR-MAPPED-ADDRESS, LIFETIME, MI, FP."""
    relayed = [("203.0.113.5", 49152), ("2001:db8::5", 49153)]
    attrs = [
        ("XOR-RELAYED-ADDRESS", relayed[0]),
        ("XOR-RELAYED-ADDRESS", relayed[1]),
        ("XOR-MAPPED-ADDRESS", ("198.51.100.7", 53421)),
        ("LIFETIME", 600),
    ]
    key = LONG_TERM_KEY
    ours = stun.Message(stun.Method.ALLOCATE, stun.Class.SUCCESS, TID, list(attrs))
    wire = ours.encode(key, fingerprint=True)
    # aioice keeps attributes in a dict, so it can hold only one XOR-RELAYED-ADDRESS: it encodes
    # the message without the second one (less work than ours) and, decoding the same wire bytes,
    # parses both but keeps the last.
    theirs_attrs = dict(attrs)

    def theirs_encode() -> bytes:
        m = aio.Message(aio.Method.ALLOCATE, aio.Class.RESPONSE, TID, dict(theirs_attrs))
        m.add_message_integrity(key)
        return bytes(m)

    parsed = aio.parse_message(wire)
    assert parsed.check_message_integrity(key)
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == ("198.51.100.7", 53421)
    assert stun.decode(wire).get_all("XOR-RELAYED-ADDRESS") == relayed

    def connlib_op() -> None:
        stun.Message(stun.Method.ALLOCATE, stun.Class.SUCCESS, TID, list(attrs)).encode(key, fingerprint=True)
        assert stun.decode(wire).verify_integrity(key)

    def aioice_op() -> None:
        theirs_encode()
        assert aio.parse_message(wire).check_message_integrity(key)

    return Case(
        "ALLOCATE success (2x relayed, MI+FP)",
        connlib_op,
        aioice_op,
        note="aioice encodes only one XOR-RELAYED-ADDRESS (dict); decode input identical",
    )


def _unauthorized() -> Case:
    """401 to an unauthenticated ALLOCATE: ERROR-CODE, REALM, NONCE, FINGERPRINT (as coturn sends)."""
    nonce = "a3f5c0d9e1b27486"
    ours = stun.Message(
        stun.Method.ALLOCATE,
        stun.Class.ERROR,
        TID,
        [("ERROR-CODE", (401, "Unauthorized")), ("REALM", "firezone"), ("NONCE", nonce)],
    )
    wire = ours.encode(fingerprint=True)
    # aioice's NONCE is bytes, ours is text; the wire form is the same.
    theirs_attrs = {"ERROR-CODE": (401, "Unauthorized"), "REALM": "firezone", "NONCE": nonce.encode()}

    def theirs_encode() -> bytes:
        m = aio.Message(aio.Method.ALLOCATE, aio.Class.ERROR, TID, dict(theirs_attrs))
        m.add_fingerprint()
        return bytes(m)

    assert theirs_encode() == wire, "aioice and connlib must produce the same bytes"

    def connlib_op() -> None:
        stun.Message(
            stun.Method.ALLOCATE,
            stun.Class.ERROR,
            TID,
            [("ERROR-CODE", (401, "Unauthorized")), ("REALM", "firezone"), ("NONCE", nonce)],
        ).encode(fingerprint=True)
        assert stun.decode(wire).error_code == 401

    def aioice_op() -> None:
        theirs_encode()
        assert aio.parse_message(wire).error_code == 401

    return Case("401 Unauthorized (REALM+NONCE, FP)", connlib_op, aioice_op)


def _calibrate(op: Callable[[], object], seconds: float) -> int:
    """Iterations per repeat so that one repeat takes about ``seconds``."""
    n = 100
    while True:
        rate, _ = median_rate(op, n, 1)
        if n / rate >= seconds / 4:
            return max(100, int(rate * seconds))
        n *= 4


def run(repeats: int, seconds: float) -> list[tuple[str, float, float, str]]:
    results = []
    for case in (_binding_request(), _allocate_success(), _unauthorized()):
        n = _calibrate(case.connlib_op, seconds)
        # Interleave the two libraries' repeats so that drift (CPU frequency, other load) hits both.
        ours_rates, theirs_rates = [], []
        for _ in range(repeats):
            ours_rates += median_rate(case.connlib_op, n, 1)[1]
            theirs_rates += median_rate(case.aioice_op, n, 1)[1]
        ours, theirs = sorted(ours_rates)[repeats // 2], sorted(theirs_rates)[repeats // 2]
        results.append((case.name, ours, theirs, case.note))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.codec", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="repeats per case (median reported)")
    parser.add_argument("--seconds", type=float, default=0.25, help="target duration of one repeat")
    args = parser.parse_args(argv)
    print(f"STUN encode+decode(+verify) messages/s, median of {args.repeats} repeats, Python {sys.version.split()[0]}")
    results = run(args.repeats, args.seconds)
    width = max(len(name) for name, *_ in results)
    print(f"{'message':<{width}}  {'connlib':>10}  {'aioice':>10}  connlib/aioice")
    total_ours = total_theirs = 0.0
    for name, ours, theirs, note in results:
        print(
            f"{name:<{width}}  {ours:>10,.0f}  {theirs:>10,.0f}  {ours / theirs:>6.2f}x"
            + (f"   ({note})" if note else "")
        )
        total_ours += 1 / ours
        total_theirs += 1 / theirs
    # Mix of the three messages, one each: harmonic combination of the per-message rates.
    mix_ours, mix_theirs = len(results) / total_ours, len(results) / total_theirs
    print(f"{'mix (one of each)':<{width}}  {mix_ours:>10,.0f}  {mix_theirs:>10,.0f}  {mix_ours / mix_theirs:>6.2f}x")
    print(f"ratio connlib/aioice (mix): {mix_ours / mix_theirs:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
