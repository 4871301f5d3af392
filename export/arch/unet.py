"""U-Net latent diffusion (SD1.x, SD2.x, SDXL, their Turbo and LCM variants).

Which inputs the UNet takes is read from its config: pooled text embeds and time
ids for SDXL (addition_embed_type "text_time"), a guidance embedding for LCM.
"""
from __future__ import annotations

from torch import nn

from ...runtimes.iospec import Dim, IOSpec, TensorSpec
from ..components import (Component, TupleOut, base_recipe, batch_dim, count_params, latent_dims, text_encoder, vae_decoder,
                          vae_encoder, vae_scale_factor)
from ..family import Family
from ..sizes import Limits

CLIP_SEQ = 77


def unet(model: nn.Module, resolution: tuple[int, int, int], vae_scale: int, text_dim: int,
         pooled_dim: int | None) -> Component:
    cfg = model.config
    # Each down block but the last halves the latent; odd sizes would need data-dependent upsampling.
    multiple = 2 ** (len(cfg.block_out_channels) - 1)
    dims = {"batch": batch_dim(), "text_seq": Dim("text_seq", 1, CLIP_SEQ, 4 * CLIP_SEQ),
            **latent_dims(resolution, vae_scale, multiple)}
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

    return Component("unet", TupleOut(model, fn).eval(), io, count_params(model))


def components(family: Family, pipe, resolution: tuple[int, int, int]) -> list[Component]:
    comps, text_dim, pooled_dim = [], 0, None
    for te in family.text_encoders:
        model = getattr(pipe, te.component)
        comps.append(text_encoder(te, model))
        text_dim += model.config.hidden_size
        if te.pooled:
            pooled_dim = comps[-1].io.outputs[-1].shape[1]
    scale = vae_scale_factor(pipe.vae)
    comps.append(unet(pipe.unet, resolution, scale, text_dim, pooled_dim))
    comps.append(vae_decoder(pipe.vae, resolution, scale))
    comps.append(vae_encoder(pipe.vae, resolution, scale))
    return comps


def size_limits(pipe) -> Limits:
    # Each UNet down block but the last halves the latent; convolutions take any size.
    return Limits(vae_scale_factor(pipe.vae) * 2 ** (len(pipe.unet.config.block_out_channels) - 1))


def recipe(family: Family, pipe, resolution: tuple[int, int, int]) -> dict:
    """What the torch-free runtime needs to run the denoising loop (no family names)."""
    return {**base_recipe("unet", family, pipe, resolution, size_limits(pipe).multiple),
            "force_zeros_for_empty_prompt": family.force_zeros_for_empty_prompt}
