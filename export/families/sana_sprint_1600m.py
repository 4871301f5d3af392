from ..family import Family, ModelDef
from .sana_parts import (DC_AE_F32C32, DC_AE_TINY, SANA_SPRINT_1600M_TRANSFORMER, SANA_SPRINT_SCHEDULER,
                         SANA_SPRINT_TRANSFORMER_TINY, TEXT_ENCODERS, TINY_RESOLUTION)

# SANA-Sprint 1.6B: SANA distilled with sCM + LADD; 2 sCM steps (angles pi/2, 1.3), guidance as an
# embedding of the transformer (one batch, no negative prompt).
FAMILY = Family(
    name="sana-sprint-1600m",
    description="SANA-Sprint 1.6B 1024px (Gemma-2 2B, sCM-distilled DiT, 2 steps)",
    pipeline_class="SanaSprintPipeline",
    hub_id="Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers",
    text_encoders=TEXT_ENCODERS,
    denoiser=ModelDef("transformer", "SanaTransformer2DModel", SANA_SPRINT_1600M_TRANSFORMER,
                      SANA_SPRINT_TRANSFORMER_TINY),
    vae=ModelDef("vae", "AutoencoderDC", DC_AE_F32C32, DC_AE_TINY),
    scheduler=SANA_SPRINT_SCHEDULER, sampler="scm", steps=2, guidance=4.5,
    resolution=(256, 1024, 2048),
    tiny_resolution=TINY_RESOLUTION,
    arch="sana",
    guidance_mode="embedding",
    exporter="dynamo",
)
