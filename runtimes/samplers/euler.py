"""Euler sampler, matching diffusers' EulerDiscreteScheduler (s_churn=0, so no noise)."""

from __future__ import annotations

import numpy as np

from .base import OFF, Sampler


class EulerSampler(Sampler):
    name = "euler"
    diffusers_class = "EulerDiscreteScheduler"  # the scheduler it reproduces (tests compare against it)
    UNSUPPORTED = {
        **Sampler.UNSUPPORTED,
        "use_karras_sigmas": OFF,
        "use_exponential_sigmas": OFF,
        "use_beta_sigmas": OFF,
        "interpolation_type": ("linear",),
        "timestep_type": ("discrete",),
        "final_sigmas_type": ("zero",),
    }

    def _set_schedule(self, num_steps: int) -> None:
        # diffusers keeps these timesteps as float32 (linspace ones aren't whole numbers)
        # and interpolates sigmas at the float32 values, so round before interpolating.
        self.timesteps = self._spaced(num_steps).astype(np.float32)
        train_sigmas = np.sqrt((1 - self.alphas_cumprod) / self.alphas_cumprod)
        sigmas = np.interp(self.timesteps.astype(np.float64), np.arange(len(train_sigmas)), train_sigmas)
        self.sigmas = np.append(sigmas, 0.0)
        max_sigma = float(self.sigmas.max())
        # Leading spacing starts below the top timestep; diffusers then uses the
        # variance-preserving scale sqrt(sigma^2 + 1) for the initial noise.
        if self.config["timestep_spacing"] == "leading":
            self.init_noise_sigma = (max_sigma**2 + 1) ** 0.5
        else:
            self.init_noise_sigma = max_sigma

    def add_noise(self, sample: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return self._mix(sample, 1.0, noise, self.sigmas[0])

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        sigma = self.sigmas[self._index(i)]
        sample = np.asarray(sample)
        return (sample.astype(np.float64) / (sigma**2 + 1) ** 0.5).astype(sample.dtype)

    def _denoised(self, out: np.ndarray, sigma: float, x: np.ndarray) -> np.ndarray:
        if self.config["prediction_type"] == "epsilon":
            return x - sigma * out
        return out * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)

    def _step(self, out, i, x, rng):
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        derivative = (x - self._denoised(out, sigma, x)) / sigma
        return x + derivative * (sigma_next - sigma)
