"""DPM-Solver++(2M), matching diffusers' DPMSolverMultistepScheduler with its defaults.

With final_sigmas_type "zero" the last step is always first order, so lower_order_final
and euler_at_final don't change anything and are accepted as given.
"""

from __future__ import annotations

import math

import numpy as np

from .base import OFF, Sampler


class DPMPP2MSampler(Sampler):
    name = "dpmpp_2m"
    diffusers_class = "DPMSolverMultistepScheduler"  # the scheduler it reproduces (tests compare against it)
    UNSUPPORTED = {
        **Sampler.UNSUPPORTED,
        "solver_order": (2,),
        "algorithm_type": ("dpmsolver++",),
        "solver_type": ("midpoint", "logrho", "bh1", "bh2"),  # diffusers maps the others to midpoint
        "thresholding": OFF,
        "use_karras_sigmas": OFF,
        "use_exponential_sigmas": OFF,
        "use_beta_sigmas": OFF,
        "use_lu_lambdas": OFF,
        "use_flow_sigmas": OFF,
        "final_sigmas_type": ("zero",),
        "lambda_min_clipped": (-math.inf,),
        "variance_type": (None,),
    }

    def _set_schedule(self, num_steps: int) -> None:
        total, spacing = self.num_train_timesteps, self.config["timestep_spacing"]
        # Unlike Euler/DDIM, diffusers lays out n+1 points here and drops the last.
        if spacing == "linspace":
            t = np.linspace(0, total - 1, num_steps + 1).round()[::-1][:-1]
        elif spacing == "leading":
            ratio = total // (num_steps + 1)
            t = (np.arange(num_steps + 1) * ratio).round()[::-1][:-1] + self.config["steps_offset"]
        else:
            t = self._spaced(num_steps)
        t = t.astype(np.int64)
        self.timesteps = t.astype(np.float32)
        train_sigmas = np.sqrt((1 - self.alphas_cumprod) / self.alphas_cumprod)
        self.sigmas = np.append(np.interp(t, np.arange(total), train_sigmas), 0.0)
        self._prev_x0 = None

    def add_noise(self, sample: np.ndarray, noise: np.ndarray) -> np.ndarray:
        alpha, sigma, _ = self._alpha_sigma_lambda(0)
        return self._mix(sample, alpha, noise, sigma)

    def _alpha_sigma_lambda(self, i: int) -> tuple[float, float, float]:
        s = self.sigmas[i]
        alpha = 1 / (s**2 + 1) ** 0.5
        return alpha, s * alpha, -math.log(s)  # lambda = log(alpha / sigma_t)

    def _data_prediction(self, out, i, x):
        """The model output converted to x0 (diffusers' convert_model_output for dpmsolver++)."""
        alpha, sigma, _ = self._alpha_sigma_lambda(i)
        if self.config["prediction_type"] == "epsilon":
            return (x - sigma * out) / alpha
        return alpha * x - sigma * out

    def _step(self, out, i, x, rng):
        _, sigma, lam = self._alpha_sigma_lambda(i)
        x0 = self._data_prediction(out, i, x)
        prev_x0, self._prev_x0 = self._prev_x0, x0
        if self.sigmas[i + 1] == 0:
            # First-order update to sigma 0 lands exactly on x0.
            return x0
        alpha_t, sigma_t, lam_t = self._alpha_sigma_lambda(i + 1)
        h = lam_t - lam
        x_t = (sigma_t / sigma) * x - (alpha_t * math.expm1(-h)) * x0
        if i == 0 or prev_x0 is None:
            return x_t
        r0 = (lam - self._alpha_sigma_lambda(i - 1)[2]) / h
        return x_t - 0.5 * (alpha_t * math.expm1(-h)) * (x0 - prev_x0) / r0
