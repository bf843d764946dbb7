"""`make demo`: the paper's recipe on the tiny shape, on the embedded stdlib corpus, in minutes on
a laptop CPU. A causal LLaMA (the AR model the paper starts from) is pretrained left to right,
converted to A3 in-process (every weight copied, plus the query vector), then adapted through the
paper's five stages (ar -> blocks(2) -> blocks(4) -> random(4) -> random(8)).

Rows of 256 bytes, so a short function fits in one row; the shape and the schedule were chosen by
measurement (BENCHMARKS.md, "make demo"). `pretrain_config()` and `get_config()` (the adaptation)
are the two stages; --config=demo resolves to the adaptation.
"""

from a3jax.configs.presets import curricula, tiny

SEQ_LEN = 256
PRETRAIN_STEPS = 700
ADAPT_STEPS = 300


def _base():
    config = tiny.get_config()
    config.data.seq_len = SEQ_LEN
    t = config.train
    t.batch_size, t.log_every, t.eval_rows = 8, 25, 64
    return config


def pretrain_config():
    """Stage 1: a causal LLaMA trained left to right."""
    config = _base()
    config.model.variant = "causal"
    config.orders.curriculum, config.orders.eval = "ar", ("ar",)
    t = config.train
    t.steps, t.lr, t.warmup_steps = PRETRAIN_STEPS, 3e-3, 50
    t.eval_every = t.checkpoint_every = PRETRAIN_STEPS // 2
    return config


def get_config():
    """Stage 2: the converted model adapted to any order through the paper's five stages."""
    config = _base()
    config.model.variant = "a3"
    config.orders.curriculum = curricula.curriculum("paper_5_stage", ADAPT_STEPS)
    config.orders.eval = ("ar", "random(4)")
    t = config.train
    t.steps, t.lr, t.warmup_steps, t.weight_decay = ADAPT_STEPS, 1e-3, 30, 0.01
    t.eval_every = t.checkpoint_every = ADAPT_STEPS // 3
    return config
