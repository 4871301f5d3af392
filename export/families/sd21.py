from ..family import Family, ModelDef, TextEncoderDef
from .parts import CLIP_TINY_GELU, OPENCLIP_H, SD2_UNET, SD_SCHEDULER, SD_VAE, UNET_TINY_SD2, VAE_TINY

FAMILY = Family(
    name="sd21",
    description="Stable Diffusion 2.1 768px, v-prediction (OpenCLIP-H)",
    pipeline_class="StableDiffusionPipeline",
    hub_id="stabilityai/stable-diffusion-2-1",
    text_encoders=(TextEncoderDef("text_encoder", "tokenizer", "CLIPTextModel", OPENCLIP_H, CLIP_TINY_GELU, "!"),),
    denoiser=ModelDef("unet", "UNet2DConditionModel", {**SD2_UNET, "sample_size": 96, "upcast_attention": True}, {**UNET_TINY_SD2, "upcast_attention": True}),
    vae=ModelDef("vae", "AutoencoderKL", {**SD_VAE, "sample_size": 768}, VAE_TINY),
    tiny_vae="madebyollin/taesd",
    scheduler={**SD_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"},
    sampler="ddim", steps=25, guidance=7.5,
    resolution=(512, 768, 1024),
)
