"""T5 and Gemma tokenizer folders trained offline, and runtime tokenizer.json for any tokenizer.

--tiny / --random-weights exports have no real tokenizer files, so this module trains real
ones (never a stub) with the `tokenizers` library on the small corpus shipped in
assets/edgegen_text_corpus.txt.gz, laid out like the originals:

* T5 (FLUX tokenizer_2, SD3 tokenizer_3): SentencePiece-style Unigram, Metaspace pre-tokenizer,
  </s> appended; <pad>=0, </s>=1, <unk>=2, pieces, then <extra_id_99> .. <extra_id_0> last.
* Gemma-2 (SANA tokenizer): BPE with byte fallback, spaces as "▁", <bos> prepended;
  <pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4, <0x00> .. <0xFF>, then pieces and merges.

Both folders are written by transformers itself (T5Tokenizer / GemmaTokenizer), so they load with
T5TokenizerFast / GemmaTokenizerFast / AutoTokenizer. Ids stay far below the real vocab sizes
(32128, 256000), so the real model configs can be used unchanged.
"""

from __future__ import annotations

import gzip
import json
import os
from contextlib import contextmanager
from pathlib import Path

CORPUS_PATH = Path(__file__).parent / "assets" / "edgegen_text_corpus.txt.gz"

T5_SPECIALS = ("<pad>", "</s>", "<unk>")
T5_EXTRA_IDS = 100
T5_UNIGRAM_VOCAB = 4000  # trainer target; this corpus saturates at ~2550 pieces
T5_SCORE_DECIMALS = 2

GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
GEMMA_VOCAB = 4096  # specials + 256 byte tokens + trained alphabet and merges


def corpus_lines() -> list[str]:
    return gzip.decompress(CORPUS_PATH.read_bytes()).decode("utf-8").splitlines()


@contextmanager
def _sequential_tokenizers():
    # Single-threaded training: no thread-count-dependent float summation order.
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def train_t5_vocab() -> list[tuple[str, float]]:
    """The (piece, log-prob) list of the T5 tokenizer, ids in list order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    # T5Tokenizer's own pre-tokenizer, so pieces match how it will split text.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=T5_UNIGRAM_VOCAB,
        special_tokens=list(T5_SPECIALS),
        unk_token="<unk>",
        max_piece_length=16,
        show_progress=False,
    )
    with _sequential_tokenizers():
        tok.train_from_iterator(corpus_lines(), trainer)
    model_vocab = [(p, float(s)) for p, s in json.loads(tok.to_str())["model"]["vocab"]]
    assert [p for p, _ in model_vocab[:3]] == list(T5_SPECIALS), model_vocab[:3]
    # The trainer's piece set is stable, but the order (and so the scores) of the characters it
    # re-adds at the bottom follows Rust hash order; rounding and sorting makes it canonical.
    body = sorted(
        ((p, round(s, T5_SCORE_DECIMALS) + 0.0) for p, s in model_vocab[3:]),
        key=lambda ps: (-ps[1], ps[0]),
    )
    extra = [(f"<extra_id_{i}>", 0.0) for i in reversed(range(T5_EXTRA_IDS))]
    return [(p, 0.0) for p in T5_SPECIALS] + body + extra


def train_gemma_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The (vocab, merges) of the Gemma tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    # Gemma's tokenizer does not split words, but SentencePiece trains per "▁word", so merges
    # never span a word boundary.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    fixed = [*GEMMA_SPECIALS, *(f"<0x{b:02X}>" for b in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=GEMMA_VOCAB - len(fixed), show_progress=False)
    with _sequential_tokenizers():
        tok.train_from_iterator(corpus_lines(), trainer)
    model = json.loads(tok.to_str())["model"]
    trained = sorted(model["vocab"], key=model["vocab"].__getitem__)
    tokens = fixed + [t for t in trained if t not in fixed]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return vocab, merges


def write_t5_tokenizer(out_dir: Path, max_length: int) -> Path:
    """Write a T5TokenizerFast folder (diffusers `tokenizer_2/` or `tokenizer_3/`) to `out_dir`.

    model_max_length = max_length (256 for FLUX schnell, 512 for FLUX dev and SD3).
    Returns `out_dir`.
    """
    from transformers import T5TokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = T5TokenizerFast(vocab=train_t5_vocab(), extra_ids=T5_EXTRA_IDS, model_max_length=max_length)
    tok.save_pretrained(out_dir)
    return out_dir


def write_gemma_tokenizer(out_dir: Path, max_length: int) -> Path:
    """Write a GemmaTokenizerFast folder (SANA's `tokenizer/`) to `out_dir`.

    Adds <bos> like Gemma-2's config (add_bos_token=True, add_eos_token=False) and keeps the class's
    padding side ("left"); SanaPipeline switches it to "right" before tokenizing, so pass
    padding_side="right" to write_runtime_tokenizer_any for SANA. Returns `out_dir`.
    """
    from transformers import GemmaTokenizerFast

    vocab, merges = train_gemma_vocab()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = GemmaTokenizerFast(
        vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, model_max_length=max_length
    )
    tok.save_pretrained(out_dir)
    # transformers 5 leaves these out of the saved config (the post-processor in tokenizer.json
    # carries them); Gemma-2's own config states them, and transformers 4 reads them from there.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(add_bos_token=True, add_eos_token=False)
    text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    config_path.write_text(text, encoding="utf-8")
    return out_dir


# Strings checked through both transformers and the written tokenizer.json before returning.
_PROBES = (
    "a photo of an astronaut riding a horse",
    "",
    "  Ünïcödé café 日本語 🐱🚀 e\u0301  tabs\tand\nnewlines 3.14159",
    "specials: <unk> </s> <pad> <bos> <eos> <|endoftext|> <extra_id_0>",
    "long " * 700,
)


def write_runtime_tokenizer_any(
    src_dir: Path, out_dir: Path, max_length: int | None, padding_side: str | None = None
) -> Path:
    """Write `out_dir/tokenizer.json` for `edgegen.runtimes.tokenizer.TextTokenizer`.

    `src_dir` is any transformers fast-tokenizer folder AutoTokenizer loads (CLIP, T5, Gemma, ...).
    The file reproduces
    `tok(prompts, padding="max_length", max_length=max_length, truncation=True,
    add_special_tokens=True, padding_side=padding_side)` input_ids and attention_mask;
    max_length=None means the folder's model_max_length, padding_side=None the folder's own
    (SANA forces "right"). Returns the path of the written file.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src_dir)
    return write_runtime_tokenizer_from(tok, src_dir, out_dir, max_length, padding_side)


