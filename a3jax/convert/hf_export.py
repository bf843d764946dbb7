"""a3jax workdir -> an HF LLaMA folder: safetensors (HF key names) + config.json + tokenizer.

The key map is hf_import's, inverted (see its docstring): per-layer slices of the stacked [L, ...]
arrays are written as model.layers.<i>.* and Linear weights transposed back to HF's [out, in].
The a3 model's query vector is written as `model.query_embed` [D] (the official A3 code's name);
transformers' LlamaForCausalLM reports it as an unexpected key and ignores it, so the folder loads
as the causal LLaMA that the content stream is. config.json carries an extra "a3" entry
({"variant", "query_embed", "step"}) that transformers keeps as an attribute and ignores.

`hf_state_dict(params, cfg)` gives the same tensors of in-memory params (no checkpoint needed);
`export_hf` writes a workdir's checkpoint through it, shard by shard (each shard's tensors are
materialised only while it is written) into a temporary sibling folder that is renamed to --out
when complete.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import sys
from collections.abc import Callable

import numpy as np

from a3jax.checkpoint import load_params
from a3jax.configs.sections import DataConfig, parse_section
from a3jax.convert.hf_import import (
    LAYER_KEYS,
    QUERY_KEY,
    TOKENIZER_FILES,
    TOP_KEYS,
    ConversionError,
    finish_out,
    prepare_out,
)
from a3jax.data import load_tokenizer
from a3jax.model.config import ModelConfig

EXPORT_DTYPES = ("float32", "bfloat16")


def _log(message: str) -> None:
    print(f"[a3jax] {message}", file=sys.stderr, flush=True)


def parse_size(text: str | int) -> int:
    """Bytes from 5GB / 500MB / 2GiB / 20KB / a plain integer (HF's decimal units)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", str(text).upper())
    if not match:
        raise ConversionError(f"--max-shard-size {text!r} is not a size like 5GB, 500MB or 1000000")
    number, unit = float(match.group(1)), match.group(2) or "B"
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(number * scale)


def hf_config_dict(cfg: ModelConfig, dtype: str, extra: dict | None = None) -> dict:
    """An HF LlamaConfig dict for `cfg` (transformers 4.x keys, which 5.x reads too).

    `extra`: an original config.json (kept for keys a3jax does not model, e.g. token ids and
    max_position_embeddings); architecture keys are always taken from `cfg`.
    """
    hf = {k: v for k, v in (extra or {}).items()
          if k not in ("rope_parameters", "rope_scaling", "rope_theta", "transformers_version", "dtype",
                       "torch_dtype", "a3", "quantization_config")}
    scaling = None
    if cfg.rope_scaling.kind == "llama3":
        scaling = {"rope_type": "llama3", "factor": cfg.rope_scaling.factor,
                   "low_freq_factor": cfg.rope_scaling.low_freq_factor,
                   "high_freq_factor": cfg.rope_scaling.high_freq_factor,
                   "original_max_position_embeddings": cfg.rope_scaling.original_max_position}
    hf.update({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": dtype,
    })
    hf.setdefault("max_position_embeddings",
                  131072 if scaling else max(2048, cfg.rope_scaling.original_max_position))
    hf.setdefault("initializer_range", cfg.init_std)
    return hf


def _tensor_plan(cfg: ModelConfig, params: dict) -> list[tuple[str, Callable[[], np.ndarray], tuple, int]]:
    """(HF name, producer of the HF-layout numpy array, HF shape, element count) in HF's usual order."""
    plan = []

    def add(name, getter, shape):
        plan.append((name, getter, tuple(shape), int(np.prod(shape))))

    def top(key):
        hf_name, transposed = TOP_KEYS[key]
        array = np.asarray(params[key])
        add(hf_name, (lambda a=array, t=transposed: a.T if t else a), array.shape[::-1] if transposed else array.shape)

    top("embed")
    for i in range(cfg.n_layers):
        for key, (suffix, transposed) in LAYER_KEYS.items():
            array = np.asarray(params["layers"][key])
            shape = array.shape[1:][::-1] if transposed else array.shape[1:]
            add(f"model.layers.{i}.{suffix}", (lambda a=array, i=i, t=transposed: a[i].T if t else a[i]), shape)
    top("final_norm")
    if "lm_head" in params:
        top("lm_head")
    if "query_embed" in params:
        top("query_embed")
    return plan


def _check_dtype(dtype: str, flag: str = "--dtype") -> None:
    if dtype not in EXPORT_DTYPES:
        raise ConversionError(f"{flag} {dtype!r} is not one of {EXPORT_DTYPES}")


def _check_exportable(cfg: ModelConfig, subject: str) -> None:
    """An HF LLaMA folder loads as a causal model: right for a3 (its content stream) and causal.
    subject: what is exported, with its verb ("WORKDIR holds", "model_config describes")."""
    if not cfg.facts.exportable:
        raise ConversionError(f"{subject} a model.variant={cfg.variant!r} model ({cfg.facts.what}): it is "
                              "bidirectional, so an HF LLaMA export would load as a (wrong) causal model; "
                              "export a3 or causal models")


def _check_params(params: dict, cfg: ModelConfig) -> None:
    """params must have exactly the names and shapes of a3jax's model for `cfg`."""
    import jax

    from a3jax.model.params import abstract_params

    def shapes(tree) -> dict[str, tuple]:  # {"layers/wq": shape}
        return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf))
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

    want, got = shapes(abstract_params(cfg)[1]), shapes(params)
    if want.keys() != got.keys():
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        parts = ([f"lack {missing}"] if missing else []) + ([f"have extra {extra}"] if extra else [])
        raise ConversionError(f"params {' and '.join(parts)} for a model.variant={cfg.variant!r} model "
                              f"(tie_embeddings={cfg.tie_embeddings}); pass the ModelConfig the params were made with")
    wrong = [f"{k} {got[k]} (config: {want[k]})" for k in want if got[k] != want[k]]
    if wrong:
        raise ConversionError(f"params do not match the model config: {', '.join(wrong[:3])}"
                              f"{' ...' if len(wrong) > 3 else ''}; pass the ModelConfig the params were made with")


