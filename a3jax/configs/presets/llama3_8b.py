"""A3 on the Llama-3.1-8B shape (seq 2048, bf16), with mesh presets for real clusters.

Pick a preset with --config.mesh.preset=8xH100 | v5p-128 | v6e-256 (or set mesh.data/fsdp/tensor).
"""

from a3jax.configs.presets import llama3_1b as base


def get_config():
    config = base.get_config()
    m = config.model
    m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.ffn_dim = 4096, 32, 32, 8, 128, 14336
    m.tie_embeddings = False
    m.rope_scaling.factor = 8.0
    config.mesh.presets = {"8xH100": (1, 8, 1), "v5p-128": (1, 64, 1), "v6e-256": (1, 64, 4)}
    config.train.batch_size = 256
    return config
