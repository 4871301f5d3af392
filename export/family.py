"""What a model family is: its real configs, tiny configs and runtime defaults.

A family file under families/ declares one `Family`; nothing else branches on
family names. Torch-free so the CLI can list families without loading torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TextEncoderDef:
    component: str          # diffusers component name: text_encoder, text_encoder_2, ...
    tokenizer: str          # its tokenizer folder: tokenizer, tokenizer_2, ...
    model_class: str        # transformers class
    config: dict            # real architecture config
    tiny: dict              # same class, small
    pad_token: str = "<|endoftext|>"  # CLIP: SD1.x pads with <|endoftext|>, OpenCLIP-trained encoders with "!"
    hidden: str | None = "last"       # "last", "penultimate" (SDXL, SD3 CLIPs) or None (FLUX's CLIP: pooled only)
    pooled: str | None = None         # pooled output attribute to export: "text_embeds" or "pooler_output"
    tokenizer_kind: str = "clip"      # how to build a real tokenizer offline: clip | t5 | gemma
    max_length: int = 77
    attention_mask: bool = False      # the encoder takes the tokenizer's mask (Gemma in SANA)
    padding_side: str | None = None   # runtime tokenizer padding; None: the tokenizer's own (SANA: "right")

    @property
    def label(self) -> str:
        """How warnings name this encoder's tokenizer ("prompt is longer than T5's 256 tokens")."""
        return {"clip": "CLIP", "t5": "T5", "gemma": "Gemma"}[self.tokenizer_kind]


@dataclass(frozen=True)
class ModelDef:
    component: str          # diffusers component folder: unet, transformer, vae
    cls: str                # diffusers class
    config: dict            # real architecture config
    tiny: dict              # same class, small

    def get(self, tiny: bool) -> dict:
        return self.tiny if tiny else self.config


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    pipeline_class: str     # diffusers pipeline class, for loading weights and as the reference
    hub_id: str             # where the real weights live (used only if the user has them)
    text_encoders: tuple[TextEncoderDef, ...]
    denoiser: ModelDef
    vae: ModelDef
    scheduler: dict         # diffusers scheduler_config.json of the reference checkpoint
    sampler: str            # default runtime sampler
    steps: int
    guidance: float
    resolution: tuple[int, int, int]   # image side (min, opt, max) in pixels
    tiny_resolution: tuple[int, int, int] = (32, 64, 256)
    arch: str = "unet"      # export/arch_<arch>.py builds components and the runtime recipe
    # "cfg": classifier-free guidance with batched cond/uncond; "embedding": guidance is an
    # input of the denoiser (LCM, FLUX-dev) and runs one batch; "none": guidance is ignored.
    guidance_mode: str = "cfg"
    force_zeros_for_empty_prompt: bool = False
    exporter: str = "torchscript"   # see onnx_export.export_component
    extra: dict = field(default_factory=dict)
    shipped: str | None = None      # a diffusers folder under export/assets/ that ships with edgegen
    # A TAESD (diffusers AutoencoderTiny) trained on this VAE's latent space, on the hub: what
    # `--pipeline-option tiny-vae` loads unless given weights. A shipped family keeps its own in
    # the `tiny_vae` subfolder of its folder.
    tiny_vae: str | None = None

    def shipped_weights(self) -> str | None:
        """The packaged weights folder, used when the user names no weights."""
        if not self.shipped:
            return None
        from pathlib import Path

        return str(Path(__file__).parent / "assets" / self.shipped)

    def tiny_vae_source(self) -> str | None:
        """The default tiny-VAE weights: the shipped folder's `tiny_vae`, else the hub id."""
        from pathlib import Path

        shipped = self.shipped_weights()
        if shipped and (Path(shipped) / "tiny_vae").is_dir():
            return str(Path(shipped) / "tiny_vae")
        return self.tiny_vae

    # Read by profiles/catalog (planner) for the U-Net families.
    @property
    def unet(self) -> dict:
        return self.denoiser.config
