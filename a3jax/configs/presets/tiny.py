"""Tiny A3 model on the embedded stdlib corpus: the CPU default. Every other key keeps the default
of its typed section (a3jax/configs/sections.py and model/config.py: 3 layers, d_model 128, byte
tokenizer, seq_len 128, batch 8, 1,200 steps at lr 3e-3, float32 on the xla backend)."""

from ml_collections import ConfigDict

from a3jax.configs.sections import base_config


def get_config() -> ConfigDict:
    config = base_config()
    # Half of the examples left to right, a quarter with a trailing span, a quarter in random groups.
    config.orders.curriculum = "0.5*ar + 0.25*span(0.05,0.3) + 0.25*random_sizes(1,8)"
    config.orders.eval = ("ar", "random(4)")
    config.mesh.presets = {"cpu": (-1, 1, 1)}
    return config
