"""Reading corpora: text files, JSONL, Parquet (raw text) and ArrayRecord shards (pre-tokenized).

Raw sources yield (name, text) documents; a name says where the document came from
(`file`, `file#k` for the k-th piece of a text file split by `data.doc_separator`, `file:LINE`
for JSONL, `file:ROW` for Parquet; file names are relative to the inputs' common folder, so the
held-out split does not depend on where the corpus lies). Every error names the file and record.

Pre-tokenized corpora are folders written by `a3jax prepare` (see prepare.py): shards
`shard-NNNNN.arrayrecord` (a document's int32 little-endian token ids, EOS included, as one
record, or as consecutive records of `record_tokens` tokens when longer), a sidecar
`shard-NNNNN.lengths.npy` (tokens per document) and `manifest.json`.
`ShardedDocs` reads them lazily (one reader per process), so workers share nothing but paths.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from a3jax.errors import MissingFileError, UserError

RAW_FORMATS = ("text", "jsonl", "parquet")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "a3jax-arrayrecord-tokens-v1"
RECORD_DTYPE = np.dtype("<i4")
_SUFFIXES = {"jsonl": (".jsonl", ".json", ".ndjson"), "parquet": (".parquet", ".pq")}


class CorruptShardError(UserError):
    """A pre-tokenized shard is missing, truncated or unreadable (never skipped silently)."""


# Inputs ------------------------------------------------------------------------------------------

def expand_paths(patterns: str | Sequence[str], fmt: str = "text") -> list[pathlib.Path]:
    """Files matched by paths / globs / folders (a folder: its files of the format), in order.

    Each pattern's matches are sorted; patterns keep their order; duplicates are dropped.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    patterns = [str(p) for p in patterns if str(p)]
    if not patterns:
        raise UserError("no input paths given: set data.paths (files, globs or folders)")
    files: list[pathlib.Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = sorted(pathlib.Path(p) for p in glob.glob(expanded, recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise MissingFileError(f"no file matches {pattern!r}")
        else:
            path = pathlib.Path(expanded)
            if path.is_dir():
                suffixes = _SUFFIXES.get(fmt)
                matches = sorted(p for p in path.rglob("*") if p.is_file()
                                 and not p.name.startswith(".")
                                 and (suffixes is None or p.name.endswith(suffixes)))
                if not matches:
                    raise MissingFileError(f"folder {pattern!r} holds no {fmt} input file")
            elif path.is_file():
                matches = [path]
            else:
                raise MissingFileError(f"input file {pattern!r} does not exist")
        files.extend(matches)
    seen: set[pathlib.Path] = set()
    unique = []
    for path in files:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def guess_format(paths: Sequence[pathlib.Path]) -> str:
    """'jsonl' / 'parquet' when every file has that suffix, else 'text'."""
    for fmt, suffixes in _SUFFIXES.items():
        if paths and all(str(p).endswith(suffixes) for p in paths):
            return fmt
    return "text"


def display_names(paths: Sequence[pathlib.Path]) -> list[str]:
    """Paths relative to their common folder (just the name for a single file)."""
    resolved = [p.resolve() for p in paths]
    if len(resolved) == 1:
        return [resolved[0].name]
    root = pathlib.Path(os.path.commonpath([str(p.parent) for p in resolved]))
    return [p.relative_to(root).as_posix() for p in resolved]


def split_text(data: bytes, separator: str) -> list[bytes]:
    """The documents of one text file: the whole file, or its non-empty pieces between separators."""
    if not separator:
        return [data] if data else []
    return [piece for piece in data.split(separator.encode("utf-8")) if piece]


def read_text(path: pathlib.Path, name: str, separator: str = "", start: int = 0,
              stop: int | None = None) -> Iterator[tuple[str, bytes]]:
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read() if stop is None else handle.read(stop - start)
    pieces = split_text(data, separator)
    if not separator:
        yield from ((name, piece) for piece in pieces)
    else:
        yield from ((f"{name}#{k}" if start == 0 else f"{name}@{start}#{k}", piece)
                    for k, piece in enumerate(pieces))


def _field_error(where: str, text_field: str, keys) -> ValueError:
    return ValueError(f"{where}: record has no text field {text_field!r} (fields: {sorted(keys)}); "
                      "set data.text_field (prepare: --text-field)")


def read_jsonl(path: pathlib.Path, name: str, text_field: str, start: int = 0,
               stop: int | None = None, first_line: int = 1) -> Iterator[tuple[str, str]]:
    """Documents of JSONL lines in bytes [start, stop) (blank lines skipped)."""
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read() if stop is None else handle.read(stop - start)
    for offset, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        where = f"{path}:{first_line + offset}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{where}: not valid JSON ({error})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object with field {text_field!r}, got "
                             f"{type(record).__name__}")
        if text_field not in record:
            raise _field_error(where, text_field, record.keys())
        text = record[text_field]
        if not isinstance(text, str):
            raise UserError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
        yield f"{name}:{first_line + offset}", text


def read_parquet(path: pathlib.Path, name: str, text_field: str, row_groups: Sequence[int] | None = None
                 ) -> Iterator[tuple[str, str]]:
    """Documents of a Parquet file's text column (all row groups, or the given ones)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError
        raise UserError(f"{path}: not a readable Parquet file ({error})") from None
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise UserError(f"{path}: no text column {text_field!r} (columns: {columns}); set "
                         "data.text_field (prepare: --text-field)")
    metadata = parquet.metadata
    groups = range(metadata.num_row_groups) if row_groups is None else row_groups
    for group in groups:
        first = sum(metadata.row_group(g).num_rows for g in range(group))
        column = parquet.read_row_group(group, columns=[text_field]).column(0)
        for offset, text in enumerate(column.to_pylist()):
            if not isinstance(text, str):
                what = "null" if text is None else type(text).__name__
                raise UserError(f"{path}: row {first + offset}: column {text_field!r} is {what}, "
                                 "not a string")
            yield f"{name}:{first + offset}", text


def read_documents(paths: Sequence[pathlib.Path], fmt: str, *, text_field: str = "text",
                   separator: str = "") -> Iterator[tuple[str, str | bytes]]:
    """(name, text) of every document of the given files in order."""
    if fmt not in RAW_FORMATS:
        raise UserError(f"unknown input format {fmt!r}; valid: {', '.join(RAW_FORMATS)}")
    for path, name in zip(paths, display_names(paths)):
        if fmt == "text":
            yield from read_text(path, name, separator)
        elif fmt == "jsonl":
            yield from read_jsonl(path, name, text_field)
        else:
            yield from read_parquet(path, name, text_field)


# Hash split --------------------------------------------------------------------------------------

def index_fractions(indices: np.ndarray, salt: int = 0x5EED_A3) -> np.ndarray:
    """A stable hash (splitmix64) of each integer index, mapped to [0, 1)."""
    with np.errstate(over="ignore"):
        z = np.asarray(indices, np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


def split_fractions(fractions: np.ndarray, eval_fraction: float) -> np.ndarray:
    """Boolean eval mask: fraction < eval_fraction, with at least one eval and one train entry."""
    if fractions.size < 2:
        raise UserError(f"need at least 2 documents to split train/eval, got {fractions.size}")
    is_eval = fractions < eval_fraction
    if not is_eval.any():
        is_eval[np.argmin(fractions)] = True
    if is_eval.all():
        is_eval[np.argmax(fractions)] = False
    return is_eval


# ArrayRecord shards ------------------------------------------------------------------------------

def encode_record(ids: np.ndarray) -> bytes:
    return np.ascontiguousarray(ids, RECORD_DTYPE).tobytes()


def read_manifest(directory: str | pathlib.Path) -> dict:
    directory = pathlib.Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        hint = " (prepare did not finish: rerun it to resume)" if directory.is_dir() else ""
        raise MissingFileError(f"{path} does not exist{hint}; make shards with `a3jax prepare`")
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as error:
        raise CorruptShardError(f"{path}: not valid JSON ({error})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CorruptShardError(f"{path}: format {manifest.get('format')!r} is not {MANIFEST_FORMAT!r}")
    return manifest


def records_per_doc(lengths: np.ndarray, record_tokens: int) -> np.ndarray:
    """ArrayRecord records used by each document (at most record_tokens tokens per record)."""
    return np.maximum(1, -(-np.asarray(lengths, np.int64) // record_tokens))


class ShardedDocs:
    """A read-only sequence of documents (int32 ids incl. EOS) stored in ArrayRecord shards.

    Document i is global document `doc_ids[i]` (shards' documents concatenated in manifest
    order); it lies in shard `shard_of[i]`, records first_record[i] ... (a document longer than
    `record_tokens` continues in the next records, so reading a slice costs at most
    two records' worth whatever the document's length). `lengths[i]` is its token count.
    Picklable: readers are opened lazily in each process.
    """

    def __init__(self, directory: str | pathlib.Path, files: Sequence[str], record_counts: Sequence[int],
                 doc_ids: np.ndarray, shard_of: np.ndarray, first_record: np.ndarray,
                 lengths: np.ndarray, record_tokens: int):
        self.directory = pathlib.Path(directory)
        self.files = list(files)
        self.record_counts = [int(c) for c in record_counts]
        self.doc_ids = np.asarray(doc_ids, np.int64)
        self.shard_of = np.asarray(shard_of, np.int32)
        self.first_record = np.asarray(first_record, np.int64)
        self.lengths = np.asarray(lengths, np.int64)
        self.record_tokens = int(record_tokens)
        self._readers: dict[int, object] = {}

    @classmethod
    def from_manifest(cls, directory, manifest: dict, shard_lengths: Sequence[np.ndarray],
                      select: np.ndarray | None = None) -> ShardedDocs:
        """The documents of a prepared folder (all, or those where `select` is True)."""
        record_tokens = int(manifest["record_tokens"])
        firsts = []
        for lengths in shard_lengths:
            counts = records_per_doc(lengths, record_tokens)
            firsts.append(np.cumsum(counts) - counts)
        lengths = np.concatenate(shard_lengths) if shard_lengths else np.zeros(0, np.int64)
        shard_of = np.repeat(np.arange(len(shard_lengths)), [x.size for x in shard_lengths])
        first = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)
        ids = np.arange(lengths.size)
        if select is not None:
            ids = ids[select]
        return cls(directory, [s["file"] for s in manifest["shards"]],
                   [s["records"] for s in manifest["shards"]], ids, shard_of[ids], first[ids],
                   lengths[ids], record_tokens)

    def __len__(self) -> int:
        return int(self.doc_ids.size)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_readers"] = {}
        return state

    def _reader(self, shard: int):
        reader = self._readers.get(shard)
        if reader is None:
            from array_record.python.array_record_module import ArrayRecordReader

            path = self.directory / self.files[shard]
            try:
                reader = ArrayRecordReader(str(path), "readahead_buffer_size:0,max_parallelism:0")
            except Exception as error:
                raise CorruptShardError(f"{path}: cannot open ArrayRecord shard ({error})") from None
            if reader.num_records() != self.record_counts[shard]:
                raise CorruptShardError(f"{path} holds {reader.num_records()} records but the "
                                        f"manifest says {self.record_counts[shard]}; rerun prepare")
            self._readers[shard] = reader
        return reader

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"document {index} out of range for {len(self)} documents")
        return self.read_slice(index % len(self), 0, int(self.lengths[index]))

    def read_slice(self, index: int, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of document `index` (reads only the records that hold them)."""
        length = int(self.lengths[index])
        start, stop = max(0, int(start)), min(int(stop), length)
        if stop <= start:
            return np.zeros(0, np.int32)
        size = self.record_tokens
        first, last = start // size, (stop - 1) // size
        shard = int(self.shard_of[index])
        base = int(self.first_record[index])
        path = self.directory / self.files[shard]
        where = f"{path}: records {base + first}..{base + last} (document {int(self.doc_ids[index])})"
        try:
            chunks = self._reader(shard).read(list(range(base + first, base + last + 1)))
        except CorruptShardError:
            raise
        except Exception as error:
            raise CorruptShardError(f"{where} cannot be read ({error}); the shard is corrupt: "
                                    "rerun `a3jax prepare`") from None
        expected = [min(size, length - k * size) for k in range(first, last + 1)]
        got = [len(c) // RECORD_DTYPE.itemsize for c in chunks]
        if got != expected or any(len(c) % RECORD_DTYPE.itemsize for c in chunks):
            raise CorruptShardError(f"{where} hold {got} tokens but the lengths file says "
                                    f"{expected}; the shard is corrupt: rerun `a3jax prepare`")
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        offset = first * size
        return np.frombuffer(data, RECORD_DTYPE)[start - offset : stop - offset].astype(np.int32)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers = {}


def load_shards(directory: str | pathlib.Path, *, fingerprint: str | None = None,
                tokenizer_name: str | None = None) -> tuple[dict, list[np.ndarray]]:
    """Manifest and per-shard document lengths of a prepared folder, after checking what is
    cheap to check: the tokenizer fingerprint, each shard's presence and size, each lengths
    file's counts."""
    directory = pathlib.Path(directory)
    manifest = read_manifest(directory)
    recorded = manifest["tokenizer"]["fingerprint"]
    if fingerprint is not None and recorded != fingerprint:
        raise UserError(
            f"{directory} was tokenized with {manifest['tokenizer'].get('spec')!r} (fingerprint "
            f"{recorded}) but data.tokenizer"
            f"{'' if tokenizer_name is None else f'={tokenizer_name!r}'} gives fingerprint {fingerprint}; "
            "set data.tokenizer to the tokenizer used by `a3jax prepare`, or prepare the corpus again"
        )
    lengths = []
    for shard in manifest["shards"]:
        path = directory / shard["file"]
        if not path.is_file():
            raise CorruptShardError(f"shard {path} listed in {directory / MANIFEST} is missing")
        size = path.stat().st_size
        if size != shard["bytes"]:
            raise CorruptShardError(f"shard {path} has {size} bytes but the manifest says "
                                    f"{shard['bytes']}; it is truncated or corrupt: rerun prepare")
        lengths_path = directory / shard["lengths"]
        try:
            shard_lengths = np.load(lengths_path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise CorruptShardError(f"{lengths_path}: cannot read the lengths file ({error})") from None
        records = int(records_per_doc(shard_lengths, int(manifest["record_tokens"])).sum())
        if (shard_lengths.shape != (shard["documents"],) or int(shard_lengths.sum()) != shard["tokens"]
                or records != shard["records"]):
            raise CorruptShardError(f"{lengths_path} does not match the manifest ({shard['documents']} "
                                    f"documents, {shard['records']} records, {shard['tokens']} tokens)")
        lengths.append(shard_lengths.astype(np.int64))
    return manifest, lengths
