"""Named curriculum presets (a3jax/configs/presets/curricula.py), e.g.
curricula.curriculum("paper_5_stage", 1000)."""

from a3jax.configs.presets.curricula import PRESETS, boundaries, curriculum, stages  # noqa: F401
