"""tiny-vae: a TAESD decoder (diffusers' AutoencoderTiny) in place of the VAE decoder, against
diffusers with the same tiny VAE swapped in, the shipped trained one through its gate, and the
refusals."""
import json

import numpy as np
import pytest

from edgegen.export.tiny_vae import load_tiny_vae, taesd_config
from edgegen.optimize.steps.apply import apply_options
from edgegen.optimize.steps.registry import get_option
from edgegen.runtimes import Pipeline
from edgegen.runtimes.errors import EdgegenError
from helpers import assert_user_error, psnr, reference_image, run_cli

PROMPT = "a red fox in snow, highly detailed"


@pytest.fixture(scope="module")
def sd15(tiny_export):
    return tiny_export("sd15")


def test_matches_diffusers_with_the_tiny_vae_swapped_in(sd15, tmp_path, monkeypatch):
    """`pipe.vae = AutoencoderTiny(...)` in diffusers and our artifact with the same tiny VAE give
    one image; the full decoder's image differs (the graph really changed)."""
    import torch

    art, ref = sd15
    new = apply_options(art, [get_option("tiny-vae", weights="random", seed=5)], tmp_path / "tv", gate=False)
    m = json.loads((new / "manifest.json").read_text())
    rec, dec = m["pipeline_options"]["tiny-vae"], m["components"]["vae_decoder"]
    assert rec["random_weights"] and rec["gate"] == {"skipped": True}
    assert dec["replaces"]["class"] == "AutoencoderTiny" and dec["validation"]["passed"]
    assert dec["io"] == json.loads((art / "manifest.json").read_text())["components"]["vae_decoder"]["io"]
    z = np.random.default_rng(3).standard_normal((1, 4, 8, 8)).astype(np.float32)
    pipe = Pipeline.load(new)
    img = pipe(PROMPT, steps=4, guidance=7.5, latents=z, seed=1)
    full_vae = ref.vae
    ref.vae = load_tiny_vae("random", m["pipeline"], True, 5)
    try:
        want = reference_image(ref, art, pipe.defaults["sampler"], 1, monkeypatch, prompt=PROMPT,
                               num_inference_steps=4, guidance_scale=7.5, latents=torch.from_numpy(z), height=64,
                               width=64)
    finally:
        ref.vae = full_vae
    assert psnr(img, want) >= 40, psnr(img, want)
    plain = Pipeline.load(art)(PROMPT, steps=4, guidance=7.5, latents=z, seed=1)
    assert psnr(img, plain) < 30


def test_random_tiny_vae_is_refused_by_the_gate(sd15, tmp_path):
    art, _ = sd15
    out = tmp_path / "tv"
    r = run_cli("optimize", art, "--pipeline-option", "tiny-vae:weights=random", "--steps", "4", "--out", out)
    assert_user_error(r, "quality gate failed for tiny-vae", "psnr")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_shipped_tiny_vae_passes_its_gate(tmp_path):
    """The TAESD distilled from edgegen-shapes' VAE ships with it and is the default weights."""
    r = run_cli("export", "edgegen-shapes", "--out", tmp_path / "shapes")
    assert r.exit_code == 0, r.output
    r = run_cli("optimize", tmp_path / "shapes", "--pipeline-option", "tiny-vae", "--out", tmp_path / "tv")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "tv" / "manifest.json").read_text())
    rec = m["pipeline_options"]["tiny-vae"]
    assert rec["weights"].endswith("edgegen-shapes/tiny_vae") and not rec["random_weights"]
    assert rec["gate"]["end_to_end"]["passed"] and rec["params"] < rec["parent_params"] / 2
    r = run_cli("generate", tmp_path / "tv", "a red circle on a blue background", "--out", tmp_path / "c.png")
    assert r.exit_code == 0, r.output


def test_mismatched_latent_space_names_both_sides(sd15, tmp_path):
    from diffusers import AutoencoderTiny

    art, _ = sd15
    folder = tmp_path / "taef1"          # FLUX's 16-channel latent space
    AutoencoderTiny(**taesd_config(16, 8, True)).save_pretrained(folder)
    out = tmp_path / "tv"
    r = run_cli("optimize", art, "--pipeline-option", f"tiny-vae:weights={folder}", "--out", out)
    assert_user_error(r, "has latent channels 16, the artifact's VAE has 4")
    assert not out.exists()


def test_unavailable_weights_are_one_line(sd15, tmp_path):
    art, _ = sd15
    r = run_cli("optimize", art, "--pipeline-option", "tiny-vae", "--out", tmp_path / "a")   # madebyollin/taesd
    assert_user_error(r, "cannot load madebyollin/taesd", "weights=random")
    r = run_cli("optimize", art, "--pipeline-option", f"tiny-vae:weights={tmp_path}", "--out", tmp_path / "b")
    assert_user_error(r, "has no config.json")
    with pytest.raises(EdgegenError, match="unknown option"):
        get_option("tiny-vae", path="x")
