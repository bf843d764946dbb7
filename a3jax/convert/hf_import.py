"""HF LLaMA safetensors -> an a3jax workdir that `a3jax train --workdir` resumes from.

Key map (a3jax param -> HF tensor; the layer axis L of a3jax is stacked from model.layers.<i>):
  embed [V, D]                 model.embed_tokens.weight [V, D]
  layers.attn_norm [L, D]      model.layers.<i>.input_layernorm.weight [D]
  layers.wq|wk|wv [L, D, out]  model.layers.<i>.self_attn.{q,k,v}_proj.weight [out, D]   (transposed)
  layers.wo [L, Hq*Dh, D]      model.layers.<i>.self_attn.o_proj.weight [D, Hq*Dh]      (transposed)
  layers.mlp_norm [L, D]       model.layers.<i>.post_attention_layernorm.weight [D]
  layers.w_gate|w_up [L, D, F] model.layers.<i>.mlp.{gate,up}_proj.weight [F, D]        (transposed)
  layers.w_down [L, F, D]      model.layers.<i>.mlp.down_proj.weight [D, F]             (transposed)
  final_norm [D]               model.norm.weight [D]
  lm_head [D, V]               lm_head.weight [V, D] (untied models only)               (transposed)
  query_embed [D]              model.query_embed [D] (a3 only; the official A3 code's name)

RoPE layout. Meta's original LLaMA checkpoints rotate INTERLEAVED pairs (2j, 2j+1) of each head;
HF's conversion script (convert_llama_weights_to_hf.py) permutes the rows of q_proj and k_proj
so that transformers can rotate HALVES, pairs (j, j + Dh/2) (`rotate_half`). Every HF-format LLaMA
safetensors file is therefore already in rotate-half layout, which is exactly what
a3jax/model/rope.py applies, so q/k weights are copied WITHOUT any permutation. (A Meta-format
`consolidated.*.pth` would need the permutation; it is not accepted here.) tests/test_convert.py
checks this against transformers' logits and that the interleaved layout would NOT match.

Streaming. Each shard is opened once with safetensors' safe_open and read tensor by tensor; every
tensor is shape-checked from the header before its data is read and then copied into its slot of
a preallocated float32 array (per-layer tensors into the stacked [L, ...] arrays). Host memory
holds the float32 model once plus one tensor in flight. The optimizer state written beside it is
np.zeros (calloc: pages never touched by a write cost no memory) and compresses to almost nothing.

Checkpoint format (the choice): a regular a3jax train-state checkpoint at step 0, written with
a3jax.checkpoint.Checkpointer: state = {"params", "opt_state"} with a fresh optax state (all-zero
moments, count 0: exactly what tx.init gives) and meta {"step": 0, "model", "config", "source"}.
The train loop resumes from it unchanged (`a3jax train --workdir OUT --config OUT/experiment.py`)
and `Checkpointer.restore_params` reads just the params. A params-only state would not resume:
the loop restores params and opt_state together. OUT/experiment.py is the base experiment config
with the model section taken from config.json and the tokenizer pointed at the copied files, so
the loop's model-config check passes. The output is assembled in a sibling temporary folder and
renamed into place only once complete; a failed conversion leaves nothing at OUT.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import pprint
import re
import shutil
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from a3jax.errors import UserError
from a3jax.model.config import ModelConfig, RopeScaling
from a3jax.model.params import abstract_params, initial_query_vector
from a3jax.variants import variant_of

# a3jax layer param -> (HF name inside model.layers.<i>., stored transposed in HF)
LAYER_KEYS = {
    "attn_norm": ("input_layernorm.weight", False),
    "wq": ("self_attn.q_proj.weight", True),
    "wk": ("self_attn.k_proj.weight", True),
    "wv": ("self_attn.v_proj.weight", True),
    "wo": ("self_attn.o_proj.weight", True),
    "mlp_norm": ("post_attention_layernorm.weight", False),
    "w_gate": ("mlp.gate_proj.weight", True),
    "w_up": ("mlp.up_proj.weight", True),
    "w_down": ("mlp.down_proj.weight", True),
}
# a3jax top-level param -> (HF name, stored transposed in HF)
TOP_KEYS = {
    "embed": ("model.embed_tokens.weight", False),
    "final_norm": ("model.norm.weight", False),
    "lm_head": ("lm_head.weight", True),
    "query_embed": ("model.query_embed", False),
}
QUERY_KEY = TOP_KEYS["query_embed"][0]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
# Buffers some old checkpoints carry; recomputed from the config, never read.
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


class ConversionError(UserError):
    """Input that cannot be converted; the message names the file or tensor and the fix."""


def _log(message: str) -> None:
    print(f"[a3jax] {message}", file=sys.stderr, flush=True)


def _safetensors():
    try:
        import safetensors  # noqa: F401
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConversionError(
            "reading and writing HF checkpoints needs the `safetensors` package: "
            "pip install -e '.[torch]' (or pip install safetensors)"
        ) from None
    return safe_open


# --------------------------------------------------------------------------- config.json


def _rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, RopeScaling]:
    """(rope_theta, scaling) from either transformers 4.x keys (rope_theta, rope_scaling) or
    5.x's rope_parameters."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or None
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    source = scaling if scaling else params
    kind = source.get("rope_type", source.get("type", "default")) if source else "default"
    if kind in (None, "default"):
        return float(theta), RopeScaling()
    if kind != "llama3":
        raise ConversionError(
            f"config.json rope scaling type {kind!r} is not supported; a3jax implements "
            "'default' (none) and 'llama3' (see a3jax/model/rope.py)"
        )
    fields = {"factor": "factor", "low_freq_factor": "low_freq_factor",
              "high_freq_factor": "high_freq_factor", "original_max_position": "original_max_position_embeddings"}
    missing = [hf_name for hf_name in fields.values() if hf_name not in source]
    if missing:
        raise ConversionError(f"config.json llama3 rope scaling lacks {missing}")
    values = {ours: source[hf_name] for ours, hf_name in fields.items()}
    return float(theta), RopeScaling(
        kind="llama3", factor=float(values["factor"]), low_freq_factor=float(values["low_freq_factor"]),
        high_freq_factor=float(values["high_freq_factor"]),
        original_max_position=int(values["original_max_position"]),
    )


