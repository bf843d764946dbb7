"""Activation sharding constraints inside the model, by the mesh in context (jax.set_mesh).

The residual streams [B, N, D] are kept split over the batch axes (data, fsdp) between layers so
the compiler never gathers a whole batch on one device. Without a mesh this is a no-op.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def constrain_batch(x):
    """x [B, ...] split over the mesh's batch axes (when they divide B)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
        return x
    return jax.lax.with_sharding_constraint(x, P(axes, *([None] * (x.ndim - 1))))
