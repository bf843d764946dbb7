"""The `adapt_llama3_8b` preset (a3jax/configs/presets/adapt_llama3_8b.py); also `--config=adapt_llama3_8b`.
Copy this file to vary it."""

from a3jax.configs.presets.adapt_llama3_8b import get_config  # noqa: F401
