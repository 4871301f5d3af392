"""The runtime's image equals the diffusers pipeline's image (tiny configs, same latents)."""
import numpy as np
import pytest

from edgegen.runtimes import Pipeline
from edgegen.runtimes.samplers import SAMPLERS
from helpers import patch_randn, psnr

FAMILIES = ["sd15", "sd21", "sd-turbo", "sdxl", "sdxl-turbo", "lcm-sd15", "flux-schnell", "flux-dev",
            "sd3-medium", "sd35-medium", "sd35-large", "sd35-large-turbo", "playground-v25", "auraflow"]


def diffusers_image(pipe, art, sampler, prompt, steps, guidance, latents, seed, monkeypatch):
    h, w = latents.shape[2] * 8, latents.shape[3] * 8
    import diffusers
    import torch

    # The scheduler config the artifact carries, read by the diffusers class the sampler mirrors.
    ours = Pipeline.load(art, verify=False)
    config = ours.artifact.manifest["scheduler"]
    pipe.scheduler = getattr(diffusers, SAMPLERS[sampler].diffusers_class).from_config(config)
    # Stochastic samplers: diffusers draws its step noise from the same numpy stream as the runtime.
    patch_randn(monkeypatch, pipe.scheduler, np.random.default_rng(seed))
    kw = {}
    if ours.recipe["kind"] == "flux":
        from edgegen.runtimes.flux_pipeline import pack

        latents = pack(latents)  # FluxPipeline takes packed latents
        kw["max_sequence_length"] = ours.artifact.io("text_encoder_2").inputs[0].shape[1]
    with torch.no_grad():
        out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, latents=torch.from_numpy(latents),
                   height=h, width=w, output_type="np", **kw).images
    return (out[0] * 255).round().astype(np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_default_recipe_matches_diffusers(family, tiny_export, monkeypatch):
    art, pipe = tiny_export(family)
    ours = Pipeline.load(art)
    d = ours.defaults
    steps = min(max(d["steps"], 3), 8)
    latents = np.random.default_rng(3).standard_normal((1, 4, 8, 8)).astype(np.float32)
    prompt = "a red fox in snow, highly detailed"
    img = ours(prompt, steps=steps, guidance=d["guidance"], latents=latents, seed=11)
    ref = diffusers_image(pipe, art, d["sampler"], prompt, steps, d["guidance"], latents, 11, monkeypatch)
    assert img.shape == ref.shape == (64, 64, 3)
    assert psnr(img, ref) >= 40, psnr(img, ref)


@pytest.mark.parametrize("family,sampler,guidance", [
    ("sd15", "dpmpp_2m", 7.5),     # CFG with a multistep sampler
    ("sd15", "euler_a", 4.0),      # stochastic sampler under CFG
    ("sd21", "euler", 6.0),        # v-prediction with Euler
    ("sdxl", "ddim", 5.0),         # SDXL CFG: zeroed negative embeddings, pooled + time ids
    ("playground-v25", "edm_euler", 3.0),   # EDM Euler with the VAE's latent statistics
])
def test_other_samplers_match_diffusers(family, sampler, guidance, tiny_export, monkeypatch):
    art, pipe = tiny_export(family)
    latents = np.random.default_rng(5).standard_normal((1, 4, 8, 12)).astype(np.float32)
    img = Pipeline.load(art)("a lighthouse at dusk", steps=5, guidance=guidance, sampler=sampler, latents=latents, seed=2)
    ref = diffusers_image(pipe, art, sampler, "a lighthouse at dusk", 5, guidance, latents, 2, monkeypatch)
    assert img.shape == (64, 96, 3)
    assert psnr(img, ref) >= 40, psnr(img, ref)
