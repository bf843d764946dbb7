"""Orbax checkpoints of the train state plus a JSON record of the config and data position.

Layout: WORKDIR/checkpoints/<step>/{state, meta}. Orbax writes each step to a temporary folder
and renames it when complete, so a half-written step is never listed. Before anything is restored
the saved model config is compared with the requested one; a mismatch is refused with the
differences listed, and nothing in the workdir is touched.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from a3jax.errors import UserError
from a3jax.model.config import EXECUTION_FIELDS, ModelConfig
from a3jax.model.params import abstract_params


def _register_array_handler() -> None:
    """Replica-parallel writes only for slices >= 1 MiB: small arrays are written whole by one
    replica instead of being sliced (each distinct slice costs a compile on every save)."""
    handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=1 << 20)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns that the default handler is overridden
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logger.setLevel(level)


_register_array_handler()


class IncompatibleCheckpointError(UserError):
    """The workdir holds a checkpoint of a different model."""


class MissingCheckpointError(UserError):
    """The workdir has no (complete) checkpoint at the asked step."""


def load_params(workdir, step: int | None = None):
    """(step, ModelConfig, meta, float32 numpy params) of a workdir's checkpoint (latest if None),
    for reading only (sampling, evaluation, export): restored on the CPU, nothing written."""
    workdir = pathlib.Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        inside = sorted(p.parent.name for p in workdir.glob("*/checkpoints") if p.is_dir())
        hint = (f" it holds the training workdirs {', '.join(d + '/' for d in inside)}: pass one of them "
                f"(--workdir {workdir / inside[0]})" if inside else " pass a training workdir")
        raise MissingCheckpointError(f"--workdir {workdir} has no checkpoints/ folder;{hint}")
    checkpointer = Checkpointer(workdir, async_save=False)
    try:
        steps = sorted(checkpointer.manager.all_steps())
        if not steps:
            raise MissingCheckpointError(f"--workdir {workdir} has no complete checkpoint")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise MissingCheckpointError(f"--step {step}: {workdir} has checkpoints at steps {steps}")
        meta = checkpointer.read_meta(step)
        cfg = ModelConfig.from_mapping(meta["model"])
        cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        _, shapes = abstract_params(cfg)
        abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=cpu), shapes)
        params = checkpointer.restore_params(step, abstract)
    finally:
        checkpointer.close()
    return step, cfg, meta, jax.tree.map(np.asarray, params)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def config_differences(saved: dict, requested: dict, prefix: str) -> list[str]:
    """Human-readable differences between two nested config dicts."""
    saved_flat, requested_flat = _flatten(saved, prefix + "."), _flatten(requested, prefix + ".")
    lines = []
    for key in sorted(set(saved_flat) | set(requested_flat)):
        a, b = saved_flat.get(key, "<absent>"), requested_flat.get(key, "<absent>")
        if a != b:
            lines.append(f"{key}: checkpoint has {a!r}, config asks {b!r}")
    return lines


class Checkpointer:
    """A thin wrapper over orbax's CheckpointManager for train state + metadata."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int = 2, async_save: bool = True,
                 writer: bool = False):
        """writer=True (the training run that owns the workdir): folders of checkpoint writes killed
        midway are removed at start (they are never read either way). Readers (sample, eval, export)
        leave them alone: one may be a write in flight of a run still training."""
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=writer,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def read_meta(self, step: int) -> dict:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def check_compatible(self, model_config: dict) -> None:
        """Raises IncompatibleCheckpointError if the latest checkpoint holds another model."""
        step = self.latest_step()
        if step is None:
            return
        saved = self.read_meta(step).get("model", {})
        if saved:  # keys added since that checkpoint was written take their defaults
            saved = ModelConfig.from_mapping(saved).to_dict()
        # The attention backend, chunking and remat policy change how, not what, the model computes.
        saved, model_config = ({k: v for k, v in c.items() if k not in EXECUTION_FIELDS}
                               for c in (saved, model_config))
        diffs = config_differences(saved, model_config, "model")
        if diffs:
            raise IncompatibleCheckpointError(
                f"{self.directory} holds a checkpoint (step {step}) of a different model: "
                + "; ".join(diffs)
                + ". Use a new --workdir, or set the model config to match the checkpoint."
            )

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        return self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the params of a checkpoint, placed as the abstract tree's shardings say (any mesh)."""
        import jax

        restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), abstract_params)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            {"params": abstract_params}, restore_args={"params": restore_args}, partial_restore=True)))
        return restored["state"]["params"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def write_start(workdir, params, opt_state, model_config: ModelConfig, config_dict: dict,
                source: dict) -> None:
    """A step-0 checkpoint of given params (converted or adapted weights) and a fresh optimizer
    state (train/optimizer.fresh_state), so that `a3jax train` on `workdir` starts from those
    weights through the ordinary resume path. `source` says where the weights came from."""
    import json

    meta = {"step": 0, "model": model_config.to_dict(), "config": config_dict, "source": source}
    checkpointer = Checkpointer(workdir, keep=2, async_save=False)
    try:
        checkpointer.save(0, {"params": params, "opt_state": opt_state},
                          json.loads(json.dumps(meta, default=list)), force=True)
    finally:
        checkpointer.close()

