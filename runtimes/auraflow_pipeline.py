"""Denoising loop of AuraFlow: UMT5 hidden states zeroed on padding, a DiT on the 4-channel latent,
flow-matching Euler with classifier-free guidance against the empty prompt."""
from __future__ import annotations

import numpy as np

from .pipeline import Pipeline


class AuraFlowPipeline(Pipeline):
    image_input = False   # diffusers has no AuraFlow img2img pipeline to match

    def encode_prompt(self, prompts: list[str]) -> np.ndarray:
        """AuraFlowPipeline.encode_prompt: the encoder's last hidden states times the attention mask."""
        (te,) = self.recipe["text_encoders"]
        tok = self.tokenizer(te["tokenizer"], te.get("label"))
        enc = self._stage(f"tokenize:{te['tokenizer']}",
                          lambda prompts: dict(zip(("input_ids", "attention_mask"), tok.encode(prompts))),
                          {"prompts": prompts})
        hidden = self.run_component(te["component"], **enc)["hidden_states"]
        return hidden * enc["attention_mask"][..., None].astype(np.float32)

    def denoise(self, prompts, negative_prompt, guidance, sched, latents, rng, callback, extra=()) -> np.ndarray:
        r, n = self.recipe, len(prompts)
        cfg = r["guidance"] == "cfg" and guidance > 1.0
        hidden = self.encode_prompt(prompts)
        if cfg:
            neg = [negative_prompt] * n if isinstance(negative_prompt, str) else negative_prompt or [""] * n
            hidden = np.concatenate([self.encode_prompt(neg), hidden])
        for i in range(len(sched.timesteps)):
            x = np.concatenate([latents, latents]) if cfg else latents
            ts = np.full(x.shape[0], sched.model_timestep(i) * r["timestep_scale"], np.float32)
            pred = self.run_component(r["denoiser"], hidden_states=sched.scale_model_input(x, i), timestep=ts,
                                      encoder_hidden_states=hidden)["noise_pred"]
            latents = self.guided_step(sched, i, sched.prepare_model_output(pred, latents, i), latents, cfg,
                                       guidance, rng)
            if callback:
                callback(i, len(sched.timesteps))
        return sched.final_sample(latents)


PIPELINE = AuraFlowPipeline
