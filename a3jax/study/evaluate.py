"""Post-training evaluation of one finished point (the eval_final.json record): held-out NLL under
the sweep's orders, an NLL upper bound for a variant without exact likelihoods, and span infilling
with each decoding plan.

What a model can be measured on comes from its variant's policy (a3jax/variants.py); a
measurement it cannot make (a causal model under a random order, or decoding it by blocks) is
recorded as null with the reason, and a measurement that fails is recorded with its error, so one
point's problem never stops the sweep (A3JAX_DEBUG=1 raises instead).
"""

from __future__ import annotations

import math
import os
import pathlib
import time

from a3jax.study.spec import Point, group_of

INFILL_METRICS = ("exact_match", "rouge1", "rouge2", "rougeL", "token_acc", "examples", "span_tokens")


def one_line(error: BaseException) -> str:
    """An error as one line of at most ~400 characters, with its type."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:400]}"


def decoding_steps(plan: str, span: int) -> int:
    """Decoding calls a plan takes to fill `span` unknown tokens."""
    from a3jax.decode.plans import parse_plan

    parsed = parse_plan(plan)
    if parsed.k:
        return math.ceil(span / parsed.k)
    return min(parsed.steps, span)


def _order_unavailable(policy, order: str) -> str | None:
    """Why the variant's held-out NLL under `order` is not measured (None: it is)."""
    if not policy.exact_likelihood:
        return (f"a model.variant={policy.name!r} model is not scored under generation orders here; its "
                "held-out NLL is reported as an upper bound (nll_bound)")
    if policy.evaluates_under(order):
        return None
    if policy.only_order == "ar":
        return (f"a {policy.name} model predicts the next token: its likelihood is defined only under "
                "the 'ar' order")
    try:
        policy.check_scoring_orders([order])
    except ValueError as error:
        return str(error)
    return None


def _plan_unavailable(policy, plan: str, mode: str) -> str | None:
    """Why the variant cannot decode with `plan` in `mode` (None: it can)."""
    from a3jax.decode.plans import parse_plan

    try:
        policy.check_decode(plan, parse_plan(plan).kind, mode)
    except ValueError as error:
        if policy.decode_plan == "ar":
            return f"a {policy.name} model decodes left to right only (plan 'ar')"
        return str(error)
    return None


def _final_bounds(workdir: pathlib.Path, step: int) -> dict:
    """The training loop's eval at `step` of quantities that are bounds (keys eval/NAME/..._bound),
    e.g. the masked-diffusion ELBO: {"mdlm": {"nll_bound": ..., "bits_per_byte_bound": ...}}."""
    from a3jax.train.metrics import read_metrics

    try:
        records = read_metrics(workdir)
    except (OSError, ValueError):
        return {}
    bounds = {}
    for record in records:
        if record.get("step") != step:
            continue
        for key, value in record.items():
            if key.startswith("eval/") and key.endswith("_bound"):
                name, _, metric = key[len("eval/"):].rpartition("/")
                bounds.setdefault(name or "model", {})[metric] = value
    for values in bounds.values():
        values["source"] = f"metrics.jsonl, the training loop's eval at step {step} (train.eval_rows rows)"
    return bounds


def _bounds(corpus, loaded, settings: dict, workdir: pathlib.Path) -> dict:
    """NLL upper bounds of a model without order likelihoods, under its config's own eval orders
    (mdlm: the ELBO), on the same held-out rows as the orders; else the training loop's last eval."""
    from a3jax.eval import tasks

    exp = loaded.experiment
    specs = list(exp.orders.eval)
    try:
        out = tasks.nll_under_orders(exp, corpus, loaded.tokenizer, loaded.model_def, loaded.params, specs,
                                     settings["nll_rows"], batch_size=settings["nll_batch_size"])
    except Exception as error:  # noqa: BLE001 - fall back to the logged eval
        if os.environ.get("A3JAX_DEBUG"):
            raise
        bounds = _final_bounds(workdir, int(loaded.step))
        for values in bounds.values():
            values["note"] = f"post-training bound failed ({one_line(error)})"
        return bounds
    bounds = {}
    for key, value in out.items():
        spec, _, metric = key.partition("/")
        if spec in specs and metric and metric != "targets":
            bounds.setdefault(spec, {})[metric if metric.endswith("_bound") else f"{metric}_bound"] = value
    for values in bounds.values():
        values["rows"] = out["rows"]
        values["source"] = "post-training eval on the same held-out rows as the orders"
    return bounds


def _nll(record: dict, policy, corpus, loaded, settings: dict) -> None:
    """Fills record["nll"] (and "unavailable") for the orders the variant is scored under."""
    from a3jax.eval import tasks

    usable = []
    for order in settings["orders"]:
        why = _order_unavailable(policy, order)
        if why is None:
            usable.append(order)
            continue
        record["nll"][order] = None
        record["unavailable"][f"nll/{order}"] = why
    if not usable:
        return
    try:
        out = tasks.nll_under_orders(loaded.experiment, corpus, loaded.tokenizer, loaded.model_def,
                                     loaded.params, usable, settings["nll_rows"],
                                     batch_size=settings["nll_batch_size"])
        for order in usable:
            record["nll"][order] = {"nll": out[f"{order}/nll"], "bits": out[f"{order}/bits_per_byte"],
                                    "unit": "byte", "targets": out[f"{order}/targets"], "rows": out["rows"]}
    except Exception as error:  # noqa: BLE001 - recorded, the sweep goes on
        if os.environ.get("A3JAX_DEBUG"):
            raise
        for order in usable:
            record["nll"][order] = None
            record["unavailable"][f"nll/{order}"] = f"failed: {one_line(error)}"


