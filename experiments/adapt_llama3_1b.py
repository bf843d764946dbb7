"""The `adapt_llama3_1b` preset (a3jax/configs/presets/adapt_llama3_1b.py); also `--config=adapt_llama3_1b`.
Copy this file to vary it."""

from a3jax.configs.presets.adapt_llama3_1b import get_config  # noqa: F401