def model_config_from_hf(hf: Mapping[str, Any], variant: str = "a3",
                         base: Mapping[str, Any] | None = None) -> ModelConfig:
    """The ModelConfig of an HF LLaMA config.json. Architecture fields come from `hf`; the rest
    (dtype, attention backend, remat, init_std, query_input) from `base` (a model config mapping) if
    given, except that an a3jax export's query vector keeps the query input it was trained with."""
    model_type = hf.get("model_type")
    architectures = hf.get("architectures") or []
    if model_type != "llama" and not (model_type is None and "LlamaForCausalLM" in architectures):
        raise ConversionError(
            f"config.json has model_type={model_type!r} (architectures {architectures}); "
            "a3jax converts LLaMA checkpoints only (model_type 'llama')"
        )
    unsupported = [
        (hf.get("hidden_act", "silu") != "silu", f"hidden_act={hf.get('hidden_act')!r} (needs 'silu')"),
        (bool(hf.get("attention_bias", False)), "attention_bias=true (a3jax has no attention biases)"),
        (bool(hf.get("mlp_bias", False)), "mlp_bias=true (a3jax has no MLP biases)"),
    ]
    bad = [why for is_bad, why in unsupported if is_bad]
    if bad:
        raise ConversionError(f"config.json: unsupported LLaMA options: {'; '.join(bad)}")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in required if k not in hf]
    if missing:
        raise ConversionError(f"config.json lacks {missing}; is this a LLaMA config?")
    theta, scaling = _rope_from_hf(hf)
    n_heads = int(hf["num_attention_heads"])
    values = dict(base or {})
    values.pop("rope_scaling", None)
    values.update(
        variant=variant,
        vocab_size=int(hf["vocab_size"]),
        d_model=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // n_heads),
        ffn_dim=int(hf["intermediate_size"]),
        rope_theta=theta,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),  # LlamaConfig's default
    )
    values["rope_scaling"] = dataclasses.asdict(scaling)
    exported = hf.get("a3") or {}  # what `a3jax export` records next to the HF keys
    if not variant_of(variant).query_stream:
        values["query_input"] = "vector"
    elif exported.get("query_embed") and exported.get("query_input"):
        values["query_input"] = exported["query_input"]  # the query vector was trained with this input
    try:
        return ModelConfig.from_mapping(values)
    except (TypeError, ValueError) as error:
        raise ConversionError(f"config.json gives an invalid model: {error}") from None


