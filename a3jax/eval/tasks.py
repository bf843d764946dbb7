"""Evaluation tasks: multiple choice (JSONL, PIQA), LAMBADA, held-out NLL under named orders, and
span infilling. Each task returns a dict of metrics plus counts.

A task takes the model as a `a3jax.inference.LoadedModel`, a `ModelParts`, or a tuple
(model_def, params, tokenizer, seq_len).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from a3jax.errors import UserError
from a3jax.eval import metrics as metrics_lib
from a3jax.eval import score as score_lib


@dataclasses.dataclass
class ModelParts:
    model_def: Any
    params: Any
    tokenizer: Any
    seq_len: int


def model_parts(model, seq_len: int | None = None) -> ModelParts:
    """ModelParts of a LoadedModel / ModelParts / (model_def, params, tokenizer, seq_len) tuple."""
    if isinstance(model, ModelParts):
        parts = model
    elif isinstance(model, tuple):
        if len(model) != 4:
            raise UserError(f"a model tuple is (model_def, params, tokenizer, seq_len); got {len(model)} items")
        parts = ModelParts(*model)
    else:  # a3jax.inference.LoadedModel
        parts = ModelParts(model.model_def, model.params, model.tokenizer, model.experiment.data.seq_len)
    if seq_len is not None:
        parts = dataclasses.replace(parts, seq_len=int(seq_len))
    return parts


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of (context, continuation) as lm-evaluation-harness splits them: trailing spaces of
    the context move to the continuation, and the pair is encoded whole then split at the
    context's length (subword merges across the boundary stay with the continuation)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = np.asarray(tokenizer.encode(context + continuation), np.int32)
    head = np.asarray(tokenizer.encode(context), np.int32)
    if head.size <= whole.size and np.array_equal(whole[:head.size], head):
        return head, whole[head.size:]
    return head, np.asarray(tokenizer.encode(continuation), np.int32)


# Multiple choice ----------------------------------------------------------------------------------

def _read_jsonl(path: pathlib.Path) -> list[tuple[int, dict]]:
    """(line number, record) of each non-blank line."""
    if not path.is_file():
        raise UserError(f"data file {path} does not exist; pass an existing JSONL file with --data")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{number}: not valid JSON ({error.msg}); one JSON object per line") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append((number, record))
    if not records:
        raise UserError(f"{path} holds no items")
    return records


def _read_labels(path: pathlib.Path) -> list[tuple[int, int]]:
    if not path.is_file():
        raise UserError(f"labels file {path} does not exist; pass an existing file with --labels")
    labels = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            labels.append((number, int(line.strip())))
        except ValueError:
            raise UserError(f"{path}:{number}: label {line.strip()!r} is not an integer") from None
    return labels


def default_labels_path(path: str | pathlib.Path) -> pathlib.Path:
    """`<stem>-labels.lst` next to the data file (the PIQA layout)."""
    path = pathlib.Path(path)
    return path.with_name(f"{path.stem}-labels.lst")


def load_mc_jsonl(path: str | pathlib.Path, labels: str | pathlib.Path | None = None) -> list[dict]:
    """Multiple-choice items {"context", "choices", "label"} from a JSONL file.

    Lines are either generic ({"context": str, "choices": [str, ...], "label": int}) or PIQA
    ({"goal", "sol1", "sol2"}: context "Question: {goal}\\nAnswer:", choices " {sol}"). Labels come
    from `labels` (one integer per line, aligned with the items), else `<stem>-labels.lst` next to
    the file when it exists, else each line's "label" key.
    """
    path = pathlib.Path(path)
    records = _read_jsonl(path)
    label_path = pathlib.Path(labels) if labels is not None else default_labels_path(path)
    external = None
    if labels is not None or label_path.is_file():
        external = _read_labels(label_path)
        if len(external) != len(records):
            raise UserError(f"{label_path} has {len(external)} labels but {path} has {len(records)} "
                             "items; give one label per item, in the same order")
    items = []
    for index, (number, record) in enumerate(records):
        where = f"{path}:{number}"
        if "goal" in record or "sol1" in record:
            missing = [k for k in ("goal", "sol1", "sol2") if k not in record]
            if missing:
                raise UserError(f"{where}: missing key {missing[0]!r}; a PIQA line has goal, sol1, sol2")
            context = f"Question: {record['goal']}\nAnswer:"
            choices = [f" {record['sol1']}", f" {record['sol2']}"]
        else:
            missing = [k for k in ("context", "choices") if k not in record]
            if missing:
                raise UserError(f"{where}: missing key {missing[0]!r}; each line needs context, choices "
                                 "and label (or goal, sol1, sol2 for PIQA)")
            context, choices = record["context"], record["choices"]
            if not isinstance(context, str):
                raise UserError(f"{where}: context must be a string, got {type(context).__name__}")
            if (not isinstance(choices, list) or len(choices) < 2
                    or not all(isinstance(c, str) and c for c in choices)):
                raise UserError(f"{where}: choices must be a list of at least 2 non-empty strings")
        if external is not None:
            label_where, label = f"{label_path}:{external[index][0]}", external[index][1]
        elif "label" in record:
            label_where, label = where, record["label"]
            if isinstance(label, bool) or not isinstance(label, int):
                raise UserError(f"{where}: label {label!r} is not an integer")
        else:
            raise UserError(f"{where}: no label; add a 'label' key or a labels file "
                             f"({default_labels_path(path).name}, or --labels)")
        if not 0 <= label < len(choices):
            raise UserError(f"{label_where}: label {label} is out of range for {len(choices)} choices "
                             f"(0..{len(choices) - 1})")
        items.append({"context": context, "choices": list(choices), "label": int(label)})
    return items


def multiple_choice(model, items: Sequence[dict], *, batch_size: int = 8, seq_len: int | None = None,
                    context_order: str | None = None, progress: bool = False) -> dict:
    """acc: the choice of highest summed log-likelihood given the context is the label;
    acc_norm: the same with log-likelihood per UTF-8 byte of the choice.

    context_order: how the context is laid out (see `score.loglikelihood`; None = "ar": the
    context left to right, one group per token, for every variant)."""
    parts = model_parts(model, seq_len)
    if not items:
        raise UserError("no multiple-choice items to evaluate")
    requests = []
    for index, item in enumerate(items):
        for number, choice in enumerate(item["choices"]):
            requests.append(encode_pair(parts.tokenizer, item["context"], choice))
            if requests[-1][1].size > parts.seq_len - 1:
                raise UserError(f"item {index}, choice {number}: {requests[-1][1].size} tokens do not fit "
                                 f"seq_len={parts.seq_len} with BOS; raise seq_len (a3jax eval --seq-len)")
    results = score_lib.loglikelihood(parts.model_def, parts.params, requests, seq_len=parts.seq_len,
                                      bos_id=parts.tokenizer.bos_id, pad_id=parts.tokenizer.pad_id,
                                      batch_size=batch_size, context_order=context_order,
                                      progress=progress)
    correct = correct_norm = 0
    cursor = 0
    for item in items:
        n = len(item["choices"])
        log_probs = np.array([lp for lp, _ in results[cursor:cursor + n]])
        per_byte = log_probs / np.array([max(len(c.encode("utf-8")), 1) for c in item["choices"]])
        correct += int(np.argmax(log_probs) == item["label"])
        correct_norm += int(np.argmax(per_byte) == item["label"])
        cursor += n
    return {"acc": correct / len(items), "acc_norm": correct_norm / len(items), "items": len(items),
            "requests": len(requests)}


# Rolling log-likelihood (lm-eval's loglikelihood_rolling) ------------------------------------------

def rolling_windows(tokens: np.ndarray, stride: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(context, continuation) windows that score every token of a text once, left to right: each
    predicts up to `stride` new tokens after the text before it (left-truncated to fit the row)."""
    return [(tokens[:start], tokens[start:start + stride]) for start in range(0, tokens.size, stride)]


