"""The model-variant policy, in one place: under which orders each variant trains and evaluates,
whether its scores are exact log-likelihoods, how it decodes, whether it exports to HF LLaMA.

  a3      two streams; any order (not 'mdlm'); exact log-likelihoods; decodes with any plan, cached
          or recompute; exports to HF LLaMA (+ model.query_embed)
  causal  next-token LLaMA (the AR control); trains, evaluates, scores and decodes left to right
          only ('ar', cached); exports to HF LLaMA
  mdlm    the masked-diffusion control; trains and evaluates under 'mdlm' only; its NLL is an upper
          bound (not exact); decodes in recompute mode only; not exportable

How each variant computes (streams, masks, loss) is the model's definition (model/, loss.py);
this module answers only "is this allowed, and if not, what should the user do".
"""

from __future__ import annotations

import dataclasses
import re

from a3jax.model.config import VARIANTS  # noqa: F401  (re-exported: the policy covers every variant)
from a3jax.orders import MDLM, parse_sampler, uses_mdlm


def _normal(spec: str) -> str:
    return re.sub(r"\s+", "", spec)


@dataclasses.dataclass(frozen=True)
class VariantPolicy:
    name: str
    only_order: str | None  # the one order it trains/evaluates/scores under; None = any (not mdlm)
    exact_likelihood: bool  # scores are exact log-likelihoods (else an upper bound on the NLL)
    decode_modes: tuple[str, ...]
    decode_plan: str | None  # the one decoding plan it allows; None = any
    exportable: bool  # to HF LLaMA safetensors

    def trains_under(self, spec: str, sampler=None) -> bool:
        if self.only_order is not None:
            return _normal(spec) == self.only_order
        return not uses_mdlm(sampler if sampler is not None else parse_sampler(spec))

    def training_order_error(self, bad: list[str]) -> str:
        if self.name == "causal":
            return (f"model.variant='causal' predicts the next token and trains only under the 'ar' "
                    f"order, but orders.curriculum has {bad}; set --config.orders.curriculum=ar")
        if self.name == "mdlm":
            return (f"model.variant='mdlm' (masked diffusion) trains only under the 'mdlm' order, but "
                    f"orders.curriculum has {bad}; set --config.orders.curriculum=mdlm")
        return (f"the {MDLM!r} order is the masked-diffusion control's objective (L/m-weighted), but "
                f"model.variant={self.name!r} has it in orders {bad}; set --config.model.variant=mdlm "
                "or use another order")

    def evaluates_under(self, spec: str) -> bool:
        return self.trains_under(spec)

    def eval_orders(self, specs) -> list[str]:
        """The held-out orders the training loop evaluates: the allowed ones, or this variant's one
        order when none of `specs` is allowed."""
        kept = [s for s in specs if self.evaluates_under(s)]
        return kept or ([self.only_order] if self.only_order else [])

    def check_scoring_orders(self, specs) -> None:
        """Raises ValueError when an order cannot score this variant."""
        bad = [s for s in specs if not self.evaluates_under(s)]
        if not bad:
            return
        if self.name == "causal":
            raise ValueError(f"orders {bad}: a causal model predicts the next token and is scored "
                             "left to right only; use --orders ar")
        if self.name == "mdlm":
            raise ValueError(f"orders {bad}: a model.variant='mdlm' model is scored under its own "
                             "objective only; use --orders mdlm (an upper bound on the NLL)")
        raise ValueError(f"orders {bad}: the 'mdlm' order needs a model.variant='mdlm' model")

    def check_exact(self, what: str) -> None:
        """Raises ValueError for uses that need exact log-likelihoods (mdlm has only a bound)."""
        if not self.exact_likelihood:
            raise ValueError(f"{what} needs exact log-likelihoods, but a model.variant={self.name!r} "
                             "model gives only an upper bound on the NLL; use an a3 or causal model")

    def check_decode(self, plan: str, plan_kind: str, mode: str) -> None:
        if self.decode_plan is not None and plan_kind != self.decode_plan or mode not in self.decode_modes:
            if self.name == "causal":
                raise ValueError(f"a causal model decodes left to right only: use plan 'ar' in cached mode "
                                 f"(got plan {plan!r}, mode {mode!r})")
            raise ValueError(f"masked diffusion recomputes every step; use mode='recompute' (got mode "
                             f"{mode!r} for a model.variant={self.name!r} model)")

    def check_export(self) -> None:
        if not self.exportable:
            raise ValueError(f"a model.variant={self.name!r} model has no HF LLaMA equivalent (it reads a "
                             "MASK token bidirectionally); only a3 and causal models export")


POLICIES = {
    "a3": VariantPolicy("a3", None, True, ("cached", "recompute"), None, True),
    "causal": VariantPolicy("causal", "ar", True, ("cached",), "ar", True),
    "mdlm": VariantPolicy("mdlm", MDLM, False, ("recompute",), None, False),
}


def policy_of(variant: str) -> VariantPolicy:
    if variant not in POLICIES:
        raise ValueError(f"model.variant={variant!r} is not one of {VARIANTS}")
    return POLICIES[variant]
