import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("transformers")
from transformers import CLIPTokenizer  # noqa: E402

from edgegen.export.clip_vocab import write_clip_tokenizer, write_runtime_tokenizer  # noqa: E402
from edgegen.runtimes.errors import EdgegenError  # noqa: E402
from edgegen.runtimes.tokenizer import ClipTokenizer, TokenTruncationWarning  # noqa: E402

ASTRONAUT = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
PROMPTS = [
    "a photo of an astronaut riding a horse",
    "",
    "   ",
    "A PhOtO oF a CaT, DSLR, 8k; f/1.8 -- (masterpiece:1.2) [[ugly]] wow!!! ?!",
    "Ünïcödé café naïve 日本語の猫 Ελληνικά кошка 🐱🚀 e\u0301",
    "numbers 0 1 42 3.14159 1,000,000 2024-01-01 #1 $5 100%",
    "don't you'll we've I'M it's THEY'RE",
    "tabs\tand\nnewlines  and   spaces",
    "text with <|endoftext|> and <|startoftext|> inside",
    "cat " * 75,  # exactly fills 77 with bos/eos
    "a very long prompt, " * 40,
]


@pytest.fixture(scope="module", params=["<|endoftext|>", "!"], ids=["pad_eos", "pad_bang"])
def built(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    hf_dir = write_clip_tokenizer(root / "tokenizer", pad_token=request.param)
    # A model's own tokenizer/ folder often lacks tokenizer.json.
    legacy = root / "legacy"
    shutil.copytree(hf_dir, legacy)
    (legacy / "tokenizer.json").unlink()
    write_runtime_tokenizer(hf_dir, root / "rt")
    write_runtime_tokenizer(legacy, root / "rt_legacy")
    return {
        "pad": request.param,
        "dir": hf_dir,
        "hf": CLIPTokenizer.from_pretrained(hf_dir),
        "rt": ClipTokenizer.from_dir(root / "rt"),
        "rt_legacy": ClipTokenizer.from_dir(root / "rt_legacy"),
    }


def hf_ids(tok, prompts):
    return tok(prompts, padding="max_length", max_length=77, truncation=True).input_ids


def test_folder_layout(built):
    d = built["dir"]
    for name in ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]:
        assert (d / name).is_file(), name
    assert len(json.loads((d / "vocab.json").read_text(encoding="utf-8"))) == 49408
    assert len((d / "merges.txt").read_text(encoding="utf-8").splitlines()) == 1 + 48894
    tok = built["hf"]
    assert tok.model_max_length == 77 and tok.pad_token == built["pad"]
    assert tok.pad_token_id == {"<|endoftext|>": 49407, "!": 0}[built["pad"]]


def test_astronaut_ids(built):
    assert built["hf"]("a photo of an astronaut riding a horse").input_ids == ASTRONAUT
    ids = built["rt"](["a photo of an astronaut riding a horse"])
    assert ids.shape == (1, 77) and ids.dtype == np.int64
    assert ids[0, :10].tolist() == ASTRONAUT
    assert (ids[0, 10:] == built["hf"].pad_token_id).all()
    assert built["rt"].max_length == 77


@pytest.mark.parametrize("which", ["rt", "rt_legacy"])
def test_runtime_matches_transformers(built, which):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenTruncationWarning)
        got = built[which](PROMPTS)
    assert got.tolist() == hf_ids(built["hf"], PROMPTS)


def test_truncation_warning(built):
    rt = built["rt"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", TokenTruncationWarning)
        rt(["cat " * 75])  # 75 + bos/eos fits exactly: no warning
    with pytest.warns(TokenTruncationWarning, match=r"prompt 1 .* dropped its last 25 tokens$") as rec:
        ids = rt(["short", "cat " * 100])
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert ids[1, -1] == 49407 and (ids[1, 1:-1] == 2368).all()


def test_runtime_edge_inputs(built):
    assert built["rt"]([]).shape == (0, 77)
    with pytest.raises(TypeError):
        built["rt"]("a single string")


def test_runtime_rejects_unconfigured_tokenizer_json(built, tmp_path):
    shutil.copy(built["dir"] / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(EdgegenError, match="write_runtime_tokenizer"):
        ClipTokenizer.from_dir(tmp_path)
    with pytest.raises(EdgegenError, match="no tokenizer.json"):
        ClipTokenizer.from_dir(tmp_path / "missing")


def test_runtime_module_imports_no_torch():
    code = (
        "import sys, edgegen.runtimes.tokenizer; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
