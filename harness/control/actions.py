"""The chaos service's actions, each recorded in the :class:`~harness.control.journal.Journal` with its
outcome, each with an optional duration after which it is undone.

- relays: ``restart``, ``stop``, ``start``, ``kill``, ``pause``, ``unpause`` (docker-py, through
  :mod:`harness.container_faults`); ``stop``, ``kill`` and ``pause`` take a duration (undone by
  ``start``/``unpause``);
- ``loss``: drop a share of the UDP datagrams arriving at a relay (iptables inside it), until
  ``clear-loss`` or the duration;
- ``partition``/``heal`` a peer from the portal (the portal's admin API, :func:`harness.portal_admin.admin_request`)
  or from one relay (iptables in the relay dropping every packet from and to the peer's addresses).

Contract: arguments are validated by the caller (:mod:`harness.control.api`); a target that is not
this stack's raises :class:`~harness.control.targets.TargetError` before anything is recorded or
changed. An action that Docker, the container or the portal refuses is recorded as ``failed: ...``,
logged at WARN, and raised as :class:`ActionFailed` (409 for Docker and the container, 502 for the
portal). Reversing an action by hand (``start`` after a timed ``stop``, ``heal``, ``clear-loss``)
cancels its pending undo; a restart, stop or kill ends the relay's iptables faults (its network
namespace goes). :meth:`Controller.close` runs every pending undo at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.error
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import docker.errors

from connlib.core.logfmt import kv
from harness import container_faults as cf
from harness import network_turns as nt
from harness.portal_admin import admin_request

from .journal import Journal
from .targets import PEER_ROLES, RELAY_ROLES, Stack, Target

log = logging.getLogger("harness.control.actions")

RELAY_ACTIONS = ("restart", "stop", "start", "kill", "pause", "unpause")
UNDO = {"stop": "start", "kill": "start", "pause": "unpause", "loss": "clear-loss", "partition": "heal"}
"""What undoes an action that takes a duration."""
ENDS = {"start": ("down",), "unpause": ("paused",), "restart": ("down", "paused")}
"""The lasting effects (by kind) a relay action ends."""
KIND = {"stop": "down", "kill": "down", "pause": "paused", "loss": "loss"}
FROM_PORTAL = "portal"
DEFAULT_STOP_TIMEOUT_S = 10


class ActionFailed(Exception):
    def __init__(self, status: int, message: str, entry: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.entry = entry


@dataclass
class _Lasting:
    entry: dict[str, Any]
    undo: Callable[[int], Awaitable[dict[str, Any]]]
    """Undoes the fault, given the seq its journal entry will name as ``undo_of``."""
    timer: asyncio.Task[None] | None = None


def _stop_timeout(target: Target) -> int:
    """The container's own stop timeout (compose's ``stop_grace_period``)."""
    return int((target.container.attrs.get("Config") or {}).get("StopTimeout") or DEFAULT_STOP_TIMEOUT_S)


def _explain(exc: Exception) -> tuple[int, str]:
    """The HTTP status and the words for what refused an action."""
    if isinstance(exc, urllib.error.HTTPError):
        return 502, f"the portal answered {exc.code}: {exc.read()[:200].decode(errors='replace').strip()}"
    if isinstance(exc, docker.errors.NotFound):
        return 404, str(exc.explanation or exc)
    if isinstance(exc, docker.errors.APIError):
        return 409, str(exc.explanation or exc)
    if isinstance(exc, OSError):
        return 502, f"no answer: {exc}"
    return 409, str(exc)


class Controller:
    def __init__(self, stack: Stack, journal: Journal, portal_url: str | None, portal_token: str | None) -> None:
        self.stack = stack
        self.journal = journal
        self.portal_url = portal_url
        self.portal_token = portal_token
        self._lasting: dict[tuple[str, ...], _Lasting] = {}
        self._rules: dict[tuple[str, ...], tuple[Target, list[str]]] = {}
        # Lasting faults whose reversal is under way: their timed undo, falling due meanwhile, is that
        # reversal's (a second unpause would only fail as "not paused"); should the reversal fail, the
        # fault lasts until it is reversed again, as any fault whose undo failed.
        self._reversing: set[tuple[str, ...]] = set()

    # ------------------------------------------------------------------ the actions
    async def relay(self, ref: str, action: str, duration: float | None, undo_of: int | None = None) -> dict[str, Any]:
        target = await self._find(ref, RELAY_ROLES)
        timeout = _stop_timeout(target)
        operation: Callable[[], Any] = {
            "restart": lambda: nt.restart(target.container, timeout),
            "stop": lambda: nt.stop(target.container, timeout),
            "start": lambda: cf.start(target.container),
            "kill": lambda: nt.kill(target.container, timeout),
            "pause": lambda: cf.pause(target.container),
            "unpause": lambda: cf.unpause(target.container),
        }[action]
        kind = KIND.get(action)
        params = _with_duration({}, duration)
        reversed_keys = [(ended, target.name) for ended in ENDS.get(action, ())]
        with self._reversal(reversed_keys):
            entry = await self._run(action, target.name, params, operation, lasting=kind is not None, undo_of=undo_of)
        for key in reversed_keys:
            self._end(key)
        if action in ("restart", "stop", "kill"):
            self._forget_rules(target.name)
        if kind is not None:
            self._end((kind, target.name))  # a second stop replaces the first
            self._last((kind, target.name), entry, duration, lambda seq: self.relay(ref, UNDO[action], None, seq))
        return entry

    async def loss(self, ref: str, probability: float, duration: float | None) -> dict[str, Any]:
        target = await self._find(ref, RELAY_ROLES)
        key = ("loss", target.name)
        self._refuse_twice(key, f"{target.name} already drops datagrams (clear-loss first)")
        rule = cf.loss_rule(probability)

        def add() -> None:
            cf.add_rule(target.container, rule, target.name)
            self._rules[key] = (target, [rule])

        params = _with_duration({"probability": probability}, duration)
        entry = await self._run("loss", target.name, params, add, lasting=True)
        self._last(key, entry, duration, lambda seq: self.clear_loss(ref, seq))
        return entry

    async def clear_loss(self, ref: str, undo_of: int | None = None) -> dict[str, Any]:
        target = await self._find(ref, RELAY_ROLES)
        key = ("loss", target.name)
        with self._reversal([key]):
            entry = await self._run("clear-loss", target.name, {}, lambda: self._delete_rules(key), undo_of=undo_of)
        self._end(key)
        return entry

    async def partition(self, ref: str, source: str, duration: float | None) -> dict[str, Any]:
        peer = await self._find(ref, PEER_ROLES)
        relay = None if source == FROM_PORTAL else await self._find(source, RELAY_ROLES)
        origin = FROM_PORTAL if relay is None else relay.name
        key = ("partition", peer.name, origin)
        self._refuse_twice(key, f"{peer.name} is already cut off from {origin} (heal first)")
        params = _with_duration({"from": origin}, duration)
        operation: Callable[[], Any]
        if relay is None:
            body = {"id": self._peer_id(peer)} | ({"seconds": duration} if duration else {})
            operation = self._portal_call("/api/partition", body)
        else:

            def operation() -> dict[str, Any]:
                assert relay is not None
                rules = [rule for addr in peer.addresses for rule in cf.cut_rules(addr)]
                self._rules[key] = (relay, [])
                for rule in rules:
                    cf.add_rule(relay.container, rule, relay.name)
                    self._rules[key][1].append(rule)
                return {"rules_added": len(rules)}

        entry = await self._run("partition", peer.name, params, operation, lasting=True)
        self._last(key, entry, duration, lambda seq: self.heal(ref, origin, seq))
        return entry

    async def heal(self, ref: str, source: str, undo_of: int | None = None) -> dict[str, Any]:
        peer = await self._find(ref, PEER_ROLES)
        relay = None if source == FROM_PORTAL else await self._find(source, RELAY_ROLES)
        origin = FROM_PORTAL if relay is None else relay.name
        key = ("partition", peer.name, origin)
        if relay is None:
            operation = self._portal_call("/api/heal", {"id": self._peer_id(peer)})
        else:

            def operation() -> dict[str, Any]:
                return self._delete_rules(key)

        with self._reversal([key]):
            entry = await self._run("heal", peer.name, {"from": origin}, operation, undo_of=undo_of)
        self._end(key)
        return entry

    async def close(self) -> None:
        """Undo every lasting fault that has a duration, now (the service is stopping)."""
        for key, lasting in list(self._lasting.items()):
            if lasting.timer is not None:
                lasting.timer.cancel()
                await self._undo(key)

    # ------------------------------------------------------------------ the machinery
    async def _find(self, ref: str, roles: frozenset[str]) -> Target:
        return await asyncio.to_thread(self.stack.find, ref, roles)

    def _peer_id(self, peer: Target) -> str:
        return peer.peer_id or peer.name

    def _refuse_twice(self, key: tuple[str, ...], message: str) -> None:
        if key in self._lasting or key in self._rules:
            raise ActionFailed(409, message)

    def _portal_call(self, path: str, body: dict[str, Any]) -> Callable[[], Any]:
        if self.portal_url is None:
            raise ActionFailed(409, "this chaos service has no portal configured (--portal)")
        url, token = self.portal_url + path, self.portal_token
        return lambda: admin_request(url, "POST", body, 5.0, token)

    async def _run(
        self,
        action: str,
        target: str,
        params: dict[str, Any],
        operation: Callable[[], Any],
        *,
        lasting: bool = False,
        undo_of: int | None = None,
    ) -> dict[str, Any]:
        entry = self.journal.begin(action, target, params, undo_of)
        try:
            result = await asyncio.to_thread(operation)
        except (docker.errors.APIError, RuntimeError, OSError) as exc:
            status, why = _explain(exc)
            self.journal.finish(entry, f"failed: {why}")
            log.warning("Chaos action failed %s", kv(seq=entry["seq"], action=action, target=target, error=why[:200]))
            raise ActionFailed(status, f"{action} {target} failed: {why}", entry) from None
        if isinstance(result, dict):
            entry["result"] = result
        self.journal.finish(entry, "ok", lasting=lasting, duration=params.get("duration_s"))
        log.info("Chaos action %s", kv(seq=entry["seq"], action=action, target=target, took_s=entry["took_s"]))
        return entry

    def _delete_rules(self, key: tuple[str, ...]) -> dict[str, Any]:
        target, rules = self._rules.get(key, (None, []))
        count = len(rules)
        while rules:  # a rule that will not go stays listed
            assert target is not None
            cf.delete_rule(target.container, rules[-1], target.name)
            rules.pop()
        self._rules.pop(key, None)
        return {"rules_removed": count}

    def _forget_rules(self, relay: str) -> None:
        """The relay's network namespace went (stop, kill, restart): so did its rules."""
        for key, (target, _) in list(self._rules.items()):
            if target.name == relay:
                del self._rules[key]
                self._end(key)

    def _last(
        self,
        key: tuple[str, ...],
        entry: dict[str, Any],
        duration: float | None,
        undo: Callable[[int], Awaitable[dict[str, Any]]],
    ) -> None:
        lasting = _Lasting(entry, undo)
        self._lasting[key] = lasting
        if duration:
            lasting.timer = asyncio.create_task(self._undo_after(key, duration), name=f"undo-{entry['seq']}")

    def _end(self, key: tuple[str, ...]) -> None:
        """The lasting fault under ``key`` is over (reversed): its pending undo is cancelled."""
        lasting = self._lasting.pop(key, None)
        if lasting is None:
            return
        if lasting.timer is not None and lasting.timer is not asyncio.current_task():
            lasting.timer.cancel()
        self.journal.ended(lasting.entry)

    async def _undo_after(self, key: tuple[str, ...], duration: float) -> None:
        await asyncio.sleep(duration)  # the fault's duration: a timer, not a synchronisation
        await self._undo(key)

    @contextlib.contextmanager
    def _reversal(self, keys: Sequence[tuple[str, ...]]) -> Iterator[None]:
        """The lasting faults under ``keys`` are being reversed while in this block."""
        self._reversing.update(keys)
        try:
            yield
        finally:
            self._reversing.difference_update(keys)

    async def _undo(self, key: tuple[str, ...]) -> None:
        lasting = self._lasting.get(key)
        if lasting is None or key in self._reversing:
            return
        try:
            # the undo's entry names the fault from the start: a reader of the history while the undo
            # runs (the dashboard) must not take a pending ``start`` for a fault of its own
            await lasting.undo(lasting.entry["seq"])
        except ActionFailed:  # recorded and logged by _run
            self._end(key)


def _with_duration(params: dict[str, Any], duration: float | None) -> dict[str, Any]:
    return params | ({"duration_s": duration} if duration else {})
