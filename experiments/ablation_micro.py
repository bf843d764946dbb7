"""A 2-point sweep on a micro shape (seconds on CPU): the end-to-end test of `a3jax sweep` and
`a3jax report` (tests/test_sweep.py).

    a3jax sweep --config experiments/ablation_micro.py --root runs/ablation_micro
    a3jax report runs/ablation_micro --out runs/ablation_micro/report
"""

from a3jax.configs.presets import curricula, tiny

STEPS = 6


def get_config():
    config = tiny.get_config()
    m = config.model
    m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim = 32, 1, 2, 1, 64
    config.data.seq_len = 32
    config.data.max_files = 30  # the first 30 stdlib files; >= 1 held out
    config.data.eval_fraction = 0.1
    config.mesh.devices = 1  # one device, whatever XLA_FLAGS fakes
    config.orders.eval = ("ar", "random(2)")
    t = config.train
    t.batch_size, t.steps, t.warmup_steps = 4, STEPS, 2
    t.log_every, t.eval_every, t.eval_rows, t.checkpoint_every = 1, STEPS, 4, 3
    return config


def get_sweep():
    return [
        {"name": "causal-s0", "overrides": {"model.variant": "causal", "orders.curriculum": "ar", "seed": 0}},
        {"name": "a3_direct-s0", "overrides": {"model.variant": "a3", "seed": 0,
                                                "orders.curriculum": curricula.curriculum("direct_any_order", STEPS)}},
    ]


def get_eval():
    return {"orders": ["ar", "random(2)"], "nll_rows": 4, "nll_batch_size": 4,
            "infill": {"span": 8, "num_examples": 2, "seed": 0, "batch_size": 2, "plans": ["ar", "blocks(4)"]}}
