"""`a3jax convert --from-gguf`: a LLaMA GGUF file -> a3jax, checked against transformers' own GGUF
loader (its own dequantiser and row order), on a tiny random model written here as llama.cpp lays
it out, and (tier `real_model`) on SmolLM2-135M-Instruct; bad files fail in one line and leave
nothing behind."""

import json
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the torch extra: pip install -e '.[torch]'")
transformers = pytest.importorskip("transformers", reason="needs the torch extra: pip install -e '.[torch]'")
gguf = pytest.importorskip("gguf", reason="needs the gguf extra: pip install -e '.[gguf]'")
pytest.importorskip("accelerate", reason="transformers reads GGUF files with accelerate: the torch extra")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

from a3jax import cli  # noqa: E402
from a3jax.checkpoint import load_params  # noqa: E402
from a3jax.convert import ConversionError  # noqa: E402
from a3jax.convert.gguf_import import convert_gguf, unpermute  # noqa: E402
from a3jax.convert.pretrained import MODELS, cached_path, fetch_hint  # noqa: E402
from a3jax.data import load_tokenizer  # noqa: E402
from a3jax.model.params import abstract_params  # noqa: E402

from conftest import micro_config  # noqa: E402

HIDDEN, LAYERS, HEADS, KV, FFN = 64, 2, 4, 2, 96
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n"]
TOKENS = SPECIALS + list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe", "Ġa", "in"]
TEXT = "the cat in the hat sat in a vat, then the rat ran in.\n" * 2


