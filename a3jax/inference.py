"""A trained model ready for scoring and sampling: params, static model, tokenizer and config of a
workdir's checkpoint (the entry point of `a3jax sample` and `a3jax eval`)."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from ml_collections import ConfigDict

from a3jax.checkpoint import load_params
from a3jax.configs import Experiment, parse
from a3jax.data import load_tokenizer
from a3jax.errors import UserError
from a3jax.model import ModelConfig
from a3jax.model.params import ModelDef, abstract_params


@dataclasses.dataclass
class LoadedModel:
    model_def: ModelDef
    params: dict
    cfg: ModelConfig
    tokenizer: Any  # a3jax.data.Tokenizer
    config: ConfigDict  # the experiment config the checkpoint was trained with
    experiment: Experiment  # the same, parsed
    step: int


def load_model(workdir: str | pathlib.Path, step: int | None = None) -> LoadedModel:
    """The checkpoint at `step` (latest if None) of a training or `a3jax convert` workdir.

    Raises ValueError naming the workdir when it holds no usable checkpoint.
    """
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise UserError(f"--workdir {workdir} does not exist; pass the folder `a3jax train` wrote")
    step, cfg, meta, params = load_params(workdir, step)  # MissingCheckpointError names the problem
    config = ConfigDict(meta.get("config", {}))
    if "data" not in config:
        raise UserError(f"checkpoint {workdir}/checkpoints/{step} has no experiment config in its "
                         "metadata; it was not written by `a3jax train` or `a3jax convert`")
    experiment = parse(config)
    tokenizer = load_tokenizer(experiment.data)
    tokenizer.check_vocab(cfg.vocab_size)
    model_def, _ = abstract_params(cfg)
    return LoadedModel(model_def=model_def, params=params, cfg=cfg, tokenizer=tokenizer, config=config,
                       experiment=experiment, step=step)
