"""How the model computes (attention backend, prefix chunks, remat) may change across a resume;
what it computes (its shape) may not."""

import numpy as np
import pytest

from a3jax.checkpoint import IncompatibleCheckpointError
from a3jax.train.loop import train
from a3jax.train.metrics import read_metrics

from conftest import micro_config

RUN = ["train.eval_every=1000", "train.checkpoint_every=2"]


def losses(workdir):
    return [(r["step"], r["train/loss"]) for r in read_metrics(workdir) if "train/loss" in r]


@pytest.mark.slow
def test_resume_under_other_execution_settings_continues_the_same_run(tmp_path, small_corpus):
    train(micro_config(*RUN, "train.steps=4"), tmp_path / "straight", corpus=small_corpus, progress=False)
    train(micro_config(*RUN, "train.steps=4"), tmp_path / "resumed", corpus=small_corpus, progress=False,
          stop_after=2)
    summary = train(micro_config(*RUN, "train.steps=4", "model.attention_chunks=2", "model.remat=full"),
                    tmp_path / "resumed", corpus=small_corpus, progress=False)
    assert summary["step"] == 4
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert [s for s, _ in resumed] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in resumed], [v for _, v in straight], atol=1e-5, rtol=0)
    with pytest.raises(IncompatibleCheckpointError, match="model.n_layers: checkpoint has 2, config asks 3"):
        train(micro_config(*RUN, "train.steps=6", "model.n_layers=3"), tmp_path / "resumed",
              corpus=small_corpus, progress=False)