def _infill(record: dict, policy, corpus, loaded, infill: dict) -> None:
    """Appends one record["infill"] entry per plan: decoding steps, mode and metrics (or None)."""
    from a3jax.eval import tasks

    mode = policy.decode_modes[0]  # cached where the variant has a cache, else recompute
    parts = tasks.model_parts(loaded)
    for plan in infill["plans"]:
        entry = {"plan": plan, "steps": decoding_steps(plan, int(infill["span"])), "mode": mode}
        why = _plan_unavailable(policy, plan, mode)
        if why is not None:
            record["unavailable"][f"infill/{plan}"] = why
            entry["metrics"] = None
        else:
            try:
                out = tasks.infill(parts, corpus, mode=mode, span=int(infill["span"]),
                                   num_examples=int(infill["num_examples"]), seed=int(infill["seed"]), plan=plan,
                                   temperature=float(infill["temperature"]), batch_size=int(infill["batch_size"]))
                entry["metrics"] = {k: out[k] for k in INFILL_METRICS}
            except Exception as error:  # noqa: BLE001
                if os.environ.get("A3JAX_DEBUG"):
                    raise
                record["unavailable"][f"infill/{plan}"] = f"failed: {one_line(error)}"
                entry["metrics"] = None
        record["infill"].append(entry)


def _natural_spans(record: dict, policy, corpus, loaded, settings: dict) -> None:
    """record["extra"]: greedy infilling of the natural held-out spans (token accuracy, exact match)
    and speculative(k) sampling of them (tokens per call, first-draft acceptance), when asked."""
    from a3jax.eval import tasks
    from a3jax.eval.spans import find_spans

    spans_settings, speculative = settings.get("spans"), settings.get("speculative")
    if not spans_settings:
        return
    extra = record.setdefault("extra", {})
    parts = tasks.model_parts(loaded)
    spans = find_spans(corpus.eval_docs, loaded.tokenizer, loaded.experiment.data.seq_len,
                       int(spans_settings["per_kind"]), seed=int(spans_settings["seed"]))
    plan, mode = spans_settings["plan"], policy.decode_modes[0]
    why = _plan_unavailable(policy, plan, mode) if spans else "no natural span in the held-out files"
    if why is None:
        out = tasks.infill_spans(parts, spans, plan=plan, mode=mode)
        extra["spans token acc"] = out["token_acc"]
        extra["spans exact match"] = out["exact_match"]
    else:
        record["unavailable"]["spans"] = why
    if not speculative:
        return
    k = int(speculative["k"])
    why = _plan_unavailable(policy, f"speculative({k})", "cached") if spans else "no natural span"
    if why is not None:
        record["unavailable"][f"speculative({k})"] = why
        return
    out = tasks.speculative_calls(parts, [(s.window, s.start, s.stop) for s in spans], k=k,
                                  temperature=float(speculative["temperature"]), seed=int(speculative["seed"]))
    extra[f"speculative({k}) tokens/call"] = out["tokens_per_call"]
    extra[f"speculative({k}) tokens/pass"] = out["tokens_per_pass"]
    extra[f"speculative({k}) accept 2nd draft"] = out["acceptance_by_position"][1] if k > 1 else None


def evaluate_point(workdir: str | pathlib.Path, settings: dict, *, point: Point | None = None,
                   corpus=None) -> dict:
    """Post-training metrics of a workdir's latest checkpoint (the eval_final.json record).

    settings: spec.eval_settings(...) of the point; corpus: the point's corpus when the caller
    already loaded it (else it is loaded from the checkpoint's config)."""
    from a3jax.data import load_corpus
    from a3jax.inference import load_model

    workdir = pathlib.Path(workdir)
    started = time.perf_counter()
    loaded = load_model(workdir)
    exp, variant, tokenizer = loaded.experiment, loaded.cfg.variant, loaded.tokenizer
    policy = loaded.cfg.facts
    if corpus is None:
        corpus = load_corpus(exp.data, tokenizer)
    name = point.name if point else workdir.name
    record = {
        "point": name, "group": point.group if point else group_of(name), "workdir": str(workdir),
        "step": int(loaded.step), "steps": exp.train.steps, "variant": variant,
        "curriculum": exp.orders.curriculum, "seed": exp.seed,
        "tokens_seen": int(loaded.step) * exp.tokens_per_step,
        "settings": settings, "nll": dict.fromkeys(settings["orders"]), "nll_bound": {}, "infill": [],
        "unavailable": {},
    }
    _nll(record, policy, corpus, loaded, settings)
    if not policy.exact_likelihood:  # no order likelihoods (mdlm): its own eval orders give a bound
        record["nll_bound"] = _bounds(corpus, loaded, settings, workdir)
    _infill(record, policy, corpus, loaded, settings["infill"])
    _natural_spans(record, policy, corpus, loaded, settings)
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record
