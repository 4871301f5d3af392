"""Torch modules for each exportable component, paired with their IOSpec.

Wrappers return plain tuples in the IOSpec's output order, so one spec drives
export, validation and the runtime. Which inputs a UNet takes is read from its
config (pooled text embeds and time ids for SDXL, a guidance embedding for LCM).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..runtimes.iospec import Dim, IOSpec, TensorSpec
from .family import Family

MAX_BATCH = 8
CLIP_SEQ = 77
VOCAB_MAX_ID = 49407


@dataclass
class Component:
    name: str
    module: nn.Module
    io: IOSpec
    params: int


class _TupleOut(nn.Module):
    """Call `fn(model, *args)`; keeps the real model as a submodule so its weights export once."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self, *args):
        return self._fn(self.model, *args)


def _batch() -> Dim:
    return Dim("batch", 1, 2, MAX_BATCH)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def text_encoder(name: str, model: nn.Module, hidden: str, pooled: bool) -> Component:
    cfg = model.config
    outputs = [TensorSpec("hidden_states", "float32", ("batch", CLIP_SEQ, cfg.hidden_size))]
    if pooled:
        outputs.append(TensorSpec("text_embeds", "float32", ("batch", cfg.projection_dim)))
    io = IOSpec((TensorSpec("input_ids", "int64", ("batch", CLIP_SEQ), 0, VOCAB_MAX_ID),), tuple(outputs),
                {"batch": _batch()})

    def fn(m, input_ids):
        out = m(input_ids, output_hidden_states=hidden == "penultimate")
        h = out.hidden_states[-2] if hidden == "penultimate" else out.last_hidden_state
        return (h, out.text_embeds) if pooled else (h,)

    return Component(name, _TupleOut(model, fn).eval(), io, _params(model))


def _latent_dims(family_res: tuple[int, int, int], vae_scale: int, multiple: int) -> dict[str, Dim]:
    lo, opt, hi = (r // vae_scale for r in family_res)
    dims = {}
    for n in ("latent_height", "latent_width"):
        dims[n] = Dim(n, -(-lo // multiple) * multiple, opt // multiple * multiple, hi // multiple * multiple, multiple)
    return dims


def unet(model: nn.Module, resolution: tuple[int, int, int], vae_scale: int, text_dim: int,
         pooled_dim: int | None) -> Component:
    cfg = model.config
    # Each down block but the last halves the latent; odd sizes would need data-dependent upsampling.
    multiple = 2 ** (len(cfg.block_out_channels) - 1)
    dims = {"batch": _batch(), "text_seq": Dim("text_seq", 1, CLIP_SEQ, 4 * CLIP_SEQ),
            **_latent_dims(resolution, vae_scale, multiple)}
    inputs = [
        TensorSpec("sample", "float32", ("batch", cfg.in_channels, "latent_height", "latent_width")),
        TensorSpec("timestep", "float32", ("batch",), 0, 999),
        TensorSpec("encoder_hidden_states", "float32", ("batch", "text_seq", text_dim)),
    ]
    extra = []
    if cfg.addition_embed_type == "text_time":
        inputs.append(TensorSpec("text_embeds", "float32", ("batch", pooled_dim)))
        inputs.append(TensorSpec("time_ids", "float32", ("batch", 6), 0, 1024))
        extra = ["text_embeds", "time_ids"]
    if cfg.time_cond_proj_dim:
        inputs.append(TensorSpec("timestep_cond", "float32", ("batch", cfg.time_cond_proj_dim)))
    has_cond = bool(cfg.time_cond_proj_dim)
    io = IOSpec(tuple(inputs),
                (TensorSpec("noise_pred", "float32", ("batch", cfg.out_channels, "latent_height", "latent_width")),),
                dims)

    def fn(m, sample, timestep, ehs, *rest):
        rest = list(rest)
        added = {k: rest.pop(0) for k in extra} or None
        cond = rest.pop(0) if has_cond else None
        return (m(sample, timestep, ehs, timestep_cond=cond, added_cond_kwargs=added, return_dict=False)[0],)

    return Component("unet", _TupleOut(model, fn).eval(), io, _params(model))


def vae_decoder(model: nn.Module, resolution: tuple[int, int, int], vae_scale: int) -> Component:
    c = model.config.latent_channels
    dims = {"batch": _batch(), **_latent_dims(resolution, vae_scale, 1)}
    io = IOSpec((TensorSpec("latent", "float32", ("batch", c, "latent_height", "latent_width"), -4, 4),),
                (TensorSpec("image", "float32", ("batch", 3, f"{vae_scale}*latent_height", f"{vae_scale}*latent_width")),),
                dims)
    params = _params(model.decoder) + _params(model.post_quant_conv)
    return Component("vae_decoder", _TupleOut(model, lambda m, z: (m.decode(z, return_dict=False)[0],)).eval(),
                     io, params)


def vae_encoder(model: nn.Module, resolution: tuple[int, int, int], vae_scale: int) -> Component:
    c = model.config.latent_channels
    lo, opt, hi = resolution
    dims = {"batch": _batch(), "height": Dim("height", lo, opt, hi, vae_scale), "width": Dim("width", lo, opt, hi, vae_scale)}
    io = IOSpec((TensorSpec("image", "float32", ("batch", 3, "height", "width")),),
                (TensorSpec("latent_mean", "float32", ("batch", c, f"height/{vae_scale}", f"width/{vae_scale}")),
                 TensorSpec("latent_logvar", "float32", ("batch", c, f"height/{vae_scale}", f"width/{vae_scale}"))),
                dims)

    def fn(m, image):
        dist = m.encode(image, return_dict=False)[0]
        return dist.mean, dist.logvar

    params = _params(model.encoder) + _params(model.quant_conv)
    return Component("vae_encoder", _TupleOut(model, fn).eval(), io, params)


def vae_scale_factor(vae: nn.Module) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def pipeline_components(family: Family, pipe, resolution: tuple[int, int, int]) -> list[Component]:
    """All exportable components of a loaded diffusers U-Net pipeline."""
    comps, text_dim, pooled_dim = [], 0, None
    for te in family.text_encoders:
        model = getattr(pipe, te.component)
        comps.append(text_encoder(te.component, model, te.hidden, te.pooled))
        text_dim += model.config.hidden_size
        if te.pooled:
            pooled_dim = model.config.projection_dim
    scale = vae_scale_factor(pipe.vae)
    comps.append(unet(pipe.unet, resolution, scale, text_dim, pooled_dim))
    comps.append(vae_decoder(pipe.vae, resolution, scale))
    comps.append(vae_encoder(pipe.vae, resolution, scale))
    return comps
