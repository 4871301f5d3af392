"""EDM Euler, matching diffusers' EDMEulerScheduler with s_churn=0 (deterministic)."""

from __future__ import annotations

import numpy as np

from .edm import EDMSampler


class EDMEulerSampler(EDMSampler):
    name = "edm_euler"
    diffusers_class = "EDMEulerScheduler"  # the scheduler it reproduces (tests compare against it)

    def _step(self, out, i, x, rng):
        # diffusers runs this step in float32: from sigma_max (80) one step lands near x0 (~1) by
        # cancelling terms of ~200, and its rounding there (~1e-5) exceeds the float64 result's
        # distance to it. Rounding the same way reproduces diffusers' images, not a better value.
        f = np.float32
        x, sigma, sigma_next = x.astype(f), f(self.sigmas[i]), f(self.sigmas[i + 1])
        x0 = self._x0(out.astype(f), i, x).astype(f)
        return (x + (x - x0) / sigma * (sigma_next - sigma)).astype(np.float64)
