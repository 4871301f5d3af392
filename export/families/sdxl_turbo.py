from ..family import Family, ModelDef
from .parts import SDXL_VAE, VAE_TINY
from .sdxl import SCHEDULER, TEXT_ENCODERS, UNET, UNET_TINY_XL

# Adversarially distilled SDXL: 1-4 steps at 512px, guidance off.
FAMILY = Family(
    name="sdxl-turbo",
    description="SDXL-Turbo (SDXL architecture, 1-4 steps, 512px, no CFG)",
    pipeline_class="StableDiffusionXLPipeline",
    hub_id="stabilityai/sdxl-turbo",
    text_encoders=TEXT_ENCODERS,
    denoiser=ModelDef("unet", "UNet2DConditionModel", UNET, UNET_TINY_XL),
    vae=ModelDef("vae", "AutoencoderKL", SDXL_VAE, VAE_TINY),
    tiny_vae="madebyollin/taesdxl",
    scheduler={**SCHEDULER, "_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"},
    sampler="euler_a", steps=1, guidance=0.0,
    resolution=(256, 512, 1024),
    force_zeros_for_empty_prompt=True,
)
