"""Grid-aligned layouts (data.align_groups): one group size per step, every document's groups on
the grid of that size, so a static block-causal mask and segment ids give exact visibility."""

import numpy as np
import pytest

from a3jax import orders
from a3jax.configs import ConfigError, parse
from a3jax.data import ByteTokenizer
from a3jax.data.packing import pack_rows
from a3jax.data.pipeline import train_batches
from a3jax.layout import bos_slots, build_layout, grid_violations, stack_layouts
from a3jax.model.attention import visibility_masks

from conftest import micro_config

BOS, PAD = 300, 301


def aligned_rows(rng, n, g, spec, batch=4, align=None):
    sampler = orders.parse_sampler(spec)
    rows = []
    for _ in range(batch):
        lengths, room = [], n
        while True:  # documents while they fit with their worst-case alignment padding
            length = int(rng.integers(1, max(2, n // 3)))
            if length + g > room:
                break
            lengths.append(length)
            room -= length + g
        lengths = lengths or [n - g]
        docs = [rng.integers(0, 256, size=length) for length in lengths]
        rows.append(build_layout(docs, [sampler(d.size, rng) for d in docs], n, bos_id=BOS, pad_id=PAD,
                                 align=g if align is None else align))
    return stack_layouts(rows)


def static_masks(segment_ids, g):
    n = segment_ids.shape[-1]
    block = np.arange(n) // g
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return same & (block[None, None, :] <= block[None, :, None]), same & (block[None, None, :] < block[None, :, None])


@pytest.mark.parametrize("g,spec", [(1, "ar"), (2, "blocks(2)"), (3, "random(3)"), (4, "random(4)"), (8, "random(8)")])
def test_aligned_rows_make_the_static_mask_exact(g, spec):
    rng = np.random.default_rng(g)
    rows = aligned_rows(rng, 96, g, spec)
    assert not grid_violations(rows["segment_ids"], rows["groups"], g).any()
    content, query = (np.asarray(m) for m in visibility_masks(rows["segment_ids"], rows["groups"]))
    static_content, static_query = static_masks(rows["segment_ids"], g)
    real = rows["segment_ids"] > 0
    np.testing.assert_array_equal(static_content[real], content[real])
    np.testing.assert_array_equal(static_query[real], query[real])
    # every BOS ends a block; every document's first target group starts one
    bos = (rows["positions"] == 0) & real
    assert np.all(np.nonzero(bos)[1] % g == g - 1)


@pytest.mark.parametrize("g,spec,align", [(4, "random(4)", 1), (4, "random(2)", 4), (2, "random(4)", 2),
                                          (4, "span(0.2,0.5)", 4)])
def test_grid_violations_flag_rows_the_static_mask_would_get_wrong(g, spec, align):
    rows = aligned_rows(np.random.default_rng(0), 96, g, spec, align=align)
    bad = grid_violations(rows["segment_ids"], rows["groups"], g)
    assert bad.any()
    content, query = (np.asarray(m) for m in visibility_masks(rows["segment_ids"], rows["groups"]))
    static_content, static_query = static_masks(rows["segment_ids"], g)
    wrong = (static_content != content).any(-1) | (static_query != query).any(-1)
    real = rows["segment_ids"] > 0
    np.testing.assert_array_equal(bad, wrong & real)  # flagged exactly where the mask would be wrong


def test_a_multi_token_context_group_is_not_aligned():
    doc = np.arange(10)
    groups = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])  # a 3-token prompt joins BOS's group 0
    row = build_layout([doc], [groups], 32, bos_id=BOS, pad_id=PAD, align=4)
    assert grid_violations(row["segment_ids"][None], row["groups"][None], 4).any()


def test_aligned_layout_equals_a_plain_reference():
    from test_data import reference_layout

    rng = np.random.default_rng(1)
    sampler = orders.parse_sampler("random(4)")
    for _ in range(20):
        docs = [rng.integers(0, 256, size=int(rng.integers(0, 20))) for _ in range(int(rng.integers(1, 4)))]
        groups = [sampler(d.size, rng) for d in docs]
        expected = reference_layout(docs, groups, 96, BOS, PAD, align=4)
        got = build_layout(docs, groups, 96, bos_id=BOS, pad_id=PAD, align=4)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_bos_slots_and_overflow_message():
    assert bos_slots([5, 2, 0], 1) == [0, 6, 9]
    assert bos_slots([5, 2, 0], 4) == [3, 11, 15]  # 3; 3+6=9 -> 11; 11+3=14 -> 15
    with pytest.raises(ValueError, match="BOS aligned to 4.*seq_len=16"):
        build_layout([np.arange(5), np.arange(6)], [np.ones(5, int), np.ones(6, int)], 16,
                     bos_id=BOS, pad_id=PAD, align=4)


@pytest.mark.parametrize("reserve", [0, 3, 7])
def test_packing_with_a_reserve_covers_every_token_once_and_always_fits(reserve):
    rng = np.random.default_rng(reserve)
    lengths = rng.integers(1, 200, size=300)
    seq_len = 64
    rows = pack_rows(lengths, seq_len, reserve)
    covered = [np.zeros(n, int) for n in lengths]
    for r in range(len(rows)):
        pieces = rows[r]
        for doc, start, stop in pieces:
            covered[doc][start:stop] += 1
        # the worst-case alignment for any group size <= reserve + 1 fits the row
        sizes = [stop - start for _, start, stop in pieces]
        for g in range(1, reserve + 2):
            starts = bos_slots(sizes, g)
            assert starts[-1] + sizes[-1] + 1 <= seq_len
    assert all(np.all(c == 1) for c in covered)
    with pytest.raises(ValueError, match="reserve=63"):
        pack_rows(lengths, seq_len, 63)


def test_curriculum_group_sizes():
    curriculum = orders.Curriculum.parse("ar until 3; 0.5*blocks(2) + 0.5*random_sizes(3,6)", "batch")
    assert curriculum.max_group_size() == 6
    sizes = {curriculum.step_group_size(0, step, 8) for step in range(3)}
    assert sizes == {1}
    later = [curriculum.step_group_size(0, step, 8) for step in range(3, 60)]
    assert set(later) <= {2, 3, 4, 5, 6} and len(set(later)) >= 4
    with pytest.raises(ValueError, match="'span\\(0.1,0.2\\)' has no constant group size"):
        orders.Curriculum.parse("ar until 3; span(0.1,0.2)", "batch").max_group_size()
    with pytest.raises(ValueError, match="group_size_scope='batch'"):
        orders.Curriculum.parse("ar").step_group_size(0, 0, 8)


ALIGNED = ["data.align_groups=True", "orders.group_size_scope=batch",
           "orders.curriculum=ar until 2; random_sizes(2,4)", "train.batch_size=4"]


def test_pipeline_batches_are_aligned_to_each_steps_group_size(small_corpus):
    config = micro_config(*ALIGNED)
    curriculum = parse(config).curriculum
    batches = train_batches(config, small_corpus, ByteTokenizer())
    seen = set()
    for step in range(12):
        batch = next(batches)
        g = curriculum.step_group_size(int(config.seed), step, 4)
        seen.add(g)
        assert not grid_violations(batch["segment_ids"], batch["groups"], g).any()
        for row_groups, row_segments in zip(batch["groups"], batch["segment_ids"]):
            for segment in set(row_segments.tolist()) - {0}:
                counts = np.bincount(row_groups[row_segments == segment])[1:]
                assert np.all(counts[:-1] == g) and 1 <= counts[-1] <= g  # constant size, last may be short
    assert seen >= {1, 2, 3} or seen >= {1, 2, 4}
    # resuming mid-run gives the same batches (the step's group size is a function of the step)
    again = train_batches(config, small_corpus, ByteTokenizer(), start_step=7)
    fresh = train_batches(config, small_corpus, ByteTokenizer())
    for _ in range(7):
        next(fresh)
    first, second = next(again), next(fresh)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.parametrize("overrides,message", [
    (["model.attention=splash"], "needs --config.data.align_groups=True"),
    (["data.align_groups=True"], "set --config.orders.group_size_scope=batch"),
    (["data.align_groups=True", "orders.group_size_scope=batch"], "span\\(0.05,0.3\\).*no constant group size"),
    (["data.align_groups=True", "orders.group_size_scope=batch", "orders.curriculum=random(80)"],
     "largest group size 80"),
    (["model.attention_chunks=0"], "attention_chunks=0 must be an integer >= 1"),
])
def test_bad_alignment_configs_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        micro_config(*overrides)
