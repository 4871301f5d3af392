from ..family import Family, ModelDef
from .dit_parts import SD3_MEDIUM_TRANSFORMER, SD3_SCHEDULER, SD3_TRANSFORMER_TINY, SD3_VAE, SD3_VAE_TINY
from .sd3_common import TEXT_ENCODERS

FAMILY = Family(
    name="sd3-medium",
    description="Stable Diffusion 3 Medium (CLIP-L + bigG + T5-XXL, 2B MMDiT)",
    pipeline_class="StableDiffusion3Pipeline",
    hub_id="stabilityai/stable-diffusion-3-medium-diffusers",
    text_encoders=TEXT_ENCODERS,
    denoiser=ModelDef("transformer", "SD3Transformer2DModel", SD3_MEDIUM_TRANSFORMER, SD3_TRANSFORMER_TINY),
    vae=ModelDef("vae", "AutoencoderKL", SD3_VAE, SD3_VAE_TINY),
    tiny_vae="madebyollin/taesd3",
    scheduler=SD3_SCHEDULER, sampler="flow_euler", steps=28, guidance=7.0,
    resolution=(512, 1024, 1536),
    arch="sd3",
    guidance_mode="cfg",
    exporter="dynamo",
)
