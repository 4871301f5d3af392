"""CLI behaviour: happy paths, and every user mistake gives one line, exit 2, nothing written."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgegen.runtimes.image import read_png_meta
from helpers import assert_user_error, run_cli as run






@pytest.fixture(scope="module")
def art(tiny_export):
    return tiny_export("lcm-sd15")[0]


@pytest.fixture
def art_copy(art, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(art, dst)
    return dst


def test_generate_writes_png_with_metadata(art, tmp_path):
    out = tmp_path / "fox.png"
    r = run("generate", art, "a red fox in snow", "--steps", 4, "--seed", 7, "--out", out)
    assert r.exit_code == 0, r.output
    meta = read_png_meta(out)
    assert meta["prompt"] == "a red fox in snow" and meta["seed"] == "7" and meta["steps"] == "4"
    assert meta["sampler"] == "lcm" and meta["guidance"] == "8.5" and len(meta["artifact_sha256"]) == 64
    # Same seed, same image; caller-supplied latents are honoured.
    out2 = tmp_path / "fox2.png"
    run("generate", art, "a red fox in snow", "--steps", 4, "--seed", 7, "--out", out2)
    assert out.read_bytes() == out2.read_bytes()
    np.save(tmp_path / "noise.npy", np.random.default_rng(0).standard_normal((1, 4, 8, 12)).astype(np.float32))
    out3 = tmp_path / "wide.png"
    r = run("generate", art, "x", "--latents", tmp_path / "noise.npy", "--out", out3)
    assert r.exit_code == 0, r.output
    from PIL import Image

    assert Image.open(out3).size == (96, 64)


def test_info_json(art):
    r = run("info", art, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    m = data["manifest"]
    assert m["family"] == "lcm-sd15" and m["format_version"] == 1
    assert set(m["components"]) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    unet = m["components"]["unet"]
    assert [t["name"] for t in unet["io"]["inputs"]] == ["sample", "timestep", "encoder_hidden_states", "timestep_cond"]
    assert unet["validation"]["passed"] and all(c["max_abs_err"] <= c["tolerance"] for c in unet["validation"]["checks"])
    assert all(len(f["sha256"]) == 64 for f in unet["files"].values())
    assert {"torch", "onnx", "onnxruntime", "diffusers"} <= set(m["tools"])
    assert data["summary"]["components"]["unet"]["validation_passed"]
    assert run("info", art).exit_code == 0


def test_long_prompt_is_truncated_with_warning(art, tmp_path):
    r = run("generate", art, " ".join(["fox"] * 100), "--steps", 1, "--out", tmp_path / "a.png")
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "77" in r.output


@pytest.mark.parametrize("args,fragment", [
    (["--height", 60], "multiple of"),
    (["--width", 100], "multiple of"),
    (["--steps", 0], "steps must be >= 1"),
    (["--guidance", -1], "guidance must be >= 0"),
    (["--sampler", "plms"], "unknown sampler"),
    (["--height", 4096], "outside"),
])
def test_generate_bad_input(art, tmp_path, args, fragment):
    out = tmp_path / "x.png"
    assert_user_error(run("generate", art, "p", "--out", out, *args), fragment)
    assert not out.exists()


def test_generate_refuses_existing_out(art, tmp_path):
    out = tmp_path / "x.png"
    out.write_bytes(b"keep")
    assert_user_error(run("generate", art, "p", "--out", out), "already exists")
    assert out.read_bytes() == b"keep"


def test_artifact_without_manifest(tmp_path):
    assert_user_error(run("generate", tmp_path, "p", "--out", tmp_path / "x.png"), "no manifest.json")
    assert_user_error(run("info", tmp_path / "nope"), "no artifact")


def test_artifact_missing_graph(art_copy, tmp_path):
    (art_copy / "unet" / "model.onnx").unlink()
    assert_user_error(run("generate", art_copy, "p", "--out", tmp_path / "x.png"), "missing unet/model.onnx")


def test_artifact_corrupted_graph(art_copy, tmp_path):
    g = art_copy / "vae_decoder" / "model.onnx"
    data = bytearray(g.read_bytes())
    data[len(data) // 2] ^= 0xFF
    g.write_bytes(bytes(data))
    assert_user_error(run("info", art_copy), "corrupted")
    assert_user_error(run("generate", art_copy, "p", "--out", tmp_path / "x.png"), "corrupted")


def test_export_bad_input(tmp_path, art):
    out = tmp_path / "o"
    assert_user_error(run("export", "sd99", "--tiny", "--out", out), "unknown family", "sd15", "sdxl-turbo")
    assert_user_error(run("export", "sd15", "--weights", tmp_path / "missing", "--out", out), "no such file")
    assert_user_error(run("export", "sd15", "--tiny", "--out", art), "already exists")
    # A dangling symlink is refused before any work too (the final rename would fail on it).
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    assert_user_error(run("export", "sd15", "--tiny", "--out", dangling), "already exists", "--force")
    assert_user_error(run("export", "sd15", "--tiny", "--random-weights", "--out", out), "exactly one of")
    # no weight source: the family's hub id, which offline and uncached ends in one line
    assert_user_error(run("export", "sd15", "--out", out), "not in the Hugging Face cache", "--random-weights")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04not really")
    assert_user_error(run("export", "sd15", "--weights", ckpt, "--out", out), "pickle", "--trust-pickle")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.tmp")]


@pytest.fixture(scope="module")
def sd15_folder(tiny_export, tmp_path_factory):
    """The tiny sd15 pipeline saved as a diffusers folder (model_index.json layout)."""
    folder = tmp_path_factory.mktemp("weights") / "tiny-sd15"
    tiny_export("sd15")[1].save_pretrained(folder)
    return folder


def test_export_from_diffusers_folder(sd15_folder, tiny_export, tmp_path):
    out = tmp_path / "from-folder"
    r = run("export", "sd15", "--weights", sd15_folder, "--out", out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"] == {"kind": "folder", "path": str(sd15_folder), "seed": None}
    ref = json.loads((tiny_export("sd15")[0] / "manifest.json").read_text())
    assert m["components"]["unet"]["params"] == ref["components"]["unet"]["params"]


def test_export_folder_errors(sd15_folder, tmp_path):
    out = tmp_path / "o"
    assert_user_error(run("export", "sdxl", "--weights", sd15_folder, "--out", out), "not sdxl", "try: edgegen export sd15")
    assert_user_error(run("export", "lcm-sd15", "--weights", sd15_folder, "--out", out), "time_cond_proj_dim")
    broken = tmp_path / "broken"
    shutil.copytree(sd15_folder, broken)
    shutil.rmtree(broken / "vae")
    assert_user_error(run("export", "sd15", "--weights", broken, "--out", out), "missing component 'vae'")
    pickled = tmp_path / "pickled"
    shutil.copytree(sd15_folder, pickled)
    for f in (pickled / "unet").glob("*.safetensors"):
        f.rename(f.with_name("diffusion_pytorch_model.bin"))
    assert_user_error(run("export", "sd15", "--weights", pickled, "--out", out), "pickle", "--trust-pickle")
    assert not out.exists()


def test_force_replaces_existing(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("x")
    r = run("export", "sd15", "--tiny", "--out", out, "--force")
    assert r.exit_code == 0, r.output
    assert (out / "manifest.json").is_file() and not (out / "old.txt").exists()
    # --force on a symlink replaces the link, and leaves what it pointed at alone.
    target = tmp_path / "kept"
    target.mkdir()
    (target / "mine.txt").write_text("y")
    link = tmp_path / "link"
    link.symlink_to(target)
    r = run("export", "sd15", "--tiny", "--out", link, "--force")
    assert r.exit_code == 0, r.output
    assert not link.is_symlink() and (link / "manifest.json").is_file()
    assert (target / "mine.txt").read_text() == "y"
    assert not [p.name for p in tmp_path.iterdir() if ".old-" in p.name]


def test_runtime_never_imports_torch(art, tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from edgegen.runtimes import Pipeline\n"
        f"img = Pipeline.load({str(art)!r})('a fox', steps=2, seed=1)\n"
        "assert img.shape == (64, 64, 3) and img.dtype == np.uint8\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    runtimes = Path(__file__).resolve().parents[1] / "runtimes"
    offenders = [p.name for p in runtimes.rglob("*.py")
                 if any(line.strip().startswith(("import torch", "from torch")) for line in p.read_text().splitlines())]
    assert not offenders, offenders
