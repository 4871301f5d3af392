"""SANA and SANA-Sprint architecture configs: Gemma-2 2B encoder, SanaTransformer2DModel 1.6B, DC-AE f32c32.

Values are those of the released diffusers checkpoints (Efficient-Large-Model/Sana_1600M_1024px_diffusers,
Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers, mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers),
written from their config.json files and diffusers' scripts/convert_sana_to_diffusers.py and
convert_dcae_to_diffusers.py. Keys we are less sure of are marked; none of them is an architecture
feature (families/infer.py), so a real checkpoint that differs there still loads (its own config.json wins).
"""
from ..family import TextEncoderDef

# text_encoder/config.json: google/gemma-2-2b-it's decoder saved as Gemma2Model (SANA keeps only
# get_decoder() of Gemma2ForCausalLM). layer_types (sliding/full alternating) is derived by
# transformers; sliding_window 4096 is far above the ~550 tokens SANA encodes.
GEMMA2_2B = {
    "architectures": ["Gemma2Model"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "bos_token_id": 2, "eos_token_id": 1, "final_logit_softcapping": 30.0,
    "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
    "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8,
    "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "vocab_size": 256000,
}
# Same class, small. The offline Gemma tokenizer (export/text_tokenizers.py) has 4096 ids.
GEMMA2_TINY = {
    **GEMMA2_2B, "head_dim": 16, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
    "num_hidden_layers": 2, "num_key_value_heads": 1, "query_pre_attn_scalar": 16, "vocab_size": 4096,
}

# SanaPipeline / SanaSprintPipeline defaults: the prompt keeps 300 Gemma tokens (max_sequence_length);
# it is tokenized behind a fixed instruction to (instruction tokens + 300 - 2) tokens, padded on the
# right, then token 0 and the last 299 are kept (see export/arch/sana.py).
MAX_SEQUENCE_LENGTH = 300
TEXT_ENCODERS = (
    TextEncoderDef("text_encoder", "tokenizer", "Gemma2Model", GEMMA2_2B, GEMMA2_TINY, hidden="last",
                   tokenizer_kind="gemma", max_length=MAX_SEQUENCE_LENGTH, attention_mask=True,
                   padding_side="right"),
)

# transformer/config.json of Sana_1600M_1024px_diffusers (model type SanaMS_1600M_P1_D20):
# linear self-attention (70 heads of 32), softmax cross-attention (20 heads of 112) over the
# Gemma hidden states, Mix-FFN (GLUMBConv). No positional embedding (interpolation_scale null).
# timestep_scale 1.0 is the class default (SanaPipeline multiplies the timestep by it).
SANA_1600M_TRANSFORMER = {
    "_class_name": "SanaTransformer2DModel", "attention_bias": False, "attention_head_dim": 32,
    "caption_channels": 2304, "cross_attention_dim": 2240, "cross_attention_head_dim": 112, "dropout": 0.0,
    "in_channels": 32, "interpolation_scale": None, "mlp_ratio": 2.5, "norm_elementwise_affine": False,
    "norm_eps": 1e-06, "num_attention_heads": 70, "num_cross_attention_heads": 20, "num_layers": 20,
    "out_channels": 32, "patch_size": 1, "sample_size": 32, "guidance_embeds": False, "qk_norm": None,
    "timestep_scale": 1.0,
}
# SANA-Sprint 1.6B (SanaSprint_1600M_P1_D20): the same network plus a guidance embedding (scaled by
# guidance_embeds_scale 0.1) and RMSNorm on q/k across heads. Uncertain: the released config may set
# timestep_scale to 1000; SanaSprintPipeline never reads it (it passes the flow time in [0, 1]).
SANA_SPRINT_1600M_TRANSFORMER = {
    **SANA_1600M_TRANSFORMER, "guidance_embeds": True, "guidance_embeds_scale": 0.1,
    "qk_norm": "rms_norm_across_heads",
}
# Same class, small: inner width 16 (= cross_attention_dim), captions as wide as tiny Gemma.
SANA_TRANSFORMER_TINY = {
    **SANA_1600M_TRANSFORMER, "attention_head_dim": 8, "caption_channels": 32, "cross_attention_dim": 16,
    "cross_attention_head_dim": 8, "in_channels": 8, "num_attention_heads": 2, "num_cross_attention_heads": 2,
    "num_layers": 2, "out_channels": 8,
}
SANA_SPRINT_TRANSFORMER_TINY = {
    **SANA_TRANSFORMER_TINY, "guidance_embeds": True, "guidance_embeds_scale": 0.1,
    "qk_norm": "rms_norm_across_heads",
}

# vae/config.json (dc-ae-f32c32-sana-1.0): 6 stages -> 32x compression, 32 latent channels.
# ResBlocks in the 3 high-resolution stages, EfficientViT blocks (ReLU linear attention with
# 5x5 multi-scale q/k/v) in the 3 low-resolution ones. Uncertain: the spelling of
# downsample_block_type ("Conv"; diffusers only tests for "pixel_unshuffle", so any other value
# means a strided conv, which is what this autoencoder uses).
DC_AE_F32C32 = {
    "_class_name": "AutoencoderDC", "attention_head_dim": 32,
    "decoder_act_fns": "silu", "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "decoder_block_types": ["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock",
                            "EfficientViTBlock"],
    "decoder_layers_per_block": [3, 3, 3, 3, 3, 3], "decoder_norm_types": "rms_norm",
    "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]], "downsample_block_type": "Conv",
    "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "encoder_block_types": ["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock",
                            "EfficientViTBlock"],
    "encoder_layers_per_block": [2, 2, 2, 3, 3, 3], "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "in_channels": 3, "latent_channels": 32, "scaling_factor": 0.41407, "upsample_block_type": "interpolate",
}
# Same class and 32x compression, small. EfficientViT attention is linear only where a stage has
# more positions than attention_head_dim (diffusers switches to a quadratic form below that, a
# branch the export bakes in): with head dim 8 the smallest stage needs a 3x3 latent, so tiny
# families start at 96 px (the real ones, head dim 32 and >= 256 px, are linear throughout).
# Default 192 px (6x6 latent): validation then runs at a latent size (4x4) other than the export one (3x3).
DC_AE_TINY = {
    **DC_AE_F32C32, "attention_head_dim": 8, "decoder_block_out_channels": [8, 8, 16, 16, 32, 32],
    "decoder_layers_per_block": [1, 1, 1, 1, 1, 1], "encoder_block_out_channels": [8, 8, 16, 16, 32, 32],
    "encoder_layers_per_block": [1, 1, 1, 1, 1, 1], "latent_channels": 8,
}
TINY_RESOLUTION = (96, 192, 256)

# scheduler/scheduler_config.json of Sana_1600M_1024px_diffusers: DPM-Solver++(2M) on flow sigmas
# with shift 3 (the options not listed are DPMSolverMultistepScheduler's defaults).
SANA_SCHEDULER = {
    "_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++", "final_sigmas_type": "zero",
    "flow_shift": 3.0, "lower_order_final": True, "num_train_timesteps": 1000, "prediction_type": "flow_prediction",
    "solver_order": 2, "solver_type": "midpoint", "timestep_spacing": "linspace", "use_flow_sigmas": True,
}
# SANA-Sprint: sCM on trigflow angles (max pi/2, 1.3 in the middle for 2 steps: the pipeline's defaults).
SANA_SPRINT_SCHEDULER = {
    "_class_name": "SCMScheduler", "num_train_timesteps": 1000, "prediction_type": "trigflow", "sigma_data": 0.5,
}
