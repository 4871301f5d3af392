"""SD3 / SD3.5: two CLIPs (penultimate + pooled) and T5 joined into one text sequence,
an MMDiT over 2x2 patches of the 16-channel latent, flow-matching Euler with CFG."""
from __future__ import annotations

from torch import nn

from ...runtimes.iospec import Dim, IOSpec, TensorSpec
from ..components import (Component, TupleOut, base_recipe, batch_dim, count_params, latent_dims, text_encoder,
                          vae_decoder, vae_encoder, vae_scale_factor)
from ..family import Family
from ..sizes import Limits

CLIP_SEQ = 77


def transformer(model: nn.Module, resolution: tuple[int, int, int], vae_scale: int, txt_len: int) -> Component:
    cfg = model.config
    dims = {"batch": batch_dim(), "txt_seq": Dim("txt_seq", 1, txt_len, txt_len),
            **latent_dims(resolution, vae_scale, cfg.patch_size)}
    latent = ("batch", cfg.in_channels, "latent_height", "latent_width")
    io = IOSpec((
        TensorSpec("hidden_states", "float32", latent),
        TensorSpec("timestep", "float32", ("batch",), 0, 1000),
        TensorSpec("encoder_hidden_states", "float32", ("batch", "txt_seq", cfg.joint_attention_dim)),
        TensorSpec("pooled_projections", "float32", ("batch", cfg.pooled_projection_dim)),
    ), (TensorSpec("noise_pred", "float32", ("batch", cfg.out_channels, "latent_height", "latent_width")),), dims)

    def fn(m, hidden, timestep, ehs, pooled):
        return (m(hidden_states=hidden, timestep=timestep, encoder_hidden_states=ehs, pooled_projections=pooled,
                  return_dict=False)[0],)

    comp = Component("transformer", TupleOut(model, fn).eval(), io, count_params(model))
    comp.exporter = "dynamo"  # qk RMSNorm has no opset-17 TorchScript symbolic
    return comp


def components(family: Family, pipe, resolution: tuple[int, int, int]) -> list[Component]:
    comps = [text_encoder(te, getattr(pipe, te.component)) for te in family.text_encoders]
    t5 = family.text_encoders[-1]
    scale = vae_scale_factor(pipe.vae)
    comps.append(transformer(pipe.transformer, resolution, scale, CLIP_SEQ + t5.max_length))
    comps[-1].exporter = family.exporter
    comps.append(vae_decoder(pipe.vae, resolution, scale))
    comps.append(vae_encoder(pipe.vae, resolution, scale))
    return comps


def size_limits(pipe) -> Limits:
    # The learned position table is pos_embed_max_size patches a side; SD3's PatchEmbed crops it
    # and raises beyond it.
    cfg, scale = pipe.transformer.config, vae_scale_factor(pipe.vae)
    side = cfg.pos_embed_max_size * cfg.patch_size * scale if cfg.pos_embed_max_size else None
    return Limits(scale * cfg.patch_size, side,
                  f"transformer pos_embed_max_size {cfg.pos_embed_max_size} x patch {cfg.patch_size} x VAE {scale}")


def recipe(family: Family, pipe, resolution: tuple[int, int, int]) -> dict:
    patch = pipe.transformer.config.patch_size
    return {**base_recipe("sd3", family, pipe, resolution, size_limits(pipe).multiple),
            "patch": patch, "timestep_scale": 1.0}
