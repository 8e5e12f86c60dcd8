"""Virtual clients: the largest N that one ``connlib run --clients N`` process streams at < 1 % loss.

Real parts, each its own process: the fake portal (``python -m fake_portal``), two coturn relays
(``harness.local_relay``: ``turnserver`` with its presence held by this process), one gateway
(``python -m connlib run --role gateway``) and the clients: one ``connlib run --clients N`` process
per step. Every client has its own Tunnel, allocations on both relays, connection and stream
(relay-only, so every datagram crosses two coturn hops each way); it streams ``--rate`` datagrams/s
(default 10) for ``--duration`` seconds (``--count``), and its final ``stream`` line gives its loss.
N steps up until a step has a stream at >= 1 % loss (or one that never streamed): the figure is
the largest N before that (goal: >= 1,000 on 2 cores).

Per step: worst and median stream loss, CPU (cores) and RSS of the clients process while every
client streams (the steady window), per client, and the CPU of the gateway, the portal and the
relays in the same window, to show where the time goes.

The peer (``--peer-clients K``, default 10): the same K clients as K separate ``connlib run``
processes, against K in one process, interleaved ``--repeats`` times: CPU and RSS per client.

    python -m bench.virtual_clients [--steps 50 100 200 500 1000 1500] [--rate 10] [--duration 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from harness.local_relay import LocalRelay

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
GATEWAY = "bench-gw"
LOSS_GOAL = 0.01
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
RELAYS = 2
RELAY_PORT_COUNT = 4000  # coturn's allocation ports: room for thousands of clients on each relay
STREAM_WAIT = 30.0  # beyond the spawn ramp: every client streams by then, or the step fails
GATEWAY_READY = 30.0  # seconds for the gateway to join the portal and allocate on both relays
SETTLE = 2.0  # seconds after every client streams before the steady window starts


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # fields 14 and 15 of stat(5)


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except OSError:
        return 0


@dataclass
class Step:
    """What one run of N clients measured."""

    n: int
    processes: int
    losses: list[float] = field(default_factory=list)  # per client, 1.0 for one that never streamed
    never_streamed: int = 0
    window_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # cores, per part, in the steady window
    rss: int = 0  # bytes, the clients' processes together, at the end of the window
    warnings: int = 0
    load: float = 0.0  # the machine's 1-minute load average at the end of the window (2 cores)

    @property
    def worst(self) -> float:
        return max(self.losses, default=1.0)

    @property
    def median(self) -> float:
        return statistics.median(self.losses) if self.losses else 1.0

    @property
    def ok(self) -> bool:
        return len(self.losses) == self.n and self.worst < LOSS_GOAL


class Stack:
    """Portal process, two relays, gateway process: started once, shared by every step."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-vc-"))
        self.portal: subprocess.Popen[str] | None = None
        self.gateway: asyncio.subprocess.Process | None = None
        self._gateway_lines: asyncio.Task[None] | None = None
        self.relays: list[LocalRelay] = []
        self.url = ""

    async def start(self) -> None:
        self.portal = subprocess.Popen(
            [sys.executable, "-m", "fake_portal", "--token", TOKEN, "--log-level", "WARNING"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=(self.workdir / "portal.log").open("w"),
            text=True,
        )
        assert self.portal.stdout is not None
        self.url = json.loads(await asyncio.to_thread(self.portal.stdout.readline))["url"]
        for k in range(1, RELAYS + 1):
            relay = LocalRelay(self.url, TOKEN, f"bench-relay-{k}", relay_port_count=RELAY_PORT_COUNT)
            self.relays.append(relay)
            await relay.start()
        self.gateway = await asyncio.create_subprocess_exec(
            *connlib_run(self.url, GATEWAY),
            "--role",
            "gateway",
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=(self.workdir / "gateway.log").open("w"),
        )
        ready = asyncio.Event()
        self._gateway_lines = asyncio.create_task(self._read_gateway(ready))
        # A client asks for its connection once the relays are up: the gateway must be online by then.
        await asyncio.wait_for(ready.wait(), GATEWAY_READY)

    async def _read_gateway(self, ready: asyncio.Event) -> None:
        assert self.gateway is not None and self.gateway.stdout is not None
        async for raw in self.gateway.stdout:
            line = json.loads(raw)
            if line.get("event") == "relays" and len(line.get("usable", ())) == RELAYS:
                ready.set()

    def pids(self) -> dict[str, list[int]]:
        assert self.portal is not None and self.gateway is not None
        relays = [r.coturn.process.pid for r in self.relays if r.coturn.process is not None]
        return {"gateway": [self.gateway.pid], "portal": [self.portal.pid], "relays": relays}

    async def stop(self) -> None:
        if self.gateway is not None and self.gateway.returncode is None:
            self.gateway.terminate()
            await self.gateway.wait()
        if self._gateway_lines is not None:
            await asyncio.gather(self._gateway_lines, return_exceptions=True)
        if self.portal is not None:
            self.portal.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.portal.wait(10)
            if self.portal.poll() is None:
                self.portal.kill()
        for relay in self.relays:
            await relay.close()


def connlib_run(portal: str, peer_id: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "connlib",
        "--log-level",
        "WARNING",
        "run",
        "--portal",
        portal,
        "--token",
        TOKEN,
        "--id",
        peer_id,
        "--bind",
        "127.0.0.1",
    ]


async def run_step(stack: Stack, n: int, *, separate: bool, rate: float, duration: float, spawn_rate: float) -> Step:
    """N clients, in one process (``--clients N``) or in N processes; see the module docstring."""
    tag = f"vc{n}{'s' if separate else ''}{int(time.monotonic() * 1000) % 100000}"
    stream = ["--role", "client", "--connect", GATEWAY, "--rate", str(rate), "--count", str(int(rate * duration))]
    if separate:
        commands = [[*connlib_run(stack.url, f"{tag}-{k}"), *stream] for k in range(1, n + 1)]
    else:
        commands = [[*connlib_run(stack.url, tag), *stream, "--clients", str(n), "--spawn-rate", str(spawn_rate)]]
    last: dict[str, dict] = {}
    streaming: set[str] = set()
    everyone = asyncio.Event()
    log_path = stack.workdir / f"{tag}.log"

    async def read(process: asyncio.subprocess.Process, events: TextIO) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = json.loads(raw)
            if line.get("event") not in ("stream", "relays"):
                events.write(raw.decode())  # gaps, connections, relay events: what explains a loss
            if line.get("event") != "stream":
                continue
            last[line["id"]] = line
            if line["delivered"] > 0 and line["id"] not in streaming:
                streaming.add(line["id"])
                if len(streaming) == n:
                    everyone.set()

    step = Step(n, len(commands))
    with log_path.open("w") as log, (stack.workdir / f"{tag}.jsonl").open("w") as events:
        processes = []
        for k, command in enumerate(commands):
            if separate and spawn_rate > 0 and k:
                await asyncio.sleep(1.0 / spawn_rate)
            processes.append(
                await asyncio.create_subprocess_exec(
                    *command, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=log, limit=1 << 20
                )
            )
        readers = [asyncio.create_task(read(p, events)) for p in processes]
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(everyone.wait(), n / spawn_rate + STREAM_WAIT if spawn_rate else STREAM_WAIT)
            if everyone.is_set():
                await asyncio.sleep(SETTLE)
                step.window_s = min(10.0, duration / 3)
                parts = {"clients": [p.pid for p in processes], **stack.pids()}
                before = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in parts.items()}
                started = time.monotonic()
                await asyncio.sleep(step.window_s)
                elapsed = time.monotonic() - started
                step.rss = sum(rss_bytes(p.pid) for p in processes)
                step.load = os.getloadavg()[0]
                step.cpu = {
                    name: (sum(cpu_seconds(pid) for pid in pids) - before[name]) / elapsed
                    for name, pids in parts.items()
                }
            # Every client stops after --count datagrams; the ones still waiting to stream are cut off.
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes)), duration + STREAM_WAIT)
        except TimeoutError:
            pass
        finally:
            for process in processes:
                if process.returncode is None:
                    process.terminate()
            await asyncio.gather(*(p.wait() for p in processes))
            await asyncio.gather(*readers, return_exceptions=True)
            for line in last.values():  # the final count of each stream that lost, next to its gaps
                if line["lost"]:
                    events.write(json.dumps(line) + "\n")
    for line in last.values():
        step.losses.append(line["lost"] / line["sent"] if line["sent"] else 1.0)
    step.never_streamed = n - len(streaming)
    step.losses += [1.0] * (n - len(last))
    step.warnings = sum(1 for text in log_path.read_text().splitlines() if " WARNING " in text or " ERROR " in text)
    return step


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def print_step(step: Step) -> None:
    cpu = step.cpu
    clients = cpu.get("clients", float("nan"))
    print(
        f"{step.n:>6} {step.processes:>5} {step.worst * 100:>7.2f} {step.median * 100:>7.2f} {step.never_streamed:>6} "
        f"{clients:>6.2f} {clients / step.n * 1e3:>8.2f} {_mib(step.rss):>8} {step.rss / step.n / 1024:>8.0f} "
        f"{cpu.get('gateway', float('nan')):>5.2f} {cpu.get('relays', float('nan')):>6.2f} "
        f"{cpu.get('portal', float('nan')):>6.2f} {step.warnings:>5} {step.load:>5.1f}  {'ok' if step.ok else 'LOSS'}",
        flush=True,
    )


