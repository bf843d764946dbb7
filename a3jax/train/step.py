"""Pure, jitted train and eval steps over a params pytree (float32 masters) and optax state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from a3jax.loss import eval_totals, loss_sums, target_log_probs, target_log_probs_chunked
from a3jax.model.params import ModelDef, abstract_params, init_model  # noqa: F401  (the model's home)


def model_loss(model, batch, group_size=None, loss_chunk: int = 0):
    """(mean loss, {nll_sum, n_targets}) of a batch. loss_chunk > 0 scores the rows that many at a
    time from the hidden states and the head, never holding the [B, N, V] logits (loss.py)."""
    facts = model.facts
    if not loss_chunk:
        return loss_sums(*target_log_probs(model(batch, group_size=group_size), batch, facts))
    hidden = model.hidden_states(batch, group_size=group_size)[facts.predicts_from]
    mask_id = model.cfg.mask_token_id if facts.masked_inputs else None
    return loss_sums(*target_log_probs_chunked(hidden, model.head(), batch, facts, loss_chunk, mask_id))


def make_train_step(model_def: ModelDef, tx: optax.GradientTransformation, schedule, shardings=None,
                    grad_accum: int = 1, inject_nan_at_steps: tuple[int, ...] = (), loss_chunk: int = 0):
    """The jitted step. shardings = (params, opt_state, batch) NamedSharding trees, or None.

    grad_accum > 1 splits the batch into that many micro-batches (scanned) and sums their NLL
    gradients before one update: the result equals the full-batch step (the mean is taken over
    all target tokens of the batch, not per micro-batch).

    A step whose loss or gradients are not finite leaves params and optimizer state unchanged
    (metric `skipped` = 1); its batch is consumed and the schedule moves on with the step number.
    inject_nan_at_steps: a testing aid, steps whose gradients are replaced by NaN.
    loss_chunk: rows per cross-entropy chunk (train.loss_chunk; 0 = the full logits).
    The step takes `group_size` (static, 5th positional): the batch's one group size when its rows are
    grid-aligned (data.align_groups), for the static-mask attention backends; one compile per size.
    """
    def nll_sum(p, micro, group_size):
        _, aux = model_loss(model_def.bind(p), micro, group_size, loss_chunk)
        return aux["nll_sum"], aux["n_targets"]

    def train_step(params, opt_state, step, batch, group_size=None):
        if grad_accum == 1:
            (total, n_targets), grads = jax.value_and_grad(nll_sum, has_aux=True)(params, batch, group_size)
        else:
            micro = jax.tree.map(lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

            def accumulate(carry, micro_batch):
                (part, count), part_grads = jax.value_and_grad(nll_sum, has_aux=True)(
                    params, micro_batch, group_size)
                total, n, grads = carry
                return (total + part, n + count, jax.tree.map(jnp.add, grads, part_grads)), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (total, n_targets, grads), _ = jax.lax.scan(accumulate, (0.0, 0.0, zeros), micro)
        scale = 1.0 / jnp.maximum(n_targets, 1.0)
        loss, grads = total * scale, jax.tree.map(lambda g: g * scale, grads)
        if inject_nan_at_steps:
            poisoned = jnp.any(step == jnp.asarray(inject_nan_at_steps))
            grads = jax.tree.map(lambda g: jnp.where(poisoned, jnp.nan, g), grads)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": schedule(step),
            "n_targets": n_targets,
            "skipped": 1.0 - finite.astype(jnp.float32),
        }
        return keep(new_params, params), keep(new_opt_state, opt_state), metrics

    if shardings is None:
        return jax.jit(train_step, donate_argnums=(0, 1), static_argnums=(4,))
    params_sh, opt_sh, batch_sh = shardings
    return jax.jit(train_step, donate_argnums=(0, 1), static_argnums=(4,),
                   in_shardings=(params_sh, opt_sh, None, batch_sh), out_shardings=(params_sh, opt_sh, None))


def make_eval_step(model_def: ModelDef, eos_id: int):
    @jax.jit
    def eval_step(params, batch):
        # nll_sum, n_targets, n_bytes (EOS excluded); for mdlm the bound, with bytes counted exactly
        model = model_def.bind(params)
        return eval_totals(model(batch), batch, model.facts, eos_id)

    return eval_step
