"""CLIP BPE tokenizer folders built offline from the bundled OpenAI merges file.

Every Stable Diffusion text encoder (SD1.x, SD2.x, both SDXL encoders) uses the same
49408-token CLIP vocabulary; only the pad token differs, so one asset covers them all.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

BPE_PATH = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
MODEL_MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    # OpenAI's table: printable bytes map to themselves, the rest to chars from U+0100 up,
    # so every byte has a visible, non-whitespace symbol. Order fixes the first 256 ids.
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The (vocab, merges) tables exactly as OpenAI CLIP's SimpleTokenizer builds them."""
    lines = gzip.decompress(BPE_PATH.read_bytes()).decode("utf-8").split("\n")
    # Line 0 is the "#version" header; the file holds more merges than CLIP was trained with.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    base = list(_bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == 49408, len(vocab)
    return vocab, merges


def write_clip_tokenizer(out_dir: Path, pad_token: str = EOS) -> Path:
    """Write a transformers CLIPTokenizer folder (diffusers `tokenizer/` layout) to `out_dir`.

    pad_token: "<|endoftext|>" (id 49407) for SD1.x; "!" (id 0) for SD2.x and SDXL's
    tokenizer_2. Returns `out_dir`.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    if pad_token not in vocab:
        raise ValueError(f"pad_token {pad_token!r} is not in the CLIP vocabulary")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = CLIPTokenizer(
        vocab=vocab, merges=list(merges), pad_token=pad_token, model_max_length=MODEL_MAX_LENGTH
    )
    tok.save_pretrained(out_dir)
    # transformers 5 saves only tokenizer.json + tokenizer_config.json; real diffusers
    # folders (and slow/older tokenizers) also carry these three.
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out_dir


def write_runtime_tokenizer(src_dir: Path, out_dir: Path) -> Path:
    """Write `out_dir/tokenizer.json` for `edgegen.runtimes.tokenizer.ClipTokenizer`.

    `src_dir` is any CLIP tokenizer folder transformers.CLIPTokenizer loads (ours, or a
    model's `tokenizer/` with only vocab.json + merges.txt + configs). The file is the
    `tokenizers` pipeline of that tokenizer with truncation to model_max_length and
    padding to that length with the folder's pad token baked in, so it alone holds every
    fact the runtime needs (max_length = truncation.max_length, pad = padding.pad_id);
    no extra sidecar file is written. Returns the path of the written file.
    """
    from transformers import CLIPTokenizer

    from .text_tokenizers import write_runtime_tokenizer_from

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if src_dir.resolve() == out_dir.resolve():
        # A padded tokenizer.json would change how transformers tokenizes from src_dir.
        raise ValueError("out_dir must differ from src_dir")
    return write_runtime_tokenizer_from(CLIPTokenizer.from_pretrained(src_dir), src_dir, out_dir, None)
