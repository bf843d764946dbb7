"""Sharded training on 8 fake CPU devices: every mesh gives the single-device losses, and the
parameters are sharded as the rule table says."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from a3jax import parallel
from a3jax.train.loop import train
from a3jax.train.metrics import read_metrics

from conftest import micro_config

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 8, 1)]


def mesh_overrides(shape, devices=0):
    data, fsdp, tensor = shape
    return [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}", f"mesh.devices={devices}",
            "model.n_heads=4", "model.n_kv_heads=2", "train.steps=5", "train.eval_every=1000",
            "train.checkpoint_every=1000"]


def run_losses(workdir, corpus, shape, devices=0):
    summary = train(micro_config(*mesh_overrides(shape, devices)), workdir, corpus=corpus, progress=False)
    return [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r], summary["params"]


@pytest.fixture(scope="module")
def single_device(tmp_path_factory, small_corpus):
    return run_losses(tmp_path_factory.mktemp("one"), small_corpus, (1, 1, 1), devices=1)


@pytest.mark.slow
@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_mesh_matches_single_device(shape, single_device, tmp_path, small_corpus):
    ref_losses, ref_params = single_device
    losses, params = run_losses(tmp_path, small_corpus, shape)
    assert len(losses) == 5
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
    data, fsdp, tensor = shape
    spec = lambda leaf: leaf.sharding.spec  # noqa: E731
    assert len(params["layers"]["wq"].sharding.device_set) == 8
    expected_wq = P(None, "fsdp" if fsdp > 1 else None, "tensor" if tensor > 1 else None)
    assert tuple(spec(params["layers"]["wq"])) == tuple(expected_wq) + (None,) * (3 - len(expected_wq))
    assert tuple(spec(params["layers"]["w_down"])) == (None, "tensor" if tensor > 1 else None,
                                                       "fsdp" if fsdp > 1 else None)
    # vocab 259 is not divisible by 2: the embedding's vocab axis stays replicated.
    assert spec(params["embed"])[0] is None
    if fsdp > 1:
        assert params["embed"].addressable_shards[0].data.shape == (259, 32 // fsdp)


def test_bad_meshes_and_batches_are_refused_before_compiling():
    with pytest.raises(parallel.MeshError, match=r"mesh \(data=3, fsdp=1, tensor=1\) has 3 devices but JAX sees 8"):
        parallel.make_mesh(micro_config("mesh.data=3").mesh)
    with pytest.raises(parallel.MeshError, match="does not divide the 8 devices"):
        parallel.make_mesh(micro_config("mesh.data=-1", "mesh.tensor=3").mesh)
    mesh = parallel.make_mesh(micro_config("mesh.data=4", "mesh.fsdp=2").mesh)
    message = "train.batch_size=12 is not divisible by the batch axes data x fsdp = 8"
    with pytest.raises(parallel.MeshError, match=message):
        parallel.check_batch(12, mesh)


@pytest.mark.slow
def test_checkpoint_from_one_mesh_restores_on_others(tmp_path, small_corpus):
    import shutil

    from a3jax.checkpoint import Checkpointer
    from a3jax.configs import model_config
    from a3jax.model.params import init_model

    overrides = lambda shape, devices=0: mesh_overrides(shape, devices)[:-3] + [  # noqa: E731
        "train.steps=10", "train.eval_every=1000", "train.checkpoint_every=5"]
    source = tmp_path / "source"
    train(micro_config(*overrides((2, 4, 1))), source, corpus=small_corpus, progress=False, stop_after=5)
    restored = {}
    for name, shape, devices in [("8x1x1", (8, 1, 1), 0), ("one", (1, 1, 1), 1), ("2x4x1", (2, 4, 1), 0)]:
        config = micro_config(*overrides(shape, devices))
        mesh = parallel.make_mesh(config.mesh)
        _, params = init_model(model_config(config), 0)
        shardings = parallel.param_shardings(mesh, params, config.mesh.rules)
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
        checkpointer = Checkpointer(source, async_save=False)
        restored[name] = checkpointer.restore_params(5, abstract)
        checkpointer.close()
        assert restored[name]["layers"]["wq"].sharding.mesh.devices.size == (1 if devices == 1 else 8)
    for a, b, c in zip(*(jax.tree.leaves(restored[k]) for k in ("8x1x1", "one", "2x4x1"))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
        np.testing.assert_array_equal(np.asarray(b), np.asarray(c))
    # Training continues under another mesh with the losses of the original mesh.
    continued = {}
    for name, shape, devices in [("2x4x1", (2, 4, 1), 0), ("8x1x1", (8, 1, 1), 0), ("one", (1, 1, 1), 1)]:
        workdir = tmp_path / name
        shutil.copytree(source, workdir)
        train(micro_config(*overrides(shape, devices)), workdir, corpus=small_corpus, progress=False)
        continued[name] = [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r]
    assert len(continued["2x4x1"]) == 10
    np.testing.assert_allclose(continued["8x1x1"], continued["2x4x1"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(continued["one"], continued["2x4x1"], atol=1e-5, rtol=0)