def hf_state_dict(params: dict, model_config: ModelConfig, dtype: str = "float32", *,
                  names=None) -> dict[str, np.ndarray]:
    """HF-named tensors of in-memory a3jax params: exactly what `export_hf` writes.

    params: the model's params pytree (jax or numpy arrays, float32, as `init_model` or a
    checkpoint gives them); model_config: the ModelConfig they were made with (checked).
    Returns {HF LLaMA name (+ `model.query_embed` for the a3 variant): contiguous numpy array in
    HF's layout ([out, in] Linear weights) and `dtype` (float32 or bfloat16)}, in HF's usual order.
    names: only these tensors (export_hf's shards), so a large model is never whole in memory twice.
    """
    _check_dtype(dtype, "dtype")
    _check_exportable(model_config, "model_config describes")
    _check_params(params, model_config)
    np_dtype = _numpy_dtype(dtype)
    plan = _tensor_plan(model_config, params)
    wanted = {name for name, _, _, _ in plan} if names is None else set(names)
    unknown = wanted - {name for name, _, _, _ in plan}
    if unknown:
        raise ConversionError(f"names {sorted(unknown)[:5]} are not tensors of this model; pick from "
                              "hf_state_dict(params, model_config).keys()")
    return {name: np.ascontiguousarray(getter(), dtype=np_dtype) for name, getter, _, _ in plan if name in wanted}


def _numpy_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.float32


def _tokenizer_sources(workdir: pathlib.Path, meta: dict) -> list[pathlib.Path]:
    found = [workdir / n for n in TOKENIZER_FILES if (workdir / n).is_file()]
    if found:
        return found
    tokenizer = str(meta.get("config", {}).get("data", {}).get("tokenizer", "") or "")
    path = pathlib.Path(tokenizer)
    if tokenizer and tokenizer != "bytes" and path.is_file():
        return [path] + [path.parent / n for n in TOKENIZER_FILES
                         if n != path.name and (path.parent / n).is_file()]
    return []