def rolling_log_likelihoods(parts: ModelParts, texts: Sequence[str], *, stride: int | None = None,
                            batch_size: int = 8, context_order: str | None = None,
                            progress: bool = False) -> list[float]:
    """log P(text) of each text, left to right, in windows of `stride` new tokens (default seq_len
    - 1): lm-eval's loglikelihood_rolling."""
    stride = parts.seq_len - 1 if stride is None else stride
    if not 1 <= stride <= parts.seq_len - 1:
        raise UserError(f"rolling stride {stride} must be in 1..{parts.seq_len - 1} (seq_len - 1)")
    pairs, owner = [], []
    for index, text in enumerate(texts):
        tokens = np.asarray(parts.tokenizer.encode(text), np.int32)
        for window in rolling_windows(tokens, stride):
            pairs.append(window)
            owner.append(index)
    totals = np.zeros(len(texts), np.float64)
    if pairs:
        results = score_lib.loglikelihood(parts.model_def, parts.params, pairs, seq_len=parts.seq_len,
                                          bos_id=parts.tokenizer.bos_id, pad_id=parts.tokenizer.pad_id,
                                          batch_size=batch_size, context_order=context_order,
                                          progress=progress)
        for index, (log_prob, _) in zip(owner, results):
            totals[index] += log_prob
    return [float(t) for t in totals]


