"""Every accelerator path lowered from this CPU for a platform it lacks (jax.export).

The sharded A3 train step of a small config lowers for `tpu` with the `splash` backend (Pallas ->
Mosaic TPU), for `cuda` with `pallas` (Pallas -> Triton) and with `tokamax` (Pallas -> Mosaic GPU),
on a (data 2, fsdp 2, tensor 2) mesh of the 8 fake CPU devices; the cached decode step lowers for
`cuda` and `tpu`. Each module must contain its kernel's custom call, so a kernel silently replaced
by XLA (interpret mode, a reference implementation) fails the test. Final compilation still
needs the device. A lowering that JAX cannot do here fails the test: the claim is that it lowers.
"""

import contextlib
import importlib
import re
from unittest import mock

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from a3jax import parallel
from a3jax.configs import load_config, model_config
from a3jax.kernels.platform import kernel_platform, lowering_for
from a3jax.model.params import abstract_params
from a3jax.train.optimizer import learning_rate_schedule, make_optimizer
from a3jax.train.step import make_train_step

from conftest import TINY

# Custom-call targets with no compatibility guarantee: jax.export refuses them unless told.
KERNEL_TARGETS = {"triton": "__gpu$xla.gpu.triton", "mosaic_gpu": "mosaic_gpu_v2", "mosaic_tpu": "tpu_custom_call"}
UNCHECKED = [jax.export.DisabledSafetyCheck.custom_call(t) for t in
             ("__gpu$xla.gpu.triton", "mosaic_gpu", "mosaic_gpu_v2", "tpu_custom_call")]
SMALL = ["model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_dim=128",
         "model.dtype=bfloat16", "data.seq_len=256", "train.batch_size=8", "mesh.data=2", "mesh.fsdp=2",
         "mesh.tensor=2"]
ALIGNED = ["data.align_groups=True", "orders.group_size_scope=batch", "orders.curriculum=random(4)"]


def custom_calls(module_text: str) -> set[str]:
    return set(re.findall(r"custom_call @([^\s(]+)", module_text))


@contextlib.contextmanager
def tokamax_for_hopper():
    """tokamax checks for Mosaic GPU support and for sm90 by reading the default device. Its own
    `cross_compile` option lifts the first; the compute-capability probes are told 'sm90' here
    (and only here) so that the real Mosaic GPU lowering runs on this CPU."""
    pytest.importorskip("tokamax")
    from tokamax._src import config as tokamax_config
    from tokamax._src import gpu_utils

    with contextlib.ExitStack() as stack:
        stack.enter_context(tokamax_config.cross_compile(True))
        stack.enter_context(mock.patch.object(gpu_utils, "_compute_capability", return_value=9.0))
        stack.enter_context(mock.patch.object(gpu_utils, "is_sm90", return_value=True))
        # newer tokamax (0.0.17) sizes its persistent grid by the default device's SM count
        try:
            mosaic_gpu = importlib.import_module("tokamax._src.mosaic_gpu")
        except ImportError:
            mosaic_gpu = None
        if mosaic_gpu is not None and hasattr(mosaic_gpu, "backend"):
            stack.enter_context(mock.patch.object(mosaic_gpu, "backend", _HopperBackend(mosaic_gpu.backend)))
        yield


