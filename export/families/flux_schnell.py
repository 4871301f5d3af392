from ..family import Family, ModelDef, TextEncoderDef
from .dit_parts import FLUX_TRANSFORMER, FLUX_TRANSFORMER_TINY, FLUX_VAE, FLUX_VAE_TINY
from .parts import CLIP_L, CLIP_TINY
from .t5 import T5_TINY, T5_XXL

# Timestep-distilled FLUX.1: 4 steps, no guidance input, T5 context of 256 tokens.
FAMILY = Family(
    name="flux-schnell",
    description="FLUX.1 [schnell] (CLIP-L + T5-XXL, 12B MMDiT, 4 steps)",
    pipeline_class="FluxPipeline",
    hub_id="black-forest-labs/FLUX.1-schnell",
    text_encoders=(
        TextEncoderDef("text_encoder", "tokenizer", "CLIPTextModel", CLIP_L, CLIP_TINY, hidden=None,
                       pooled="pooler_output"),
        TextEncoderDef("text_encoder_2", "tokenizer_2", "T5EncoderModel", T5_XXL, T5_TINY, tokenizer_kind="t5",
                       max_length=256),
    ),
    denoiser=ModelDef("transformer", "FluxTransformer2DModel", FLUX_TRANSFORMER, FLUX_TRANSFORMER_TINY),
    vae=ModelDef("vae", "AutoencoderKL", FLUX_VAE, FLUX_VAE_TINY),
    tiny_vae="madebyollin/taef1",
    scheduler={"_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
               "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 1.0,
               "use_dynamic_shifting": False},
    sampler="flow_euler", steps=4, guidance=0.0,
    resolution=(256, 1024, 2048),
    arch="flux",
    guidance_mode="none",
    exporter="dynamo",
)
