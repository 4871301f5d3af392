"""Prompt tokenizers for the runtime: `tokenizers` + numpy only, no torch/transformers.

Reads the tokenizer.json written by `edgegen.export.text_tokenizers.write_runtime_tokenizer_any`
(or `edgegen.export.clip_vocab.write_runtime_tokenizer`), which carries its own truncation and
padding settings, so one class serves CLIP, T5, Gemma and any other such tokenizer.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import EdgegenError


class TokenTruncationWarning(UserWarning):
    """A prompt was longer than the text encoder's context and lost its tail."""


class TextTokenizer:
    """Fixed-length token ids (and attention mask) for a batch of prompts.

    name: how the truncation warning calls the encoder ("prompt 0 is longer than T5's 256 tokens").
    """

    default_name = "the text encoder"

    def __init__(self, tokenizer: Tokenizer, name: str | None = None):
        trunc, pad = tokenizer.truncation, tokenizer.padding
        if not trunc or not pad or pad.get("length") != trunc["max_length"]:
            # Without both, batches would be ragged or silently overlong for the encoder.
            raise EdgegenError(
                "tokenizer.json must pad and truncate to one fixed length; "
                "write it with edgegen.export.text_tokenizers.write_runtime_tokenizer_any"
            )
        self._tok = tokenizer
        self._untruncated: Tokenizer | None = None
        self.name: str = name or self.default_name
        self.max_length: int = trunc["max_length"]
        self.pad_id: int = pad["pad_id"]
        self.padding_side: str = pad["direction"].lower()
        self._cut_end = "first" if trunc["direction"].lower() == "left" else "last"

    @classmethod
    def from_dir(cls, path: str | Path, name: str | None = None):
        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise EdgegenError(f"no tokenizer.json in {path}")
        return cls(Tokenizer.from_file(str(file)), name=name)

    def with_max_length(self, max_length: int):
        """A copy padding and truncating to `max_length` instead (SANA tokenizes its prompt, behind
        an instruction prefix, and its negative prompt to different lengths)."""
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        tok = Tokenizer.from_str(self._tok.to_str())
        trunc = dict(tok.truncation)
        trunc["max_length"] = max_length
        tok.enable_truncation(**trunc)
        pad = dict(tok.padding)
        pad["length"] = max_length
        tok.enable_padding(**pad)
        return type(self)(tok, name=self.name)

    def num_tokens(self, text: str) -> int:
        """Token count of `text` with special tokens, untruncated and unpadded
        (transformers' `len(tok.encode(text))`)."""
        return len(self._untruncated_tokenizer().encode(text).ids)

    def encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, attention_mask), both int64 [len(prompts), max_length]; the mask is 0 on padding."""
        return self._encode(prompts)

    def __call__(self, prompts: list[str], return_mask: bool = False):
        """Token ids, int64 [len(prompts), max_length]; with return_mask, (ids, attention_mask)."""
        ids, mask = self._encode(prompts)
        return (ids, mask) if return_mask else ids

    def _encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not a single string")
        prompts = list(prompts)
        encodings = self._tok.encode_batch(prompts)
        for i, enc in enumerate(encodings):
            if enc.overflowing:
                self._warn_truncated(i, prompts[i])
        shape = (len(prompts), self.max_length)
        ids = np.array([enc.ids for enc in encodings], dtype=np.int64).reshape(shape)
        mask = np.array([enc.attention_mask for enc in encodings], dtype=np.int64).reshape(shape)
        return ids, mask

    def _untruncated_tokenizer(self) -> Tokenizer:
        if self._untruncated is None:
            self._untruncated = Tokenizer.from_str(self._tok.to_str())
            self._untruncated.no_truncation()
            self._untruncated.no_padding()
        return self._untruncated

    def _warn_truncated(self, index: int, prompt: str) -> None:
        # Overflow pieces get their own special tokens, so count on a clean re-encode;
        # this only runs for prompts that were actually cut.
        dropped = self.num_tokens(prompt) - self.max_length
        warnings.warn(
            f"prompt {index} is longer than {self.name}'s {self.max_length} tokens; "
            f"dropped its {self._cut_end} {dropped} token{'s' * (dropped != 1)}",
            TokenTruncationWarning,
            stacklevel=4,
        )


class ClipTokenizer(TextTokenizer):
    """TextTokenizer for CLIP text encoders (77 tokens)."""

    default_name = "CLIP"
