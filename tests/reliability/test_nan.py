"""Numerical faults: NaN gradients injected at chosen steps of a real `a3jax train` process.

Covered:
  * one poisoned step (0-based step index K, i.e. the record of step K + 1): training goes on to
    the end (exit 0); metrics.jsonl has train/skipped = 1 at that step and 0 elsewhere, and
    train/skipped_total counts it from there on; the final train state (params and optimizer state)
    and every other step's logged loss / grad norm / lr equal, bitwise, a separate computation
    (`skipping_run`, in its own 1-device process) that runs the same config's data, init and
    train step and simply never calls step K (its batch is consumed, params and optimizer state
    stay as they were); the steps before K match too, so that computation reproduces the CLI
    process bitwise. Bitwise needs the same XLA program: its step is compiled with the same
    inject_nan_at_steps (the poisoned step is simply never called there). Compiling the
    injection in changes the rounding of the Adam update on clean steps too, so against the
    program of a run without injection the result is only close (measured while writing this
    test: up to 3e-8 in the Adam first moments after 12 steps).
  * train.max_bad_steps consecutive poisoned steps: exit code 3, a one-line message saying the
    updates were non-finite and naming the last good checkpoint, and every file under
    checkpoints/ byte-identical to before the run (the streak ends on a checkpoint_every step: the
    stuck state is not saved).
"""

from __future__ import annotations

import pathlib
import re

import numpy as np

from .conftest import ROOT, STEPS, TINY, copy_workdir, read_state, state_differences, train_records, tree_digest

K = 5  # 0-based index of the poisoned step


def skipping_run(overrides: list[str], skip: set[int], compiled_with: tuple, out: str) -> None:
    """Runs in a 1-device child (see `reference_skipping`): the tiny config's data, init and train
    step, set up on the same mesh and shardings as `a3jax train` (so the compiled programs are
    the same and come from the shared compile cache), never calling the step at the indices in
    `skip` (0-based): its batch is consumed, params and optimizer state stay as they were.
    Writes the final state (.npz, flat key paths) and the logged values (.json)."""
    import json

    import jax

    from a3jax import parallel
    from a3jax.configs import load_config, model_config
    from a3jax.data import load_corpus, load_tokenizer, train_batches
    from a3jax.model.params import abstract_params, init_model
    from a3jax.train.optimizer import learning_rate_schedule, make_optimizer
    from a3jax.train.step import make_train_step

    config = load_config(TINY, overrides)
    model_cfg = model_config(config)
    tokenizer = load_tokenizer(config.data)
    corpus = load_corpus(config.data, tokenizer)
    mesh = parallel.make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        _, shapes = abstract_params(model_cfg)
        params_sh = parallel.param_shardings(mesh, shapes, config.mesh.rules)
        model_def, params = init_model(model_cfg, int(config.seed), params_sh)
        tx = make_optimizer(config.train)
        opt_state = jax.jit(tx.init)(params)
        batch_sh = parallel.batch_sharding(mesh)
        shardings = (params_sh, jax.tree.map(lambda x: x.sharding, opt_state), batch_sh)
        train_step = make_train_step(model_def, tx, learning_rate_schedule(config.train), shardings,
                                     inject_nan_at_steps=tuple(compiled_with))
        batches = train_batches(config, corpus, tokenizer)
        logged = {}
        for step in range(STEPS):
            batch = parallel.global_batch(next(batches), batch_sh)  # consumed even when skipped
            if step in skip:
                continue
            params, opt_state, metrics = train_step(params, opt_state, step, batch)
            metrics = jax.device_get(metrics)
            logged[step + 1] = [float(metrics["loss"]), float(metrics["grad_norm"]), float(metrics["lr"])]
    state = jax.device_get({"params": params, "opt_state": opt_state})
    flat = {re.sub(r"\.(\w+)", r"['\1']", jax.tree_util.keystr(path)): np.asarray(leaf)  # as orbax names them
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)}
    np.savez(out + ".npz", **flat)
    pathlib.Path(out + ".json").write_text(json.dumps(logged))


def reference_skipping(harness, tmp_path, skip: set[int], compiled_with: tuple) -> tuple[dict, dict]:
    """(flat final state, step -> (loss, grad_norm, lr)) of `skipping_run`, run in a child process
    with the children's environment (one CPU device, the shared compile cache)."""
    import json
    import subprocess
    import sys

    out = str(tmp_path / "skipping")
    code = ("import json, sys; from reliability.test_nan import skipping_run; "
            "skipping_run(json.loads(sys.argv[1]), set(json.loads(sys.argv[2])), tuple(json.loads(sys.argv[3])), "
            "sys.argv[4])")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(harness.overrides()), json.dumps(sorted(skip)),
                             json.dumps(list(compiled_with)), out], env=harness.env(), cwd=ROOT / "tests",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with np.load(out + ".npz") as data:
        state = {key: data[key] for key in data.files}
    logged = {int(k): tuple(v) for k, v in json.loads(pathlib.Path(out + ".json").read_text()).items()}
    return state, logged


def test_a_nan_step_is_skipped_counted_and_equals_not_applying_that_batch(harness, reference, tmp_path, report):
    workdir = tmp_path / "run"
    result = harness.run(workdir, f"train.inject_nan_at_steps=({K},)")
    assert result.returncode == 0, result.stderr
    records = train_records(workdir)
    assert sorted(records) == list(range(1, STEPS + 1))
    assert {s: r["train/skipped"] for s, r in records.items()} == {s: float(s == K + 1) for s in records}
    assert {s: r["train/skipped_total"] for s, r in records.items()} == {s: float(s > K) for s in records}
    assert "1 steps had non-finite loss or gradients" in result.stdout

    expected_state, expected_logged = reference_skipping(harness, tmp_path, {K}, (K,))
    step, state = read_state(workdir)
    assert step == STEPS
    assert state_differences(state, expected_state) == []
    got = {s: (r["train/loss"], r["train/grad_norm"], r["train/lr"]) for s, r in records.items() if s != K + 1}
    assert got == expected_logged
    # the poisoned step logged its (finite) loss and a non-finite grad norm
    assert records[K + 1]["train/loss"] == reference.losses[K + 1][0]
    assert not np.isfinite(float(records[K + 1]["train/grad_norm"]))
    report(f"NaN gradients at step {K + 1}: skipped and counted (train/skipped, train/skipped_total), run "
           f"finished; final params + optimizer state bitwise equal to not applying that batch")


def test_max_bad_steps_in_a_row_stop_with_exit_3_and_keep_the_checkpoints(harness, at_step4, tmp_path, report):
    workdir = copy_workdir(at_step4, tmp_path / "run")
    before = tree_digest(workdir / "checkpoints")
    # steps 5 and 6 (indices 4, 5) poisoned; step 6 is a checkpoint_every step
    result = harness.run(workdir, "train.inject_nan_at_steps=(4, 5)", "train.max_bad_steps=2")
    err = result.stderr.strip()
    assert result.returncode == 3, err
    last = err.splitlines()[-1]
    assert last.startswith("a3jax train:"), err
    assert "non-finite" in last and "last good checkpoint" in last, last
    assert str(workdir / "checkpoints" / "4") in last, last
    assert "max_bad_steps=2" in last, last
    assert tree_digest(workdir / "checkpoints") == before
    records = train_records(workdir)
    assert [records[s]["train/skipped"] for s in (5, 6)] == [1.0, 1.0]
    report("max_bad_steps=2 poisoned steps in a row: exit 3, message names the last good checkpoint "
           "(step 4); checkpoints/ byte-identical")

