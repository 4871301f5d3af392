"""Numpy diffusion samplers matching diffusers' schedulers; no torch needed at runtime."""

from __future__ import annotations

from .base import Sampler
from .ddim import DDIMSampler
from .dpmpp_2m import DPMPP2MSampler
from .edm_dpmpp_2m import EDMDPMPP2MSampler
from .edm_euler import EDMEulerSampler
from .euler import EulerSampler
from .euler_a import EulerAncestralSampler
from .flow_dpm import FlowDPMSampler
from .flow_euler import FlowEulerSampler, calculate_shift
from .lcm import LCMSampler
from .scm import SCMSampler

SAMPLERS: dict[str, type] = {
    cls.name: cls
    for cls in (EulerSampler, EulerAncestralSampler, DDIMSampler, LCMSampler, DPMPP2MSampler,
                FlowEulerSampler, FlowDPMSampler, SCMSampler, EDMEulerSampler, EDMDPMPP2MSampler)
}


def make_sampler(name: str, scheduler_config: dict) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](scheduler_config or {})


__all__ = [
    "SAMPLERS", "Sampler", "make_sampler",
    "DDIMSampler", "DPMPP2MSampler", "EDMDPMPP2MSampler", "EDMEulerSampler", "EulerAncestralSampler", "EulerSampler", "LCMSampler",
    "FlowDPMSampler", "FlowEulerSampler", "SCMSampler", "calculate_shift",
]
