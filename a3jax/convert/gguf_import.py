"""A LLaMA GGUF file (llama.cpp's format) -> an a3jax workdir, the same one `--from-hf` writes.

    a3jax convert --from-gguf SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2 \
        --config.model.query_input=shift

What reads what (`pip install 'a3jax[gguf]'`: the `gguf` package and transformers, no torch):
  tensors    the `gguf` package maps the file (GGUFReader) and dequantises each tensor to float32
             (gguf.dequantize: Q4_1, Q8_0, K-quants, F16, BF16, ...; a type it cannot dequantise is
             refused by name). These float32 values are "the model": what llama.cpp and transformers
             compute with. The checkpoint stores them as float32; nothing is re-quantised.
  names      gguf's tensor-name map for the llama architecture (HF name <-> GGUF name).
  q/k rows   llama.cpp's converter reorders the rows of q_proj and k_proj of every head from HF's
             rotate-half layout to interleaved pairs (its `permute`); `unpermute` puts them back,
             since a3jax rotates halves as HF does (tests/test_gguf.py checks the logits against
             transformers' own GGUF loader).
  config     the llama.* metadata -> an HF config.json mapping -> hf_import.model_config_from_hf.
  tokenizer  transformers' GGUF tokenizer conversion (convert_gguf_tokenizer) from the vocabulary,
             merges and special ids the file holds; saved as tokenizer.json, with the file's BOS /
             EOS / PAD named in tokenizer_config.json.

Refused with one line, before anything is written: a missing, truncated or non-GGUF file, an
architecture other than llama, a quantisation gguf cannot dequantise, a tokenizer whose vocabulary
is not the model's, Llama 3.1-style frequency scaling (rope_freqs; convert the HF safetensors).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator

import numpy as np

from a3jax.convert.hf_import import (
    ConversionError,
    SourceTensor,
    _log,
    base_model_of,
    check_out,
    fill_params,
    model_config_from_hf,
    write_workdir,
)
from a3jax.model.config import ModelConfig

ARCHITECTURE = "llama"
DEFAULT_CONFIG = "adapt_smollm2"  # the preset for a converted pretrained model on a CPU
# GGUF metadata key (after "llama.") -> HF config.json key
CONFIG_KEYS = {
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "rope.dimension_count": "head_dim",
    "context_length": "max_position_embeddings",
    "vocab_size": "vocab_size",
}
SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "pad_token": "padding_token_id",
                  "unk_token": "unknown_token_id"}


def _gguf():
    try:
        import gguf
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConversionError("reading GGUF files needs the `gguf` package: pip install -e '.[gguf]'") from None
    return gguf


def open_gguf(path: str | pathlib.Path):
    """gguf.GGUFReader of `path`, or one line saying why the file cannot be read."""
    gguf = _gguf()
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConversionError(f"--from-gguf {path}: no such file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as error:  # noqa: BLE001  (gguf raises ValueError, IndexError, struct errors...)
        raise ConversionError(f"{path} is not a readable GGUF file ({type(error).__name__}: {error}); "
                              "a truncated or interrupted download? Fetch it again") from None
    arch = field(reader, "general.architecture")
    if arch != ARCHITECTURE:
        raise ConversionError(f"{path} holds a {arch!r} model; a3jax converts LLaMA-architecture GGUF files "
                              f"('{ARCHITECTURE}') only")
    return reader


def field(reader, key: str, default=None):
    """The value of a metadata key (a number, a string or a list), or `default`."""
    entry = reader.fields.get(key)
    return default if entry is None else entry.contents()


def hf_config_of(reader, path: pathlib.Path) -> dict:
    """The HF LLaMA config.json mapping that the file's metadata describes."""
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu"}
    for key, hf_key in CONFIG_KEYS.items():
        value = field(reader, f"{ARCHITECTURE}.{key}")
        if isinstance(value, float):  # stored as float32: 1e-05 reads back as 9.999999747378752e-06
            value = float(f"{value:.7g}")
        if value is not None:
            config[hf_key] = value
    names = {t.name for t in reader.tensors}
    if "vocab_size" not in config and "token_embd.weight" in names:
        config["vocab_size"] = int(next(t for t in reader.tensors if t.name == "token_embd.weight").shape[-1])
    config["tie_word_embeddings"] = "output.weight" not in names
    if "rope_freqs.weight" in names or field(reader, f"{ARCHITECTURE}.rope.scaling.type") not in (None, "none"):
        raise ConversionError(f"{path} scales its RoPE frequencies (rope_freqs / rope.scaling: a Llama 3.1+ "
                              "model); convert its HF safetensors with --from-hf instead")
    for special, key in SPECIAL_TOKENS.items():
        value = field(reader, f"tokenizer.ggml.{key}")
        if value is not None and special != "unk_token":
            config[special + "_id"] = int(value)
    return config


def unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q_proj / k_proj weight [n_heads * head_dim, D] from llama.cpp's order back to HF's.

    llama.cpp's converter views the rows of each head as (2, head_dim / 2) (the two halves that
    HF's rotate_half pairs) and stores them transposed, (head_dim / 2, 2): interleaved pairs.
    Reading the stored rows as (head_dim / 2, 2) and transposing back restores the halves."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(reader, cfg: ModelConfig, path: pathlib.Path) -> tuple[list[str], Iterator[SourceTensor]]:
    """(HF names, tensors dequantised to float32 one at a time) of the file."""
    gguf = _gguf()
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.n_layers)
    from a3jax.convert.hf_import import param_specs

    to_hf = {}
    for hf_name in param_specs(cfg):
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is not None:
            to_hf[gguf_name] = hf_name
    stray = sorted(t.name for t in reader.tensors if t.name not in to_hf)
    if stray:
        raise ConversionError(f"{path}: tensors {stray[:5]}{' ...' if len(stray) > 5 else ''} have no place in a "
                              f"LLaMA model of {cfg.n_layers} layers; is this a LLaMA GGUF?")
    heads = {".self_attn.q_proj.": cfg.n_heads, ".self_attn.k_proj.": cfg.n_kv_heads}

    def read(tensor, hf_name):
        try:
            weight = gguf.dequantize(tensor.data, tensor.tensor_type)
        except (NotImplementedError, gguf.QuantError, ValueError) as error:
            raise ConversionError(
                f"{path}: tensor {tensor.name} is stored as {tensor.tensor_type.name}, which the installed gguf "
                f"package cannot dequantise ({error}); use a GGUF quantised to a type it reads (Q4_0, Q4_1, "
                "Q8_0, K-quants, F16, F32) or the HF safetensors (--from-hf)") from None
        weight = np.asarray(weight, np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))
        for marker, n_heads in heads.items():
            if marker in hf_name:
                weight = unpermute(weight, n_heads)
        return weight

    def tensors():
        for tensor in reader.tensors:
            hf_name = to_hf[tensor.name]
            shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
            yield SourceTensor(hf_name, tensor.tensor_type.name, shape, lambda t=tensor, n=hf_name: read(t, n))

    return sorted(to_hf[t.name] for t in reader.tensors), tensors()


def write_tokenizer(reader, folder: pathlib.Path, vocab_size: int, path: pathlib.Path) -> list[str]:
    """tokenizer.json (transformers' conversion of the file's vocabulary) and tokenizer_config.json
    (its special tokens) in `folder`; refuses a vocabulary that is not the model's."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConversionError("a GGUF's tokenizer is converted by transformers (>= 5.24): "
                              "pip install -e '.[gguf]'") from None
    spec = {name: field(reader, f"tokenizer.{key}") for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
            if f"tokenizer.{key}" in reader.fields}
    tokens = spec.get("tokens") or []
    if len(tokens) != vocab_size:
        raise ConversionError(f"{path}: its tokenizer has {len(tokens):,} tokens but the model's embedding has "
                              f"{vocab_size:,} rows; the file's tokenizer does not match its model")
    try:
        tokenizer, _ = convert_gguf_tokenizer(ARCHITECTURE, spec)
    except Exception as error:  # noqa: BLE001  (transformers raises several kinds here)
        raise ConversionError(f"{path}: transformers cannot build its tokenizer "
                              f"({spec.get('tokenizer_type')!r}): {error}") from None
    tokenizer.save(str(folder / "tokenizer.json"))
    own = {special: tokens[int(field(reader, f"tokenizer.ggml.{key}"))] for special, key in SPECIAL_TOKENS.items()
           if field(reader, f"tokenizer.ggml.{key}") is not None}
    own["add_bos_token"] = bool(field(reader, "tokenizer.ggml.add_bos_token", False))
    template = field(reader, "tokenizer.chat_template")
    if template:
        own["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(own, indent=2) + "\n")
    return ["tokenizer.json", "tokenizer_config.json"]


def load_gguf_params(path: str | pathlib.Path, variant: str = "a3", *, seed: int = 0, base_model=None,
                     log: Callable[[str], None] = _log) -> tuple[ModelConfig, dict, dict, object, dict]:
    """(ModelConfig, float32 numpy params, info, reader, HF config mapping) of a LLaMA GGUF file."""
    path = pathlib.Path(path)
    reader = open_gguf(path)
    hf_config = hf_config_of(reader, path)
    cfg = model_config_from_hf(hf_config, variant, base_model)
    names, tensors = gguf_tensors(reader, cfg, path)
    params, info = fill_params(cfg, names, tensors, str(path), seed=seed, log=log)
    return cfg, params, info, reader, hf_config


def convert_gguf(path: str | pathlib.Path, out: str | pathlib.Path, *, variant: str = "a3", config=None,
                 seed: int = 0, log: Callable[[str], None] = _log) -> pathlib.Path:
    """Converts a LLaMA GGUF file into an a3jax workdir at `out` (as hf_import.convert_hf does for
    an HF folder; the HF config.json the file describes is kept as hf_config.json)."""
    path, out = pathlib.Path(path), pathlib.Path(out).absolute()
    check_out(out)  # fail before reading anything
    cfg, params, info, reader, hf_config = load_gguf_params(path, variant, seed=seed,
                                                           base_model=base_model_of(config), log=log)

    def write_source_files(tmp: pathlib.Path) -> list[str]:
        written = write_tokenizer(reader, tmp, cfg.vocab_size, path)
        (tmp / "hf_config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        return written

    return write_workdir(out, cfg, params, info, write_source_files, config=config, log=log,
                         source={"format": "gguf", "path": str(path.absolute()), "variant": variant,
                                 "gguf_name": field(reader, "general.name")})
