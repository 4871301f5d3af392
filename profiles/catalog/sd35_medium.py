"""Stable Diffusion 3.5 Medium (stabilityai/stable-diffusion-3.5-medium), MMDiT-X, 2.5B transformer.

Values from the released checkpoint's transformer/config.json, from memory since
no hub is reachable: 24 layers, 24 heads of 64 (1536 wide), layers 0-12 carry a
second (self-only) attention ("dual attention", MMDiT-X), qk RMSNorm, 384 max
positions so it trains up to 1440px.
"""
from . import Model, Part, vae_decoder
from .common import SD3_VAE, sd3_text_encoders

TRANSFORMER = {
    "attention_head_dim": 64, "caption_projection_dim": 1536, "dual_attention_layers": list(range(13)),
    "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24,
    "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
    "qk_norm": "rms_norm", "sample_size": 128,
}

MODEL = Model(
    name="sd35-medium", title="SD3.5 Medium",
    parts=(*sd3_text_encoders(), Part("transformer", "denoiser", "diffusers.SD3Transformer2DModel", TRANSFORMER),
           vae_decoder(SD3_VAE)),
    size=1024, cfg=True, text_tokens=77 + 256,
)
