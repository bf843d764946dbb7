"""Pallas kernels (Triton on GPU, interpret mode on CPU)."""

from a3jax.kernels.range_attention import block_visits, dense_block_count, range_attention

__all__ = ["block_visits", "dense_block_count", "range_attention"]
