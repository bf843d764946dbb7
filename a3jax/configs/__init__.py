"""Experiment configs: presets inside the package, config files, overrides, and the typed,
validated sections (`parse`) the rest of a3jax takes."""

from a3jax.configs.loading import (
    apply_override,
    apply_overrides,
    load_config,
    load_config_file,
    load_config_module,
    override_key,
)
from a3jax.configs.sections import (
    SCHEDULES,
    SECTIONS,
    ConfigError,
    DataConfig,
    Experiment,
    MeshConfig,
    OrdersConfig,
    TrainConfig,
    base_config,
    model_config,
    parse,
)


def validate(config) -> None:
    """Checks every section; raises ConfigError naming the first bad value."""
    parse(config)


def tokens_per_step(config) -> int:
    """Tokens (row slots, padding included) per optimizer step: train.batch_size * data.seq_len."""
    return parse(config).tokens_per_step


__all__ = ["SCHEDULES", "SECTIONS", "ConfigError", "DataConfig", "Experiment", "MeshConfig", "OrdersConfig",
           "TrainConfig", "apply_override", "apply_overrides", "base_config", "load_config", "load_config_file",
           "load_config_module", "model_config", "override_key", "parse", "tokens_per_step", "validate"]
