"""The `llama3_1b` preset (a3jax/configs/presets/llama3_1b.py); also `--config=llama3_1b`. Copy this file to vary it."""

from a3jax.configs.presets.llama3_1b import get_config  # noqa: F401
