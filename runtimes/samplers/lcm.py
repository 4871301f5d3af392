"""LCM sampler, matching diffusers' LCMScheduler."""

from __future__ import annotations

import numpy as np

from .base import OFF, Sampler

SIGMA_DATA = 0.5  # fixed in diffusers' boundary-condition scalings


class LCMSampler(Sampler):
    name = "lcm"
    diffusers_class = "LCMScheduler"  # the scheduler it reproduces (tests compare against it)
    stochastic = True
    # timestep_spacing and steps_offset are read but, as in diffusers, don't affect LCM;
    # set_alpha_to_one neither (the last step's "previous" timestep is itself).
    DEFAULTS = {
        **Sampler.DEFAULTS,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "timestep_spacing": "leading",
        "original_inference_steps": 50,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "timestep_scaling": 10.0,
    }
    UNSUPPORTED = {**Sampler.UNSUPPORTED, "thresholding": OFF}

    def _set_schedule(self, num_steps: int, strength: float = 1.0) -> None:
        original = int(self.config["original_inference_steps"])
        total = self.num_train_timesteps
        if original > total or num_steps > original:
            raise ValueError(f"{self.name}: need num_steps <= original_inference_steps ({original})"
                             f" <= num_train_timesteps ({total}), got num_steps={num_steps}")
        kept = int(original * strength)
        if kept < num_steps:
            raise ValueError(f"{self.name}: strength {strength} keeps {kept} of the {original} distillation "
                             f"timesteps, fewer than the {num_steps} steps; raise the strength or lower the steps")
        # The distillation schedule: every k-th training timestep (the first `kept` of them), then
        # n of them evenly picked.
        origin = (np.arange(1, kept + 1) * (total // original) - 1)[::-1]
        picks = np.floor(np.linspace(0, len(origin), num=num_steps, endpoint=False)).astype(np.int64)
        self._t = origin[picks]
        self.timesteps = self._t.astype(np.float32)

    def set_strength(self, strength: float, skip: int) -> None:
        # LatentConsistencyModelImg2ImgPipeline skips nothing: it passes strength to the
        # scheduler's set_timesteps, which runs all steps over the lower part of the schedule.
        self._set_schedule(self.num_steps, strength)

    def _step(self, out, i, x, rng):
        t = int(self._t[i])
        last = i == len(self._t) - 1
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t if last else int(self._t[i + 1])]
        scaled = t * self.config["timestep_scaling"]
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
        if self.config["prediction_type"] == "epsilon":
            x0 = (x - (1 - a_t) ** 0.5 * out) / a_t**0.5
        else:
            x0 = a_t**0.5 * x - (1 - a_t) ** 0.5 * out
        if self.config["clip_sample"]:
            r = self.config["clip_sample_range"]
            x0 = np.clip(x0, -r, r)
        denoised = c_out * x0 + c_skip * x
        if last:
            # What LCMScheduler returns as prev_sample here, and what the pipeline decodes.
            return denoised
        return a_prev**0.5 * denoised + (1 - a_prev) ** 0.5 * self._noise(rng, x.shape)
