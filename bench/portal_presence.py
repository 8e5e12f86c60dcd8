"""Relay presence fan-out: from a relay socket closing to ``relays_presence`` at N clients.

The portal runs as its own process (``python -m fake_portal``, default 1 s debounce); this process
plays two relays and N clients over real websockets on 127.0.0.1. Every client holds both relays,
so when relay A's socket closes all N must hear ``disconnected_ids=[A]``. The figure that matters
is the slowest client's delay *past the debounce*; goal: N = 1,000 under 1 s.

    python -m bench.portal_presence [--clients 10 100 1000] [--repeats 3] [--debounce 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from connlib.aio.portal_client import portal_url

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
CONNECT_BATCH = 100
RECEIVE_TIMEOUT = 30.0


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


async def _arrival(ws: ClientConnection) -> float:
    async for message in ws:
        if json.loads(message)["event"] == "relays_presence":
            return time.monotonic()
    raise RuntimeError("socket closed before relays_presence arrived")


async def _client(base: str, index: int) -> tuple[ClientConnection, asyncio.Task[float]]:
    ws = await _open(base, "client", external_id=f"bench-{index}", public_key=f"pk-{index}")
    await _join(ws, "client", {})
    init = json.loads(await ws.recv())
    if init["event"] != "init" or len({r["id"] for r in init["payload"]["relays"]}) != 2:
        raise RuntimeError(f"client {index} did not get both relays: {init}")
    return ws, asyncio.create_task(_arrival(ws))


def _start_portal(debounce: float) -> tuple[subprocess.Popen[str], str, str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fake_portal",
            "--token",
            TOKEN,
            "--debounce",
            str(debounce),
            "--heartbeat-timeout",
            "600",
            "--log-level",
            "WARNING",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    listening = json.loads(process.stdout.readline())
    return process, listening["url"], listening["admin_url"]


def _portal_flush_delay(admin_url: str, since: int) -> float | None:
    """Relay offline → presence flush, on the portal's own clock (the debounce as it happened)."""
    with urllib.request.urlopen(f"{admin_url}/api/events?since={since}", timeout=10) as response:
        events = json.load(response)["events"]
    offline = next((e["ts"] for e in events if e["kind"] == "relay_offline"), None)
    flush = next((e["ts"] for e in events if e["kind"] == "presence_flush"), None)
    return None if offline is None or flush is None else flush - offline


async def measure(n: int, debounce: float) -> dict[str, float]:
    process, base, admin_url = _start_portal(debounce)
    try:
        relays = []
        for name in ("bench-relay-a", "bench-relay-b"):
            ws = await _open(base, "relay", ipv4="127.0.0.1", name=name)
            await _join(ws, "relay", {"stamp_secret": os.urandom(16).hex()})
            relays.append(ws)
        await asyncio.sleep(debounce + 0.2)  # let the relays' own join flush pass first
        clients = []
        for start in range(0, n, CONNECT_BATCH):
            clients += await asyncio.gather(*(_client(base, i) for i in range(start, min(n, start + CONNECT_BATCH))))
        with urllib.request.urlopen(f"{admin_url}/api/events?since=0&limit=0", timeout=10) as response:
            last_seq = json.load(response)["last_seq"]
        closed_at = time.monotonic()
        await relays[0].close()
        arrivals = await asyncio.wait_for(asyncio.gather(*(arrival for _, arrival in clients)), RECEIVE_TIMEOUT)
        delays = sorted(t - closed_at for t in arrivals)
        flush = _portal_flush_delay(admin_url, last_seq)
        for ws, _ in clients:
            await ws.close()
        await relays[1].close()
        return {
            "first": delays[0],
            "median": statistics.median(delays),
            "p99": delays[min(len(delays) - 1, int(0.99 * len(delays)))],
            "last": delays[-1],
            "portal_flush": flush if flush is not None else float("nan"),
        }
    finally:
        process.terminate()
        process.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.portal_presence", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[10, 100, 1000], help="client counts (default 10 100 1000)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per client count; the median run is shown")
    parser.add_argument("--debounce", type=float, default=1.0, help="portal debounce in seconds (default 1.0)")
    args = parser.parse_args(argv)
    print(
        f"relay socket closed -> relays_presence at every client; debounce {args.debounce:g} s; "
        f"median of {args.repeats} runs; seconds"
    )
    print(
        f"{'clients':>8} {'first':>7} {'median':>7} {'p99':>7} {'last':>7} {'portal flush':>13} {'last - debounce':>16}"
    )
    worst = 0.0
    for n in args.clients:
        runs = [asyncio.run(measure(n, args.debounce)) for _ in range(args.repeats)]
        run = sorted(runs, key=lambda r: r["last"])[len(runs) // 2]
        past = run["last"] - args.debounce
        worst = max(worst, past)
        print(
            f"{n:>8} {run['first']:>7.3f} {run['median']:>7.3f} {run['p99']:>7.3f} {run['last']:>7.3f} "
            f"{run['portal_flush']:>13.3f} {past:>16.3f}",
            flush=True,
        )
    print(f"goal: 1,000 clients < 1 s past the debounce -> worst {worst:.3f} s: {'met' if worst < 1.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
