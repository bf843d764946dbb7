"""Natural infilling spans (a3jax.eval.spans) and held-out bytes under any tokenizer: a span is the
tokens its matched text touches, its window holds it, and bits per byte counts the text's bytes."""

import numpy as np
import pytest

from a3jax.data import ByteTokenizer, target_bytes, train_bpe
from a3jax.eval.spans import KINDS, find_spans, prose_items, span_items
from a3jax.layout import build_layout, stack_layouts
from a3jax.orders import example_rng, parse_sampler

SOURCE = '''
class Counter:
    """Count hashable items."""

    def __init__(self, items=None, start=0):
        """Make a counter from an iterable of items."""
        self.total = start
        for item in items or ():
            self.add(item)

    def add(self, item, times=1):
        count = self.counts.get(item, 0)
        self.counts[item] = count + times
        return count + times

    def most_common(self, n):
        ranked = sorted(self.counts.items(), key=lambda kv: -kv[1])
        return ranked[:n]
'''
TRUTH = {"identifier": {"count", "ranked"}, "return": {"count + times", "ranked[:n]"},
         "arguments": {"self, items=None, start=0", "self, item, times=1", "self, n"},
         "docstring": {"Count hashable items.", "Make a counter from an iterable of items."}}


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    texts = [SOURCE * 3, "def f(x):\n    return x + 1\n" * 20]
    return train_bpe(texts, 300, tmp_path_factory.mktemp("bpe") / "tokenizer.json")


@pytest.mark.parametrize("which", ["bytes", "bpe"])
def test_spans_cover_their_matched_text_in_any_tokenizer(which, bpe):
    tokenizer = ByteTokenizer() if which == "bytes" else bpe
    doc = np.concatenate([tokenizer.encode(SOURCE), [tokenizer.eos_id]]).astype(np.int32)
    spans = find_spans([doc], tokenizer, seq_len=64, per_kind=10)
    assert {s.kind for s in spans} == set(KINDS)
    for span in spans:
        text = tokenizer.decode(span.window[span.start:span.stop])
        assert text.strip() in TRUTH[span.kind], (span.kind, text)
        if which == "bytes":  # byte tokens: exactly the match, no whitespace around it
            assert text == text.strip()
        assert 0 <= span.start < span.stop <= span.window.size <= 63
        # the window is a contiguous piece of the document
        assert any(np.array_equal(doc[a:a + span.window.size], span.window) for a in range(doc.size))
    # every match was found (per_kind is large enough)
    found = {(s.kind, tokenizer.decode(s.window[s.start:s.stop]).strip()) for s in spans}
    assert found == {(k, t) for k, texts in TRUTH.items() for t in texts}


def test_the_bpe_tokenizer_round_trips_and_is_deterministic(bpe, tmp_path):
    assert (bpe.bos_id, bpe.eos_id, bpe.pad_id) == (0, 1, 2) and bpe.vocab_size == 300
    for text in (SOURCE, "naïve 𝔘nicode ✓\n\ttabs"):
        assert bpe.decode(bpe.encode(text)) == text
    again = train_bpe([SOURCE * 3, "def f(x):\n    return x + 1\n" * 20], 300, tmp_path / "again.json")
    assert again.path.read_bytes() == bpe.path.read_bytes()
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_bpe([SOURCE], 100, tmp_path / "small.json")


@pytest.mark.parametrize("which", ["bytes", "bpe"])
def test_target_bytes_counts_the_text_under_any_order(which, bpe):
    """The eval batch is in sorted group layout; its targets are put back in order before they are
    decoded, so the count is the documents' UTF-8 bytes whatever the order."""
    tokenizer = ByteTokenizer() if which == "bytes" else bpe
    texts = ["def f(x):\n    return x + 1\n", "naïve ✓ ünïcode", SOURCE[:120]]
    docs = [np.asarray(tokenizer.encode(t), np.int32) for t in texts]
    want = sum(len(t.encode("utf-8")) for t in texts)
    for spec in ("ar", "random(4)", "random(1)"):
        sampler = parse_sampler(spec)
        groups = [sampler(d.size, example_rng(0, i, 0)) for i, d in enumerate(docs)]
        layouts = [build_layout([d], [g], 160, bos_id=tokenizer.bos_id, pad_id=tokenizer.pad_id)
                   for d, g in zip(docs, groups)]
        assert target_bytes(stack_layouts(layouts), tokenizer) == want, spec


PROSE = ("Intro line without a full stop\n\n"
         "The cache keeps every key. It never changes once a group is committed. Decoding appends to it. "
         "That is why the sampler is exact.\n\n"
         "```\nNot. Prose. Here. At all.\n```\n\n"
         "Short. Too. Few.")


def test_prose_items_mask_a_whole_middle_sentence_between_its_neighbours():
    """Only an inner sentence of 30-200 characters of a prose paragraph of 3+ sentences: never a
    code block, a first or last sentence, or a short one ("Decoding appends to it.")."""
    texts = [PROSE, PROSE.replace("cache", "store")]
    items = prose_items(texts, 10, seed=3)
    assert [i["middle"] for i in items] == ["It never changes once a group is committed."] * 2
    for item, noun in zip(sorted(items, key=lambda i: i["prefix"]), ("cache", "store")):
        assert item["prefix"] == f"The {noun} keeps every key. "
        assert item["suffix"] == " Decoding appends to it. That is why the sampler is exact."
    assert prose_items(texts, 1, seed=3) == prose_items(texts, 1, seed=3) and len(prose_items(texts, 1)) == 1


def test_span_items_are_the_windows_text_around_each_span():
    tokenizer = ByteTokenizer()
    doc = np.asarray(tokenizer.encode(SOURCE), np.int32)
    spans = find_spans([doc], tokenizer, 200, 2)
    for span, item in zip(spans, span_items(spans, tokenizer)):
        assert item["prefix"] + item["middle"] + item["suffix"] == tokenizer.decode(span.window)
        assert item["middle"] == tokenizer.decode(span.window[span.start:span.stop]) and item["kind"] == span.kind
