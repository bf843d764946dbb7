"""Stateless group samplers and the training curriculum (numpy only).

A sampler maps a document's target length L (original positions 1..L; BOS at 0 is the context
group and is not included) to int32 group ids of shape [L] with values 1..K, every value used.
Group k is generated after all groups < k. The exception is `mdlm` (the masked-diffusion
control's objective): it puts the visible tokens in the context group 0 and the masked ones in
group 1, see `MaskedDiffusion`. The grouping of example e is a pure function of
(seed, e, stage(e)), see `example_rng` and `Curriculum.sample_groups`.

`group_size_scope` (config orders.group_size_scope): "example" draws everything per example;
"batch" makes all examples of one step share one draw of the sampler's parameters (mixture
component, random_sizes' group size, two_group/span fraction), taken from (seed, step, stage) by
`fix_parameters`: random_sizes(lo,hi) becomes random(k) with one k per batch, so the group sizes
(and the masks, for one document per row) are the same across the batch. Positions stay random
per example.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from a3jax.errors import UserError

VALID_FORMS = (
    "ar, blocks(s), random(s), random_sizes(lo,hi), two_group(lo,hi), span(lo,hi), mdlm, "
    "and mixtures like '0.5*ar + 0.5*random(4)'"
)
MDLM = "mdlm"  # the masked-diffusion control's order (model.variant='mdlm' only)
_RNG_SALT = 0xA3_0D_E5  # separates these streams from any other use of the same seed


class Sampler(Protocol):
    def __call__(self, length: int, rng: np.random.Generator) -> np.ndarray: ...


def _check_length(length: int) -> None:
    if length < 0:
        raise UserError(f"document length must be >= 0, got {length}")


def _chunk(order: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Group ids where the first sizes[0] positions of `order` form group 1, and so on."""
    groups = np.empty(order.size, np.int32)
    groups[order] = np.repeat(np.arange(1, sizes.size + 1, dtype=np.int32), sizes)
    return groups


def _fraction(lo: float, hi: float, rng: np.random.Generator) -> float:
    return lo + (hi - lo) * rng.random()


