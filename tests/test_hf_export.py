"""`a3jax export` without torch: hf_state_dict gives exactly the tensors that the file export writes
(HF names and [out, in] layout), refuses params of another config, and the written weights are
readable by everyone the folder is (tiny random models, CPU, float32)."""

import json

import jax
import numpy as np
import pytest

from a3jax.checkpoint import Checkpointer
from a3jax.model import ModelConfig
from a3jax.model.params import init_model

EXPORTS = {
    "a3_untied_sharded_f32": (ModelConfig(variant="a3", vocab_size=61, d_model=32, n_layers=2, n_heads=4,
                                          n_kv_heads=2, ffn_dim=48, tie_embeddings=False, dtype="float32"),
                              "float32", "20KB"),
    "causal_tied_single_bf16": (ModelConfig(variant="causal", vocab_size=61, d_model=32, n_layers=1, n_heads=2,
                                            n_kv_heads=1, ffn_dim=48, dtype="float32"), "bfloat16", "5GB"),
}


@pytest.mark.parametrize("case", sorted(EXPORTS))
def test_hf_state_dict_equals_what_the_file_export_writes(case, tmp_path):
    pytest.importorskip("safetensors", reason="export needs safetensors: pip install -e '.[torch]'")
    from safetensors.numpy import load_file

    from a3jax.convert.hf_export import export_hf, hf_state_dict

    cfg, dtype, shard = EXPORTS[case]
    _, params = init_model(cfg, 1)  # jax arrays, as a training run holds them
    host = jax.tree.map(np.asarray, params)
    checkpointer = Checkpointer(tmp_path / "work", async_save=False)
    checkpointer.save(3, {"params": host, "opt_state": {}},
                      {"step": 3, "model": json.loads(json.dumps(cfg.to_dict())), "config": {}}, force=True)
    checkpointer.close()
    export_hf(tmp_path / "work", tmp_path / "hf", dtype=dtype, max_shard_size=shard, log=lambda m: None)
    files = sorted((tmp_path / "hf").glob("*.safetensors"))
    assert (len(files) > 1) == (shard == "20KB")
    written = {}
    for path in files:
        written.update(load_file(str(path)))

    state = hf_state_dict(params, cfg, dtype)
    assert sorted(state) == sorted(written)
    for name, array in state.items():
        assert array.dtype == written[name].dtype and array.shape == written[name].shape, name
        assert array.tobytes() == written[name].tobytes(), name
    # HF names and layout: Linear weights [out, in], query vector only for a3
    assert ("model.query_embed" in state) == (cfg.variant == "a3")
    assert ("lm_head.weight" in state) == (not cfg.tie_embeddings)
    q = state[f"model.layers.{cfg.n_layers - 1}.self_attn.q_proj.weight"]
    expected = host["layers"]["wq"][cfg.n_layers - 1].T
    np.testing.assert_array_equal(q.astype(np.float32), expected.astype(q.dtype).astype(np.float32))
    assert q.flags["C_CONTIGUOUS"]


def test_hf_state_dict_refuses_params_of_another_config():
    from a3jax.convert import ConversionError
    from a3jax.convert.hf_export import hf_state_dict

    cfg, _, _ = EXPORTS["a3_untied_sharded_f32"]
    _, params = init_model(cfg, 0)
    with pytest.raises(ConversionError, match=r"layers/attn_norm \(2, 32\) \(config: \(3, 32\)\)"):
        hf_state_dict(params, ModelConfig.from_mapping({**cfg.to_dict(), "n_layers": 3}))
    with pytest.raises(ConversionError, match="query_embed"):
        hf_state_dict(params, ModelConfig.from_mapping({**cfg.to_dict(), "variant": "causal"}))
    with pytest.raises(ConversionError, match="float16"):
        hf_state_dict(params, cfg, "float16")


def test_exported_weights_are_readable_like_the_rest_of_the_folder(tmp_path):
    """safetensors writes 0600 files; the export gives them the mode of its other files (here, under
    umask 022, 0644), so the other users of a shared cluster can load the model."""
    import os

    from a3jax.convert.hf_export import export_hf

    cfg, _, _ = EXPORTS["causal_tied_single_bf16"]
    _, params = init_model(cfg, 1)
    checkpointer = Checkpointer(tmp_path / "work", async_save=False)
    checkpointer.save(1, {"params": jax.tree.map(np.asarray, params), "opt_state": {}},
                      {"step": 1, "model": json.loads(json.dumps(cfg.to_dict())), "config": {}}, force=True)
    checkpointer.close()
    old = os.umask(0o022)
    try:
        export_hf(tmp_path / "work", tmp_path / "hf", log=lambda m: None)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o644, modes
