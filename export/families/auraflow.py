"""AuraFlow v0.2 (fal/AuraFlow-v0.2): a Pile-T5-XL (UMT5) encoder, a 6.8B rectified-flow transformer
(4 joint MMDiT + 32 single DiT layers) over 2x2 patches of the 4-channel SDXL VAE latent, and
flow-matching Euler with classifier-free guidance.

Configs are the released checkpoint's config.json files as far as this offline machine knows them
(no hub reachable): the transformer and encoder values match diffusers' conversion script; the
scheduler's shift (1.73) is the least certain value, and a user's own scheduler_config.json wins
at export. The real tokenizer (LlamaTokenizerFast in the checkpoint) ships with the user's weights;
--tiny and --random-weights use a Unigram tokenizer trained offline, as for T5.
"""
from ..family import Family, ModelDef, TextEncoderDef
from .parts import SDXL_VAE, VAE_TINY
from .t5 import T5_TINY

TRANSFORMER = {
    "_class_name": "AuraFlowTransformer2DModel", "attention_head_dim": 256, "caption_projection_dim": 3072,
    "in_channels": 4, "joint_attention_dim": 2048, "num_attention_heads": 12, "num_mmdit_layers": 4,
    "num_single_dit_layers": 32, "out_channels": 4, "patch_size": 2, "pos_embed_max_size": 9216, "sample_size": 64,
}
TRANSFORMER_TINY = {**TRANSFORMER, "attention_head_dim": 8, "caption_projection_dim": 16, "joint_attention_dim": 32,
                    "num_attention_heads": 2, "num_mmdit_layers": 1, "num_single_dit_layers": 1,
                    "pos_embed_max_size": 1024, "sample_size": 32}
PILE_T5_XL = {
    "architectures": ["UMT5EncoderModel"], "d_ff": 5120, "d_kv": 64, "d_model": 2048, "decoder_start_token_id": 0,
    "dense_act_fn": "silu", "dropout_rate": 0.0, "eos_token_id": 2, "feed_forward_proj": "gated-silu",
    "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
    "model_type": "umt5", "num_decoder_layers": 24, "num_heads": 32, "num_layers": 24, "pad_token_id": 1,
    "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
    "use_cache": True, "vocab_size": 32128,
}
# Same class, small; the trained offline tokenizer's vocabulary (T5's 32128) and pad id 0.
UMT5_TINY = {**PILE_T5_XL, **{k: T5_TINY[k] for k in ("d_ff", "d_kv", "d_model", "num_heads", "num_layers",
                                                       "num_decoder_layers", "relative_attention_num_buckets")},
             "pad_token_id": 0, "eos_token_id": 1}

FAMILY = Family(
    name="auraflow",
    description="AuraFlow v0.2 (Pile-T5-XL + 6.8B rectified-flow DiT, SDXL VAE)",
    pipeline_class="AuraFlowPipeline",
    hub_id="fal/AuraFlow-v0.2",
    text_encoders=(TextEncoderDef("text_encoder", "tokenizer", "UMT5EncoderModel", PILE_T5_XL, UMT5_TINY,
                                  tokenizer_kind="t5", max_length=256, attention_mask=True),),
    denoiser=ModelDef("transformer", "AuraFlowTransformer2DModel", TRANSFORMER, TRANSFORMER_TINY),
    vae=ModelDef("vae", "AutoencoderKL", SDXL_VAE, VAE_TINY),
    tiny_vae="madebyollin/taesdxl",
    scheduler={"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.73},
    sampler="flow_euler", steps=50, guidance=3.5,
    resolution=(512, 1024, 1536),
    arch="auraflow",
    guidance_mode="cfg",
    exporter="dynamo",
)
