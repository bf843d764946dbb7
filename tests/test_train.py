"""Training end to end on CPU: exact resume, schedules, metrics, and bad input that damages nothing."""

import hashlib
import json
import pathlib

import jax
import numpy as np
import pytest

from a3jax import cli
from a3jax.checkpoint import IncompatibleCheckpointError
from a3jax.configs import ConfigError
from a3jax.layout import build_layout
from a3jax.train.loop import train
from a3jax.train.metrics import read_metrics
from a3jax.train.optimizer import learning_rate_schedule

from conftest import TINY, micro_config


def losses(workdir):
    return [(r["step"], r["train/loss"]) for r in read_metrics(workdir) if "train/loss" in r]


@pytest.mark.slow
def test_resume_gives_identical_losses_and_parameters(tmp_path, small_corpus):
    config = micro_config()
    straight = train(config, tmp_path / "straight", corpus=small_corpus, progress=False)
    first = train(config, tmp_path / "resumed", corpus=small_corpus, progress=False, stop_after=10)
    assert first["step"] == 10
    resumed = train(config, tmp_path / "resumed", corpus=small_corpus, progress=False)
    assert resumed["step"] == 20
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")
    assert len(losses(tmp_path / "straight")) == 20
    for a, b in zip(jax.tree.leaves(straight["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Training actually moved: loss fell and eval metrics are finite.
    curve = [loss for _, loss in losses(tmp_path / "straight")]
    assert curve[-1] < curve[0]
    assert all(np.isfinite(v) for v in straight["eval"].values())
    assert set(straight["eval"]) == {"ar/nll", "ar/bits_per_byte", "random(4)/nll", "random(4)/bits_per_byte"}
    assert list((tmp_path / "straight" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_causal_variant_trains(tmp_path, small_corpus):
    config = micro_config("model.variant=causal", "orders.curriculum=ar", "train.steps=6")
    summary = train(config, tmp_path, corpus=small_corpus, progress=False)
    assert set(summary["eval"]) == {"ar/nll", "ar/bits_per_byte"}
    assert np.isfinite(summary["loss"])


@pytest.mark.parametrize("schedule", ["cosine", "constant", "wsd"])
def test_schedules_warm_up_then_follow_their_shape(schedule):
    config = micro_config(f"train.schedule={schedule}", "train.steps=100", "train.warmup_steps=10",
                          "train.lr=1.0", "train.min_lr_ratio=0.1", "train.decay_fraction=0.2")
    lr = learning_rate_schedule(config.train)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    if schedule == "cosine":
        assert float(lr(55)) == pytest.approx(0.55, abs=1e-3)
        assert float(lr(100)) == pytest.approx(0.1)
    elif schedule == "constant":
        assert float(lr(100)) == pytest.approx(1.0)
    else:
        assert float(lr(70)) == pytest.approx(1.0)
        assert float(lr(91)) == pytest.approx(0.55, abs=1e-3)
        assert float(lr(100)) == pytest.approx(0.1)


def tree_digest(directory: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused_and_nothing_is_damaged(tmp_path, small_corpus):
    train(micro_config("train.steps=5"), tmp_path, corpus=small_corpus, progress=False)
    before = tree_digest(tmp_path)
    with pytest.raises(IncompatibleCheckpointError, match=r"model.d_model: checkpoint has 32, config asks 48"):
        train(micro_config("train.steps=10", "model.d_model=48"), tmp_path, corpus=small_corpus, progress=False)
    assert tree_digest(tmp_path) == before


def test_cli_errors_are_one_line_and_name_the_value(tmp_path, capsys):
    cases = [
        (["--config.model.d_modle=64"], "unknown config key model.d_modle (did you mean model.d_model?)"),
        (["--config.model.n_heads=7"], "model.n_heads=7 does not divide model.d_model=128"),
        (["--config.train.steps=abc"], "train.steps='abc' has the wrong type"),
        (["--config.orders.curriculum=randm(4)"], "unknown sampler 'randm(4)'"),
    ]
    for overrides, expected in cases:
        code = cli.main(["train", f"--config={TINY}", f"--workdir={tmp_path / 'w'}"] + overrides)
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert expected in err, err
        assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "w").exists()


def test_cli_refuses_a_workdir_of_another_model_without_touching_it(tmp_path, small_corpus, capsys):
    train(micro_config("train.steps=5"), tmp_path, corpus=small_corpus, progress=False)
    before = tree_digest(tmp_path)
    overrides = [f"--config.{o}" for o in ["model.d_model=32", "model.n_layers=3", "model.n_heads=2",
                                          "model.n_kv_heads=1", "model.ffn_dim=64", "data.seq_len=64"]]
    code = cli.main(["train", f"--config={TINY}", f"--workdir={tmp_path}"] + overrides)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "model.n_layers: checkpoint has 2, config asks 3" in err
    assert "new --workdir" in err
    assert tree_digest(tmp_path) == before


def test_group_ids_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match=r"group ids have shape \(3,\) but the document has shape \(4,\)"):
        build_layout([np.arange(4)], [np.array([1, 2, 3])], 8, bos_id=1, pad_id=0)
    with pytest.raises(ValueError, match="seq_len=4"):
        build_layout([np.arange(4)], [np.arange(1, 5)], 4, bos_id=1, pad_id=0)


@pytest.mark.slow
def test_metrics_of_steps_after_the_checkpoint_are_dropped_on_resume(tmp_path, small_corpus):
    config = micro_config("train.steps=10")
    train(config, tmp_path, corpus=small_corpus, progress=False, stop_after=5)
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a crashed run logged step 6 and 7
        f.write(json.dumps({"step": 6, "train/loss": 123.0}) + "\n")
        f.write('{"step": 7, "train/lo')
    train(config, tmp_path, corpus=small_corpus, progress=False)
    steps = [s for s, _ in losses(tmp_path)]
    assert steps == list(range(1, 11))
    assert 123.0 not in [loss for _, loss in losses(tmp_path)]


@pytest.mark.slow
def test_pallas_and_xla_backends_train_to_the_same_losses(tmp_path, small_corpus):
    runs = {}
    for backend in ("xla", "pallas"):
        config = micro_config(f"model.attention={backend}", "train.steps=20", "train.eval_every=1000",
                              "train.checkpoint_every=1000")
        train(config, tmp_path / backend, corpus=small_corpus, progress=False)
        runs[backend] = [loss for _, loss in losses(tmp_path / backend)]
    assert len(runs["xla"]) == 20
    np.testing.assert_allclose(runs["pallas"], runs["xla"], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch_step(tmp_path, small_corpus):
    runs = {}
    for accum in (1, 4):  # four micro-batches of 2 rows against one of 8
        config = micro_config(f"train.grad_accum={accum}", "train.steps=5", "train.eval_every=1000",
                              "train.checkpoint_every=1000", "mesh.devices=1")
        summary = train(config, tmp_path / str(accum), corpus=small_corpus, progress=False)
        runs[accum] = ([loss for _, loss in losses(tmp_path / str(accum))], summary["params"])
    for accum in (4,):
        np.testing.assert_allclose(runs[accum][0], runs[1][0], atol=1e-5, rtol=0)
        for a, b in zip(jax.tree.leaves(runs[accum][1]), jax.tree.leaves(runs[1][1])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    with pytest.raises(ConfigError, match="train.grad_accum=3 must be > 0 and divide train.batch_size=8"):
        micro_config("train.grad_accum=3")


@pytest.mark.slow
def test_each_curriculum_stage_ends_with_a_summary(tmp_path, small_corpus):
    config = micro_config("train.steps=12", "orders.curriculum=ar until 4; blocks(2) until 10; random(4)",
                          "train.eval_every=100", "train.checkpoint_every=100")
    train(config, tmp_path, corpus=small_corpus, progress=False)
    records = read_metrics(tmp_path)
    stages = [r for r in records if "stage/index" in r]
    assert [(r["step"], r["stage/index"]) for r in stages] == [(4, 0), (10, 1), (12, 2)]
    tokens_per_step = 8 * 64
    assert [r["stage/tokens"] for r in stages] == [4 * tokens_per_step, 6 * tokens_per_step, 2 * tokens_per_step]
    losses = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    assert stages[1]["stage/train_loss_mean"] == pytest.approx(np.mean([losses[s] for s in range(5, 11)]))
    assert all(np.isfinite(r["stage/eval/ar/nll"]) and np.isfinite(r["stage/eval/random(4)/nll"]) for r in stages)


@pytest.mark.slow
def test_init_from_a_causal_run_starts_a3_from_its_weights(tmp_path, small_corpus):
    """train.init_from: a fresh a3 run starts from a causal run's latest weights (every weight
    copied, plus the query vector); its content stream then IS the causal model, so under the 'ar'
    grouping the a3 model's content logits equal the causal model's (to float32 rounding: the a3
    model runs both streams' rows through one matmul)."""
    import jax.numpy as jnp

    from a3jax.configs import parse
    from a3jax.layout import stack_layouts
    from a3jax.model.params import abstract_params

    causal_cfg = micro_config("model.variant=causal", "orders.curriculum=ar", "orders.eval=ar", "train.steps=4")
    causal = train(causal_cfg, tmp_path / "causal", corpus=small_corpus, progress=False)
    for query_init in ("normal", "mean"):
        a3_cfg = micro_config(f"train.init_from={tmp_path / 'causal'}", f"train.query_init={query_init}")
        start = train(a3_cfg, tmp_path / f"a3-{query_init}", corpus=small_corpus, progress=False, stop_after=0)
        for name in causal["params"]:
            for a, b in zip(jax.tree.leaves(causal["params"][name]), jax.tree.leaves(start["params"][name])):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        query = np.asarray(start["params"]["query_embed"])
        if query_init == "mean":
            np.testing.assert_allclose(query, np.asarray(causal["params"]["embed"]).mean(0), rtol=1e-5, atol=1e-7)
        else:
            assert 0 < query.std() < 0.1
    doc = np.arange(2, 30) % 50
    batch = {k: jnp.asarray(v) for k, v in stack_layouts(
        [build_layout([doc], [np.arange(1, doc.size + 1)], 32, bos_id=257, pad_id=256)]).items()}
    a3_model = abstract_params(parse(a3_cfg).model)[0].bind(start["params"])
    causal_model = abstract_params(parse(causal_cfg).model)[0].bind(causal["params"])
    content_a3 = a3_model.logits(a3_model.hidden_states(batch, full_content=True)["content"])
    np.testing.assert_allclose(np.asarray(content_a3), np.asarray(causal_model(batch)), rtol=1e-5, atol=1e-5)
    # a fresh run only: a workdir with its own checkpoint resumes from it, init_from is not read again
    resumed = train(a3_cfg, tmp_path / "a3-mean", corpus=small_corpus, progress=False, stop_after=2)
    assert resumed["step"] == 2


@pytest.mark.slow
def test_a_trained_causal_run_converted_to_shifted_a3_is_lossless_under_ar(tmp_path, small_corpus):
    """A causal model trained for 40 steps, started from by a3 runs (train.init_from): with
    model.query_input=shift the a3 model's held-out log-probs under 'ar' are the causal model's at
    every target (float32, 1e-4); with the paper's query vector they are far off."""
    import jax.numpy as jnp

    from a3jax.configs import parse
    from a3jax.data import ByteTokenizer, eval_batch
    from a3jax.model.params import abstract_params

    from support import model_log_probs

    causal_cfg = micro_config("model.variant=causal", "orders.curriculum=ar", "orders.eval=ar", "train.steps=40")
    causal = train(causal_cfg, tmp_path / "causal", corpus=small_corpus, progress=False)
    batch = {k: jnp.asarray(v) for k, v in eval_batch(causal_cfg, small_corpus, ByteTokenizer(), "ar", 4).items()}
    causal_model = abstract_params(parse(causal_cfg).model)[0].bind(causal["params"])
    reference, weights = (np.asarray(a) for a in model_log_probs(causal_model, batch))
    assert weights.sum() > 100 and -reference[weights > 0].mean() < 4.0  # trained: well below ln(259) = 5.6
    gaps = {}
    for query_input in ("shift", "vector"):
        a3_cfg = micro_config(f"train.init_from={tmp_path / 'causal'}", f"model.query_input={query_input}")
        start = train(a3_cfg, tmp_path / f"a3-{query_input}", corpus=small_corpus, progress=False, stop_after=0)
        a3_model = abstract_params(parse(a3_cfg).model)[0].bind(start["params"])
        log_probs, a3_weights = (np.asarray(a) for a in model_log_probs(a3_model, batch))
        np.testing.assert_array_equal(a3_weights, weights)
        gaps[query_input] = np.abs(log_probs - reference)[weights > 0].max()
    assert gaps["shift"] <= 1e-4, gaps
    assert gaps["vector"] > 0.5, gaps


@pytest.mark.slow
def test_init_from_refuses_another_architecture(tmp_path, small_corpus):
    train(micro_config("train.steps=2"), tmp_path / "small", corpus=small_corpus, progress=False)
    config = micro_config(f"train.init_from={tmp_path / 'small'}", "model.ffn_dim=96")
    with pytest.raises(ValueError, match=r"holds a different model: model.ffn_dim=64 there, 96 here"):
        train(config, tmp_path / "other", corpus=small_corpus, progress=False)
    assert not (tmp_path / "other" / "checkpoints").exists() or not any((tmp_path / "other" / "checkpoints").iterdir())


def test_on_a_cpu_each_train_step_is_waited_for_before_the_next(tmp_path, small_corpus, monkeypatch):
    """XLA:CPU: steps dispatched ahead of the running one held their memory at once (the SmolLM2
    adaptation peaked at 20-24 GB and was killed; 9 GB waiting for each step)."""
    from a3jax.train import loop

    assert jax.default_backend() == "cpu"
    dispatched, waited = {}, []
    real_make, real_block = loop.make_train_step, jax.block_until_ready

    def make(*args, **kwargs):
        step_fn = real_make(*args, **kwargs)

        def recorded(params, opt_state, step, batch, group_size):
            if step >= 1:  # the step before was waited on before this one was dispatched
                assert any(w is dispatched[step - 1] for w in waited), step
            out = step_fn(params, opt_state, step, batch, group_size)
            dispatched[step] = out[2]
            return out

        return recorded

    def block(x):
        waited.append(x)
        return real_block(x)

    monkeypatch.setattr(loop, "make_train_step", make)
    monkeypatch.setattr(jax, "block_until_ready", block)
    summary = train(micro_config("train.steps=6", "train.log_every=6"), tmp_path, corpus=small_corpus,
                    progress=False)
    assert summary["step"] == 6 and sorted(dispatched) == list(range(6))
