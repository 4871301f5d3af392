from ..family import Family, ModelDef, TextEncoderDef
from .parts import CLIP_TINY_GELU, OPENCLIP_H, SD2_UNET, SD_SCHEDULER, SD_VAE, UNET_TINY_SD2, VAE_TINY

# Adversarially distilled SD2.1-base: 1-4 steps, no guidance, epsilon prediction.
FAMILY = Family(
    name="sd-turbo",
    description="SD-Turbo (SD2.1-base architecture, 1-4 steps, no CFG)",
    pipeline_class="StableDiffusionPipeline",
    hub_id="stabilityai/sd-turbo",
    text_encoders=(TextEncoderDef("text_encoder", "tokenizer", "CLIPTextModel", OPENCLIP_H, CLIP_TINY_GELU, "!"),),
    denoiser=ModelDef("unet", "UNet2DConditionModel", SD2_UNET, UNET_TINY_SD2),
    vae=ModelDef("vae", "AutoencoderKL", SD_VAE, VAE_TINY),
    tiny_vae="madebyollin/taesd",
    scheduler={**SD_SCHEDULER, "_class_name": "EulerDiscreteScheduler", "prediction_type": "epsilon",
               "timestep_spacing": "trailing", "interpolation_type": "linear", "use_karras_sigmas": False},
    sampler="euler", steps=1, guidance=0.0,
    resolution=(256, 512, 1024),
)
