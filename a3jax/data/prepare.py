"""`a3jax prepare`: tokenize a corpus into ArrayRecord shards, in parallel, resumable.

    a3jax prepare --input 'data/*.jsonl' --output shards/ --tokenizer bytes|PATH [--workers N]

The inputs (files, globs, folders; text, JSONL or Parquet) are cut into units of about
--chunk-mb of input at document boundaries (JSONL lines, --doc-separator in text files, Parquet
row groups; a text file without separator is one document and one unit). Unit i becomes shard
`shard-{i:05d}.arrayrecord`: one record per document, its int32 little-endian token ids with EOS
appended (BOS is added later by the layout); a document longer than --record-tokens continues in
the next records, so training reads at most two records per packed piece however long the
document. `shard-{i:05d}.lengths.npy` holds the tokens per document. Records are stored
uncompressed, one per chunk, for cheap random access. The plan depends only on the inputs and
options, never on --workers, so shards are the same for any worker count.

Resume: each shard is written under a temporary name and renamed when complete (lengths file
first, shard last; a shard counts as done when both exist). `plan.json` records the settings; a
rerun with the same settings skips the done shards, removes leftover temporary files and writes
the same `manifest.json` (per-shard record / token / byte counts and sha256, totals, tokenizer
fingerprint, input files with sizes) and byte-identical shards. Different settings are an error.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from a3jax.data import sources
from a3jax.data.tokenizer import load_tokenizer
from a3jax.errors import UserError

PLAN = "plan.json"
WRITER_OPTIONS = "group_size:1,uncompressed"  # one record per chunk: cheap random access for training
_SCAN_BLOCK = 1 << 20


# Planning ----------------------------------------------------------------------------------------

def _find_cut(handle, at: int, size: int, boundary: bytes) -> int | None:
    """Offset just past the first `boundary` at or after `at`, or None if there is none."""
    handle.seek(at)
    tail = b""
    position = at
    while position < size:
        block = handle.read(_SCAN_BLOCK)
        if not block:
            break
        data = tail + block
        found = data.find(boundary)
        if found >= 0:
            return position - len(tail) + found + len(boundary)
        tail = data[-(len(boundary) - 1):] if len(boundary) > 1 else b""
        position += len(block)
    return None


def _count(handle, start: int, stop: int, needle: bytes) -> int:
    handle.seek(start)
    total, left = 0, stop - start
    while left > 0:
        block = handle.read(min(_SCAN_BLOCK, left))
        if not block:
            break
        left -= len(block)
        total += block.count(needle)  # a one-byte needle never spans blocks
    return total


def _byte_units(path: pathlib.Path, size: int, boundary: bytes | None, chunk_bytes: int
                ) -> list[dict]:
    cuts = [0]
    if boundary is not None and size > chunk_bytes:
        with open(path, "rb") as handle:
            target = chunk_bytes
            while target < size:
                cut = _find_cut(handle, target, size, boundary)
                if cut is None or cut >= size:
                    break
                cuts.append(cut)
                target = cut + chunk_bytes
    cuts.append(size)
    units = [{"start": a, "stop": b} for a, b in zip(cuts[:-1], cuts[1:])]
    if boundary == b"\n":  # JSONL: the line number each unit starts at, for error messages
        line = 1
        with open(path, "rb") as handle:
            for unit in units:
                unit["first_line"] = line
                line += _count(handle, unit["start"], unit["stop"], b"\n")
    return units


def _parquet_units(path: pathlib.Path, chunk_bytes: int) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(path).metadata
    except Exception as error:
        raise UserError(f"{path}: not a readable Parquet file ({error})") from None
    units, current, size = [], [], 0
    for group in range(metadata.num_row_groups):
        current.append(group)
        size += metadata.row_group(group).total_byte_size
        if size >= chunk_bytes:
            units.append({"row_groups": current})
            current, size = [], 0
    if current or not units:
        units.append({"row_groups": current})
    return units


def plan_units(files: Sequence[pathlib.Path], fmt: str, chunk_bytes: int, separator: str
               ) -> list[dict]:
    """The work units (one per shard) in order: dicts with 'input' (file index) and a range."""
    units = []
    for index, path in enumerate(files):
        if fmt == "parquet":
            file_units = _parquet_units(path, chunk_bytes)
        else:
            boundary = b"\n" if fmt == "jsonl" else (separator.encode("utf-8") or None)
            file_units = _byte_units(path, path.stat().st_size, boundary, chunk_bytes)
        units.extend({"input": index, **unit} for unit in file_units)
    return units


# Workers -----------------------------------------------------------------------------------------

_TOKENIZER = None


def _init_worker(tokenizer, quiet_threads: bool) -> None:
    global _TOKENIZER
    if quiet_threads:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _TOKENIZER = tokenizer


def _documents(job: dict):
    path, name, unit = pathlib.Path(job["path"]), job["name"], job["unit"]
    if job["format"] == "parquet":
        return sources.read_parquet(path, name, job["text_field"], unit["row_groups"])
    if job["format"] == "jsonl":
        return sources.read_jsonl(path, name, job["text_field"], unit["start"], unit["stop"],
                                  unit["first_line"])
    return sources.read_text(path, name, job["separator"], unit["start"], unit["stop"])


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_SCAN_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_stats(directory: pathlib.Path, shard: str, lengths_name: str, record_tokens: int) -> dict:
    lengths = np.load(directory / lengths_name, allow_pickle=False)
    return {"file": shard, "lengths": lengths_name, "documents": int(lengths.size),
            "records": int(sources.records_per_doc(lengths, record_tokens).sum()),
            "tokens": int(lengths.sum()), "bytes": (directory / shard).stat().st_size,
            "sha256": _sha256(directory / shard)}


def write_shard(job: dict, tokenizer=None) -> dict:
    """Tokenizes one unit into its shard (temporary names, then renamed); returns its stats."""
    from array_record.python.array_record_module import ArrayRecordWriter

    tokenizer = tokenizer if tokenizer is not None else _TOKENIZER
    record_tokens = int(job["record_tokens"])
    directory = pathlib.Path(job["output"])
    shard, lengths_name = job["shard"], job["lengths"]
    suffix = f".tmp{os.getpid()}"
    tmp_shard = directory / (shard + suffix)
    tmp_lengths = directory / (lengths_name + suffix)
    writer = ArrayRecordWriter(str(tmp_shard), WRITER_OPTIONS)
    lengths: list[int] = []
    eos = np.array([tokenizer.eos_id], np.int32)
    try:
        batch: list[str | bytes] = []

        def flush():
            for ids in tokenizer.encode_batch(batch):
                document = np.concatenate([ids, eos])
                for start in range(0, document.size, record_tokens):
                    writer.write(sources.encode_record(document[start : start + record_tokens]))
                lengths.append(document.size)
            batch.clear()

        for _, text in _documents(job):
            batch.append(text)
            if len(batch) >= 256:
                flush()
        flush()
    finally:
        writer.close()
    with open(tmp_lengths, "wb") as handle:
        np.save(handle, np.asarray(lengths, np.int64), allow_pickle=False)
    os.replace(tmp_lengths, directory / lengths_name)
    os.replace(tmp_shard, directory / shard)
    return shard_stats(directory, shard, lengths_name, record_tokens)


# Driver ------------------------------------------------------------------------------------------

def _write_json(path: pathlib.Path, value: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n", "utf-8")
    os.replace(tmp, path)


def prepare(inputs: Sequence[str], output: str | pathlib.Path, tokenizer: str = "bytes", *,
            fmt: str | None = None, text_field: str = "text", doc_separator: str = "",
            workers: int | None = None, chunk_bytes: int = 16 << 20, record_tokens: int = 1 << 14,
            progress: bool = True,
            bos_token: str | None = None, eos_token: str | None = None,
            pad_token: str | None = None) -> dict:
    """Tokenizes `inputs` into ArrayRecord shards under `output`; returns the manifest."""
    files = sources.expand_paths(inputs, fmt or "text")
    fmt = fmt or sources.guess_format(files)
    if fmt not in sources.RAW_FORMATS:
        raise UserError(f"unknown input format {fmt!r}; valid: {', '.join(sources.RAW_FORMATS)}")
    if chunk_bytes < 1 or record_tokens < 1:
        raise UserError(f"chunk_bytes={chunk_bytes} and record_tokens={record_tokens} must be > 0")
    tok = load_tokenizer(tokenizer, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token)
    if tok.vocab_size > 2**31 - 1:
        raise UserError(f"vocab_size={tok.vocab_size} does not fit int32 token ids")
    units = plan_units(files, fmt, chunk_bytes, doc_separator)
    plan = {
        "format": sources.MANIFEST_FORMAT,
        "dtype": "int32",
        "tokenizer": {"spec": str(tokenizer), "fingerprint": tok.fingerprint(),
                      "vocab_size": int(tok.vocab_size), "bos_id": int(tok.bos_id),
                      "eos_id": int(tok.eos_id), "pad_id": int(tok.pad_id)},
        "input_format": fmt,
        "text_field": text_field,
        "doc_separator": doc_separator,
        "chunk_bytes": int(chunk_bytes),
        "record_tokens": int(record_tokens),
        "inputs": [{"path": str(p), "bytes": p.stat().st_size} for p in files],
        "units": units,
    }
    out = pathlib.Path(output)
    out.mkdir(parents=True, exist_ok=True)
    plan_path = out / PLAN
    if plan_path.is_file():
        old = json.loads(plan_path.read_text("utf-8"))
        if old != plan:
            differ = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            raise UserError(f"{out} holds a prepare run with other settings (differs in "
                             f"{', '.join(differ)}); use another --output or delete it")
    else:
        stray = [p.name for p in out.iterdir() if not p.name.startswith(PLAN)]
        if stray:
            raise UserError(f"{out} is not empty and holds no {PLAN} ({stray[:3]}...); use an "
                             "empty or new --output folder")
        _write_json(plan_path, plan)
    for leftover in out.glob("*.tmp*"):  # partial shards of an interrupted run
        leftover.unlink()

    names = [(f"shard-{i:05d}.arrayrecord", f"shard-{i:05d}.lengths.npy") for i in range(len(units))]
    display = sources.display_names(files)
    jobs = [{"output": str(out), "shard": shard, "lengths": lengths, "unit": unit,
             "path": str(files[unit["input"]]), "name": display[unit["input"]], "format": fmt,
             "text_field": text_field, "separator": doc_separator, "record_tokens": record_tokens}
            for (shard, lengths), unit in zip(names, units)]
    done = [(out / s).is_file() and (out / l).is_file() for s, l in names]
    stats: list[dict | None] = [shard_stats(out, s, l, record_tokens) if d else None
                                for (s, l), d in zip(names, done)]
    pending = [i for i, d in enumerate(done) if not d]
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(units), initial=len(units) - len(pending), unit="shard",
                   desc=f"prepare {out.name}", file=sys.stderr, dynamic_ncols=True)
    tokens_done = sum(s["tokens"] for s in stats if s)

    def finished(index: int, result: dict) -> None:
        nonlocal tokens_done
        stats[index] = result
        tokens_done += result["tokens"]
        if bar is not None:
            bar.set_postfix(tokens=f"{tokens_done:,}")
            bar.update(1)

    try:
        if workers <= 0 or len(pending) <= 1:
            for index in pending:
                finished(index, write_shard(jobs[index], tok))
        else:
            context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
            with concurrent.futures.ProcessPoolExecutor(
                max_workers=min(workers, len(pending)), mp_context=context,
                initializer=_init_worker, initargs=(tok, workers > 1),
            ) as pool:
                futures = {pool.submit(write_shard, jobs[i]): i for i in pending}
                try:
                    for future in concurrent.futures.as_completed(futures):
                        finished(futures[future], future.result())
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        if bar is not None:
            bar.close()

    manifest = {key: value for key, value in plan.items() if key != "units"}
    manifest["shards"] = [{**s, "input": u["input"], **{k: v for k, v in u.items() if k != "input"}}
                          for s, u in zip(stats, units)]
    manifest["total_documents"] = sum(s["documents"] for s in stats)
    manifest["total_records"] = sum(s["records"] for s in stats)
    manifest["total_tokens"] = sum(s["tokens"] for s in stats)
    if manifest["total_documents"] == 0:
        raise UserError(f"empty corpus: the inputs {[str(f) for f in files][:5]} hold no document")
    _write_json(out / sources.MANIFEST, manifest)
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, metavar="GLOB",
                        help="input files, globs or folders")
    parser.add_argument("--output", required=True, help="folder for shards and manifest.json")
    parser.add_argument("--tokenizer", default="bytes",
                        help="'bytes' or a local tokenizer.json / SentencePiece .model (or folder)")
    parser.add_argument("--format", choices=sources.RAW_FORMATS, default=None,
                        help="input format (default: from the file suffixes, else text)")
    parser.add_argument("--text-field", default="text", help="JSONL / Parquet text field")
    parser.add_argument("--doc-separator", default="",
                        help="split text files into documents at this string (default: one "
                             "document per file); escapes like \\n are understood")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: all cores; 0 = in this process)")
    parser.add_argument("--chunk-mb", type=float, default=16.0, help="input megabytes per shard")
    parser.add_argument("--record-tokens", type=int, default=1 << 14,
                        help="most tokens per ArrayRecord record (longer documents span several)")
    parser.add_argument("--bos-token", default=None, help="name of the BOS token (default: found)")
    parser.add_argument("--eos-token", default=None, help="name of the EOS token (default: found)")
    parser.add_argument("--pad-token", default=None, help="name of the PAD token (default: found)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    separator = args.doc_separator.encode("utf-8").decode("unicode_escape")
    try:
        manifest = prepare(args.input, args.output, args.tokenizer, fmt=args.format,
                           text_field=args.text_field, doc_separator=separator,
                           workers=args.workers, chunk_bytes=max(1, int(args.chunk_mb * 2**20)),
                           record_tokens=args.record_tokens,
                           progress=not args.no_progress, bos_token=args.bos_token,
                           eos_token=args.eos_token, pad_token=args.pad_token)
    except (OSError, ValueError) as error:
        print(f"a3jax prepare: error: {error}", file=sys.stderr)
        return 2
    print(f"[a3jax] prepared {manifest['total_documents']:,} documents, "
          f"{manifest['total_tokens']:,} tokens in {len(manifest['shards'])} shards -> "
          f"{pathlib.Path(args.output) / sources.MANIFEST}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="a3jax prepare", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
