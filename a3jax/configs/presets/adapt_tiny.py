"""The paper's progressive adaptation (AR model -> A3) on the tiny shape, and the whole story offline.

Curriculum (official README): stage 0 AR -> 1 contiguous groups of 2 -> 2 contiguous groups of 4
-> 3 groups of 4 scattered positions in random order -> 4 the same with 8. AdamW, weight decay
0.01, 50 warmup steps (the paper's lr 2e-5 is for pretrained 1B/8B models, see
adapt_llama3_1b.py; this tiny, briefly trained model adapts at its pretraining's lr, 3e-3, which
beat 1e-3 under `ar` and `random(4)` on both seeds of docs/ablation's adaptation study). The paper does not give
stage lengths: each stage here gets an equal share of train.steps (STAGE_FRACTIONS).

As a config:  a3jax convert --from-hf HF --out W --config adapt_tiny
              a3jax train --workdir W --config W/experiment.py
As a script:  python experiments/adapt_tiny.py [--workdir runs/adapt_tiny]
  1. trains a tiny `causal` LLaMA on the stdlib corpus with a3jax,
  2. exports it to HF format (a3jax export), 3. converts it back as `a3` (a3jax convert),
  4. evaluates the converted model (NLL per token under ar and random orders), runs the five
  stages, evaluates again, and prints the numbers (also written to WORKDIR/results.json).
"""

from a3jax.configs.presets import tiny

STAGES = ("ar", "blocks(2)", "blocks(4)", "random(4)", "random(8)")
STAGE_FRACTIONS = (0.2, 0.4, 0.6, 0.8)  # stage k runs until this share of train.steps


def adaptation_curriculum(steps: int) -> str:
    """'ar until a; blocks(2) until b; blocks(4) until c; random(4) until d; random(8)'."""
    bounds = [max(int(round(f * steps)), i + 1) for i, f in enumerate(STAGE_FRACTIONS)]
    return "; ".join(f"{s} until {b}" for s, b in zip(STAGES, bounds)) + f"; {STAGES[-1]}"


def apply_adaptation(config, steps: int, lr: float):
    """The adaptation recipe on any base config (also used by the 1B / 8B configs)."""
    config.model.variant = "a3"
    config.orders.curriculum = adaptation_curriculum(steps)
    config.orders.group_size_scope = "example"
    config.orders.eval = ("ar", "blocks(4)", "random(4)", "random(8)")
    t = config.train
    t.steps, t.lr, t.weight_decay, t.warmup_steps = steps, lr, 0.01, 50
    t.b1, t.b2 = 0.9, 0.95
    return config


def get_config():
    config = tiny.get_config()
    apply_adaptation(config, steps=400, lr=3e-3)
    config.train.eval_every = 80
    config.train.checkpoint_every = 80
    return config


def causal_config(steps: int):
    """The tiny AR model the story starts from (what a pretrained LLaMA is to the paper)."""
    config = tiny.get_config()
    config.model.variant = "causal"
    config.orders.curriculum = "ar"
    config.orders.eval = ("ar",)
    config.train.steps = steps
    config.train.eval_every = steps
    config.train.checkpoint_every = steps
    return config
