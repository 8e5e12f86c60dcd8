"""STUN codec throughput: connlib.core.stun next to aioice.stun on the same messages, same run.

Two operations per message, measured separately: *serialize* (encode, computing MESSAGE-INTEGRITY
and FINGERPRINT where the message has them) and *parse+verify* (decode the canonical wire bytes,
FINGERPRINT checked by both decoders, then verify MESSAGE-INTEGRITY where present). The two
libraries' repeats are interleaved; the ratio is given as min / median / max over the repeats.

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

GOALS = {"parse+verify": 2.0, "serialize": 1.5}  # issue 14: connlib / aioice, mix of the three messages
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
SHORT_TERM_KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
LONG_TERM_KEY = long_term_key("1700000000:bench", "firezone", "c2VjcmV0LXBhc3N3b3Jk")


@dataclass
class Case:
    """One message; ``*_encode`` serializes it, ``*_parse`` parses the same wire bytes (and verifies
    MESSAGE-INTEGRITY where the message has it; FINGERPRINT is checked by both decoders)."""

    name: str
    connlib_encode: Callable[[], object]
    connlib_parse: Callable[[], object]
    aioice_encode: Callable[[], object]
    aioice_parse: Callable[[], object]
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

    def connlib_encode() -> None:
        stun.Message(stun.Method.BINDING, stun.Class.REQUEST, TID, list(attrs)).encode(key, fingerprint=True)

    def connlib_parse() -> None:
        assert stun.decode(wire).verify_integrity(key)

    def aioice_parse() -> None:
        assert aio.parse_message(wire).check_message_integrity(key)

    return Case("Binding request (2.1-like, MI+FP)", connlib_encode, connlib_parse, theirs_encode, aioice_parse)


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

    def connlib_encode() -> None:
        stun.Message(stun.Method.ALLOCATE, stun.Class.SUCCESS, TID, list(attrs)).encode(key, fingerprint=True)

    def connlib_parse() -> None:
        assert stun.decode(wire).verify_integrity(key)

    def aioice_parse() -> None:
        assert aio.parse_message(wire).check_message_integrity(key)

    return Case(
        "ALLOCATE success (2x relayed, MI+FP)",
        connlib_encode,
        connlib_parse,
        theirs_encode,
        aioice_parse,
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

    def connlib_encode() -> None:
        stun.Message(
            stun.Method.ALLOCATE,
            stun.Class.ERROR,
            TID,
            [("ERROR-CODE", (401, "Unauthorized")), ("REALM", "firezone"), ("NONCE", nonce)],
        ).encode(fingerprint=True)

    def connlib_parse() -> None:
        assert stun.decode(wire).error_code == 401

    def aioice_parse() -> None:
        assert aio.parse_message(wire).error_code == 401

    return Case("401 Unauthorized (REALM+NONCE, FP)", connlib_encode, connlib_parse, theirs_encode, aioice_parse)


def _calibrate(op: Callable[[], object], seconds: float) -> int:
    """Iterations per repeat so that one repeat takes about ``seconds``."""
    n = 100
    while True:
        rate, _ = median_rate(op, n, 1)
        if n / rate >= seconds / 4:
            return max(100, int(rate * seconds))
        n *= 4


@dataclass(frozen=True)
class Figure:
    case: str
    op: str  # "parse+verify" or "serialize"
    ours: list[float]  # every repeat's ops/s
    theirs: list[float]
    note: str = ""

    @staticmethod
    def _median(rates: list[float]) -> float:
        return sorted(rates)[len(rates) // 2]

    @property
    def ratios(self) -> list[float]:
        return sorted(o / t for o, t in zip(self.ours, self.theirs, strict=True))


def run(repeats: int, seconds: float) -> list[Figure]:
    figures = []
    for case in (_binding_request(), _allocate_success(), _unauthorized()):
        for op, ours_op, theirs_op in (
            ("parse+verify", case.connlib_parse, case.aioice_parse),
            ("serialize", case.connlib_encode, case.aioice_encode),
        ):
            n = _calibrate(ours_op, seconds)
            # Interleave the two libraries' repeats so that drift (CPU frequency, other load) hits both.
            ours, theirs = [], []
            for _ in range(repeats):
                ours += median_rate(ours_op, n, 1)[1]
                theirs += median_rate(theirs_op, n, 1)[1]
            figures.append(Figure(case.name, op, ours, theirs, case.note))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.codec", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats per case and operation")
    parser.add_argument("--seconds", type=float, default=0.25, help="target duration of one repeat")
    args = parser.parse_args(argv)
    print(f"STUN messages/s, {args.repeats} interleaved repeats each, Python {sys.version.split()[0]}")
    figures = run(args.repeats, args.seconds)
    width = max(len(f.case) for f in figures)
    print(f"{'message':<{width}}  {'operation':<12}  {'connlib':>10}  {'aioice':>10}  connlib/aioice min/median/max")
    for f in figures:
        r = f.ratios
        print(
            f"{f.case:<{width}}  {f.op:<12}  {Figure._median(f.ours):>10,.0f}  {Figure._median(f.theirs):>10,.0f}"
            f"  {r[0]:.2f} / {r[len(r) // 2]:.2f} / {r[-1]:.2f}x" + (f"   ({f.note})" if f.note else "")
        )
    for op in ("parse+verify", "serialize"):
        # Mix of the three messages, one each: harmonic combination of the per-message median rates.
        chosen = [f for f in figures if f.op == op]
        ours = len(chosen) / sum(1 / Figure._median(f.ours) for f in chosen)
        theirs = len(chosen) / sum(1 / Figure._median(f.theirs) for f in chosen)
        # The same per repeat (repeat i of each message), for the ratio's spread.
        spread = sorted(
            sum(1 / f.theirs[i] for f in chosen) / sum(1 / f.ours[i] for f in chosen)
            for i in range(len(chosen[0].ours))
        )
        print(
            f"{op} mix (one of each): connlib {ours:,.0f}/s, aioice {theirs:,.0f}/s, ratio {ours / theirs:.2f}"
            f" (per repeat min / median / max {spread[0]:.2f} / {spread[len(spread) // 2]:.2f} / {spread[-1]:.2f}x)"
        )
        goal = GOALS[op]
        print(f"  goal (issue 14): {op} mix >= {goal}x aioice: {'met' if ours / theirs >= goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
