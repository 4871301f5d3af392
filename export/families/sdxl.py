from ..family import Family, ModelDef, TextEncoderDef
from .parts import CLIP_L, CLIP_TINY, OPENCLIP_BIGG, SD_SCHEDULER, SDXL_VAE, UNET_TINY, VAE_TINY

UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
}
# 6 time ids x addition_time_embed_dim + pooled projection (32) = 80.
UNET_TINY_XL = {**UNET_TINY, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                "attention_head_dim": [2, 4], "cross_attention_dim": 64,
                "projection_class_embeddings_input_dim": 80, "transformer_layers_per_block": [1, 2],
                "use_linear_projection": True}
TEXT_ENCODERS = (
    TextEncoderDef("text_encoder", "tokenizer", "CLIPTextModel", CLIP_L, CLIP_TINY, "<|endoftext|>",
                   hidden="penultimate"),
    TextEncoderDef("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", OPENCLIP_BIGG,
                   {**CLIP_TINY, "hidden_act": "gelu", "architectures": ["CLIPTextModelWithProjection"]},
                   "!", hidden="penultimate", pooled="text_embeds"),
)
SCHEDULER = {**SD_SCHEDULER, "_class_name": "EulerDiscreteScheduler", "interpolation_type": "linear",
             "prediction_type": "epsilon", "timestep_spacing": "leading", "use_karras_sigmas": False}

FAMILY = Family(
    name="sdxl",
    description="Stable Diffusion XL base 1.0 (CLIP-L + OpenCLIP-bigG, 2.6B UNet, 1024px)",
    pipeline_class="StableDiffusionXLPipeline",
    hub_id="stabilityai/stable-diffusion-xl-base-1.0",
    text_encoders=TEXT_ENCODERS,
    denoiser=ModelDef("unet", "UNet2DConditionModel", UNET, UNET_TINY_XL),
    vae=ModelDef("vae", "AutoencoderKL", SDXL_VAE, VAE_TINY),
    tiny_vae="madebyollin/taesdxl",
    scheduler=SCHEDULER, sampler="euler", steps=30, guidance=5.0,
    resolution=(512, 1024, 1536),
    force_zeros_for_empty_prompt=True,
)
