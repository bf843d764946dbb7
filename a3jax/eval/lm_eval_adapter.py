"""lm-evaluation-harness adapter: `A3JaxLM` answers lm-eval's three request types with a3jax.

    a3jax lm-eval --model_args workdir=runs/demo/a3 --tasks piqa,lambada_openai   (eval/lm_eval_cli.py)

Importing this module never needs lm_eval. When lm_eval is importable, `A3JaxLM` subclasses
`lm_eval.api.model.LM` and is registered as "a3jax" (`a3jax lm-eval` imports it before handing
its arguments to lm_eval's own command line; from Python, pass the class to
`lm_eval.simple_evaluate(model=A3JaxLM(...))`).

Long inputs, as the harness does for models with a maximum length (seq_len, BOS included):
a context that does not fit is left-truncated (its last tokens kept); a continuation that alone
does not fit raises ValueError naming the request (raise it with --model_args seq_len=N: RoPE
models read longer rows); loglikelihood_rolling scores long texts in windows; generate_until
keeps the end of the prompt and generates at most max_gen_toks tokens.

Each request has `.args` like lm-eval's Instance:
  loglikelihood:         (context, continuation)   -> (log P(continuation | context), is_greedy)
  loglikelihood_rolling: (text,)                    -> log P(text), left to right, chunked to windows
  generate_until:        (context, {"until": [...], "max_gen_toks": N, ...}) -> greedy text
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from a3jax.errors import UserError
from a3jax.eval import score as score_lib
from a3jax.eval.tasks import (  # _generate: the
    _generate,
    encode_pair,
    model_parts,
    rolling_log_likelihoods,
    rolling_windows,  # sampler seam
)

try:  # optional dependency
    from lm_eval.api.model import LM as _Base
    from lm_eval.api.registry import register_model as _register
except ImportError:  # lm_eval not installed: a plain class with the same methods
    _Base, _register = object, None


class A3JaxLM(_Base):
    """An a3jax checkpoint behind lm-eval's LM interface.

    Build it from a workdir (`A3JaxLM(workdir=..., step=...)`, what `--model_args` gives) or from a
    loaded model (`A3JaxLM(model=loaded)`, a LoadedModel / ModelParts / tuple).
    """

    def __init__(self, workdir: str | None = None, step: int | str | None = None, *, model: Any = None,
                 batch_size: int | str = 8, seq_len: int | str | None = None,
                 max_gen_toks: int | str = 256, rolling_stride: int | str | None = None,
                 context_order: str | None = None, **unused):
        if _Base is not object:
            super().__init__()
        self._rank, self._world_size = 0, 1
        if model is None:
            if workdir is None:
                raise UserError("A3JaxLM needs workdir=PATH (a training workdir) or model=LoadedModel")
            from a3jax.inference import load_model

            model = load_model(workdir, None if step in (None, "") else int(step))
        self.parts = model_parts(model, None if seq_len in (None, "") else int(seq_len))
        self.tokenizer = self.parts.tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" -> 8
        self.max_gen_toks = int(max_gen_toks)
        room = self.parts.seq_len - 1
        self.rolling_stride = room if rolling_stride in (None, "") else int(rolling_stride)
        if not 1 <= self.rolling_stride <= room:
            raise UserError(f"rolling_stride={self.rolling_stride} must be in 1..{room} (seq_len - 1)")
        self.context_order = context_order

    # lm-eval reads these
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.parts.seq_len

    @property
    def tokenizer_name(self) -> str:
        return type(self.tokenizer).__name__

    def _loglikelihood_tokens(self, requests) -> list[tuple[float, bool]]:
        p = self.parts
        return score_lib.loglikelihood(p.model_def, p.params, requests, seq_len=p.seq_len,
                                       bos_id=self.tokenizer.bos_id, pad_id=self.tokenizer.pad_id,
                                       batch_size=self.batch_size, context_order=self.context_order)

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        pairs = []
        for request in requests:
            context, continuation = request.args[0], request.args[1]
            if not continuation:
                raise UserError(f"loglikelihood request with context {context[:40]!r}... has an empty "
                                 "continuation")
            pairs.append(encode_pair(self.tokenizer, context, continuation))
        return self._loglikelihood_tokens(pairs)

    def rolling_windows(self, tokens: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(context, continuation) windows that score every token once, left to right."""
        return rolling_windows(tokens, self.rolling_stride)

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        """log P(text), left to right in windows of rolling_stride new tokens (what `a3jax eval
        --task rolling` computes)."""
        return rolling_log_likelihoods(self.parts, [r.args[0] for r in requests], stride=self.rolling_stride,
                                       batch_size=self.batch_size, context_order=self.context_order)

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """Greedy left-to-right continuation (plan "ar" on a trailing gap), cut at the first `until`
        string or EOS."""
        SampleConfig, generate = _generate()
        p, tok = self.parts, self.tokenizer
        outputs = []
        for first in range(0, len(requests), self.batch_size):
            chunk = requests[first:first + self.batch_size]
            documents, known, starts, stops = [], [], [], []
            for request in chunk:
                context, kwargs = request.args[0], (request.args[1] if len(request.args) > 1 else {})
                until = kwargs.get("until") or []
                stops.append([until] if isinstance(until, str) else list(until))
                n_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
                n_new = max(1, min(n_new, p.seq_len - 1))
                ids = np.asarray(tok.encode(context), np.int32)
                ids = ids[max(0, ids.size - (p.seq_len - 1 - n_new)):]  # keep the end of the prompt
                documents.append(np.concatenate([ids, np.full(n_new, tok.pad_id, np.int32)]))
                known.append(np.arange(ids.size + n_new) < ids.size)
                starts.append(ids.size)
            result = generate(p.model_def, p.params, documents, known, bos_id=tok.bos_id,
                              pad_id=tok.pad_id, eos_id=tok.eos_id,
                              sampling=SampleConfig(plan="ar", temperature=0.0, seed=0))
            for filled, start, until in zip(result.tokens, starts, stops):
                new = np.asarray(filled)[start:]
                ends = np.flatnonzero(new == tok.eos_id)
                if ends.size:
                    new = new[:ends[0]]
                outputs.append(cut_at(tok.decode(new), until))
        return outputs


def cut_at(text: str, until: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in until:
        if stop:
            found = text.find(stop)
            if found != -1:
                cut = min(cut, found)
    return text[:cut]


if _register is not None:
    try:
        _register("a3jax")(A3JaxLM)
    except ValueError:  # a harness that discovered the `lm_eval.models` entry point (pyproject) holds it
        pass
