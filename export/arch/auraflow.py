"""AuraFlow: one UMT5 encoder (hidden states masked to the prompt's tokens at runtime), a DiT that
patches the 4-channel latent itself, flow-matching Euler with CFG; the transformer takes t / 1000."""
from __future__ import annotations

from torch import nn

from ...runtimes.iospec import Dim, IOSpec, TensorSpec
from ..components import (Component, TupleOut, base_recipe, batch_dim, count_params, latent_dims, text_encoder,
                          vae_decoder, vae_encoder, vae_scale_factor)
from ..family import Family
from ..sizes import Limits


def transformer(model: nn.Module, resolution: tuple[int, int, int], vae_scale: int, txt_len: int) -> Component:
    cfg = model.config
    dims = {"batch": batch_dim(), "txt_seq": Dim("txt_seq", 1, txt_len, txt_len),
            **latent_dims(resolution, vae_scale, cfg.patch_size)}
    io = IOSpec((
        TensorSpec("hidden_states", "float32", ("batch", cfg.in_channels, "latent_height", "latent_width")),
        TensorSpec("encoder_hidden_states", "float32", ("batch", "txt_seq", cfg.joint_attention_dim)),
        TensorSpec("timestep", "float32", ("batch",), 0, 1),
    ), (TensorSpec("noise_pred", "float32", ("batch", cfg.out_channels, "latent_height", "latent_width")),), dims)

    def fn(m, hidden, ehs, timestep):
        return (m(hidden_states=hidden, encoder_hidden_states=ehs, timestep=timestep, return_dict=False)[0],)

    return Component("transformer", TupleOut(model, fn).eval(), io, count_params(model), exporter="dynamo")


def components(family: Family, pipe, resolution: tuple[int, int, int]) -> list[Component]:
    (te,) = family.text_encoders
    scale = vae_scale_factor(pipe.vae)
    return [text_encoder(te, pipe.text_encoder), transformer(pipe.transformer, resolution, scale, te.max_length),
            vae_decoder(pipe.vae, resolution, scale), vae_encoder(pipe.vae, resolution, scale)]


def size_limits(pipe) -> Limits:
    # The learned position table is a square grid of pos_embed_max_size patches, cropped at the centre.
    cfg, scale = pipe.transformer.config, vae_scale_factor(pipe.vae)
    side = int(cfg.pos_embed_max_size ** 0.5)
    return Limits(scale * cfg.patch_size, side * cfg.patch_size * scale,
                  f"transformer pos_embed_max_size {cfg.pos_embed_max_size} = {side}^2 patches x patch "
                  f"{cfg.patch_size} x VAE {scale}")


def recipe(family: Family, pipe, resolution: tuple[int, int, int]) -> dict:
    return {**base_recipe("auraflow", family, pipe, resolution, size_limits(pipe).multiple),
            "patch": pipe.transformer.config.patch_size, "timestep_scale": 1 / 1000}
