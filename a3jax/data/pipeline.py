"""The Grain pipeline: packed rows -> per-epoch shuffle -> stateless groups -> sorted layouts.

Element e of `train_dataset` (the GLOBAL example index) is a pure function of (config, e): its
row comes from a per-epoch shuffle seeded by (seed, e // num_rows) and its grouping from
`Curriculum.sample_groups(..., seed, e, train.batch_size)`. Functions take the experiment config
(a ConfigDict, parsed once by a3jax.configs.parse, or the parsed Experiment). Step s holds examples
[s * B, (s + 1) * B); process p of P takes the contiguous slice [p * B / P, (p + 1) * B / P). So
resume, any worker count and any process count give the same batches.

Rows are packed once at index time from the documents' lengths (`PackedRows`, arrays); documents
are read when a row is built (lazily for ArrayRecord corpora). orders.group_size_scope="batch"
shares one sampler draw per step (see a3jax.orders); data.align_groups then also aligns every
document's groups to that step's group size (a3jax.layout, grid alignment), which the static-mask
attention backend (`splash`) needs. Packing then keeps max group size - 1 slots free per piece.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np
from absl import flags

from a3jax.configs import parse
from a3jax.data.corpus import Corpus, doc_lengths
from a3jax.data.packing import PackedRows, pack_rows
from a3jax.data.tokenizer import Tokenizer
from a3jax.errors import UserError
from a3jax.layout import build_layout, stack_layouts
from a3jax.orders import Curriculum, example_rng, parse_sampler

# With data.align_groups every example carries the step's one group size (an int32 scalar; [B] in a
# batch): the train loop passes it to the jitted step as a static argument, and never sends it to
# the device.
GROUP_SIZE = "group_size"
_IN_PROCESS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
_NO_SHARED_MEMORY = 2**62  # min_shm_size: arrays smaller than this are copied between processes


class RowToLayout:
    """map_with_index transform: (global example index, packed row) -> layout dict."""

    def __init__(self, docs: Sequence[np.ndarray], curriculum: Curriculum, seed: int,
                 global_batch_size: int, seq_len: int, tokenizer: Tokenizer, align_groups: bool = False):
        self.docs = docs
        self.curriculum = curriculum
        self.seed = seed
        self.global_batch_size = global_batch_size
        self.seq_len = seq_len
        self.bos_id = tokenizer.bos_id
        self.pad_id = tokenizer.pad_id
        self.align_groups = align_groups

    def __call__(self, example_index: int, row: np.ndarray) -> dict[str, np.ndarray]:
        read = getattr(self.docs, "read_slice", None)
        if read is not None:
            pieces = [read(doc, start, stop) for doc, start, stop in row.tolist()]
        else:
            pieces = [self.docs[doc][start:stop] for doc, start, stop in row.tolist()]
        groups = self.curriculum.sample_groups(
            [p.size for p in pieces], self.seed, example_index, self.global_batch_size
        )
        align = 1
        if self.align_groups:  # the step's one group size (orders.group_size_scope='batch')
            align = self.curriculum.step_group_size(
                self.seed, example_index // self.global_batch_size, self.global_batch_size)
        layout = build_layout(pieces, groups, self.seq_len, bos_id=self.bos_id, pad_id=self.pad_id, align=align)
        if self.align_groups:  # the batch carries its group size: the loop passes it to the step as is
            layout[GROUP_SIZE] = np.int32(align)
        return layout


def _packed_rows(docs: Sequence[np.ndarray], seq_len: int, what: str, reserve: int = 0) -> PackedRows:
    if not len(docs):
        raise UserError(f"the corpus has no {what} documents")
    return pack_rows(doc_lengths(docs), seq_len, reserve)


def train_dataset(config, corpus: Corpus, tokenizer: Tokenizer) -> grain.MapDataset:
    """Infinite MapDataset; element e = layout (int32 [seq_len] fields) of global example e."""
    exp = parse(config)
    seq_len, aligned = exp.data.seq_len, exp.data.align_groups
    # Aligned rows keep max group size - 1 slots free per piece for the padding before each BOS.
    reserve = exp.curriculum.max_group_size() - 1 if aligned else 0
    rows = _packed_rows(corpus.train_docs, seq_len, "train", reserve)
    dataset = grain.MapDataset.source(rows)
    if exp.data.shuffle:
        dataset = dataset.shuffle(seed=exp.seed % 2**32)  # reseeded per epoch by grain
    to_layout = RowToLayout(corpus.train_docs, exp.curriculum, exp.seed, exp.train.batch_size, seq_len,
                            tokenizer, aligned)
    return dataset.repeat().map_with_index(to_layout)


class BatchStream:
    """An iterator of this process's batches that owns its Grain iterator: `close()` (or leaving a
    `with` block) stops Grain's worker processes and frees their shared memory, which an iterator
    left to the garbage collector does not do (Python then warns of leaked shared_memory objects)."""

    def __init__(self, iterator):
        self._iterator = iterator

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def train_batches(
    config,
    corpus: Corpus,
    tokenizer: Tokenizer,
    start_step: int = 0,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> BatchStream:
    """This process's slice [batch_size // process_count, seq_len] of steps start_step, ...

    data.worker_count > 0 prefetches in that many Grain worker processes; close the returned
    stream (or use it in a `with` block) to stop them.
    """
    exp = parse(config)
    global_batch = exp.train.batch_size
    if process_count < 1 or not 0 <= process_index < process_count:
        raise UserError(f"bad process_index={process_index} for process_count={process_count}")
    if global_batch % process_count:
        raise UserError(
            f"train.batch_size={global_batch} is not divisible by process_count={process_count}"
        )
    local_batch = global_batch // process_count
    # Batch k of the local-size batching is process (k % P)'s slice of step k // P.
    batches = train_dataset(exp, corpus, tokenizer).batch(local_batch)
    batches = batches.slice(slice(start_step * process_count + process_index, None, process_count))
    stream = batches.to_iter_dataset(_IN_PROCESS)
    if exp.data.worker_count > 0:
        if not flags.FLAGS.is_parsed():  # Grain reads its absl flags; outside an absl app
            flags.FLAGS.mark_as_parsed()  # use their defaults
        # Batches travel from the workers pickled, not through shared memory: Grain leaves the
        # shared-memory segments of prefetched batches behind when an iterator stops (Python
        # warns of leaked shared_memory objects; a killed run leaves them in /dev/shm). A batch
        # is a few [B, N] int32 arrays, cheap to copy.
        stream = grain.experimental.WithOptionsIterDataset(
            stream, grain.experimental.DatasetOptions(min_shm_size=_NO_SHARED_MEMORY))
        stream = stream.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=exp.data.worker_count, per_worker_buffer_size=2)
        )
    return BatchStream(iter(stream))


def eval_batch(config, corpus: Corpus, tokenizer: Tokenizer, spec: str, num_rows: int,
               seed: int = 1234) -> dict[str, np.ndarray]:
    """num_rows evenly spaced packed rows of the eval documents, grouped by sampler `spec`."""
    seq_len = parse(config).data.seq_len
    rows = _packed_rows(corpus.eval_docs, seq_len, "eval")
    if len(rows) > num_rows:  # evenly spaced, so every held-out file gets its share
        picked = np.linspace(0, len(rows) - 1, num_rows).round().astype(int)
        rows = [rows[int(i)] for i in picked]
    else:
        rows = [rows[i] for i in range(len(rows))]
    sampler = parse_sampler(spec)
    layouts = []
    for row_index, row in enumerate(rows):
        pieces = [corpus.eval_docs[doc][start:stop] for doc, start, stop in row]
        rng = example_rng(seed, row_index, 0)
        groups = [sampler(p.size, rng) for p in pieces]
        layouts.append(build_layout(pieces, groups, seq_len, bos_id=tokenizer.bos_id,
                                    pad_id=tokenizer.pad_id))
    return stack_layouts(layouts)
