"""The single-host training loop: data -> jitted step -> metrics, periodic eval, checkpoints."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

import jax
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from a3jax import flops, parallel
from a3jax.checkpoint import Checkpointer
from a3jax.configs import model_config, validate
from a3jax.data import ByteTokenizer, eval_batch, load_corpus, load_tokenizer, train_batches
from a3jax.data.pipeline import align_groups, curriculum_of
from a3jax.data.corpus import Corpus
from a3jax.layout import grid_violations
from a3jax.orders import is_bound_order
from a3jax.train.metrics import MetricWriter, NullWriter, read_metrics
from a3jax.train.preemption import StopRequests
from a3jax.train.optimizer import learning_rate_schedule, make_optimizer
from a3jax.train.step import abstract_params, init_model, make_eval_step, make_train_step


def evaluate(eval_step, params, eval_batches: dict, unit: str = "byte") -> dict[str, float]:
    """Held-out NLL per target token and bits per byte (per token for subword tokenizers). Under an
    order whose NLL is only an upper bound (the masked-diffusion control's 'mdlm', its ELBO) the
    keys say so: SPEC/nll_bound and SPEC/bits_per_byte_bound."""
    results = {}
    for spec, batch in eval_batches.items():
        totals = jax.device_get(eval_step(params, batch))
        nll = float(totals["nll_sum"])
        tag = "_bound" if is_bound_order(spec) else ""
        results[f"{spec}/nll{tag}"] = nll / max(float(totals["n_targets"]), 1.0)
        results[f"{spec}/bits_per_{unit}{tag}"] = nll / math.log(2) / max(float(totals["n_bytes"]), 1.0)
    return results


class TrainingDivergedError(RuntimeError):
    """Too many consecutive steps with non-finite loss or gradients (`a3jax train` exits 3)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, permissions); earlier ones are intact."""


RESUME_MODES = ("auto", "never", "must")


def train(config: ConfigDict, workdir: str | pathlib.Path, *, stop_after: int | None = None,
          corpus: Corpus | None = None, progress: bool = True, resume: str = "auto") -> dict:
    """Trains (or resumes) to config.train.steps, or stops after step `stop_after`.

    Returns a summary: last step, last logged loss, last eval results, tokens/s, and
    `stopped_by` (the signal name when SIGTERM/SIGINT stopped it early, after a checkpoint).
    resume: "auto" (resume from the latest checkpoint if any), "never" (refuse a workdir that has
    checkpoints), "must" (refuse one that has none).
    """
    if resume not in RESUME_MODES:
        raise ValueError(f"--resume={resume!r} is not one of {RESUME_MODES}")
    validate(config)
    model_cfg = model_config(config)
    tokenizer = load_tokenizer(config.data)
    tokenizer.check_vocab(model_cfg.vocab_size)
    workdir = pathlib.Path(workdir)
    if resume == "must" and not any((workdir / "checkpoints").glob("[0-9]*")):
        raise ValueError(f"--resume=must but there is no checkpoint in {workdir / 'checkpoints'} to resume")
    checkpointer = Checkpointer(workdir, keep=int(config.train.keep_checkpoints), writer=True)
    try:
        latest = checkpointer.latest_step()
        if resume == "never" and latest is not None:
            raise ValueError(f"--resume=never but {checkpointer.directory} holds checkpoints up to step {latest}; "
                             "use a new --workdir, or --resume=auto to continue from it")
        if resume == "must" and latest is None:
            raise ValueError(f"--resume=must but there is no checkpoint in {checkpointer.directory} to resume")
        checkpointer.check_compatible(model_cfg.to_dict())  # before anything is written
        return _train(config, workdir, model_cfg, tokenizer, checkpointer, stop_after, corpus, progress)
    finally:
        checkpointer.close()


def _train(config, workdir, model_cfg, tokenizer, checkpointer, stop_after, corpus, progress):
    mesh = parallel.make_mesh(config.mesh)
    parallel.check_batch(int(config.train.batch_size), mesh)
    with jax.set_mesh(mesh):
        return _train_on_mesh(config, workdir, model_cfg, tokenizer, checkpointer, stop_after, corpus,
                              progress, mesh)


def _train_on_mesh(config, workdir, model_cfg, tokenizer, checkpointer, stop_after, corpus, progress, mesh):
    log = lambda message: print(f"[a3jax] {message}", file=sys.stderr, flush=True)  # noqa: E731
    _, shapes = abstract_params(model_cfg)
    params_sh = parallel.param_shardings(mesh, shapes, config.mesh.rules)
    model_def, params = init_model(model_cfg, int(config.seed), params_sh)
    tx = make_optimizer(config.train)
    schedule = learning_rate_schedule(config.train)
    opt_state = jax.jit(tx.init)(params)
    opt_sh = jax.tree.map(lambda x: x.sharding, opt_state)
    batch_sh = parallel.batch_sharding(mesh)
    start, resumed_skips = 0, 0
    latest = checkpointer.latest_step()
    if latest is not None:
        target = {"params": params, "opt_state": opt_state}
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
        state, meta = checkpointer.restore(latest, abstract)
        params, opt_state, start = state["params"], state["opt_state"], int(meta["step"])
        resumed_skips = int(meta.get("skipped_total", 0))
        log(f"resumed from {checkpointer.directory / str(latest)} at step {start}")

    corpus = corpus if corpus is not None else load_corpus(config.data, tokenizer)
    batches = train_batches(config, corpus, tokenizer, start_step=start,
                            process_index=jax.process_index(), process_count=jax.process_count())
    eval_specs = list(config.orders.eval)
    if model_cfg.variant == "causal" and any(s.replace(" ", "") != "ar" for s in eval_specs):
        log("causal model: evaluating under the 'ar' order only")
        eval_specs = ["ar"]
    eval_batches = {s: eval_batch(config, corpus, tokenizer, s, int(config.train.eval_rows)) for s in eval_specs}
    is_chief = jax.process_index() == 0  # one process writes logs and the resolved config
    if is_chief:
        (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=list))

    train_step = make_train_step(model_def, tx, schedule, (params_sh, opt_sh, batch_sh),
                                 grad_accum=int(config.train.grad_accum),
                                 inject_nan_at_steps=tuple(int(s) for s in config.train.get("inject_nan_at_steps", ())))
    eval_step = make_eval_step(model_def, tokenizer.eos_id)
    unit = "byte" if isinstance(tokenizer, ByteTokenizer) else "token"  # EOS excluded from the count
    writer = MetricWriter(workdir, resume_step=start) if is_chief else NullWriter()
    total = int(config.train.steps)
    end = total if stop_after is None else min(int(stop_after), total)
    tokens_per_step = int(config.train.batch_size) * int(config.data.seq_len)
    n_devices = mesh.size
    flops_per_token = flops.train_flops_per_token(model_cfg, int(config.data.seq_len))
    peak = flops.peak_flops(jax.devices()[0].device_kind, float(config.train.get("peak_flops", 0.0)))
    max_bad = int(config.train.get("max_bad_steps", 10))
    summary = {"step": start, "eval": {}, "loss": None, "tokens_per_s": None, "stopped_by": None,
               "skipped_total": resumed_skips}
    # consecutive skipped steps; the last complete checkpoint; the one being written
    health = {"bad_run": [], "last_saved": latest, "writing": None}
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not (progress and is_chief),
               file=sys.stderr, dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 15.0)
    pending, window_start, window_steps = [], time.perf_counter(), 0

    def flush():
        """Fetches and logs the pending steps' metrics (one sync), counts skipped updates."""
        nonlocal pending, window_start, window_steps
        if not pending:
            return
        fetched = jax.device_get(pending)
        elapsed = time.perf_counter() - window_start
        tokens_per_s = tokens_per_step * window_steps / max(elapsed, 1e-9)
        for logged_step, values in fetched:
            scalars = {k: float(v) for k, v in values.items()}
            if scalars["skipped"]:
                summary["skipped_total"] += 1
                health["bad_run"].append(logged_step)
            else:
                health["bad_run"] = []
            scalars["skipped_total"] = float(summary["skipped_total"])
            scalars["tokens_per_s"] = tokens_per_s
            scalars["tokens_per_s_per_device"] = tokens_per_s / n_devices
            scalars["tflops_per_device"] = flops_per_token * tokens_per_s / n_devices / 1e12
            if peak:
                scalars["mfu"] = flops_per_token * tokens_per_s / n_devices / peak
            writer.write(logged_step, scalars, prefix="train/")
        loss = float(fetched[-1][1]["loss"])
        summary.update(loss=loss, tokens_per_s=tokens_per_s)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
        pending, window_start, window_steps = [], time.perf_counter(), 0
        bad = health["bad_run"]
        if len(bad) >= max_bad:
            kept = (f"the last good checkpoint is {checkpointer.directory / str(health['last_saved'])}"
                    if health["last_saved"] is not None else "no checkpoint was written yet")
            raise TrainingDivergedError(
                f"{len(bad)} consecutive steps ({bad[0]}..{bad[-1]}) had non-finite loss or gradients and "
                f"their updates were skipped (train.max_bad_steps={max_bad}); {kept}. Lower train.lr, check "
                "the data around those steps, or resume from the checkpoint")

    def write_error(step, error):
        previous = health["last_saved"]
        kept = (f"the previous complete checkpoint {checkpointer.directory / str(previous)} is intact"
                if previous is not None else "no earlier checkpoint exists")
        return CheckpointWriteError(f"could not write the checkpoint at step {step} ({type(error).__name__}: "
                                    f"{error}); {kept}. Free disk space (or fix permissions) and rerun to resume")

    def wait_saved():
        """Waits for the checkpoint being written in the background; its failure is raised here."""
        step = health["writing"]
        if step is None:
            return
        try:
            checkpointer.wait()
        except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise many types for I/O failures
            raise write_error(step, error) from error
        health["last_saved"], health["writing"] = step, None

    def save(step):
        wait_saved()  # one checkpoint in flight at a time
        meta = {"step": step, "model": model_cfg.to_dict(), "config": config.to_dict(),
                "skipped_total": summary["skipped_total"]}
        try:
            checkpointer.save(step, {"params": params, "opt_state": opt_state},
                              json.loads(json.dumps(meta, default=list)))
        except Exception as error:  # noqa: BLE001
            raise write_error(step, error) from error
        health["writing"] = step

    curriculum = curriculum_of(config)
    aligned = align_groups(config)
    if aligned:
        log(f"data.align_groups: one group size per step, rows aligned to it (sizes up to "
            f"{curriculum.max_group_size()}); one train-step compile per size; attention={model_cfg.attention}")

    def step_group_size(step, local):
        """The step's one group size; checks the rows really are grid-aligned to it (host numpy),
        because a static-mask kernel would silently read the wrong keys otherwise."""
        size = curriculum.step_group_size(int(config.seed), step, int(config.train.batch_size))
        bad = grid_violations(local["segment_ids"], local["groups"], size)
        if bad.any():
            row, slot = (int(i[0]) for i in np.nonzero(bad))
            raise RuntimeError(f"step {step}: row {row} slot {slot} is not aligned to the step's group size "
                               f"{size}; the data pipeline broke the grid contract (a3jax.layout), report a bug")
        return size

    def stage_summary(done):
        """At the end of a curriculum stage (and of training): tokens seen in the stage, its mean
        train loss (from metrics.jsonl, so resumes are counted) and held-out loss by order."""
        index = curriculum.stage_of_step(done - 1)
        first = 0 if index == 0 else curriculum.stages[index - 1].until_step
        losses = [r["train/loss"] for r in read_metrics(workdir) if first < r.get("step", 0) <= done
                  and isinstance(r.get("train/loss"), float)] if is_chief else []
        results = summary["eval"] if summary.get("eval_step") == done else evaluate(eval_step, params, eval_batches,
                                                                                   unit)
        record = {"index": index, "tokens": (done - first) * tokens_per_step,
                  "train_loss_mean": sum(losses) / len(losses) if losses else float("nan")}
        record.update({f"eval/{k}": v for k, v in results.items()})
        writer.write(done, record, prefix="stage/")
        if is_chief:
            bar.write(f"[a3jax] stage {index} ({curriculum.stages[index].spec}) ended at step {done}: "
                      f"{record['tokens']:,} tokens, mean train loss {record['train_loss_mean']:.3f}, " + "  ".join(
                          f"{k}={v:.3f}" for k, v in results.items()), file=sys.stderr)

    try:
        with StopRequests() as stops:
            for step in range(start, end):
                local = next(batches)
                group_size = step_group_size(step, local) if aligned else None
                batch = parallel.global_batch(local, batch_sh)
                params, opt_state, metrics = train_step(params, opt_state, step, batch, group_size)
                pending.append((step + 1, metrics))
                window_steps += 1
                done = step + 1
                bar.update(1)
                stop = stops.agreed()
                if done % int(config.train.log_every) == 0 or done == end or stop:
                    flush()
                if done % int(config.train.eval_every) == 0 or done == total:
                    summary["eval"] = evaluate(eval_step, params, eval_batches, unit)
                    summary["eval_step"] = done
                    writer.write(done, summary["eval"], prefix="eval/")
                    if is_chief:
                        bar.write("[a3jax] step {}: {}".format(done, "  ".join(
                            f"{k}={v:.3f}" for k, v in summary["eval"].items())), file=sys.stderr)
                summary["step"] = done
                if done == total or curriculum.stage_of_step(done) != curriculum.stage_of_step(step):
                    flush()
                    stage_summary(done)
                if done % int(config.train.checkpoint_every) == 0 or done == end or stop:
                    flush()  # a diverged run raises here, before its state is saved
                    save(done)
                if stop:
                    wait_saved()
                    summary["stopped_by"] = stop
                    log(f"stopped by {stop} at step {done}; checkpoint saved to {checkpointer.directory / str(done)}; "
                        "run the same command to resume")
                    break
    finally:
        bar.close()
        writer.close()
    wait_saved()
    if not summary["eval"]:  # nothing left to train (a finished workdir): still report eval
        summary["eval"] = evaluate(eval_step, params, eval_batches, unit)
    summary["params"] = params
    return summary
