from ..family import Family, ModelDef, TextEncoderDef
from .parts import CLIP_L, CLIP_TINY, SD15_UNET, SD_SCHEDULER, SD_VAE, UNET_TINY, VAE_TINY

FAMILY = Family(
    name="sd15",
    description="Stable Diffusion 1.5 (CLIP-L, 860M UNet, 512px)",
    pipeline_class="StableDiffusionPipeline",
    hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    text_encoders=(TextEncoderDef("text_encoder", "tokenizer", "CLIPTextModel", CLIP_L, CLIP_TINY, "<|endoftext|>"),),
    denoiser=ModelDef("unet", "UNet2DConditionModel", SD15_UNET, UNET_TINY),
    vae=ModelDef("vae", "AutoencoderKL", SD_VAE, VAE_TINY),
    tiny_vae="madebyollin/taesd",
    scheduler=SD_SCHEDULER, sampler="euler", steps=25, guidance=7.5,
    resolution=(256, 512, 1024),
)
