"""The 1B and 8B configs: one train step lowers ahead of time on abstract inputs under a sharded
mesh of 8 fake CPU devices (no memory is allocated), and every pod preset shards every parameter
as the rules say (no dimension left replicated by a divisibility fallback)."""

import math

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from a3jax import parallel
from a3jax.configs import load_config, model_config
from a3jax.model.params import abstract_params
from a3jax.train.optimizer import learning_rate_schedule, make_optimizer
from a3jax.train.step import make_train_step

from conftest import ROOT

CONFIGS = ["llama3_1b.py", "llama3_8b.py"]


def abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


@pytest.mark.parametrize("name", CONFIGS)
def test_train_step_lowers_on_a_sharded_mesh(name):
    config = load_config(ROOT / "experiments" / name, ["mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2",
                                                       "train.batch_size=8"])
    cfg = model_config(config)
    mesh = parallel.make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        model_def, shapes = abstract_params(cfg)
        params_sh = parallel.param_shardings(mesh, shapes, config.mesh.rules)
        tx = make_optimizer(config.train)
        opt_shapes = jax.eval_shape(tx.init, shapes)
        opt_sh = jax.tree.map(lambda x: NamedSharding(mesh, P()), opt_shapes)
        batch_sh = parallel.batch_sharding(mesh)
        n, b = config.data.seq_len, config.train.batch_size
        batch = {k: jax.ShapeDtypeStruct((b, n), jnp.int32, sharding=batch_sh)
                 for k in ("tokens", "positions", "groups", "segment_ids", "loss_mask")}
        step = make_train_step(model_def, tx, learning_rate_schedule(config.train), (params_sh, opt_sh, batch_sh))
        lowered = step.lower(abstract(shapes, params_sh), abstract(opt_shapes, opt_sh), 0, batch)
    text = lowered.as_text()
    assert "sharding" in text
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    expected = {"llama3_1b.py": 1.24e9, "llama3_8b.py": 8.03e9}[name]
    assert n_params == pytest.approx(expected, rel=0.01)
    wq = params_sh["layers"]["wq"].spec
    assert tuple(wq) == (None, "fsdp", "tensor")


class FakeMesh:
    def __init__(self, shape):
        self.shape = dict(zip(parallel.MESH_AXES, shape))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("preset", ["8xH100", "v5p-128", "v6e-256"])
def test_presets_shard_every_parameter(name, preset):
    config = load_config(ROOT / "experiments" / name)
    shape = tuple(config.mesh.presets[preset])
    mesh = FakeMesh(shape)
    assert config.train.batch_size % (shape[0] * shape[1]) == 0
    _, shapes = abstract_params(model_config(config))
    rules = parallel.parse_rules(config.mesh.rules)
    from a3jax.model.transformer import param_logical_axes

    axes = param_logical_axes(shapes)
    leaves = jax.tree.leaves(jax.tree.map(lambda a, x: (a, x.shape), axes, shapes,
                                          is_leaf=lambda v: isinstance(v, tuple)),
                             is_leaf=lambda v: isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], tuple))
    for logical, dims in leaves:
        spec = parallel.spec_for(logical, dims, mesh, rules)
        for name_, dim, entry in zip(logical, dims, spec):
            wanted = tuple(a for a in rules[name_] if mesh.shape[a] > 1)
            got = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
            if name_ != "vocab" or dim % max(1, math.prod(mesh.shape[a] for a in wanted)) == 0:
                assert got == wanted, (logical, dims, spec)
