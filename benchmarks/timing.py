"""Interleaved timing for the benchmarks: the machines are shared, so each contender runs in turn,
several rounds, and the median round counts."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def interleaved_ms(runs: dict[str, Callable[[Any], Any]], batches: list[Any], rounds: int = 3) -> dict[str, float]:
    """Median milliseconds per batch of each ``runs`` entry over ``rounds`` interleaved rounds of all ``batches``."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            for b in batches:
                run(b)
            times[name].append((time.perf_counter() - t) / len(batches))
    return {k: statistics.median(v) * 1000 for k, v in times.items()}
