"""Typed config sections: an experiment's ConfigDict parsed and validated ONCE into frozen
dataclasses, which the rest of a3jax takes instead of the raw dict.

    exp = parse(config)          # ConfigError naming the first bad value and the fix
    exp.train.batch_size         # an int, always; exp.curriculum is built once
    exp.tokens_per_step          # train.batch_size * data.seq_len

The ConfigDict stays the user-facing format (config files, `--config.a.b=v` overrides, the
`config` saved in checkpoints). A key missing from a section (a checkpoint written before the key
existed), or a whole section, takes the defaults; an unknown key or section is refused.
The dataclasses are the one schema: their fields and defaults are the keys and defaults of every
config (`base_config()` builds the ConfigDict the presets start from; a3jax/schema.py parses).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict

from a3jax.errors import ConfigError
from a3jax.model import ModelConfig
from a3jax.model.params import QUERY_INITS
from a3jax.model.sharding import DEFAULT_RULES
from a3jax.orders import Curriculum, parse_sampler
from a3jax.schema import _coerce, defaults, jsonable, parse_section

SCHEDULES = ("cosine", "constant", "wsd")
SOURCES = ("stdlib", "offline", "text", "jsonl", "parquet", "arrayrecord")
GROUP_SIZE_SCOPES = ("example", "batch")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "stdlib"  # stdlib, offline, text, jsonl, parquet or arrayrecord (from `a3jax prepare`)
    paths: tuple[str, ...] = ()  # files / globs / folders (text, jsonl, parquet) or the prepared folder
    text_field: str = "text"  # jsonl / parquet field holding the text
    doc_separator: str = ""  # text: split each file into documents here ("" = one per file)
    tokenizer: str = "bytes"  # "bytes" or a local tokenizer.json / SentencePiece .model
    bos_token: str = ""  # "" = found by the usual names (<s>, <|begin_of_text|>, ...)
    eos_token: str = ""
    pad_token: str = ""  # "" = found, else EOS
    seq_len: int = 128
    eval_fraction: float = 0.02  # share of files held out, chosen by a hash of the path
    max_files: int = 0  # 0 = all files of the source
    code_share: float = 0.5  # offline: the share of the bytes that is code
    worker_count: int = 0  # Grain worker processes (0 = in the training process)
    shuffle: bool = True
    # One group size per step (needs orders.group_size_scope="batch"), every document's groups
    # aligned to it: the static-mask attention (splash) needs this; costs < g padding per document.
    align_groups: bool = False


@dataclasses.dataclass(frozen=True)
class OrdersConfig:
    # Curriculum: stages separated by ';', each "SAMPLER until STEP" (or "until N tokens") except the last.
    curriculum: str = "ar"
    eval: tuple[str, ...] = ("ar",)  # held-out NLL / bits per byte under each of these orders
    # "example": each example draws its sampler's parameters; "batch": one draw per step (one
    # group size per batch, e.g. random_sizes -> random(k)), so the masks can be static.
    group_size_scope: str = "example"


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1: all devices not used by the other axes
    fsdp: int = 1
    tensor: int = 1
    devices: int = 0  # use the first N devices; 0 = all
    preset: str = ""  # a key of mesh.presets: its (data, fsdp, tensor) replace the degrees
    presets: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    # Logical axis -> mesh axes (comma-separated; "" = replicated): model/sharding.py.
    rules: tuple[tuple[str, str], ...] = DEFAULT_RULES


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 8  # many small steps beat few large ones at the tiny scale
    grad_accum: int = 1  # micro-batches per step (the batch is split, gradients summed)
    steps: int = 1200
    lr: float = 3e-3
    warmup_steps: int = 50
    schedule: str = "cosine"  # "cosine", "constant" or "wsd"
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0
    # Cross-entropy `loss_chunk` rows at a time, never materialising the [B, N, V] logits (0 = at
    # once). Changes memory, not values: the Llama presets use it.
    loss_chunk: int = 0
    query_lr_scale: float = 1.0  # the query stream's vector learns at this multiple of train.lr
    # Start a fresh run from the latest weights of another workdir (e.g. a causal model, adapted to
    # a3: every weight copied, the query vector made by query_init: "normal" or "mean").
    init_from: str = ""
    query_init: str = "normal"
    peak_flops: float = 0.0  # peak FLOP/s per device for MFU; 0 = from flops.PEAK_FLOPS
    log_every: int = 20
    eval_every: int = 300
    eval_rows: int = 64
    checkpoint_every: int = 300
    keep_checkpoints: int = 2
    # Non-finite loss/gradients: the step's update is skipped (counted as train/skipped); after this
    # many consecutive skipped steps training stops, keeping the last good checkpoint.
    max_bad_steps: int = 10
    inject_nan_at_steps: tuple[int, ...] = ()  # testing aid: steps whose gradients are made NaN


SECTIONS = {"model": ModelConfig, "data": DataConfig, "orders": OrdersConfig, "mesh": MeshConfig,
            "train": TrainConfig}


def base_config() -> ConfigDict:
    """Every config key with its default, built from the section dataclasses (the one schema):
    presets and config files start here and state only what they change."""
    config = ConfigDict()
    config.seed = 0
    for name, cls in SECTIONS.items():
        config[name] = ConfigDict(defaults(cls))
    return config


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment's typed config. `raw` is the ConfigDict it was parsed from (what checkpoints
    and workdirs store)."""

    seed: int
    model: ModelConfig
    data: DataConfig
    orders: OrdersConfig
    mesh: MeshConfig
    train: TrainConfig
    curriculum: Curriculum = dataclasses.field(compare=False, repr=False)
    raw: ConfigDict = dataclasses.field(compare=False, repr=False)

    @property
    def tokens_per_step(self) -> int:
        """Tokens (row slots, padding included) per optimizer step: train.batch_size * data.seq_len."""
        return self.train.batch_size * self.data.seq_len

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able values (what the golden-config files hold)."""
        out = {"seed": self.seed, "model": self.model.to_dict()}
        for name in ("data", "orders", "mesh", "train"):
            out[name] = jsonable(getattr(self, name))
        return out


def model_config(config) -> ModelConfig:
    """The typed model section of a ConfigDict (or of a parsed Experiment)."""
    if isinstance(config, Experiment):
        return config.model
    return parse_section(ModelConfig, config.get("model"), "model")


def parse(config: ConfigDict) -> Experiment:
    """The typed, validated experiment; ConfigError names the first bad value and the fix."""
    if isinstance(config, Experiment):
        return config
    unknown = sorted(set(config.keys()) - {"seed", *SECTIONS})
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; valid: seed, {', '.join(SECTIONS)}")
    # a missing key or section takes the defaults
    model, data, orders, mesh, train = (parse_section(cls, config.get(name), name)
                                        for name, cls in SECTIONS.items())
    seed = _coerce("seed", config.get("seed", 0), int, 0)
    _check_values(data, orders, train)
    try:
        curriculum = Curriculum.parse(orders.curriculum, orders.group_size_scope,
                                      tokens_per_step=train.batch_size * data.seq_len)
        for spec in orders.eval:  # each held-out order parses
            parse_sampler(spec)
    except ValueError as error:
        raise ConfigError(f"orders: {error}") from None
    _check_alignment(model, data, orders, curriculum)
    _check_variant_orders(model, orders, curriculum)
    if model.facts.masked_inputs:
        _check_mask_token(model, data)
    return Experiment(seed=seed, model=model, data=data, orders=orders, mesh=mesh, train=train,
                      curriculum=curriculum, raw=config)


def _check_values(data: DataConfig, orders: OrdersConfig, train: TrainConfig) -> None:
    checks = [
        (train.batch_size > 0, f"train.batch_size={train.batch_size} must be > 0"),
        (train.steps > 0, f"train.steps={train.steps} must be > 0"),
        (data.seq_len >= 2, f"data.seq_len={data.seq_len} must be >= 2"),
        (train.schedule in SCHEDULES, f"train.schedule={train.schedule!r} is not one of {SCHEDULES}"),
        (train.grad_accum > 0 and train.batch_size % train.grad_accum == 0,
         f"train.grad_accum={train.grad_accum} must be > 0 and divide train.batch_size={train.batch_size}"),
        (train.checkpoint_every > 0, f"train.checkpoint_every={train.checkpoint_every} must be > 0"),
        (train.log_every > 0, f"train.log_every={train.log_every} must be > 0"),
        (train.eval_every > 0, f"train.eval_every={train.eval_every} must be > 0"),
        (data.source in SOURCES, f"data.source={data.source!r} is not one of {SOURCES}"),
        (orders.group_size_scope in GROUP_SIZE_SCOPES,
         f"orders.group_size_scope={orders.group_size_scope!r} is not one of {GROUP_SIZE_SCOPES}"),
        (data.worker_count >= 0, f"data.worker_count={data.worker_count} must be >= 0"),
        (train.query_lr_scale > 0, f"train.query_lr_scale={train.query_lr_scale} must be > 0"),
        (train.loss_chunk >= 0, f"train.loss_chunk={train.loss_chunk} must be >= 0 (0 = the full logits)"),
        (train.query_init in QUERY_INITS, f"train.query_init={train.query_init!r} is not one of {QUERY_INITS}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _check_alignment(model: ModelConfig, data: DataConfig, orders: OrdersConfig, curriculum: Curriculum) -> None:
    """data.align_groups needs one constant group size per step; splash needs aligned rows."""
    if model.attention == "splash" and not data.align_groups:
        raise ConfigError("model.attention='splash' uses a static block-causal mask: it needs "
                          "--config.data.align_groups=True and --config.orders.group_size_scope=batch "
                          "(one group size per step, documents aligned to it)")
    if not data.align_groups:
        return
    if orders.group_size_scope != "batch":
        raise ConfigError(f"data.align_groups=True needs one group size per step, but "
                          f"orders.group_size_scope={orders.group_size_scope!r}; set "
                          "--config.orders.group_size_scope=batch")
    try:
        largest = curriculum.max_group_size()
    except ValueError as error:
        raise ConfigError(f"data.align_groups=True: {error}") from None
    if largest - 1 > data.seq_len - 2:
        raise ConfigError(f"data.align_groups=True keeps {largest - 1} slots per document free for "
                          f"alignment (largest group size {largest}), more than data.seq_len="
                          f"{data.seq_len} allows; use smaller groups or a longer seq_len")


def _check_variant_orders(model: ModelConfig, orders: OrdersConfig, curriculum: Curriculum) -> None:
    """Which orders the model's variant may train and evaluate under (a3jax/variants.py)."""
    facts = model.facts
    facts.check_training_orders([s.spec for s in curriculum.stages],
                                [curriculum.sampler(i) for i in range(len(curriculum.stages))])
    facts.check_eval_orders(list(orders.eval))


def _check_mask_token(model: ModelConfig, data: DataConfig) -> None:
    """The masked-diffusion control needs a free vocabulary id (the last one) for its MASK token."""
    from a3jax.data.tokenizer import load_tokenizer  # tokenizer files are read only for masked inputs

    try:
        tokenizer = load_tokenizer(data)
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.variant={model.variant!r} needs the tokenizer's vocabulary size to place its "
                          f"MASK token, but data.tokenizer={data.tokenizer!r} cannot be loaded: "
                          f"{error}") from None
    if tokenizer.vocab_size > model.mask_token_id:
        raise ConfigError(
            f"model.variant={model.variant!r} uses the last id, model.vocab_size - 1 = {model.mask_token_id}, as its "
            f"MASK token, but the {tokenizer.name} tokenizer uses ids up to {tokenizer.vocab_size - 1}; "
            f"set --config.model.vocab_size={tokenizer.vocab_size + 1} (or more)")
