"""The training loop: data -> jitted step -> metric window, held-out eval, stage summaries,
checkpoints. Its parts live beside it: saver.py (checkpoint writes), window.py (metrics, skipped
steps, divergence), evaluation.py (held-out eval, stage summaries), preemption.py (signals)."""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
from tqdm import tqdm

from a3jax import flops, host_memory, parallel
from a3jax.checkpoint import Checkpointer, load_params
from a3jax.configs import Experiment, parse
from a3jax.data import load_corpus, load_tokenizer, train_batches
from a3jax.data.corpus import Corpus
from a3jax.data.pipeline import GROUP_SIZE
from a3jax.errors import UserError
from a3jax.model.config import EXECUTION_FIELDS
from a3jax.model.params import abstract_params, causal_to_a3, init_model
from a3jax.model.sharding import axis_rules
from a3jax.train.evaluation import Evaluator, evaluate, stage_summary  # noqa: F401  (evaluate: public)
from a3jax.train.metrics import MetricWriter, NullWriter
from a3jax.train.optimizer import learning_rate_schedule, make_optimizer
from a3jax.train.preemption import StopRequests
from a3jax.train.saver import CheckpointSaver, CheckpointWriteError  # noqa: F401  (re-exported)
from a3jax.train.step import make_eval_step, make_train_step
from a3jax.train.window import MetricWindow, TrainingDivergedError  # noqa: F401  (re-exported)

RESUME_MODES = ("auto", "never", "must")


def train(config, workdir: str | pathlib.Path, *, stop_after: int | None = None,
          corpus: Corpus | None = None, progress: bool = True, resume: str = "auto") -> dict:
    """Trains (or resumes) to train.steps, or stops after step `stop_after`.

    config: the experiment ConfigDict (or its parsed a3jax.configs.Experiment).
    Returns a summary: last step, last logged loss, last eval results, tokens/s, and
    `stopped_by` (the signal name when SIGTERM/SIGINT stopped it early, after a checkpoint).
    resume: "auto" (resume from the latest checkpoint if any), "never" (refuse a workdir that has
    checkpoints), "must" (refuse one that has none).
    """
    if resume not in RESUME_MODES:
        raise UserError(f"--resume={resume!r} is not one of {RESUME_MODES}")
    exp = parse(config)
    host_memory.fit_model(exp.model.n_weights)  # a large model's step: its GB-sized temporaries go back when freed
    tokenizer = load_tokenizer(exp.data)
    tokenizer.check_vocab(exp.model.vocab_size)
    workdir = pathlib.Path(workdir)
    if resume == "must" and not any((workdir / "checkpoints").glob("[0-9]*")):
        raise UserError(f"--resume=must but there is no checkpoint in {workdir / 'checkpoints'} to resume")
    checkpointer = Checkpointer(workdir, keep=exp.train.keep_checkpoints, writer=True)
    try:
        latest = checkpointer.latest_step()
        if resume == "never" and latest is not None:
            raise UserError(f"--resume=never but {checkpointer.directory} holds checkpoints up to step {latest}; "
                             "use a new --workdir, or --resume=auto to continue from it")
        if resume == "must" and latest is None:
            raise UserError(f"--resume=must but there is no checkpoint in {checkpointer.directory} to resume")
        checkpointer.check_compatible(exp.model.to_dict())  # before anything is written
        mesh = parallel.make_mesh(exp.mesh)
        with jax.set_mesh(mesh), axis_rules(exp.mesh.rules):
            parallel.check_batch(exp.train.batch_size, mesh)
            return _train_on_mesh(exp, workdir, tokenizer, checkpointer, stop_after, corpus, progress, mesh)
    finally:
        checkpointer.close()


def _log(message: str) -> None:
    print(f"[a3jax] {message}", file=sys.stderr, flush=True)


