"""The logical-axis rule table and the activation sharding constraints inside the model.

Parameters and activations are sharded through ONE table (config `mesh.rules`): each logical axis
name ('batch', 'embed', 'heads', ...) maps to mesh axes (data, fsdp, tensor). Parameters get their
shardings from it in a3jax/parallel.py; inside the model, activations read it from the context set
by `axis_rules(rules)` (the train loop and the benchmarks set it; without it DEFAULT_RULES apply)
and the mesh from jax.set_mesh. The residual streams [B, N, D] are kept split over the 'batch'
axes between layers so the compiler never gathers a whole batch on one device. Without a mesh the
constraints are no-ops.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import jax
from jax.sharding import PartitionSpec as P

from a3jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
DEFAULT_RULES = (
    ("batch", "data,fsdp"), ("vocab", "tensor"), ("embed", "fsdp"), ("heads", "tensor"),
    ("kv_heads", "tensor"), ("mlp", "tensor"), ("layers", ""), ("norm", ""),
)


class MeshError(UserError):
    """A mesh, rule table or batch that does not fit the devices."""


def parse_rules(rules) -> dict[str, tuple[str, ...]]:
    """{logical axis: mesh axes} from (logical, "axis,axis") pairs."""
    table = {}
    for logical, axes in rules:
        mesh_axes = tuple(a.strip() for a in str(axes).split(",") if a.strip())
        unknown = [a for a in mesh_axes if a not in MESH_AXES]
        if unknown:
            raise MeshError(f"mesh.rules maps {logical!r} to unknown mesh axes {unknown}; valid: {MESH_AXES}")
        table[logical] = mesh_axes
    return table


_DEFAULT_TABLE = parse_rules(DEFAULT_RULES)
_RULES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("a3jax_axis_rules", default=None)


@contextlib.contextmanager
def axis_rules(rules):
    """Activations inside this block follow `rules` (the config's mesh.rules)."""
    token = _RULES.set(parse_rules(rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def logical_to_mesh(name: str) -> tuple[str, ...]:
    """The mesh axes of a logical axis under the rules in context."""
    table = _RULES.get() or _DEFAULT_TABLE
    if name not in table:
        raise MeshError(f"logical axis {name!r} has no entry in mesh.rules; add ('{name}', 'AXES')")
    return table[name]


def batch_axes(mesh, batch_size: int) -> tuple[str, ...] | None:
    """The mesh axes the 'batch' rule maps to, of size > 1; None when there are none or they do
    not divide batch_size (e.g. a small eval batch: replicate rather than fail)."""
    axes = tuple(a for a in logical_to_mesh("batch") if a in mesh.axis_names and mesh.shape[a] > 1)
    if not axes or batch_size % math.prod(mesh.shape[a] for a in axes):
        return None
    return axes


def constrain(x, *logical_axes):
    """x split over the mesh axes that the rule table gives each logical axis (None: replicated),
    dimension by dimension; an axis that does not divide its dimension is dropped (that dimension
    stays replicated). Without a mesh (or on one device) a no-op."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    spec = []
    for size, name in zip(x.shape, logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name == "batch":
            spec.append(batch_axes(mesh, size))
            continue
        axes = tuple(a for a in logical_to_mesh(name) if a in mesh.axis_names and mesh.shape[a] > 1)
        spec.append(axes if axes and size % math.prod(mesh.shape[a] for a in axes) == 0 else None)
    if all(s is None for s in spec):
        return x
    return jax.lax.with_sharding_constraint(x, P(*spec))


def constrain_batch(x):
    """x [B, ...] split over the mesh's batch axes (when they divide B)."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = None if mesh.empty else batch_axes(mesh, x.shape[0])
    if axes is None:
        return x
    return jax.lax.with_sharding_constraint(x, P(axes, *([None] * (x.ndim - 1))))
