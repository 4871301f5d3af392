"""Denoising loop of SANA and SANA-Sprint: Gemma-2 text with SANA's instruction prefix and token
selection, a DiT over the DC-AE latent, flow DPM-Solver with CFG or sCM with a guidance embedding.

Reproduces SanaPipeline / SanaSprintPipeline with clean_caption=False and
use_resolution_binning=False (sizes are used as given, multiples of 32).
"""
from __future__ import annotations

import warnings

import numpy as np

from .pipeline import Pipeline
from .tokenizer import TextTokenizer, TokenTruncationWarning


def preprocess(prompts: list[str]) -> list[str]:
    """SanaPipeline._text_preprocessing with clean_caption=False."""
    return [p.lower().strip() for p in prompts]


class SanaPipeline(Pipeline):
    image_input = False  # no diffusers img2img for SANA to match (SANA-Sprint's is not reproduced)

    def _text_tokenizers(self) -> tuple[TextTokenizer, TextTokenizer]:
        """(instruction-prefixed prompt tokenizer, plain max_sequence_length tokenizer), right-padded."""
        r = self.recipe
        (te,) = r["text_encoders"]
        plain = self.tokenizer(te["tokenizer"], te.get("label"))
        key = f"{te['tokenizer']}#prompt"
        if key not in self._tokenizers:
            self._tokenizers[key] = plain.with_max_length(r["prompt_length"]) if r["instruction"] else plain
        return self._tokenizers[key], plain

    def _gemma(self, tok: TextTokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        te = self.recipe["text_encoders"][0]
        enc = self._stage(f"tokenize:{te['tokenizer']}",
                          lambda texts: dict(zip(("input_ids", "attention_mask"), tok.encode(texts))), {"texts": texts})
        hidden = self.run_component(te["component"], **enc)["hidden_states"]
        return hidden, enc["attention_mask"]

    def encode_prompt(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hidden states and mask of max_sequence_length tokens: the first token and the last n - 1."""
        r = self.recipe
        tok, _ = self._text_tokenizers()
        texts = [r["instruction"] + p for p in preprocess(prompts)]
        if r["instruction"]:
            # The tokenizer's own warning would count the instruction too; state the prompt's budget.
            room = r["prompt_length"] - tok.num_tokens(r["instruction"])
            for i, text in enumerate(texts):
                dropped = tok.num_tokens(text) - r["prompt_length"]
                if dropped > 0:
                    warnings.warn(f"prompt {i} is longer than the {room} Gemma tokens SANA keeps after its "
                                  f"instruction; dropped its last {dropped} token{'s' * (dropped != 1)}",
                                  TokenTruncationWarning, stacklevel=4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TokenTruncationWarning)
            hidden, mask = self._gemma(tok, texts)
        n = r["max_sequence_length"]
        keep = np.r_[0, np.arange(hidden.shape[1] - n + 1, hidden.shape[1])]
        return hidden[:, keep], mask[:, keep]

    def encode_negative(self, negative: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The unconditional text: no instruction, max_sequence_length tokens, no selection."""
        _, plain = self._text_tokenizers()
        return self._gemma(plain, preprocess(negative))

    def denoise(self, prompts, negative_prompt, guidance, sched, latents, rng, callback, extra=()) -> np.ndarray:
        r, n = self.recipe, len(prompts)
        cfg = r["guidance"] == "cfg" and guidance > 1.0
        hidden, mask = self.encode_prompt(prompts)
        if cfg:
            neg = [negative_prompt] * n if isinstance(negative_prompt, str) else negative_prompt
            neg_hidden, neg_mask = self.encode_negative(neg or [r.get("negative_prompt") or ""] * n)
            hidden, mask = np.concatenate([neg_hidden, hidden]), np.concatenate([neg_mask, mask])
        fixed = {"encoder_hidden_states": hidden, "encoder_attention_mask": mask.astype(np.float32)}
        if r["guidance"] == "embedding":
            fixed["guidance"] = np.full(n, guidance * r["guidance_embeds_scale"], np.float32)
        for i in range(len(sched.timesteps)):
            x = np.concatenate([latents, latents]) if cfg else latents
            ts = np.full(x.shape[0], np.float32(sched.model_timestep(i)) * np.float32(r["timestep_scale"]), np.float32)
            pred = self.run_component(r["denoiser"], hidden_states=sched.scale_model_input(x, i), timestep=ts,
                                      **fixed)["noise_pred"]
            if cfg:
                uncond, cond = np.split(pred, 2)
                pred = uncond + np.float32(guidance) * (cond - uncond)
            latents = self.guided_step(sched, i, sched.prepare_model_output(pred, latents, i), latents, False,
                                       guidance, rng)
            if callback:
                callback(i, len(sched.timesteps))
        return sched.final_sample(latents)


PIPELINE = SanaPipeline
