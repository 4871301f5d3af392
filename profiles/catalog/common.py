"""Text encoders and VAEs shared by the catalog models.

Values from the released checkpoints' config.json files, written from memory
(no hub is reachable here); parameter counts they give are checked in tests.
"""
from ...export.families.parts import CLIP_L, OPENCLIP_BIGG
from . import Part

# google/t5-v1_1-xxl encoder as shipped in SD3/SD3.5 (text_encoder_3) and FLUX.1 (text_encoder_2):
# 4.76B parameters.
T5_XXL = {
    "architectures": ["T5EncoderModel"], "d_ff": 10240, "d_kv": 64, "d_model": 4096, "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
    "model_type": "t5", "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24, "pad_token_id": 0,
    "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
    "use_cache": True, "vocab_size": 32128,
}

# 16-channel AutoencoderKL of SD3/SD3.5 (no quant convs); FLUX.1's differs only in its scaling.
SD3_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 16, "latents_mean": None, "latents_std": None,
    "layers_per_block": 2, "mid_block_add_attention": True, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 1024, "scaling_factor": 1.5305, "shift_factor": 0.0609,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "use_post_quant_conv": False, "use_quant_conv": False,
}
FLUX_VAE = {**SD3_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}

# SD3's CLIP-L is the ViT-L/14 text tower with its projection head (pooled output).
CLIP_L_PROJ = {**CLIP_L, "architectures": ["CLIPTextModelWithProjection"]}


def sd3_text_encoders(t5_tokens: int = 256) -> tuple[Part, ...]:
    """CLIP-L + OpenCLIP bigG (77 tokens each) + T5-XXL (SD3 pipelines default to 256 T5 tokens)."""
    return (Part("text_encoder", "text_encoder", "transformers.CLIPTextModelWithProjection", CLIP_L_PROJ, 77),
            Part("text_encoder_2", "text_encoder", "transformers.CLIPTextModelWithProjection", OPENCLIP_BIGG, 77),
            Part("text_encoder_3", "text_encoder", "transformers.T5EncoderModel", T5_XXL, t5_tokens))