# --------------------------------------------------------------------------- the key map


def param_specs(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], int | None, bool, tuple[int, ...]]]:
    """HF name -> (a3jax param path, layer index or None, transposed, HF shape) for every tensor an
    HF checkpoint of `cfg` must hold (lm_head only when untied; query_embed is optional)."""
    _, shapes = abstract_params(cfg)
    specs = {}
    for name, (hf_name, transposed) in TOP_KEYS.items():
        if name in shapes:
            shape = tuple(shapes[name].shape)
            specs[hf_name] = ((name,), None, transposed, shape[::-1] if transposed else shape)
    for name, (suffix, transposed) in LAYER_KEYS.items():
        shape = tuple(shapes["layers"][name].shape[1:])
        for i in range(cfg.n_layers):
            specs[f"model.layers.{i}.{suffix}"] = (("layers", name), i, transposed,
                                                   shape[::-1] if transposed else shape)
    return specs


# --------------------------------------------------------------------------- reading


def read_hf_config(hf_dir: pathlib.Path) -> dict:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ConversionError(f"{hf_dir} has no config.json; pass the folder written by save_pretrained")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from None


def _weight_map(hf_dir: pathlib.Path, safe_open) -> dict[str, str]:
    """HF tensor name -> shard file name, checking that every shard exists."""
    index = hf_dir / "model.safetensors.index.json"
    single = hf_dir / "model.safetensors"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        if not weight_map:
            raise ConversionError(f"{index} has no weight_map")
        missing: dict[str, list[str]] = {}
        for tensor, shard in weight_map.items():
            if not (hf_dir / shard).is_file():
                missing.setdefault(shard, []).append(tensor)
        if missing:
            listing = "; ".join(f"{shard} (holds {', '.join(sorted(t)[:3])}{', ...' if len(t) > 3 else ''})"
                                for shard, t in sorted(missing.items()))
            raise ConversionError(f"{hf_dir}: shard files missing: {listing}; download every shard")
        return dict(weight_map)
    if single.is_file():
        with safe_open(str(single), framework="np") as f:
            return {name: single.name for name in f.keys()}
    others = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(p.name for p in hf_dir.glob("*.pth"))
    hint = (f" (found {others[:3]}: only safetensors are read; re-save with "
            "save_pretrained(..., safe_serialization=True))") if others else ""
    raise ConversionError(f"{hf_dir} has neither model.safetensors nor model.safetensors.index.json{hint}")


