"""A model as data: the static graph (ModelDef) and the float32 params pytree, created fresh
(optionally straight into their shardings) or as shapes only."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from flax import nnx

from a3jax.errors import UserError
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

    def create(key):  # the key is an argument, not a constant: a new seed reuses the compiled program
        model = Transformer(model_config, rngs=nnx.Rngs(key))
        return nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])

    return model_def, jax.jit(create, out_shardings=shardings)(jax.random.key(seed))


def abstract_params(model_config: ModelConfig) -> tuple[ModelDef, dict]:
    """Shapes and dtypes of the params without allocating them."""
    model = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model, nnx.Param)
    return ModelDef(graphdef), nnx.to_pure_dict(state)


QUERY_INITS = ("normal", "mean")


def initial_query_vector(embed, seed: int, how: str = "normal") -> tuple[np.ndarray, str]:
    """The query stream's vector for a model converted from a causal one, and a note of how it
    was made: "normal" draws N(0, std^2) with the embedding matrix's std (the scale of a token
    embedding); "mean" is the mean token embedding (the query stream starts as an average token)."""
    embed = np.asarray(embed)
    if how == "mean":
        total = np.zeros(embed.shape[1], np.float64)
        for start in range(0, embed.shape[0], 8192):
            total += embed[start:start + 8192].astype(np.float64).sum(0)
        return (total / embed.shape[0]).astype(np.float32), "the mean token embedding"
    if how != "normal":
        raise UserError(f"query init {how!r} is not one of {QUERY_INITS}")
    std = _embedding_std(embed)
    query = (np.random.default_rng(seed).standard_normal(embed.shape[1]) * std).astype(np.float32)
    return query, f"initialised N(0, {std:.4g}^2) (the embedding matrix's std), seed {seed}"


def causal_to_a3(params: dict, seed: int = 0, how: str = "normal") -> tuple[dict, str]:
    """A causal model's params as an A3 model's: every weight copied, plus the query vector
    (initial_query_vector; what `a3jax convert --variant a3` does from HF files)."""
    if "query_embed" in params:
        raise UserError("these params already hold a query vector: they are an a3 model's")
    query, note = initial_query_vector(params["embed"], seed, how)
    return {**params, "query_embed": query}, note


def _embedding_std(embed: np.ndarray) -> float:
    """Standard deviation of all entries, in float64 over row blocks (no full-size temporary)."""
    total = squares = 0.0
    for start in range(0, embed.shape[0], 8192):
        block = embed[start:start + 8192].astype(np.float64)
        total += float(block.sum())
        squares += float(np.square(block).sum())
    mean = total / embed.size
    return math.sqrt(max(squares / embed.size - mean * mean, 0.0))
