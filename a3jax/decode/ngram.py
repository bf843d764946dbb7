"""Drafts from a token corpus: the most frequent continuation of the last n - 1 tokens (n-gram
tables with back-off), for speculative decoding (decode/speculative.py, `draft=ngram`).

A draft costs a few table lookups (on the device: decode/rounds.py) and no pass through the
model, so a round that drafts from the table is ONE pass however many positions it drafts: the
drafter that the model's own chained proposals (one pass per drafted position) cannot be. The
drafts are point masses chained on each other (the draft of p + 1 continues the context that
ends with the draft of p), which keeps the sampling exact whatever the table says
(speculative.py's acceptance rule); a table that agrees with the model more often only makes it
faster. Each draft carries the table's own estimate of its chance, count(context, token) /
count(context), which the driver uses to decide how far to draft.

Built once per corpus from its training documents (a few seconds for the demo's 4M tokens) and
kept in memory; document boundaries are never crossed.
"""

from __future__ import annotations

import numpy as np

MAX_ORDER = 4  # contexts of up to 3 tokens
MIN_COUNT = 2  # a context seen once predicts nothing
# every drafter drafts on while the chance that all its drafts so far are accepted stays at least this
MIN_RUN_CHANCE = 0.25


class NgramDrafter:
    """Most frequent next token after each context of 1..max_order - 1 tokens in `documents`.

    Per context length c: sorted context codes (base-V digits of the c tokens), the most frequent
    next token and its share of the context's continuations. Lookups back off from the longest
    context to the shortest.
    """

    def __init__(self, documents, vocab_size: int, *, max_order: int = MAX_ORDER, min_count: int = MIN_COUNT,
                 exclude=()):
        if max_order < 2:
            raise ValueError(f"max_order={max_order} must be >= 2 (one token of context)")
        if vocab_size ** max_order >= 2**62:
            raise ValueError(f"vocab_size={vocab_size} and max_order={max_order} overflow int64 context codes")
        self.vocab_size, self.max_order = int(vocab_size), int(max_order)
        pieces = []
        for doc in documents:  # -1 between documents: no n-gram crosses a boundary
            doc = np.asarray(doc, np.int64).reshape(-1)
            pieces += [np.where(np.isin(doc, list(exclude)), -1, doc), np.array([-1])]
        stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        self.tables = {}
        for c in range(max_order - 1, 0, -1):
            if stream.size <= c:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(stream, c + 1)
            windows = windows[(windows >= 0).all(axis=1)]
            if not windows.size:
                continue
            context = self._codes(windows[:, :c])
            pair, count = np.unique(context * self.vocab_size + windows[:, c], return_counts=True)
            ctx, nxt = pair // self.vocab_size, pair % self.vocab_size
            starts = np.flatnonzero(np.concatenate([[True], ctx[1:] != ctx[:-1]]))
            total = np.add.reduceat(count, starts)
            # the most frequent continuation of each context (the smallest token id on a tie)
            order = np.lexsort((nxt, -count, ctx))
            best = order[np.searchsorted(ctx[order], ctx[starts])]
            keep = total >= min_count
            self.tables[c] = (ctx[starts][keep], nxt[best][keep].astype(np.int32),
                              (count[best] / total)[keep].astype(np.float32))

    def _codes(self, tokens: np.ndarray) -> np.ndarray:
        code = np.zeros(tokens.shape[0], np.int64)
        for t in range(tokens.shape[1]):
            code = code * self.vocab_size + tokens[:, t]
        return code

    def token_tables(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The tables with each context spelled out: {c: (contexts int32 [N, c] in lexicographic
        order (the codes' order), best next token [N], its chance [N])}, for lookups without int64
        codes (decode/rounds.py, on the device)."""
        out = {}
        for c, (codes, best, chance) in self.tables.items():
            digits = [(codes // self.vocab_size ** (c - 1 - t)) % self.vocab_size for t in range(c)]
            out[c] = (np.stack(digits, axis=1).astype(np.int32).reshape(-1, c), best, chance)
        return out

    def __len__(self) -> int:
        return sum(t[0].size for t in self.tables.values())

    def next_tokens(self, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """contexts int [R, max_order - 1] (the last tokens, right-aligned; -1 = none): the drafted
        next token of each row (-1 where no context is known) and the table's chance for it."""
        contexts = np.asarray(contexts, np.int64)
        rows = contexts.shape[0]
        token = np.full(rows, -1, np.int32)
        share = np.zeros(rows, np.float32)
        for c in range(self.max_order - 1, 0, -1):
            if c not in self.tables:
                continue
            todo = (token < 0) & (contexts[:, -c:] >= 0).all(axis=1)
            if not todo.any():
                continue
            codes, best, chance = self.tables[c]
            code = self._codes(contexts[todo][:, -c:])
            at = np.minimum(np.searchsorted(codes, code), codes.size - 1)
            found = codes[at] == code
            index = np.flatnonzero(todo)[found]
            token[index], share[index] = best[at[found]], chance[at[found]]
        return token, share


MAX_TOKENS = 20_000_000  # the table is built from at most this many training tokens (~80 B each at peak)


def ngram_drafter(corpus, tokenizer, vocab_size: int, *, max_tokens: int = MAX_TOKENS,
                  max_order: int = MAX_ORDER) -> NgramDrafter:
    """The n-gram drafter of a trained model's corpus (data.Corpus): its training documents, special
    tokens excluded, up to max_tokens tokens; contexts as long as int64 codes allow for the
    vocabulary (3 tokens at 2,048 words, 2 at Llama 3's 128,256)."""
    while max_order > 2 and vocab_size ** max_order >= 2**62:
        max_order -= 1
    docs, total = [], 0
    for doc in corpus.train_docs:
        if total >= max_tokens:
            break
        doc = np.asarray(doc)[: max_tokens - total]
        docs.append(doc)
        total += doc.size
    return NgramDrafter(docs, vocab_size, max_order=max_order,
                        exclude=(tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id))
