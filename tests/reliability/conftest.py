"""Fault-injection harness: tiny `a3jax train` runs in real subprocesses on CPU.

Every child runs the installed `a3jax` command on one CPU device with the session's XLA flags (any
the caller set, with the device count replaced) and a persistent XLA compile cache shared by the
whole session (the first run compiles, the others load), on a prepared ArrayRecord corpus made once
per session. Results are read back from disk the way a user would: metrics.jsonl (the last record
of each step wins) and the orbax checkpoints (read whole, params and optimizer state, as numpy
arrays, compared bitwise).

Measured outcomes (trial counts, where a kill landed) are collected with `report` and printed
in a "a3jax reliability" section at the end of the pytest run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "experiments" / "tiny.py"
A3JAX = pathlib.Path(sys.executable).with_name("a3jax")  # the console script of this venv
STEPS = 12

# A tiny model and run: every child compiles the same few programs (shared through the cache).
# Data overrides are added by `overrides()` (the session's prepared corpus).
SMALL = [
    "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "model.ffn_dim=64",
    "model.dtype=float32", "data.seq_len=32", "data.source=arrayrecord", "train.batch_size=4",
    f"train.steps={STEPS}", "train.warmup_steps=2", "train.log_every=1", "train.eval_every=1000",
    "train.eval_rows=2", "train.checkpoint_every=2", "train.keep_checkpoints=2",
]

_REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("a3jax reliability: measured outcomes")
        for line in _REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def report():
    """report(line): a measured outcome, printed in the summary at the end of the session."""
    return _REPORT.append


# Corpus and children -----------------------------------------------------------------------------

def corpus_texts() -> list[str]:
    texts = []
    for i in range(48):
        body = "".join(f"    value_{j} = compute({i}, {j}) * {j + i % 5}\n" for j in range(i % 7 + 2))
        texts.append(f"def function_{i}(x):\n{body}    return x + {i}\n")
    return texts


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> pathlib.Path:
    """A one-shard ArrayRecord corpus (48 documents) written by `a3jax prepare`."""
    from a3jax import cli

    root = tmp_path_factory.mktemp("corpus")
    (root / "code.txt").write_text("\n\n".join(corpus_texts()), "utf-8")
    out = root / "shards"
    code = cli.main(["prepare", f"--input={root / 'code.txt'}", f"--output={out}", "--tokenizer=bytes",
                     r"--doc-separator=\n\n", "--workers=0", "--no-progress"])
    assert code == 0
    assert [p.name for p in out.glob("*.arrayrecord")] == ["shard-00000.arrayrecord"]
    return out


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory) -> pathlib.Path:
    """The children's persistent compile cache: one per test session, shared by its pytest-xdist
    workers (their base temp folders have a common parent private to the session)."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "a3jax-reliability-xla-cache"
    path.mkdir(exist_ok=True)
    return path


