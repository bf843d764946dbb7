"""`make demo`: the paper's recipe on the tiny shape, on the embedded stdlib corpus, in minutes on
a laptop CPU. A causal LLaMA (the AR model the paper starts from) is pretrained left to right,
converted to A3 in-process (every weight copied, plus the query vector), then adapted through the
paper's five stages (ar -> blocks(2) -> blocks(4) -> random(4) -> random(8)).

Tokens: a byte-level BPE of BPE_VOCAB tokens that `a3jax demo` trains once on the training files
(about 3.2 bytes per token on the stdlib), so rows of SEQ_LEN tokens hold about 300 bytes (a
short function) and identifiers are one or two tokens. Without the demo command (`a3jax train
--config=demo`) data.tokenizer is 'bytes'. The shape, tokenizer and schedule were chosen by
measurement (BENCHMARKS.md, "make demo"). `pretrain_config()` and `get_config()` (the
adaptation) are the two stages; --config=demo resolves to the adaptation.
"""

from a3jax.configs.presets import curricula, tiny

BPE_VOCAB = 2048
SEQ_LEN = 96
PRETRAIN_STEPS = 1200
ADAPT_STEPS = 600


def _base():
    config = tiny.get_config()
    config.data.seq_len = SEQ_LEN
    t = config.train
    t.batch_size, t.log_every, t.eval_rows = 16, 25, 64
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
    t.steps, t.lr, t.warmup_steps, t.weight_decay = ADAPT_STEPS, 3e-3, 30, 0.01
    t.eval_every = t.checkpoint_every = ADAPT_STEPS // 3
    return config