@dataclasses.dataclass(frozen=True)
class SourceTensor:
    """One tensor of a checkpoint being converted, by its HF name: its stored dtype (a label such
    as F32, BF16 or Q4_1), its shape in HF's layout, and how to read it as float32 numpy."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray]


def fill_params(cfg: ModelConfig, names: Collection[str], tensors: Iterable[SourceTensor], where: str, *,
                seed: int = 0, log: Callable[[str], None] = _log) -> tuple[dict, dict]:
    """(float32 numpy params tree, info) of `cfg` from a checkpoint holding the HF-named tensors
    `names`, read one at a time from `tensors`: every name is checked before anything is read, and
    every shape before its data. The query vector is `model.query_embed` when the checkpoint has
    one (an a3jax export), else drawn from N(0, std(embedding matrix)^2) with `seed`; `causal`
    drops it."""
    specs = param_specs(cfg)
    ignored = sorted(n for n in names if _IGNORED.search(n))
    optional = {QUERY_KEY}
    if cfg.tie_embeddings:
        optional.add(TOP_KEYS["lm_head"][0])  # a tied checkpoint may still store a copy
    unexpected = sorted(n for n in names if n not in specs and n not in optional and n not in ignored)
    if unexpected:
        raise ConversionError(
            f"{where}: tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} are not part of "
            f"a LLaMA model with config.json's shape ({cfg.n_layers} layers); is this a LLaMA checkpoint?"
        )
    missing = sorted((n for n in specs if n not in names and n != QUERY_KEY), key=_natural)
    if missing:
        raise ConversionError(
            f"{where}: tensors missing: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            + (" (config.json says tie_word_embeddings=false, so lm_head.weight is needed)"
               if TOP_KEYS["lm_head"][0] in missing else "")
        )

    # Preallocate the float32 tree (stacked per-layer arrays) and fill it tensor by tensor.
    _, shapes = abstract_params(cfg)
    params: dict[str, Any] = {}
    for name, shape in shapes.items():
        if name == "layers":
            params["layers"] = {k: np.empty(v.shape, np.float32) for k, v in shape.items()}
        elif name != "query_embed":
            params[name] = np.empty(shape.shape, np.float32)
    source_dtypes: set[str] = set()
    query = None
    for tensor in tensors:
        name, shape = tensor.name, tuple(tensor.shape)
        if name in ignored:
            continue
        source_dtypes.add(tensor.dtype)
        if name == QUERY_KEY:
            if shape != (cfg.d_model,):
                raise ConversionError(f"tensor {name} has shape {shape}, expected ({cfg.d_model},)")
            query = np.asarray(tensor.read(), np.float32) if cfg.facts.query_stream else None
            continue
        if name not in specs:  # lm_head copy of a tied model
            continue
        path, layer, transposed, expected = specs[name]
        if shape != expected:
            raise ConversionError(
                f"tensor {name} in {where} has shape {list(shape)} but config.json implies "
                f"{list(expected)} ({_shape_hint(name, cfg)}); config.json and the weights disagree"
            )
        value = np.asarray(tensor.read(), dtype=np.float32)
        target = params[path[0]] if len(path) == 1 else params[path[0]][path[1]]
        if layer is None:
            target[...] = value.T if transposed else value
        else:
            target[layer] = value.T if transposed else value
        del value

    info = {"source_dtypes": sorted(source_dtypes), "ignored": ignored}
    if cfg.facts.query_stream:
        if query is None:
            query, info["query_embed"] = initial_query_vector(params["embed"], seed)
        else:
            info["query_embed"] = f"read from {QUERY_KEY}"
        params["query_embed"] = query
    elif QUERY_KEY in names:
        info["query_embed"] = f"{QUERY_KEY} dropped (variant {cfg.variant})"
        log(f"variant {cfg.variant}: ignoring {QUERY_KEY} of {where}")
    return params, info


def _safetensors_tensors(hf_dir: pathlib.Path, weight_map: Mapping[str, str], safe_open) -> Iterator[SourceTensor]:
    """The tensors of an HF folder, each shard opened once and read tensor by tensor."""
    by_file: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_file.setdefault(shard, []).append(name)
    for shard in sorted(by_file):
        with safe_open(str(hf_dir / shard), framework="np") as f:
            present = set(f.keys())
            for name in sorted(by_file[shard], key=_natural):
                if _IGNORED.search(name):
                    continue
                if name not in present:
                    raise ConversionError(f"{hf_dir / shard}: tensor {name} listed in the index is not in the file")
                tensor_slice = f.get_slice(name)
                dtype = tensor_slice.get_dtype()
                if dtype not in _FLOAT_DTYPES:
                    raise ConversionError(f"tensor {name} in {shard} has dtype {dtype}; expected a float type")
                yield SourceTensor(name, dtype, tuple(tensor_slice.get_shape()),
                                   lambda f=f, name=name: f.get_tensor(name))


def load_hf_params(hf_dir: str | pathlib.Path, variant: str = "a3", *, seed: int = 0,
                   base_model: Mapping[str, Any] | None = None,
                   log: Callable[[str], None] = _log) -> tuple[ModelConfig, dict, dict]:
    """Reads an HF LLaMA folder into (ModelConfig, float32 numpy params tree, info) (fill_params)."""
    safe_open = _safetensors()
    hf_dir = pathlib.Path(hf_dir)
    if not hf_dir.is_dir():
        raise ConversionError(f"--from-hf {hf_dir} is not a folder")
    cfg = model_config_from_hf(read_hf_config(hf_dir), variant, base_model)
    weight_map = _weight_map(hf_dir, safe_open)
    params, info = fill_params(cfg, weight_map, _safetensors_tensors(hf_dir, weight_map, safe_open), str(hf_dir),
                               seed=seed, log=log)
    return cfg, params, info


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _shape_hint(name: str, cfg: ModelConfig) -> str:
    if "embed_tokens" in name or name.startswith("lm_head"):
        return f"vocab_size={cfg.vocab_size}, hidden_size={cfg.d_model}"
    if "k_proj" in name or "v_proj" in name:
        return f"num_key_value_heads={cfg.n_kv_heads} x head_dim={cfg.head_dim}, hidden_size={cfg.d_model}"
    if "q_proj" in name or "o_proj" in name:
        return f"num_attention_heads={cfg.n_heads} x head_dim={cfg.head_dim}, hidden_size={cfg.d_model}"
    if "mlp" in name:
        return f"intermediate_size={cfg.ffn_dim}, hidden_size={cfg.d_model}"
    return f"hidden_size={cfg.d_model}"


# --------------------------------------------------------------------------- writing


DEFAULT_CONFIG = "adapt_tiny"  # a preset (a3jax/configs/presets)


def experiment_config(model_cfg: ModelConfig, base=None, tokenizer_path: pathlib.Path | None = None):
    """The base experiment config (a ConfigDict) with the converted model and tokenizer filled in."""
    from a3jax.configs import load_config_file, validate

    config = load_config_file(DEFAULT_CONFIG) if base is None else base
    config = config.copy_and_resolve_references()
    model = model_cfg.to_dict()
    for key, value in model.items():
        if key == "rope_scaling":
            for sub, sub_value in value.items():
                config.model.rope_scaling[sub] = sub_value
        else:
            config.model[key] = value
    only = model_cfg.facts.only_order
    if only is not None:  # a variant that trains and evaluates under one order (causal)
        config.orders.curriculum = only
        config.orders.eval = (only,)
    if tokenizer_path is not None:
        config.data.tokenizer = str(tokenizer_path)
    validate(config)
    return config


def write_experiment_file(path: pathlib.Path, config, note: str, workdir: pathlib.Path) -> None:
    """Writes `config` as a config file at `path`; `workdir`: where the checkpoint will live."""
    body = pprint.pformat(config.to_dict(), indent=1, width=100, sort_dicts=False)
    path.write_text(
        f'"""{note}\n\nTrain from the converted checkpoint beside this file:\n'
        f'  a3jax train --workdir {workdir} --config {workdir / path.name}\n"""\n\n'
        "from ml_collections import ConfigDict\n\n"
        f"CONFIG = {body}\n\n\n"
        "def get_config() -> ConfigDict:\n"
        "    return ConfigDict(CONFIG)\n"
    )


