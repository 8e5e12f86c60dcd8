"""The schema of the peers' JSON lines (stdout of ``connlib run``), shared by writer and readers.

Every line is one JSON object with ``ts`` (unix seconds), ``role``, ``id`` and ``event``, plus the
fields of one of the dataclasses below. ``Peer`` writes them with ``to_json``; the harness reads
them back (``from_json``) and its checks select on ``LineEvent``. Human logs go to stderr.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar


class LineEvent(StrEnum):
    PORTAL = "portal"
    INIT = "init"
    RELAYS_PRESENCE = "relays_presence"
    NO_RELAYS = "no_relays"
    CONNECTED = "connected"
    CONNECTION_FAILED = "connection_failed"
    PATH_LOST = "path_lost"
    MIGRATING = "migrating"
    RELAY_ADDED = "relay_added"
    RELAY_REMOVED = "relay_removed"
    STREAM = "stream"
    GAP = "gap"
    STATUS = "status"
    RELAYS = "relays"
    STREAM_IDLE = "stream_idle"
    STREAM_RESUMED = "stream_resumed"


@dataclass(frozen=True)
class Line:
    EVENT: ClassVar[LineEvent]
    # JSON names that are Python keywords
    _RENAMES: ClassVar[dict[str, str]] = {}

    def to_json(self) -> dict[str, Any]:
        fields = {self._RENAMES.get(f.name, f.name): getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"event": str(self.EVENT), **fields}


@dataclass(frozen=True)
class PortalState(Line):
    EVENT = LineEvent.PORTAL
    state: str


@dataclass(frozen=True)
class Init(Line):
    EVENT = LineEvent.INIT
    relays: list[str]


@dataclass(frozen=True)
class RelaysPresence(Line):
    EVENT = LineEvent.RELAYS_PRESENCE
    disconnected_ids: list[str]
    connected: list[str]


@dataclass(frozen=True)
class NoRelaysLine(Line):
    EVENT = LineEvent.NO_RELAYS


@dataclass(frozen=True)
class Connected(Line):
    EVENT = LineEvent.CONNECTED
    peer: str
    relay: str | None
    local: str
    remote: str


@dataclass(frozen=True)
class ConnectionFailed(Line):
    EVENT = LineEvent.CONNECTION_FAILED
    peer: str
    reason: str


@dataclass(frozen=True)
class PathLost(Line):
    EVENT = LineEvent.PATH_LOST
    peer: str
    relay: str | None


@dataclass(frozen=True)
class Migrating(Line):
    EVENT = LineEvent.MIGRATING
    _RENAMES = {"from_relay": "from", "to_relay": "to"}
    peer: str
    from_relay: str | None
    to_relay: str | None


@dataclass(frozen=True)
class RelayAdded(Line):
    EVENT = LineEvent.RELAY_ADDED
    relay: str


@dataclass(frozen=True)
class RelayRemoved(Line):
    EVENT = LineEvent.RELAY_REMOVED
    relay: str
    reason: str


@dataclass(frozen=True)
class Stream(Line):
    """The client's echo stream so far (periodic, and once more at exit)."""

    EVENT = LineEvent.STREAM
    sent: int
    delivered: int
    lost: int
    in_flight: int
    gaps: int
    connected: bool | None = None
    relay: str | None = None


@dataclass(frozen=True)
class Gap(Line):
    """A silence in the echo stream; ``start``/``end`` are unix seconds."""

    EVENT = LineEvent.GAP
    start: float
    end: float
    duration_s: float


@dataclass(frozen=True)
class Status(Line):
    """The gateway's periodic report."""

    EVENT = LineEvent.STATUS
    connections: list[str]
    relays: list[str]


@dataclass(frozen=True)
class Relays(Line):
    """The relays the node holds and which of them are usable (allocated), from both roles: every
    report interval, and at once when a relay is added, removed or allocated (what the harness's
    no-zombie check and its re-allocation times read)."""

    EVENT = LineEvent.RELAYS
    held: list[str]
    usable: list[str]


@dataclass(frozen=True)
class StreamIdle(Line):
    """The client went idle (``connlib run``'s SIGUSR1): its stream paused, its connection to
    ``peer`` dropped, until ``stream_resumed``."""

    EVENT = LineEvent.STREAM_IDLE
    peer: str


@dataclass(frozen=True)
class StreamResumed(Line):
    """The idle client streams again (SIGUSR2): its next datagram asks ``peer`` for a new connection."""

    EVENT = LineEvent.STREAM_RESUMED
    peer: str


LINE_TYPES: dict[str, type[Line]] = {
    str(cls.EVENT): cls
    for cls in (
        PortalState,
        Init,
        RelaysPresence,
        NoRelaysLine,
        Connected,
        ConnectionFailed,
        PathLost,
        Migrating,
        RelayAdded,
        RelayRemoved,
        Stream,
        Gap,
        Status,
        Relays,
        StreamIdle,
        StreamResumed,
    )
}


def from_json(data: dict[str, Any]) -> Line:
    """The typed line of a parsed JSON object; ValueError for an unknown event or missing fields."""
    cls = LINE_TYPES.get(str(data.get("event")))
    if cls is None:
        raise ValueError(f"unknown line event {data.get('event')!r}")
    renames = {v: k for k, v in cls._RENAMES.items()}
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {renames.get(k, k): v for k, v in data.items() if renames.get(k, k) in names}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad {cls.EVENT} line: {exc}") from None
