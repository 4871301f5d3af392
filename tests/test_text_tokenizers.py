import json
import shutil
import warnings

import numpy as np
import pytest

pytest.importorskip("transformers")
from transformers import AutoTokenizer, CLIPTokenizer, GemmaTokenizerFast, T5TokenizerFast  # noqa: E402

from edgegen.export.clip_vocab import write_clip_tokenizer  # noqa: E402
from edgegen.export.text_tokenizers import (  # noqa: E402
    CORPUS_PATH,
    write_gemma_tokenizer,
    write_runtime_tokenizer_any,
    write_t5_tokenizer,
)
from edgegen.runtimes.tokenizer import ClipTokenizer, TextTokenizer, TokenTruncationWarning  # noqa: E402

PROMPTS = [
    "a photo of an astronaut riding a horse",
    "",
    "   ",
    "A PhOtO oF a CaT, DSLR, 8k; f/1.8 -- (masterpiece:1.2) [[ugly]] wow!!! ?!",
    "Ünïcödé café naïve 日本語の猫 Ελληνικά кошка 🐱🚀 e\u0301 Ｆｕｌｌ ﬁ",
    "numbers 0 1 42 3.14159 1,000,000 2024-01-01 #1 $5 100% 1024x1024",
    "don't you'll we've I'M it's THEY'RE",
    "tabs\tand\nnewlines  and   spaces\u00a0nbsp ",
    "specials inside: </s> <pad> <unk> <bos> <eos> <extra_id_0> <mask>",
    "\u200b zero width, \U0001f468\u200d\U0001f469\u200d\U0001f467 family, \x00 nul",
    "a very long prompt, " * 120,
]
LENGTHS = {"t5": 256, "t5_512": 512, "gemma": 300}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_tok")
    t5 = write_t5_tokenizer(root / "tokenizer_2", max_length=256)
    t5_512 = write_t5_tokenizer(root / "tokenizer_3", max_length=512)
    gemma = write_gemma_tokenizer(root / "tokenizer", max_length=300)
    # How SanaPipeline tokenizes: padding_side forced to "right" first.
    write_runtime_tokenizer_any(gemma, root / "rt_gemma", 300, padding_side="right")
    write_runtime_tokenizer_any(gemma, root / "rt_gemma_left", 300)
    write_runtime_tokenizer_any(t5, root / "rt_t5", 256)
    write_runtime_tokenizer_any(t5_512, root / "rt_t5_512", None)  # model_max_length
    hf_gemma_right = GemmaTokenizerFast.from_pretrained(gemma)
    hf_gemma_right.padding_side = "right"
    return {
        "root": root,
        "dirs": {"t5": t5, "t5_512": t5_512, "gemma": gemma},
        "hf": {
            "t5": T5TokenizerFast.from_pretrained(t5),
            "t5_512": T5TokenizerFast.from_pretrained(t5_512),
            "gemma": hf_gemma_right,
            "gemma_left": GemmaTokenizerFast.from_pretrained(gemma),
        },
        "rt": {
            "t5": TextTokenizer.from_dir(root / "rt_t5", name="T5"),
            "t5_512": TextTokenizer.from_dir(root / "rt_t5_512", name="T5"),
            "gemma": TextTokenizer.from_dir(root / "rt_gemma", name="Gemma"),
            "gemma_left": TextTokenizer.from_dir(root / "rt_gemma_left"),
        },
    }


def hf_encode(tok, prompts, max_length):
    enc = tok(prompts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True)
    return enc.input_ids, enc.attention_mask


def test_corpus_asset_is_small_and_documented():
    assert CORPUS_PATH.stat().st_size < 300_000
    assert CORPUS_PATH.name in (CORPUS_PATH.parent / "README.md").read_text(encoding="utf-8")