def write_runtime_tokenizer_from(
    tok, src_dir: Path, out_dir: Path, max_length: int | None, padding_side: str | None = None
) -> Path:
    """write_runtime_tokenizer_any for an already loaded transformers tokenizer `tok` from `src_dir`."""
    from tokenizers import Tokenizer

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if src_dir.resolve() == out_dir.resolve():
        # A padded tokenizer.json would change how transformers tokenizes from src_dir.
        raise ValueError("out_dir must differ from src_dir")
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{src_dir}: {type(tok).__name__} has no `tokenizers` backend")
    if max_length is None:
        max_length = tok.model_max_length
        if not 0 < max_length <= 4096:  # unset means transformers' 1e30 placeholder
            raise ValueError(
                f"{src_dir}: model_max_length is {max_length}; its tokenizer_config.json lacks it"
            )
    if not 0 < max_length <= 1 << 16:
        raise ValueError(f"max_length must be in 1..65536, got {max_length}")
    if tok.pad_token_id is None:
        raise ValueError(f"{src_dir}: tokenizer has no pad token")
    padding_side = padding_side or tok.padding_side
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    # Same settings transformers applies for padding="max_length", truncation=True (it sets them
    # on its backend before every call, so changing them here does not alter `tok`).
    backend = tok.backend_tokenizer
    backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction=tok.truncation_side)
    backend.enable_padding(
        length=max_length,
        direction=padding_side,
        pad_id=tok.pad_token_id,
        pad_type_id=tok.pad_token_type_id,
        pad_token=tok.pad_token,
    )
    text = backend.to_str(pretty=True)
    want = tok(
        list(_PROBES),
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        padding_side=padding_side,
    )
    got = Tokenizer.from_str(text).encode_batch(list(_PROBES))  # what the runtime will load
    if [e.ids for e in got] != want["input_ids"] or [e.attention_mask for e in got] != want["attention_mask"]:
        # transformers does work outside its serialized backend for this tokenizer (Python-side
        # text preprocessing, or a setting tokenizer.json cannot hold): the runtime would differ.
        raise ValueError(
            f"{src_dir}: {type(tok).__name__} does not tokenize through its tokenizer.json alone"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tokenizer.json"
    path.write_text(text, encoding="utf-8")
    return path
