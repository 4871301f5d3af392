from ..family import Family, ModelDef
from .sana_parts import (DC_AE_F32C32, DC_AE_TINY, SANA_1600M_TRANSFORMER, SANA_SCHEDULER, SANA_TRANSFORMER_TINY,
                         TEXT_ENCODERS, TINY_RESOLUTION)

# SANA 1.0 1.6B at 1024px: Gemma-2 2B prompt encoder, linear-attention DiT over the 32x DC-AE latent,
# flow DPM-Solver++ (20 steps) with classifier-free guidance against the empty prompt.
FAMILY = Family(
    name="sana-1600m",
    description="SANA 1.6B 1024px (Gemma-2 2B, linear-attention DiT, DC-AE f32c32)",
    pipeline_class="SanaPipeline",
    hub_id="Efficient-Large-Model/Sana_1600M_1024px_diffusers",
    text_encoders=TEXT_ENCODERS,
    denoiser=ModelDef("transformer", "SanaTransformer2DModel", SANA_1600M_TRANSFORMER, SANA_TRANSFORMER_TINY),
    vae=ModelDef("vae", "AutoencoderDC", DC_AE_F32C32, DC_AE_TINY),
    scheduler=SANA_SCHEDULER, sampler="flow_dpm", steps=20, guidance=4.5,
    resolution=(256, 1024, 2048),
    tiny_resolution=TINY_RESOLUTION,
    arch="sana",
    guidance_mode="cfg",
    exporter="dynamo",
)
