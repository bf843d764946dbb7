"""Natural infilling spans in held-out Python source: what a person would mask in code.

  identifier  the name assigned on a line (`    total = ...` -> `total`)
  return      the expression of a return statement (`    return a + b` -> `a + b`)
  arguments   the parameter list of a def (`def f(a, b=2):` -> `a, b=2`)
  docstring   the first line of a docstring (`    \"\"\"Return the sum.` -> `Return the sum.`)

Each span comes with a window of at most seq_len - 1 tokens of its file around it (context before
and after), so a model can fill it with the rest of the window given. Spans are found in the text
and widened to whole tokens: with the byte tokenizer token i is byte i; with a subword tokenizer
the span is the tokens the matched text touches (`lock` after an indent may be the token ` lock`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from a3jax.data.tokenizer import ByteTokenizer
from a3jax.errors import UserError

KINDS = ("identifier", "return", "arguments", "docstring")
_PATTERNS = {
    "identifier": re.compile(rb"^[ \t]+([A-Za-z_][A-Za-z0-9_]{2,24})[ \t]*=[^=]", re.M),
    "return": re.compile(rb"^[ \t]+return[ \t]+([^\n#]{3,40}?)[ \t]*$", re.M),
    "arguments": re.compile(rb"^[ \t]*def[ \t]+\w+\(([^()\n]{3,50})\)[^\n]*:[ \t]*$", re.M),
    "docstring": re.compile(rb'^[ \t]+(?:r?"""|r?\'\'\')([^\n"\']{10,60}?)[ \t]*(?:"""|\'\'\')?[ \t]*$', re.M),
}


@dataclasses.dataclass(frozen=True)
class Span:
    kind: str
    window: np.ndarray  # int32 tokens of the window (no BOS)
    start: int  # the span is window[start:stop]
    stop: int
    document: int  # index of the held-out document


def _window(doc_len: int, start: int, stop: int, width: int) -> tuple[int, int]:
    """[a, b) of at most `width` tokens around [start, stop): 60% of the room before the span."""
    room = max(width - (stop - start), 0)
    a = max(0, start - int(room * 0.6))
    b = min(doc_len, a + width)
    a = max(0, b - width)
    return a, b


def _text_of(doc: np.ndarray, tokenizer) -> tuple[bytes, np.ndarray]:
    """(UTF-8 text of the document up to its first special token, [T + 1] byte offset of each of its
    T tokens and of the end)."""
    special = np.flatnonzero(np.isin(doc, [tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id]))
    doc = doc[: special[0] if special.size else doc.size]
    if isinstance(tokenizer, ByteTokenizer):
        pieces = [bytes([int(t)]) for t in doc]
    else:  # a token's text does not depend on its neighbours here: each distinct id decoded once
        ids, index = np.unique(doc, return_inverse=True)
        texts = [tokenizer.decode(ids[i:i + 1]).encode("utf-8") for i in range(ids.size)]
        pieces = [texts[i] for i in index.reshape(-1)]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces], dtype=np.int64)])
    return b"".join(pieces), offsets


