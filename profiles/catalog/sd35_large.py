"""Stable Diffusion 3.5 Large (stabilityai/stable-diffusion-3.5-large), MMDiT, 8.1B transformer.

Values from the released checkpoint's transformer/config.json, from memory since
no hub is reachable: 38 layers, 38 heads of 64 (2432 wide), qk RMSNorm, no dual
attention layers.
"""
from . import Model, Part, vae_decoder
from .common import SD3_VAE, sd3_text_encoders

TRANSFORMER = {
    "attention_head_dim": 64, "caption_projection_dim": 2432, "in_channels": 16, "joint_attention_dim": 4096,
    "num_attention_heads": 38, "num_layers": 38, "out_channels": 16, "patch_size": 2,
    "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "qk_norm": "rms_norm", "sample_size": 128,
}

MODEL = Model(
    name="sd35-large", title="SD3.5 Large",
    parts=(*sd3_text_encoders(), Part("transformer", "denoiser", "diffusers.SD3Transformer2DModel", TRANSFORMER),
           vae_decoder(SD3_VAE)),
    size=1024, cfg=True, text_tokens=77 + 256,
)
