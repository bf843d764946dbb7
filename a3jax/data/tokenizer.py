"""Byte-level tokenizer: ids 0..255 are bytes, then PAD, BOS and EOS."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes as token ids; 259 ids in all (256 bytes + PAD, BOS, EOS)."""

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

    def check_vocab(self, model_vocab_size: int) -> None:
        """Raises ValueError if the model's embedding table cannot hold every token id."""
        if model_vocab_size < self.vocab_size:
            raise ValueError(
                f"model vocab_size={model_vocab_size} is smaller than the byte tokenizer's "
                f"vocab_size={self.vocab_size}; set model.vocab_size >= {self.vocab_size}"
            )
