"""The torch-free text-to-image pipeline: tokenizer -> text encoders -> denoising loop -> VAE.

Everything family-specific comes from the artifact's manifest: which text encoders
exist and whether they give a pooled embedding, which inputs the denoiser takes
(SDXL's text_embeds/time_ids, LCM's timestep_cond), how guidance is applied.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .artifact import Artifact, load_artifact
from .errors import EdgegenError
from .image import to_uint8
from .onnxruntime_backend import OrtComponent
from .samplers import SAMPLERS, make_sampler
from .tokenizer import ClipTokenizer


def guidance_embedding(w: np.ndarray, dim: int) -> np.ndarray:
    """Sinusoidal embedding of the guidance scale (as in LCM's get_guidance_scale_embedding)."""
    w = w.astype(np.float64) * 1000.0
    half = dim // 2
    freq = np.exp(np.arange(half) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freq[None, :]
    emb = np.concatenate([np.sin(emb), np.cos(emb)], axis=1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)


class Pipeline:
    def __init__(self, artifact: Artifact, device: str = "cpu", threads: int = 0):
        self.artifact = artifact
        self.recipe = artifact.manifest["pipeline"]
        self.device, self.threads = device, threads
        self._components: dict[str, OrtComponent] = {}
        self._tokenizers: dict[str, ClipTokenizer] = {}

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", verify: bool = True, threads: int = 0) -> "Pipeline":
        return cls(load_artifact(path, verify=verify), device=device, threads=threads)

    @property
    def defaults(self) -> dict:
        return self.recipe["defaults"]

    def component(self, name: str) -> OrtComponent:
        if name not in self._components:
            art = self.artifact
            self._components[name] = OrtComponent(name, art.graph_path(name), art.io(name), self.device, self.threads)
        return self._components[name]

    def tokenizer(self, name: str) -> ClipTokenizer:
        if name not in self._tokenizers:
            self._tokenizers[name] = ClipTokenizer.from_dir(self.artifact.root / name)
        return self._tokenizers[name]

    # -- stages -----------------------------------------------------------------------------

    def encode_prompt(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Concatenated hidden states of all text encoders, and the pooled embedding if any."""
        hidden, pooled = [], None
        for te in self.recipe["text_encoders"]:
            ids = self.tokenizer(te["tokenizer"])(prompts)
            out = self.component(te["component"])(input_ids=ids)
            hidden.append(out["hidden_states"])
            if te["pooled"]:
                pooled = out["text_embeds"]
        return np.concatenate(hidden, axis=-1), pooled

    def check_size(self, height: int, width: int) -> tuple[int, int]:
        scale = self.recipe["vae_scale_factor"]
        dims = self.artifact.io(self.recipe["denoiser"]).dims
        for side, value, dim in (("height", height, "latent_height"), ("width", width, "latent_width")):
            step = scale * dims[dim].multiple
            if value % 8 or value % step:
                raise EdgegenError(f"{side} {value} is not a multiple of {max(step, 8)}")
            lo, hi = dims[dim].min * scale, dims[dim].max * scale
            if not lo <= value <= hi:
                raise EdgegenError(f"{side} {value} is outside this artifact's range [{lo}, {hi}]")
        return height // scale, width // scale

    def __call__(self, prompt: str | list[str], steps: int | None = None, guidance: float | None = None,
                 height: int | None = None, width: int | None = None, seed: int = 0,
                 sampler: str | None = None, latents: np.ndarray | None = None,
                 negative_prompt: str | list[str] | None = None, callback=None) -> np.ndarray:
        """Generate; returns HxWx3 uint8 for one prompt, NxHxWx3 for a list."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        d = self.defaults
        steps = d["steps"] if steps is None else int(steps)
        guidance = d["guidance"] if guidance is None else float(guidance)
        sampler = sampler or d["sampler"]
        if steps < 1:
            raise EdgegenError(f"steps must be >= 1, got {steps}")
        if guidance < 0:
            raise EdgegenError(f"guidance must be >= 0, got {guidance}")
        if sampler not in SAMPLERS:
            raise EdgegenError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
        if not prompts:
            raise EdgegenError("no prompt given")
        n = len(prompts)
        c = self.recipe["latent_channels"]
        if latents is not None:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.ndim != 4 or latents.shape[:2] != (n, c):
                raise EdgegenError(f"latents must have shape ({n}, {c}, H/8, W/8), got {latents.shape}")
            scale = self.recipe["vae_scale_factor"]
            height, width = latents.shape[2] * scale, latents.shape[3] * scale
        height = height or d["height"]
        width = width or d["width"]
        lh, lw = self.check_size(height, width)
        rng = np.random.default_rng(seed)
        if latents is None:
            latents = rng.standard_normal((n, c, lh, lw)).astype(np.float32)

        try:
            sched = make_sampler(sampler, self.artifact.manifest["scheduler"])
            sched.set_timesteps(steps)
        except ValueError as e:
            raise EdgegenError(str(e)) from None
        image = self._run(prompts, negative_prompt, guidance, sched, latents, (height, width), rng, callback)
        return image[0] if isinstance(prompt, str) else image

    def _conditioning(self, prompts, negative_prompt, guidance, size) -> tuple[dict, bool]:
        """Denoiser inputs that stay fixed over the loop, and whether CFG doubles the batch."""
        r, n = self.recipe, len(prompts)
        unet_inputs = set(self.artifact.io(r["denoiser"]).input_names)
        cfg = r["guidance"] == "cfg" and guidance > 1.0
        hidden, pooled = self.encode_prompt(prompts)
        if cfg:
            neg = [negative_prompt] * n if isinstance(negative_prompt, str) else negative_prompt
            if neg is None and r["force_zeros_for_empty_prompt"]:
                neg_hidden, neg_pooled = np.zeros_like(hidden), None if pooled is None else np.zeros_like(pooled)
            else:
                neg_hidden, neg_pooled = self.encode_prompt(neg or [""] * n)
            hidden = np.concatenate([neg_hidden, hidden])
            pooled = None if pooled is None else np.concatenate([neg_pooled, pooled])
        batch = hidden.shape[0]
        fixed = {"encoder_hidden_states": hidden}
        if "text_embeds" in unet_inputs:
            fixed["text_embeds"] = pooled
        if "time_ids" in unet_inputs:
            # original size, crop top-left, target size: the plain text-to-image conditioning.
            h, w = size
            fixed["time_ids"] = np.tile(np.array([[h, w, 0, 0, h, w]], np.float32), (batch, 1))
        if "timestep_cond" in unet_inputs:
            dim = next(t for t in self.artifact.io(r["denoiser"]).inputs if t.name == "timestep_cond").shape[1]
            fixed["timestep_cond"] = guidance_embedding(np.full(batch, guidance - 1.0), dim)
        return fixed, cfg

    def _run(self, prompts, negative_prompt, guidance, sched, latents, size, rng, callback) -> np.ndarray:
        r = self.recipe
        fixed, cfg = self._conditioning(prompts, negative_prompt, guidance, size)
        unet = self.component(r["denoiser"])
        latents = latents * np.float32(sched.init_noise_sigma)
        for i, t in enumerate(sched.timesteps):
            x = np.concatenate([latents, latents]) if cfg else latents
            x = sched.scale_model_input(x, i)
            ts = np.full(x.shape[0], t, dtype=np.float32)
            pred = unet(sample=x, timestep=ts, **fixed)["noise_pred"]
            if cfg:
                uncond, cond = np.split(pred, 2)
                pred = uncond + guidance * (cond - uncond)
            latents = sched.step(pred, i, latents, rng)
            if callback:
                callback(i, len(sched.timesteps))
        return self.decode(latents)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        r = self.recipe
        z = latents / np.float32(r["scaling_factor"])
        if r.get("shift_factor") is not None:
            z = z + np.float32(r["shift_factor"])
        return to_uint8(self.component(r["vae_decoder"])(latent=z)["image"])
