"""DiT-family architecture configs (values from the released checkpoints' config.json files)."""

# black-forest-labs/FLUX.1-schnell and FLUX.1-dev transformer/config.json (dev adds guidance_embeds).
FLUX_TRANSFORMER = {
    "_class_name": "FluxTransformer2DModel", "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": False, "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24,
    "num_layers": 19, "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768,
}
FLUX_DEV_TRANSFORMER = {**FLUX_TRANSFORMER, "guidance_embeds": True}
# Same class, small: 4 latent channels packed 2x2 -> 16; rope axes sum to the head dim.
FLUX_TRANSFORMER_TINY = {
    **FLUX_TRANSFORMER, "attention_head_dim": 16, "axes_dims_rope": [4, 6, 6], "in_channels": 16,
    "joint_attention_dim": 32, "num_attention_heads": 2, "num_layers": 1, "num_single_layers": 1,
    "pooled_projection_dim": 32,
}
# FLUX.1 ae: 16 latent channels, no quant convs, scaled and shifted latents.
FLUX_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 16, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False, "use_quant_conv": False, "force_upcast": True, "mid_block_add_attention": True,
}
FLUX_VAE_TINY = {**FLUX_VAE, "block_out_channels": [32, 32, 32, 32], "latent_channels": 4, "layers_per_block": 1}

# SD3 / SD3.5 MMDiT transformers (stabilityai/stable-diffusion-3-medium-diffusers, -3.5-medium, -3.5-large).
SD3_MEDIUM_TRANSFORMER = {
    "_class_name": "SD3Transformer2DModel", "attention_head_dim": 64, "caption_projection_dim": 1536,
    "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24, "out_channels": 16,
    "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "sample_size": 128,
}
# MMDiT-X: layers 0-12 add a self-only attention; qk RMSNorm; 384 positions (up to 1440px).
SD35_MEDIUM_TRANSFORMER = {**SD3_MEDIUM_TRANSFORMER, "dual_attention_layers": list(range(13)),
                           "pos_embed_max_size": 384, "qk_norm": "rms_norm"}
SD35_LARGE_TRANSFORMER = {**SD3_MEDIUM_TRANSFORMER, "caption_projection_dim": 2432, "num_attention_heads": 38,
                          "num_layers": 38, "qk_norm": "rms_norm"}
SD3_TRANSFORMER_TINY = {**SD3_MEDIUM_TRANSFORMER, "attention_head_dim": 8, "caption_projection_dim": 32,
                        "in_channels": 4, "joint_attention_dim": 64, "num_attention_heads": 4, "num_layers": 2,
                        "out_channels": 4, "pooled_projection_dim": 64, "pos_embed_max_size": 32, "sample_size": 32}
SD35_TRANSFORMER_TINY = {**SD3_TRANSFORMER_TINY, "dual_attention_layers": [0], "qk_norm": "rms_norm"}
# 16-channel AutoencoderKL of SD3/SD3.5; FLUX.1's differs only in scaling and shift.
SD3_VAE = {**FLUX_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}
SD3_VAE_TINY = {**FLUX_VAE_TINY, "scaling_factor": 1.5305, "shift_factor": 0.0609}
SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
