"""Timing that benchmarks share: compile once, then the median of several device runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax


class Timing(NamedTuple):
    compile_s: float  # first call (trace + compile + one run) minus a steady-state run
    median_s: float  # median wall time of `repeats` steady-state runs
    runs_s: tuple[float, ...]


def time_fn(
    fn: Callable[..., Any], *args: Any, repeats: int = 5, min_time_s: float = 0.0
) -> Timing:
    """Times `fn(*args)` with `block_until_ready`; the compile time is reported apart.

    Runs at least `repeats` times and, if `min_time_s` is set, until that much time was spent.
    """
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    runs = []
    spent = 0.0
    while len(runs) < repeats or spent < min_time_s:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        dt = time.perf_counter() - t0
        runs.append(dt)
        spent += dt
    median = statistics.median(runs)
    return Timing(max(first - median, 0.0), median, tuple(runs))


def time_host(fn: Callable[..., Any], *args: Any, repeats: int = 3) -> Timing:
    """Times a host (NumPy / pure-Python) function: median of `repeats` runs, no compile."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        runs.append(time.perf_counter() - t0)
    return Timing(0.0, statistics.median(runs), tuple(runs))
