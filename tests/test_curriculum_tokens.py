"""Curriculum stage boundaries in tokens ('ar until 2M tokens; random(4)'): parsing, conversion to
steps at train.batch_size * data.seq_len tokens per step, errors, and step boundaries unchanged."""

import numpy as np
import pytest

from a3jax.configs import ConfigError, parse, tokens_per_step
from a3jax.data import ByteTokenizer
from a3jax.data.pipeline import train_dataset
from a3jax.orders import Curriculum, Stage, parse_boundary

from conftest import micro_config


@pytest.mark.parametrize("text, per_step, expected", [
    ("100", None, (100, None)),
    ("100 steps", None, (100, None)),
    ("1 step", None, (1, None)),
    ("2k steps", None, (2000, None)),
    ("2k", None, (2000, None)),
    ("2M tokens", 1024, (1954, 2_000_000)),  # ceil(2e6 / 1024)
    ("2M tok", 1024, (1954, 2_000_000)),
    ("4096 tokens", 1024, (4, 4096)),  # exact
    ("4097 tokens", 1024, (5, 4097)),  # a partial step rounds up
    ("1.5k tok", 100, (15, 1500)),
    ("1.5K tokens", 1000, (2, 1500)),
    ("1G tokens", 2**20, (954, 10**9)),
    ("1 token", 512, (1, 1)),
])
def test_boundaries_in_steps_and_tokens(text, per_step, expected):
    assert parse_boundary(text, per_step) == expected


def test_token_boundaries_convert_to_steps():
    cur = Curriculum.parse("ar until 2M tokens; blocks(2) until 5000 steps; random(4)", tokens_per_step=8 * 128)
    assert cur.stages == (Stage("ar", 1954, 2_000_000), Stage("blocks(2)", 5000), Stage("random(4)", None))
    assert [cur.stage_of_step(s) for s in (0, 1953, 1954, 4999, 5000)] == [0, 0, 1, 1, 2]


@pytest.mark.parametrize("text, per_step, message", [
    ("ar until 2M tokens; random(4)", None, r"'2M tokens' is in tokens but no tokens_per_step was given"),
    ("ar until 1000 tokens; blocks(2) until 1; random(4)", 1024,
     r"'blocks\(2\) until 1'.*strictly increasing \(previous 1\)"),
    ("ar until 1000 tokens; blocks(2) until 1020 tokens; random(4)", 1024,
     r"strictly increasing \(previous 1\) \(1,020 tokens = step 1 at 1,024 tokens per step\)"),
    ("ar until 0 tokens; random(4)", 1024, r"'ar until 0 tokens'.*must be positive"),
    ("ar until 5 bytes; random(4)", 1024, r"'ar until 5 bytes'.*bad 'until' boundary '5 bytes'.*2M tokens"),
    ("ar until 1.5; random(4)", None, r"'1.5' is not a whole number of steps"),
    ("ar until 1.0005k tokens; random(4)", 10, r"not a whole number of tokens"),
    ("ar until 2m tokens; random(4)", 1024, r"bad 'until' boundary '2m tokens'"),
    ("ar until 10 tokens; random(4)", 0, r"tokens_per_step must be >= 1"),
])
def test_bad_token_boundaries(text, per_step, message):
    with pytest.raises(ValueError, match=message):
        Curriculum.parse(text, tokens_per_step=per_step)


STEP_CURRICULA = ["ar until 100; blocks(2) until 200; random(4)", "random(8)", "ar until 2; blocks(4)",
                  "0.5*ar + 0.5*random(4) until 7; two_group(0.1,0.5);"]


@pytest.mark.parametrize("text", STEP_CURRICULA)
def test_step_curricula_are_unchanged(text):
    plain = Curriculum.parse(text)
    with_tokens = Curriculum.parse(text, tokens_per_step=777)
    assert plain == with_tokens
    assert all(stage.until_tokens is None for stage in plain.stages)
    for example in (0, 15, 16, 40, 10**4):
        for a, b in zip(plain.sample_groups([5, 9], 0, example, 8), with_tokens.sample_groups([5, 9], 0, example, 8)):
            np.testing.assert_array_equal(a, b)


def test_configs_convert_tokens_at_batch_size_times_seq_len(small_corpus):
    config = micro_config("orders.curriculum=ar until 1024 tokens; blocks(4)")  # 8 x 64 = 512 per step
    assert tokens_per_step(config) == 512
    cur = parse(config).curriculum
    assert cur.stages == (Stage("ar", 2, 1024), Stage("blocks(4)", None))
    dataset = train_dataset(config, small_corpus, ByteTokenizer())
    for example, size in ((15, 1), (16, 4)):  # steps 0-1 hold examples 0-15: 'ar'; then blocks(4)
        layout = dataset[example]
        real = (layout["segment_ids"] > 0) & (layout["positions"] > 0)
        np.testing.assert_array_equal(layout["groups"][real], (layout["positions"][real] - 1) // size + 1)
    # 600 and 1000 tokens both end in step 2 at 512 tokens per step: no room for the middle stage.
    with pytest.raises(ConfigError, match=r"^orders: .*'blocks\(2\) until 1000 tokens'.*1,000 tokens = step 2"):
        micro_config("orders.curriculum=ar until 600 tokens; blocks(2) until 1000 tokens; random(4)")
