"""DDIM sampler (eta=0, deterministic), matching diffusers' DDIMScheduler."""

from __future__ import annotations

import numpy as np

from .base import OFF, Sampler


class DDIMSampler(Sampler):
    name = "ddim"
    diffusers_class = "DDIMScheduler"  # the scheduler it reproduces (tests compare against it)
    DEFAULTS = {
        **Sampler.DEFAULTS,
        "timestep_spacing": "leading",
        # DDIMScheduler clips x0 unless told not to (SD configs set clip_sample false).
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
    }
    UNSUPPORTED = {**Sampler.UNSUPPORTED, "thresholding": OFF}

    def _set_schedule(self, num_steps: int) -> None:
        if num_steps > self.num_train_timesteps:
            raise ValueError(f"{self.name}: num_steps {num_steps} > num_train_timesteps {self.num_train_timesteps}")
        spaced = self._spaced(num_steps)
        if self.config["timestep_spacing"] == "linspace":
            spaced = spaced.round()
        self.timesteps = spaced.astype(np.float32)
        self._t = spaced.astype(np.int64)

    def _alpha(self, t: int) -> float:
        if t >= 0:
            return self.alphas_cumprod[t]
        return 1.0 if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    def _step(self, out, i, x, rng):
        t = int(self._t[i])
        # diffusers steps back by a fixed stride, not to the next listed timestep
        # (they differ for linspace/trailing spacing); keep that.
        a_t = self._alpha(t)
        a_prev = self._alpha(t - self.num_train_timesteps // self.num_steps)
        if self.config["prediction_type"] == "epsilon":
            x0 = (x - (1 - a_t) ** 0.5 * out) / a_t**0.5
            eps = out
        else:
            x0 = a_t**0.5 * x - (1 - a_t) ** 0.5 * out
            eps = a_t**0.5 * out + (1 - a_t) ** 0.5 * x
        if self.config["clip_sample"]:
            r = self.config["clip_sample_range"]
            x0 = np.clip(x0, -r, r)
        return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
