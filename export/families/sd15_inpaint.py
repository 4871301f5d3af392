from dataclasses import replace

from ..family import ModelDef
from .parts import SD15_UNET, UNET_TINY
from .sd15 import FAMILY as SD15

# SD1.5's UNet with 9 input channels: latents + downsampled mask + masked-image latents.
FAMILY = replace(
    SD15,
    name="sd15-inpaint",
    description="Stable Diffusion 1.5 inpainting (9-channel UNet: latents + mask + masked image)",
    pipeline_class="StableDiffusionInpaintPipeline",
    hub_id="stable-diffusion-v1-5/stable-diffusion-inpainting",
    denoiser=ModelDef("unet", "UNet2DConditionModel", {**SD15_UNET, "in_channels": 9}, {**UNET_TINY, "in_channels": 9}),
)
