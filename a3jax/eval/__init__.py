"""Evaluation: exact scoring (score), metrics, tasks (multiple choice, LAMBADA, NLL under orders,
infilling), the lm-evaluation-harness adapter and the `a3jax eval` command.

Names are imported lazily so `import a3jax.eval` stays cheap.
"""

from a3jax._lazy import lazy_exports

_EXPORTS = {
    "Scores": "score",
    "loglikelihood": "score",
    "score_documents": "score",
    "sequence_log_probs": "score",
    "bits": "metrics",
    "exact_match": "metrics",
    "rouge": "metrics",
    "ModelParts": "tasks",
    "encode_pair": "tasks",
    "infill": "tasks",
    "lambada": "tasks",
    "load_lambada": "tasks",
    "load_mc_jsonl": "tasks",
    "multiple_choice": "tasks",
    "nll_under_orders": "tasks",
    "A3JaxLM": "lm_eval_adapter",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
