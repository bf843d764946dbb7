"""Activation sharding constraints inside the model, by the mesh in context (jax.set_mesh).

The residual streams [B, N, D] are kept split over the batch axes (data, fsdp) between layers so
the compiler never gathers a whole batch on one device. Without a mesh this is a no-op.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def batch_axes(mesh, batch_size: int) -> tuple[str, ...] | None:
    """The mesh's batch axes of size > 1, or None when there are none or they do not divide
    batch_size (e.g. a small eval batch: replicate rather than fail)."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    if not axes or batch_size % math.prod(mesh.shape[a] for a in axes):
        return None
    return axes


def constrain_batch(x):
    """x [B, ...] split over the mesh's batch axes (when they divide B)."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = None if mesh.empty else batch_axes(mesh, x.shape[0])
    if axes is None:
        return x
    return jax.lax.with_sharding_constraint(x, P(axes, *([None] * (x.ndim - 1))))
