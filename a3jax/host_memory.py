"""glibc malloc settings for a process whose XLA programs run on the CPU.

XLA:CPU allocates each execution's temporaries as one block: about 80 MB for the demo's A3 train
step. glibc serves a block that large with a fresh mmap in every call (a thread's arena holds at
most 64 MB, and freed mmaps go back to the kernel), so every step faults all of it in again, page
by page: 2.4-3.3M page faults in 80 steps of the demo's model, a fifth of its step time on 2 cores.
One arena (it grows by brk, with no size limit), no mmap, and no trimming of the heap's free top
keep that block in the process from one step to the next: the demo's causal step took 0.80x the
time, its A3 step 0.82x (BENCHMARKS.md, issue 38). The cost: memory freed by the process stays
mapped to it (its peak), which is what a training process holds anyway.

Except for a large model: SmolLM2-135M's train step (8 x 128 tokens) allocates blocks of several
GB, and with mmap off the heap grew by a step's temporaries two or three steps in a row (freed
blocks split by smaller allocations no longer fit the next step's): 20.3 GB peak RSS in 24 steps
against 8.8 GB with glibc's defaults, the same losses and no slower (BENCHMARKS.md, 2026-12-08).
So `train` hands a model above KEEP_UP_TO_PARAMS back to a bounded setting (fit_model): blocks
above 32 MB (glibc's largest mmap threshold) are mmapped and returned when freed, smaller ones
stay in the heap.

Applied by the CLI and the tests before JAX starts, only where XLA computes on the CPU (no GPU or
TPU plugin installed, or JAX_PLATFORMS=cpu) and glibc is the C library; A3JAX_CPU_MALLOC=0 leaves
malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os

OPT_OUT = "A3JAX_CPU_MALLOC"
# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -3, -4, -8
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
DEFAULT_MMAP_MAX = 65536
# measured: kept memory made the demo's ~1M-parameter model's steps 0.8x; it gave SmolLM2-135M
# no speed and 2.3x the peak
KEEP_UP_TO_PARAMS = 20_000_000
_applied = False
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def computes_on_cpu(environ=os.environ) -> bool:
    """Whether JAX will run on the CPU: JAX_PLATFORMS says only cpu, or no accelerator plugin is
    installed (decided without starting JAX)."""
    platforms = {p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()}
    if platforms:
        return platforms == {"cpu"}
    return not any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


def _glibc():
    path = ctypes.util.find_library("c")
    if not path:
        return None
    try:
        libc = ctypes.CDLL(path)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it: musl and macOS do not)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(environ=os.environ) -> bool:
    """Applies the settings above when they apply; returns whether they were applied."""
    if environ.get(OPT_OUT, "1") == "0" or not computes_on_cpu(environ):
        return False
    libc = _glibc()
    if libc is None:
        return False
    global _applied
    _applied = all(libc.mallopt(param, value) == 1
                   for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)))
    return _applied


def fit_model(n_weights: int) -> bool:
    """Where keep_freed_memory applied and the model has more than KEEP_UP_TO_PARAMS weights
    (ModelConfig.n_weights): mmap again for blocks above 32 MB, trimming past 64 MB (see the
    module docstring); callable at any time (it only changes how later allocations are served).
    Returns whether it did."""
    global _applied
    if not _applied or n_weights <= KEEP_UP_TO_PARAMS:
        return False
    released = all(_glibc().mallopt(param, value) == 1
                   for param, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_MMAP_MAX, DEFAULT_MMAP_MAX),
                                        (M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)))
    _applied = not released
    return released
