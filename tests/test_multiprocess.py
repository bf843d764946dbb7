"""A 2-process job on localhost (4 fake CPU devices each) trains like 1 process with 8 devices,
and a missing peer gives a clear error instead of a hang."""

import os
import subprocess
import sys

import numpy as np

from a3jax.train.metrics import read_metrics

from conftest import ROOT

ARGS = ["--no-progress", "--config.model.d_model=32", "--config.model.n_layers=2", "--config.model.n_heads=4",
        "--config.model.n_kv_heads=2", "--config.model.ffn_dim=64", "--config.data.seq_len=64",
        "--config.data.max_files=30", "--config.train.batch_size=8", "--config.train.steps=5",
        "--config.train.log_every=1", "--config.train.eval_every=1000", "--config.train.eval_rows=8",
        "--config.train.checkpoint_every=1000"]


def launch(processes, devices, workdir, *extra, timeout=600):
    cmd = [sys.executable, str(ROOT / "launch" / "local.py"), "--processes", str(processes),
           "--devices-per-process", str(devices), "--", "train", f"--workdir={workdir}", *ARGS, *extra]
    # The session's XLA_FLAGS pass through (on CPU: the fast-compile flags, see conftest.py);
    # launch/local.py sets each process's device count itself.
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_two_processes_match_one(tmp_path):
    one = launch(1, 8, tmp_path / "one")
    assert one.returncode == 0, one.stdout[-3000:]
    two = launch(2, 4, tmp_path / "two")
    assert two.returncode == 0, two.stdout[-3000:]
    assert "[p1]" in two.stdout and "finished at step 5" in two.stdout
    losses = {name: [r["train/loss"] for r in read_metrics(tmp_path / name) if "train/loss" in r]
              for name in ("one", "two")}
    assert len(losses["one"]) == 5
    np.testing.assert_allclose(losses["two"], losses["one"], atol=1e-5, rtol=0)


def test_missing_peer_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", A3JAX_COORDINATOR="127.0.0.1:1", A3JAX_NUM_PROCESSES="2",
               A3JAX_PROCESS_ID="1")
    result = subprocess.run([sys.executable, "-m", "a3jax.cli", "train", f"--workdir={tmp_path}",
                             "--distributed-timeout=3", *ARGS], env=env, capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "could not join the explicit job (2 processes, coordinator 127.0.0.1:1) within 3 s: nobody listens" in last
    assert "same coordinator address" in last
