"""The real-model study (issue 39, item 4): SmolLM2-135M-Instruct, converted from its GGUF with the
shifted query stream (under `ar` it IS the pretrained model), adapted to any order on a 2-core CPU.

    a3jax fetch smollm2
    a3jax convert --from-gguf ~/.cache/a3jax/SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2/converted
    a3jax sweep --config experiments/ablation_smollm2.py --root runs/smollm2/study
    a3jax sweep --config experiments/ablation_smollm2.py --root runs/smollm2/study --evaluate runs/smollm2/converted
    a3jax report runs/smollm2/converted runs/smollm2/study --out docs/ablation/smollm2

Corpus: data.source=offline, English and code every offline Python install has (the stdlib's
documentation topics and the installed packages' descriptions; stdlib .py files, half the bytes),
a tenth of the documents held out by a hash of their names: whole documents, so no held-out text
was seen in training, and both kinds are held out. Every arm: 200 steps of 8 x 128 tokens
(204,800 training tokens, about 30 minutes at ~9.1 s a step, 45 with the evaluations), AdamW
(weight decay 0.01, b2 0.95), 20 warmup steps, cosine to a tenth; held-out bits per byte under ar,
random(4) and blocks(8) every 50 steps (64 rows: the curve by token count). Arms:
  mix_lr1e-4    0.5*ar + 0.5*random(4) at lr 1e-4 (the adapt_smollm2 preset's mix and lr)
  mix_lr3e-4    the same at lr 3e-4: faster to learn the query stream, or harmful to `ar`?
Resume either with the same command (checkpoints every 25 steps); longer runs: `train.steps`.
Run on 2026-12-07: both arms, one after the other (`--only NAME`: each needed the 2-core machine
alone then, its step peaking at 22 GB RSS; 8.5 GB since host_memory.fit_model, 2026-12-08), and
the unadapted start with `--evaluate runs/smollm2/converted`. Results: docs/ablation/smollm2.
Post-training eval: the same orders on 128 rows; greedy infilling of natural held-out code spans (16 of
each kind asked for; 50 found)
(token accuracy, exact match); speculative(4) on those spans at temperature 1 (calls and passes
per token, acceptance by draft position). PIQA and LAMBADA under `ar`: `a3jax bench scorers`.
"""

from a3jax.configs.presets import adapt_smollm2

ORDERS = ("ar", "random(4)", "blocks(8)")
STEPS = 200
CONVERTED = "{root}/../converted"  # the conversion the arms start from (and whose tokenizer they use)


def get_config():
    config = adapt_smollm2.get_config()
    config.orders.eval = ORDERS
    config.train.steps = STEPS
    config.train.eval_every = 50
    return config


def get_sweep():
    start = {"train.init_from": CONVERTED, "data.tokenizer": f"{CONVERTED}/tokenizer.json"}
    arms = [
        ("mix_lr1e-4", {}),
        ("mix_lr3e-4", {"train.lr": 3e-4}),
    ]
    return [{"name": f"{name}-s0", "overrides": {**start, **overrides, "seed": 0}} for name, overrides in arms]


def get_eval():
    return {"orders": list(ORDERS), "nll_rows": 128, "nll_batch_size": 8, "infill": None,
            "spans": {"per_kind": 16, "seed": 0, "plan": "ar"},
            "speculative": {"k": 4, "temperature": 1.0, "seed": 0}}
