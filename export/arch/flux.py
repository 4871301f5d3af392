"""FLUX.1: CLIP-L pooled + T5 hidden states, a rectified-flow MMDiT over packed 2x2 latents.

The runtime builds the packed latents and the txt_ids/img_ids positions in numpy,
so the transformer graph sees exactly FluxTransformer2DModel's inputs.
"""
from __future__ import annotations

from torch import nn

from ...runtimes.iospec import Dim, IOSpec, TensorSpec
from ..components import (Component, TupleOut, base_recipe, batch_dim, count_params, text_encoder, vae_decoder,
                          vae_encoder, vae_scale_factor)
from ..family import Family
from ..sizes import Limits

PACK = 2  # 2x2 latent patches are packed into channels


def transformer(model: nn.Module, resolution: tuple[int, int, int], vae_scale: int, txt_len: int) -> Component:
    cfg = model.config
    side = vae_scale * PACK
    lo, opt, hi = ((r // side) ** 2 for r in resolution)
    dims = {"batch": batch_dim(), "img_seq": Dim("img_seq", lo, opt, hi), "txt_seq": Dim("txt_seq", 1, txt_len, txt_len)}
    inputs = [
        TensorSpec("hidden_states", "float32", ("batch", "img_seq", cfg.in_channels)),
        TensorSpec("encoder_hidden_states", "float32", ("batch", "txt_seq", cfg.joint_attention_dim)),
        TensorSpec("pooled_projections", "float32", ("batch", cfg.pooled_projection_dim)),
        TensorSpec("timestep", "float32", ("batch",), 0, 1),
        TensorSpec("img_ids", "float32", ("img_seq", 3), 0, 64),
        TensorSpec("txt_ids", "float32", ("txt_seq", 3), 0, 0),
    ]
    if cfg.guidance_embeds:
        inputs.append(TensorSpec("guidance", "float32", ("batch",), 1, 10))
    io = IOSpec(tuple(inputs), (TensorSpec("noise_pred", "float32", ("batch", "img_seq", cfg.in_channels)),), dims)

    def fn(m, hidden, ehs, pooled, timestep, img_ids, txt_ids, guidance=None):
        return (m(hidden_states=hidden, encoder_hidden_states=ehs, pooled_projections=pooled, timestep=timestep,
                  img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)[0],)

    return Component("transformer", TupleOut(model, fn).eval(), io, count_params(model))


def components(family: Family, pipe, resolution: tuple[int, int, int]) -> list[Component]:
    comps = [text_encoder(te, getattr(pipe, te.component)) for te in family.text_encoders]
    t5 = next(te for te in family.text_encoders if te.hidden)
    scale = vae_scale_factor(pipe.vae)
    comps.append(transformer(pipe.transformer, resolution, scale, t5.max_length))
    comps[-1].exporter = family.exporter
    comps.append(vae_decoder(pipe.vae, resolution, scale))
    comps.append(vae_encoder(pipe.vae, resolution, scale))
    return comps


def size_limits(pipe) -> Limits:
    # Positions are RoPE-encoded: no table bounds the size.
    return Limits(vae_scale_factor(pipe.vae) * PACK)


def recipe(family: Family, pipe, resolution: tuple[int, int, int]) -> dict:
    return {**base_recipe("flux", family, pipe, resolution, size_limits(pipe).multiple),
            # FluxPipeline passes sigmas linspace(1, 1/n, n) to the flow-matching scheduler.
            "sigmas": "linspace",
            "patch": PACK,
            "timestep_scale": 1 / 1000}
