from ..family import Family, ModelDef
from .dit_parts import SD35_MEDIUM_TRANSFORMER, SD35_TRANSFORMER_TINY, SD3_SCHEDULER, SD3_VAE, SD3_VAE_TINY
from .sd3_common import TEXT_ENCODERS

FAMILY = Family(
    name="sd35-medium",
    description="Stable Diffusion 3.5 Medium (MMDiT-X, 2.5B)",
    pipeline_class="StableDiffusion3Pipeline",
    hub_id="stabilityai/stable-diffusion-3.5-medium",
    text_encoders=TEXT_ENCODERS,
    denoiser=ModelDef("transformer", "SD3Transformer2DModel", SD35_MEDIUM_TRANSFORMER, SD35_TRANSFORMER_TINY),
    vae=ModelDef("vae", "AutoencoderKL", SD3_VAE, SD3_VAE_TINY),
    tiny_vae="madebyollin/taesd3",
    scheduler=SD3_SCHEDULER, sampler="flow_euler", steps=40, guidance=4.5,
    resolution=(512, 1024, 1536),
    arch="sd3",
    guidance_mode="cfg",
    exporter="dynamo",
)