def rolling(model, texts: Sequence[str], *, batch_size: int = 8, seq_len: int | None = None,
            context_order: str | None = None, progress: bool = False) -> dict:
    """Bits per byte, byte and word perplexity of texts scored left to right (lm-eval's
    loglikelihood_rolling metrics: words split at whitespace, bytes of UTF-8, EOS not scored)."""
    parts = model_parts(model, seq_len)
    if not texts:
        raise UserError("no texts to score")
    log_probs = rolling_log_likelihoods(parts, texts, batch_size=batch_size, context_order=context_order,
                                        progress=progress)
    total = sum(log_probs)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_words = sum(len(re.split(r"\s+", t)) for t in texts)
    return {"bits_per_byte": -total / math.log(2) / n_bytes, "byte_perplexity": math.exp(-total / n_bytes),
            "word_perplexity": math.exp(-total / n_words), "log_likelihood": total, "texts": len(texts),
            "bytes": n_bytes}


# LAMBADA ------------------------------------------------------------------------------------------

def load_lambada(path: str | pathlib.Path) -> list[str]:
    """Passages: one per non-blank line of a text file, or the "text" key of each JSONL line."""
    path = pathlib.Path(path)
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        passages = []
        for number, record in _read_jsonl(path):
            if not isinstance(record.get("text"), str):
                raise UserError(f"{path}:{number}: missing string key 'text'; each line needs "
                                 '{"text": "..."}')
            passages.append(record["text"])
        return passages
    if not path.is_file():
        raise UserError(f"data file {path} does not exist; pass an existing text or JSONL file with --data")
    passages = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not passages:
        raise UserError(f"{path} holds no passages")
    return passages


def split_last_word(text: str, index: int = 0) -> tuple[str, str]:
    """(context, " last_word"): the target is the last whitespace-separated word with its space."""
    text = text.strip()
    cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
    if cut <= 0:
        raise UserError(f"passage {index} has no context before its last word: {text[:60]!r}")
    return text[:cut], " " + text[cut + 1:]


def lambada(model, passages: Sequence[str], *, batch_size: int = 8, seq_len: int | None = None,
            context_order: str | None = None, progress: bool = False) -> dict:
    """Last-word accuracy counted once per passage (correct iff every token of the last word is the
    greedy one) and the mean NLL (nats) of the last word (context_order: see multiple_choice)."""
    parts = model_parts(model, seq_len)
    if not passages:
        raise UserError("no LAMBADA passages to evaluate")
    requests = [encode_pair(parts.tokenizer, *split_last_word(text, i)) for i, text in enumerate(passages)]
    results = score_lib.loglikelihood(parts.model_def, parts.params, requests, seq_len=parts.seq_len,
                                      bos_id=parts.tokenizer.bos_id, pad_id=parts.tokenizer.pad_id,
                                      batch_size=batch_size, context_order=context_order,
                                      progress=progress)
    nll = np.array([-lp for lp, _ in results])
    tokens = sum(c.size for _, c in requests)
    return {"acc": float(np.mean([g for _, g in results])), "nll_last_word": float(nll.mean()),
            "perplexity": float(math.exp(nll.mean())), "bits_per_token": metrics_lib.bits(nll.sum(), tokens),
            "passages": len(passages), "target_tokens": int(tokens)}


# Held-out NLL under named orders ------------------------------------------------------------------

