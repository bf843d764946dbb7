"""Weights in and out: HF LLaMA -> a3jax matches transformers, a3jax -> HF -> a3jax is bitwise, the
PyTorch reference reproduces a3jax's query stream, and bad input fails cleanly (tiny random models,
CPU, float32)."""

import argparse
import json
import pathlib
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the torch extra: pip install -e '.[torch]'")
transformers = pytest.importorskip("transformers", reason="needs the torch extra: pip install -e '.[torch]'")
pytest.importorskip("safetensors", reason="needs the torch extra: pip install -e '.[torch]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from a3jax import orders  # noqa: E402
from a3jax.checkpoint import Checkpointer, load_params  # noqa: E402
from a3jax.configs import load_config  # noqa: E402
from a3jax.convert import ConversionError, convert_hf, export_hf  # noqa: E402
from a3jax.convert.cli import add_convert_arguments, add_export_arguments, convert_main, export_main  # noqa: E402
from a3jax.layout import build_layout, stack_layouts  # noqa: E402
from a3jax.model import ModelConfig, rope  # noqa: E402
from a3jax.model.params import abstract_params, init_model  # noqa: E402

from conftest import micro_config  # noqa: E402

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
CASES = {
    # GQA, untied, llama3 rope scaling (every frequency band engaged at these positions), sharded
    "gqa_untied_llama3_sharded": dict(heads=4, kv=2, tie=False, scaling=LLAMA3, theta=500000.0, shard="20KB"),
    # tied embeddings, MHA, plain RoPE, one file
    "mha_tied_single": dict(heads=4, kv=4, tie=True, scaling=None, theta=10000.0, shard=None),
}
VOCAB, HIDDEN, LAYERS, FFN, N = 61, 32, 2, 48, 24


def make_hf(path, *, heads, kv, tie, scaling, theta, shard, dtype=torch.float32, seed=0, vocab=VOCAB,
            hidden=HIDDEN, layers=LAYERS, ffn=FFN):
    """A random HF LlamaForCausalLM saved with save_pretrained (weights std 0.2, norms != 1)."""
    kwargs = {"rope_scaling": dict(scaling)} if scaling else {}
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=128,
        tie_word_embeddings=tie, rms_norm_eps=1e-5, initializer_range=0.2, rope_theta=theta, **kwargs)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    model = model.to(dtype)
    model.save_pretrained(path, max_shard_size=shard or "1GB")
    return model


def ar_batch(tokens):
    """Singleton groups left to right (BOS slot in group 0): the content stream is a causal LLaMA."""
    b, n = tokens.shape
    ar = np.broadcast_to(np.arange(n, dtype=np.int32), (b, n))
    return {"tokens": jnp.asarray(tokens, jnp.int32), "positions": jnp.asarray(ar), "groups": jnp.asarray(ar),
            "segment_ids": jnp.ones((b, n), jnp.int32), "loss_mask": jnp.asarray(ar > 0, jnp.int32)}


def load_converted(workdir):
    _, cfg, meta, params = load_params(pathlib.Path(workdir), None)
    model_def, _ = abstract_params(cfg)
    return cfg, model_def, jax.tree.map(jnp.asarray, params), params


def hf_outputs(model, tokens):
    with torch.no_grad():
        out = model(torch.as_tensor(tokens, dtype=torch.long), output_hidden_states=True)
    # transformers returns the FINAL-NORMED last hidden state as hidden_states[-1]
    # (== last_hidden_state), which is what a3jax's hidden_states() returns too.
    return out.logits.float().numpy(), out.hidden_states[-1].float().numpy()


