"""Tokenizers behind one small interface: bytes (default), HuggingFace tokenizer.json, SentencePiece.

Every tokenizer has `encode(text) -> int32 ids` (no BOS/EOS added), `encode_batch(texts)`,
`decode(ids) -> str` (special ids dropped), `bos_id`, `eos_id`, `pad_id`, `vocab_size`,
`fingerprint()` (a hash of what decides the ids, stored in prepared shards' manifests) and
`check_vocab(model_vocab_size)`.

`load_tokenizer(spec)` takes config `data.tokenizer`: "bytes", or a local path to a tokenizer.json,
a SentencePiece .model file, or a folder holding one of them. Loading never touches the network.
BOS/EOS/PAD are found by their usual names (a tokenizer_config.json beside tokenizer.json wins);
`data.bos_token` / `data.eos_token` / `data.pad_token` name them explicitly. Without a PAD token,
PAD = EOS (padding is never visible to real rows nor scored, so any id works).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from a3jax.errors import MissingFileError, UserError

BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "[BOS]", "<|startoftext|>", "<|bos|>")
EOS_NAMES = ("</s>", "<|end_of_text|>", "<eos>", "[EOS]", "<|endoftext|>", "<|eos|>", "<|eot_id|>")
PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>", "<|finetune_right_pad_id|>")


class Tokenizer(Protocol):
    bos_id: int
    eos_id: int
    pad_id: int
    vocab_size: int

    def encode(self, text: str | bytes) -> np.ndarray: ...
    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]: ...
    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...
    def fingerprint(self) -> str: ...
    def check_vocab(self, model_vocab_size: int) -> None: ...


class _Base:
    name = "tokenizer"
    vocab_size: int

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        return [self.encode(text) for text in texts]

    def check_vocab(self, model_vocab_size: int) -> None:
        """Raises ValueError if the model's embedding table cannot hold every token id."""
        if model_vocab_size < self.vocab_size:
            raise UserError(
                f"model vocab_size={model_vocab_size} is smaller than the {self.name} tokenizer's "
                f"vocab_size={self.vocab_size}; set model.vocab_size >= {self.vocab_size}"
            )


def _as_text(text: str | bytes) -> str:
    return text.decode("utf-8", errors="replace") if isinstance(text, (bytes, bytearray)) else text


class ByteTokenizer(_Base):
    """UTF-8 bytes as token ids; 259 ids in all (256 bytes + PAD, BOS, EOS)."""

    name = "byte"
    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259

    def encode(self, text: str | bytes) -> np.ndarray:
        """Token ids of `text` (int32, no BOS/EOS added)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, np.uint8).astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of byte ids; special ids are dropped, bad UTF-8 becomes U+FFFD."""
        ids = np.asarray(ids).reshape(-1)
        kept = ids[(ids >= 0) & (ids < 256)].astype(np.uint8)
        return kept.tobytes().decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return "bytes:utf8-256+pad,bos,eos"

    def __repr__(self) -> str:
        return "ByteTokenizer()"


def _pick(kind: str, explicit: str | None, preferred: str | None, names: Sequence[str],
          lookup, found: list[str], path: pathlib.Path, required: bool) -> int | None:
    """Id of the special token: explicit name, then the tokenizer's own config, then usual names."""
    if explicit:
        token_id = lookup(explicit)
        if token_id is None:
            raise UserError(f"data.{kind}_token={explicit!r} is not a token of {path}; special "
                             f"tokens found: {found or 'none'}")
        return token_id
    for name in ([preferred] if preferred else []) + list(names):
        token_id = lookup(name)
        if token_id is not None:
            return token_id
    if required:
        raise UserError(
            f"tokenizer {path} has no {kind.upper()} token (looked for {', '.join(names)}); special "
            f"tokens found: {found or 'none'}; name one with data.{kind}_token=TOKEN"
        )
    return None