def nll_under_orders(config, corpus, tokenizer, model_def, params, specs: Sequence[str], num_rows: int,
                     *, batch_size: int | None = None, progress: bool = False) -> dict:
    """Held-out NLL per target token and bits per byte (per token for subword tokenizers) under each
    named order, over `num_rows` evenly spaced packed rows of corpus.eval_docs (the numbers the
    training loop logs as eval/SPEC/...). Rows are evaluated batch_size at a time."""
    import jax

    from a3jax.data import eval_batch
    from a3jax.orders import parse_sampler
    from a3jax.train.evaluation import byte_counts, evaluate
    from a3jax.train.step import make_eval_step

    if num_rows < 1:
        raise UserError(f"num_rows must be >= 1, got {num_rows}")
    specs = [s.strip() for s in specs if s.strip()]
    if not specs:
        raise UserError("no orders given; name some, e.g. 'ar,random(4)'")
    for spec in specs:
        parse_sampler(spec)  # ValueError names the bad spec
    score_lib.model_facts(model_def, params).check_scoring_orders(specs)
    batch_size = int(batch_size or num_rows)
    step = make_eval_step(model_def, tokenizer.eos_id)
    params = jax.device_put(params)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(specs), desc="nll", unit="order", file=sys.stderr, dynamic_ncols=True)

    def chunked_step(params, batch):  # sums eval_step over fixed-size chunks (one compile)
        rows = batch["tokens"].shape[0]
        totals = {"nll_sum": 0.0, "n_targets": 0.0, "n_bytes": 0.0}
        for start in range(0, rows, batch_size):
            chunk = {k: v[start:start + batch_size] for k, v in batch.items()}
            short = batch_size - chunk["tokens"].shape[0]
            if short:
                chunk = {k: np.concatenate([v, np.repeat(_empty_like(k, v, tokenizer), short, 0)])
                         for k, v in chunk.items()}
            out = jax.device_get(step(params, chunk))
            for key in totals:
                totals[key] += float(out[key])
        if bar is not None:
            bar.update(1)
        return totals

    batches = {spec: eval_batch(config, corpus, tokenizer, spec, int(num_rows)) for spec in specs}
    try:
        results = evaluate(chunked_step, params, batches, byte_counts(batches, tokenizer))
    finally:
        if bar is not None:
            bar.close()
    first = next(iter(batches.values()))
    results["rows"] = int(first["tokens"].shape[0])
    for spec, batch in batches.items():
        results[f"{spec}/targets"] = int(batch["loss_mask"].sum())
    return results


def _empty_like(name: str, value: np.ndarray, tokenizer) -> np.ndarray:
    """One all-padding row (no target) for field `name`."""
    row = np.zeros((1,) + value.shape[1:], value.dtype)
    if name == "tokens":
        row[:] = tokenizer.pad_id
    return row


# Span infilling -----------------------------------------------------------------------------------

def infill_windows(corpus, tokenizer, seq_len: int, span: int, seeds: Sequence[int]):
    """[(window, start, stop)] of held-out windows with one span each (a3jax.data.infill_example)."""
    from a3jax.data import infill_example

    return [infill_example(corpus, tokenizer, seq_len, span, int(seed)) for seed in seeds]


def _generate():  # the sampler, looked up at call time (tests substitute a stand-in)
    from a3jax.decode import SampleConfig, generate

    return SampleConfig, generate


def fill_windows(parts: ModelParts, windows, *, plan: str = "ar", temperature: float = 0.0, seed: int = 0,
                 batch_size: int = 8, mode: str = "cached", bar=None) -> dict:
    """Fills window[start:stop] of each (window, start, stop) given the rest of its window.
    Returns the decoded predictions and references, and per-window token hits."""
    SampleConfig, generate = _generate()
    tokenizer = parts.tokenizer
    predictions, references, hits = [], [], []
    for first in range(0, len(windows), batch_size):
        chunk = windows[first:first + batch_size]
        documents, known = [], []
        for window, start, stop in chunk:
            mask = np.ones(window.size, bool)
            mask[start:stop] = False
            hidden = window.copy()
            hidden[start:stop] = tokenizer.pad_id  # nothing of the answer reaches the sampler
            documents.append(hidden)
            known.append(mask)
        # eos_id=None: the span has a fixed length, so an EOS inside it is a wrong token, not
        # the end of the document.
        result = generate(parts.model_def, parts.params, documents, known, bos_id=tokenizer.bos_id,
                          pad_id=tokenizer.pad_id, eos_id=None,
                          sampling=SampleConfig(plan=plan, temperature=temperature, seed=seed + first,
                                                mode=mode))
        for (window, start, stop), filled in zip(chunk, result.tokens):
            guess = np.full(stop - start, -1, np.int64)  # a shorter result leaves -1 (wrong)
            got = np.asarray(filled)[start:stop]
            guess[:got.size] = got
            predictions.append(tokenizer.decode(got))
            references.append(tokenizer.decode(window[start:stop]))
            hits.append(int(np.sum(guess == window[start:stop])))
        if bar is not None:
            bar.update(len(chunk))
    return {"predictions": predictions, "references": references, "hits": hits}


