"""Pure, jitted train and eval steps over a params pytree (float32 masters) and optax state."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from a3jax.loss import loss_fn, target_log_probs
from a3jax.model import ModelConfig, Transformer


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """The static half of an NNX model: rebuilds the module from a params pytree."""

    graphdef: Any

    def bind(self, params) -> Transformer:
        return nnx.merge(self.graphdef, nnx.State(params))


def init_model(model_config: ModelConfig, seed: int, shardings=None) -> tuple[ModelDef, dict]:
    """A fresh model: (static ModelDef, float32 params). With `shardings` (a params-shaped tree),
    one jitted program creates every parameter directly in its sharding, never whole on one device."""
    model_def, _ = abstract_params(model_config)

    def create():
        model = Transformer(model_config, rngs=nnx.Rngs(seed))
        return nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])

    return model_def, jax.jit(create, out_shardings=shardings)()


def abstract_params(model_config: ModelConfig) -> tuple[ModelDef, dict]:
    """Shapes and dtypes of the params without allocating them."""
    model = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model, nnx.Param)
    return ModelDef(graphdef), nnx.to_pure_dict(state)


def make_train_step(model_def: ModelDef, tx: optax.GradientTransformation, schedule, shardings=None):
    """The jitted step. shardings = (params, opt_state, batch) NamedSharding trees, or None."""
    def train_step(params, opt_state, step, batch):
        def loss_of(p):
            return loss_fn(model_def.bind(p), batch)

        (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(step),
            "n_targets": aux["n_targets"],
        }
        return params, opt_state, metrics

    if shardings is None:
        return jax.jit(train_step, donate_argnums=(0, 1))
    params_sh, opt_sh, batch_sh = shardings
    return jax.jit(train_step, donate_argnums=(0, 1), in_shardings=(params_sh, opt_sh, None, batch_sh),
                   out_shardings=(params_sh, opt_sh, None))


def make_eval_step(model_def: ModelDef, eos_id: int):
    @jax.jit
    def eval_step(params, batch):
        log_probs, weights = target_log_probs(model_def.bind(params), batch)
        is_byte = (batch["tokens"] != eos_id).astype(jnp.float32) * weights
        return {"nll_sum": -jnp.sum(log_probs * weights), "n_targets": jnp.sum(weights),
                "n_bytes": jnp.sum(is_byte)}

    return eval_step
