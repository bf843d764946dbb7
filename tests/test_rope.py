"""RoPE: rotate-half layout at original positions, and llama3 frequency scaling."""

import math

import jax.numpy as jnp
import numpy as np

from a3jax.model.config import RopeScaling
from a3jax.model.rope import apply_rope, inverse_frequencies, rope_tables


def test_llama3_scaling_keeps_high_slows_low_and_blends_the_band():
    scaling = RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position=8192)
    plain = inverse_frequencies(128, 500000.0, RopeScaling())
    scaled = inverse_frequencies(128, 500000.0, scaling)
    wavelen = 2 * math.pi / plain
    high = wavelen < 8192 / 4.0
    low = wavelen > 8192 / 1.0
    band = ~high & ~low
    assert high.any() and low.any() and band.any()
    np.testing.assert_allclose(scaled[high], plain[high], rtol=1e-6)
    np.testing.assert_allclose(scaled[low], plain[low] / 8.0, rtol=1e-6)
    # The band interpolates smoothly between the two regimes.
    assert np.all(scaled[band] < plain[band]) and np.all(scaled[band] > plain[band] / 8.0)
    smooth = (8192 / wavelen[band] - 1.0) / 3.0
    expected = (1 - smooth) * plain[band] / 8.0 + smooth * plain[band]
    np.testing.assert_allclose(scaled[band], expected, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
    inv = inverse_frequencies(16, 10000.0, RopeScaling())

    def score(pq, pk):
        cq, sq = rope_tables(jnp.array([[pq]]), inv)
        ck, sk = rope_tables(jnp.array([[pk]]), inv)
        return float(jnp.sum(apply_rope(q, cq, sq) * apply_rope(k, ck, sk)))

    assert abs(score(5, 2) - score(105, 102)) < 1e-4
    assert abs(score(5, 2) - score(5, 3)) > 1e-3
    # Rotate-half layout: pairs (i, i + D/2) rotate together, so norms are preserved.
    c, s = rope_tables(jnp.array([[7]]), inv)
    np.testing.assert_allclose(float(jnp.linalg.norm(apply_rope(q, c, s))), float(jnp.linalg.norm(q)), rtol=1e-6)
