"""edgegen-shapes: a tiny Stable Diffusion 1.5-architecture pipeline trained here, on CPU, on
procedural shapes (export/shapes/), and shipped in the package: the embedded default that
draws what it is asked. `python -m edgegen.export.shapes.train` made the shipped weights
from these configs; `--tiny` builds the same configs with random weights."""
from ..family import Family, ModelDef, TextEncoderDef
from .parts import CLIP_L

# CLIP's real 49408-token vocabulary and BPE tokenizer, at a width of 32.
TEXT = {**CLIP_L, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "projection_dim": 32}
# Two levels: a 2x spatial factor, so 32 px images have 16x16 latents. A 4x VAE (64 px, the
# same latents) trained for 20 minutes here drew shapes as blobs; 3x compression is learnt in
# minutes. Widths and attention placement are what 2 CPU cores train in about half an hour
# (measured: cross-attention at 16x16 too, or 64/128 channels, cost 2.4x and 4.7x per step).
VAE = {"act_fn": "silu", "block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2,
       "in_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 16, "out_channels": 3,
       "sample_size": 32, "scaling_factor": 1.0, "up_block_types": ["UpDecoderBlock2D"] * 2,
       "mid_block_add_attention": False}
UNET = {"act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [32, 64],
        "cross_attention_dim": TEXT["hidden_size"], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "in_channels": 4, "layers_per_block": 1, "norm_num_groups": 32, "out_channels": 4, "sample_size": 16,
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}
# DDPM's linear betas to 0.02 with trailing spacing, not SD's scaled_linear to 0.012: at 16x16
# latents SD's schedule leaves the image mean visible at t=999 (signal 0.068 x0 against noise
# whose mean over 1024 values has std 0.03), so the model learnt to read the background from the
# noise, not the caption (7% right, below chance). Here the terminal signal is 0.006 x0, and the
# first step samples t=999 (Lin et al. 2023, "Common diffusion noise schedules are flawed"). That
# needs v-prediction, as Lin et al. say: an epsilon model's x0 = x - 157 eps at the first step
# amplified its errors into saturated colour fields under Euler (adherence 9% where it had been 35%).
SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_end": 0.02, "beta_schedule": "linear",
             "beta_start": 0.0001, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
             "steps_offset": 1, "timestep_spacing": "trailing", "interpolation_type": "linear"}

FAMILY = Family(
    name="edgegen-shapes",
    description="edgegen's own trained tiny model: coloured shapes from captions, 32px (ships in the package)",
    pipeline_class="StableDiffusionPipeline",
    hub_id="",
    text_encoders=(TextEncoderDef("text_encoder", "tokenizer", "CLIPTextModel", TEXT, TEXT, "<|endoftext|>"),),
    denoiser=ModelDef("unet", "UNet2DConditionModel", UNET, UNET),
    vae=ModelDef("vae", "AutoencoderKL", VAE, VAE),
    scheduler=SCHEDULER, sampler="euler", steps=20, guidance=5.0,
    resolution=(16, 32, 64), tiny_resolution=(16, 32, 64),
    shipped="edgegen-shapes",
)