def find_spans(documents: Sequence[np.ndarray], tokenizer, seq_len: int, per_kind: int, *,
               seed: int = 0, kinds: Sequence[str] = KINDS) -> list[Span]:
    """Up to `per_kind` spans of each kind from the documents (byte tokenizer), spread over the
    documents: candidates are shuffled by `seed` and at most one span per document and kind is
    taken while other documents have candidates left."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise UserError(f"span kinds {unknown} are not among {KINDS}")
    width = seq_len - 1
    rng = np.random.default_rng(seed)
    spans = []
    for kind in kinds:
        candidates = []
        for index, doc in enumerate(documents):
            text, offsets = _text_of(np.asarray(doc), tokenizer)
            for match in _PATTERNS[kind].finditer(text):
                # the tokens whose bytes overlap the match
                first = int(np.searchsorted(offsets, match.start(1), side="right")) - 1
                stop = int(np.searchsorted(offsets, match.end(1), side="left"))
                candidates.append((index, first, stop))
        order = rng.permutation(len(candidates))
        taken, documents_used, chosen = [], set(), set()
        for first_round in (True, False):  # first one per document, then any
            for i in order:
                index, start, stop = candidates[i]
                if len(taken) == per_kind:
                    break
                if (first_round and index in documents_used) or i in chosen:
                    continue
                taken.append(candidates[i])
                documents_used.add(index)
                chosen.add(i)
        for index, start, stop in taken:
            doc = np.asarray(documents[index], np.int32)
            a, b = _window(doc.size, start, stop, width)
            spans.append(Span(kind, doc[a:b].copy(), start - a, stop - a, index))
    return spans


# Infilling items (prefix, true middle, suffix: the form `a3jax eval --task infill --data` reads) ----

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def prose_items(texts: Sequence[str], count: int, *, seed: int = 0, before: int = 400,
                after: int = 200) -> list[dict]:
    """Up to `count` items from English prose: one sentence (30-200 characters, starting with a
    capital and ending in . ! or ?) of a paragraph of at least three sentences, with up to `before`
    characters of its text before it and `after` after it; at most one per text while other
    texts have candidates left (a story-infilling item)."""
    candidates = []
    for index, text in enumerate(texts):
        for paragraph in re.split(r"\n\s*\n", text):
            if "```" in paragraph or paragraph.lstrip().startswith(("    ", ">>>", "$")):
                continue  # code blocks and shell sessions are not prose
            flat = " ".join(paragraph.split())
            sentences = _SENTENCE.split(flat)
            if len(sentences) < 3:
                continue
            for i in range(1, len(sentences) - 1):
                middle = sentences[i]
                if 30 <= len(middle) <= 200 and middle[0].isupper() and middle[-1] in ".!?":
                    head = flat[: flat.index(middle)]
                    candidates.append((index, head, middle, flat[len(head) + len(middle):]))
    order = np.random.default_rng(seed).permutation(len(candidates))
    items, used, taken = [], set(), set()
    for first_round in (True, False):  # one per text first, then any
        for i in order:
            index, head, middle, tail = candidates[i]
            if len(items) == count or i in taken or (first_round and index in used):
                continue
            used.add(index)
            taken.add(i)
            items.append({"prefix": head[-before:], "middle": middle, "suffix": tail[:after]})
    return items


def span_items(spans: Sequence[Span], tokenizer) -> list[dict]:
    """Natural code spans (find_spans) as infilling items: their window's text before and after."""
    return [{"prefix": tokenizer.decode(s.window[:s.start]), "middle": tokenizer.decode(s.window[s.start:s.stop]),
             "suffix": tokenizer.decode(s.window[s.stop:]), "kind": s.kind} for s in spans]


def main(argv=None) -> int:
    """python -m a3jax.eval.spans --workdir W --out DIR: DIR/english.jsonl (prose_items) and
    DIR/code.jsonl (natural code spans) from the held-out documents of the workdir's corpus, for
    `a3jax eval --task infill --data` (names starting english: / code:, as data.source=offline
    names them; other corpora: every held-out document is tried as both)."""
    import argparse
    import json
    import pathlib

    from a3jax.data import load_corpus
    from a3jax.inference import load_model

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--count", type=int, default=64, help="items of each kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    loaded = load_model(args.workdir)
    corpus = load_corpus(loaded.experiment.data, loaded.tokenizer)
    named = list(zip(corpus.eval_names, corpus.eval_docs))
    english = [loaded.tokenizer.decode(d) for n, d in named if not n.startswith("code:")]
    code = [d for n, d in named if not n.startswith("english:")]
    kinds = {"english": prose_items(english, args.count, seed=args.seed),
             "code": span_items(find_spans(code, loaded.tokenizer, loaded.experiment.data.seq_len,
                                           -(-args.count // len(KINDS)), seed=args.seed), loaded.tokenizer)}
    args.out.mkdir(parents=True, exist_ok=True)
    for kind, items in kinds.items():
        (args.out / f"{kind}.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
        print(f"{args.out / f'{kind}.jsonl'}: {len(items)} items from {len(english if kind == 'english' else code)} "
              "held-out documents")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
