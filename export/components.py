"""Torch modules for each exportable component, paired with their IOSpec.

Wrappers return plain tuples in the IOSpec's output order, so one spec drives
export, validation and the runtime. Components shared by every architecture live
here; each denoiser lives in export/arch/<arch>.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..runtimes.iospec import Dim, IOSpec, TensorSpec

MAX_BATCH = 8


@dataclass
class Component:
    name: str
    module: nn.Module
    io: IOSpec
    params: int
    exporter: str = "torchscript"  # the denoisers of DiT families need "dynamo" (see onnx_export)
    # The dynamo exporter's graph optimizer drops SANA's "+ eps" in linear attention (0/0 -> NaN).
    onnx_optimize: bool = True


class TupleOut(nn.Module):
    """Call `fn(model, *args)`; keeps the real model as a submodule so its weights export once."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self, *args):
        return self._fn(self.model, *args)


def batch_dim() -> Dim:
    return Dim("batch", 1, 2, MAX_BATCH)


def count_params(*modules: nn.Module | None) -> int:
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def text_encoder(te, model: nn.Module) -> Component:
    """A CLIP / T5 / Gemma encoder: token ids (+ mask) -> hidden states and/or a pooled embedding."""
    cfg = model.config
    width = getattr(cfg, "hidden_size", None) or cfg.d_model
    seq = te.max_length
    inputs = [TensorSpec("input_ids", "int64", ("batch", seq), 0, cfg.vocab_size - 1)]
    if te.attention_mask:
        inputs.append(TensorSpec("attention_mask", "int64", ("batch", seq), 1, 1))
    outputs = []
    if te.hidden:
        outputs.append(TensorSpec("hidden_states", "float32", ("batch", seq, width)))
    if te.pooled:
        dim = cfg.projection_dim if te.pooled == "text_embeds" else width
        outputs.append(TensorSpec("pooled", "float32", ("batch", dim)))
    io = IOSpec(tuple(inputs), tuple(outputs), {"batch": batch_dim()})

    def fn(m, input_ids, attention_mask=None):
        kw = {"attention_mask": attention_mask} if te.attention_mask else {}
        out = m(input_ids, output_hidden_states=te.hidden == "penultimate", **kw)
        res = []
        if te.hidden:
            res.append(out.hidden_states[-2] if te.hidden == "penultimate" else out.last_hidden_state)
        if te.pooled:
            res.append(getattr(out, te.pooled))
        return tuple(res)

    return Component(te.component, TupleOut(model, fn).eval(), io, count_params(model))


def latent_dims(family_res: tuple[int, int, int], vae_scale: int, multiple: int) -> dict[str, Dim]:
    lo, opt, hi = (r // vae_scale for r in family_res)
    dims = {}
    for n in ("latent_height", "latent_width"):
        dims[n] = Dim(n, -(-lo // multiple) * multiple, opt // multiple * multiple, hi // multiple * multiple, multiple)
    return dims


def vae_decoder(model: nn.Module, resolution: tuple[int, int, int], vae_scale: int) -> Component:
    c = model.config.latent_channels
    dims = {"batch": batch_dim(), **latent_dims(resolution, vae_scale, 1)}
    io = IOSpec((TensorSpec("latent", "float32", ("batch", c, "latent_height", "latent_width"), -4, 4),),
                (TensorSpec("image", "float32", ("batch", 3, f"{vae_scale}*latent_height", f"{vae_scale}*latent_width")),),
                dims)
    params = count_params(model.decoder, model.post_quant_conv)
    return Component("vae_decoder", TupleOut(model, lambda m, z: (m.decode(z, return_dict=False)[0],)).eval(),
                     io, params)


def vae_encoder(model: nn.Module, resolution: tuple[int, int, int], vae_scale: int) -> Component:
    c = model.config.latent_channels
    lo, opt, hi = resolution
    dims = {"batch": batch_dim(), "height": Dim("height", lo, opt, hi, vae_scale), "width": Dim("width", lo, opt, hi, vae_scale)}
    io = IOSpec((TensorSpec("image", "float32", ("batch", 3, "height", "width")),),
                (TensorSpec("latent_mean", "float32", ("batch", c, f"height/{vae_scale}", f"width/{vae_scale}")),
                 TensorSpec("latent_logvar", "float32", ("batch", c, f"height/{vae_scale}", f"width/{vae_scale}"))),
                dims)

    def fn(m, image):
        dist = m.encode(image, return_dict=False)[0]
        return dist.mean, dist.logvar

    params = count_params(model.encoder, model.quant_conv)
    return Component("vae_encoder", TupleOut(model, fn).eval(), io, params)


def vae_scale_factor(vae: nn.Module) -> int:
    cfg = vae.config  # AutoencoderKL: block_out_channels; AutoencoderDC (SANA): encoder_block_out_channels
    return 2 ** (len(getattr(cfg, "block_out_channels", None) or cfg.encoder_block_out_channels) - 1)


def base_recipe(kind: str, family, pipe, resolution: tuple[int, int, int], size_multiple: int) -> dict:
    """The runtime recipe fields every architecture shares; arch modules add their own."""
    vae_cfg = pipe.vae.config
    return {
        "kind": kind,
        "text_encoders": [{"component": te.component, "tokenizer": te.tokenizer, "pooled": bool(te.pooled),
                           "label": te.label} for te in family.text_encoders],
        "denoiser": family.denoiser.component,
        "vae_decoder": "vae_decoder",
        "vae_encoder": "vae_encoder",
        "vae_scale_factor": vae_scale_factor(pipe.vae),
        "size_multiple": size_multiple,
        "resolution": [resolution[0], resolution[2]],
        "latent_channels": vae_cfg.latent_channels,
        "scaling_factor": vae_cfg.scaling_factor,
        "shift_factor": getattr(vae_cfg, "shift_factor", None),
        # Per-channel latent statistics (Playground v2.5's EDM VAE): decode z * std / scaling + mean.
        "latents_mean": getattr(vae_cfg, "latents_mean", None),
        "latents_std": getattr(vae_cfg, "latents_std", None),
        "guidance": family.guidance_mode,
        "defaults": {"sampler": family.sampler, "steps": family.steps, "guidance": family.guidance,
                     "height": resolution[1], "width": resolution[1]},
    }
