"""What a model family is: its real configs, tiny configs and runtime defaults.

A family file under families/ declares one `Family`; nothing else branches on
family names. Torch-free so the CLI can list families without loading torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TextEncoderDef:
    component: str          # diffusers component name: text_encoder, text_encoder_2
    tokenizer: str          # its tokenizer folder: tokenizer, tokenizer_2
    model_class: str        # transformers class
    config: dict            # real architecture config
    tiny: dict              # same class, small
    pad_token: str          # SD1.x pads with <|endoftext|>, OpenCLIP-trained encoders with "!"
    hidden: str = "last"    # "last" (final LayerNorm output) or "penultimate" (SDXL)
    pooled: bool = False    # export the projected pooled embedding (SDXL text_encoder_2)


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    pipeline_class: str     # diffusers pipeline class, for loading weights and as the reference
    hub_id: str             # where the real weights live (used only if the user has them)
    text_encoders: tuple[TextEncoderDef, ...]
    unet: dict
    unet_tiny: dict
    vae: dict
    vae_tiny: dict
    scheduler: dict         # diffusers scheduler_config.json of the reference checkpoint
    sampler: str            # default runtime sampler
    steps: int
    guidance: float
    resolution: tuple[int, int, int]   # image side (min, opt, max) in pixels
    tiny_resolution: tuple[int, int, int] = (32, 64, 256)
    # "cfg": classifier-free guidance with batched cond/uncond; "embedding": guidance
    # is fed to the denoiser as an embedding (LCM) and runs one batch.
    guidance_mode: str = "cfg"
    force_zeros_for_empty_prompt: bool = False
    # UNet config keys that identify the architecture; loaded weights must agree.
    signature: tuple[str, ...] = ("in_channels", "cross_attention_dim", "time_cond_proj_dim", "addition_embed_type")
    exporter: str = "torchscript"   # see onnx_export.export_component
    extra: dict = field(default_factory=dict)

    def config_mismatch(self, unet_config: dict) -> str | None:
        """Describe how `unet_config` differs from this family (real or tiny), or None."""
        for ref in (self.unet, self.unet_tiny):
            diffs = [k for k in self.signature if unet_config.get(k) != ref.get(k)]
            if not diffs:
                return None
        k = diffs[0]
        return f"unet.{k} is {unet_config.get(k)!r}, family {self.name} expects {self.unet.get(k)!r}"
