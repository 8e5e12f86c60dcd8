"""Relay presence fan-out: from a relay socket closing to ``relays_presence`` at N clients, beside a bare broadcast.

The portal runs as its own process (``python -m fake_portal``, default 1 s debounce); this process
plays two relays and N clients over real websockets on 127.0.0.1. Every client holds both relays,
so when relay A's socket closes all N must hear ``disconnected_ids=[A]``. The figure that matters
is the slowest client's delay *past the debounce*.

The peer, in the same interleaved run: ``bench._bare_broadcast``, a websockets server that does
nothing but write the same frames (each client hands it the text the portal sent it) to the same
number of clients, timed the same way from its trigger socket's close; each server's CPU time over
that span (user + system, from /proc: it does not grow with the machine's load as the wall time
does, though it includes the debounce's idle wake-ups). Memory: each server's RSS
(its own process, so the clients' memory is not counted) after the fan-out minus before the
clients connected, per client. Goals (issue 14): N = 3,000 within 1.3x the bare broadcast, at
most 16 KiB per client.

    python -m bench.portal_presence [--clients 3000] [--repeats 5] [--debounce 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from connlib.aio.portal_client import portal_url

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
CONNECT_BATCH = 100
RECEIVE_TIMEOUT = 30.0
RATIO_GOAL = 1.3
RSS_GOAL_KIB = 16.0


async def _open(base: str, role: str, **params: str) -> ClientConnection:
    return await connect(
        portal_url(base, role, **params),
        additional_headers={"X-Authorization": f"Bearer {TOKEN}"},
        proxy=None,
        compression=None,
        ping_interval=None,
    )


async def _join(ws: ClientConnection, topic: str, payload: dict) -> None:
    await ws.send(json.dumps({"topic": topic, "event": "phx_join", "payload": payload, "ref": 0}))
    reply = json.loads(await ws.recv())
    if reply["payload"]["status"] != "ok":
        raise RuntimeError(f"join refused: {reply}")


Arrival = tuple[float, str]
"""When a client's ``relays_presence`` arrived (monotonic) and its text."""
Client = tuple[ClientConnection, "asyncio.Task[Arrival]"]


async def _arrival(ws: ClientConnection) -> Arrival:
    async for message in ws:
        if json.loads(message)["event"] == "relays_presence":
            return time.monotonic(), str(message)
    raise RuntimeError("socket closed before relays_presence arrived")


async def _portal_client(base: str, index: int) -> Client:
    ws = await _open(base, "client", external_id=f"bench-{index}", public_key=f"pk-{index}")
    await _join(ws, "client", {})
    init = json.loads(await ws.recv())
    if init["event"] != "init" or len({r["id"] for r in init["payload"]["relays"]}) != 2:
        raise RuntimeError(f"client {index} did not get both relays: {init}")
    return ws, asyncio.create_task(_arrival(ws))


async def _bare_client(base: str, index: int, frame: str) -> Client:
    # The portal's handshake (URL and headers), so that websockets holds the same per connection.
    ws = await _open(base, "client", external_id=f"bench-{index}", public_key=f"pk-{index}")
    await ws.send(frame)
    if await ws.recv() != "ok":
        raise RuntimeError("the bare server did not take the frame")
    return ws, asyncio.create_task(_arrival(ws))


async def _connect_all(n: int, one: Callable[[int], Awaitable[Client]]) -> list[Client]:
    clients: list[Client] = []
    for start in range(0, n, CONNECT_BATCH):
        clients += await asyncio.gather(*(one(i) for i in range(start, min(n, start + CONNECT_BATCH))))
    return clients


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (load-independent, unlike wall time)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _summary(closed_at: float, arrivals: list[Arrival], debounce: float) -> dict[str, float]:
    delays = sorted(t - closed_at for t, _ in arrivals)
    return {
        "first": delays[0],
        "median": statistics.median(delays),
        "p99": delays[min(len(delays) - 1, int(0.99 * len(delays)))],
        "last": delays[-1],
        "past": delays[-1] - debounce,
    }


def _start(argv: list[str]) -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def _start_portal(debounce: float) -> tuple[subprocess.Popen[str], str, str]:
    process, listening = _start(
        ["fake_portal", "--token", TOKEN, "--debounce", str(debounce), "--heartbeat-timeout", "600"]
        + ["--log-level", "WARNING"]
    )
    return process, listening["url"], listening["admin_url"]


def _portal_flush_delay(admin_url: str, since: int) -> float | None:
    """Relay offline → presence flush, on the portal's own clock (the debounce as it happened)."""
    with urllib.request.urlopen(f"{admin_url}/api/events?since={since}", timeout=10) as response:
        events = json.load(response)["events"]
    offline = next((e["ts"] for e in events if e["kind"] == "relay_offline"), None)
    flush = next((e["ts"] for e in events if e["kind"] == "presence_flush"), None)
    return None if offline is None or flush is None else flush - offline