def _config_token(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class HFTokenizer(_Base):
    """A HuggingFace `tokenizers` tokenizer.json, loaded offline from a local file."""

    name = "tokenizer.json"

    def __init__(self, path: str | pathlib.Path, *, bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None):
        from tokenizers import Tokenizer as _HF

        self.path = pathlib.Path(path)
        self._raw = self.path.read_bytes()
        try:
            self._tok = _HF.from_str(self._raw.decode("utf-8"))
        except Exception as error:  # tokenizers raises plain Exception subclasses
            raise UserError(f"cannot load {self.path} as a HuggingFace tokenizer.json: {error}") from None
        own = {}
        config_path = self.path.parent / "tokenizer_config.json"
        if config_path.is_file():
            own = json.loads(config_path.read_text("utf-8"))
        added = self._tok.get_added_tokens_decoder()
        found = [t.content for _, t in sorted(added.items()) if t.special] or [
            t.content for _, t in sorted(added.items())]
        lookup = self._tok.token_to_id
        self.bos_id = _pick("bos", bos_token, _config_token(own.get("bos_token")), BOS_NAMES,
                            lookup, found, self.path, True)
        self.eos_id = _pick("eos", eos_token, _config_token(own.get("eos_token")), EOS_NAMES,
                            lookup, found, self.path, True)
        pad = _pick("pad", pad_token, _config_token(own.get("pad_token")), PAD_NAMES, lookup,
                    found, self.path, False)
        self.pad_id = self.eos_id if pad is None else pad
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str | bytes) -> np.ndarray:
        return np.asarray(self._tok.encode(_as_text(text), add_special_tokens=False).ids, np.int32)

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        encodings = self._tok.encode_batch([_as_text(t) for t in texts], add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encodings]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids = np.asarray(ids).reshape(-1)
        kept = ids[(ids >= 0) & (ids < self.vocab_size)]
        kept = kept[~np.isin(kept, [self.bos_id, self.eos_id, self.pad_id])]
        return self._tok.decode(kept.tolist(), skip_special_tokens=True)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self._raw)
        digest.update(f"|{self.bos_id},{self.eos_id},{self.pad_id}".encode())
        return "hf:" + digest.hexdigest()[:32]

    def __getstate__(self):  # picklable for worker processes: rebuild from the file's bytes
        return {"path": self.path, "raw": self._raw, "ids": (self.bos_id, self.eos_id, self.pad_id),
                "vocab_size": self.vocab_size}

    def __setstate__(self, state):
        from tokenizers import Tokenizer as _HF

        self.path, self._raw = state["path"], state["raw"]
        self._tok = _HF.from_str(self._raw.decode("utf-8"))
        self.bos_id, self.eos_id, self.pad_id = state["ids"]
        self.vocab_size = state["vocab_size"]

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r})"


