"""English and code that every offline Python install has, as one JSONL corpus.

    python -m a3jax.data.offline --out runs/offline_corpus.jsonl [--code-share 0.5]

  code     the standard library's own .py files (the demo's corpus: `corpus.stdlib_files`)
  english  the Python documentation the standard library carries (`pydoc_data/topics.py`: the
           Language Reference's topics, one document each) and the long descriptions of the
           installed distributions (their METADATA bodies of 1,000+ characters: READMEs in Markdown
           or reST, English prose about software)

Code files are taken in a fixed hashed order until they make `code_share` of the bytes (the
stdlib holds ~6x more code than there is English). Each line is {"text", "name", "kind"}, sorted
by name, so the file (and the held-out split that `data.source=jsonl` draws by a hash of
`file:LINE`) is the same wherever the same Python and packages are installed; the descriptions
depend on what is installed, so a manifest beside the file lists every distribution and version.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib
import sys

from a3jax.data.corpus import stable_fraction, stdlib_files

MIN_DESCRIPTION = 1000


def english_documents() -> list[tuple[str, str]]:
    """(name, text) of the stdlib's documentation topics and the installed distributions' long
    descriptions."""
    docs = []
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a Python built without its docs
        topics = {}
    for key in sorted(topics):
        if len(topics[key]) >= MIN_DESCRIPTION // 4:
            docs.append((f"english:pydoc:{key}", topics[key]))
    seen = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if not name or name in seen:
            continue
        seen.add(name)
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if isinstance(body, str) and len(body) >= MIN_DESCRIPTION:
            docs.append((f"english:package:{name}", body))
    return sorted(docs)


def code_documents(budget_bytes: int) -> list[tuple[str, str]]:
    """(name, text) of stdlib .py files in a fixed hashed order, up to `budget_bytes`."""
    root, names = stdlib_files()
    docs, used = [], 0
    for name in sorted(names, key=stable_fraction):
        if used >= budget_bytes:
            break
        text = (root / name).read_text(encoding="utf-8", errors="replace")
        docs.append((f"code:{name}", text))
        used += len(text.encode("utf-8"))
    return sorted(docs)


def write_corpus(out: pathlib.Path, code_share: float = 0.5) -> dict:
    """Writes the JSONL corpus and OUT.manifest.json; returns the manifest."""
    if not 0.0 <= code_share < 1.0:
        raise ValueError(f"code_share={code_share} must be in [0, 1)")
    english = english_documents()
    english_bytes = sum(len(t.encode("utf-8")) for _, t in english)
    code = code_documents(int(english_bytes * code_share / (1.0 - code_share)))
    rows = sorted([(n, t, "english") for n, t in english] + [(n, t, "code") for n, t in code])
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with open(partial, "w", encoding="utf-8") as f:
        for name, text, kind in rows:
            f.write(json.dumps({"text": text, "name": name, "kind": kind}) + "\n")
    partial.replace(out)
    manifest = {
        "python": sys.version.split()[0],
        "documents": {"english": len(english), "code": len(code)},
        "bytes": {"english": english_bytes, "code": sum(len(t.encode("utf-8")) for _, t in code)},
        "distributions": sorted(f"{d.metadata.get('Name')}=={d.version}" for d in importlib.metadata.distributions()
                                if d.metadata.get("Name")),
    }
    out.with_name(out.name + ".manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=pathlib.Path, help="the JSONL file to write")
    parser.add_argument("--code-share", type=float, default=0.5, help="share of the bytes that is code")
    args = parser.parse_args(argv)
    manifest = write_corpus(args.out, args.code_share)
    print(f"{args.out}: {manifest['documents']} documents, {manifest['bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
