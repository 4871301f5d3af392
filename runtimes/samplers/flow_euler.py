"""Flow-matching Euler, matching diffusers' FlowMatchEulerDiscreteScheduler (FLUX.1, SD3/3.5).

The model predicts the velocity v = noise - x0 and the sample moves along
x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v. `timesteps` are sigma * num_train_timesteps
(SD3 gives them to its transformer as is; FLUX.1 gives timesteps / 1000). The initial
latents are plain N(0, 1) noise (init_noise_sigma 1) and scale_model_input is the identity.

The schedule reproduces diffusers' quirks, and rounds where diffusers does:
- without `sigmas`, the range [sigma_max, sigma_min] comes from the shifted training schedule
  and is shifted again (so SD3's shift 3 is applied twice at the low end);
- FluxPipeline passes sigmas = linspace(1, 1/n, n) and mu = calculate_shift(image_seq_len);
  given sigmas are shifted in float32, computed ones in float64.
"""

from __future__ import annotations

import math

import numpy as np

from .base import OFF, Sampler, _check


def calculate_shift(image_seq_len, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """mu for dynamic shifting: linear in the latent sequence length (packed 2x2 tokens for FLUX).

    Same as diffusers.pipelines.flux.pipeline_flux.calculate_shift.
    """
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


class FlowEulerSampler(Sampler):
    name = "flow_euler"
    diffusers_class = "FlowMatchEulerDiscreteScheduler"  # the scheduler it reproduces (tests compare against it)
    flow_matching = True
    DEFAULTS = {
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "use_dynamic_shifting": False,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
        "time_shift_type": "exponential",
    }
    UNSUPPORTED = {
        "invert_sigmas": OFF,
        "shift_terminal": OFF,  # diffusers tests it for truth, so 0 is off too (0 == False)
        "use_karras_sigmas": OFF,
        "use_exponential_sigmas": OFF,
        "use_beta_sigmas": OFF,
        "stochastic_sampling": OFF,
    }

    def _init_schedule(self) -> None:
        cfg, total = self.config, self.num_train_timesteps
        _check(self.name, cfg, "time_shift_type", ("exponential", "linear"))
        # The training schedule, in float32 as diffusers builds it; only its ends are used.
        sigmas = np.linspace(1, total, total, dtype=np.float32)[::-1] / total
        if not cfg["use_dynamic_shifting"]:
            shift = cfg["shift"]
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.sigma_max, self.sigma_min = float(sigmas[0]), float(sigmas[-1])
        self.sigmas = np.zeros(0, np.float32)

    def mu_for(self, image_seq_len: int) -> float | None:
        """mu for set_timesteps from the config's shift settings, as FluxPipeline computes it;
        None when use_dynamic_shifting is off (the schedule then doesn't depend on mu)."""
        cfg = self.config
        if not cfg["use_dynamic_shifting"]:
            return None
        return calculate_shift(image_seq_len, cfg["base_image_seq_len"], cfg["max_image_seq_len"],
                               cfg["base_shift"], cfg["max_shift"])

    def set_timesteps(self, num_steps: int, mu: float | None = None,
                      sigmas: np.ndarray | None = None) -> None:
        """Like diffusers' set_timesteps(num_inference_steps, sigmas=sigmas, mu=mu).

        mu is required with use_dynamic_shifting (see mu_for) and ignored without it; sigmas,
        if given, must hold num_steps values (FluxPipeline: np.linspace(1, 1/n, n)).
        """
        num_steps = self._check_steps(num_steps)
        cfg, total = self.config, self.num_train_timesteps
        if cfg["use_dynamic_shifting"] and mu is None:
            raise ValueError(f"{self.name}: mu is required when use_dynamic_shifting is on (see mu_for)")
        if sigmas is None:
            t = np.linspace(self.sigma_max * total, self.sigma_min * total, num_steps)
            s = t / total  # float64, as diffusers computes it
        else:
            s = np.asarray(sigmas, np.float64).astype(np.float32)  # diffusers: np.array(...).astype(float32)
            if s.shape != (num_steps,):
                raise ValueError(f"{self.name}: sigmas must have num_steps={num_steps} values, got shape {s.shape}")
        # The same numpy expressions as diffusers: float32 given sigmas stay float32.
        if cfg["use_dynamic_shifting"]:
            if cfg["time_shift_type"] == "exponential":
                s = math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)
            else:
                s = mu / (mu + (1 / s - 1) ** 1.0)
        else:
            shift = cfg["shift"]
            s = shift * s / (1 + (shift - 1) * s)
        s = s.astype(np.float32)
        self.timesteps = s * np.float32(total)
        self.sigmas = np.append(s, np.float32(0))

    def add_noise(self, sample: np.ndarray, noise: np.ndarray) -> np.ndarray:
        # diffusers' scale_noise: the point at sigma on the straight path from the sample to the noise.
        s = float(self.sigmas[0])
        return self._mix(sample, 1.0 - s, noise, s)

    def _step(self, out, i, x, rng):
        dt = float(self.sigmas[i + 1] - self.sigmas[i])  # float32 difference, as in diffusers
        return x + dt * out
