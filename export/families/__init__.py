"""Registry of model families: one module per family, each defining FAMILY."""
from __future__ import annotations

import importlib

from ...runtimes.errors import EdgegenError
from ..family import Family

_MODULES = ("sd15", "sd21", "sd_turbo", "sdxl", "sdxl_turbo", "lcm_sd15", "flux_schnell", "flux_dev",
            "sd3_medium", "sd35_medium", "sd35_large", "sd35_large_turbo", "sana_1600m", "sana_sprint_1600m")


def families() -> dict[str, Family]:
    out = {}
    for mod in _MODULES:
        fam = importlib.import_module(f"{__name__}.{mod}").FAMILY
        out[fam.name] = fam
    return out


def get_family(name: str) -> Family:
    known = families()
    if name not in known:
        raise EdgegenError(f"unknown family {name!r}; known: {', '.join(known)}")
    return known[name]
