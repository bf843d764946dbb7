"""Progressive adaptation of Llama-3.2-1B into A3 (the paper's recipe on experiments/llama3_1b.py).

Curriculum: ar -> blocks(2) -> blocks(4) -> random(4) -> random(8), equal shares of the steps
(see adapt_tiny.py); AdamW lr 2e-5, weight decay 0.01, 50 warmup steps; seq 2048, bf16.
Steps: 2B tokens (the paper's ablation budget) at batch 256 x 2048 tokens.

    a3jax convert --from-hf Llama-3.2-1B --out runs/a3-1b --config experiments/adapt_llama3_1b.py
    a3jax train --workdir runs/a3-1b --config runs/a3-1b/experiment.py \
        --config.data.paths=<shards from `a3jax prepare` with the copied tokenizer.json> \
        --config.mesh.preset=8xH100
"""

from a3jax.configs.presets import adapt_tiny as adapt
from a3jax.configs.presets import llama3_1b as base

TOKENS = 2_000_000_000


def adaptation_config(base_module, tokens: int):
    """The paper's recipe (lr 2e-5) on `base_module`'s shape, with steps for `tokens` tokens."""
    config = base_module.get_config()
    steps = round(tokens / (config.train.batch_size * config.data.seq_len))
    adapt.apply_adaptation(config, steps=steps, lr=2e-5)
    config.train.eval_every = config.train.checkpoint_every = 500
    return config


def get_config():
    return adaptation_config(base, TOKENS)
