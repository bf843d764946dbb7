"""Decoding plans (which positions each step commits) and prompts with gaps.

Static plans fix the groups before decoding (exact group-by-group sampling of the model):
  ar            one position per step, left to right
  blocks(k)     k consecutive unknown positions per step, left to right
  random        one position per step in a random order (random(k): k per step)
  groups        the caller's own group ids (generate(..., groups=...))
Dynamic plans look at the model's predictions for every remaining position and commit the k best:
  confidence(k) | entropy(k) | margin(k) | random_pick(k)       k fixed
  confidence(steps=T)                                           k_t spread evenly over T steps
  confidence(steps=T, schedule=cosine)                          few first, more later (MaskGIT)
Speculative plans sample EXACTLY from the one-position-at-a-time joint of an order (ar, random, or
the caller's groups as a ranking) in fewer full-model passes (decode/speculative.py): every round
is one pass that verifies its drafts and proposes the next ones, so no plan takes more passes than
`ar` (except with `chain`):
  speculative                           the plan with the fewest passes measured: speculative(4),
                                        drafts from the known text where it repeats, else the model
  speculative(k)                        up to k drafts per round
  speculative(k, adaptive)              each row drafts as many as its acceptance makes worthwhile
  speculative(k, draft=model)           drafts from the model only (draft=copy: from the text only
                                        where it repeats; draft=auto, the default: either;
                                        draft=ngram: from the training text's most frequent
                                        continuations)
  speculative(k, chain)                 the model's proposals chained through the shifted query
                                        stream: better drafts, but a pass per drafted position
                                        (model.query_input=shift, order=ar, model drafts only)
  speculative(k, order=random)          a random order of the unknown positions (order=groups: the
                                        caller's group ids rank the positions); copies need 'ar'
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from a3jax.decode.sampling import CRITERIA
from a3jax.errors import UserError
from a3jax.orders import normal_spec

STATIC = ("ar", "blocks", "random", "groups")
SPECULATIVE_ORDERS = ("ar", "random", "groups")
DRAFT_SOURCES = ("auto", "model", "copy", "ngram")
# what a bare `speculative` means: the exact plan with the fewest full-model passes per token on
# SmolLM2-135M (converted and adapted; batch 1 and 8, greedy and temperature 1: BENCHMARKS.md, issue
# 40): one-pass rounds never spend more passes than `ar`; copies of the known text are the drafts
# accepted most often (the model's own group predictions are rarely accepted, even after the
# study's adaptation)
BEST_SPECULATIVE = "speculative(4)"
DYNAMIC = {"confidence": "confidence", "entropy": "entropy", "margin": "margin", "random_pick": "random"}
SCHEDULES = ("linear", "cosine")


@dataclasses.dataclass(frozen=True)
class Plan:
    kind: str  # one of STATIC or a key of DYNAMIC
    k: int = 1  # positions per step (static: group size; dynamic: fixed k, 0 when `steps` is set)
    steps: int = 0  # dynamic only: total steps with a schedule
    schedule: str = "linear"
    adaptive: bool = False  # speculative only: k adapts to the acceptance (the given k is the most)
    order: str = "ar"  # speculative only: the order whose one-at-a-time joint is sampled
    draft: str = "auto"  # speculative only: where drafts come from (DRAFT_SOURCES)
    chain: bool = False  # speculative only: chained proposals, a pass per drafted position

    @property
    def speculative(self) -> bool:
        return self.kind == "speculative"

    @property
    def dynamic(self) -> bool:
        return self.kind in DYNAMIC

    @property
    def criterion(self) -> str:
        return DYNAMIC[self.kind]

    def commits(self, remaining: int) -> list[int]:
        """How many positions each step commits (dynamic plans) for `remaining` unknown positions."""
        if self.k:
            return [min(self.k, remaining - i) for i in range(0, remaining, self.k)]
        steps = min(self.steps, remaining)
        if self.schedule == "linear":
            return [len(range(i, remaining, steps)) for i in range(steps)]
        left, out = remaining, []
        for t in range(steps):  # after step t, cos(pi/2 * (t+1)/T) of the positions stay unknown
            target = math.floor(remaining * math.cos(math.pi / 2 * (t + 1) / steps))
            take = max(1, left - target) if t < steps - 1 else left
            take = min(take, left - (steps - 1 - t))  # leave one for each later step
            out.append(max(take, 1))
            left -= out[-1]
        return out


_CALL = re.compile(r"^([a-z_]+)(?:\((.*)\))?$")


def parse_plan(spec: str) -> Plan:
    """Parses a plan string (see the module docstring); errors name the bad part."""
    text = normal_spec(spec)
    match = _CALL.match(text)
    known = list(STATIC) + list(DYNAMIC) + ["speculative"]
    if not match or match.group(1) not in known:
        raise UserError(f"unknown plan {spec!r}; use one of ar, blocks(k), random, random(k), groups, "
                         f"{', '.join(f'{n}(k)' for n in DYNAMIC)} (criteria: {', '.join(CRITERIA)}), "
                         "speculative(k)")
    name, args = match.group(1), match.group(2)
    positional, keywords = [], {}
    for part in filter(None, (args or "").split(",")):
        if "=" in part:
            key, value = part.split("=", 1)
            keywords[key] = value
        else:
            positional.append(part)

    def integer(value: str, what: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise UserError(f"plan {spec!r}: {what}={value!r} is not an integer") from None
        if number < 1:
            raise UserError(f"plan {spec!r}: {what}={number} must be >= 1")
        return number

    if name in ("ar", "groups"):
        if args:
            raise UserError(f"plan {spec!r}: {name!r} takes no arguments")
        return Plan(name)
    if name == "speculative":
        if args is None:  # bare `speculative`: the best exact plan
            return parse_plan(BEST_SPECULATIVE)
        return _speculative(spec, positional, keywords, integer)
    if name in ("blocks", "random"):
        if keywords or len(positional) > 1 or (name == "blocks" and not positional):
            raise UserError(f"plan {spec!r}: write {name}(k) with one integer k" +
                             (" (or plain 'random')" if name == "random" else ""))
        return Plan(name, k=integer(positional[0], "k") if positional else 1)
    unknown = set(keywords) - {"k", "steps", "schedule"}
    if unknown:
        raise UserError(f"plan {spec!r}: unknown argument(s) {sorted(unknown)}; use k, steps, schedule")
    if positional:
        if len(positional) > 1 or "k" in keywords:
            raise UserError(f"plan {spec!r}: give k once")
        keywords["k"] = positional[0]
    if ("k" in keywords) == ("steps" in keywords):
        raise UserError(f"plan {spec!r}: give either k (positions per step) or steps=T (a schedule)")
    schedule = keywords.get("schedule", "linear")
    if schedule not in SCHEDULES:
        raise UserError(f"plan {spec!r}: schedule={schedule!r} is not one of {SCHEDULES}")
    if "k" in keywords:
        if "schedule" in keywords:
            raise UserError(f"plan {spec!r}: a schedule needs steps=T, not a fixed k")
        return Plan(name, k=integer(keywords["k"], "k"))
    return Plan(name, k=0, steps=integer(keywords["steps"], "steps"), schedule=schedule)


def _speculative(spec: str, positional: list[str], keywords: dict, integer) -> Plan:
    adaptive, chain = "adaptive" in positional, "chain" in positional
    positional = [p for p in positional if p not in ("adaptive", "chain")]
    unknown = set(keywords) - {"k", "adaptive", "order", "draft"}
    if unknown:
        raise UserError(f"plan {spec!r}: unknown argument(s) {sorted(unknown)}; use k, adaptive, chain, order, "
                        "draft")
    if len(positional) + ("k" in keywords) != 1:
        raise UserError(f"plan {spec!r}: write speculative(k) with one integer k (drafts per round)")
    k = integer(positional[0] if positional else keywords["k"], "k")
    if "adaptive" in keywords:
        if keywords["adaptive"].lower() not in ("true", "false"):
            raise UserError(f"plan {spec!r}: adaptive={keywords['adaptive']!r} is not true or false")
        adaptive = keywords["adaptive"].lower() == "true"
    order = keywords.get("order", "ar")
    if order not in SPECULATIVE_ORDERS:
        raise UserError(f"plan {spec!r}: order={order!r} is not one of {SPECULATIVE_ORDERS}")
    draft = keywords.get("draft", "auto")
    if draft not in DRAFT_SOURCES:
        raise UserError(f"plan {spec!r}: draft={draft!r} is not one of {DRAFT_SOURCES}")
    if draft in ("copy", "ngram") and order != "ar":
        raise UserError(f"plan {spec!r}: {draft} drafts follow the text left to right; use order=ar or "
                        "draft=model")
    if chain and (order != "ar" or draft == "ngram"):
        why = "draft=ngram chains the table's drafts itself" if draft == "ngram" else \
            f"order={order} (a chain reads the token just proposed for the position before: order=ar)"
        raise UserError(f"plan {spec!r}: chained proposals need order=ar and model drafts, but {why}; drop `chain`")
    return Plan("speculative", k=k, adaptive=adaptive, order=order, draft=draft, chain=chain)


def static_groups(plan: Plan, unknown_positions: np.ndarray, rng: np.random.Generator,
                  user_groups: np.ndarray | None = None) -> list[np.ndarray]:
    """The groups (arrays of positions, in commit order) of a static plan for one document."""
    positions = np.asarray(unknown_positions)
    if plan.kind == "groups":
        if user_groups is None:
            raise UserError("plan 'groups' needs groups=... (one group id >= 1 per unknown position)")
        ids = np.asarray(user_groups)
        return [positions[ids == g] for g in np.unique(ids)]
    if plan.kind == "random":
        positions = positions[rng.permutation(positions.size)]
    size = 1 if plan.kind == "ar" else plan.k
    return [positions[i:i + size] for i in range(0, positions.size, size)]


@dataclasses.dataclass
class Prompt:
    tokens: np.ndarray  # int32 [L], document positions 1..L (gap slots hold pad)
    known: np.ndarray  # bool [L]
    trailing_gap: bool  # the prompt ends in a gap: generation may stop early at EOS


_GAP = re.compile(r"\[gap:([^\]]*)\]")


def parse_prompt(text: str, tokenizer, max_len: int) -> Prompt:
    """'text [gap:20] more text' -> tokens and a known mask. max_len counts BOS."""
    pieces, gaps = [], []
    cursor = 0
    for match in _GAP.finditer(text):
        pieces.append(text[cursor:match.start()])
        try:
            size = int(match.group(1))
        except ValueError:
            raise UserError(f"prompt gap {match.group(0)!r}: the size must be an integer, e.g. [gap:20]") from None
        if size < 1:
            raise UserError(f"prompt gap {match.group(0)!r} has no room: a gap needs at least 1 position")
        gaps.append(size)
        cursor = match.end()
    pieces.append(text[cursor:])
    if not gaps:
        raise UserError("the prompt has no gap to fill; mark one with [gap:N], e.g. 'def f(x):[gap:40]'")
    tokens, known = [], []
    for index, piece in enumerate(pieces):
        ids = tokenizer.encode(piece) if piece else np.zeros(0, np.int32)
        tokens.append(np.asarray(ids, np.int32))
        known.append(np.ones(len(ids), bool))
        if index < len(gaps):
            tokens.append(np.full(gaps[index], tokenizer.pad_id, np.int32))
            known.append(np.zeros(gaps[index], bool))
    tokens, known = np.concatenate(tokens), np.concatenate(known)
    if tokens.size + 1 > max_len:
        raise UserError(f"the prompt needs {tokens.size} tokens + BOS = {tokens.size + 1} but the model's "
                         f"max length is {max_len}; shorten the text or the gaps")
    return Prompt(tokens=tokens, known=known, trailing_gap=not pieces[-1])