def child_xla_flags() -> str:
    """The session's XLA_FLAGS with the fake device count set to one."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    return " ".join(flags + ["--xla_force_host_platform_device_count=1"])


@dataclasses.dataclass
class Harness:
    shards: pathlib.Path
    cache: pathlib.Path

    def overrides(self, *extra: str) -> list[str]:
        """The tiny run's config overrides ("key=value"), then `extra`."""
        return SMALL + [f"data.paths={self.shards}"] + list(extra)

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("A3JAX_DEBUG", "A3JAX_COORDINATOR")}
        env.update(
            XLA_FLAGS=child_xla_flags(),
            JAX_PLATFORMS="cpu",
            JAX_COMPILATION_CACHE_DIR=str(self.cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
            PYTHONUNBUFFERED="1",
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        return env

    def command(self, workdir: pathlib.Path, *extra: str, args: tuple = ()) -> list[str]:
        """`a3jax train` of the tiny run in `workdir`; `extra` are more config overrides."""
        return ([str(A3JAX), "train", f"--config={TINY}", f"--workdir={workdir}", "--no-progress", *args]
                + [f"--config.{o}" for o in self.overrides(*extra)])

    def run(self, workdir, *extra, args=(), timeout=180, prefix=()) -> subprocess.CompletedProcess:
        """Runs the command (after `prefix`, e.g. an exec wrapper) to its end; stdout/stderr
        through pipes (never subject to RLIMIT_FSIZE)."""
        return subprocess.run(list(prefix) + self.command(workdir, *extra, args=args), env=self.env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, workdir: pathlib.Path, *extra, args=()) -> Child:
        """Starts the command in the background (output to files next to the workdir)."""
        workdir.parent.mkdir(parents=True, exist_ok=True)
        out_path = workdir.parent / f"{workdir.name}.{time.monotonic_ns()}.out"
        err_path = out_path.with_suffix(".err")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(self.command(workdir, *extra, args=args), env=self.env(), cwd=ROOT,
                                    stdout=out, stderr=err)
        return Child(proc, workdir, out_path, err_path)


@dataclasses.dataclass
class Child:
    proc: subprocess.Popen
    workdir: pathlib.Path
    out_path: pathlib.Path
    err_path: pathlib.Path

    def wait(self, timeout: float = 180) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for(self, condition, timeout: float = 120, poll: float = 0.005) -> bool:
        """Polls condition() until it holds (True) or the child exits first (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if condition():
                return True
            time.sleep(poll)
        self.proc.kill()
        raise TimeoutError(f"child in {self.workdir} did not get there in {timeout} s:\n{self.stderr}")


@pytest.fixture(scope="session")
def harness(shards, xla_cache) -> Harness:
    return Harness(shards, xla_cache)


# Reading a workdir -------------------------------------------------------------------------------

def metrics_lines(workdir: pathlib.Path) -> int:
    """Complete lines in metrics.jsonl (cheap: for polling a running child)."""
    try:
        return (workdir / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def train_records(workdir: pathlib.Path) -> dict[int, dict]:
    """step -> the last train record of that step in metrics.jsonl."""
    records = {}
    for line in (workdir / "metrics.jsonl").read_text("utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run may be cut
            continue
        if "train/loss" in record:
            records[int(record["step"])] = record
    return records


def losses(workdir: pathlib.Path) -> dict[int, tuple]:
    """step -> (loss, grad_norm, lr) as logged (last record per step wins)."""
    return {step: (r["train/loss"], r["train/grad_norm"], r["train/lr"])
            for step, r in sorted(train_records(workdir).items())}


def checkpoint_entries(workdir: pathlib.Path) -> list[str]:
    try:
        return sorted(os.listdir(workdir / "checkpoints"))
    except FileNotFoundError:
        return []


def complete_steps(workdir: pathlib.Path) -> list[int]:
    """Steps of the finished checkpoints (orbax renames a step's temporary folder when complete)."""
    return sorted(int(name) for name in checkpoint_entries(workdir) if name.isdigit())


def partial_entries(workdir: pathlib.Path) -> list[str]:
    """Temporary folders of checkpoint writes that did not finish."""
    return [name for name in checkpoint_entries(workdir) if "tmp" in name]


def read_state(workdir: pathlib.Path, step: int | None = None) -> tuple[int, dict[str, np.ndarray]]:
    """(step, {key path: array}) of the whole saved train state (params and optimizer state)."""
    import jax
    import orbax.checkpoint as ocp

    step = complete_steps(workdir)[-1] if step is None else step
    path = workdir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    return step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state)}


def state_differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    """Leaves that are not bitwise equal (dtype, shape and bytes)."""
    diffs = [f"{k}: only in one state" for k in sorted(set(a) ^ set(b))]
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            worst = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.shape == y.shape else None
            diffs.append(f"{key}: differs (max abs diff {worst})")
    return diffs


def tree_digest(directory: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under `directory` (relative path -> digest)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")


def resumed_step(stderr: str) -> int | None:
    found = RESUMED.findall(stderr)
    return int(found[-1][1]) if found else None


@dataclasses.dataclass
class Reference:
    workdir: pathlib.Path
    losses: dict
    step: int
    state: dict

    def differences(self, workdir: pathlib.Path) -> list[str]:
        """How `workdir`'s finished run differs from the uninterrupted one (empty: bitwise equal)."""
        problems = []
        got = losses(workdir)
        if got != self.losses:
            bad = [s for s in sorted(set(got) | set(self.losses)) if got.get(s) != self.losses.get(s)]
            problems.append(f"logged loss/grad_norm/lr differ at steps {bad}")
        step, state = read_state(workdir)
        if step != self.step:
            problems.append(f"final checkpoint at step {step}, reference {self.step}")
        problems += state_differences(state, self.state)
        return problems


@pytest.fixture(scope="session")
def reference(harness, tmp_path_factory) -> Reference:
    """The tiny run, uninterrupted. It keeps all its checkpoints (2, 4, ..., 12), so that workdirs
    at an earlier step can be made from it (`copy_workdir`); that setting changes nothing else."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    result = harness.run(workdir, f"train.keep_checkpoints={STEPS}")
    assert result.returncode == 0, result.stderr
    assert complete_steps(workdir) == list(range(2, STEPS + 1, 2))
    step, state = read_state(workdir)
    assert step == STEPS
    logged = losses(workdir)
    assert sorted(logged) == list(range(1, STEPS + 1))
    return Reference(workdir, logged, step, state)


@pytest.fixture(scope="session")
def at_step4(reference, tmp_path_factory) -> pathlib.Path:
    """The tiny run as it was after step 4: checkpoints 2 and 4 (those the uninterrupted run
    wrote; its later ones removed). Copy it before changing it."""
    return copy_workdir(reference.workdir, tmp_path_factory.mktemp("at-step4") / "run", keep={2, 4})


def copy_workdir(source: pathlib.Path, target: pathlib.Path, keep: set[int] | None = None) -> pathlib.Path:
    """A copy of a workdir; with `keep`, only those steps' checkpoints."""
    shutil.copytree(source, target)
    if keep is not None:
        for step in complete_steps(target):
            if step not in keep:
                shutil.rmtree(target / "checkpoints" / str(step))
        assert complete_steps(target) == sorted(keep)
    return target
