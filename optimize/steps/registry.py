"""The pipeline-option registry: a name, a version, a config with defaults, image-gate limits.

An option either leaves the graphs alone (the runtime changes how it calls them) or writes
the graphs it needs (DeepCache's shallow U-Net). It sees the parent artifact and the new
artifact's temporary folder and manifest; apply.py links the parent's files first, gates
the result against the parent's images and records the option in the manifest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar

from ...runtimes.artifact import Artifact
from ...runtimes.errors import EdgegenError
from ...runtimes.step_options import KEY, KNOWN


class PipelineOption:
    name: ClassVar[str]
    defaults: ClassVar[dict] = {}
    psnr: ClassVar[float]        # end-to-end limits against the parent's images, worst prompt
    ssim: ClassVar[float]
    help: ClassVar[str] = ""

    def __init__(self, **config):
        unknown = set(config) - set(self.defaults)
        if unknown:
            raise EdgegenError(f"{self.name}: unknown option(s) {', '.join(sorted(unknown))}; "
                               f"it takes {', '.join(self.defaults) or 'none'}")
        self.config = {**self.defaults, **config}
        self.check_config()

    @property
    def version(self) -> int:
        return KNOWN[self.name]     # the runtime's implementation is what the version names

    def check_config(self) -> None:
        """Raise EdgegenError on a bad value."""

    def applicable(self, art: Artifact) -> str | None:
        """Why the option cannot apply to this artifact, or None."""
        return None

    def build(self, art: Artifact, tmp: Path, manifest: dict, say: Callable[[str], None]) -> dict:
        """Write what the option needs into `tmp` (already holding the parent's files) and edit
        `manifest`; returns extra facts for the option's manifest entry."""
        return {}

    def entry(self) -> dict:
        return {"version": self.version, "config": dict(self.config)}


OPTIONS: dict[str, type[PipelineOption]] = {}


def register(cls):
    OPTIONS[cls.name] = cls
    return cls


def get_option(name: str, **config) -> PipelineOption:
    from . import cfg_cutoff, deepcache, tiny_vae, vae_tiling  # noqa: F401  (register)

    if name not in OPTIONS:
        from .. import passes  # noqa: F401  (registers the graph passes, for the hint)
        from ..registry import PASSES

        hint = f" ({name} is a graph pass: --pass {name})" if name in PASSES else ""
        raise EdgegenError(f"unknown pipeline option {name!r}; known: {', '.join(sorted(OPTIONS))}{hint}")
    return OPTIONS[name](**config)


def parse(specs) -> list[PipelineOption]:
    """--pipeline-option NAME[:K=V,...] values."""
    from ..commands import parse_spec

    out, seen = [], set()
    for text in specs:
        name, cfg = parse_spec(text, "--pipeline-option")
        if name in seen:
            raise EdgegenError(f"pipeline option {name} given twice")
        seen.add(name)
        out.append(get_option(name, **cfg))
    return out


def in_use(art: Artifact) -> dict:
    return art.manifest.get(KEY) or {}
