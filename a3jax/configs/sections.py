"""Typed config sections: an experiment's ConfigDict parsed and validated ONCE into frozen
dataclasses, which the rest of a3jax takes instead of the raw dict.

    exp = parse(config)          # ConfigError naming the first bad value and the fix
    exp.train.batch_size         # an int, always; exp.curriculum is built once
    exp.tokens_per_step          # train.batch_size * data.seq_len

The ConfigDict stays the user-facing format (config files, `--config.a.b=v` overrides, the
`config` saved in checkpoints). A key missing from a section (a checkpoint written before the key
existed), or a whole section, takes the defaults; an unknown key or section is refused.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict

from a3jax.model import ModelConfig
from a3jax.model.params import QUERY_INITS
from a3jax.model.sharding import DEFAULT_RULES
from a3jax.orders import MDLM, Curriculum, parse_sampler, uses_mdlm
from a3jax.variants import policy_of

SCHEDULES = ("cosine", "constant", "wsd")
SOURCES = ("stdlib", "text", "jsonl", "parquet", "arrayrecord")
GROUP_SIZE_SCOPES = ("example", "batch")


class ConfigError(ValueError):
    """A config file, key or value that cannot be used."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "stdlib"  # stdlib, text, jsonl, parquet or arrayrecord (from `a3jax prepare`)
    paths: tuple[str, ...] = ()
    text_field: str = "text"
    doc_separator: str = ""
    tokenizer: str = "bytes"
    bos_token: str = ""
    eos_token: str = ""
    pad_token: str = ""
    seq_len: int = 128
    eval_fraction: float = 0.02
    max_files: int = 0
    worker_count: int = 0
    shuffle: bool = True
    align_groups: bool = False


@dataclasses.dataclass(frozen=True)
class OrdersConfig:
    curriculum: str = "ar"
    eval: tuple[str, ...] = ("ar",)
    group_size_scope: str = "example"


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    devices: int = 0
    preset: str = ""
    presets: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    rules: tuple[tuple[str, str], ...] = DEFAULT_RULES


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 8
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 3e-4
    warmup_steps: int = 50
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0
    query_lr_scale: float = 1.0  # the query stream's vector learns at this multiple of train.lr
    init_from: str = ""  # a workdir whose latest checkpoint's weights a fresh run starts from
    query_init: str = "normal"  # init_from a causal model into a3: the query vector (normal, mean)
    peak_flops: float = 0.0
    log_every: int = 20
    eval_every: int = 300
    eval_rows: int = 64
    checkpoint_every: int = 300
    keep_checkpoints: int = 2
    max_bad_steps: int = 10
    inject_nan_at_steps: tuple[int, ...] = ()


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
            section = dataclasses.asdict(getattr(self, name))
            out[name] = _jsonable(section)
        return out


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _coerce(section: str, key: str, value, annotation, default):
    """value as the field's type, or a ConfigError naming section.key."""
    where = f"{section}.{key}"
    origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            if not isinstance(value, bool):
                raise TypeError(f"expected True or False, got {value!r}")
            return value
        if annotation is int:
            if isinstance(value, bool) or not float(value).is_integer():
                raise TypeError(f"expected an integer, got {value!r}")
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise TypeError(f"expected a number, got {value!r}")
            return float(value)
        if annotation is str:
            if not isinstance(value, str):
                raise TypeError(f"expected a string, got {value!r}")
            return value
        if origin is tuple:
            items = (value,) if isinstance(value, (str, int, float)) else tuple(value)
            inner = typing.get_args(annotation)[0]
            if inner is int:
                return tuple(_coerce(section, key, v, int, None) for v in items)
            if inner is str:
                return tuple(str(v) for v in items)
            return tuple(tuple(str(x) for x in pair) for pair in items)  # rules: (logical, axes)
        if origin is collections.abc.Mapping:
            return {str(k): tuple(int(d) for d in v) for k, v in dict(value).items()}
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config key {where}={value!r} has the wrong type ({error}); "
                          f"the default is {default!r}") from None
    raise TypeError(f"no coercion for {where}: {annotation}")  # a bug in this module