def convert(hf_dir, out, variant, **overrides):
    config = load_config(pathlib.Path(__file__).parent.parent / "experiments" / "adapt_tiny.py",
                         ["model.dtype=float32"] + [f"{k}={v}" for k, v in overrides.items()])
    return convert_hf(hf_dir, out, variant=variant, config=config, log=lambda m: None)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: (root / name, make_hf(root / name, **case)) for name, case in CASES.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_models_match_transformers(case, hf_models, tmp_path):
    hf_dir, hf_model = hf_models[case]
    if CASES[case]["shard"]:
        assert (hf_dir / "model.safetensors.index.json").is_file()
    tokens = np.random.default_rng(1).integers(0, VOCAB, size=(2, N))
    hf_logits, hf_hidden = hf_outputs(hf_model, tokens)
    batch = ar_batch(tokens)

    cfg, model_def, params, _ = load_converted(convert(hf_dir, tmp_path / "causal", "causal"))
    assert cfg.variant == "causal" and cfg.tie_embeddings == CASES[case]["tie"]
    assert cfg.n_kv_heads == CASES[case]["kv"]
    assert cfg.rope_scaling.kind == ("llama3" if CASES[case]["scaling"] else "none")
    logits = jax.jit(lambda p, b: model_def.bind(p)(b))(params, batch)
    np.testing.assert_allclose(np.asarray(logits), hf_logits, atol=1e-4, rtol=0)

    cfg, model_def, params, raw = load_converted(convert(hf_dir, tmp_path / "a3", "a3"))
    content = jax.jit(lambda p, b: model_def.bind(p).hidden_states(b, full_content=True)["content"])(params, batch)
    np.testing.assert_allclose(np.asarray(content), hf_hidden, atol=1e-4, rtol=0)
    # the query vector starts at embedding scale, not std 1
    embed_std = float(np.std(raw["embed"]))
    assert 0.5 * embed_std < float(np.std(raw["query_embed"])) < 2 * embed_std
    assert (tmp_path / "a3" / "hf_config.json").is_file()
    assert "partial" not in (tmp_path / "a3" / "experiment.py").read_text()
    assert not list(tmp_path.glob(".*partial*"))

    # converted with the shifted query stream, the a3 model predicts position i as transformers'
    # row i - 1 does, under 'ar': the HF model exactly, before any training
    cfg, model_def, params, _ = load_converted(convert(hf_dir, tmp_path / "a3shift", "a3",
                                                       **{"model.query_input": "shift"}))
    assert cfg.query_input == "shift"
    shifted = jax.jit(lambda p, b: model_def.bind(p)(b))(params, batch)
    np.testing.assert_allclose(np.asarray(shifted)[:, 1:], hf_logits[:, :-1], atol=1e-4, rtol=0)


def _interleave_rows(w_in_out, n_heads, head_dim):
    """Rotate-half columns -> Meta's interleaved layout (the inverse of HF's permute)."""
    d_in = w_in_out.shape[0]
    w = w_in_out.reshape(d_in, n_heads, 2, head_dim // 2)
    return jnp.swapaxes(w, 2, 3).reshape(d_in, n_heads * head_dim)


def test_rope_layout_is_rotate_half(hf_models, tmp_path):
    """HF q/k weights are in rotate-half layout and are copied unpermuted; a3jax's RoPE equals
    transformers' (llama3 scaling included); the interleaved layout would NOT match."""
    from transformers.models.llama import modeling_llama

    hf_dir, hf_model = hf_models["gqa_untied_llama3_sharded"]
    positions = torch.arange(40)[None]
    x = torch.randn(1, 4, 40, 8)
    cos, sin = hf_model.model.rotary_emb(x, positions)
    hf_q, _ = modeling_llama.apply_rotary_pos_emb(x, x, cos, sin)
    cfg = ModelConfig.from_mapping({"d_model": 32, "n_heads": 4, "rope_theta": 500000.0, "rope_scaling": {
        "kind": "llama3", "factor": 8.0, "original_max_position": 16}})
    inv = rope.inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    np.testing.assert_allclose(inv, hf_model.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
    tables = rope.rope_tables(jnp.asarray(positions.numpy()), inv)
    ours = rope.apply_rope(jnp.asarray(x.numpy().transpose(0, 2, 1, 3)), *tables)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 2, 1, 3), hf_q.numpy(), atol=1e-5)

    tokens = np.random.default_rng(2).integers(0, VOCAB, size=(1, N))
    hf_logits, _ = hf_outputs(hf_model, tokens)
    cfg, model_def, params, _ = load_converted(convert(hf_dir, tmp_path / "c", "causal"))
    layers = dict(params["layers"])
    layers["wq"] = jax.vmap(lambda w: _interleave_rows(w, cfg.n_heads, cfg.head_dim))(layers["wq"])
    layers["wk"] = jax.vmap(lambda w: _interleave_rows(w, cfg.n_kv_heads, cfg.head_dim))(layers["wk"])
    wrong = model_def.bind({**params, "layers": layers})(ar_batch(tokens))
    assert float(np.max(np.abs(np.asarray(wrong) - hf_logits))) > 1e-2


