"""A TAESD-style tiny VAE decoder (diffusers' AutoencoderTiny) in place of an artifact's VAE decoder.

TAESD (madebyollin) is a small convolutional autoencoder trained on a VAE's latent space: no
attention, no group norms, about 1.2M decoder parameters against SD's 49M. diffusers uses it by
swapping `pipe.vae = AutoencoderTiny.from_pretrained(...)`; its pipelines then hand it
`latents / tiny.scaling_factor + tiny.shift_factor`, and it returns images in [-1, 1].

The replacement graph is a drop-in: it takes the same input as the decoder it replaces (the
runtime's `latent`, already unscaled by the artifact's own VAE factors) and is exported with that
decoder's IOSpec from the manifest, so a static artifact stays static and the runtime, samplers,
tiling and compile targets never learn which decoder they run. The wrapper re-applies the full
VAE's factors and then the tiny VAE's, as diffusers' pipeline would with the tiny VAE swapped in.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..runtimes.errors import EdgegenError
from ..runtimes.iospec import IOSpec

# TAESD's own layout (madebyollin/taesd, taesdxl, taesd3, taef1 share it; only latent_channels
# differ), diffusers' AutoencoderTiny defaults: 64 channels, one block at full resolution and
# three per 2x level, four levels for SD's 8x. Other factors get as many levels as they need.
WIDTH, TINY_WIDTH = 64, 16


def taesd_config(latent_channels: int, vae_scale: int, tiny: bool, width: int | None = None) -> dict:
    """The TAESD architecture for a VAE with this latent width and spatial factor (tiny: narrow)."""
    levels = int(math.log2(vae_scale)) + 1
    if 2 ** (levels - 1) != vae_scale:
        raise EdgegenError(f"tiny-vae: a VAE factor of {vae_scale} is not a power of two; TAESD upsamples by 2")
    w = width or (TINY_WIDTH if tiny else WIDTH)
    return {"latent_channels": latent_channels, "encoder_block_out_channels": [w] * levels,
            "decoder_block_out_channels": [w] * levels,
            "num_encoder_blocks": [1] + [3] * (levels - 1), "num_decoder_blocks": [3] * (levels - 1) + [1]}


def load_tiny_vae(weights: str, recipe: dict, tiny: bool, seed: int):
    """An AutoencoderTiny from a diffusers folder, a hub id you have cached, or "random" (the TAESD
    architecture for this latent space, seeded random weights: speed and memory work only)."""
    import torch
    from diffusers import AutoencoderTiny

    if weights == "random":
        torch.manual_seed(seed)
        return AutoencoderTiny(**taesd_config(recipe["latent_channels"], recipe["vae_scale_factor"], tiny)).eval()
    from .weights import HUB_ID

    p = Path(weights)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise EdgegenError(f"tiny-vae: {p} has no config.json (want a diffusers AutoencoderTiny folder)")
        src, local = str(p), True
    elif HUB_ID.match(weights):
        src, local = weights, False
    else:
        raise EdgegenError(f"tiny-vae: weights={weights}: no such folder (want an AutoencoderTiny folder, a hub id "
                           "such as madebyollin/taesd, or random)")
    try:
        model = AutoencoderTiny.from_pretrained(src, torch_dtype=torch.float32, local_files_only=local or None)
    except Exception as e:  # the hub client and diffusers raise many types; all mean "could not load it"
        where = "" if local else " (not a folder here; offline it must be in the Hugging Face cache)"
        raise EdgegenError(f"tiny-vae: cannot load {weights}{where}: {type(e).__name__}; pass weights=DIR "
                           "(an AutoencoderTiny folder) or weights=random for speed work") from None
    return model.eval()


def check_fits(model, recipe: dict, weights: str) -> None:
    """The tiny VAE must share the artifact's latent space shape: channels and spatial factor."""
    cfg = model.config
    scale = cfg.upsampling_scaling_factor ** (len(cfg.decoder_block_out_channels) - 1)
    for what, theirs, ours in (("latent channels", cfg.latent_channels, recipe["latent_channels"]),
                               ("spatial factor", scale, recipe["vae_scale_factor"])):
        if theirs != ours:
            raise EdgegenError(f"tiny-vae: {weights} has {what} {theirs}, the artifact's VAE has {ours}; "
                               "use a tiny VAE trained for this model's latent space")


def decoder_component(model, recipe: dict, io: IOSpec, name: str):
    """The drop-in decoder: the artifact's VAE input -> diffusers' tiny-VAE input -> image."""
    import torch
    from torch import nn

    from .components import Component, count_params

    class Decode(nn.Module):
        def __init__(self, tiny):
            super().__init__()
            self.model = tiny
            sf = float(recipe["scaling_factor"])
            mean, std = recipe.get("latents_mean"), recipe.get("latents_std")
            c = recipe["latent_channels"]
            # The runtime decodes z = latents * std / sf + mean (Playground's statistics), else
            # z = latents / sf + shift; undo that to the U-Net's latents, then apply the tiny VAE's.
            if mean is not None and std is not None:
                shift, scale = torch.tensor(mean).view(1, c, 1, 1), (sf / torch.tensor(std)).view(1, c, 1, 1)
            else:
                shift = torch.full((1, c, 1, 1), float(recipe.get("shift_factor") or 0.0))
                scale = torch.full((1, c, 1, 1), sf)
            self.register_buffer("shift", shift.float())
            self.register_buffer("scale", scale.float())
            self.tiny_sf = float(tiny.config.scaling_factor)
            self.tiny_shift = float(getattr(tiny.config, "shift_factor", 0.0) or 0.0)

        def forward(self, z):
            latents = (z - self.shift) * self.scale
            return (self.model.decode(latents / self.tiny_sf + self.tiny_shift, return_dict=False)[0],)

    return Component(name, Decode(model).eval(), io, count_params(model.decoder))
