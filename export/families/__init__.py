"""Registry of model families: one module per family, each defining FAMILY."""
from __future__ import annotations

import importlib

from ...runtimes.errors import EdgegenError
from ..family import Family

_MODULES = ("sd15", "sd21", "sd_turbo", "sdxl", "sdxl_turbo", "lcm_sd15", "flux_schnell", "flux_dev",
            "sd3_medium", "sd35_medium", "sd35_large", "sd35_large_turbo", "sana_1600m", "sana_sprint_1600m")


# Short names people type, declared once. Where an alias covers several families the first is
# the default and `--weights` decides (choose_family). Names such as "sdxl-lightning" are left
# out: no family has their config and sampler (Lightning's trailing-Euler 4/8-step SDXL UNets
# are not SDXL-Turbo's), so an alias would export something else than the user named.
ALIASES: dict[str, tuple[str, ...]] = {
    "flux": ("flux-schnell", "flux-dev"),
    "sd3": ("sd3-medium",),
    "sd35": ("sd35-medium",),
    "sd35-turbo": ("sd35-large-turbo",),
    "sana": ("sana-1600m",),
    "sana-sprint": ("sana-sprint-1600m",),
    "lcm": ("lcm-sd15",),
}


def families() -> dict[str, Family]:
    out = {}
    for mod in _MODULES:
        fam = importlib.import_module(f"{__name__}.{mod}").FAMILY
        out[fam.name] = fam
    return out


def get_family(name: str) -> Family:
    known = families()
    if name in ALIASES:
        return known[ALIASES[name][0]]
    if name not in known:
        raise EdgegenError(f"unknown family {name!r}; known: {', '.join(known)} (aliases: {', '.join(ALIASES)})")
    return known[name]


def choose_family(name: str, weights: str | None = None) -> str:
    """The family a name means: itself, or for an alias the one the weights are (by the
    denoiser config's architecture keys), else the alias's default."""
    get_family(name)   # unknown names fail here
    if name not in ALIASES:
        return name
    options = ALIASES[name]
    if weights and len(options) > 1:
        from ..weights import denoiser_config_of

        cfg = denoiser_config_of(weights, families()[options[0]].denoiser.component)
        if cfg is not None:
            for fam in options:
                if families()[fam].config_mismatch(cfg) is None:
                    return fam
    return options[0]