HEADER = (
    f"{'N':>6} {'procs':>5} {'worst%':>7} {'median%':>7} {'never':>6} {'cores':>6} {'mcore/cl':>8} "
    f"{'RSS MiB':>8} {'KiB/cl':>8} {'gw':>5} {'relays':>6} {'portal':>6} {'warns':>5} {'load':>5}"
)


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


async def bench(args: argparse.Namespace) -> int:
    stack = Stack()
    largest = 0
    try:
        await stack.start()
        print(f"{args.rate:g} datagrams/s per client for {args.duration:g} s, relay-only through 2 coturn relays")
        if args.peer_clients:
            print(f"\npeer: {args.peer_clients} clients in one process vs as separate processes, interleaved")
            print(HEADER)
            runs: dict[bool, list[Step]] = {False: [], True: []}
            for _ in range(args.repeats):
                for separate in (False, True):
                    step = await run_step(
                        stack,
                        args.peer_clients,
                        separate=separate,
                        rate=args.rate,
                        duration=args.duration,
                        spawn_rate=args.spawn_rate,
                    )
                    runs[separate].append(step)
                    print_step(step)
            for separate, steps in runs.items():
                label = "separate processes" if separate else "one process      "
                # A run whose clients did not all stream has no steady window: it is shown above, not here.
                windowed = [s for s in steps if s.cpu]
                if not windowed:
                    print(f"{label}: no run with every client streaming")
                    continue
                cpu = [s.cpu["clients"] / s.n * 1e3 for s in windowed]
                rss = [s.rss / s.n / 2**20 for s in windowed]
                print(
                    f"{label}: mcore/client {_spread(cpu)}; RSS MiB/client {_spread(rss)} "
                    f"(min / median / max of {len(windowed)} of {len(steps)} runs)"
                )
        print(f"\nstep-up: one `connlib run --clients N` process (spawn rate {args.spawn_rate:g}/s)")
        print(HEADER)
        measured: list[Step] = []
        for n in args.steps:
            step = await run_step(
                stack, n, separate=False, rate=args.rate, duration=args.duration, spawn_rate=args.spawn_rate
            )
            print_step(step)
            if step.rss:
                measured.append(step)
            if not step.ok:
                break
            largest = n
        if len(measured) >= 2:
            # The interpreter and the runtime are paid once: what one more client costs.
            first, last = measured[0], measured[-1]
            extra = last.n - first.n
            rss_kib = (last.rss - first.rss) / extra / 1024
            mcore = (last.cpu["clients"] - first.cpu["clients"]) / extra * 1e3
            print(f"marginal cost per client, N={first.n} -> {last.n}: RSS {rss_kib:.0f} KiB, CPU {mcore:.2f} mcore")
    finally:
        await stack.stop()
    goal = "met" if largest >= args.goal else "NOT met"
    print(
        f"largest N with every stream < {LOSS_GOAL:.0%} loss: {largest} (goal >= {args.goal:,}: {goal}); logs in {stack.workdir}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.virtual_clients", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200, 500, 1000, 1500])
    parser.add_argument("--rate", type=float, default=10.0, help="datagrams per second per client (default 10)")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds each client streams (default 40)")
    parser.add_argument("--spawn-rate", type=float, default=100.0, help="clients started per second (default 100)")
    parser.add_argument("--peer-clients", type=int, default=10, help="clients in the peer comparison (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the peer comparison")
    parser.add_argument("--goal", type=int, default=1000)
    return asyncio.run(bench(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
