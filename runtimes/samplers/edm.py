"""The EDM formulation (Karras et al. 2022) shared by the EDM samplers (Playground v2.5).

The model sees sample * c_in at noise level sigma and the timestep c_noise = log(sigma) / 4;
its output becomes the clean estimate x0 = c_skip * sample + c_out * output. Sigmas follow the
Karras rho-schedule between sigma_max and sigma_min, with a final 0. diffusers builds that
schedule in float64 for EDMEulerScheduler and in float32 for EDMDPMSolverMultistepScheduler:
`RAMP_DTYPE` copies each, so that the step sizes agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np

from .base import Sampler, _check


class EDMSampler(Sampler):
    edm = True
    RAMP_DTYPE = np.float64
    DEFAULTS = {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "sigma_schedule": "karras",
                "num_train_timesteps": 1000, "prediction_type": "epsilon", "rho": 7.0, "final_sigmas_type": "zero"}
    UNSUPPORTED: dict = {}

    def _init_schedule(self) -> None:
        cfg = self.config
        _check(self.name, cfg, "prediction_type", ("epsilon", "v_prediction"))
        _check(self.name, cfg, "sigma_schedule", ("karras",))
        _check(self.name, cfg, "final_sigmas_type", ("zero",))
        self.init_noise_sigma = (cfg["sigma_max"] ** 2 + 1) ** 0.5

    def _set_schedule(self, num_steps: int) -> None:
        cfg, dt = self.config, self.RAMP_DTYPE
        ramp = _torch_linspace01(num_steps, dt)
        lo, hi = (dt(cfg[k] ** (1 / cfg["rho"])) for k in ("sigma_min", "sigma_max"))
        sigmas = ((hi + ramp * (lo - hi)) ** dt(cfg["rho"])).astype(np.float32)
        self.timesteps = (np.float32(0.25) * np.log(sigmas)).astype(np.float32)
        self.sigmas = np.append(sigmas, np.float32(0)).astype(np.float64)
        self._reset()

    def _reset(self) -> None:
        """Clear multistep state (set_timesteps starts a new trajectory)."""

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        sigma = self.sigmas[self._index(i)]
        sample = np.asarray(sample)
        return (sample.astype(np.float64) / (sigma**2 + self.config["sigma_data"] ** 2) ** 0.5).astype(sample.dtype)

    def add_noise(self, sample: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return self._mix(sample, 1.0, noise, self.sigmas[0])

    def _x0(self, out: np.ndarray, i: int, x: np.ndarray) -> np.ndarray:
        sigma, sd = self.sigmas[i], self.config["sigma_data"]
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2) ** 0.5
        if self.config["prediction_type"] == "v_prediction":
            c_out = -c_out
        return c_skip * x + c_out * out


def _torch_linspace01(n: int, dtype) -> np.ndarray:
    """torch.linspace(0, 1, n) as torch computes it (from the start for the first half, from the
    end for the second): numpy's float32 linspace differs by an ulp, which rho = 7 amplifies."""
    if n == 1:
        return np.zeros(1, dtype)
    step = dtype(1) / dtype(n - 1)
    i = np.arange(n)
    return np.where(i < n // 2, i.astype(dtype) * step, dtype(1) - (n - 1 - i).astype(dtype) * step).astype(dtype)