def test_bfloat16_checkpoint_converts_exactly(tmp_path):
    hf_model = make_hf(tmp_path / "hf", **{**CASES["mha_tied_single"], "kv": 2}, dtype=torch.bfloat16)
    _, _, _, raw = load_converted(convert(tmp_path / "hf", tmp_path / "out", "causal"))
    sd = hf_model.state_dict()
    np.testing.assert_array_equal(raw["embed"], sd["model.embed_tokens.weight"].float().numpy())
    wk = sd["model.layers.1.self_attn.k_proj.weight"].float().numpy().T
    np.testing.assert_array_equal(raw["layers"]["wk"][1], wk)
    np.testing.assert_array_equal(raw["layers"]["mlp_norm"][0],
                                  sd["model.layers.0.post_attention_layernorm.weight"].float().numpy())
    assert "lm_head" not in raw and "query_embed" not in raw


def _a3jax_workdir(path, cfg, seed=0):
    """A workdir holding a random a3jax model (norms perturbed) at step 7, as the train loop writes it."""
    _, params = init_model(cfg, seed)
    params = jax.tree.map(np.asarray, params)
    rng = np.random.default_rng(seed)
    for name in ("attn_norm", "mlp_norm"):
        params["layers"][name] = (1 + 0.2 * rng.standard_normal(params["layers"][name].shape)).astype(np.float32)
    checkpointer = Checkpointer(path, async_save=False)
    checkpointer.save(7, {"params": params, "opt_state": {}},
                      {"step": 7, "model": json.loads(json.dumps(cfg.to_dict())), "config": {}}, force=True)
    checkpointer.close()
    return params


def a3_config(query_input="vector"):
    return ModelConfig(variant="a3", vocab_size=VOCAB, d_model=HIDDEN, n_layers=LAYERS, n_heads=4, n_kv_heads=2,
                       ffn_dim=FFN, tie_embeddings=False, rope_theta=500000.0, dtype="float32", init_std=0.2,
                       rope_scaling=ModelConfig.from_mapping({"rope_scaling": {
                           "kind": "llama3", "original_max_position": 16}}).rope_scaling, query_input=query_input)


@pytest.fixture(scope="module", params=["vector", "shift"])
def exported_a3(tmp_path_factory, request):
    """a3jax (a3, untied, GQA, llama3; each query input) -> export through the CLI entry point
    (sharded f32). Returns (root, params, config)."""
    root = tmp_path_factory.mktemp(f"a3export-{request.param}")
    cfg = a3_config(request.param)
    params = _a3jax_workdir(root / "work", cfg)
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    export_main(parser.parse_args(["--workdir", str(root / "work"), "--out", str(root / "hf"),
                                   "--max-shard-size", "30KB"]))
    return root, params, cfg