def prepare_out(out: pathlib.Path) -> pathlib.Path:
    """A fresh temporary sibling of `out` to assemble the result in (refuses a non-empty `out`)."""
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def finish_out(tmp: pathlib.Path, out: pathlib.Path) -> None:
    if out.exists():
        out.rmdir()  # empty (checked by prepare_out)
    os.replace(tmp, out)


def convert_hf(hf_dir: str | pathlib.Path, out: str | pathlib.Path, *, variant: str = "a3",
               config=None, seed: int = 0, log: Callable[[str], None] = _log) -> pathlib.Path:
    """Converts an HF LLaMA folder into an a3jax workdir at `out` (checkpoint at step 0).

    `config`: the base experiment ConfigDict (default: the adapt_tiny preset); its non-model
    sections and the model's dtype / attention / remat / init_std are kept, the architecture is
    replaced by config.json's. Returns `out`.
    """
    hf_dir, out = pathlib.Path(hf_dir), pathlib.Path(out).absolute()
    check_out(out)  # fail before reading anything
    cfg, params, info = load_hf_params(hf_dir, variant, seed=seed, base_model=base_model_of(config), log=log)

    def write_source_files(tmp: pathlib.Path) -> list[str]:
        copied = []
        for name in TOKENIZER_FILES:
            if (hf_dir / name).is_file():
                shutil.copy2(hf_dir / name, tmp / name)
                copied.append(name)
        shutil.copy2(hf_dir / "config.json", tmp / "hf_config.json")
        return copied

    return write_workdir(out, cfg, params, info, write_source_files, config=config, log=log,
                         source={"format": "hf-llama", "path": str(hf_dir.absolute()), "variant": variant})


