"""The `demo` preset (a3jax/configs/presets/demo.py): what `make demo` runs. get_config() is the
adaptation stage; pretrain_config() the causal pretraining before it."""

from a3jax.configs.presets.demo import get_config, pretrain_config  # noqa: F401
