"""AdamW with warmup + cosine / constant / WSD schedules and global-norm clipping (optax)."""

from __future__ import annotations

import jax
import optax

from a3jax.configs import SCHEDULES, TrainConfig
from a3jax.errors import UserError


def learning_rate_schedule(train_config: TrainConfig) -> optax.Schedule:
    """Linear warmup to train.lr, then cosine decay, constant, or warmup-stable-decay."""
    peak = train_config.lr
    steps = train_config.steps
    warmup = min(train_config.warmup_steps, steps)
    floor = peak * train_config.min_lr_ratio
    kind = train_config.schedule
    if kind not in SCHEDULES:
        raise UserError(f"train.schedule={kind!r} is not one of {SCHEDULES}")
    warmup_fn = optax.linear_schedule(0.0, peak, max(warmup, 1))
    rest = max(steps - warmup, 1)
    if kind == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=floor / peak if peak else 0.0)
    elif kind == "constant":
        after = optax.constant_schedule(peak)
    else:  # wsd: hold the peak, then decay linearly to the floor over the last decay_fraction
        decay = max(int(round(rest * train_config.decay_fraction)), 1)
        after = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay)],
            [rest - decay],
        )
    return optax.join_schedules([warmup_fn, after], [warmup])


def _decay_mask(params):
    """Weight decay on matrices only (not norms, not the query vector)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def _scale_query_vector(factor: float) -> optax.GradientTransformation:
    """Multiplies the update of `query_embed` (the query stream's one vector) by `factor`: its
    learning rate is factor x train.lr (it has no weight decay). Identity for other params."""

    def update(updates, state, params=None):
        del params
        if "query_embed" in updates:
            updates = dict(updates, query_embed=updates["query_embed"] * factor)
        return updates, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(train_config: TrainConfig) -> optax.GradientTransformation:
    parts = [
        optax.clip_by_global_norm(train_config.clip_norm),
        optax.adamw(
            learning_rate_schedule(train_config),
            b1=train_config.b1,
            b2=train_config.b2,
            eps=train_config.eps,
            weight_decay=train_config.weight_decay,
            mask=_decay_mask,
        ),
    ]
    if train_config.query_lr_scale != 1.0:  # the default chain (and its state) stays as it was
        parts.append(_scale_query_vector(train_config.query_lr_scale))
    return optax.chain(*parts)


def fresh_state(train_config: TrainConfig, param_shapes) -> optax.OptState:
    """The optimizer state of step 0 for params of these shapes, as numpy zeros (what a
    converted or adapted checkpoint starts from)."""
    import numpy as np

    opt_shapes = jax.eval_shape(make_optimizer(train_config).init, param_shapes)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), opt_shapes)

