"""DPM-Solver++(2M) on flow sigmas: diffusers' DPMSolverMultistepScheduler with
use_flow_sigmas=True and prediction_type="flow_prediction" (SANA's scheduler).

The model predicts the velocity v = noise - x0; at sigma s the sample is (1 - s) x0 + s noise,
so alpha_t = 1 - s, sigma_t = s and x0 = x - s v. The steps are DPMPP2MSampler's.
`timesteps` are int(sigma * num_train_timesteps) as diffusers truncates them (SANA scales
them by the transformer's timestep_scale before the model call). Initial latents are plain
N(0, 1) noise and scale_model_input is the identity.

Those two options are what this sampler is, so they default to on (unlike the diffusers
class: see diffusers_defaults) and a config that turns either off is refused. Options that
only shape the DDPM schedule (betas, lambda_min_clipped, ...) don't affect flow sigmas and
are ignored, as diffusers ignores them here.
"""

from __future__ import annotations

import math

import numpy as np

from .base import OFF, _check
from .dpmpp_2m import DPMPP2MSampler


class FlowDPMSampler(DPMPP2MSampler):
    name = "flow_dpm"
    diffusers_class = "DPMSolverMultistepScheduler"  # the scheduler it reproduces (tests compare against it)
    # Options whose default here differs from the diffusers class's.
    diffusers_defaults = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    flow_matching = True
    DEFAULTS = {
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "timestep_spacing": "linspace",
        "flow_shift": 1.0,
    }
    UNSUPPORTED = {
        "use_flow_sigmas": (True,),
        "use_dynamic_shifting": OFF,
        "solver_order": (2,),
        "algorithm_type": ("dpmsolver++",),
        "solver_type": ("midpoint", "logrho", "bh1", "bh2"),  # diffusers maps the others to midpoint
        "thresholding": OFF,
        "use_karras_sigmas": OFF,  # these take precedence over flow sigmas in diffusers
        "use_exponential_sigmas": OFF,
        "use_beta_sigmas": OFF,
        "use_lu_lambdas": OFF,
        "final_sigmas_type": ("zero",),
    }

    def _init_schedule(self) -> None:
        _check(self.name, self.config, "prediction_type", ("flow_prediction",))
        # Unused with flow sigmas, but diffusers refuses other values all the same.
        _check(self.name, self.config, "timestep_spacing", ("leading", "trailing", "linspace"))
        self.sigmas = np.zeros(0, np.float32)

    def _set_schedule(self, num_steps: int) -> None:
        total, shift = self.num_train_timesteps, self.config["flow_shift"]
        s = 1.0 - np.linspace(1, 1 / total, num_steps + 1)
        s = np.flip(shift * s / (1 + (shift - 1) * s))[:-1].copy()
        self.timesteps = (s * total).astype(np.int64).astype(np.float32)  # truncated, as diffusers
        self.sigmas = np.append(s, 0.0).astype(np.float32)
        self._prev_x0 = None

    def _alpha_sigma_lambda(self, i: int) -> tuple[float, float, float]:
        s = float(self.sigmas[i])
        return 1 - s, s, math.log(1 - s) - math.log(s)

    def _data_prediction(self, out, i, x):
        return x - float(self.sigmas[i]) * out
