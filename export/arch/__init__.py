"""One module per pipeline architecture: its denoiser component and the runtime recipe.

Each module exposes `components(family, pipe, resolution) -> list[Component]` and
`recipe(family, pipe, resolution) -> dict` (the manifest's "pipeline" section).
"""
from __future__ import annotations

import importlib


def get_arch(name: str):
    return importlib.import_module(f"{__name__}.{name}")
