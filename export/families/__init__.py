"""Registry of model families: one module per family, each defining FAMILY."""
from __future__ import annotations

import importlib
from pathlib import Path

from ...runtimes.errors import EdgegenError
from ..family import Family

_MODULES = ("sd15", "sd21", "sd_turbo", "sdxl", "sdxl_turbo", "lcm_sd15", "flux_schnell", "flux_dev",
            "sd3_medium", "sd35_medium", "sd35_large", "sd35_large_turbo", "sana_1600m", "sana_sprint_1600m",
            "sd15_inpaint", "sdxl_inpaint", "playground_v25", "auraflow", "edgegen_shapes")


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


# Names people try that have no open weights: saying so beats "unknown family".
CLOSED = {"dalle": "OpenAI's DALL-E", "gptimage": "OpenAI's GPT Image", "midjourney": "Midjourney",
          "imagen": "Google's Imagen", "firefly": "Adobe Firefly"}


def get_family(name: str) -> Family:
    known = families()
    if name in ALIASES:
        return known[ALIASES[name][0]]
    if name not in known:
        key = "".join(c for c in name.lower() if c.isalnum())
        closed = next((v for k, v in CLOSED.items() if key.startswith(k)), None)
        if closed:
            raise EdgegenError(f"{name}: {closed} is a closed model whose weights are not public, so there is "
                               f"nothing to export; open families: {', '.join(known)}")
        raise EdgegenError(f"unknown family {name!r}; known: {', '.join(known)} (aliases: {', '.join(ALIASES)})")
    return known[name]


def choose_family(name: str | None, weights: str | None = None) -> str:
    """The family a name means: itself, or for an alias the one the weights are; with no name,
    the one the weights' own configs say (infer.py), or a one-line error."""
    from .infer import candidates, infer, read_model

    if name is None:
        if weights and weights.endswith(".safetensors") and Path(weights).is_file():
            from .infer import single_file_family

            fam, kind = single_file_family(weights)
            if fam is None:
                raise EdgegenError(f"{weights}: diffusers reads it as a {kind!r} checkpoint, which no family "
                                   f"exports; families: {', '.join(families())}")
            return fam
        model = read_model(weights) if weights else None
        if model is None:
            raise EdgegenError("name a family (edgegen families lists them), or give --weights a diffusers folder "
                               "or cached hub id to infer it from")
        return infer(model, families())[0]
    get_family(name)   # unknown names fail here
    if name not in ALIASES:
        return name
    options = ALIASES[name]
    model = read_model(weights) if weights and len(options) > 1 else None
    if model is not None:
        fits = [f for f in candidates(model, families()) if f in options]
        if fits:
            return fits[0]
    return options[0]
