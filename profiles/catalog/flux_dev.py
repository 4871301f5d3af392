"""FLUX.1 [dev] (black-forest-labs/FLUX.1-dev), 11.9B rectified-flow transformer.

Values from the released checkpoint's transformer/config.json, from memory since
no hub is reachable: 19 double-stream + 38 single-stream blocks, 24 heads of 128
(3072 wide), 64 input channels (16 latent channels packed 2x2), guidance
embedding (guidance-distilled: one batch, no CFG). Text: CLIP-L (pooled) and
T5-XXL at 512 tokens. VAE: the 16-channel AutoencoderKL.

Shadowed by the export family of the same name where it exists (the planner reads that).
"""
from ...export.families.parts import CLIP_L
from . import Model, Part, vae_decoder
from .common import FLUX_VAE, T5_XXL

TRANSFORMER = {
    "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": True, "in_channels": 64,
    "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38,
    "patch_size": 1, "pooled_projection_dim": 768,
}


def flux_parts(transformer: dict, t5_tokens: int) -> tuple[Part, ...]:
    return (Part("text_encoder", "text_encoder", "transformers.CLIPTextModel", CLIP_L, 77),
            Part("text_encoder_2", "text_encoder", "transformers.T5EncoderModel", T5_XXL, t5_tokens),
            Part("transformer", "denoiser", "diffusers.FluxTransformer2DModel", transformer),
            vae_decoder(FLUX_VAE))


MODEL = Model(name="flux-dev", title="FLUX.1 dev", parts=flux_parts(TRANSFORMER, 512),
              size=1024, cfg=False, text_tokens=512)
