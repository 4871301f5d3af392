"""Pipeline options: how the denoising loop and the decode run, as an artifact records them.

An option is written by `edgegen optimize --pipeline-option NAME[:K=V,...]` (optimize/steps/),
gated there against the parent's images, and stored in the manifest's "pipeline_options" as
{name: {"version": V, "config": {...}, ...}}. The runtime reads them here, refuses a version it
does not know, and applies them; no option is ever applied that the manifest does not name,
so an artifact computes the images its gate measured.

- cfg-cutoff: classifier-free guidance only for the first steps, i <= int(steps * ratio); the
  later steps run the conditional half alone (diffusers' SDCFGCutoffCallback, same index rule).
- deepcache: every `interval`-th step runs the whole U-Net and keeps the feature entering its
  last up block; the steps between run only the shallow graph (conv_in, the first down block,
  the last up block) on that cached feature (Ma et al., DeepCache, CVPR 2024).
- vae-tiling: the VAE decodes overlapping latent tiles, blended linearly across each overlap, so
  the decoder's activations are those of one tile (the idea of diffusers' enable_vae_tiling).
- tiny-vae: the artifact's VAE decoder graph is a TAESD tiny VAE with the same inputs and outputs
  (optimize/steps/tiny_vae.py writes it); the runtime runs it as it ran the full decoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import EdgegenError

KEY = "pipeline_options"
# name -> the version this runtime implements
KNOWN = {"cfg-cutoff": 1, "deepcache": 1, "tiny-vae": 1, "vae-tiling": 1}
# Options of the decode, which every pipeline kind shares (the others live in a kind's loop).
DECODE_OPTIONS = ("tiny-vae", "vae-tiling")
DEEP_FEATURE = "deep_feature"   # the U-Net output the cache holds, and the shallow graph's input


def read(manifest: dict) -> dict[str, dict]:
    """The artifact's options, checked against what this runtime implements."""
    opts = manifest.get(KEY) or {}
    for name, entry in opts.items():
        if name not in KNOWN:
            raise EdgegenError(f"this artifact uses pipeline option {name!r}, which this edgegen does not know "
                               f"(it knows {', '.join(KNOWN)}); upgrade edgegen")
        if entry.get("version") != KNOWN[name]:
            raise EdgegenError(f"this artifact uses {name} version {entry.get('version')}; this edgegen runs "
                               f"version {KNOWN[name]}")
    return opts


@dataclass(frozen=True)
class StepPlan:
    """Per step: whether CFG runs, and whether the U-Net runs whole or shallow."""

    steps: int
    cfg_until: int | None = None      # last step index with CFG; None: every step
    interval: int = 1                 # DeepCache: a whole U-Net every `interval` steps
    shallow: str | None = None        # the shallow graph's component (DeepCache)

    @staticmethod
    def from_options(opts: dict[str, dict], steps: int) -> "StepPlan":
        cut = opts.get("cfg-cutoff")
        deep = opts.get("deepcache")
        return StepPlan(steps,
                        cfg_until=int(steps * cut["config"]["ratio"]) if cut else None,
                        interval=deep["config"]["interval"] if deep else 1,
                        shallow=deep["component"] if deep else None)

    @property
    def active(self) -> bool:
        return self.cfg_until is not None or self.shallow is not None

    def cfg(self, i: int) -> bool:
        return self.cfg_until is None or i <= self.cfg_until

    def whole(self, i: int) -> bool:
        return self.shallow is None or i % self.interval == 0

    def denoiser_work(self, cfg: bool) -> dict:
        """U-Net evaluations against the plain loop's (batch rows x steps): the work the plan skips,
        before DeepCache's shallow steps, whose cost depends on the graph."""
        rows = sum((2 if cfg and self.cfg(i) else 1) for i in range(self.steps))
        whole = sum(1 for i in range(self.steps) if self.whole(i))
        return {"batch_rows": rows, "plain_batch_rows": self.steps * (2 if cfg else 1),
                "whole_unet_steps": whole, "shallow_unet_steps": self.steps - whole}


def tiles(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` covering [0, size), neighbours sharing at least `overlap`.

    Every tile is full size and the last ends at `size`: diffusers' tiled_decode steps by a fixed
    stride and decodes the ragged remainder as a smaller tile, which a graph with a minimum
    latent size or a static shape profile refuses; spreading full tiles evenly avoids that."""
    if size <= tile:
        return [0]
    n = -(-(size - tile) // (tile - overlap)) + 1
    return [round(k * (size - tile) / (n - 1)) for k in range(n)]


def _ramp(starts: list[int], tile: int, scale: int) -> np.ndarray:
    """Per tile, blend weights along one axis at output resolution: linear over each overlap
    with a neighbour, 1 elsewhere."""
    out = []
    for k, s in enumerate(starts):
        w = np.ones(tile * scale, np.float64)
        x = np.arange(tile * scale) + 0.5
        if k > 0:
            ov = (starts[k - 1] + tile - s) * scale
            w = np.minimum(w, x / ov)
        if k + 1 < len(starts):
            ov = (s + tile - starts[k + 1]) * scale
            w = np.minimum(w, (tile * scale - x) / ov)
        out.append(w)
    return out


def tiled_decode(decode, z: np.ndarray, tile: int, overlap: int, scale: int) -> np.ndarray:
    """decode(latent tile) -> image tile at `scale` x the resolution; tiles blended by their ramps
    (the weights at each pixel sum to one)."""
    ys, xs = tiles(z.shape[2], tile, overlap), tiles(z.shape[3], tile, overlap)
    th, tw = min(tile, z.shape[2]), min(tile, z.shape[3])
    wy, wx = _ramp(ys, th, scale), _ramp(xs, tw, scale)
    out = acc = None
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            img = decode(np.ascontiguousarray(z[:, :, y:y + th, x:x + tw]))
            if out is None:
                out = np.zeros((*img.shape[:2], z.shape[2] * scale, z.shape[3] * scale), np.float64)
                acc = np.zeros(out.shape[2:], np.float64)
            w = wy[i][:, None] * wx[j][None, :]
            sl = (slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale))
            out[(slice(None), slice(None), *sl)] += img * w
            acc[sl] += w
    return (out / acc).astype(np.float32)
