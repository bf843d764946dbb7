"""Device mesh and logical-axis sharding.

Mesh axes are (data, fsdp, tensor): `data` and `fsdp` split the batch, `fsdp` also splits
parameters along their `embed` axis, `tensor` splits heads, MLP width and vocabulary. Each
parameter carries logical axis names (model/transformer.py PARAM_AXES); the rule table in the
config (`mesh.rules`, parsed in model/sharding.py) maps each logical name to mesh axes, for
parameters here and for activations and batches through `axis_rules`. A dimension that a mesh
axis does not divide stays replicated (logged), so small models run on any mesh.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from a3jax.model.sharding import DEFAULT_RULES, MESH_AXES, MeshError, logical_to_mesh, parse_rules  # noqa: F401
from a3jax.model.transformer import param_logical_axes

_log = logging.getLogger("a3jax")


def mesh_shape(mesh_config, device_count: int) -> tuple[int, ...]:
    """Resolves the (data, fsdp, tensor) degrees of a MeshConfig (a3jax.configs); one of them may
    be -1 (fill the rest)."""
    if mesh_config.preset:
        if mesh_config.preset not in mesh_config.presets:
            raise MeshError(f"mesh.preset={mesh_config.preset!r} is not one of {sorted(mesh_config.presets)}")
        degrees = list(mesh_config.presets[mesh_config.preset])
    else:
        degrees = [getattr(mesh_config, name) for name in MESH_AXES]
    text = ", ".join(f"{n}={d}" for n, d in zip(MESH_AXES, degrees))
    if degrees.count(-1) > 1 or any(d == 0 or d < -1 for d in degrees):
        raise MeshError(f"mesh ({text}): degrees must be >= 1, with at most one -1 (auto-fill)")
    known = math.prod(d for d in degrees if d != -1)
    if -1 in degrees:
        if device_count % known:
            raise MeshError(f"mesh ({text}) does not divide the {device_count} devices: "
                            f"the fixed degrees multiply to {known}")
        degrees[degrees.index(-1)] = device_count // known
    if math.prod(degrees) != device_count:
        raise MeshError(f"mesh ({text}) has {math.prod(degrees)} devices but JAX sees {device_count}; "
                        "make the degrees multiply to the device count or use -1 for one axis")
    return tuple(degrees)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh over `devices`, or the first mesh.devices devices (0 = all)."""
    if devices is None:
        devices = jax.devices()
        wanted = mesh_config.devices
        if wanted < 0 or wanted > len(devices):
            raise MeshError(f"mesh.devices={wanted} but JAX sees {len(devices)} devices; use 0 for all")
        devices = devices[:wanted] if wanted else devices
    devices = list(devices)
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def spec_for(logical_axes: Sequence[str], shape: Sequence[int], mesh: Mesh, rules: dict) -> P:
    """PartitionSpec of one array; mesh axes of size 1 and non-dividing axes are dropped."""
    used, entries = set(), []
    for name, dim in zip(logical_axes, shape):
        if name not in rules:
            raise MeshError(f"logical axis {name!r} has no entry in mesh.rules; add ('{name}', 'AXES')")
        axes = tuple(a for a in rules[name] if mesh.shape[a] > 1 and a not in used)
        size = math.prod(mesh.shape[a] for a in axes)
        if axes and dim % size:
            _log.info("dimension %s=%d is not divisible by mesh axes %s (%d): replicated", name, dim, axes, size)
            axes = ()
        used.update(axes)
        entries.append(axes if len(axes) > 1 else (axes[0] if axes else None))
    return P(*entries)


def param_shardings(mesh: Mesh, params: Any, rules) -> Any:
    table = parse_rules(rules)
    axes_tree = param_logical_axes(params)
    return jax.tree.map(
        lambda axes, p: NamedSharding(mesh, spec_for(axes, p.shape, mesh, table)),
        axes_tree, params, is_leaf=lambda x: isinstance(x, tuple),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches [B, N] split over the mesh axes of the 'batch' rule (rules in context, see
    model/sharding.axis_rules)."""
    axes = tuple(a for a in logical_to_mesh("batch") if mesh.shape[a] > 1)
    return NamedSharding(mesh, P(axes if axes else None))


def check_batch(global_batch: int, mesh: Mesh) -> None:
    axes = logical_to_mesh("batch")
    split = math.prod(mesh.shape[a] for a in axes)
    if global_batch % split:
        raise MeshError(f"train.batch_size={global_batch} is not divisible by the batch axes "
                        f"{' x '.join(axes)} = {split}; use a multiple of {split}")


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles this process's rows into global arrays (rows of all processes, in process order)."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
