"""The `tiny` preset (a3jax/configs/presets/tiny.py); also `--config=tiny`. Copy this file to vary it."""

from a3jax.configs.presets.tiny import get_config  # noqa: F401
