"""The small-scale curriculum study (issue 9): at equal training tokens, on the embedded stdlib corpus
and the tiny shape (experiments/tiny.py), compare
  (a) causal_ar   the `causal` AR control (single stream, next token)
  (b) a3_direct   A3 from scratch, any-order from step 0 (random groups of 1..8 positions)
  (c) a3_paper5   A3 from scratch with the paper's progressive curriculum, stage 0 = AR
                  (ar -> blocks(2) -> blocks(4) -> random(4) -> random(8), equal shares)
  (d) mdlm        the masked-diffusion control (variant `mdlm`, curriculum `mdlm`); its NLL is
                  an upper bound (the ELBO), reported as such
each with seeds 0 and 1 (all seed-0 points run first). Every point trains STEPS steps of
batch 8 x seq 128 (the same tokens) with the same optimizer and schedule.

Post-training eval (get_eval): held-out NLL under ar, random(1) and random(4) on 64 held-out rows;
infilling of 32-token spans in 16 held-out windows, greedy, with plans ar (32 decoding steps),
blocks(4) (8 steps) and blocks(8) (4 steps); a causal model is scored under ar only.

    a3jax sweep --config experiments/ablation_small.py --root runs/ablation_small
    a3jax sweep --config experiments/ablation_small.py --root runs/ablation_small --only 'causal_ar*,a3_*'
    a3jax report runs/ablation_small --out docs/ablation

Budget: about 45 minutes on 2 CPU cores (see STEPS).
"""

from a3jax.configs.presets import curricula, tiny

STEPS = 800  # x 8 x 128 = 819,200 training tokens per point
SEEDS = (0, 1)
ORDERS = ("ar", "random(1)", "random(4)")
POINTS = (
    ("causal_ar", {"model.variant": "causal", "orders.curriculum": curricula.curriculum("ar_only", STEPS)}),
    ("a3_direct", {"model.variant": "a3", "orders.curriculum": curricula.curriculum("direct_any_order", STEPS)}),
    ("a3_paper5", {"model.variant": "a3", "orders.curriculum": curricula.curriculum("paper_5_stage", STEPS)}),
    # the masked-diffusion control trains and is evaluated under its own 'mdlm' order only (its NLL
    # bound), and needs one more vocabulary id for its MASK token (259 byte-tokenizer ids + MASK)
    ("mdlm", {"model.variant": "mdlm", "orders.curriculum": "mdlm", "orders.eval": "mdlm",
              "model.vocab_size": 260}),
)


def get_config():
    config = tiny.get_config()
    config.orders.eval = ORDERS
    t = config.train
    t.steps = STEPS
    t.log_every = 10
    t.eval_every = STEPS // 4
    t.eval_rows = 64
    t.checkpoint_every = STEPS // 4
    return config


def get_sweep():
    return [{"name": f"{name}-s{seed}", "overrides": {**overrides, "seed": seed}}
            for seed in SEEDS for name, overrides in POINTS]


def get_eval():
    return {"orders": list(ORDERS), "nll_rows": 64, "nll_batch_size": 16,
            "infill": {"span": 32, "num_examples": 16, "seed": 0, "temperature": 0.0, "batch_size": 16,
                       "plans": ["ar", "blocks(4)", "blocks(8)"]}}
