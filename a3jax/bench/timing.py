"""Wall-clock timing of jitted functions: warm up (compile), then the median of repeats."""

from __future__ import annotations

import statistics
import time

import jax


def median_ms(fn, *args, repeats: int = 10, warmup: int = 2) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)
