"""Playground v2.5 (playgroundai/playground-v2.5-1024px-aesthetic): the SDXL base UNet and text
encoders (read from the sdxl family, not repeated) trained in the EDM formulation.

What differs from SDXL is data, not architecture: the scheduler (EDM DPM-Solver++ on Karras
sigmas, c_noise timesteps, preconditioned inputs and outputs) and the VAE's latent statistics
(latents_mean / latents_std with scaling_factor 0.5; StableDiffusionXLPipeline decodes
z * std / scaling + mean when its VAE config carries them, and img2img encodes the inverse).
"""
from ..family import Family, ModelDef
from .parts import SDXL_VAE, VAE_TINY
from .sdxl import TEXT_ENCODERS, UNET, UNET_TINY_XL

LATENT_STATS = {"scaling_factor": 0.5, "latents_mean": [-1.6574, 1.886, -1.383, 2.5155],
                "latents_std": [8.4927, 5.9022, 6.5498, 5.2299]}
# scheduler/scheduler_config.json of the released checkpoint.
SCHEDULER = {
    "_class_name": "EDMDPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++",
    "dynamic_thresholding_ratio": 0.995, "euler_at_final": False, "final_sigmas_type": "zero",
    "lower_order_final": True, "num_train_timesteps": 1000, "prediction_type": "epsilon", "rho": 7.0,
    "sample_max_value": 1.0, "sigma_data": 0.5, "sigma_max": 80.0, "sigma_min": 0.002, "solver_order": 2,
    "solver_type": "midpoint", "thresholding": False,
}

FAMILY = Family(
    name="playground-v25",
    description="Playground v2.5 1024px aesthetic (SDXL architecture, EDM, 2.6B UNet)",
    pipeline_class="StableDiffusionXLPipeline",
    hub_id="playgroundai/playground-v2.5-1024px-aesthetic",
    text_encoders=TEXT_ENCODERS,
    denoiser=ModelDef("unet", "UNet2DConditionModel", UNET, UNET_TINY_XL),
    vae=ModelDef("vae", "AutoencoderKL", {**SDXL_VAE, **LATENT_STATS}, {**VAE_TINY, **LATENT_STATS}),
    # The model card's settings: 50 steps at guidance 3.
    scheduler=SCHEDULER, sampler="edm_dpmpp_2m", steps=50, guidance=3.0,
    resolution=(512, 1024, 1536),
    force_zeros_for_empty_prompt=True,
)
