"""A3 on the Llama-3.2-1B shape (seq 2048, bf16), with mesh presets for real clusters.

Pick a preset with --config.mesh.preset=8xH100 | v5p-128 | v6e-256 (or set mesh.data/fsdp/tensor).
Data: point data.source / data.paths at shards made by `a3jax prepare` with the Llama 3 tokenizer.
"""

from a3jax.configs.presets import tiny


def get_config():
    config = tiny.get_config()
    m = config.model
    m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads = 128256, 2048, 16, 32, 8
    m.head_dim, m.ffn_dim, m.rope_theta, m.tie_embeddings = 64, 8192, 500000.0, True
    m.rope_scaling.kind, m.rope_scaling.factor = "llama3", 32.0
    m.rope_scaling.low_freq_factor, m.rope_scaling.high_freq_factor = 1.0, 4.0
    m.rope_scaling.original_max_position = 8192
    m.dtype, m.remat, m.attention = "bfloat16", "dots", "auto"
    config.data.seq_len = 2048
    config.data.source = "arrayrecord"
    config.data.tokenizer = "bytes"  # set to the Llama 3 tokenizer.json used by `a3jax prepare`
    config.orders.curriculum = "random_sizes(1,8)"
    config.mesh.preset = ""
    config.mesh.presets = {"8xH100": (1, 8, 1), "v5p-128": (1, 64, 1), "v6e-256": (1, 256, 1)}
    t = config.train
    t.batch_size, t.steps, t.lr, t.warmup_steps = 256, 20000, 3e-4, 1000
    t.log_every, t.eval_every, t.checkpoint_every = 10, 1000, 1000
    # From the step's memory plan on an H100 (a3jax bench plan --target h100; BENCHMARKS.md): the
    # [B, N, V] logits cost 5.6 GiB per 4 rows, so the loss is computed 2,048 rows at a time. An
    # A3 micro-batch of 8 rows plans 46.5 GiB, inside the 75% of an 80 GB card that JAX takes by
    # default (the largest A3 batch on the whole card is 18 rows, 36 causal): 256 rows on 8 GPUs
    # are 32 per GPU, taken as 4 micro-batches of 8 (gradients summed: the same step as one batch
    # of 256). With XLA_PYTHON_CLIENT_MEM_FRACTION=0.95, grad_accum=2 (16 rows) fits too.
    t.loss_chunk = 2048
    t.grad_accum = 4
    return config
