"""Named curriculum presets: strings for `orders.curriculum` (see a3jax/orders.py for the syntax).

    curriculum("paper_5_stage", 1000)
    -> 'ar until 200; blocks(2) until 400; blocks(4) until 600; random(4) until 800; random(8)'

Each preset is a list of stages (sampler spec) and the share of the total steps at which each stage
but the last ends. Presets:
  paper_5_stage           the paper's progressive adaptation (official README): AR -> contiguous
                          groups of 2 -> of 4 -> 4 scattered positions in random order -> 8. The
                          paper gives no stage lengths: each stage gets an equal share.
  direct_any_order        any-order from step 0: random groups of 1..8 scattered positions
  ar_only                 left to right only (for `causal` the only valid curriculum)
  blocks_only             contiguous groups only: blocks(2) for the first half, then blocks(4)
  masked_diffusion_style  two groups, the second a random subset (its share drawn in [0.01, 1]):
                          the masked-diffusion pattern inside A3. orders.py needs fractions in
                          (0, 1], so the paper's two_group(0,1) is written two_group(0.01,1); the
                          group always holds >= 1 token, so for rows under 150 tokens the two agree.
  mixture                 the tiny default's per-example mixture (experiments/tiny.py)

Used by config files as `from a3jax.configs.presets import curricula`.
"""

from __future__ import annotations

from a3jax.errors import UserError

PRESETS: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "paper_5_stage": (("ar", "blocks(2)", "blocks(4)", "random(4)", "random(8)"), (0.2, 0.4, 0.6, 0.8)),
    "direct_any_order": (("random_sizes(1,8)",), ()),
    "ar_only": (("ar",), ()),
    "blocks_only": (("blocks(2)", "blocks(4)"), (0.5,)),
    "masked_diffusion_style": (("two_group(0.01,1)",), ()),
    "mixture": (("0.5*ar + 0.25*span(0.05,0.3) + 0.25*random_sizes(1,8)",), ()),
}


def stages(name: str) -> tuple[str, ...]:
    """The sampler specs of a preset's stages, in order."""
    return _preset(name)[0]


def boundaries(name: str, total_steps: int) -> list[int]:
    """The step at which each stage but the last ends: strictly increasing, each >= 1."""
    if int(total_steps) < 1:
        raise UserError(f"total_steps={total_steps} must be >= 1")
    bounds, previous = [], 0
    for fraction in _preset(name)[1]:
        previous = max(int(round(fraction * int(total_steps))), previous + 1)
        bounds.append(previous)
    return bounds


def curriculum(name: str, total_steps: int) -> str:
    """The preset as an orders.curriculum string with step boundaries for a run of total_steps."""
    specs = stages(name)
    bounds = boundaries(name, total_steps)
    return "; ".join([f"{s} until {b}" for s, b in zip(specs, bounds)] + [specs[-1]])


def _preset(name: str):
    if name not in PRESETS:
        raise UserError(f"unknown curriculum preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
