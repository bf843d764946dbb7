"""The cross-entropy without the full logits (train.loss_chunk): the chunked loss equals the dense
one -- values and gradients, f32, to 1e-5 relative -- for every variant, tied and untied
embeddings, with chunks that do not divide the rows; and its compiled program holds no [B, N, V]
array."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a3jax import orders
from a3jax.layout import build_layout, stack_layouts
from a3jax.model import ModelConfig
from a3jax.model.params import init_model
from a3jax.train.step import model_loss

V, BOS, PAD = 40, 37, 38  # mdlm: MASK is 39


def _batch(variant, seed=0):
    rng = np.random.default_rng(seed)
    spec = {"a3": "random_sizes(1,4)", "causal": "ar", "mdlm": "mdlm"}[variant]
    sampler = orders.parse_sampler(spec)
    rows = []
    for _ in range(3):
        docs = [rng.integers(0, 36, int(n)) for n in rng.integers(3, 9, 2)]
        rows.append(build_layout(docs, [sampler(d.size, rng) for d in docs], 24, bos_id=BOS, pad_id=PAD))
    return {k: jnp.asarray(v) for k, v in stack_layouts(rows).items()}


# Every variant, both query inputs and both embedding tyings, in five cases (the chunking acts on
# the head and the targets; one layer feeds it).
@pytest.mark.parametrize("variant, query_input, tie", [("a3", "vector", True), ("a3", "vector", False),
                                                       ("a3", "shift", True), ("causal", "vector", False),
                                                       ("mdlm", "vector", True)])
def test_chunked_loss_equals_the_dense_loss_values_and_gradients(variant, query_input, tie):
    cfg = ModelConfig(variant=variant, vocab_size=V, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      dtype="float32", init_std=0.3, tie_embeddings=tie, query_input=query_input)
    model_def, params = init_model(cfg, 1)
    batch = _batch(variant)

    @jax.jit
    def losses_and_grads(p):  # one compile: the dense loss and two chunkings
        return [jax.value_and_grad(lambda p, c=c: model_loss(model_def.bind(p), batch, loss_chunk=c),
                                   has_aux=True)(p) for c in (0, 7, 1000)]

    ((dense, dense_aux), dense_grads), *chunked = losses_and_grads(params)
    for chunk, ((value, aux), grads) in zip((7, 1000), chunked):  # 72 rows: ragged chunks; one chunk
        np.testing.assert_allclose(float(value), float(dense), rtol=1e-5)
        assert float(aux["n_targets"]) == float(dense_aux["n_targets"]) > 10
        for path, a, b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads),
                              jax.tree.leaves(dense_grads)):
            scale = float(jnp.max(jnp.abs(b))) + 1e-12
            assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * scale, (jax.tree_util.keystr(path[0]), chunk)


def test_the_chunked_step_holds_no_full_logits():
    """The compiled train loss of the chunked path has no [rows, V] (or [B, N, V]) buffer of float32
    logits, the dense one does: checked in the optimized HLO of the gradient."""
    cfg = ModelConfig(variant="a3", vocab_size=1000, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      dtype="float32")
    model_def, params = init_model(cfg, 0)
    batch = _batch("a3")  # 3 x 24 rows
    shapes = {}
    for chunk in (0, 8):
        grad = jax.jit(jax.grad(lambda p, c=chunk: model_loss(model_def.bind(p), batch, loss_chunk=c)[0]))
        text = grad.lower(params).compile().as_text()
        shapes[chunk] = ("f32[3,24,1000]" in text) or ("f32[72,1000]" in text)
        assert ("f32[8,1000]" in text) == (chunk == 8)
    assert shapes == {0: True, 8: False}
