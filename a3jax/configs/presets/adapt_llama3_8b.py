"""Progressive adaptation of Llama-3.1-8B into A3 (the paper's recipe on experiments/llama3_8b.py).

Curriculum: ar -> blocks(2) -> blocks(4) -> random(4) -> random(8), equal shares of the steps
(see adapt_tiny.py); AdamW lr 2e-5, weight decay 0.01, 50 warmup steps; seq 2048, bf16.
Steps: 8B tokens (the paper's budget for its main 8B model) at batch 256 x 2048 tokens.

    a3jax convert --from-hf Llama-3.1-8B --out runs/a3-8b --config experiments/adapt_llama3_8b.py
    a3jax train --workdir runs/a3-8b --config runs/a3-8b/experiment.py \
        --config.data.paths=<shards from `a3jax prepare` with the copied tokenizer.json> \
        --config.mesh.preset=8xH100
"""

from a3jax.configs.presets import adapt_llama3_1b as recipe  # the same recipe on the 8B shape
from a3jax.configs.presets import llama3_8b

TOKENS = 8_000_000_000


def get_config():
    return recipe.adaptation_config(llama3_8b, TOKENS)
