"""A converted pretrained LLaMA adapted to any order on a laptop CPU: the defaults of
`a3jax convert --from-gguf` (SmolLM2-135M-Instruct and models of its size).

    a3jax fetch smollm2
    a3jax convert --from-gguf ~/.cache/a3jax/SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2
    a3jax train --workdir runs/smollm2 --config runs/smollm2/experiment.py

The model section comes from the file (30 layers, d_model 576, ...) except what is set here: the
shifted query stream (under `ar` the converted model IS the pretrained LLaMA; docs/ablation/shift),
float32 (XLA:CPU runs no faster in bfloat16: 9.9 vs 9.5 s a step, BENCHMARKS.md, issue 39).
Data: English and code that every offline Python install has (data.source=offline: the stdlib's
documentation topics and installed packages' descriptions, stdlib .py files; a tenth of the
documents held out by a hash of their names). Schedule: half `ar` (it keeps the pretrained path),
half `random(4)`, for 400 steps of 8 x 128 tokens (410k tokens, about an hour on 2 cores at ~9 s a
step), AdamW at lr 1e-4 (the paper's 2e-5 is for 2B tokens; the study in docs/ablation/smollm2
compares lrs) after 20 warmup steps, cosine to a tenth; a checkpoint every 25 steps (resumable).
"""

from a3jax.configs.presets import tiny

STEPS = 400


def get_config():
    config = tiny.get_config()
    m = config.model
    # SmolLM2-135M's architecture (what `a3jax convert --from-gguf` reads from its file anyway), so
    # that a run can start from a converted workdir with train.init_from
    m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim = 49152, 576, 30, 9, 3, 64
    m.ffn_dim, m.rope_theta, m.norm_eps, m.tie_embeddings = 1536, 100000.0, 1e-5, True
    m.variant, m.query_input, m.dtype = "a3", "shift", "float32"
    d = config.data
    d.source, d.eval_fraction, d.seq_len = "offline", 0.1, 128
    config.orders.curriculum = "0.5*ar + 0.5*random(4)"
    config.orders.eval = ("ar", "random(4)", "blocks(8)")
    t = config.train
    t.batch_size, t.steps, t.lr, t.warmup_steps, t.min_lr_ratio = 8, STEPS, 1e-4, 20, 0.1
    t.weight_decay, t.b1, t.b2 = 0.01, 0.9, 0.95
    t.log_every, t.eval_every, t.checkpoint_every, t.eval_rows = 10, 100, 25, 64
    return config
