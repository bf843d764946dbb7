"""Held-out evaluation during training: NLL and bits per byte under the config's orders, and the
per-stage summary written when a curriculum stage ends."""

from __future__ import annotations

import math

import jax

from a3jax.data import ByteTokenizer, eval_batch, target_bytes
from a3jax.orders import is_bound_order
from a3jax.train.metrics import read_metrics


def byte_counts(eval_batches: dict, tokenizer) -> dict[str, int] | None:
    """Bytes of held-out text per eval batch for a subword tokenizer (data.target_bytes); None for
    the byte tokenizer, whose eval step counts its byte targets itself."""
    if isinstance(tokenizer, ByteTokenizer):
        return None
    return {spec: target_bytes(batch, tokenizer) for spec, batch in eval_batches.items()}


def evaluate(eval_step, params, eval_batches: dict, n_bytes: dict[str, int] | None = None) -> dict[str, float]:
    """Held-out NLL per target token and bits per byte of text (bytes counted by the eval step for
    the byte tokenizer, else given by `n_bytes`, see byte_counts). Under an order whose NLL is only
    an upper bound (the masked-diffusion control's 'mdlm', its ELBO) the keys say so:
    SPEC/nll_bound and SPEC/bits_per_byte_bound."""
    results = {}
    for spec, batch in eval_batches.items():
        totals = jax.device_get(eval_step(params, batch))
        nll = float(totals["nll_sum"])
        tag = "_bound" if is_bound_order(spec) else ""
        count = float(totals["n_bytes"]) if n_bytes is None else float(n_bytes[spec])
        results[f"{spec}/nll{tag}"] = nll / max(float(totals["n_targets"]), 1.0)
        results[f"{spec}/bits_per_byte{tag}"] = nll / math.log(2) / max(count, 1.0)
    return results


class Evaluator:
    """The held-out batches of an experiment (built once) and the eval step over them."""

    def __init__(self, exp, corpus, tokenizer, eval_step, log):
        specs = list(exp.orders.eval)
        allowed = exp.model.facts.eval_orders(specs)
        if allowed != specs:
            log(f"{exp.model.variant} model: evaluating under the orders {allowed} only")
        self.batches = {s: eval_batch(exp, corpus, tokenizer, s, exp.train.eval_rows) for s in allowed}
        self.eval_step = eval_step
        self.n_bytes = byte_counts(self.batches, tokenizer)
        self.last: dict[str, float] = {}
        self.last_step: int | None = None

    def __call__(self, params, step: int) -> dict[str, float]:
        self.last = evaluate(self.eval_step, params, self.batches, self.n_bytes)
        self.last_step = step
        return self.last

    def at(self, params, step: int) -> dict[str, float]:
        """The results at `step`: reused when already evaluated there (without becoming `last`)."""
        if self.last_step == step:
            return self.last
        return evaluate(self.eval_step, params, self.batches, self.n_bytes)


def stage_summary(exp, workdir, done: int, results: dict, is_chief: bool) -> dict:
    """The record of the curriculum stage that ends at step `done`: tokens seen in the stage, its
    mean train loss (from metrics.jsonl, so resumed runs count every step) and held-out results."""
    curriculum = exp.curriculum
    index = curriculum.stage_of_step(done - 1)
    first = 0 if index == 0 else curriculum.stages[index - 1].until_step
    losses = [r["train/loss"] for r in read_metrics(workdir) if first < r.get("step", 0) <= done
              and isinstance(r.get("train/loss"), float)] if is_chief else []
    record = {"index": index, "tokens": (done - first) * exp.tokens_per_step,
              "train_loss_mean": sum(losses) / len(losses) if losses else float("nan")}
    record.update({f"eval/{k}": v for k, v in results.items()})
    return record
