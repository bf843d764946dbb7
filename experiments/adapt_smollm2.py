"""The `adapt_smollm2` preset (a3jax/configs/presets/adapt_smollm2.py); also `--config=adapt_smollm2`.
Copy this file to vary it."""

from a3jax.configs.presets.adapt_smollm2 import get_config  # noqa: F401
