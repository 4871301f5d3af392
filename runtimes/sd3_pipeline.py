"""Denoising loop of SD3 / SD3.5: joint CLIP+T5 text sequence, MMDiT, flow matching with CFG."""
from __future__ import annotations

import numpy as np

from .pipeline import Pipeline


class SD3Pipeline(Pipeline):
    round_kept_steps_down = False

    def encode_prompt(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """CLIP hidden states side by side, zero-padded to T5's width, then T5's tokens after them."""
        clip_hidden, pooled, t5 = [], [], None
        for te in self.recipe["text_encoders"]:
            out = self.encode_text(te, prompts)
            if te["pooled"]:
                clip_hidden.append(out["hidden_states"])
                pooled.append(out["pooled"])
            else:
                t5 = out["hidden_states"]
        clip = np.concatenate(clip_hidden, axis=-1)
        clip = np.pad(clip, ((0, 0), (0, 0), (0, t5.shape[-1] - clip.shape[-1])))
        return np.concatenate([clip, t5], axis=1), np.concatenate(pooled, axis=-1)

    def denoise(self, prompts, negative_prompt, guidance, sched, latents, rng, callback, extra=()) -> np.ndarray:
        r, n = self.recipe, len(prompts)
        cfg = r["guidance"] == "cfg" and guidance > 1.0
        hidden, pooled = self.encode_prompt(prompts)
        if cfg:
            neg = [negative_prompt] * n if isinstance(negative_prompt, str) else negative_prompt or [""] * n
            neg_hidden, neg_pooled = self.encode_prompt(neg)
            hidden, pooled = np.concatenate([neg_hidden, hidden]), np.concatenate([neg_pooled, pooled])
        for i in range(len(sched.timesteps)):
            x = np.concatenate([latents, latents]) if cfg else latents
            ts = np.full(x.shape[0], sched.model_timestep(i) * r["timestep_scale"], np.float32)
            pred = self.run_component(r["denoiser"], hidden_states=sched.scale_model_input(x, i), timestep=ts,
                                      encoder_hidden_states=hidden, pooled_projections=pooled)["noise_pred"]
            latents = self.guided_step(sched, i, sched.prepare_model_output(pred, latents, i), latents, cfg,
                                       guidance, rng)
            if callback:
                callback(i, len(sched.timesteps))
        return sched.final_sample(latents)


PIPELINE = SD3Pipeline