class _HopperBackend:
    """jax.extend.backend whose default device reports an H100's 132 SMs (`core_count`)."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def get_default_device(self):
        device = self._backend.get_default_device()
        return type("HopperDevice", (), {"core_count": 132, "__getattr__": lambda _, n: getattr(device, n)})()


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# The TPU lowering asks the mesh's device for its kind (VMEM size, generation), and from jax 0.12
# the Triton lowering asks it for the GPU's compute capability: an abstract mesh with an abstract
# device stands in for a pod slice or a GPU node this machine does not have.
ABSTRACT_DEVICES = {
    "tpu": jax.sharding.AbstractDevice(device_kind="TPU v5p", num_cores=1, platform="tpu"),
    "cuda": jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu"),
}


def abstract_mesh(platform: str, shape=(2, 2, 2), axes=parallel.MESH_AXES):
    return jax.sharding.AbstractMesh(shape, axes, (jax.sharding.AxisType.Auto,) * len(shape),
                                     abstract_device=ABSTRACT_DEVICES[platform])


def on_abstract_gpu():
    """A one-device abstract mesh on an H100, for lowering a program without a mesh for cuda."""
    return jax.sharding.use_abstract_mesh(abstract_mesh("cuda", (1,), ("x",)))


def export_train_step(platform: str, attention: str, extra=(), group_size=None):
    config = load_config(TINY, SMALL + [f"model.attention={attention}"] + list(extra))
    cfg = model_config(config)
    mesh = abstract_mesh(platform)
    with jax.sharding.use_abstract_mesh(mesh), lowering_for(platform):
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
        exported = jax.export.export(step, platforms=[platform], disabled_checks=UNCHECKED)(
            _abstract(shapes, params_sh), _abstract(opt_shapes, opt_sh), 0, batch, group_size)
    return exported


def test_kernel_platform_follows_the_lowering_target():
    assert kernel_platform() == "cpu"
    with lowering_for("cuda"):
        assert kernel_platform() == "gpu"
        with lowering_for("tpu"):
            assert kernel_platform() == "tpu"
        assert kernel_platform() == "gpu"
    assert kernel_platform() == "cpu"
    with pytest.raises(ValueError, match="not one of"):
        with lowering_for("metal"):
            pass


def test_sharded_train_step_lowers_for_tpu_with_splash():
    exported = export_train_step("tpu", "splash", ALIGNED, group_size=4)
    text = exported.mlir_module()
    assert exported.platforms == ("tpu",) and exported.nr_devices == 8
    # the forward kernel and the splash backward kernels (dq, dkv) of every layer: Mosaic TPU calls
    assert KERNEL_TARGETS["mosaic_tpu"] in custom_calls(text)
    assert text.count("@tpu_custom_call") >= 3
    assert "mhlo.sharding" in text or "sdy.sharding" in text


def test_sharded_train_step_lowers_for_cuda_with_the_pallas_triton_kernel():
    exported = export_train_step("cuda", "pallas")
    text = exported.mlir_module()
    assert exported.platforms == ("cuda",) and exported.nr_devices == 8
    assert KERNEL_TARGETS["triton"] in custom_calls(text)
    # forward, dq and dk/dv kernels
    assert text.count("@__gpu$xla.gpu.triton") >= 3


def test_sharded_train_step_lowers_for_cuda_with_tokamax_mosaic_gpu():
    with tokamax_for_hopper():
        exported = export_train_step("cuda", "tokamax")
    text = exported.mlir_module()
    assert exported.platforms == ("cuda",)
    calls = custom_calls(text)
    assert calls & {"mosaic_gpu", "mosaic_gpu_v2"}, calls
    assert not calls & {"__gpu$xla.gpu.triton", "tpu_custom_call"}


def test_skipping_backward_lowers_for_cuda_as_two_mosaic_gpu_kernels():
    """The block-skipping Hopper backward alone (bfloat16, GQA 2, D=128, 2N rows against N keys):
    its dq and dk/dv kernels are two Mosaic GPU calls, and nothing falls back to XLA's attention."""
    from a3jax.kernels.hopper_range_bwd import range_attention_bwd

    b, n, h, kv, d = 2, 256, 4, 2, 128
    shape = jax.ShapeDtypeStruct
    rows, keys = shape((b, 2 * n, h, d), jnp.bfloat16), shape((b, n, kv, d), jnp.bfloat16)
    ranges = shape((b, 2 * n), jnp.int32)
    exported = jax.export.export(jax.jit(range_attention_bwd), platforms=["cuda"], disabled_checks=UNCHECKED)(
        rows, keys, keys, rows, shape((b, h, 2 * n), jnp.float32), rows, ranges, ranges)
    text = exported.mlir_module()
    calls = custom_calls(text)
    assert calls == {KERNEL_TARGETS["mosaic_gpu"]}, calls
    assert text.count(f"@{KERNEL_TARGETS['mosaic_gpu']}") == 2


