"""Helpers shared by the benchmark scripts (run from a checkout: `python bench/<name>.py`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def median_time(fn: Callable[[], object], repeat: int, warmup: int = 0) -> float:
    """Median wall seconds of `fn()` over `repeat` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def print_table(rows: Sequence[tuple[str, str]]) -> None:
    """A two-column `measure  value` table on stdout."""
    width = max(len(k) for k, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  -----")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
