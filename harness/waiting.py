"""The one bounded wait of the harness: poll a condition until it holds or the bound is spent.

``wait_for`` (asyncio) and ``wait_until`` (blocking, for synchronous tests and ``make up``) share one
contract: ``predicate()`` is called every ``interval`` seconds until it returns something truthy,
which is returned. A predicate may return an awaitable (``wait_for`` only), and may raise
:class:`NotYet` (with the reason) or one of ``retry_on``: that counts as "not yet", and the last
reason is named in the timeout message. Any other exception ends the wait at once. On timeout:
``AssertionError`` naming ``what`` (a test failure, never a skip), or the ``error`` type given.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

DEFAULT_INTERVAL = 0.05


class NotYet(Exception):
    """Raised by a predicate: the condition does not hold yet, and why."""


class _Poll:
    def __init__(self, timeout: float, what: str, retry_on: tuple[type[BaseException], ...], error: type[Exception]):
        self.timeout, self.what, self.retry_on, self.error = timeout, what, retry_on, error
        self.started = time.monotonic()
        self.last = ""

    def expired(self) -> bool:
        return time.monotonic() - self.started > self.timeout

    def fail(self) -> Exception:
        reason = f" (last: {self.last})" if self.last else ""
        return self.error(f"timed out after {self.timeout:.1f}s waiting for {self.what}{reason}")


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = DEFAULT_INTERVAL,
    *,
    retry_on: tuple[type[BaseException], ...] = (),
    error: type[Exception] = AssertionError,
) -> Any:
    """Poll ``predicate`` (bounded by ``timeout``) until it returns something truthy; returns that value."""
    poll = _Poll(timeout, what, retry_on, error)
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
        except NotYet as exc:
            poll.last = str(exc)
        except retry_on as exc:
            poll.last = f"{type(exc).__name__}: {exc}"
        if poll.expired():
            raise poll.fail()
        await asyncio.sleep(interval)


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = DEFAULT_INTERVAL,
    *,
    retry_on: tuple[type[BaseException], ...] = (),
    error: type[Exception] = AssertionError,
) -> Any:
    """``wait_for`` for blocking code: same contract, ``time.sleep`` between the polls."""
    poll = _Poll(timeout, what, retry_on, error)
    while True:
        try:
            value = predicate()
            if value:
                return value
        except NotYet as exc:
            poll.last = str(exc)
        except retry_on as exc:
            poll.last = f"{type(exc).__name__}: {exc}"
        if poll.expired():
            raise poll.fail()
        time.sleep(interval)
