"""Playground v2.5 (playgroundai/playground-v2.5-1024px-aesthetic).

The released unet/config.json is the SDXL base UNet architecture (2.6B), and
its text encoders are SDXL's CLIP-L + OpenCLIP bigG, so both are read from the
sdxl export family rather than repeated. The VAE is an SDXL-shaped
AutoencoderKL with EDM latent statistics (latents_mean/std, scaling 0.5).
"""
from ...export.families.parts import SDXL_VAE
from ...export.families.sdxl import TEXT_ENCODERS, UNET
from . import Model, Part, vae_decoder

VAE = {**SDXL_VAE, "scaling_factor": 0.5, "force_upcast": True,
       "latents_mean": [-1.6574, 1.886, -1.383, 2.5155], "latents_std": [8.4927, 5.9022, 6.5498, 5.2299]}

MODEL = Model(
    name="playground-v2.5", title="Playground v2.5",
    parts=(*(Part(te.component, "text_encoder", f"transformers.{te.model_class}", te.config, 77) for te in TEXT_ENCODERS),
           Part("unet", "denoiser", "diffusers.UNet2DConditionModel", UNET), vae_decoder(VAE)),
    size=1024, cfg=True, text_tokens=77,
)
