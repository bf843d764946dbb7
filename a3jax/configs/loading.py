"""Loading experiment configs: a preset name (`tiny`, `llama3_1b`, ... in a3jax/configs/presets)
or a config file path, then `--config.a.b=v` overrides (type-checked, unknown keys refused with a
suggestion), then validation (sections.parse) with one-line errors naming the bad value and fix."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib
from collections.abc import Sequence

from ml_collections import ConfigDict

from a3jax.configs import presets
from a3jax.configs.sections import ConfigError, parse


def load_config_module(name_or_path: str | pathlib.Path):
    """The module of a preset name (a3jax/configs/presets) or of a config file path."""
    text = str(name_or_path)
    path = pathlib.Path(text)
    if not path.is_file():
        if text in presets.NAMES:
            return importlib.import_module(f"a3jax.configs.presets.{text}")
        raise ConfigError(f"config {text} is neither a file nor a preset; pass a config file, e.g. "
                          f"--config=experiments/tiny.py, or a preset name: {', '.join(presets.NAMES)}")
    spec = importlib.util.spec_from_file_location(f"a3jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_file(name_or_path: str | pathlib.Path) -> ConfigDict:
    module = load_config_module(name_or_path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {name_or_path} defines no get_config() function")
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


def load_config(name_or_path: str | pathlib.Path, overrides: Sequence[str] = ()) -> ConfigDict:
    """Loads a preset or config file, applies overrides given as 'a.b=v' strings, then validates."""
    config = load_config_file(name_or_path)
    apply_overrides(config, overrides)
    parse(config)
    return config


def override_key(item: str) -> str:
    """The dotted key an override sets: 'data.seq_len' for '--config.data.seq_len=96' or 'data.seq_len=96'."""
    return item.partition("=")[0].strip().removeprefix("--").removeprefix("config.")


def apply_overrides(config: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
    for item in overrides:
        _, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} has no '='; write it as --config.{item.partition('=')[0]}=VALUE")
        apply_override(config, override_key(item), text)
    return config
