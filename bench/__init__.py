"""Benchmarks (not timed tests). ``python -m bench`` runs every ``bench/*.py`` module's ``main()``;
``python -m bench.NAME`` (or ``python -m bench NAME ...``) runs one.

Convention for a benchmark module: a ``main(argv: list[str] | None = None) -> int`` that prints
its figures (and, where it compares against a baseline, the ratio) and returns 0.
"""

import statistics
import time
from collections.abc import Callable


def median_rate(op: Callable[[], object], iterations: int, repeats: int) -> tuple[float, list[float]]:
    """Run ``op`` ``iterations`` times per repeat; return (median ops/s, every repeat's ops/s)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            op()
        rates.append(iterations / (time.perf_counter() - start))
    return statistics.median(rates), rates
