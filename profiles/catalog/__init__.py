"""Models the planner knows: every export family, plus released models without a family yet.

A catalog module defines MODEL; nothing else here branches on model names.
Torch-free: configs are plain dicts, built on the meta device by the planner.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ...runtimes.errors import EdgegenError

# Every model of the fit table now has an export family; a released model without one gets a
# module here (defining MODEL) until it does.
_MODULES: tuple[str, ...] = ()


@dataclass(frozen=True)
class Part:
    name: str                 # pipeline component: text_encoder_3, transformer, vae_decoder, ...
    role: str                 # text_encoder | denoiser | vae_decoder
    cls: str                  # "transformers.T5EncoderModel", "diffusers.FluxTransformer2DModel", ...
    config: dict              # real architecture config (config.json of the released checkpoint)
    tokens: int = 0           # text encoders: the sequence length the pipeline runs them at
    submodules: tuple[str, ...] = ()   # count only these children (the VAE decoder of an AutoencoderKL)


@dataclass(frozen=True)
class Model:
    name: str
    title: str
    parts: tuple[Part, ...]
    size: int                 # default image side in pixels
    cfg: bool                 # classifier-free guidance doubles the denoiser batch
    text_tokens: int          # length of the text sequence the denoiser attends to

    def role(self, role: str) -> list[Part]:
        return [p for p in self.parts if p.role == role]


def vae_decoder(config: dict, cls: str = "AutoencoderKL") -> Part:
    # AutoencoderDC (SANA) has no post_quant_conv; absent submodules are skipped when counting.
    return Part("vae_decoder", "vae_decoder", f"diffusers.{cls}", config,
                submodules=("decoder", "post_quant_conv"))


def _text_tokens(tes) -> int:
    """Length of the text sequence the denoiser attends to: CLIP hidden states share 77 positions
    (concatenated along channels, SDXL/SD3); other encoders (T5) append their own."""
    clip = [te for te in tes if getattr(te, "tokenizer_kind", "clip") == "clip" and getattr(te, "hidden", "last")]
    rest = [te for te in tes if getattr(te, "tokenizer_kind", "clip") != "clip"]
    return max((getattr(te, "max_length", 77) for te in clip), default=0) + sum(te.max_length for te in rest)


def from_family(fam) -> Model:
    """A Model view of an export family (configs read from edgegen.export.families, not copied)."""
    tes = tuple(Part(te.component, "text_encoder", f"transformers.{te.model_class}", te.config,
                     tokens=getattr(te, "max_length", 77)) for te in fam.text_encoders)
    den = getattr(fam, "denoiser", None)
    if den is not None:
        denoiser = Part(den.component, "denoiser", f"diffusers.{den.cls}", den.config)
    else:   # the Family layout before denoiser/vae became ModelDefs
        denoiser = Part("unet", "denoiser", "diffusers.UNet2DConditionModel", fam.unet)
    vae = fam.vae.config if hasattr(fam.vae, "config") else fam.vae
    cfg = fam.guidance_mode == "cfg" and fam.guidance > 1.0
    return Model(fam.name, fam.description.split(" (")[0], (*tes, denoiser, vae_decoder(vae, getattr(fam.vae, "cls", "AutoencoderKL"))),
                 fam.resolution[1], cfg, _text_tokens(fam.text_encoders) or 77)


def models() -> dict[str, Model]:
    from ...export.families import families

    # An export family of the same name is the source of truth.
    return {**catalog_models(), **{name: from_family(fam) for name, fam in families().items()}}


def catalog_models() -> dict[str, Model]:
    """The catalog modules alone, including those an export family shadows."""
    out = {}
    for mod in _MODULES:
        m = importlib.import_module(f"{__name__}.{mod}").MODEL
        out[m.name] = m
    return out


def get_model(name: str) -> Model:
    known = models()
    if name not in known:
        raise EdgegenError(f"unknown model {name!r}; known: {', '.join(known)}")
    return known[name]
