"""Denoising loop of FLUX.1: packed 2x2 latents, RoPE position ids, flow-matching Euler."""
from __future__ import annotations

import warnings

import numpy as np

from .pipeline import Pipeline


def pack(latents: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C), in FluxPipeline._pack_latents' order."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(latents: np.ndarray, h: int, w: int) -> np.ndarray:
    b, _, ch = latents.shape
    x = latents.reshape(b, h // 2, w // 2, ch // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5)
    return x.reshape(b, ch // 4, h, w)


def image_ids(h: int, w: int) -> np.ndarray:
    """(row, col) positions of each packed patch, in channel 1 and 2; channel 0 stays 0."""
    ids = np.zeros((h // 2, w // 2, 3), np.float32)
    ids[..., 1] = np.arange(h // 2)[:, None]
    ids[..., 2] = np.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


class FluxPipeline(Pipeline):
    round_kept_steps_down = False

    def check_guidance(self, guidance: float | None) -> float:
        if self.recipe["guidance"] == "none" and guidance:
            warnings.warn(f"this model takes no guidance; guidance={guidance} is ignored")
            return 0.0
        return super().check_guidance(guidance)

    def denoise(self, prompts, negative_prompt, guidance, sched, latents, rng, callback, extra=()) -> np.ndarray:
        r = self.recipe
        pooled = hidden = None
        for te in r["text_encoders"]:
            out = self.encode_text(te, prompts)
            pooled = out.get("pooled", pooled)
            hidden = out.get("hidden_states", hidden)
        n, _, h, w = latents.shape
        fixed = {"encoder_hidden_states": hidden, "pooled_projections": pooled,
                 "img_ids": image_ids(h, w), "txt_ids": np.zeros((hidden.shape[1], 3), np.float32)}
        if "guidance" in self.artifact.io(r["denoiser"]).input_names:
            fixed["guidance"] = np.full(n, guidance, np.float32)
        x = pack(latents)
        graph = self.denoise_graph(sched, False)
        if graph is not None:
            out = self._stage("denoise_graph", lambda **kw: {"latents": graph(rng=rng, **kw)}, {"latents": x, **fixed})
            if callback:
                callback(len(sched.timesteps) - 1, len(sched.timesteps))
            return unpack(out["latents"], h, w)
        for i in range(len(sched.timesteps)):
            ts = np.full(n, sched.model_timestep(i) * r["timestep_scale"], np.float32)
            pred = self.run_component(r["denoiser"], hidden_states=sched.scale_model_input(x, i), timestep=ts,
                                      **fixed)["noise_pred"]
            x = self.guided_step(sched, i, sched.prepare_model_output(pred, x, i), x, False, guidance, rng)
            if callback:
                callback(i, len(sched.timesteps))
        return unpack(sched.final_sample(x), h, w)


PIPELINE = FluxPipeline
