"""The model variants, described by what they do: every module asks these facts instead of testing
a variant's name.

  a3      two streams: query rows predict each target from the earlier groups; any order but
          'mdlm'; exact log-likelihoods; any decoding plan, cached or recompute; exports to HF
          LLaMA (+ model.query_embed); may start from a causal model's weights
  causal  next-token LLaMA (the AR control): content row i predicts token i + 1; trains, scores and
          decodes left to right only ('ar', cached); exports to HF LLaMA
  mdlm    the masked-diffusion control: target rows input MASK, attention is bidirectional inside a
          document, content row i predicts its own token; 'mdlm' order only; its NLL is an upper
          bound (not exact); decodes in recompute mode only; not exportable

The facts in the first block say how a variant computes (the model, the loss, the cache and the
samplers read them); the second block says what it may do, with the errors that name the fix.
"""

from __future__ import annotations

import dataclasses

from a3jax.errors import ConfigError, UserError
from a3jax.orders import MDLM, normal_spec, parse_sampler, uses_mdlm

VARIANTS = ("a3", "causal", "mdlm")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    what: str  # a few words for messages
    # -- how it computes
    query_stream: bool  # query rows (from the learned query vector) predict each target; else content rows do
    next_token: bool  # row i predicts the NEXT token of its document (targets shifted by one; 'ar' layouts)
    masked_inputs: bool  # targets input the MASK id (never predicted); attention ignores groups
    # -- what it may do
    only_order: str | None  # the one order it trains/evaluates/scores under; None = any but 'mdlm'
    exact_likelihood: bool  # scores are exact log-likelihoods (else an upper bound on the NLL)
    decode_modes: tuple[str, ...]  # 'cached' needs the exact KV cache, 'recompute' the official loop
    decode_plan: str | None  # the one decoding plan it allows; None = any
    exportable: bool  # to HF LLaMA safetensors
    starts_from: tuple[str, ...] = ()  # other variants whose weights a run may start from (init_from)

    @property
    def predicts_from(self) -> str:
        """The hidden states whose logits score the targets: 'query' or 'content'."""
        return "query" if self.query_stream else "content"

    @property
    def bidirectional(self) -> bool:
        """Every row sees its whole document (groups are ignored by attention)."""
        return self.masked_inputs

    # -- orders
    def trains_under(self, spec: str, sampler=None) -> bool:
        if self.only_order is not None:
            return normal_spec(spec) == self.only_order
        return not uses_mdlm(sampler if sampler is not None else parse_sampler(spec))

    def evaluates_under(self, spec: str) -> bool:
        return self.trains_under(spec)

    def order_error(self, bad: list[str], key: str, verb: str = "trains") -> str:
        """Why orders `bad` (of config key `key`) cannot serve this variant, and the fix."""
        if self.only_order is not None:
            return (f"model.variant={self.name!r} ({self.what}) {verb} only under the {self.only_order!r} "
                    f"order, but {key} has {bad}; set --config.{key}={self.only_order}")
        return (f"the {MDLM!r} order is the masked-diffusion control's objective (L/m-weighted), but "
                f"model.variant={self.name!r} has it in orders {bad}; set --config.model.variant=mdlm "
                "or use another order")

    def check_training_orders(self, specs, samplers=None) -> None:
        """ConfigError unless every curriculum stage may train this variant."""
        samplers = samplers if samplers is not None else [None] * len(specs)
        bad = [s for s, sampler in zip(specs, samplers) if not self.trains_under(s, sampler)]
        if bad:
            raise ConfigError(self.order_error(bad, "orders.curriculum"))

    def check_eval_orders(self, specs) -> None:
        """ConfigError for held-out orders (orders.eval) that would report a wrong number: another
        variant's objective ('mdlm'), or any other order for a variant whose scores are only a bound.
        Orders an exact variant cannot use (causal: all but 'ar') are skipped by the loop (eval_orders)."""
        bad = [s for s in specs
               if not self.evaluates_under(s) and (uses_mdlm(parse_sampler(s)) or not self.exact_likelihood)]
        if bad or (not self.exact_likelihood and not specs):
            raise ConfigError(self.order_error(bad or list(specs), "orders.eval", "is evaluated"))

    def eval_orders(self, specs) -> list[str]:
        """The held-out orders the training loop evaluates: the allowed ones, or this variant's one
        order when none of `specs` is allowed."""
        kept = [s for s in specs if self.evaluates_under(s)]
        return kept or ([self.only_order] if self.only_order else [])

    def check_scoring_orders(self, specs) -> None:
        """UserError when an order cannot score this variant."""
        bad = [s for s in specs if not self.evaluates_under(s)]
        if not bad:
            return
        if self.only_order is not None:
            raise UserError(f"orders {bad}: a model.variant={self.name!r} model ({self.what}) is scored "
                            f"under the {self.only_order!r} order only; use --orders {self.only_order}")
        raise UserError(f"orders {bad}: the {MDLM!r} order needs a model.variant='mdlm' model")

    # -- uses
    def check_exact(self, what: str) -> None:
        """UserError for uses that need exact log-likelihoods (mdlm has only a bound)."""
        if not self.exact_likelihood:
            raise UserError(f"{what} needs exact log-likelihoods, but a model.variant={self.name!r} "
                            "model gives only an upper bound on the NLL; use an a3 or causal model")

    def check_decode(self, plan: str, plan_kind: str, mode: str) -> None:
        wrong_plan = self.decode_plan is not None and plan_kind != self.decode_plan
        if wrong_plan or mode not in self.decode_modes:
            if self.decode_plan == "ar":
                raise UserError(f"a model.variant={self.name!r} model ({self.what}) decodes left to right "
                                f"only: use plan 'ar' in {self.decode_modes[0]} mode (got plan {plan!r}, "
                                f"mode {mode!r})")
            raise UserError(f"{self.what} recomputes every step; use mode={self.decode_modes[0]!r} (got mode "
                            f"{mode!r} for a model.variant={self.name!r} model)")

    def check_export(self) -> None:
        if not self.exportable:
            raise UserError(f"a model.variant={self.name!r} model ({self.what}) has no HF LLaMA "
                            "equivalent; only a3 and causal models export")

    def check_start_from(self, source: Variant, where: str) -> None:
        """UserError unless a run of this variant may start from `source`'s weights."""
        if source.name != self.name and source.name not in self.starts_from:
            allowed = " or ".join(repr(v) for v in (self.name,) + self.starts_from)
            raise UserError(f"{where} holds a model.variant={source.name!r} model; a {self.name!r} run can "
                            f"start from a {allowed} model")


VARIANT_FACTS = {
    "a3": Variant("a3", "two streams, any order", query_stream=True, next_token=False, masked_inputs=False,
                  only_order=None, exact_likelihood=True, decode_modes=("cached", "recompute"),
                  decode_plan=None, exportable=True, starts_from=("causal",)),
    "causal": Variant("causal", "predicts the next token", query_stream=False, next_token=True,
                      masked_inputs=False, only_order="ar", exact_likelihood=True, decode_modes=("cached",),
                      decode_plan="ar", exportable=True),
    "mdlm": Variant("mdlm", "masked diffusion", query_stream=False, next_token=False, masked_inputs=True,
                    only_order=MDLM, exact_likelihood=False, decode_modes=("recompute",), decode_plan=None,
                    exportable=False),
}


def variant_of(name_or_cfg) -> Variant:
    """The facts of a variant, by name or from anything with a `.variant` name (a ModelConfig)."""
    name = getattr(name_or_cfg, "variant", name_or_cfg)
    if name not in VARIANT_FACTS:
        raise ConfigError(f"model.variant={name!r} is not one of {VARIANTS}")
    return VARIANT_FACTS[name]


