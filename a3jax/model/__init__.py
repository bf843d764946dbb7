"""The A3 model: config, RoPE, the attention API and the two-stream transformer."""

from a3jax.model.config import ModelConfig, RopeScaling
from a3jax.model.transformer import Transformer

__all__ = ["ModelConfig", "RopeScaling", "Transformer"]
