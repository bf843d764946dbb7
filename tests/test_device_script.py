"""The prepared device run (launch/device_checks.sh) dry-run on this CPU with tiny arguments: every
check runs its real command line (the tiny shapes come after its own options, which argparse still
parses and uses), so a typo or a renamed option fails here, not on a lent GPU."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY_MODEL = "--config experiments/tiny.py --config.data.seq_len=32 --config.model.n_layers=1"


def test_every_device_check_runs_on_a_cpu_with_tiny_arguments(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "A3JAX_WHEELS": "0", "XLA_FLAGS": "",  # one CPU device
           # the checks' processes share their compilations (the same tiny train steps recur)
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
           "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}",
           "A3JAX_PARITY_ARGS": "--seq-len 64 --head-dims 32 --dtypes float32 --heads 2 --kv-heads 1",
           "A3JAX_ATTN_ARGS": "--seq-len 64 --heads 2 --kv-heads 1 --head-dim 32 --dtype float32 --backends xla "
                              "--repeats 1",
           "A3JAX_TRAIN_ARGS": f"{TINY_MODEL} --repeats 1 --batch-sizes 2 --loss-chunks 16",
           "A3JAX_SETTINGS_ARGS": f"{TINY_MODEL} --repeats 1 --batch-sizes 2 --variants a3",
           "A3JAX_FLAGS_ARGS": f"{TINY_MODEL} --repeats 1 --batch-sizes 2 --variants a3",
           "A3JAX_DECODE_ARGS": "--config tiny --row-len 24 --gap 8 --batch 2 --repeats 1 --speculative 2"}
    done = subprocess.run(["bash", "launch/device_checks.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    out = done.stdout + done.stderr
    exits = [line for line in out.splitlines() if line.startswith("=== ") and " exit " in line]
    assert [line.split()[1] for line in exits] == ["parity", "attention", "train", "decode", "settings", "flags"], out
    assert all(line.endswith("exit 0") for line in exits), "\n".join(exits) + "\n" + out[-3000:]
    tables = {p.stem: p.read_text() for p in (tmp_path / "out").glob("*.txt")}
    assert "top " in tables["train"] and "operations by time" in tables["train"]  # the profile's top ops
    assert "largest batch: the device reports no memory limit (CPU)" in tables["train"]  # --max-batch was passed
    assert "XLA GPU flags off" in tables["flags"]
    # the device run's own options reached the commands: three remat policies, then the full logits
    rows = [line.split() for line in tables["settings"].splitlines() if line.startswith("a3 ")]
    assert [(row[3], row[4]) for row in rows] == [("none", "2048"), ("save_attention", "2048"), ("dots", "2048"),
                                                  (rows[-1][3], "0")], tables["settings"]
    assert "llama3_1b" not in tables["decode"] and "speculative(2" in tables["decode"]  # the tiny override won


def test_checks_that_would_start_too_late_are_skipped_and_named(tmp_path):
    """The run keeps within A3JAX_DEADLINE_S (a device call is cut at 600 s): with no time left,
    every check is skipped, each says so in its table, and the last line says how to run them."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "A3JAX_WHEELS": "0", "A3JAX_DEADLINE_S": "30",
           "A3JAX_CHECKS": "parity decode", "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "launch/device_checks.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exit " not in done.stdout  # nothing ran
    for name in ("parity", "decode"):
        assert (tmp_path / "out" / f"{name}.txt").read_text().startswith(f"=== {name} skipped:")
    assert done.stdout.strip().splitlines()[-1].startswith('skipped for time: parity decode (run them in a second '
                                                            'call: A3JAX_CHECKS="parity decode")'), done.stdout
