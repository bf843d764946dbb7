"""The shifted-query study (issue 22), on the demo's subword setup: a byte-level BPE of 2,048 tokens
trained on the training files (ROOT/tokenizer.json, by `a3jax sweep`: BPE_VOCAB), rows of 96 tokens,
batch 16, 3 layers, d_model 128. Every arm sees the same training tokens, 1,800 steps x 16 x 96:
  causal          the causal AR control, 1,800 steps
  pretrain        the causal model the adapted arms start from, 1,200 steps (the demo's stage 1)
  vector_adapted  pretrain converted to A3 with the paper's query vector, adapted 600 steps through
                  the five stages at lr 3e-3 (the demo before this study)
  shift_adapted   the same with model.query_input=shift (the converted model IS pretrain under ar)
  vector_scratch  A3 from scratch, 1,800 steps, the tiny default's mixture
                  (0.5 ar + 0.25 span + 0.25 random_sizes(1,8)), query vector
  shift_scratch   the same with the shifted query stream
and, with the shifted query stream, the group-size curricula of the earlier byte-level study for
the 600 adaptation steps:
  shift_direct    random_sizes(1,8) from the first step
  shift_mix       0.5*ar + 0.5*random(4)
and the adaptation's learning rate, added after seed 0 showed the shifted model's `ar` loss rising
in the first (ar) stage at 3e-3 (1.519 -> 1.644 bits per byte: the converted model starts AT the
causal model, so a restart at the pretraining's peak rate only disturbs it):
  shift_adapted_lr1e3, shift_mix_lr1e3   the same at lr 1e-3
and, after seed 0 showed shift_mix best under `ar` and `random(4)` but below the paper's stages on
span infilling, a mixture that also trains the infilling pattern (a span predicted last):
  shift_spanmix   0.4*ar + 0.3*random(4) + 0.3*span(0.05,0.3)
each with seeds 0 and 1; the adapted arms (600 steps each) run first, seed by seed (a pretrain
point before the points adapted from it), then the 1,800-step arms.

Post-training eval: held-out bits per byte under ar, random(4) and blocks(8) (64 rows); greedy
infilling of the demo's 64 natural held-out spans (identifiers, return expressions, argument lists,
docstring lines; token accuracy and exact match); speculative(4) on those spans at temperature 1
(tokens per model call, first-draft acceptance).

    a3jax sweep --config experiments/ablation_shift.py --root runs/ablation_shift
    a3jax report runs/ablation_shift --out docs/ablation/shift

Budget: about 90 minutes on 2 CPU cores.
"""

from a3jax.configs.presets import curricula, tiny

# the demo's setup when the study ran (a3jax/configs/presets/demo.py has since taken its outcome)
BPE_VOCAB = 2048  # `a3jax sweep` trains ROOT/tokenizer.json and points every run at it
PRETRAIN, ADAPT = 1200, 600
STEPS = PRETRAIN + ADAPT  # 1,800 x 16 x 96 = 2,764,800 training tokens per arm
SEEDS = (0, 1)
ORDERS = ("ar", "random(4)", "blocks(8)")
CAUSAL = {"model.variant": "causal", "model.query_input": "vector", "orders.curriculum": "ar",
          "orders.eval": ("ar",)}
SCRATCH = {"model.variant": "a3", "train.steps": STEPS, "train.lr": 3e-3, "train.warmup_steps": 50,
           "orders.curriculum": curricula.curriculum("mixture", STEPS)}
ADAPTED = {"model.variant": "a3", "train.steps": ADAPT, "train.lr": 3e-3, "train.warmup_steps": 30,
           "train.weight_decay": 0.01, "orders.curriculum": curricula.curriculum("paper_5_stage", ADAPT)}


MIX = "0.5*ar + 0.5*random(4)"
SPANMIX = "0.4*ar + 0.3*random(4) + 0.3*span(0.05,0.3)"


def adapted_points(seed: int):
    pretrained = {"train.init_from": f"{{root}}/pretrain-s{seed}"}
    shift, vector = {"model.query_input": "shift"}, {"model.query_input": "vector"}
    return [
        ("pretrain", {**CAUSAL, "train.steps": PRETRAIN}),
        ("vector_adapted", {**ADAPTED, **pretrained, **vector}),
        ("shift_adapted", {**ADAPTED, **pretrained, **shift}),
        ("shift_direct", {**ADAPTED, **pretrained, **shift, "orders.curriculum": "random_sizes(1,8)"}),
        ("shift_mix", {**ADAPTED, **pretrained, **shift, "orders.curriculum": MIX}),
        ("shift_adapted_lr1e3", {**ADAPTED, **pretrained, **shift, "train.lr": 1e-3}),
        ("shift_mix_lr1e3", {**ADAPTED, **pretrained, **shift, "orders.curriculum": MIX, "train.lr": 1e-3}),
        ("shift_spanmix", {**ADAPTED, **pretrained, **shift, "orders.curriculum": SPANMIX}),
    ]


def long_points(seed: int):
    shift, vector = {"model.query_input": "shift"}, {"model.query_input": "vector"}
    return [
        ("causal", {**CAUSAL, "train.steps": STEPS}),
        ("vector_scratch", {**SCRATCH, **vector}),
        ("shift_scratch", {**SCRATCH, **shift}),
    ]


def get_config():
    # the demo's shape, batch and adaptation schedule (weight decay 0.01 and 30 warmup steps for
    # every arm, the causal ones included); the points set the rest
    config = tiny.get_config()
    config.data.seq_len = 96
    config.model.variant = "a3"
    config.orders.curriculum = curricula.curriculum("paper_5_stage", ADAPT)
    config.orders.eval = ORDERS
    t = config.train
    t.batch_size, t.steps, t.lr, t.warmup_steps, t.weight_decay = 16, ADAPT, 3e-3, 30, 0.01
    t.log_every, t.eval_rows = 25, 64
    t.eval_every = t.checkpoint_every = 600
    return config


def get_sweep():
    runs = [(seed, name, overrides) for seed in SEEDS for name, overrides in adapted_points(seed)]
    runs += [(seed, name, overrides) for seed in SEEDS for name, overrides in long_points(seed)]
    return [{"name": f"{name}-s{seed}", "overrides": {**overrides, "seed": seed}} for seed, name, overrides in runs]


def get_eval():
    return {"orders": list(ORDERS), "nll_rows": 64, "nll_batch_size": 16, "infill": None,
            "spans": {"per_kind": 16, "seed": 0, "plan": "ar"},
            "speculative": {"k": 4, "temperature": 1.0, "seed": 0}}
