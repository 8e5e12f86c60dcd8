"""Fault schedules: what goes wrong, when, for how long; random generation and the JSON format.

A schedule is a JSON object (``version`` 1)::

    {"version": 1, "seed": 7, "duration_s": 600, "relays": 3, "rate": 0.25, "keepalive_s": 2.0,
     "channel_lifetime_s": 120.0, "faults": [{"at": 42.5, "kind": "relay_reboot", "target": "relay-2", "duration": 2.0,
                 "new_secret": false}, ...]}

``rate`` is the echo stream's datagrams per second; ``keepalive_s`` the peers' ICE keep-alive
interval (the path is declared lost after four unanswered ones; connlib's default is 1 s, the
simulator's 2 s halves the datagrams per simulated second; a schedule without it is read as 1 s,
what it was found with). ``channel_lifetime_s`` is the relays' channel lifetime (coturn's
``--channel-lifetime``) and the peers' (``ChannelTimes``, ``connlib run --channel-lifetime``): random
schedules draw one shorter than RFC 8656's 600 s so that an idle binding lapses inside a run; a
schedule without it is read as 600 s. ``at`` and ``duration`` are seconds from the start of the run (the stack's "traffic flows"
moment on Docker). Targets are ``relay-<n>`` (1-based), ``client`` or ``gateway``; ``other`` is
the second end of a partition. Kinds, and what each means on the real stack:

=======================  ==================================================================
``relay_reboot``         relay down ``duration`` s, then up with its state lost; a new secret
                         unless ``new_secret`` is false (docker restart)
``relay_kill``           the same, for a long downtime (docker kill; docker start later)
``relay_pause``          relay frozen ``duration`` s: no packets, no heartbeats (docker pause)
``relay_portal_cut``     the portal refuses the relay for ``duration`` s (admin partition)
``peer_portal_cut``      the portal refuses ``target`` (client/gateway) (admin partition)
``peer_relay_cut``       no datagrams between ``target`` and relay ``other`` (iptables)
``relay_relay_cut``      no datagrams between relays ``target`` and ``other`` (iptables)
``loss``                 ``rate`` loss on ``target``'s datagrams, both ways (iptables statistic;
                         on a relay, of what arrives)
``quota``                relay answers new ALLOCATEs with ``code`` 486 or 508 (coturn's CLI
                         user-quota; for 508 its relay ports all taken: its quotas say 486)
``rotate_credentials``   relay takes a new secret without rebooting; its agent re-joins
``address_change``       relay comes up on a new IP (state lost); its agent re-joins
``portal_restart``       portal down ``duration`` s, state lost
``peer_restart``         ``target`` (client/gateway) process restarts (new port, state lost)
``portal_blackhole``     frames between ``target`` (client, gateway or relay) and the portal
                         vanish silently for ``duration`` s; dials fail (iptables DROP)
``stream_idle``          the client has nothing to send for ``duration`` s: its stream stops
                         and it drops the connection (as a ``connlib run`` whose stream ended);
                         then the stream resumes on a new connection (connlib run's
                         SIGUSR1, then SIGUSR2)
=======================  ==================================================================

Random schedules draw their faults first, then the channel lifetime and one or two idle periods
longer than it (each a lapse of the bindings the idle connection used), from the same rng: the
faults of a seed are what they were before lifetimes and idle periods were drawn.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from connlib.core import allocation

VERSION = 1
KINDS = (
    "relay_reboot",
    "relay_kill",
    "relay_pause",
    "relay_portal_cut",
    "peer_portal_cut",
    "peer_relay_cut",
    "relay_relay_cut",
    "loss",
    "quota",
    "rotate_credentials",
    "address_change",
    "portal_restart",
    "peer_restart",
    "portal_blackhole",
    "stream_idle",
)
WEIGHTS = {  # the faults production sees most often come up most often
    "relay_reboot": 3,
    "relay_kill": 2,
    "relay_pause": 2,
    "peer_portal_cut": 3,
    "relay_portal_cut": 1,
    "peer_relay_cut": 1,
    "relay_relay_cut": 1,
    "loss": 1,
    "quota": 1,
    "rotate_credentials": 1,
    "address_change": 1,
    "portal_restart": 1,
    "peer_restart": 1,
    "portal_blackhole": 1,
    "stream_idle": 0,  # not in the fault draw: idle periods are drawn after it (see random_schedule)
}
WARMUP = 30.0  # the first fault comes after the stream is up
TAIL = 150.0  # after the last heal: time for recovery and for the checks to see it
RATE = 0.25  # echo datagrams per second, each way
KEEPALIVE = 2.0  # the peers' ICE keep-alive interval in the simulator (connlib's default: 1 s)
CHANNEL_LIFETIME = allocation.CHANNEL_LIFETIME  # RFC 8656 §12's 600 s: a schedule without one
CHANNEL_LIFETIMES = (30.0, 60.0, 120.0, 240.0)  # what random schedules draw from
IDLE_PERIODS = (1, 2)  # per random schedule, each longer than the channel lifetime


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    target: str = ""
    duration: float = 0.0
    other: str = ""
    new_secret: bool = True
    rate: float = 0.0
    code: int = 0

    @property
    def heals_at(self) -> float:
        return self.at + self.duration

    def to_json(self) -> dict[str, Any]:
        full = asdict(self)
        defaults = asdict(Fault(0.0, self.kind))
        out = {k: v for k, v in full.items() if k in ("at", "kind") or v != defaults[k]}
        return out


@dataclass(frozen=True)
class Schedule:
    seed: int
    duration_s: float
    relays: int = 3
    rate: float = RATE
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    keepalive_s: float = KEEPALIVE
    channel_lifetime_s: float = CHANNEL_LIFETIME

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "seed": self.seed,
            "duration_s": self.duration_s,
            "relays": self.relays,
            "rate": self.rate,
            "keepalive_s": self.keepalive_s,
            "channel_lifetime_s": self.channel_lifetime_s,
            "faults": [f.to_json() for f in self.faults],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schedule:
        if data.get("version") != VERSION:
            raise ValueError(f"unsupported schedule version {data.get('version')!r}")
        faults = []
        for raw in data["faults"]:
            if raw["kind"] not in KINDS:
                raise ValueError(f"unknown fault kind {raw['kind']!r}")
            faults.append(Fault(**raw))
        return cls(
            int(data["seed"]),
            float(data["duration_s"]),
            int(data["relays"]),
            float(data["rate"]),
            tuple(faults),
            float(data.get("keepalive_s", 1.0)),
            float(data.get("channel_lifetime_s", CHANNEL_LIFETIME)),
        )

    def without(self, index: int) -> Schedule:
        return replace(self, faults=self.faults[:index] + self.faults[index + 1 :])

    @property
    def last_heal(self) -> float:
        return max((f.heals_at for f in self.faults), default=0.0)


def random_schedule(
    seed: int,
    *,
    duration_s: float = 600.0,
    relays: int = 3,
    rate: float = RATE,
    exclude: Iterable[str] = (),
) -> Schedule:
    """A schedule drawn from ``seed`` alone (its own rng, not the world's); ``exclude``: kinds
    (or ``relay_reboot:same_secret``) never drawn."""
    rng = random.Random(f"schedule-{seed}")
    excluded = frozenset(exclude)
    kinds = [k for k in KINDS if k not in excluded and WEIGHTS[k]]
    weights = [WEIGHTS[k] for k in kinds]
    same_secret = "relay_reboot:same_secret" not in excluded
    count = rng.randint(2, 8)
    end = duration_s - TAIL
    faults = sorted(
        (
            _fault(rng, rng.uniform(WARMUP, end), relays, rng.choices(kinds, weights)[0], same_secret)
            for _ in range(count)
        ),
        key=lambda f: f.at,
    )
    faults = [f if f.heals_at <= end + 60 else replace(f, duration=max(0.0, end + 60 - f.at)) for f in faults]
    # Drawn after the faults, so that a seed's faults stay what they were before these existed.
    lifetime = rng.choice(CHANNEL_LIFETIMES)
    if "stream_idle" not in excluded:
        for _ in range(rng.choice(IDLE_PERIODS)):
            idle, at = rng.uniform(1.1, 1.6) * lifetime, rng.uniform(WARMUP, end)
            if at + idle <= end + 60:  # healed in time for the checks, as every fault
                faults.append(Fault(at, "stream_idle", "client", idle))
        faults.sort(key=lambda f: f.at)
    faults = [replace(f, at=round(f.at, 3), duration=round(f.duration, 3)) for f in faults]  # as JSON has them
    return Schedule(seed, duration_s, relays, rate, tuple(faults), channel_lifetime_s=lifetime)


def _fault(rng: random.Random, at: float, relays: int, kind: str, same_secret: bool) -> Fault:
    relay = f"relay-{rng.randint(1, relays)}"
    other = f"relay-{rng.randint(1, relays)}"
    peer = rng.choice(("client", "gateway"))
    new_secret = rng.random() < 0.7 or not same_secret
    if kind == "relay_reboot":
        return Fault(at, kind, relay, rng.uniform(0.2, 5.0), new_secret=new_secret)
    if kind == "relay_kill":
        return Fault(at, kind, relay, rng.uniform(10.0, 120.0), new_secret=new_secret)
    if kind == "relay_pause":
        return Fault(at, kind, relay, rng.uniform(2.0, 60.0))
    if kind == "relay_portal_cut":
        return Fault(at, kind, relay, rng.uniform(2.0, 60.0))
    if kind == "peer_portal_cut":
        return Fault(at, kind, peer, rng.uniform(2.0, 90.0))
    if kind == "peer_relay_cut":
        return Fault(at, kind, peer, rng.uniform(2.0, 60.0), other=relay)
    if kind == "relay_relay_cut":
        return Fault(at, kind, relay, rng.uniform(2.0, 60.0), other=other)
    if kind == "loss":
        return Fault(at, kind, rng.choice((relay, peer)), rng.uniform(2.0, 30.0), rate=round(rng.uniform(0.1, 0.6), 2))
    if kind == "quota":
        return Fault(at, kind, relay, rng.uniform(5.0, 120.0), code=rng.choice((486, 508)))
    if kind == "portal_restart":
        return Fault(at, kind, "portal", rng.uniform(0.5, 10.0))
    if kind == "peer_restart":
        return Fault(at, kind, peer)
    if kind == "portal_blackhole":
        return Fault(at, kind, rng.choice((peer, relay)), rng.uniform(5.0, 90.0))
    return Fault(at, kind, relay)  # rotate_credentials, address_change