def llama_cpp_permute(weight, n_heads):
    """llama.cpp's convert_hf_to_gguf.py `permute` (HF rotate-half rows -> interleaved pairs)."""
    return weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_gguf(path, *, arch="llama", tokens=TOKENS, quant=gguf.GGMLQuantizationType.Q8_0, tie=True, seed=0,
               layers=LAYERS):
    """A random LLaMA as llama.cpp writes one: q/k rows permuted, the matrices quantised to `quant`."""
    rng = np.random.default_rng(seed)
    vocab, head_dim = len(TOKENS), HIDDEN // HEADS
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)

    def matrix(name, rows, cols, n_heads=None):
        value = (0.2 * rng.standard_normal((rows, cols))).astype(np.float32)
        if n_heads:
            value = llama_cpp_permute(value, n_heads)
        if quant == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, value)
        elif quant in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0):
            w.add_tensor(name, gguf.quantize(value, quant), raw_dtype=quant)
        else:  # bytes of a type gguf cannot dequantise
            size, type_size = gguf.GGML_QUANT_SIZES[quant]
            raw = np.zeros((rows, cols // size * type_size), np.uint8)
            w.add_tensor(name, raw, raw_dtype=quant)

    def vector(name, n):
        w.add_tensor(name, (1 + 0.2 * rng.standard_normal(n)).astype(np.float32))

    matrix("token_embd.weight", vocab, HIDDEN)
    for i in range(layers):
        vector(f"blk.{i}.attn_norm.weight", HIDDEN)
        matrix(f"blk.{i}.attn_q.weight", HEADS * head_dim, HIDDEN, HEADS)
        matrix(f"blk.{i}.attn_k.weight", KV * head_dim, HIDDEN, KV)
        matrix(f"blk.{i}.attn_v.weight", KV * head_dim, HIDDEN)
        matrix(f"blk.{i}.attn_output.weight", HIDDEN, HEADS * head_dim)
        vector(f"blk.{i}.ffn_norm.weight", HIDDEN)
        matrix(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        matrix(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        matrix(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    vector("output_norm.weight", HIDDEN)
    if not tie:
        matrix("output.weight", vocab, HIDDEN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return pathlib.Path(path)


def ar_logits(workdir, tokens):
    """a3jax's logits of each next token under `ar` ([N - 1, V]: row i scores token i + 1)."""
    _, cfg, _, params = load_params(pathlib.Path(workdir), None)
    model_def, _ = abstract_params(cfg)
    n = len(tokens)
    ar = np.arange(n, dtype=np.int32)[None]
    batch = {"tokens": jnp.asarray(np.asarray(tokens)[None], jnp.int32), "positions": jnp.asarray(ar),
             "groups": jnp.asarray(ar), "segment_ids": jnp.ones((1, n), jnp.int32),
             "loss_mask": jnp.asarray(ar > 0, jnp.int32)}
    logits = np.asarray(jax.jit(lambda p, b: model_def.bind(p)(b))(jax.tree.map(jnp.asarray, params), batch))[0]
    return logits[:-1] if cfg.facts.next_token else logits[1:]  # a3: query row i + 1 predicts token i + 1


def nll(logits, tokens):
    log_p = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return -float(np.mean(np.take_along_axis(log_p, np.asarray(tokens)[1:, None], 1)))


def transformers_reference(path):
    path = pathlib.Path(path)
    model = transformers.LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tokenizer


def reference_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens)[None], dtype=torch.long)).logits[0, :-1].float().numpy()


def convert(path, out, variant="a3", *extra):
    config = micro_config("model.dtype=float32", "model.query_input=shift", *extra)
    return convert_gguf(path, out, variant=variant, config=config, log=lambda m: None)


def test_unpermute_inverts_llama_cpp_permute():
    weight = np.arange(6 * 16 * 5, dtype=np.float32).reshape(6 * 16, 5)
    np.testing.assert_array_equal(unpermute(llama_cpp_permute(weight, 6), 6), weight)
    assert not np.array_equal(llama_cpp_permute(weight, 6), weight)


@pytest.mark.parametrize("tie", [True, False])
def test_a_converted_gguf_computes_what_transformers_computes_from_the_same_file(tmp_path, tie):
    """Quantised Q8_0 matrices, permuted q/k rows: a3jax under `ar` (causal and shifted a3) equals
    transformers' LlamaForCausalLM loaded from the same GGUF, and both tokenizers give the same ids."""
    path = write_gguf(tmp_path / "tiny.gguf", tie=tie)
    model, hf_tokenizer = transformers_reference(path)
    out = convert(path, tmp_path / "a3")
    ours = load_tokenizer(str(out / "tokenizer.json"))
    ids = ours.encode(TEXT)
    assert list(ids) == hf_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 2)
    tokens = np.concatenate([[ours.bos_id], ids])
    reference = reference_logits(model, tokens)
    for workdir in (out, convert(path, tmp_path / "causal", "causal")):
        logits = ar_logits(workdir, tokens)
        np.testing.assert_allclose(logits, reference, atol=2e-5, rtol=0)
        assert abs(nll(logits, tokens) / nll(reference, tokens) - 1) < 1e-5
    hf_config = json.loads((out / "hf_config.json").read_text())
    assert hf_config["tie_word_embeddings"] is tie and hf_config["num_key_value_heads"] == KV


def test_the_cli_converts_a_gguf(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf")
    code = cli.main(["convert", "--from-gguf", str(path), "--out", str(tmp_path / "w"), "--config", "adapt_tiny",
                     "--config.model.query_input=shift"])
    assert code == 0 and (tmp_path / "w" / "experiment.py").is_file()
    assert "model.query_input" not in (tmp_path / "w" / "experiment.py").read_text()  # a resolved config
    assert "'query_input': 'shift'" in (tmp_path / "w" / "experiment.py").read_text()


def _refused(path, out, match):
    with pytest.raises(ConversionError, match=match) as raised:
        convert(path, out)
    assert "\n" not in str(raised.value)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.partial*"))


def test_bad_gguf_files_are_refused_in_one_line_and_leave_nothing(tmp_path):
    good = write_gguf(tmp_path / "good.gguf")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _refused(truncated, tmp_path / "out1", "not a readable GGUF file")
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n" * 100)
    _refused(text, tmp_path / "out2", "not a readable GGUF file")
    _refused(tmp_path / "absent.gguf", tmp_path / "out3", "no such file")
    _refused(write_gguf(tmp_path / "gpt2.gguf", arch="gpt2"), tmp_path / "out4", "holds a 'gpt2' model")
    _refused(write_gguf(tmp_path / "q81.gguf", quant=gguf.GGMLQuantizationType.Q8_1), tmp_path / "out5",
             "stored as Q8_1, which the installed gguf package cannot dequantise")
    _refused(write_gguf(tmp_path / "vocab.gguf", tokens=TOKENS[:-1]), tmp_path / "out6",
             f"tokenizer has {len(TOKENS) - 1} tokens but the model's embedding has {len(TOKENS)} rows")


# ---- the real model (tier `real_model`: needs the downloaded file) -------------------------------

SMOLLM2 = MODELS["smollm2"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    path = cached_path(SMOLLM2)
    if not path.is_file():
        pytest.skip(f"SmolLM2-135M-Instruct is not downloaded: {fetch_hint(SMOLLM2)}")
    root = tmp_path_factory.mktemp("smollm2")
    out = convert(path, root / "a3")
    model, hf_tokenizer = transformers_reference(path)
    return path, out, model, hf_tokenizer, root


def _held_out_text() -> str:
    import textwrap  # a stdlib file: present on every machine, never seen by this model's conversion

    return pathlib.Path(textwrap.__file__).read_text()[:2500]


@pytest.mark.real_model
def test_smollm2_converted_equals_transformers_on_held_out_text(smollm2):
    _, out, model, hf_tokenizer, _ = smollm2
    text = _held_out_text()
    ours = load_tokenizer(str(out / "tokenizer.json"))
    ids = ours.encode(text)
    assert list(ids) == hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = np.concatenate([[ours.bos_id], ids[:160]])
    reference, logits = reference_logits(model, tokens), ar_logits(out, tokens)
    # 30 float32 layers: logits of magnitude ~20 agree to float32 rounding
    np.testing.assert_allclose(logits, reference, atol=5e-4, rtol=0)
    assert abs(nll(logits, tokens) / nll(reference, tokens) - 1) < 1e-5


@pytest.mark.real_model
def test_smollm2_exported_loads_in_transformers_with_the_same_logits(smollm2):
    _, out, model, hf_tokenizer, root = smollm2
    assert cli.main(["export", "--workdir", str(out), "--out", str(root / "hf")]) == 0
    exported = transformers.LlamaForCausalLM.from_pretrained(str(root / "hf"), dtype=torch.float32).eval()
    tokens = np.concatenate([[1], hf_tokenizer(_held_out_text(), add_special_tokens=False)["input_ids"][:96]])
    np.testing.assert_allclose(reference_logits(exported, tokens), reference_logits(model, tokens), atol=1e-5, rtol=0)
    np.testing.assert_allclose(ar_logits(out, tokens), reference_logits(exported, tokens), atol=5e-4, rtol=0)
