"""Experiment configs: load an ml_collections config file, apply `--config.a.b=v` overrides,
validate everything up front with one-line errors that name the bad value and the fix."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib
from typing import Sequence

from ml_collections import ConfigDict

from a3jax.model import ModelConfig
from a3jax.orders import MDLM, Curriculum, parse_sampler, uses_mdlm
from a3jax.train.optimizer import SCHEDULES


class ConfigError(ValueError):
    """A config file, key or value that cannot be used."""


def load_config_file(path: str | pathlib.Path) -> ConfigDict:
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass e.g. --config=experiments/tiny.py")
    spec = importlib.util.spec_from_file_location(f"a3jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config() function")
    return module.get_config()


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text  # a bare string such as ar or random(4)


def apply_override(config: ConfigDict, dotted_key: str, text: str) -> None:
    """Sets config[dotted_key] from its command-line text, keeping the field's type."""
    *parents, leaf = dotted_key.split(".")
    node = config
    for depth, name in enumerate(parents + [leaf]):
        where = ".".join(parents[:depth]) or "the top level"
        if not isinstance(node, ConfigDict) or name not in node:
            valid = sorted(node.keys()) if isinstance(node, ConfigDict) else []
            hint = difflib.get_close_matches(name, valid, n=1)
            did_you_mean = f" (did you mean {'.'.join(parents[:depth] + hint)}?)" if hint else ""
            raise ConfigError(
                f"unknown config key {dotted_key}{did_you_mean}; valid keys under {where}: {valid}"
            )
        if name != leaf or depth < len(parents):
            node = node[name]
    value = _parse_value(text)
    old = node[leaf]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, str) and not isinstance(value, str):
        value = text
    if isinstance(old, tuple) and isinstance(value, (str, list)):
        value = tuple(value) if isinstance(value, list) else (value,)
    try:
        node[leaf] = value
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"config key {dotted_key}={text!r} has the wrong type: expected "
            f"{type(old).__name__} like {old!r} ({error})"
        ) from None


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> ConfigDict:
    """Loads a config file and applies overrides given as 'a.b=v' strings, then validates."""
    config = load_config_file(path)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} has no '='; write it as --config.{key}=VALUE")
        apply_override(config, key.removeprefix("--").removeprefix("config."), text)
    validate(config)
    return config


def model_config(config: ConfigDict) -> ModelConfig:
    try:
        return ModelConfig.from_mapping(config.model.to_dict())
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None


def validate(config: ConfigDict) -> None:
    """Checks every section; raises ConfigError naming the first bad value."""
    model = model_config(config)
    checks = [
        (config.train.batch_size > 0, f"train.batch_size={config.train.batch_size} must be > 0"),
        (config.train.steps > 0, f"train.steps={config.train.steps} must be > 0"),
        (config.data.seq_len >= 2, f"data.seq_len={config.data.seq_len} must be >= 2"),
        (config.train.schedule in SCHEDULES,
         f"train.schedule={config.train.schedule!r} is not one of {SCHEDULES}"),
        (config.train.grad_accum > 0 and config.train.batch_size % config.train.grad_accum == 0,
         f"train.grad_accum={config.train.grad_accum} must be > 0 and divide "
         f"train.batch_size={config.train.batch_size}"),
        (config.train.checkpoint_every > 0,
         f"train.checkpoint_every={config.train.checkpoint_every} must be > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:
        curriculum = Curriculum.parse(config.orders.curriculum, tokens_per_step=tokens_per_step(config))
        eval_samplers = {spec: parse_sampler(spec) for spec in config.orders.eval}
    except ValueError as error:
        raise ConfigError(f"orders: {error}") from None
    _validate_alignment(config, model, curriculum)
    if model.variant == "causal":
        bad = [s.spec for s in curriculum.stages if s.spec.replace(" ", "") != "ar"]
        if bad:
            raise ConfigError(
                f"model.variant='causal' predicts the next token and trains only under the 'ar' "
                f"order, but orders.curriculum has {bad}; set --config.orders.curriculum=ar"
            )
    if model.variant == "mdlm":
        _validate_mdlm(config, model, curriculum)
    else:
        bad = [st.spec for i, st in enumerate(curriculum.stages) if uses_mdlm(curriculum.sampler(i))]
        bad += [spec for spec, sampler in eval_samplers.items() if uses_mdlm(sampler)]
        if bad:
            raise ConfigError(
                f"the {MDLM!r} order is the masked-diffusion control's objective (L/m-weighted), but "
                f"model.variant={model.variant!r} has it in orders {bad}; set --config.model.variant=mdlm "
                "or use another order"
            )


def _validate_alignment(config: ConfigDict, model: ModelConfig, curriculum: Curriculum) -> None:
    """data.align_groups needs one constant group size per step; splash needs aligned rows."""
    aligned = bool(config.data.get("align_groups", False))
    scope = str(config.orders.get("group_size_scope", "example"))
    if model.attention == "splash" and not aligned:
        raise ConfigError("model.attention='splash' uses a static block-causal mask: it needs "
                          "--config.data.align_groups=True and --config.orders.group_size_scope=batch "
                          "(one group size per step, documents aligned to it)")
    if not aligned:
        return
    if scope != "batch":
        raise ConfigError(f"data.align_groups=True needs one group size per step, but "
                          f"orders.group_size_scope={scope!r}; set --config.orders.group_size_scope=batch")
    try:
        largest = curriculum.max_group_size()
    except ValueError as error:
        raise ConfigError(f"data.align_groups=True: {error}") from None
    if largest - 1 > int(config.data.seq_len) - 2:
        raise ConfigError(f"data.align_groups=True keeps {largest - 1} slots per document free for "
                          f"alignment (largest group size {largest}), more than data.seq_len="
                          f"{config.data.seq_len} allows; use smaller groups or a longer seq_len")


def tokens_per_step(config: ConfigDict) -> int:
    """Tokens (row slots, padding included) per optimizer step: train.batch_size * data.seq_len."""
    return int(config.train.batch_size) * int(config.data.seq_len)


def _validate_mdlm(config: ConfigDict, model: ModelConfig, curriculum: Curriculum) -> None:
    """The masked-diffusion control trains and evaluates under the 'mdlm' order only, and needs a
    free vocabulary id (the last one) for its MASK token."""
    bad = [s.spec for s in curriculum.stages if s.spec.replace(" ", "") != MDLM]
    if bad:
        raise ConfigError(
            f"model.variant='mdlm' (masked diffusion) trains only under the 'mdlm' order, but "
            f"orders.curriculum has {bad}; set --config.orders.curriculum=mdlm"
        )
    bad = [spec for spec in config.orders.eval if spec.replace(" ", "") != MDLM]
    if bad or not len(config.orders.eval):
        raise ConfigError(
            f"model.variant='mdlm' (masked diffusion) is evaluated only under the 'mdlm' order (its "
            f"NLL bound), but orders.eval has {list(config.orders.eval)}; set --config.orders.eval=mdlm"
        )
    from a3jax.data.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(config.data)
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.variant='mdlm' needs the tokenizer's vocabulary size to place its "
                          f"MASK token, but data.tokenizer={config.data.tokenizer!r} cannot be loaded: "
                          f"{error}") from None
    if tokenizer.vocab_size > model.mask_token_id:
        raise ConfigError(
            f"model.variant='mdlm' uses the last id, model.vocab_size - 1 = {model.mask_token_id}, as its "
            f"MASK token, but the {tokenizer.name} tokenizer uses ids up to {tokenizer.vocab_size - 1}; "
            f"set --config.model.vocab_size={tokenizer.vocab_size + 1} (or more)"
        )
