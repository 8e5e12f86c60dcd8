"""``python -m connlib allocate`` start-up: process start to its first request on the wire.

A UDP socket on 127.0.0.1 plays the relay and never answers; the bench starts the command with
``--relay`` pointing at it and measures from just before the spawn to the first datagram (the
STUN BINDING that opens every allocation), then kills the process. The floor, interleaved in the
same run: ``python -c`` sending one datagram with the standard library (the interpreter's own
start-up plus a socket).

``allocate`` runs twice per repeat: as this environment runs it (where ``PYTHONDONTWRITEBYTECODE``
is set and the checkout has no ``__pycache__``, every project module is compiled from source at each
start: ~28 % of the instructions), and with bytecode cached, as an installed package runs (pip
compiles at install): ``PYTHONPYCACHEPREFIX`` names a temporary directory that one warm-up run fills.

    python -m bench.allocate_startup [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

FLOOR = (
    "import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', int(sys.argv[1])))"
)
TIMEOUT = 10.0
GOAL_MS = 60.0  # issue 14, on a quiet machine (the floor then is ~15 ms)


def _first_datagram(command: list[str], sock: socket.socket, env: dict[str, str] | None = None) -> float:
    """Seconds from spawn to the first datagram on ``sock``; the process is killed after."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        sock.settimeout(TIMEOUT)
        sock.recvfrom(2048)
        return time.perf_counter() - start
    finally:
        process.kill()
        process.wait()


def run(repeats: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"allocate": [], "allocate, bytecode cached": [], "python floor": []}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, tempfile.TemporaryDirectory() as cache:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        allocate = [sys.executable, "-m", "connlib", "allocate", "--relay", f"127.0.0.1:{port}"]
        allocate += ["--username", "1:bench", "--password", "x"]
        floor = [sys.executable, "-c", FLOOR, str(port)]
        cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = cache
        _first_datagram(allocate, sock, cached)  # the warm-up that writes the bytecode
        for _ in range(repeats):
            figures["allocate"].append(_first_datagram(allocate, sock))
            figures["allocate, bytecode cached"].append(_first_datagram(allocate, sock, cached))
            figures["python floor"].append(_first_datagram(floor, sock))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.allocate_startup", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    figures = run(args.repeats)
    print(f"process start to first datagram, ms, {args.repeats} interleaved repeats (cwd {os.getcwd()})")
    for name, values in figures.items():
        ms = sorted(v * 1000 for v in values)
        print(f"  {name:<26} min {ms[0]:6.1f}  median {statistics.median(ms):6.1f}  max {ms[-1]:6.1f}")
    cached = statistics.median(figures["allocate, bytecode cached"]) * 1000
    print(
        f"goal (issue 14): <= {GOAL_MS:g} ms, bytecode cached, median {cached:.1f} ms: {'met' if cached <= GOAL_MS else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