@dataclasses.dataclass(frozen=True)
class AR:
    def __call__(self, length: int, rng: np.random.Generator) -> np.ndarray:
        _check_length(length)
        return np.arange(1, length + 1, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class Blocks:
    size: int

    def __call__(self, length: int, rng: np.random.Generator) -> np.ndarray:
        _check_length(length)
        return (np.arange(length, dtype=np.int32) // self.size + 1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Random:
    size: int

    def __call__(self, length: int, rng: np.random.Generator) -> np.ndarray:
        _check_length(length)
        groups = np.empty(length, np.int32)
        groups[rng.permutation(length)] = np.arange(length, dtype=np.int32) // self.size + 1
        return groups


@dataclasses.dataclass(frozen=True)
class RandomSizes:
    lo: int
    hi: int

    def __call__(self, length: int, rng: np.random.Generator) -> np.ndarray:
        _check_length(length)
        sizes = rng.integers(self.lo, self.hi + 1, size=length // self.lo + 1)
        ends = np.cumsum(sizes)
        count = int(np.searchsorted(ends, length)) + 1  # groups needed to cover length
        sizes = sizes[:count].copy()
        sizes[-1] -= ends[count - 1] - length  # last group may be shorter
        return _chunk(rng.permutation(length), sizes[sizes > 0])


@dataclasses.dataclass(frozen=True)
class TwoGroup:
    lo: float
    hi: float

    def __call__(self, length: int, rng: np.random.Generator) -> np.ndarray:
        _check_length(length)
        if length < 2:
            return np.ones(length, np.int32)
        count = int(np.clip(round(_fraction(self.lo, self.hi, rng) * length), 1, length - 1))
        groups = np.ones(length, np.int32)
        groups[rng.choice(length, size=count, replace=False)] = 2
        return groups


@dataclasses.dataclass(frozen=True)
class Span:
    lo: float
    hi: float

    def __call__(self, length: int, rng: np.random.Generator) -> np.ndarray:
        _check_length(length)
        if length == 0:
            return np.zeros(0, np.int32)
        span = int(np.clip(round(_fraction(self.lo, self.hi, rng) * length), 1, length))
        start = int(rng.integers(0, length - span + 1))
        return span_groups(length, start, start + span)


@dataclasses.dataclass(frozen=True)
class MaskedDiffusion:
    """The masked-diffusion (MDLM / AO-ARDM) training grouping: m ~ Uniform{1..L} tokens, a
    uniformly random set of them, are masked (group 1, the targets); the other L - m stay visible
    (group 0, context). With the loss weight L / m per masked token (a3jax.loss), a document's
    expected loss is the any-order bound sum_m (1/m) E[sum_{i masked} -log p(x_i | visible)], an
    upper bound on -log p(x): the discrete form of MDLM's 1/t weighting."""

    def __call__(self, length: int, rng: np.random.Generator) -> np.ndarray:
        _check_length(length)
        groups = np.zeros(length, np.int32)
        if length == 0:
            return groups
        masked = int(rng.integers(1, length + 1))
        groups[rng.choice(length, size=masked, replace=False)] = 1
        return groups


def uses_mdlm(sampler: Sampler) -> bool:
    """True if the sampler is `mdlm` or a mixture with an `mdlm` component."""
    if isinstance(sampler, Mixture):
        return any(uses_mdlm(c) for c in sampler.components)
    return isinstance(sampler, MaskedDiffusion)


def normal_spec(spec: str) -> str:
    """An order, plan or curriculum string without whitespace: the one form specs are compared in."""
    return re.sub(r"\s+", "", str(spec))


def is_bound_order(spec: str) -> bool:
    """True for orders whose held-out NLL is an upper bound (ELBO), not an exact NLL: `mdlm`."""
    return normal_spec(spec) == MDLM


def span_groups(length: int, start: int, stop: int) -> np.ndarray:
    """Tokens outside [start, stop) as singletons left to right, then the span left to right."""
    inside = np.zeros(length, bool)
    inside[start:stop] = True
    order = np.concatenate([np.flatnonzero(~inside), np.flatnonzero(inside)])
    return _chunk(order, np.ones(length, np.int64))


@dataclasses.dataclass(frozen=True)
class Mixture:
    weights: tuple[float, ...]  # normalised
    components: tuple[Sampler, ...]

    def __call__(self, length: int, rng: np.random.Generator) -> np.ndarray:
        index = int(rng.choice(len(self.components), p=np.asarray(self.weights)))
        return self.components[index](length, rng)


_TERM = re.compile(r"^(?:(?P<weight>[^*]+)\*)?(?P<name>[a-z_]+)(?:\((?P<args>[^()]*)\))?$")


def _parse_term(term: str, spec: str) -> tuple[float, Sampler]:
    def fail(why: str) -> ValueError:
        where = repr(term) if term == spec else f"{term!r} in {spec!r}"
        return ValueError(f"{why} {where}; valid: {VALID_FORMS}")

    match = _TERM.match(term)
    if match is None:
        raise fail("unknown sampler")
    weight = 1.0
    if match["weight"] is not None:
        try:
            weight = float(match["weight"])
        except ValueError:
            raise fail("bad mixture weight in") from None
        if not np.isfinite(weight) or weight < 0:
            raise fail("mixture weight must be finite and >= 0 in")
    name, raw = match["name"], match["args"]
    args = [] if raw is None else raw.split(",")
    arity = {"ar": 0, "blocks": 1, "random": 1, "random_sizes": 2, "two_group": 2, "span": 2, MDLM: 0}
    if name not in arity:
        raise fail("unknown sampler")
    if len(args) != arity[name] or (raw is not None and arity[name] == 0):
        raise fail(f"{name} takes {arity[name]} argument(s):")
    if name == "ar":
        return weight, AR()
    if name == MDLM:
        return weight, MaskedDiffusion()
    if name in ("blocks", "random", "random_sizes"):
        try:
            ints = [int(a) for a in args]
        except ValueError:
            raise fail("group sizes must be integers in") from None
        if min(ints) < 1:
            raise fail("group sizes must be >= 1 in")
        if name == "random_sizes":
            if ints[0] > ints[1]:
                raise fail("need lo <= hi in")
            return weight, RandomSizes(ints[0], ints[1])
        return weight, (Blocks if name == "blocks" else Random)(ints[0])
    try:
        lo, hi = (float(a) for a in args)
    except ValueError:
        raise fail("fractions must be numbers in") from None
    if not (0 < lo <= 1 and 0 < hi <= 1):
        raise fail("fractions must lie in (0, 1] in")
    if lo > hi:
        raise fail("need lo <= hi in")
    return weight, (TwoGroup if name == "two_group" else Span)(lo, hi)


def parse_sampler(spec: str) -> Sampler:
    """Parses a sampler spec such as 'random(4)' or '0.4*ar + 0.6*blocks(2)'."""
    compact = normal_spec(spec)
    if not compact:
        raise UserError(f"empty sampler spec {spec!r}; valid: {VALID_FORMS}")
    terms = re.split(r"(?<![0-9][eE])\+", compact)
    parsed = [_parse_term(term, compact) for term in terms]
    if len(parsed) == 1:
        return parsed[0][1]
    weights = np.array([w for w, _ in parsed], np.float64)
    if weights.sum() <= 0:
        raise UserError(f"mixture weights sum to 0 in {spec!r}; valid: {VALID_FORMS}")
    return Mixture(tuple((weights / weights.sum()).tolist()), tuple(s for _, s in parsed))


def example_rng(seed: int, example_index: int, stage: int) -> np.random.Generator:
    """The random stream of one example: a pure function of (seed, example_index, stage)."""
    return np.random.default_rng(np.random.SeedSequence([seed, example_index, stage, _RNG_SALT]))


def batch_rng(seed: int, step: int, stage: int) -> np.random.Generator:
    """The random stream shared by the examples of one step (group_size_scope='batch')."""
    return np.random.default_rng(np.random.SeedSequence([seed, step, stage, _RNG_SALT, 1]))


def fix_parameters(sampler: Sampler, rng: np.random.Generator) -> Sampler:
    """The sampler with its random parameters drawn once: a mixture's component, random_sizes'
    group size (-> random(k)), two_group's and span's fraction. Others are returned as they are."""
    if isinstance(sampler, Mixture):
        index = int(rng.choice(len(sampler.components), p=np.asarray(sampler.weights)))
        return fix_parameters(sampler.components[index], rng)
    if isinstance(sampler, RandomSizes):
        return Random(int(rng.integers(sampler.lo, sampler.hi + 1)))
    if isinstance(sampler, (TwoGroup, Span)):
        fraction = _fraction(sampler.lo, sampler.hi, rng)
        return type(sampler)(fraction, fraction)
    return sampler


SCOPES = ("example", "batch")


def constant_group_size(sampler: Sampler) -> int | None:
    """The size every group has (the last one of a document may be shorter), or None when the
    sampler's group sizes vary or are random: ar -> 1, blocks(s) and random(s) -> s."""
    if isinstance(sampler, AR):
        return 1
    if isinstance(sampler, (Blocks, Random)):
        return sampler.size
    if isinstance(sampler, RandomSizes) and sampler.lo == sampler.hi:
        return sampler.lo
    return None


def max_fixable_group_size(sampler: Sampler) -> int | None:
    """The largest group size one batch can get once `fix_parameters` has drawn the batch's
    parameters, or None if some draw has no constant group size (two_group, span, mdlm)."""
    if isinstance(sampler, Mixture):
        sizes = [max_fixable_group_size(c) for c in sampler.components]
        return None if any(s is None for s in sizes) else max(sizes)
    if isinstance(sampler, RandomSizes):
        return sampler.hi
    return constant_group_size(sampler)


@dataclasses.dataclass(frozen=True)
class Stage:
    spec: str
    until_step: int | None  # applies to steps < until_step; None for the last stage
    until_tokens: int | None = None  # the boundary as written in tokens ('until 2M tokens'), if so


_MULTIPLIERS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9}
_BOUNDARY = re.compile(
    r"^(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<mult>[kKMG]?)\s*(?P<unit>tokens|token|tok|steps|step)?$")
BOUNDARY_FORMS = "'until 100', 'until 100 steps', 'until 2k steps', 'until 2M tokens', 'until 500k tok'"


def parse_boundary(text: str, tokens_per_step: int | None = None) -> tuple[int, int | None]:
    """(step, tokens) of an 'until' boundary: a step count, or a token count (suffix tokens/tok)
    converted to steps as ceil(tokens / tokens_per_step); k/K = 1e3, M = 1e6, G = 1e9.
    tokens is None for a boundary given in steps. Raises ValueError on anything else."""
    match = _BOUNDARY.match(text.strip())
    if match is None:
        raise UserError(f"bad 'until' boundary {text.strip()!r}; write e.g. {BOUNDARY_FORMS}")
    number, mult = match["number"], _MULTIPLIERS[match["mult"]]
    whole, _, frac = number.partition(".")
    value = int(whole) * mult + (int(frac) * mult) // 10 ** len(frac) if frac else int(whole) * mult
    if frac and (int(frac) * mult) % 10 ** len(frac):
        raise UserError(f"'until' boundary {text.strip()!r} is not a whole number of "
                         f"{'tokens' if (match['unit'] or '').startswith('tok') else 'steps'}")
    if not (match["unit"] or "").startswith("tok"):
        return value, None
    if tokens_per_step is None:
        raise UserError(f"'until' boundary {text.strip()!r} is in tokens but no tokens_per_step was "
                         "given to convert it to steps (tokens_per_step = train.batch_size * data.seq_len)")
    if int(tokens_per_step) < 1:
        raise UserError(f"tokens_per_step must be >= 1, got {tokens_per_step}")
    return -(-value // int(tokens_per_step)), value


@dataclasses.dataclass(frozen=True)
class Curriculum:
    stages: tuple[Stage, ...]
    group_size_scope: str = "example"  # or "batch": one parameter draw per step, see module doc
    _samplers: tuple[Sampler, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.stages:
            raise UserError("a curriculum needs at least one stage")
        if self.group_size_scope not in SCOPES:
            raise UserError(f"group_size_scope must be one of {SCOPES}, got {self.group_size_scope!r}")
        object.__setattr__(self, "_samplers", tuple(parse_sampler(s.spec) for s in self.stages))

    @classmethod
    def parse(cls, text: str, group_size_scope: str = "example", *,
              tokens_per_step: int | None = None) -> Curriculum:
        """Parses 'ar until 100; blocks(2) until 200; random(4)' (a bare spec = one stage).

        Boundaries are steps ('until 100', 'until 100 steps', 'until 2k steps') or tokens ('until
        2M tokens', 'until 500k tok'; k/K, M, G multipliers); a token boundary becomes step
        ceil(tokens / tokens_per_step), where tokens_per_step = train.batch_size * data.seq_len
        (row slots, padding included). Stage boundaries must be strictly increasing in steps.
        """
        pieces = [p.strip() for p in text.split(";")]
        if pieces and not pieces[-1]:
            pieces.pop()  # allow a trailing ';'
        if not pieces:
            raise UserError(f"empty curriculum {text!r}; write e.g. 'ar until 100; random(4)'")
        stages, previous = [], 0
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            parts = re.split(r"\buntil\b", piece)
            if len(parts) > 2 or not parts[0].strip():
                raise UserError(f"bad curriculum stage {piece!r}; write '<sampler> until <step>'")
            until, until_tokens = None, None
            if len(parts) == 2:
                if last:
                    raise UserError(f"the last curriculum stage {piece!r} must not have 'until'")
                try:
                    until, until_tokens = parse_boundary(parts[1], tokens_per_step)
                except ValueError as err:
                    raise UserError(f"bad 'until' step in curriculum stage {piece!r}: {err}") from None
                if until <= previous:
                    converted = (f" ({until_tokens:,} tokens = step {until} at {int(tokens_per_step):,} "
                                 "tokens per step)" if until_tokens is not None else "")
                    raise UserError(
                        f"curriculum stage {piece!r}: until steps must be positive and strictly "
                        f"increasing (previous {previous}){converted}"
                    )
                previous = until
            elif not last:
                raise UserError(
                    f"curriculum stage {piece!r} needs 'until <step>' (only the last may omit it)"
                )
            try:
                parse_sampler(parts[0])
            except ValueError as err:
                raise UserError(f"curriculum stage {piece!r}: {err}") from None
            stages.append(Stage(parts[0].strip(), until, until_tokens))
        return cls(tuple(stages), group_size_scope)

    def stage_of_step(self, step: int) -> int:
        if step < 0:
            raise UserError(f"step must be >= 0, got {step}")
        for index, stage in enumerate(self.stages):
            if stage.until_step is None or step < stage.until_step:
                return index
        return len(self.stages) - 1

    def sampler(self, stage: int) -> Sampler:
        return self._samplers[stage]

    def stage_of_example(self, example_index: int, global_batch_size: int) -> int:
        if global_batch_size < 1:
            raise UserError(f"global_batch_size must be >= 1, got {global_batch_size}")
        return self.stage_of_step(example_index // global_batch_size)

    def sample_groups(
        self, lengths: Sequence[int], seed: int, example_index: int, global_batch_size: int
    ) -> list[np.ndarray]:
        """Group ids for each document packed in one example, all from one example rng."""
        stage = self.stage_of_example(example_index, global_batch_size)
        sampler = self.example_sampler(seed, example_index, global_batch_size, stage)
        rng = example_rng(seed, example_index, stage)
        return [sampler(int(length), rng) for length in lengths]

    def max_group_size(self) -> int:
        """The largest constant group size any step can draw (orders.group_size_scope='batch');
        raises ValueError naming the stage whose groups have no constant size."""
        sizes = []
        for stage, sampler in zip(self.stages, self._samplers):
            size = max_fixable_group_size(sampler)
            if size is None:
                raise UserError(
                    f"curriculum stage {stage.spec!r} has no constant group size per batch; "
                    "grid-aligned groups (data.align_groups, model.attention='splash') need every "
                    "stage built from ar, blocks(s), random(s) and random_sizes(lo,hi)")
            sizes.append(size)
        return max(sizes)

    def step_group_size(self, seed: int, step: int, global_batch_size: int) -> int:
        """The one group size of every example of `step` (orders.group_size_scope='batch')."""
        if self.group_size_scope != "batch":
            raise UserError("one group size per step needs orders.group_size_scope='batch', got "
                             f"{self.group_size_scope!r}")
        sampler = self.example_sampler(seed, step * global_batch_size, global_batch_size)
        size = constant_group_size(sampler)
        if size is None:
            raise UserError(f"step {step}: its sampler {sampler} has no constant group size")
        return size

    def example_sampler(self, seed: int, example_index: int, global_batch_size: int,
                        stage: int | None = None) -> Sampler:
        """The sampler of one example: its stage's, with parameters fixed per step for 'batch'."""
        if stage is None:
            stage = self.stage_of_example(example_index, global_batch_size)
        sampler = self.sampler(stage)
        if self.group_size_scope == "batch":
            step = example_index // global_batch_size
            sampler = fix_parameters(sampler, batch_rng(seed, step, stage))
        return sampler
