"""Shared fixtures: a micro config and a small in-memory corpus (tests never need the network)."""

import atexit
import functools
import os
import pathlib
import shutil
import tempfile

# Eight fake CPU devices for the sharded tests; must be set before jax is imported.
# (XLA's fast-compile flags -- no backend optimisations -- halved the suite's time, but one CI run
# with them set globally lost a worker to an abort inside a train step that did not reproduce;
# until that is understood they are used only per compile, in test_splash.py and
# test_prefix_chunks.py, through `fast_compile_options`.)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import numpy as np
import pytest

from a3jax.configs import load_config
from a3jax.data import ByteTokenizer, corpus_from_texts
from a3jax.host_memory import keep_freed_memory

keep_freed_memory()  # as the CLI does, before JAX starts its CPU threads: XLA:CPU's temporaries stay in the heap

# Identical programs recur across tests (each train() jits a fresh closure): share compilations
# through a persistent cache private to this test process, removed when it exits (each run used to
# leave 5-10 MB per worker in the temp folder).
_XLA_CACHE = tempfile.mkdtemp(prefix="a3jax-test-xla-cache-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# XLA's CPU options for a fast compile (no backend optimisations) of the big interpret-mode kernel
# graphs. XLA adds and drops options between releases (jaxlib 0.12 has no
# xla_cpu_use_fusion_emitters) and an unknown one is an error, so each is probed once and only
# those this jaxlib knows are passed.
FAST_COMPILE_CANDIDATES = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
                           "xla_cpu_parallel_codegen_split_count": 1}


@functools.cache
def fast_compile_options() -> dict | None:
    """The FAST_COMPILE_CANDIDATES this jaxlib accepts (None off CPU: other backends compile as usual)."""
    if jax.default_backend() != "cpu":
        return None
    lowered = jax.jit(lambda x: x + 1).lower(np.zeros(2, np.float32))
    supported = {}
    for name, value in FAST_COMPILE_CANDIDATES.items():
        try:
            lowered.compile(compiler_options={name: value})
        except jax.errors.JaxRuntimeError as error:
            if "no such compile option" not in str(error).lower():
                raise
        else:
            supported[name] = value
    return supported


# Markers and tiers. `make test` (the README's) runs tier 1: every test but `e2e`, `heavy` and
# `real_model`; `make test-rest` runs those; `make test-all` both; `make test-fast` tier 1 without
# `slow`.
#   slow        more than ~6 s on 2 cores (decorated where the test is defined)
#   e2e         whole modules that run whole programs: CLI subprocesses, training runs to
#               completion, the demo, several processes, a built wheel
#   heavy       every `slow` test but the few in TIER1_SLOW (one of each property: sampling
#               exactness, greedy identity, sharded parity, resume), and the tests listed in HEAVY;
#               on 2026-12-08 tier 1 took 16:35 with them (32 minutes of worker time), over issue
#               38's budget, and 9:20 without them at the same slow moment of the machine
#   real_model  needs a downloaded pretrained model (skipped, saying how to fetch it, without one)
E2E_MODULES = ("tests/reliability/", "tests/test_multiprocess.py", "tests/test_demo.py", "tests/test_device_script.py",
               "tests/test_packaging.py", "tests/test_sweep.py", "tests/test_lm_eval.py", "tests/test_bench.py")
# The slow tests tier 1 keeps: one parametrisation of each property the slow tier checks more widely.
TIER1_SLOW = (
    "tests/test_decode.py::test_samples_follow_the_exact_distribution_chi_square[random(2)-shift]",
    "tests/test_decode.py::test_groupings_reproduce_the_log_probs_in_a_full_forward[a3-cached-random(2)]",
    "tests/test_speculative.py::test_samples_follow_the_one_at_a_time_joint_exactly[scrambled-2-vector]",
    "tests/test_speculative.py::test_greedy_speculative_equals_greedy_one_at_a_time[ar-speculative(2)]",
    "tests/test_attention.py::test_sharded_train_step_loss_equals_single_device_xla[pallas]",
    "tests/test_train.py::test_metrics_of_steps_after_the_checkpoint_are_dropped_on_resume",
)
HEAVY = (  # not `slow` on their own, but second parametrisations of a tier-1 test
    # the float64 parametrisation (1e-10) stays in tier 1
    "tests/test_model.py::test_a_causal_model_converted_to_shifted_a3_is_the_causal_model_under_ar[float32-0.0001]",
    # weights cast once vs in every call, bitwise: [causal-vector-ar] stays in tier 1
    "tests/test_decode.py::test_weights_cast_once_per_generate_decode_bitwise_the_same[a3-vector-speculative(2)]",
    "tests/test_decode.py::test_weights_cast_once_per_generate_decode_bitwise_the_same[a3-shift-random(2)]",
)


# `make test` hands whole files to 2 workers (--dist loadfile) in collection order, without
# xdist's reorder by test count (--no-loadscope-reorder), which sent the long one-test programs
# (device script, demo, kill -9) last and left one worker idle for minutes. The longest files
# first (measured on 2 cores, 2026-12-03: decode ~300 s, speculative ~190 s, train ~170 s, then
# the single long e2e tests), the many short ones fill in after.
LONGEST_FIRST = ("tests/test_decode.py", "tests/test_speculative.py", "tests/test_train.py",
                 "tests/test_device_script.py", "tests/test_demo.py", "tests/reliability/test_kill.py",
                 "tests/test_parallel.py", "tests/test_splash.py", "tests/test_bench.py", "tests/test_eval.py",
                 "tests/test_multiprocess.py", "tests/test_loss.py", "tests/test_sweep.py", "tests/test_lm_eval.py")


def _run_rank(item) -> int:
    for rank, module in enumerate(LONGEST_FIRST):
        if item.nodeid.startswith(module):
            return rank
    return len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(E2E_MODULES):
            item.add_marker(pytest.mark.e2e)
        if item.nodeid in HEAVY or (item.get_closest_marker("slow") and item.nodeid not in TIER1_SLOW):
            item.add_marker(pytest.mark.heavy)
    items.sort(key=_run_rank)  # stable: each file keeps its own order


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
