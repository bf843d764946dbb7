"""flops.py against FLOPs counted by hand for a tiny shape, and against XLA's own count."""

import jax
import numpy as np
import pytest

from a3jax import flops
from a3jax.model import ModelConfig

TINY = dict(vocab_size=10, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=16, dtype="float32")


def test_causal_formula_by_hand():
    cfg = ModelConfig(variant="causal", **TINY)  # head_dim 4
    n = 6
    # per layer: q 2*8*8=128, o 128, mlp 3*2*8*16=768, kv 2*2*8*4=128, attn 2*2*8*3=96
    per_layer = 128 + 128 + 768 + 128 + 96
    logits = 2 * 8 * 10
    assert flops.forward_flops_per_token(cfg, n) == 2 * per_layer + logits
    assert flops.train_flops_per_token(cfg, n) == 3 * (2 * per_layer + logits)
    assert flops.causal_equivalent_flops_per_token(cfg, n) == flops.train_flops_per_token(cfg, n)


def test_a3_formula_by_hand():
    cfg = ModelConfig(variant="a3", **TINY)
    n = 6
    stream, kv, attn, logits = 128 + 128 + 768, 128, 96, 160
    # layer 1: both streams; layer 2: query stream only, content k/v still needed
    expected = (2 * stream + kv + 2 * attn) + (stream + kv + attn) + logits
    assert flops.forward_flops_per_token(cfg, n) == expected
    ratio = flops.train_flops_per_token(cfg, n) / flops.causal_equivalent_flops_per_token(cfg, n)
    assert 1.3 < ratio < 2.0


def dot_flops(jaxpr) -> float:
    """2 x MACs of every dot_general in a jaxpr, entering scans (times their length) and calls."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
        for sub in eqn.params.values():
            subs = sub if isinstance(sub, (list, tuple)) else [sub]
            for item in subs:
                inner = getattr(item, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    total += dot_flops(inner) * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
                elif hasattr(item, "eqns"):
                    total += dot_flops(item)
    return total


@pytest.mark.parametrize("variant", ["causal", "a3"])
def test_formula_matches_the_dots_the_model_runs(variant):
    """Counting the model's own matmuls (dense attention = every key) gives the formula with K = N."""
    import jax.numpy as jnp

    from a3jax.layout import build_layout, stack_layouts
    from a3jax.model.params import init_model

    cfg = ModelConfig(variant=variant, **TINY)
    model_def, params = init_model(cfg, 0)
    n = 8
    batch = {k: jnp.asarray(v) for k, v in stack_layouts(
        [build_layout([np.arange(n - 1) % 8], [np.arange(1, n)], n, bos_id=8, pad_id=9)]).items()}
    counted = dot_flops(jax.make_jaxpr(lambda p, b: model_def.bind(p)(b))(params, batch).jaxpr)
    # The dense reference attends every key: the formula's K = N/2 becomes N, i.e. seq_len 2N.
    assert counted == pytest.approx(n * flops.forward_flops_per_token(cfg, 2 * n), rel=1e-9)


def test_peak_table():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("cpu") is None
    assert flops.peak_flops("cpu", override=1e12) == 1e12