def base_model_of(config) -> dict | None:
    return None if config is None else dict(config.model.to_dict())


def check_out(out: pathlib.Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"--out {out} already exists and is not empty; choose a new folder")


def write_workdir(out: pathlib.Path, cfg: ModelConfig, params: dict, info: dict,
                  write_source_files: Callable[[pathlib.Path], list[str]], *, config, source: dict,
                  log: Callable[[str], None] = _log) -> pathlib.Path:
    """The converted workdir at `out`: the checkpoint at step 0, experiment.py, and the files that
    `write_source_files(folder)` writes (the tokenizer files first; it returns their names),
    assembled in a temporary sibling and renamed into place only when complete."""
    import jax

    from a3jax.checkpoint import write_start
    from a3jax.configs import parse
    from a3jax.train.optimizer import fresh_state

    tmp = prepare_out(out)
    try:
        copied = write_source_files(tmp)
        tokenizer = next((out / n for n in ("tokenizer.json", "tokenizer.model") if n in copied), None)
        try:
            experiment = experiment_config(cfg, config, tokenizer)
        except ValueError as error:
            raise ConversionError(f"the converted model does not fit the base config: {error}") from None
        note = (f"Written by `a3jax convert --variant {source['variant']}` from {source['path']}: the base config "
                "with the model section from its config" + (" and its tokenizer." if tokenizer else "."))
        write_experiment_file(tmp / "experiment.py", experiment, note, out)

        _, shapes = abstract_params(cfg)
        opt_state = fresh_state(parse(experiment).train, shapes)
        write_start(tmp, params, opt_state, cfg, experiment.to_dict(),
                    {**source, "tokenizer_files": copied, **info})
        finish_out(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    log(f"converted {source['path']} ({', '.join(info['source_dtypes'])}; {n_params:,} params, variant "
        f"{source['variant']}) -> {out}; query_embed: {info.get('query_embed', 'none (causal)')}")
    log(f"train from it: a3jax train --workdir {out} --config {out / 'experiment.py'}")
    return out
