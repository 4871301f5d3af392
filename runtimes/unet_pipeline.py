"""Denoising loop of U-Net latent diffusion (SD1.x/2.x, SDXL, Turbo, LCM)."""
from __future__ import annotations

import math

import numpy as np

from .pipeline import Pipeline
from .step_options import DEEP_FEATURE


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


class UnetPipeline(Pipeline):
    mask_channels = True
    loop_options = ("cfg-cutoff", "deepcache")

    def encode_prompt(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Concatenated hidden states of all text encoders, and the pooled embedding if any."""
        hidden, pooled = [], None
        for te in self.recipe["text_encoders"]:
            out = self.encode_text(te, prompts)
            hidden.append(out["hidden_states"])
            if te["pooled"]:
                pooled = out["pooled"]
        return np.concatenate(hidden, axis=-1), pooled

    def _conditioning(self, prompts, negative_prompt, guidance, size) -> tuple[dict, bool]:
        """Denoiser inputs that stay fixed over the loop, and whether CFG doubles the batch."""
        r, n = self.recipe, len(prompts)
        io = self.artifact.io(r["denoiser"])
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
        if "text_embeds" in io.input_names:
            fixed["text_embeds"] = pooled
        if "time_ids" in io.input_names:
            # original size, crop top-left, target size: the plain text-to-image conditioning.
            h, w = size
            fixed["time_ids"] = np.tile(np.array([[h, w, 0, 0, h, w]], np.float32), (batch, 1))
        if "timestep_cond" in io.input_names:
            dim = next(t for t in io.inputs if t.name == "timestep_cond").shape[1]
            fixed["timestep_cond"] = guidance_embedding(np.full(batch, guidance - 1.0), dim)
        return fixed, cfg

    def denoise(self, prompts, negative_prompt, guidance, sched, latents, rng, callback, extra=()) -> np.ndarray:
        r = self.recipe
        size = (latents.shape[2] * r["vae_scale_factor"], latents.shape[3] * r["vae_scale_factor"])
        fixed, cfg = self._conditioning(prompts, negative_prompt, guidance, size)
        # The denoise graph feeds the latents alone to the UNet; an inpainting one takes more.
        graph = None if len(extra) else self.denoise_graph(sched, cfg)
        if graph is not None:
            out = self._stage("denoise_graph", lambda **kw: {"latents": graph(
                rng=rng, guidance_scale=guidance if cfg else None, **kw)}, {"latents": latents, **fixed})["latents"]
            if callback:
                callback(len(sched.timesteps) - 1, len(sched.timesteps))
            return out
        n = latents.shape[0]
        plan, cache = self.step_plan(len(sched.timesteps)), None
        for i, t in enumerate(sched.timesteps):
            guided = cfg and plan.cfg(i)
            # After a CFG cutoff the conditional half alone runs: the negative rows come first.
            feeds = fixed if guided or not cfg else {k: v[n:] for k, v in fixed.items()}
            x = np.concatenate([latents, latents]) if guided else latents
            x = sched.scale_model_input(x, i)
            if extra:   # inpainting: mask and masked-image latents follow the scaled latents, as in diffusers
                x = np.concatenate([x, *[np.concatenate([e, e]) if guided else e for e in extra]], axis=1)
            ts = np.full(x.shape[0], t, dtype=np.float32)
            if plan.whole(i) or cache is None:
                out = self.run_component(r["denoiser"], sample=x, timestep=ts, **feeds)
                cache = out.get(DEEP_FEATURE)
            else:
                if cache.shape[0] != x.shape[0]:   # cached with CFG, used after its cutoff
                    cache = cache[n:]
                out = self.run_component(plan.shallow, sample=x, timestep=ts, **{DEEP_FEATURE: cache}, **feeds)
            latents = self.guided_step(sched, i, out["noise_pred"], latents, guided, guidance, rng)
            if callback:
                callback(i, len(sched.timesteps))
        return latents


PIPELINE = UnetPipeline
