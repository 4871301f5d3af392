"""Euler ancestral sampler, matching diffusers' EulerAncestralDiscreteScheduler."""

from __future__ import annotations

from .base import Sampler
from .euler import EulerSampler


class EulerAncestralSampler(EulerSampler):
    name = "euler_a"
    diffusers_class = "EulerAncestralDiscreteScheduler"  # the scheduler it reproduces (tests compare against it)
    stochastic = True
    # EulerAncestralDiscreteScheduler has no karras/interpolation options: diffusers
    # ignores them for this class, so do we.
    UNSUPPORTED = Sampler.UNSUPPORTED

    def _step(self, out, i, x, rng):
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        # = sqrt(sigma_next^2 - sigma_up^2), without the cancellation
        sigma_down = sigma_next**2 / sigma
        derivative = (x - self._denoised(out, sigma, x)) / sigma
        x = x + derivative * (sigma_down - sigma)
        # diffusers draws on every step, the last one (sigma_up = 0) included.
        return x + self._noise(rng, x.shape) * sigma_up
