"""Shared fixtures: a micro config and a small in-memory corpus (tests never need the network)."""

import os
import pathlib
import subprocess
import sys
import tempfile

# XLA's CPU compiles are most of the suite's time: on CPU, compile for speed of compiling rather
# than of the code (no LLVM optimisations, the classic fusion emitters, one codegen thread;
# test_splash.py passes the same as compiler options). The HLO programs, and so what is computed,
# stay the same: values may differ from a default compile by rounding only, and the bitwise
# comparisons are between programs compiled with these same flags. About halves the suite's time.
# tests/reliability/conftest.py passes the session's XLA_FLAGS on to its `a3jax train` children.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                      "--xla_cpu_parallel_codegen_split_count=1")


def _xla_flags() -> str:
    """Eight fake CPU devices for the sharded tests and, where the tests run on CPU and this jaxlib
    knows them (XLA aborts on an unknown flag), FAST_COMPILE_FLAGS: checked in a child process."""
    devices = "--xla_force_host_platform_device_count=8"
    fast = f"{devices} {FAST_COMPILE_FLAGS}"
    try:
        probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                               env=dict(os.environ, XLA_FLAGS=fast), capture_output=True, text=True, timeout=300)
    except subprocess.SubprocessError:
        return devices
    return fast if probe.returncode == 0 and probe.stdout.split()[-1:] == ["cpu"] else devices


# Must be set before jax is imported. Set once per session: pytest-xdist workers inherit it.
if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = _xla_flags()

import jax
import pytest

from a3jax.configs import load_config
from a3jax.data import ByteTokenizer, corpus_from_texts

# Identical programs recur across tests (each train() jits a fresh closure): share compilations
# through a persistent cache private to this test session.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="a3jax-test-xla-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "tiny.py"

MICRO = [
    "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
    "model.ffn_dim=64", "model.dtype=float32", "data.seq_len=64", "train.batch_size=8",
    "train.steps=20", "train.warmup_steps=4", "train.log_every=1", "train.eval_every=10",
    "train.eval_rows=4", "train.checkpoint_every=5", "train.lr=0.003",
]


def micro_config(*extra):
    return load_config(TINY, MICRO + list(extra))


@pytest.fixture(scope="session")
def small_corpus():
    texts = []
    for i in range(40):
        body = "".join(f"    value_{j} = compute({i}, {j})\n" for j in range(i % 7 + 2))
        texts.append(f"def function_{i}(x):\n{body}    return x + {i}\n")
    return corpus_from_texts(texts, ByteTokenizer(), eval_fraction=0.1)
