"""AuraFlow v0.2 (fal/AuraFlow-v0.2), ~6.8B rectified-flow transformer.

Values from the released checkpoint's config.json files, from memory since no
hub is reachable: 4 MMDiT (joint) + 32 single DiT layers, 12 heads of 256 (3072
wide), 4-channel SDXL VAE latents in 2x2 patches. Text: a Pile-T5-XL encoder
(UMT5EncoderModel, 2048 wide, 24 layers, gated SiLU) at 256 tokens.
"""
from ...export.families.parts import SDXL_VAE
from . import Model, Part, vae_decoder

TRANSFORMER = {
    "attention_head_dim": 256, "caption_projection_dim": 3072, "in_channels": 4, "joint_attention_dim": 2048,
    "num_attention_heads": 12, "num_mmdit_layers": 4, "num_single_dit_layers": 32, "out_channels": 4,
    "patch_size": 2, "pos_embed_max_size": 9216, "sample_size": 64,
}
PILE_T5_XL = {
    "architectures": ["UMT5EncoderModel"], "d_ff": 5120, "d_kv": 64, "d_model": 2048, "decoder_start_token_id": 0,
    "dense_act_fn": "silu", "dropout_rate": 0.0, "eos_token_id": 2, "feed_forward_proj": "gated-silu",
    "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
    "model_type": "umt5", "num_decoder_layers": 24, "num_heads": 32, "num_layers": 24, "pad_token_id": 1,
    "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
    "use_cache": True, "vocab_size": 32128,
}

MODEL = Model(
    name="auraflow-v0.2", title="AuraFlow v0.2",
    parts=(Part("text_encoder", "text_encoder", "transformers.UMT5EncoderModel", PILE_T5_XL, 256),
           Part("transformer", "denoiser", "diffusers.AuraFlowTransformer2DModel", TRANSFORMER),
           vae_decoder(SDXL_VAE)),
    size=1024, cfg=True, text_tokens=256,
)