def test_builds_are_deterministic(built, tmp_path):
    # Training runs again from scratch: Rust hash order differs between runs, files must not.
    for name, write, length in [("t5", write_t5_tokenizer, 256), ("gemma", write_gemma_tokenizer, 300)]:
        again = write(tmp_path / name, max_length=length)
        first = built["dirs"][name]
        names = sorted(p.name for p in first.iterdir())
        assert names == sorted(p.name for p in again.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
        for n in names:
            assert (first / n).read_bytes() == (again / n).read_bytes(), (name, n)


def test_t5_layout(built):
    d = built["dirs"]["t5"]
    auto = AutoTokenizer.from_pretrained(d)
    assert isinstance(auto, T5TokenizerFast)
    tok = built["hf"]["t5"]
    n = len(tok)
    assert 2000 <= n <= 4200 and n < 32128
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.bos_token_id is None and tok.padding_side == "right"
    assert tok.model_max_length == 256 and built["hf"]["t5_512"].model_max_length == 512
    sentinels = tok.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(100)])
    assert sentinels == list(range(n - 1, n - 101, -1))  # <extra_id_0> is the last id, like T5
    model = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    assert model["type"] == "Unigram" and model["unk_id"] == 2 and len(model["vocab"]) == n
    ids = tok("a photo of an astronaut riding a horse").input_ids
    assert tok.convert_ids_to_tokens(ids) == [
        "▁a", "▁photo", "▁of", "▁an", "▁astronaut", "▁rid", "ing", "▁a", "▁horse", "</s>"
    ]  # fmt: skip
    assert tok.decode(ids, skip_special_tokens=True) == "a photo of an astronaut riding a horse"
    assert tok("☃").input_ids[-2:] == [2, 1]  # no byte fallback: unknown -> <unk>


def test_gemma_layout(built):
    d = built["dirs"]["gemma"]
    auto = AutoTokenizer.from_pretrained(d)
    assert isinstance(auto, GemmaTokenizerFast)
    tok = built["hf"]["gemma_left"]
    assert len(tok) == 4096 < 256000
    specials = [tok.pad_token, tok.eos_token, tok.bos_token, tok.unk_token, tok.mask_token]
    assert specials == ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    assert tok.convert_tokens_to_ids(specials) == [0, 1, 2, 3, 4]
    assert tok.convert_tokens_to_ids(["<0x00>", "<0x0A>", "<0xFF>"]) == [5, 15, 260]
    # transformers 5 takes add_bos_token from tokenizer.json's post-processor, not the config.
    config = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["add_bos_token"] is True and config["add_eos_token"] is False
    assert tok("").input_ids == [2]
    assert tok.padding_side == "left" and tok.model_max_length == 300
    model = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    assert model["type"] == "BPE" and model["byte_fallback"] and len(model["merges"]) > 3000
    ids = tok("a photo of an astronaut riding a horse").input_ids
    assert tok.convert_ids_to_tokens(ids) == [
        "<bos>", "a", "▁photo", "▁of", "▁an", "▁astronaut", "▁riding", "▁a", "▁horse"
    ]  # fmt: skip
    assert tok.decode(ids, skip_special_tokens=True) == "a photo of an astronaut riding a horse"
    # Characters outside the trained alphabet fall back to their UTF-8 bytes, and round-trip.
    ids = tok("Ü ☃").input_ids
    assert ids[1:3] == tok.convert_tokens_to_ids(["<0xC3>", "<0x9C>"])
    assert tok.decode(ids, skip_special_tokens=True) == "Ü ☃"


@pytest.mark.parametrize("name", ["t5", "t5_512", "gemma", "gemma_left"])
def test_runtime_matches_transformers(built, name):
    hf, rt = built["hf"][name], built["rt"][name]
    length = LENGTHS[name.removesuffix("_left")]
    assert rt.max_length == length and rt.pad_id == 0
    assert rt.padding_side == ("left" if name == "gemma_left" else "right")
    want_ids, want_mask = hf_encode(hf, PROMPTS, length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenTruncationWarning)
        ids, mask = rt.encode(PROMPTS)
        ids2, mask2 = rt(PROMPTS, return_mask=True)
        ids3 = rt(PROMPTS)
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (len(PROMPTS), length)
    assert ids.tolist() == want_ids
    assert mask.tolist() == want_mask
    assert (ids2 == ids).all() and (mask2 == mask).all() and (ids3 == ids).all()
    assert (ids[mask == 0] == 0).all()


def test_mask_counts_real_tokens(built):
    rt = built["rt"]["gemma"]
    ids, mask = rt.encode(["a cat", ""])
    assert mask[1].tolist() == [1] + [0] * 299  # "" is just <bos>
    n = int(mask[0].sum())
    assert ids[0, 0] == 2 and mask[0, :n].all() and not mask[0, n:].any()
    assert n == len(built["hf"]["gemma"]("a cat").input_ids)


