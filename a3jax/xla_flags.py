"""XLA GPU flags for training on Hopper GPUs, set the way the fastest JAX LLM trainers set them
(NVIDIA's JAX-Toolbox performance guide; MaxText's GPU recipes). Each one, and why:

  xla_gpu_enable_latency_hiding_scheduler   schedule collectives (FSDP all-gathers, gradient
                                            reduce-scatters) to overlap compute instead of in line
  xla_gpu_enable_highest_priority_async_stream  run those collectives on a high-priority stream
  xla_gpu_enable_while_loop_double_buffering    the layer scan (model/transformer.py) prefetches the
                                            next layer's gathered weights while this one computes
  xla_gpu_enable_pipelined_all_gather / _reduce_scatter / _all_reduce
                                            move a layer's collectives across scan iterations
  xla_gpu_*_combine_threshold_bytes         fewer, larger collectives (128 MiB / 64 MiB)
  xla_gpu_enable_triton_gemm=false          cuBLAS for the matmuls: at LLM shapes on H100 it is the
                                            faster GEMM, and compiles without Triton autotuning

Every flag is known to jaxlib 0.10.2, 0.11 and 0.12 (an unknown flag aborts XLA at start). They
change how XLA:GPU schedules and which GEMM library it calls, never a result beyond float rounding;
the device script (launch/device_checks.sh) measures the step with and without them.
"""

from __future__ import annotations

import importlib.util
import os

HOPPER_FLAGS = {
    "xla_gpu_enable_latency_hiding_scheduler": "true",
    "xla_gpu_enable_highest_priority_async_stream": "true",
    "xla_gpu_enable_while_loop_double_buffering": "true",
    "xla_gpu_enable_pipelined_all_gather": "true",
    "xla_gpu_enable_pipelined_reduce_scatter": "true",
    "xla_gpu_enable_pipelined_all_reduce": "true",
    "xla_gpu_all_reduce_combine_threshold_bytes": "134217728",
    "xla_gpu_all_gather_combine_threshold_bytes": "134217728",
    "xla_gpu_reduce_scatter_combine_threshold_bytes": "67108864",
    "xla_gpu_enable_triton_gemm": "false",
}
OPT_OUT = "A3JAX_XLA_GPU_FLAGS"  # =0: leave XLA_FLAGS as the user set it


def cuda_installed() -> bool:
    return any(importlib.util.find_spec(f"jax_cuda{v}_plugin") is not None for v in (12, 13))


def with_gpu_flags(xla_flags: str) -> str:
    """XLA_FLAGS with every HOPPER_FLAGS entry the user did not set already added."""
    present = {part.split("=", 1)[0].lstrip("-") for part in xla_flags.split()}
    added = [f"--{name}={value}" for name, value in HOPPER_FLAGS.items() if name not in present]
    return " ".join([xla_flags.strip(), *added]).strip()


def apply_gpu_flags(environ=os.environ) -> bool:
    """Adds the Hopper flags to XLA_FLAGS when jax's CUDA plugin is installed (unless
    A3JAX_XLA_GPU_FLAGS=0). Must run before JAX starts its backends (the CLI calls it first).
    Returns whether anything was added."""
    if environ.get(OPT_OUT, "1") == "0" or environ.get("JAX_PLATFORMS", "") == "cpu" or not cuda_installed():
        return False
    before = environ.get("XLA_FLAGS", "")
    environ["XLA_FLAGS"] = with_gpu_flags(before)
    return environ["XLA_FLAGS"] != before


HOST_DEVICES_FLAG = "xla_force_host_platform_device_count"


def apply_host_devices(count: int, environ=os.environ) -> bool:
    """Makes XLA's CPU platform `count` devices (one per core: a mesh over them trains data
    parallel, which keeps both cores of a small CPU busier than one device's thread pool does:
    the demo's steps took 0.8x the time on 2 cores). Only before JAX starts its CPU backend, and
    only when the user's XLA_FLAGS do not set a count. Returns whether it was set."""
    flags = environ.get("XLA_FLAGS", "")
    if count <= 1 or HOST_DEVICES_FLAG in flags:
        return False
    environ["XLA_FLAGS"] = f"{flags} --{HOST_DEVICES_FLAG}={count}".strip()
    return True
