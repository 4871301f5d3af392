"""EDM DPM-Solver++(2M), matching diffusers' EDMDPMSolverMultistepScheduler (Playground v2.5's).

In the EDM parameterization alpha_t = 1 and sigma_t = sigma, so lambda = -log(sigma). As in
diffusers, the first step is first order (no previous output) and so is the last (final sigma 0:
it lands on x0), whatever lower_order_final and euler_at_final say.
"""

from __future__ import annotations

import math

import numpy as np

from .base import OFF
from .edm import EDMSampler


class EDMDPMPP2MSampler(EDMSampler):
    name = "edm_dpmpp_2m"
    diffusers_class = "EDMDPMSolverMultistepScheduler"  # the scheduler it reproduces (tests compare against it)
    RAMP_DTYPE = np.float32
    DEFAULTS = {**EDMSampler.DEFAULTS, "solver_order": 2, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
                "lower_order_final": True, "euler_at_final": False}
    UNSUPPORTED = {
        "solver_order": (2,),
        "algorithm_type": ("dpmsolver++", "deis"),                  # diffusers maps deis to dpmsolver++
        "solver_type": ("midpoint", "logrho", "bh1", "bh2"),        # and these to midpoint
        "thresholding": OFF,
    }

    def _reset(self) -> None:
        self._prev_x0 = None

    def _step(self, out, i, x, rng):
        x0 = self._x0(out, i, x)
        prev_x0, self._prev_x0 = self._prev_x0, x0
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        if sigma_next == 0:
            return x0   # first order to sigma 0 lands exactly on x0
        h = math.log(sigma) - math.log(sigma_next)
        x_t = (sigma_next / sigma) * x - math.expm1(-h) * x0
        if i == 0 or prev_x0 is None:   # the state of a probe or an earlier trajectory is no history
            return x_t
        r0 = (math.log(self.sigmas[i - 1]) - math.log(sigma)) / h
        return x_t - 0.5 * math.expm1(-h) * (x0 - prev_x0) / r0