def test_sharded_train_step_lowers_for_cuda_with_tokamax_skip():
    """`tokamax_skip`: tokamax's forward and the skipping backward, all Mosaic GPU, in the sharded
    train step."""
    with tokamax_for_hopper():
        exported = export_train_step("cuda", "tokamax_skip")
    calls = custom_calls(exported.mlir_module())
    assert calls & {"mosaic_gpu", "mosaic_gpu_v2"}, calls
    assert not calls & {"__gpu$xla.gpu.triton", "tpu_custom_call"}


def test_without_the_lowering_target_the_kernels_stay_references():
    """The control: exported for cuda but built for this CPU, the pallas kernel is interpreted
    (no Triton call) -- what `lowering_for` prevents in the tests above."""
    from a3jax.bench.attention import sorted_layout
    from a3jax.model.params import init_model

    cfg = model_config(load_config(TINY, SMALL[:6] + ["model.attention=pallas"]))
    model_def, params = init_model(cfg, 0)
    batch = {k: jnp.asarray(v) for k, v in sorted_layout(2, 64, "random(4)").items()}

    def loss(params):
        return model_def.bind(params)(batch).astype(jnp.float32).mean()

    exported = jax.export.export(jax.jit(loss), platforms=["cuda"], disabled_checks=UNCHECKED)(params)
    assert KERNEL_TARGETS["triton"] not in custom_calls(exported.mlir_module())
    with on_abstract_gpu(), lowering_for("cuda"):
        exported = jax.export.export(jax.jit(loss), platforms=["cuda"], disabled_checks=UNCHECKED)(params)
    assert KERNEL_TARGETS["triton"] in custom_calls(exported.mlir_module())


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_cached_decode_step_lowers(platform):
    """One decoding call (commit a group, predict the next positions against the KV cache).
    Its attention over the cache is XLA's (the cache is not a sorted layout), so there is no kernel
    call to find; the module must carry the in-place cache append."""
    from a3jax.decode import cache as cache_lib
    from a3jax.model.params import init_model

    cfg = model_config(load_config(TINY, SMALL[:6]))
    model_def, params = init_model(cfg, 0)
    b, c, q, size = 2, 4, 4, 32
    kv = cache_lib.init_cache(cfg, b, size)

    def step(params, kv, tokens, positions, valid, query_positions):
        return cache_lib.extend(model_def.bind(params), kv, tokens, positions, valid, query_positions)

    args = (params, kv, jnp.zeros((b, c), jnp.int32), jnp.tile(jnp.arange(c), (b, 1)),
            jnp.ones((b, c), bool), jnp.tile(jnp.arange(c, c + q), (b, 1)))
    with lowering_for(platform):
        exported = jax.export.export(jax.jit(step), platforms=[platform])(*args)
    text = exported.mlir_module()
    assert exported.platforms == (platform,)
    assert "stablehlo.dynamic_update_slice" in text
    out_cache, logits = exported.out_avals[:-1], exported.out_avals[-1]
    assert logits.shape == (b, q, cfg.vocab_size) and len(out_cache) == len(jax.tree.leaves(kv))


def test_a_kernel_configuration_the_lowering_rejects_fails(monkeypatch):
    """The check has power: with our own block-size validation switched off, a Triton block of 48
    rows (not a power of two) is refused by the Pallas -> Triton lowering itself. The same kernel
    with blocks of 32 lowers to a Triton call."""
    ra = importlib.import_module("a3jax.kernels.range_attention")  # the module, not the function

    q = jax.ShapeDtypeStruct((1, 96, 2, 32), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 96, 1, 32), jnp.bfloat16)
    rng = jax.ShapeDtypeStruct((1, 96), jnp.int32)

    def export(block):
        fn = jax.jit(lambda *a: ra.range_attention(*a, block_q=block, block_k=block))
        return jax.export.export(fn, platforms=["cuda"], disabled_checks=UNCHECKED)(q, kv, kv, rng, rng)

    with on_abstract_gpu(), lowering_for("cuda"):
        assert KERNEL_TARGETS["triton"] in custom_calls(export(32).mlir_module())
        with pytest.raises(ValueError, match="power of two"):  # our validation, first
            export(48)
        monkeypatch.setattr(ra, "_check_block", lambda name, value: None)
        with pytest.raises(ValueError, match="Pallas Triton lowering") as refused:  # then the lowering
            export(48)
    assert "a3jax" not in refused.traceback[-1].path.as_posix()