def _initial_state(exp: Experiment, checkpointer, mesh):
    """(model_def, params, opt_state, shardings, tx, first step, skipped so far): fresh, or the
    latest checkpoint restored into the same shardings."""
    _, shapes = abstract_params(exp.model)
    params_sh = parallel.param_shardings(mesh, shapes, exp.mesh.rules)
    model_def, params = init_model(exp.model, exp.seed, params_sh)
    tx = make_optimizer(exp.train)
    opt_state = jax.jit(tx.init)(params)
    shardings = (params_sh, jax.tree.map(lambda x: x.sharding, opt_state), parallel.batch_sharding(mesh))
    start, skipped = 0, 0
    latest = checkpointer.latest_step()
    if latest is None and exp.train.init_from:
        params = jax.device_put(_weights_from(exp), params_sh)
    if latest is not None:
        target = {"params": params, "opt_state": opt_state}
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
        state, meta = checkpointer.restore(latest, abstract)
        params, opt_state, start = state["params"], state["opt_state"], int(meta["step"])
        skipped = int(meta.get("skipped_total", 0))  # absent in checkpoints of older versions
        _log(f"resumed from {checkpointer.directory / str(latest)} at step {start}")
    return model_def, params, opt_state, shardings, tx, start, skipped


def _weights_from(exp: Experiment) -> dict:
    """The latest weights of the train.init_from workdir for this run's model: the same
    architecture; a causal model's become an a3 model's (plus the query vector)."""
    step, source, _, params = load_params(exp.train.init_from)
    here = exp.model.to_dict()
    differs = {k: (v, here[k]) for k, v in source.to_dict().items()
               if k not in ("variant", "query_input", "dtype", "init_std") + EXECUTION_FIELDS and v != here[k]}
    if differs:
        raise UserError(f"train.init_from={exp.train.init_from} holds a different model: "
                         + ", ".join(f"model.{k}={a!r} there, {b!r} here" for k, (a, b) in differs.items()))
    here_facts = exp.model.facts
    here_facts.check_start_from(source.facts, f"train.init_from={exp.train.init_from}")
    if source.facts.query_stream == here_facts.query_stream:
        _log(f"starting from the weights of {exp.train.init_from} (step {step})")
        return params
    params, note = causal_to_a3(params, exp.seed, exp.train.query_init)
    _log(f"starting from the {source.variant} model of {exp.train.init_from} (step {step}) as "
         f"{exp.model.variant}: every weight "
         f"copied; query vector {note}")
    return params


def _group_size(local: dict) -> int | None:
    """The step's one group size, carried by an aligned batch (data.align_groups; the pipeline
    builds its rows aligned to it, tests/test_group_grid.py checks the grid), removed from the
    batch: it is a static argument of the step, not device data. None for other batches."""
    sizes = local.pop(GROUP_SIZE, None)
    return None if sizes is None else int(np.asarray(sizes).reshape(-1)[0])


