"""Model hyper-parameters as a frozen dataclass, validated with errors that name the fix."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from a3jax.errors import ConfigError
from a3jax.schema import parse_section
from a3jax.variants import VARIANTS, Variant, variant_of

# none: keep every activation; full: recompute the whole layer in the backward pass; dots: keep the
# matmul outputs without batch dimensions (XLA's dots_with_no_batch_dims_saveable); save_attention:
# keep the attention outputs and the q/k/v projections (the kernel is not rerun backward).
REMAT_POLICIES = ("none", "full", "dots", "save_attention")
ROPE_SCALINGS = ("none", "llama3")
DTYPES = ("float32", "bfloat16", "float64")  # float64: exactness checks under jax_enable_x64
# see model/attention.py; tokamax_skip: tokamax's forward with a3jax's block-skipping Hopper backward
ATTENTION_BACKENDS = ("auto", "xla", "cudnn", "pallas", "splash", "tokamax", "tokamax_skip")
# The query stream's inputs (query-stream variants): "vector", the paper's one learned vector at
# token i's position; "shift", token i - 1's embedding when i - 1 is in an earlier group (else the
# vector), at RoPE position i - 1: under 'ar' a converted causal model exactly (model/transformer.py).
QUERY_INPUTS = ("vector", "shift")
# How the model computes, not what it computes: a checkpoint resumes under other values of these.
EXECUTION_FIELDS = ("attention", "attention_chunks", "remat", "unroll_layers")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    kind: str = "none"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    variant: str = "a3"
    vocab_size: int = 259
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 0  # 0 = d_model // n_heads
    ffn_dim: int = 384
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    attention: str = "xla"
    attention_chunks: int = 1  # static prefix chunks for the dense backends (see prefix_chunks.py)
    dtype: str = "float32"  # compute dtype; the accelerator presets (llama3_*) set bfloat16
    remat: str = "none"
    # The layer stack is one lax.scan (compile time and program size independent of depth); True
    # unrolls it (each layer its own code: sometimes faster to run, slower to compile).
    unroll_layers: bool = False
    query_input: str = "vector"  # "vector" (the paper's) or "shift" (see QUERY_INPUTS)

    def __post_init__(self):
        if self.head_dim == 0:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"model.n_heads={self.n_heads} does not divide model.d_model={self.d_model}; "
                    "choose n_heads dividing d_model or set model.head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        checks = [
            (self.variant in VARIANTS, f"model.variant={self.variant!r} is not one of {VARIANTS}"),
            (self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0,
             f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads} (GQA)"),
            (self.head_dim % 2 == 0, f"model.head_dim={self.head_dim} must be even for RoPE"),
            (self.remat in REMAT_POLICIES, f"model.remat={self.remat!r} is not one of {REMAT_POLICIES}"),
            (self.dtype in DTYPES, f"model.dtype={self.dtype!r} is not one of {DTYPES}"),
            (self.attention in ATTENTION_BACKENDS,
             f"model.attention={self.attention!r} is not one of {ATTENTION_BACKENDS}"),
            (isinstance(self.attention_chunks, int) and self.attention_chunks >= 1,
             f"model.attention_chunks={self.attention_chunks!r} must be an integer >= 1"),
            (self.query_input in QUERY_INPUTS,
             f"model.query_input={self.query_input!r} is not one of {QUERY_INPUTS}"),
            (self.query_input == "vector" or self.variant not in VARIANTS or variant_of(self.variant).query_stream,
             f"model.query_input={self.query_input!r} shapes the query stream, which a "
             f"model.variant={self.variant!r} model does not have; set --config.model.query_input=vector"),
            (self.rope_scaling.kind in ROPE_SCALINGS,
             f"model.rope_scaling.kind={self.rope_scaling.kind!r} is not one of {ROPE_SCALINGS}"),
        ]
        for value in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_dim"):
            checks.append((getattr(self, value) > 0, f"model.{value}={getattr(self, value)} must be > 0"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ModelConfig:
        """The model section from a mapping (a checkpoint's meta, config.json's values): missing keys
        take the defaults, unknown keys and bad values are a ConfigError (a3jax/schema.py)."""
        return parse_section(cls, mapping, "model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def shifted_query(self) -> bool:
        """Query rows read the previous token when it is known (query_input='shift')."""
        return self.query_input == "shift" and self.facts.query_stream

    @property
    def accumulation_dtype(self):
        """The dtype of norms, softmax and matmul accumulation: float32, or float64 for float64 models."""
        return "float64" if self.dtype == "float64" else "float32"

    @property
    def facts(self) -> Variant:
        """What this model's variant does (a3jax/variants.py): ask these, never the name."""
        return variant_of(self.variant)

    @property
    def mask_token_id(self) -> int:
        """The MASK input id of the `mdlm` variant: the last vocabulary id, vocab_size - 1. The
        tokenizer's ids (PAD, BOS, EOS included) must all be < vocab_size - 1 (configs.validate
        checks it; the byte tokenizer's 259 ids need model.vocab_size=260)."""
        return self.vocab_size - 1

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def n_weights(self) -> int:
        """About how many weights the model has: embeddings (one table if tied), the attention and
        MLP matrices (norms and the query stream's few vectors left out)."""
        embed = self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
        attention = 2 * self.d_model * (self.q_dim + self.kv_dim)
        return embed + self.n_layers * (attention + 3 * self.d_model * self.ffn_dim)
