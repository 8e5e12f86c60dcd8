"""The one interface of connlib's datagram cores (after Firezone snownet), and what it hands out.

Every protocol object that handles datagrams (``Allocation``, ``Node``, ``Tunnel``) has:

- ``handle_input(packet, from_, local, now) -> bool``: a datagram arrived on the socket bound to
  ``local`` from ``from_``; True if this object consumed it (it was its traffic, even if it was
  dropped as malformed), False if it belongs to someone else;
- ``handle_timeout(now)``: time has reached ``poll_timeout()``;
- ``poll_transmit() -> Transmit | None``: the next datagram to send;
- ``poll_event() -> event | None``: the next thing that happened (frozen dataclasses, ``match``);
- ``poll_timeout() -> float | None``: when ``handle_timeout`` is due next.

Commands (``update_relays``, ``connect``, ``send``…) take ``now`` too. Nothing here reads a clock,
touches a socket or draws OS randomness; the asyncio driver (:mod:`connlib.aio.driver`) is written
against :class:`DatagramCore` alone. The Phoenix channel (:mod:`connlib.core.phoenix`) has the same
shape with text frames instead of datagrams: ``handle_input(frame, now)``, ``poll_transmit() -> str``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .addr import Address

# ``typing`` only for the type checker: its import is ~4 % of ``python -m connlib allocate``'s start-up
# (mypy treats a module's own ``TYPE_CHECKING`` like ``typing.TYPE_CHECKING``).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol


@dataclass(frozen=True, slots=True)
class Transmit:
    """A datagram to send to ``dst`` (from the socket of ``dst``'s address family)."""

    dst: Address
    payload: bytes


if TYPE_CHECKING:  # annotations only (the drivers import it the same way)

    class DatagramCore(Protocol):
        def handle_input(self, packet: bytes, from_: Address, local: Address | None, now: float) -> bool: ...
        def handle_timeout(self, now: float) -> None: ...
        def poll_transmit(self) -> Transmit | None: ...
        def poll_event(self) -> object | None: ...
        def poll_timeout(self) -> float | None: ...


def drain(core: DatagramCore, send: Callable[[Transmit], None], emit: Callable[[object], None]) -> None:
    """Hand out everything ``core`` queued: transmits first, then one event at a time, until both are
    empty. An event handler's command may queue a transmit (a gateway's echo), which leaves at once,
    not with the next datagram or timer. What both drivers do after every input, timeout or command.
    """
    while True:
        if (transmit := core.poll_transmit()) is not None:
            send(transmit)
        elif (event := core.poll_event()) is not None:
            emit(event)
        else:
            return
