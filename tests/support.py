"""Shared test helpers: random tiny models, batches, and the model-to-loss glue (the loss takes
logits, a3jax/loss.py). Imported by the test modules as `support` (tests/ is on sys.path)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from a3jax.layout import build_layout, stack_layouts
from a3jax.loss import eval_totals, mean_loss, target_log_probs, target_predictions
from a3jax.model import ModelConfig
from a3jax.model.params import abstract_params, init_model


def model_config(variant="a3", vocab=12, **overrides) -> ModelConfig:
    """A tiny float32 model config (3 layers, d_model 32, 4 heads over 2 KV heads)."""
    values = dict(variant=variant, vocab_size=vocab, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2,
                  ffn_dim=64, dtype="float32", init_std=0.3)
    values.update(overrides)
    return ModelConfig(**values)


def random_model(variant="a3", vocab=12, seed=0, **overrides):
    """(ModelDef, params) of a random tiny model (see model_config)."""
    return init_model(model_config(variant, vocab, **overrides), seed)


def numpy_model(cfg: ModelConfig, seed=3, std=0.5, out_std=0.25):
    """(ModelDef, params) with large numpy-drawn weights (sharp, varied predictions; no compile)."""
    model_def, shapes = abstract_params(cfg)
    rng = np.random.default_rng(seed)

    def init(path, shape):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            return np.ones(shape.shape, np.float32)
        scale = out_std if ("wo" in name or "w_down" in name) else std
        return rng.normal(0.0, scale, shape.shape).astype(np.float32)

    return model_def, jax.tree_util.tree_map_with_path(init, shapes)


def batch_of(layouts) -> dict:
    """A jnp batch from one layout dict or a list of them."""
    if isinstance(layouts, dict):
        layouts = [layouts]
    return {k: jnp.asarray(v) for k, v in stack_layouts(layouts).items()}


def model_log_probs(model, batch, **kwargs):
    """(log p, weight) [B, N] of the targets: the model's logits through the loss."""
    return target_log_probs(model(batch, **kwargs), batch, model.facts)


def model_predictions(model, batch):
    return target_predictions(model(batch), batch, model.facts)


def model_loss(model, batch, group_size=None):
    """(mean loss, {nll_sum, n_targets}) of a batch: what the train step differentiates."""
    return mean_loss(model(batch, group_size=group_size), batch, model.facts)


def model_eval_totals(model, batch, eos_id):
    return eval_totals(model(batch), batch, model.facts, eos_id)


def full_log_probs(model_def, params, doc, groups, seq_len=16, *, bos, pad) -> dict:
    """{position: log p(token)} of one document's targets from one uncached forward pass."""
    layout = build_layout([doc], [groups], seq_len, bos_id=bos, pad_id=pad)
    log_probs, weights = model_log_probs(model_def.bind(params), batch_of(layout))
    return {int(p): float(lp) for p, lp, w in zip(layout["positions"], np.asarray(log_probs[0]),
                                                  np.asarray(weights[0])) if w > 0}
