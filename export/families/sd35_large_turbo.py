from ..family import Family, ModelDef
from .dit_parts import SD35_LARGE_TRANSFORMER, SD3_SCHEDULER, SD3_TRANSFORMER_TINY, SD3_VAE, SD3_VAE_TINY
from .sd3_common import TEXT_ENCODERS

FAMILY = Family(
    name="sd35-large-turbo",
    description="Stable Diffusion 3.5 Large Turbo (8.1B MMDiT, ADD-distilled, 4 steps, no CFG)",
    pipeline_class="StableDiffusion3Pipeline",
    hub_id="stabilityai/stable-diffusion-3.5-large-turbo",
    text_encoders=TEXT_ENCODERS,
    denoiser=ModelDef("transformer", "SD3Transformer2DModel", SD35_LARGE_TRANSFORMER, {**SD3_TRANSFORMER_TINY, "qk_norm": "rms_norm"}),
    vae=ModelDef("vae", "AutoencoderKL", SD3_VAE, SD3_VAE_TINY),
    tiny_vae="madebyollin/taesd3",
    scheduler=SD3_SCHEDULER, sampler="flow_euler", steps=4, guidance=0.0,
    resolution=(512, 1024, 1536),
    arch="sd3",
    guidance_mode="cfg",
    exporter="dynamo",
)