async def measure_portal(n: int, debounce: float) -> tuple[dict[str, float], list[str]]:
    """One portal run: its figures and the frames the clients got (in client order)."""
    process, base, admin_url = _start_portal(debounce)
    try:
        relays = []
        for name in ("bench-relay-a", "bench-relay-b"):
            ws = await _open(base, "relay", ipv4="127.0.0.1", name=name)
            await _join(ws, "relay", {"stamp_secret": os.urandom(16).hex()})
            relays.append(ws)
        await asyncio.sleep(debounce + 0.2)  # let the relays' own join flush pass first
        rss_before = _rss_kib(process.pid)
        clients = await _connect_all(n, lambda i: _portal_client(base, i))
        with urllib.request.urlopen(f"{admin_url}/api/events?since=0&limit=0", timeout=10) as response:
            last_seq = json.load(response)["last_seq"]
        cpu_before = _cpu_s(process.pid)
        closed_at = time.monotonic()
        await relays[0].close()
        arrivals = await asyncio.wait_for(asyncio.gather(*(arrival for _, arrival in clients)), RECEIVE_TIMEOUT)
        run = _summary(closed_at, arrivals, debounce)
        run["cpu"] = _cpu_s(process.pid) - cpu_before
        run["rss_per_client_kib"] = (_rss_kib(process.pid) - rss_before) / n
        flush = _portal_flush_delay(admin_url, last_seq)
        run["portal_flush"] = flush if flush is not None else float("nan")
        for ws, _ in clients:
            await ws.close()
        await relays[1].close()
        return run, [text for _, text in arrivals]
    finally:
        process.terminate()
        process.wait(10)


async def measure_bare(frames: list[str], debounce: float) -> dict[str, float]:
    """The peer: the same frames to as many clients from a bare websockets server."""
    process, listening = _start(["bench._bare_broadcast", "--debounce", str(debounce)])
    base = listening["url"]
    try:
        trigger = await connect(f"{base}/trigger", proxy=None, compression=None, ping_interval=None)
        rss_before = _rss_kib(process.pid)
        clients = await _connect_all(len(frames), lambda i: _bare_client(base, i, frames[i]))
        cpu_before = _cpu_s(process.pid)
        closed_at = time.monotonic()
        await trigger.close()
        arrivals = await asyncio.wait_for(asyncio.gather(*(arrival for _, arrival in clients)), RECEIVE_TIMEOUT)
        if [text for _, text in arrivals] != frames:
            raise RuntimeError("the bare server wrote other frames than the portal's")
        run = _summary(closed_at, arrivals, debounce)
        run["cpu"] = _cpu_s(process.pid) - cpu_before
        run["rss_per_client_kib"] = (_rss_kib(process.pid) - rss_before) / len(frames)
        for ws, _ in clients:
            await ws.close()
        return run
    finally:
        process.terminate()
        process.wait(10)


def _raise_fd_limit(n: int) -> None:
    # Each client is a socket here and another in the server (which inherits this limit).
    want = 2 * n + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        ceiling = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        if ceiling < want:
            print(f"warning: open files limited to {ceiling}; {n} clients need about {want}", file=sys.stderr)


def _spread(values: list[float], fmt: str) -> str:
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.portal_presence", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[3000], help="client counts (default 3000)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved portal/bare pairs per client count")
    parser.add_argument("--debounce", type=float, default=1.0, help="portal debounce in seconds (default 1.0)")
    args = parser.parse_args(argv)
    _raise_fd_limit(max(args.clients))
    print(
        f"relay socket closed -> relays_presence at every client; debounce {args.debounce:g} s; "
        f"{args.repeats} interleaved portal / bare-websockets pairs; seconds past the debounce, min / median / max"
    )
    met = True
    for n in args.clients:
        portal: list[dict[str, float]] = []
        bare: list[dict[str, float]] = []
        for repeat in range(args.repeats):
            # The bare server needs the portal's frames, so the first pair is portal first; the
            # order alternates after that so that neither side always runs on a warmer machine.
            if repeat % 2 == 0 or not portal:
                run, frames = asyncio.run(measure_portal(n, args.debounce))
                portal.append(run)
                bare.append(asyncio.run(measure_bare(frames, args.debounce)))
            else:
                bare.append(asyncio.run(measure_bare(frames, args.debounce)))
                portal.append(asyncio.run(measure_portal(n, args.debounce))[0])
            print(
                f"  {n} clients, pair {repeat + 1}: portal {portal[-1]['past']:.3f} s "
                f"(flush {portal[-1]['portal_flush']:.3f}, CPU {portal[-1]['cpu']:.2f} s, "
                f"{portal[-1]['rss_per_client_kib']:.1f} KiB/client), bare {bare[-1]['past']:.3f} s "
                f"(CPU {bare[-1]['cpu']:.2f} s, {bare[-1]['rss_per_client_kib']:.1f} KiB/client)",
                flush=True,
            )
        ratios = [p["past"] / b["past"] for p, b in zip(portal, bare, strict=True)]
        portal_rss = [p["rss_per_client_kib"] for p in portal]
        print(
            f"{n} clients: portal {_spread([p['past'] for p in portal], '.3f')} s; bare {_spread([b['past'] for b in bare], '.3f')} s"
        )
        print(f"  ratio portal / bare (per pair): {_spread(ratios, '.2f')}x; goal <= {RATIO_GOAL}x (median)")
        cpu_ratios = [p["cpu"] / max(b["cpu"], 0.01) for p, b in zip(portal, bare, strict=True)]
        print(
            f"  server CPU from the trigger to the last arrival: portal {_spread([p['cpu'] for p in portal], '.2f')} s, "
            f"bare {_spread([b['cpu'] for b in bare], '.2f')} s (ratio {_spread(cpu_ratios, '.2f')}x)"
        )
        print(
            f"  RSS per client: portal {_spread(portal_rss, '.1f')} KiB, "
            f"bare {_spread([b['rss_per_client_kib'] for b in bare], '.1f')} KiB; goal <= {RSS_GOAL_KIB:g} KiB (median)"
        )
        met = met and statistics.median(ratios) <= RATIO_GOAL and statistics.median(portal_rss) <= RSS_GOAL_KIB
    print(f"goals: {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