def speculative_calls(parts: ModelParts, windows, *, k: int = 4, temperature: float = 1.0, seed: int = 0,
                      batch_size: int = 8) -> dict:
    """speculative(k) sampling of window[start:stop] given the rest of each window: tokens per
    model call per row and per full-model pass per row (one-at-a-time decoding makes one call, one
    pass, per token; a chained round is one call of k passes), and how often each draft position
    was accepted."""
    SampleConfig, generate = _generate()
    tokenizer = parts.tokenizer
    tokens = calls = passes = 0
    offered, accepted = np.zeros(k, np.int64), np.zeros(k, np.int64)
    for first in range(0, len(windows), batch_size):
        chunk = windows[first:first + batch_size]
        documents, known = [], []
        for window, start, stop in chunk:
            mask = np.ones(window.size, bool)
            mask[start:stop] = False
            documents.append(np.where(mask, window, tokenizer.pad_id).astype(np.int32))
            known.append(mask)
        result = generate(parts.model_def, parts.params, documents, known, bos_id=tokenizer.bos_id,
                          pad_id=tokenizer.pad_id, eos_id=None,
                          sampling=SampleConfig(plan=f"speculative({k})", temperature=temperature,
                                                seed=seed + first))
        tokens += sum(stop - start for _, start, stop in chunk)
        row_calls = int(result.stats["row_calls"].sum())
        calls += row_calls
        passes += row_calls * result.stats["passes"] / max(result.stats["calls"], 1)
        offered += result.stats["offered"]
        accepted += result.stats["accepted"]
    rates = [float(a) / max(float(o), 1.0) for a, o in zip(accepted, offered)]
    return {"tokens_per_call": tokens / max(calls, 1), "tokens_per_pass": tokens / max(passes, 1), "tokens": tokens,
            "row_calls": calls, "acceptance_by_position": rates}


def infill(model, corpus, *, span: int = 32, num_examples: int = 8, seed: int = 0, plan: str = "ar",
           temperature: float = 0.0, batch_size: int = 8, seq_len: int | None = None,
           progress: bool = False, mode: str = "cached") -> dict:
    """Span infilling on held-out windows (seeds seed .. seed + num_examples - 1): exact match of the
    decoded span (whitespace-stripped), ROUGE-1/2/L F1 and token accuracy of the filled span.

    Generation uses a3jax.decode.generate with SampleConfig(plan, temperature, seed, mode).
    """
    parts = model_parts(model, seq_len)
    if num_examples < 1:
        raise UserError(f"num_examples must be >= 1, got {num_examples}")
    if span < 1:
        raise UserError(f"span must be >= 1 token, got {span}")
    windows = infill_windows(corpus, parts.tokenizer, parts.seq_len, span, range(seed, seed + num_examples))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(windows), desc="infill", unit="window", file=sys.stderr, dynamic_ncols=True)
    try:
        filled = fill_windows(parts, windows, plan=plan, temperature=temperature, seed=seed,
                              batch_size=batch_size, mode=mode, bar=bar)
    finally:
        if bar is not None:
            bar.close()
    predictions, references = filled["predictions"], filled["references"]
    token_total = sum(stop - start for _, start, stop in windows)
    out = {"exact_match": metrics_lib.mean_exact_match(predictions, references)}
    out.update(metrics_lib.rouge(predictions, references))
    out.update({"token_acc": sum(filled["hits"]) / max(token_total, 1), "examples": len(windows),
                "span_tokens": int(token_total), "plan": plan})
    return out


