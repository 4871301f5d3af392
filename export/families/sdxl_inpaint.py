from dataclasses import replace

from ..family import ModelDef
from .sdxl import FAMILY as SDXL, UNET, UNET_TINY_XL

# SDXL base's UNet with 9 input channels: latents + downsampled mask + masked-image latents.
FAMILY = replace(
    SDXL,
    name="sdxl-inpaint",
    description="Stable Diffusion XL 1.0 inpainting (9-channel UNet: latents + mask + masked image)",
    pipeline_class="StableDiffusionXLInpaintPipeline",
    hub_id="diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
    denoiser=ModelDef("unet", "UNet2DConditionModel", {**UNET, "in_channels": 9}, {**UNET_TINY_XL, "in_channels": 9}),
)