def parse_section(cls, mapping, section: str):
    """A section dataclass from a mapping: missing keys take defaults, unknown keys are refused."""
    values = dict(mapping.to_dict() if isinstance(mapping, ConfigDict) else (mapping or {}))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        hint = difflib.get_close_matches(unknown[0], fields, n=1)
        did_you_mean = f" (did you mean {section}.{hint[0]}?)" if hint else ""
        raise ConfigError(f"unknown config key {section}.{unknown[0]}{did_you_mean}; valid keys under "
                          f"{section}: {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kwargs[name] = _coerce(section, name, values[name], hints[name], default) if name in values else default
    return cls(**kwargs)


def model_config(config) -> ModelConfig:
    try:
        return ModelConfig.from_mapping(config.model.to_dict() if isinstance(config.model, ConfigDict)
                                        else dict(config.model))
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None


def parse(config: ConfigDict) -> Experiment:
    """The typed, validated experiment; ConfigError names the first bad value and the fix."""
    if isinstance(config, Experiment):
        return config
    unknown = sorted(set(config.keys()) - {"seed", "model", "data", "orders", "mesh", "train"})
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; valid: seed, model, data, orders, mesh, train")
    model = model_config(config) if "model" in config else ModelConfig()  # a missing section: defaults
    data = parse_section(DataConfig, config.get("data"), "data")
    orders = parse_section(OrdersConfig, config.get("orders"), "orders")
    mesh = parse_section(MeshConfig, config.get("mesh"), "mesh")
    train = parse_section(TrainConfig, config.get("train"), "train")
    seed = _coerce("", "seed", config.get("seed", 0), int, 0)
    _check_values(data, orders, train)
    try:
        curriculum = Curriculum.parse(orders.curriculum, orders.group_size_scope,
                                      tokens_per_step=train.batch_size * data.seq_len)
        eval_samplers = {spec: parse_sampler(spec) for spec in orders.eval}
    except ValueError as error:
        raise ConfigError(f"orders: {error}") from None
    _check_alignment(model, data, orders, curriculum)
    _check_variant_orders(model, orders, curriculum, eval_samplers)
    if model.variant == "mdlm":
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


def _check_variant_orders(model: ModelConfig, orders: OrdersConfig, curriculum: Curriculum,
                          eval_samplers: dict) -> None:
    """Which orders each model variant may train and evaluate under (a3jax/variants.py)."""
    policy = policy_of(model.variant)
    bad = [s.spec for i, s in enumerate(curriculum.stages) if not policy.trains_under(s.spec, curriculum.sampler(i))]
    if bad:
        raise ConfigError(policy.training_order_error(bad))
    if model.variant == "mdlm":
        bad = [spec for spec in orders.eval if spec.replace(" ", "") != MDLM]
        if bad or not orders.eval:
            raise ConfigError(
                f"model.variant='mdlm' (masked diffusion) is evaluated only under the 'mdlm' order (its "
                f"NLL bound), but orders.eval has {list(orders.eval)}; set --config.orders.eval=mdlm")
    else:
        bad = [spec for spec, sampler in eval_samplers.items() if uses_mdlm(sampler)]
        if bad:
            raise ConfigError(
                f"the {MDLM!r} order is the masked-diffusion control's objective (L/m-weighted), but "
                f"model.variant={model.variant!r} has it in orders {bad}; set --config.model.variant=mdlm "
                "or use another order")


def _check_mask_token(model: ModelConfig, data: DataConfig) -> None:
    """The masked-diffusion control needs a free vocabulary id (the last one) for its MASK token."""
    from a3jax.data.tokenizer import load_tokenizer  # tokenizer files are read only for mdlm

    try:
        tokenizer = load_tokenizer(data)
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.variant='mdlm' needs the tokenizer's vocabulary size to place its "
                          f"MASK token, but data.tokenizer={data.tokenizer!r} cannot be loaded: "
                          f"{error}") from None
    if tokenizer.vocab_size > model.mask_token_id:
        raise ConfigError(
            f"model.variant='mdlm' uses the last id, model.vocab_size - 1 = {model.mask_token_id}, as its "
            f"MASK token, but the {tokenizer.name} tokenizer uses ids up to {tokenizer.vocab_size - 1}; "
            f"set --config.model.vocab_size={tokenizer.vocab_size + 1} (or more)")