def infill_spans(model, spans, *, plan: str = "ar", temperature: float = 0.0, seed: int = 0,
                 batch_size: int = 8, mode: str = "cached") -> dict:
    """Infilling of natural spans (a3jax.eval.spans): token accuracy and exact match (whitespace-
    stripped) over all spans and by kind, and each span's fill."""
    parts = model_parts(model)
    windows = [(s.window, s.start, s.stop) for s in spans]
    filled = fill_windows(parts, windows, plan=plan, temperature=temperature, seed=seed,
                          batch_size=batch_size, mode=mode)

    def summary(indices):
        tokens = sum(spans[i].stop - spans[i].start for i in indices)
        return {"spans": len(indices), "tokens": tokens,
                "token_acc": sum(filled["hits"][i] for i in indices) / max(tokens, 1),
                "exact_match": metrics_lib.mean_exact_match([filled["predictions"][i] for i in indices],
                                                            [filled["references"][i] for i in indices])}

    out = summary(range(len(spans)))
    out["by_kind"] = {kind: summary([i for i, s in enumerate(spans) if s.kind == kind])
                      for kind in dict.fromkeys(s.kind for s in spans)}
    out["fills"] = filled["predictions"]
    out["plan"] = plan
    return out


# Infilling items in the form benchmarks ship them: prefix, true middle, suffix ---------------------

# key aliases: HumanEval infilling (prompt / canonical_solution / suffix), story infilling sets
PREFIX_KEYS, MIDDLE_KEYS, SUFFIX_KEYS = ("prefix", "prompt"), ("middle", "canonical_solution", "target"), ("suffix",)


def load_infill_jsonl(path: str | pathlib.Path) -> list[dict]:
    """Items {"prefix", "middle", "suffix"} from a JSONL file: one object per line with a prefix
    ("prefix" or "prompt"), the true middle ("middle", "canonical_solution" or "target") and a
    suffix ("suffix", may be empty)."""
    path = pathlib.Path(path)
    items = []
    for number, record in _read_jsonl(path):
        item = {}
        for name, keys in (("prefix", PREFIX_KEYS), ("middle", MIDDLE_KEYS), ("suffix", SUFFIX_KEYS)):
            key = next((k for k in keys if k in record), None)
            if key is None or not isinstance(record[key], str):
                raise UserError(f"{path}:{number}: no string {' or '.join(repr(k) for k in keys)}; an infilling "
                                 "line holds a prefix, the true middle and a suffix")
            item[name] = record[key]
        if not item["middle"].strip():
            raise UserError(f"{path}:{number}: the middle is empty; there is nothing to fill")
        items.append(item)
    return items


def infill_window(tokenizer, item: dict, seq_len: int) -> tuple[np.ndarray, int, int]:
    """(window, start, stop): prefix, middle and suffix encoded separately (the middle's true token
    length is what is filled) and joined; a window longer than seq_len - 1 keeps the middle and
    cuts the prefix from the left, then the suffix from the right."""
    prefix, middle, suffix = (np.asarray(tokenizer.encode(item[k]), np.int32) for k in ("prefix", "middle", "suffix"))
    room = seq_len - 1 - middle.size
    if room < 0:
        raise UserError(f"a middle of {middle.size} tokens does not fit seq_len={seq_len} with BOS; raise "
                         "--seq-len")
    keep_prefix = min(prefix.size, max(room - min(suffix.size, room // 2), 0))
    keep_suffix = min(suffix.size, room - keep_prefix)
    window = np.concatenate([prefix[prefix.size - keep_prefix:], middle, suffix[:keep_suffix]])
    return window, keep_prefix, keep_prefix + middle.size


def infill_items(model, items: Sequence[dict], *, plan: str = "ar", temperature: float = 0.0, seed: int = 0,
                 batch_size: int = 8, seq_len: int | None = None, progress: bool = False) -> dict:
    """Fills each item's middle at its true token length given the prefix and the suffix (a causal
    model: given the prefix alone, as an AR baseline fills) under `plan`: exact match
    (whitespace-stripped), ROUGE-1/2/L F1 and token accuracy."""
    parts = model_parts(model, seq_len)
    if not items:
        raise UserError("no infilling items to evaluate")
    windows = [infill_window(parts.tokenizer, item, parts.seq_len) for item in items]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(windows), desc="infill", unit="item", file=sys.stderr, dynamic_ncols=True)
    try:
        filled = fill_windows(parts, windows, plan=plan, temperature=temperature, seed=seed, batch_size=batch_size,
                              bar=bar)
    finally:
        if bar is not None:
            bar.close()
    references = [item["middle"] for item in items]
    tokens = sum(stop - start for _, start, stop in windows)
    out = {"exact_match": metrics_lib.mean_exact_match(filled["predictions"], references)}
    out.update(metrics_lib.rouge(filled["predictions"], references))
    out.update({"token_acc": sum(filled["hits"]) / max(tokens, 1), "items": len(items), "middle_tokens": int(tokens),
                "plan": plan})
    return out
