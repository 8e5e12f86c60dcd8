"""ICE candidate lines (RFC 8839 §5.1): the one grammar, written and read here.

``candidate:<foundation> <component> udp <priority> <ip> <port> typ <type> [raddr <ip> rport <port>]``.
``parse_candidate`` reads a whole line (what a connection uses); ``candidate_kind`` only finds its
``typ`` (what the portal's message validation needs: a line it cannot fully parse is still passed on,
and the receiving tunnel drops just that line with a WARN).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .addr import Address, family, parse_address

TYPE_PREFERENCE = {"host": 126, "prflx": 110, "srflx": 100, "relay": 0}
CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")


@dataclass(frozen=True)
class RemoteCandidate:
    kind: str
    addr: Address
    priority: int
    line: str = ""

    @property
    def family(self) -> int:
        return family(self.addr)


def candidate_priority(kind: str, local_preference: int = 65535) -> int:
    return (TYPE_PREFERENCE[kind] << 24) | (local_preference << 8) | (256 - 1)


def candidate_line(kind: str, addr: Address, priority: int, related: Address | None = None) -> str:
    foundation = hashlib.sha1(f"{kind}{addr[0]}".encode()).hexdigest()[:8]
    line = f"candidate:{foundation} 1 udp {priority} {addr[0]} {addr[1]} typ {kind}"
    if related is not None and kind != "host":
        line += f" raddr {related[0]} rport {related[1]}"
    return line


class CandidateError(ValueError):
    pass


def parse_candidate(line: str) -> RemoteCandidate:
    """Parse ``candidate:<foundation> <component> udp <priority> <ip> <port> typ <type> ...``."""
    tokens = line.split()
    try:
        if not tokens or not tokens[0].startswith("candidate:") or tokens[2].lower() != "udp":
            raise CandidateError(f"not a UDP ICE candidate: {line!r}")
        priority = int(tokens[3])
        host = tokens[4]
        addr = parse_address(f"[{host}]:{tokens[5]}" if ":" in host else f"{host}:{tokens[5]}")
        kind = tokens[tokens.index("typ") + 1]
    except (IndexError, ValueError) as exc:
        raise CandidateError(f"malformed ICE candidate {line!r}: {exc}") from exc
    if kind not in TYPE_PREFERENCE:
        raise CandidateError(f"unknown candidate type {kind!r}")
    if not 0 < priority < 2**32:
        raise CandidateError("candidate priority out of range")
    return RemoteCandidate(kind, addr, priority, line)


def candidate_kind(line: str) -> str:
    """The ``typ`` of a line that starts with ``candidate:``; CandidateError if it names none we know."""
    if not line.startswith("candidate:"):
        raise CandidateError("an ICE candidate must be a string starting with 'candidate:'")
    tokens = line.split()
    for i, token in enumerate(tokens[:-1]):
        if token == "typ" and tokens[i + 1] in CANDIDATE_TYPES:
            return tokens[i + 1]
    raise CandidateError(f"ICE candidate {line!r} lacks 'typ host|srflx|prflx|relay'")
