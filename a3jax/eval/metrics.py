"""Metrics: exact match, ROUGE-1/2/L F1 (the `rouge_score` package), bits per token / byte."""

from __future__ import annotations

import math
from collections.abc import Sequence

from a3jax.errors import UserError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the strings are equal after stripping surrounding whitespace, else 0.0."""
    return float(prediction.strip() == reference.strip())


def mean_exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    _check_pairs(predictions, references)
    return sum(exact_match(p, r) for p, r in zip(predictions, references)) / max(len(predictions), 1)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise UserError(f"got {len(predictions)} predictions but {len(references)} references")


def rouge_scores(prediction: str, reference: str, *, use_stemmer: bool = False) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 of one prediction against its reference."""
    return _mean_rouge([prediction], [reference], use_stemmer)


def rouge(predictions: Sequence[str], references: Sequence[str], *,
          use_stemmer: bool = False) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over pairs (the rouge_score tokenizer: lowercase alphanumeric words)."""
    _check_pairs(predictions, references)
    return _mean_rouge(predictions, references, use_stemmer)


def _mean_rouge(predictions, references, use_stemmer: bool) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    count = max(len(predictions), 1)
    return {name: value / count for name, value in totals.items()}


def bits(nll_sum: float, count: float) -> float:
    """Bits per unit (token or byte): summed natural-log NLL / ln 2 / count."""
    return float(nll_sum) / math.log(2) / max(float(count), 1.0)
