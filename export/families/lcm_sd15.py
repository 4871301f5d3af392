from ..family import Family, ModelDef, TextEncoderDef
from .parts import CLIP_L, CLIP_TINY, SD15_UNET, SD_VAE, UNET_TINY, VAE_TINY

# LCM-Dreamshaper-v7: SD1.5 UNet distilled for 2-8 steps, guidance as an embedding.
FAMILY = Family(
    name="lcm-sd15",
    description="Latent Consistency Model on SD1.5 (LCM-Dreamshaper-v7 style, 4 steps)",
    pipeline_class="LatentConsistencyModelPipeline",
    hub_id="SimianLuo/LCM_Dreamshaper_v7",
    text_encoders=(TextEncoderDef("text_encoder", "tokenizer", "CLIPTextModel", CLIP_L, CLIP_TINY, "<|endoftext|>"),),
    denoiser=ModelDef("unet", "UNet2DConditionModel", {**SD15_UNET, "time_cond_proj_dim": 256}, {**UNET_TINY, "time_cond_proj_dim": 32}),
    vae=ModelDef("vae", "AutoencoderKL", SD_VAE, VAE_TINY),
    tiny_vae="madebyollin/taesd",
    scheduler={
        "_class_name": "LCMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": False, "clip_sample_range": 1.0, "num_train_timesteps": 1000, "original_inference_steps": 50,
        "prediction_type": "epsilon", "rescale_betas_zero_snr": False, "set_alpha_to_one": True,
        "steps_offset": 1, "thresholding": False, "timestep_scaling": 10.0, "timestep_spacing": "leading",
    },
    sampler="lcm", steps=4, guidance=8.5,
    resolution=(256, 512, 1024),
    guidance_mode="embedding",
)
