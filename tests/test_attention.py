"""The attention API: key ranges of the sorted layout, backend choice, and sharded execution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from a3jax import layout as layout_lib
from a3jax import orders
from a3jax.layout import key_ranges
from a3jax.model import ModelConfig
from a3jax.model.attention import resolve_backend, visibility_masks
from a3jax.model.params import init_model

from support import model_loss


def random_rows(seed, n_rows=4, seq_len=48, spec="random_sizes(1,5)"):
    rng = np.random.default_rng(seed)
    sampler = orders.parse_sampler(spec)
    rows = []
    for _ in range(n_rows):
        docs = [rng.integers(0, 9, size=rng.integers(1, 14)) for _ in range(rng.integers(1, 4))]
        rows.append(layout_lib.build_layout(docs, [sampler(len(d), rng) for d in docs], seq_len,
                                            bos_id=10, pad_id=11))
    return layout_lib.stack_layouts(rows)


@pytest.mark.parametrize("seed", range(5))
def test_key_ranges_match_the_visibility_rule(seed):
    batch = random_rows(seed)
    seg, grp = jnp.asarray(batch["segment_ids"]), jnp.asarray(batch["groups"])
    start, content_end, query_end = (np.asarray(a) for a in jax.jit(key_ranges)(seg, grp))
    np_start, np_content_end, np_query_end = key_ranges(batch["segment_ids"], batch["groups"])  # numpy input
    np.testing.assert_array_equal(np.asarray(np_start), start)
    np.testing.assert_array_equal(np.asarray(np_content_end), content_end)
    np.testing.assert_array_equal(np.asarray(np_query_end), query_end)
    content_mask, query_mask = (np.asarray(m) for m in visibility_masks(seg, grp))
    j = np.arange(seg.shape[1])
    np.testing.assert_array_equal(content_mask, (start[..., None] <= j) & (j < content_end[..., None]))
    np.testing.assert_array_equal(query_mask, (start[..., None] <= j) & (j < query_end[..., None]))


def test_backend_choice_and_errors():
    assert resolve_backend("auto", "cpu") == "xla"
    assert resolve_backend("auto", "gpu") == "cudnn"
    assert resolve_backend("pallas", "cpu") == "pallas"
    with pytest.raises(ValueError, match="'cudnn' needs a GPU"):
        resolve_backend("cudnn", "cpu")
    with pytest.raises(ValueError, match="model.attention='flash' is not one of"):
        ModelConfig(attention="flash")


def micro_model(attention):
    cfg = ModelConfig(vocab_size=12, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      dtype="float32", attention=attention, init_std=0.2)
    return init_model(cfg, seed=0)


def loss_and_grads(model_def, params, batch):
    return jax.value_and_grad(lambda p: model_loss(model_def.bind(p), batch)[0])(params)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_sharded_train_step_loss_equals_single_device_xla(backend):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    batch = {k: jnp.asarray(v) for k, v in random_rows(7, n_rows=8).items()}
    ref_def, params = micro_model("xla")
    ref_loss, ref_grads = jax.jit(loss_and_grads, static_argnums=0)(ref_def, params, batch)
    model_def, _ = micro_model(backend)
    mesh = jax.make_mesh((4, 2), ("data", "tensor"), axis_types=(AxisType.Auto, AxisType.Auto))
    with jax.set_mesh(mesh):
        sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
        loss, grads = jax.jit(loss_and_grads, static_argnums=0)(model_def, params, sharded)
    assert abs(float(loss) - float(ref_loss)) < 1e-5
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
