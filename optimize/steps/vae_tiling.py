"""vae-tiling: decode the latents in overlapping tiles, blended linearly across each overlap.

The decoder's activations at 512 px and above dominate the VAE stage's memory; a tile's are a
fraction of them. The blend hides seams, but a tile sees less context than the whole image:
the gate measures the difference against the untiled decode of the same latents.
"""
from __future__ import annotations

from ...runtimes.errors import EdgegenError
from .registry import PipelineOption, register


@register
class VaeTiling(PipelineOption):
    name = "vae-tiling"
    defaults = {"tile": 32, "overlap": 8}
    psnr, ssim = 30.0, 0.95
    help = "VAE decode in tiles of TILE latents (overlap OVERLAP), blended linearly."

    def check_config(self):
        t, o = self.config["tile"], self.config["overlap"]
        if not isinstance(t, int) or not isinstance(o, int) or t < 2 or not 0 < o < t:
            raise EdgegenError(f"vae-tiling: need whole numbers with 0 < overlap < tile, got tile={t!r} overlap={o!r}")

    def applicable(self, art):
        dec = art.manifest["pipeline"].get("vae_decoder")
        if dec not in art.components:
            return "it has no VAE decoder"
        io = art.io(dec)
        for d in io.inputs[0].shape[2:]:
            dim = io.dims.get(d) if isinstance(d, str) else None
            if dim is None or dim.check(self.config["tile"]):
                lo_hi = f"[{dim.min}, {dim.max}]" if dim else f"fixed at {d}"
                return f"its VAE decoder takes latent sides {lo_hi}, not the tile size {self.config['tile']}"
        return None
