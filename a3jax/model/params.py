"""A model as data: the static graph (ModelDef) and the float32 params pytree, created fresh
(optionally straight into their shardings) or as shapes only."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from a3jax.model.config import ModelConfig
from a3jax.model.transformer import Transformer


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
