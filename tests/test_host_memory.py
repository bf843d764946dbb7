"""The CPU host settings the CLI applies before JAX starts: glibc malloc keeping XLA:CPU's
per-execution temporaries (a3jax/host_memory.py) and one XLA CPU device per core for the demo
(a3jax/xla_flags.apply_host_devices)."""

import os
import subprocess
import sys

import pytest

from a3jax import host_memory, xla_flags

# A jitted function whose temporaries (a 64 MB matrix) are allocated in every call, run in a
# fresh process; prints the page faults of the last 10 calls.
_FAULTS = """
import resource, sys
from a3jax.host_memory import keep_freed_memory
applied = keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: jnp.sum(jnp.tanh(x @ w) @ w.T))  # x @ w: a [4096, 4096] float32 temporary
x, w = jnp.ones((4096, 64)), jnp.ones((64, 4096)) / 64
for _ in range(3):
    f(x, w).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    f(x, w).block_until_ready()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(opt_out: bool) -> tuple[str, int]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", host_memory.OPT_OUT: "0" if opt_out else "1"}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-800:]
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc's mallopt only (Linux with glibc)")
def test_kept_memory_stops_the_page_faults_of_each_call():
    """With the settings the 64 MB of temporaries stay in the heap: ten calls fault in less than
    one call's worth (16k pages of 4 KB). jax 0.10's XLA:CPU mmaps the block afresh in every call
    without them (~170k faults in ten calls); newer XLA (jax 0.12, seen in CI) reuses it by itself,
    so the comparison with the default is made only where the default faults."""
    applied, faults_kept = _faults(opt_out=False)
    not_applied, faults_default = _faults(opt_out=True)
    assert (applied, not_applied) == ("True", "False")
    one_call = 4096 * 4096 * 4 // 4096
    assert faults_kept < one_call, (faults_kept, faults_default)
    if faults_default > 10 * one_call // 2:  # this XLA frees the block between calls
        assert faults_kept < faults_default / 10, (faults_kept, faults_default)


def test_malloc_settings_apply_only_where_xla_computes_on_the_cpu(monkeypatch):
    assert host_memory.computes_on_cpu({"JAX_PLATFORMS": "cpu"})
    assert not host_memory.computes_on_cpu({"JAX_PLATFORMS": "cuda,cpu"})
    assert not host_memory.keep_freed_memory({"JAX_PLATFORMS": "tpu"})
    assert not host_memory.keep_freed_memory({host_memory.OPT_OUT: "0", "JAX_PLATFORMS": "cpu"})
    monkeypatch.setattr(host_memory.importlib.util, "find_spec", lambda name: object() if name == "libtpu" else None)
    assert not host_memory.computes_on_cpu({})
    monkeypatch.setattr(host_memory.importlib.util, "find_spec", lambda name: None)
    assert host_memory.computes_on_cpu({})


def test_host_devices_are_set_only_where_the_user_set_no_count():
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    assert xla_flags.apply_host_devices(2, env)
    assert env["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2"
    assert not xla_flags.apply_host_devices(4, env)  # the count is the user's (or set already)
    assert env["XLA_FLAGS"].endswith("=2")
    assert not xla_flags.apply_host_devices(1, {}) and xla_flags.apply_host_devices(3, {})


# Keep the settings, then fit them to a model (a config preset), and free a 200 MB block: how many
# MB of it the process still holds.
_FIT = """
import sys
from a3jax import host_memory
from a3jax.configs import load_config, parse
applied = host_memory.keep_freed_memory()
fitted = host_memory.fit_model(parse(load_config(sys.argv[1])).model.n_weights)
import numpy as np
rss = lambda: int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])
before = rss()
block = np.ones(50_000_000, np.float32)
block = None
print(applied, fitted, (rss() - before) // 1024)
"""


@pytest.mark.skipif(host_memory._glibc() is None or not os.path.exists("/proc/self/status"),
                    reason="glibc's mallopt and Linux's /proc only")
@pytest.mark.parametrize("preset, fitted, held", [("tiny", "False", 190), ("llama3_1b", "True", 0)])
def test_a_large_models_freed_blocks_go_back_to_the_system(preset, fitted, held):
    """A small model keeps its freed temporaries (the page faults they save); a model above
    KEEP_UP_TO_PARAMS gets blocks past 32 MB mmapped and returned when freed (SmolLM2's step held
    2.3x its memory otherwise)."""
    assert load_config_model("tiny").n_weights < host_memory.KEEP_UP_TO_PARAMS
    assert load_config_model("llama3_1b").n_weights > host_memory.KEEP_UP_TO_PARAMS
    env = {**os.environ, "JAX_PLATFORMS": "cpu", host_memory.OPT_OUT: "1"}
    done = subprocess.run([sys.executable, "-c", _FIT, preset], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-800:]
    applied, was_fitted, mb = done.stdout.split()
    assert (applied, was_fitted) == ("True", fitted)
    assert abs(int(mb) - held) < 20, (preset, mb)


def load_config_model(preset):
    from a3jax.configs import load_config, parse

    return parse(load_config(preset)).model
