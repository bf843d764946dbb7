"""The prepared device run (launch/device_checks.sh) dry-run on this CPU with tiny arguments: every
check runs its real command line, so a typo or a renamed option fails here, not on a lent GPU."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY_MODEL = "--config experiments/tiny.py --config.data.seq_len=32 --config.model.n_layers=1"


def test_every_device_check_runs_on_a_cpu_with_tiny_arguments(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "A3JAX_WHEELS": "0", "XLA_FLAGS": "",  # one CPU device
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
    assert [line.split()[1] for line in exits] == ["parity", "attention", "train", "settings", "flags", "decode"], out
    assert all(line.endswith("exit 0") for line in exits), "\n".join(exits) + "\n" + out[-3000:]
    tables = {p.stem: p.read_text() for p in (tmp_path / "out").glob("*.txt")}
    assert "top " in tables["train"] and "operations by time" in tables["train"]  # the profile's top ops
    assert "XLA GPU flags off" in tables["flags"]
    assert "save_attention" not in tables["settings"] or "dots" in tables["settings"]
