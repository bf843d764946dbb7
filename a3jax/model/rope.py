"""Rotary position embeddings at ORIGINAL positions (HF LLaMA's rotate-half layout, llama3 scaling)."""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

from a3jax.model.config import RopeScaling


@functools.cache
def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """Per-pair inverse frequencies [head_dim // 2] (float64), with the llama3 frequency-band
    rescaling. rope_tables rounds them to the tables' dtype (float32 for every model but float64)."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling.kind == "none":
        return inv_freq
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    low_freq_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, blended, scaled)


def rope_tables(positions_BxN, inv_freq, dtype=jnp.float32):
    """cos and sin tables [B, N, head_dim] (float32; float64 for float64 models) for integer positions."""
    freq_H = jnp.asarray(np.asarray(inv_freq, np.float64).astype(dtype))  # rounded to the tables' dtype
    angles_BxNxH = positions_BxN.astype(dtype)[..., None] * freq_H
    angles_BxNxD = jnp.concatenate([angles_BxNxH, angles_BxNxH], axis=-1)
    return jnp.cos(angles_BxNxD), jnp.sin(angles_BxNxD)


def apply_rope(x_BxNxHxD, cos_BxNxD, sin_BxNxD):
    """Rotates pairs (i, i + D/2) of every head by the angle of its row's position."""
    half = x_BxNxHxD.shape[-1] // 2
    x1, x2 = x_BxNxHxD[..., :half], x_BxNxHxD[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos = cos_BxNxD[:, :, None, :]
    sin = sin_BxNxD[:, :, None, :]
    acc = jnp.promote_types(cos.dtype, jnp.float32)
    out = x_BxNxHxD.astype(acc) * cos + rotated.astype(acc) * sin
    return out.astype(x_BxNxHxD.dtype)