def train_bpe(texts: Sequence[str], vocab_size: int, path: str | pathlib.Path) -> HFTokenizer:
    """Trains a byte-level BPE tokenizer (GPT-2 style: any text encodes, nothing is unknown) on
    `texts`, with <s>, </s> and <pad> as ids 0, 1, 2, and writes it to `path` (a tokenizer.json,
    written whole or not at all). The same texts give the same file."""
    from tokenizers import Tokenizer as _HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + 3:
        raise UserError(f"vocab_size={vocab_size} is below the 256 bytes plus 3 special tokens a byte-level "
                         "BPE needs")
    tokenizer = _HF(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    tokenizer.save(str(partial))
    os.replace(partial, path)
    return HFTokenizer(path)


class SentencePieceTokenizer(_Base):
    """A SentencePiece .model file."""

    name = "SentencePiece"

    def __init__(self, path: str | pathlib.Path, *, bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None):
        import sentencepiece

        self.path = pathlib.Path(path)
        self._raw = self.path.read_bytes()
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._raw)
        except Exception as error:
            raise UserError(f"cannot load {self.path} as a SentencePiece model: {error}") from None
        sp = self._sp
        size = sp.get_piece_size()
        found = [sp.id_to_piece(i) for i in range(size) if sp.is_control(i) or sp.is_unknown(i)]

        def lookup(piece: str) -> int | None:
            token_id = sp.piece_to_id(piece)
            return None if sp.is_unknown(token_id) and piece != sp.id_to_piece(token_id) else token_id

        def own(token_id: int) -> str | None:
            return sp.id_to_piece(token_id) if token_id >= 0 else None

        self.bos_id = _pick("bos", bos_token, own(sp.bos_id()), BOS_NAMES, lookup, found, self.path, True)
        self.eos_id = _pick("eos", eos_token, own(sp.eos_id()), EOS_NAMES, lookup, found, self.path, True)
        pad = _pick("pad", pad_token, own(sp.pad_id()), PAD_NAMES, lookup, found, self.path, False)
        self.pad_id = self.eos_id if pad is None else pad
        self.vocab_size = int(size)

    def encode(self, text: str | bytes) -> np.ndarray:
        return np.asarray(self._sp.encode(_as_text(text), out_type=int), np.int32)

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        return [np.asarray(ids, np.int32)
                for ids in self._sp.encode([_as_text(t) for t in texts], out_type=int)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids = np.asarray(ids).reshape(-1)
        kept = ids[(ids >= 0) & (ids < self.vocab_size)]
        kept = kept[~np.isin(kept, [self.bos_id, self.eos_id, self.pad_id])]
        return self._sp.decode(kept.tolist())

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self._raw)
        digest.update(f"|{self.bos_id},{self.eos_id},{self.pad_id}".encode())
        return "spm:" + digest.hexdigest()[:32]

    def __getstate__(self):
        return {"path": self.path, "raw": self._raw, "ids": (self.bos_id, self.eos_id, self.pad_id),
                "vocab_size": self.vocab_size}

    def __setstate__(self, state):
        import sentencepiece

        self.path, self._raw = state["path"], state["raw"]
        self._sp = sentencepiece.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(self._raw)
        self.bos_id, self.eos_id, self.pad_id = state["ids"]
        self.vocab_size = state["vocab_size"]

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.path)!r})"


def _resolve(path: pathlib.Path) -> pathlib.Path:
    if path.is_dir():
        for candidate in ("tokenizer.json", "tokenizer.model", "spm.model", "sentencepiece.model"):
            if (path / candidate).is_file():
                return path / candidate
        models = sorted(path.glob("*.model"))
        if len(models) == 1:
            return models[0]
        raise MissingFileError(
            f"tokenizer folder {path} holds no tokenizer.json or SentencePiece .model file"
        )
    if not path.is_file():
        raise MissingFileError(
            f"tokenizer file {path} does not exist; data.tokenizer must be 'bytes' or a local "
            "tokenizer.json / SentencePiece .model file (or a folder holding one)"
        )
    return path


def load_tokenizer(spec="bytes", *, bos_token: str | None = None, eos_token: str | None = None,
                   pad_token: str | None = None) -> Tokenizer:
    """The tokenizer named by `spec`: 'bytes', a path, or a data config section (a3jax.configs
    DataConfig: reads data.tokenizer and data.{bos,eos,pad}_token)."""
    if not isinstance(spec, (str, pathlib.Path)):
        data = spec
        spec = data.tokenizer or "bytes"
        # A plain ConfigDict section may omit the optional special-token names.
        bos_token = bos_token or getattr(data, "bos_token", None) or None
        eos_token = eos_token or getattr(data, "eos_token", None) or None
        pad_token = pad_token or getattr(data, "pad_token", None) or None
    if str(spec) == "bytes":
        return ByteTokenizer()
    path = _resolve(pathlib.Path(spec).expanduser())
    kwargs = dict(bos_token=bos_token, eos_token=eos_token, pad_token=pad_token)
    if path.suffix == ".json":
        return HFTokenizer(path, **kwargs)
    return SentencePieceTokenizer(path, **kwargs)