def _write_tokenizer_config(folder: pathlib.Path, hf: dict) -> bool:
    """tokenizer_config.json naming the special tokens of config.json's ids, for a tokenizer.json
    that came without one (a BPE a3jax trained): transformers then knows the model's BOS, EOS and
    PAD (lm-evaluation-harness's hf model prefixes BOS by name)."""
    from tokenizers import Tokenizer

    names = {}
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for key in ("bos", "eos", "pad"):
        token_id = hf.get(f"{key}_token_id")
        token = tokenizer.id_to_token(int(token_id)) if token_id is not None else None
        if token is not None:
            names[f"{key}_token"] = token
    if not names:
        return False
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", **names}, indent=2) + "\n")
    return True


def _token_ids(meta: dict) -> dict:
    """bos/eos/pad ids of the training tokenizer, if it can be loaded here."""
    try:
        tokenizer = load_tokenizer(parse_section(DataConfig, meta["config"]["data"], "data"))
        return {"bos_token_id": int(tokenizer.bos_id), "eos_token_id": int(tokenizer.eos_id),
                "pad_token_id": int(tokenizer.pad_id)}
    except Exception:  # noqa: BLE001 - ids are a convenience, not needed for the weights
        return {}


def _shard_names(plan, itemsize: int, limit: int) -> list[list[str]]:
    """The tensor names of each shard, in order: a new shard starts where `limit` bytes would be passed."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, _, _, count in plan:
        nbytes = count * itemsize
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def export_hf(workdir: str | pathlib.Path, out: str | pathlib.Path, *, step: int | None = None,
              dtype: str = "float32", max_shard_size: str | int = "5GB",
              log: Callable[[str], None] = _log) -> pathlib.Path:
    """Writes the checkpoint at `step` (latest if None) of `workdir` as an HF LLaMA folder `out`."""
    try:
        from safetensors.numpy import save_file
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConversionError("export needs the `safetensors` package: pip install -e '.[torch]'") from None
    _check_dtype(dtype)
    limit = parse_size(max_shard_size)
    workdir, out = pathlib.Path(workdir), pathlib.Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"--out {out} already exists and is not empty; choose a new folder")
    step, cfg, meta, params = load_params(workdir, step)
    _check_exportable(cfg, f"{workdir} holds")
    shards = _shard_names(_tensor_plan(cfg, params), np.dtype(_numpy_dtype(dtype)).itemsize, limit)

    tmp = prepare_out(out)
    try:
        weight_map, total = {}, 0
        for index, shard in enumerate(shards):
            name = ("model.safetensors" if len(shards) == 1
                    else f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors")
            tensors = hf_state_dict(params, cfg, dtype, names=shard)
            save_file(tensors, str(tmp / name), metadata={"format": "pt"})
            for hf_name, array in tensors.items():
                weight_map[hf_name] = name
                total += array.nbytes
            del tensors
        if len(shards) > 1:
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        original = {}
        if (workdir / "hf_config.json").is_file():
            original = json.loads((workdir / "hf_config.json").read_text())
        hf = hf_config_dict(cfg, dtype, original)
        for key, value in _token_ids(meta).items():
            hf.setdefault(key, value)
        hf["a3"] = {"variant": cfg.variant, "query_embed": QUERY_KEY if "query_embed" in params else None,
                    "query_input": cfg.query_input, "step": int(step), "exported_by": "a3jax"}
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        # safetensors writes its files readable by their owner only (0600); give them the mode of
        # every other file here (the umask's), so a shared cluster's other users can load them.
        mode = (tmp / "config.json").stat().st_mode & 0o777
        for written in tmp.glob("*.safetensors"):
            written.chmod(mode)
        copied = []
        for source in _tokenizer_sources(workdir, meta):
            shutil.copy2(source, tmp / source.name)
            copied.append(source.name)
        if "tokenizer.json" in copied and "tokenizer_config.json" not in copied:
            if _write_tokenizer_config(tmp, hf):
                copied.append("tokenizer_config.json (written)")
        finish_out(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {workdir} step {step} ({cfg.variant}, {dtype}, {len(shards)} shard(s)"
        f"{', tokenizer ' + ', '.join(copied) if copied else ', no tokenizer files found'}) -> {out}")
    return out