@pytest.mark.parametrize("name", ["t5", "gemma"])
def test_truncation_warning(built, name):
    hf, rt = built["hf"][name], built["rt"][name]
    length = LENGTHS[name]

    def n_tokens(text):
        return len(hf(text).input_ids)

    # A prompt that fills max_length exactly: each further " cat" is one more token.
    assert n_tokens("cat cat") == n_tokens("cat") + 1
    fits = " ".join(["cat"] * (length - n_tokens("cat") + 1))
    assert n_tokens(fits) == length
    with warnings.catch_warnings():
        warnings.simplefilter("error", TokenTruncationWarning)
        rt([fits])
    long = " ".join(["cat"] * (length + 40))
    dropped = n_tokens(long) - length
    assert dropped >= 40
    label = {"t5": "T5", "gemma": "Gemma"}[name]
    with pytest.warns(TokenTruncationWarning) as rec:
        ids, mask = rt.encode(["short", long])
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert msg == f"prompt 1 is longer than {label}'s {length} tokens; dropped its last {dropped} tokens"
    assert rec[0].filename == __file__
    assert mask[1].all() and ids[1].tolist() == hf_encode(hf, [long], length)[0][0]


def test_sana_instruction_prefix_lengths(built):
    # SanaPipeline prepends an instruction to the prompt and tokenizes to
    # len(tok.encode(instruction)) + 300 - 2, but the negative prompt to 300.
    hf, rt = built["hf"]["gemma"], built["rt"]["gemma"]
    chi = "Given a user prompt, generate an 'Enhanced prompt'.\n- If it is simple, add detail.\nUser Prompt: "
    assert rt.num_tokens(chi) == len(hf.encode(chi))
    length = rt.num_tokens(chi) + 300 - 2
    longer = rt.with_max_length(length)
    assert (longer.max_length, longer.name, longer.padding_side) == (length, "Gemma", "right")
    assert rt.max_length == 300
    prompts = [chi + p.lower().strip() for p in PROMPTS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenTruncationWarning)
        ids, mask = longer.encode(prompts)
    want_ids, want_mask = hf_encode(hf, prompts, length)
    assert ids.tolist() == want_ids and mask.tolist() == want_mask
    with pytest.raises(ValueError):
        rt.with_max_length(0)


def test_runtime_edge_inputs(built):
    rt = built["rt"]["t5"]
    ids, mask = rt.encode([])
    assert ids.shape == mask.shape == (0, 256)
    with pytest.raises(TypeError):
        rt("a single string")
    assert TextTokenizer.default_name == "the text encoder"
    msg = r"^prompt 0 is longer than the text encoder's 300 tokens"
    with pytest.warns(TokenTruncationWarning, match=msg):
        built["rt"]["gemma_left"](["cat " * 400])


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    hf_dir = write_clip_tokenizer(root / "tokenizer", pad_token="!")
    legacy = root / "legacy"
    shutil.copytree(hf_dir, legacy)
    (legacy / "tokenizer.json").unlink()
    return {"clip": hf_dir, "clip_legacy": legacy, "hf": CLIPTokenizer.from_pretrained(hf_dir)}


@pytest.mark.parametrize("which", ["clip", "clip_legacy"])
def test_generic_writer_handles_clip(clip_dirs, tmp_path, which):
    write_runtime_tokenizer_any(clip_dirs[which], tmp_path / "rt", None)
    rt = ClipTokenizer.from_dir(tmp_path / "rt")
    assert isinstance(rt, TextTokenizer) and rt.max_length == 77 and rt.pad_id == 0
    hf = clip_dirs["hf"]
    prompts = PROMPTS[:-1] + ["cat " * 100]
    msg = r"^prompt 10 is longer than CLIP's 77 tokens; dropped its last 25 tokens$"
    with pytest.warns(TokenTruncationWarning, match=msg):
        ids, mask = rt.encode(prompts)
    want_ids, want_mask = hf_encode(hf, prompts, 77)
    assert ids.tolist() == want_ids and mask.tolist() == want_mask


def test_generic_writer_errors(built, tmp_path):
    gemma = built["dirs"]["gemma"]
    with pytest.raises(ValueError, match="must differ"):
        write_runtime_tokenizer_any(gemma, gemma, 300)
    with pytest.raises(ValueError, match="padding_side"):
        write_runtime_tokenizer_any(gemma, tmp_path / "rt", 300, padding_side="middle")
    # Real Gemma-2 folders leave model_max_length unset: the length must then be given.
    bare = tmp_path / "bare"
    shutil.copytree(gemma, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["model_max_length"]
    (bare / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match="model_max_length"):
        write_runtime_tokenizer_any(bare, tmp_path / "rt", None)
    assert write_runtime_tokenizer_any(bare, tmp_path / "rt", 300, padding_side="right").is_file()
