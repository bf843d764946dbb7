"""Tests for a3jax.orders: group samplers, their statelessness, and the curriculum."""

import numpy as np
import pytest
from scipy import stats

from a3jax.orders import Curriculum, Stage, example_rng, parse_sampler

LENGTHS = (0, 1, 2, 7, 64)
SPECS = (
    "ar",
    "blocks(3)",
    "random(4)",
    "random_sizes(2,5)",
    "two_group(0.1,0.9)",
    "span(0.05,0.3)",
    "0.4*ar + 0.2*span(0.05, 0.3) + 0.4*random_sizes(1,8)",
)


def draws(spec, length, count=20):
    sampler = parse_sampler(spec)
    return [sampler(length, example_rng(0, i, 0)) for i in range(count)]


def sizes_in_order(groups):
    return np.bincount(groups)[1:]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("length", LENGTHS)
def test_valid_partition(spec, length):
    for groups in draws(spec, length):
        assert groups.shape == (length,)
        assert groups.dtype == np.int32
        if length:
            k = groups.max()
            assert groups.min() == 1
            assert set(groups.tolist()) == set(range(1, k + 1))


@pytest.mark.parametrize("length", LENGTHS)
def test_shapes_of_each_sampler(length):
    np.testing.assert_array_equal(draws("ar", length, 1)[0], np.arange(1, length + 1))
    for groups in draws("blocks(3)", length):
        np.testing.assert_array_equal(groups, np.arange(length) // 3 + 1)  # contiguous, in order
    for groups in draws("random(4)", length):
        sizes = sizes_in_order(groups)
        assert np.all(sizes[:-1] == 4) and (sizes.size == 0 or 1 <= sizes[-1] <= 4)
    for groups in draws("random_sizes(2,5)", length):
        sizes = sizes_in_order(groups)
        assert np.all((sizes[:-1] >= 2) & (sizes[:-1] <= 5))
        assert sizes.size == 0 or 1 <= sizes[-1] <= 5
    for groups in draws("two_group(0.1,0.9)", length):
        assert groups.max(initial=0) == min(length, 2)
    for groups in draws("span(0.05,0.3)", length):
        assert groups.max(initial=0) == length  # all singletons
        order = np.argsort(groups)  # generation order
        lo, hi = (max(1, min(length, round(f * length))) for f in (0.05, 0.3))

        def is_span_layout(s, order=order):  # outside left to right, then a contiguous span of s
            head, tail = order[: length - s], order[length - s :]
            return np.all(np.diff(head) > 0) and np.all(np.diff(tail) == 1)

        assert length == 0 or any(is_span_layout(s) for s in range(lo, hi + 1))


def test_random_scatters_positions_and_randomises_order():
    for groups in draws("random(4)", 64):
        assert not np.array_equal(groups, np.arange(64) // 4 + 1)
    counts = np.zeros(16)
    sampler = parse_sampler("random(4)")
    for i in range(2000):
        groups = sampler(16, example_rng(1, i, 0))
        np.add.at(counts, np.flatnonzero(groups == 1), 1)
    assert counts.sum() == 8000
    assert stats.chisquare(counts).pvalue > 1e-3


def test_two_group_fraction_range():
    sampler = parse_sampler("two_group(0.25,0.5)")
    for i in range(200):
        second = int((sampler(100, example_rng(2, i, 0)) == 2).sum())
        assert 25 <= second <= 50


def test_span_length_range():
    sampler = parse_sampler("span(0.2,0.2)")
    for i in range(50):
        groups = sampler(50, example_rng(3, i, 0))
        span = np.sort(np.flatnonzero(groups > 40))  # the last 10 generated tokens
        assert span.size == 10 and np.all(np.diff(span) == 1)
        np.testing.assert_array_equal(groups[span], np.arange(41, 51))


def test_mixture_frequencies_match_weights():
    sampler = parse_sampler("0.25*ar + 0.75*blocks(2)")
    n = 4000
    ar = sum(int(sampler(8, example_rng(4, i, 0)).max() == 8) for i in range(n))
    expected, sd = n * 0.25, np.sqrt(n * 0.25 * 0.75)
    assert abs(ar - expected) < 5 * sd
    # weights are normalised
    sampler = parse_sampler("1*ar + 3*blocks(2)")
    ar = sum(int(sampler(8, example_rng(4, i, 0)).max() == 8) for i in range(n))
    assert abs(ar - expected) < 5 * sd


def test_stateless_and_example_dependent():
    sampler = parse_sampler("random(4)")
    a = sampler(64, example_rng(7, 11, 1))
    np.testing.assert_array_equal(a, sampler(64, example_rng(7, 11, 1)))
    assert not np.array_equal(a, sampler(64, example_rng(7, 12, 1)))
    assert not np.array_equal(a, sampler(64, example_rng(7, 11, 2)))
    assert not np.array_equal(a, sampler(64, example_rng(8, 11, 1)))


def test_whitespace_insensitive():
    assert parse_sampler(" random_sizes ( 1 , 8 ) ") == parse_sampler("random_sizes(1,8)")


@pytest.mark.parametrize(
    "spec, bad",
    [
        ("randm(4)", "randm(4)"),
        ("random(0)", "random(0)"),
        ("blocks(-1)", "blocks(-1)"),
        ("blocks(1.5)", "blocks(1.5)"),
        ("blocks", "blocks"),
        ("ar(2)", "ar(2)"),
        ("random_sizes(5,2)", "random_sizes(5,2)"),
        ("random_sizes(3)", "random_sizes(3)"),
        ("two_group(0,0.5)", "two_group(0,0.5)"),
        ("span(0.5,1.5)", "span(0.5,1.5)"),
        ("span(0.6, 0.4)", "span(0.6,0.4)"),
        ("-0.5*ar + 1*blocks(2)", "-0.5*ar"),
        ("0*ar + 0*blocks(2)", "0*ar + 0*blocks(2)"),
        ("x*ar", "x*ar"),
        ("", ""),
    ],
)
def test_bad_specs(spec, bad):
    with pytest.raises(ValueError) as info:
        parse_sampler(spec)
    assert repr(bad) in str(info.value)
    assert "valid:" in str(info.value)


def test_bad_spec_in_mixture_names_the_term():
    with pytest.raises(ValueError, match=r"randm\(4\)"):
        parse_sampler("0.5*ar + 0.5*randm(4)")


def test_curriculum_parse_and_stages():
    cur = Curriculum.parse("ar until 100; blocks(2) until 200; random(4)")
    assert cur.stages == (Stage("ar", 100), Stage("blocks(2)", 200), Stage("random(4)", None))
    assert [cur.stage_of_step(s) for s in (0, 99, 100, 199, 200, 10**9)] == [0, 0, 1, 1, 2, 2]
    assert cur.stage_of_example(799, 8) == 0 and cur.stage_of_example(800, 8) == 1
    assert cur.sampler(1) is cur.sampler(1)
    single = Curriculum.parse("random(8)")
    assert single.stages == (Stage("random(8)", None),)
    assert single.stage_of_step(12345) == 0


def test_sample_groups_uses_stage_sampler_and_one_rng():
    cur = Curriculum.parse("ar until 2; blocks(4)")
    lengths = [5, 9, 3]
    for example in range(24):
        out = cur.sample_groups(lengths, seed=0, example_index=example, global_batch_size=8)
        assert [g.shape for g in out] == [(5,), (9,), (3,)]
        for length, groups in zip(lengths, out):
            size = 1 if example < 16 else 4
            np.testing.assert_array_equal(groups, np.arange(length) // size + 1)
    cur = Curriculum.parse("random(2)")
    out = cur.sample_groups([6, 6], seed=3, example_index=5, global_batch_size=4)
    rng = example_rng(3, 5, 0)
    sampler = parse_sampler("random(2)")
    expected = [sampler(6, rng), sampler(6, rng)]  # documents drawn in order from one rng
    for got, want in zip(out, expected):
        np.testing.assert_array_equal(got, want)
    again = cur.sample_groups([6, 6], seed=3, example_index=5, global_batch_size=4)
    for got, want in zip(again, out):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "text, bad",
    [
        ("ar until 100; blocks(2) until 50; random(4)", "blocks(2) until 50"),
        ("ar until 0; random(4)", "ar until 0"),
        ("ar; random(4)", "ar"),
        ("ar until 100; random(4) until 200", "random(4) until 200"),
        ("ar until ten; random(4)", "ar until ten"),
        ("ar until 100; randm(4)", "randm(4)"),
        ("", ""),
    ],
)
def test_bad_curricula(text, bad):
    with pytest.raises(ValueError) as info:
        Curriculum.parse(text)
    assert repr(bad) in str(info.value)