def _train_on_mesh(exp: Experiment, workdir, tokenizer, checkpointer, stop_after, corpus, progress, mesh):
    model_def, params, opt_state, shardings, tx, start, skipped = _initial_state(exp, checkpointer, mesh)
    corpus = corpus if corpus is not None else load_corpus(exp.data, tokenizer)
    evaluator = Evaluator(exp, corpus, tokenizer, make_eval_step(model_def, tokenizer.eos_id), _log)
    is_chief = jax.process_index() == 0  # one process writes logs and the resolved config
    if is_chief:
        (workdir / "config.json").write_text(json.dumps(exp.raw.to_dict(), indent=2, default=list))
    train_step = make_train_step(model_def, tx, learning_rate_schedule(exp.train), shardings,
                                 grad_accum=exp.train.grad_accum,
                                 inject_nan_at_steps=exp.train.inject_nan_at_steps,
                                 loss_chunk=exp.train.loss_chunk)
    writer = MetricWriter(workdir, resume_step=start) if is_chief else NullWriter()
    saver = CheckpointSaver(checkpointer, checkpointer.latest_step())
    window = MetricWindow(writer, tokens_per_step=exp.tokens_per_step, n_devices=mesh.size,
                          flops_per_token=flops.train_flops_per_token(exp.model, exp.data.seq_len),
                          peak_flops=flops.peak_flops(jax.devices()[0].device_kind, exp.train.peak_flops),
                          max_bad_steps=exp.train.max_bad_steps, skipped_total=skipped,
                          describe_last_saved=saver.describe_last_saved)
    total, t = exp.train.steps, exp.train
    end = total if stop_after is None else min(stop_after, total)
    if exp.data.align_groups:
        _log(f"data.align_groups: one group size per step, rows aligned to it (sizes up to "
             f"{exp.curriculum.max_group_size()}); one train-step compile per size; attention={exp.model.attention}")
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not (progress and is_chief),
               file=sys.stderr, dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 15.0)
    summary = {"step": start, "stopped_by": None}
    # On XLA:CPU the host and the "device" share the cores, so running ahead of the step buys
    # nothing, and with steps dispatched ahead the SmolLM2 adaptation's process peaked at 20-24 GB
    # (killed by the kernel) against 9 GB waiting for each one (BENCHMARKS.md, issue 39).
    # Accelerators run ahead to the next log step.
    wait_each_step = jax.default_backend() == "cpu"

    def report(prefix: str, results: dict) -> None:
        if is_chief:
            bar.write(f"[a3jax] {prefix}" + "  ".join(f"{k}={v:.3f}" for k, v in results.items()), file=sys.stderr)

    def flush() -> None:
        window.flush()
        if window.loss is not None:
            bar.set_postfix(loss=f"{window.loss:.3f}", tok_s=f"{window.tokens_per_s:,.0f}")

    try:
        with StopRequests() as stops, train_batches(exp, corpus, tokenizer, start_step=start,
                                                    process_index=jax.process_index(),
                                                    process_count=jax.process_count()) as batches:
            for step in range(start, end):
                local = next(batches)
                group_size = _group_size(local)
                batch = parallel.global_batch(local, shardings[2])
                params, opt_state, metrics = train_step(params, opt_state, step, batch, group_size)
                if wait_each_step:
                    jax.block_until_ready(metrics)
                done = summary["step"] = step + 1
                window.add(done, metrics)
                bar.update(1)
                # several processes agree on stopping only at log boundaries (one small all-gather
                # per log_every steps, not per step); a single process reads its own flag
                stop = stops.agreed(at_sync_point=done % t.log_every == 0 or done == end)
                if done % t.log_every == 0 or done == end or stop:
                    flush()
                if done % t.eval_every == 0 or done == total:
                    writer.write(done, evaluator(params, done), prefix="eval/")
                    report(f"step {done}: ", evaluator.last)
                if done == total or exp.curriculum.stage_of_step(done) != exp.curriculum.stage_of_step(step):
                    flush()
                    results = evaluator.at(params, done)
                    record = stage_summary(exp, workdir, done, results, is_chief)
                    writer.write(done, record, prefix="stage/")
                    stage = exp.curriculum.stages[record["index"]]
                    report(f"stage {record['index']} ({stage.spec}) ended at step {done}: {record['tokens']:,} "
                           f"tokens, mean train loss {record['train_loss_mean']:.3f}, ", results)
                if done % t.checkpoint_every == 0 or done == end or stop:
                    flush()  # a diverged run raises here, before its state is saved
                    saver.save(done, {"params": params, "opt_state": opt_state},
                               {"step": done, "model": exp.model.to_dict(), "config": exp.raw.to_dict(),
                                "skipped_total": window.skipped_total})
                if stop:
                    saver.wait()
                    summary["stopped_by"] = stop
                    _log(f"stopped by {stop} at step {done}; checkpoint saved to {saver.path(done)}; "
                         "run the same command to resume")
                    break
    finally:
        bar.close()
        writer.close()
    saver.wait()
    results = evaluator.last or evaluator(params, summary["step"])  # a finished workdir still reports eval
    return dict(summary, eval=results, loss=window.loss, tokens_per_s=window.tokens_per_s,
                skipped_total=window.skipped_total, params=params)
