"""Architecture configs shared by several families (values from the released checkpoints)."""

# CLIP ViT-L/14 text tower (openai/clip-vit-large-patch14), SD1.x text_encoder.
CLIP_L = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768, "vocab_size": 49408,
}
# OpenCLIP ViT-H/14 text tower as shipped with SD2.x (23 of 24 layers kept).
OPENCLIP_H = {**CLIP_L, "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
              "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512}
# OpenCLIP ViT-bigG/14 text tower with projection, SDXL text_encoder_2.
OPENCLIP_BIGG = {**CLIP_L, "architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu",
                 "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
                 "num_hidden_layers": 32, "projection_dim": 1280}
# Same classes, small: the real 49408-token vocabulary is kept so the real tokenizer applies.
CLIP_TINY = {**CLIP_L, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
             "num_hidden_layers": 3, "projection_dim": 32}
CLIP_TINY_GELU = {**CLIP_TINY, "hidden_act": "gelu"}

SD_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
# Four blocks keep the real 8x spatial factor, so tiny artifacts take real image sizes.
VAE_TINY = {**SD_VAE, "block_out_channels": [32, 32, 32, 32], "layers_per_block": 1, "sample_size": 64}

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
UNET_TINY = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [32, 64],
    "cross_attention_dim": 32, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 4, "layers_per_block": 1, "norm_num_groups": 32, "out_channels": 4,
    "sample_size": 16, "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
}
SD2_UNET = {**SD15_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
            "use_linear_projection": True}
UNET_TINY_SD2 = {**UNET_TINY, "attention_head_dim": [2, 4], "use_linear_projection": True}

SD_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
