"""CLIP prompt tokenizer for the runtime: `tokenizers` + numpy only, no torch/transformers.

Reads the tokenizer.json written by `edgegen.export.clip_vocab.write_runtime_tokenizer`,
which carries its own truncation and padding settings.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import EdgegenError


class TokenTruncationWarning(UserWarning):
    """A prompt was longer than the text encoder's context and lost its tail."""


class ClipTokenizer:
    def __init__(self, tokenizer: Tokenizer):
        trunc, pad = tokenizer.truncation, tokenizer.padding
        if not trunc or not pad or pad.get("length") != trunc["max_length"]:
            # Without both, batches would be ragged or silently overlong for the encoder.
            raise EdgegenError(
                "tokenizer.json must pad and truncate to one fixed length; "
                "write it with edgegen.export.clip_vocab.write_runtime_tokenizer"
            )
        self._tok = tokenizer
        self._untruncated: Tokenizer | None = None
        self.max_length: int = trunc["max_length"]
        self.pad_id: int = pad["pad_id"]

    @classmethod
    def from_dir(cls, path: str | Path) -> ClipTokenizer:
        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise EdgegenError(f"no tokenizer.json in {path}")
        return cls(Tokenizer.from_file(str(file)))

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """Token ids, int64 [len(prompts), max_length]."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not a single string")
        prompts = list(prompts)
        encodings = self._tok.encode_batch(prompts)
        for i, enc in enumerate(encodings):
            if enc.overflowing:
                self._warn_truncated(i, prompts[i])
        ids = np.array([enc.ids for enc in encodings], dtype=np.int64)
        return ids.reshape(len(prompts), self.max_length)

    def _warn_truncated(self, index: int, prompt: str) -> None:
        # Overflow pieces get their own special tokens, so count on a clean re-encode;
        # this only runs for prompts that were actually cut.
        if self._untruncated is None:
            self._untruncated = Tokenizer.from_str(self._tok.to_str())
            self._untruncated.no_truncation()
            self._untruncated.no_padding()
        dropped = len(self._untruncated.encode(prompt).ids) - self.max_length
        warnings.warn(
            f"prompt {index} is longer than CLIP's {self.max_length} tokens; "
            f"dropped its last {dropped} token{'s' * (dropped != 1)}",
            TokenTruncationWarning,
            stacklevel=3,
        )