def test_round_trip_is_bitwise(exported_a3, tmp_path):
    root, params, a3_cfg = exported_a3
    assert (root / "hf" / "model.safetensors.index.json").is_file()
    assert json.loads((root / "hf" / "config.json").read_text())["a3"]["query_input"] == a3_cfg.query_input
    parser = argparse.ArgumentParser()
    add_convert_arguments(parser)
    args = parser.parse_args(["--from-hf", str(root / "hf"), "--out", str(tmp_path / "back"), "--variant", "a3"])
    # the base config says query_input=vector: the export's trained query vector keeps its own input
    assert convert_main(args, ["--config.model.dtype=float32", "--config.model.init_std=0.2"]) == 0
    cfg, _, _, back = load_converted(tmp_path / "back")
    assert cfg == a3_cfg
    flat, back_flat = jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves_with_path(back)
    assert [k for k, _ in flat] == [k for k, _ in back_flat]
    for (key, a), (_, b) in zip(flat, back_flat):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b), key

    # tied causal model, one file, bf16 export halves the bytes and stays loadable
    cfg = ModelConfig(variant="causal", vocab_size=VOCAB, d_model=HIDDEN, n_layers=1, n_heads=2, n_kv_heads=1,
                      ffn_dim=FFN, dtype="float32")
    params = _a3jax_workdir(tmp_path / "work2", cfg)
    export_hf(tmp_path / "work2", tmp_path / "hf2", log=lambda m: None)
    assert (tmp_path / "hf2" / "model.safetensors").is_file()
    _, _, _, back = load_converted(convert(tmp_path / "hf2", tmp_path / "back2", "causal"))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)))
    export_hf(tmp_path / "work2", tmp_path / "hf2_bf16", dtype="bfloat16", log=lambda m: None)
    assert json.loads((tmp_path / "hf2_bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_transformers_loads_export(exported_a3):
    root, params, a3_cfg = exported_a3
    model, info = transformers.LlamaForCausalLM.from_pretrained(root / "hf", output_loading_info=True)
    assert info["missing_keys"] in ([], set()) and "model.query_embed" in info["unexpected_keys"]
    tokens = np.random.default_rng(3).integers(0, VOCAB, size=(2, N))
    hf_logits, _ = hf_outputs(model.float().eval(), tokens)
    model_def, _ = abstract_params(a3_cfg)
    jparams = jax.tree.map(jnp.asarray, params)
    batch = ar_batch(tokens)

    def causal_logits(p, b):  # the exported model's `causal` computation: content stream + head
        m = model_def.bind(p)
        return m.logits(m.hidden_states(b, full_content=True)["content"])

    np.testing.assert_allclose(np.asarray(jax.jit(causal_logits)(jparams, batch)), hf_logits, atol=1e-4, rtol=0)


def _packed_batch(seed):
    """Rows packing 1-3 documents with random group sizes and random group order, then padding."""
    rng = np.random.default_rng(seed)
    samplers = [orders.parse_sampler(s) for s in ("random(3)", "random_sizes(1,5)", "ar", "blocks(2)")]
    rows = []
    for r in range(3):
        docs, groups, used = [], [], 0
        for d in range(1 + r):
            length = int(rng.integers(3, 9))
            docs.append(rng.integers(0, VOCAB - 2, size=length))
            groups.append(samplers[(r + d) % len(samplers)](length, rng))
            used += length + 1
        rows.append(build_layout(docs, groups, 32, bos_id=VOCAB - 1, pad_id=VOCAB - 2))
    return stack_layouts(rows)


def test_torch_reference_matches_a3jax_query_stream(exported_a3):
    from a3jax.convert.torch_ref import A3Reference

    root, params, a3_cfg = exported_a3
    reference = A3Reference.from_pretrained(root / "hf")
    assert reference.shifted == (a3_cfg.query_input == "shift")
    model_def, _ = abstract_params(a3_cfg)
    jparams = jax.tree.map(jnp.asarray, params)
    run = jax.jit(lambda p, b: model_def.bind(p)(b))
    for seed in range(2):
        batch = _packed_batch(seed)
        ours = np.asarray(run(jparams, {k: jnp.asarray(v) for k, v in batch.items()}))
        theirs = reference(batch["tokens"], batch["positions"], batch["groups"], batch["segment_ids"]).numpy()
        np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
        real = batch["segment_ids"] > 0
        p = jax.nn.log_softmax(ours, -1)[real]
        q = jax.nn.log_softmax(theirs, -1)[real]
        kl = np.sum(np.exp(p) * (p - q), -1)
        assert float(kl.max()) < 1e-6


def test_bad_inputs_fail_cleanly_and_write_nothing(hf_models, tmp_path):
    hf_dir, _ = hf_models["gqa_untied_llama3_sharded"]

    def broken(edit, source=hf_dir):
        target = tmp_path / f"hf_{len(list(tmp_path.iterdir()))}"
        shutil.copytree(source, target)
        edit(target)
        return target

    def set_config(**changes):
        def edit(d):
            config = json.loads((d / "config.json").read_text())
            config.update(changes)
            (d / "config.json").write_text(json.dumps(config))
        return edit

    shard = sorted(hf_dir.glob("model-*.safetensors"))[1]
    cases = [
        (set_config(model_type="gpt2"), "model_type='gpt2'"),
        (lambda d: (d / shard.name).unlink(), shard.name),
        (set_config(vocab_size=VOCAB + 3), "model.embed_tokens.weight"),
        (set_config(intermediate_size=FFN * 2), "mlp"),
        (set_config(num_hidden_layers=LAYERS + 1), "model.layers.2."),
        (set_config(tie_word_embeddings=False), "lm_head.weight", hf_models["mha_tied_single"][0]),
    ]
    for edit, expected, *base in cases:
        source = broken(edit, *base)
        out = tmp_path / f"out_{source.name}"
        with pytest.raises(ConversionError, match=expected.replace(".", r"\.").replace("(", r"\(")):
            convert(source, out, "a3")
        assert not out.exists() and not list(tmp_path.glob(".*partial*"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ConversionError, match="not empty"):
        convert(hf_dir, tmp_path / "taken", "a3")


@pytest.mark.slow
def test_train_resumes_from_converted_checkpoint(small_corpus, tmp_path, capfd):
    from a3jax.train.loop import train

    make_hf(tmp_path / "hf", heads=2, kv=1, tie=True, scaling=None, theta=10000.0, shard=None,
            vocab=259, hidden=32, layers=1, ffn=64)  # one layer: less to compile
    convert_hf(tmp_path / "hf", tmp_path / "work", variant="a3", config=micro_config(), log=lambda m: None)
    config = load_config(tmp_path / "work" / "experiment.py")
    assert config.model.variant == "a3" and config.model.d_model == 32
    config.orders.eval = ("ar",)  # one eval program to compile
    summary = train(config, tmp_path / "work", stop_after=2, corpus=small_corpus, progress=False)
    assert "resumed from" in capfd.readouterr().err
    assert summary["step"] == 2 and np.isfinite(summary["loss"])


LLAMA_3_2_1B = {  # the published config.json (transformers 4.x keys)
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 128000,
    "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "vocab_size": 128256,
}
LLAMA_3_1_8B = {**LLAMA_3_2_1B, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "tie_word_embeddings": False, "rope_scaling": {**LLAMA_3_2_1B["rope_scaling"], "factor": 8.0}}
del LLAMA_3_1_8B["head_dim"]  # 8B's config.json has none: hidden_size / heads


@pytest.mark.parametrize("name,hf", [("adapt_llama3_1b", LLAMA_3_2_1B), ("adapt_llama3_8b", LLAMA_3_1_8B)])
def test_published_llama3_configs_give_the_experiment_shapes(name, hf):
    from a3jax.convert import model_config_from_hf
    from a3jax.convert.hf_export import hf_config_dict

    config = load_config(pathlib.Path(__file__).parent.parent / "experiments" / f"{name}.py")
    expected = ModelConfig.from_mapping(config.model.to_dict())
    assert model_config_from_hf(hf, "a3", config.model.to_dict()) == expected
    assert model_config_from_hf(hf_config_dict(expected, "bfloat16", hf), "a3", config.model.to_dict()) == expected
    assert config.orders.curriculum.startswith("ar until") and config.train.lr == 2e-5
