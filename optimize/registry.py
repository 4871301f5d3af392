"""The pass registry: every optimization is a small `Pass` with a name, a version and a
config that is recorded in the new artifact's manifest, plus default gate thresholds.

A pass reads one component graph (a path) and writes a new one into a folder; it never
sees the artifact folder, the manifest or the other components. `apply.optimize`
chains the passes, copies untouched components, runs the quality gate and writes the
artifact.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from ..runtimes.errors import EdgegenError
from ..runtimes.iospec import IOSpec


@dataclass(frozen=True)
class Thresholds:
    """Quality-gate limits: per component (outputs vs the parent graph on the same inputs
    from a sampler trajectory) and end to end (images vs the parent's at fixed latents)."""

    cosine: float    # min cosine similarity of component outputs, worst sample
    rel_err: float   # max relative L2 error ||new - parent|| / ||parent||, worst sample
    psnr: float      # min image PSNR in dB, worst prompt
    ssim: float      # min image SSIM, worst prompt

    NAMES: ClassVar[tuple[str, ...]] = ("cosine", "rel_err", "psnr", "ssim")

    def loosest(self, other: "Thresholds") -> "Thresholds":
        """Passes applied together: errors add up, so each limit is the looser of the two."""
        return Thresholds(min(self.cosine, other.cosine), max(self.rel_err, other.rel_err),
                          min(self.psnr, other.psnr), min(self.ssim, other.ssim))

    def with_overrides(self, overrides: dict[str, float]) -> "Thresholds":
        return replace(self, **overrides)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class NothingToDo(EdgegenError):
    """A pass found nothing to change in a component (no pattern matched): the component
    stays as it is, unless the user named it explicitly."""


@dataclass
class PassContext:
    component: str
    role: str                  # "denoiser", "text_encoder", "vae_decoder", "vae_encoder", "other"
    src: Path                  # graph to read (its external data lies beside it)
    dst: Path                  # empty folder to write model.onnx (+ model.onnx.data) into
    io: IOSpec
    calibration: list[dict[str, np.ndarray]]  # inputs captured along the parent's sampler trajectories
    say: Callable[[str], None] = lambda msg: None


@dataclass
class PassResult:
    files: list[str]                       # written into ctx.dst, relative to it
    precision: str | None = None           # new component precision, None: unchanged
    report: dict = field(default_factory=dict)  # recorded in the manifest (per component)


class Pass:
    """Subclasses set the class attributes and implement `apply`."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    group: ClassVar[str]                   # passes of one group ("precision") exclude each other
    order: ClassVar[int]                   # application order: sparsity < precision
    roles: ClassVar[tuple[str, ...]]       # default components, by role
    thresholds: ClassVar[Thresholds]
    needs_calibration: ClassVar[bool] = False
    defaults: ClassVar[dict] = {}
    help: ClassVar[str] = ""

    def __init__(self, **config):
        unknown = set(config) - set(self.defaults)
        if unknown:
            raise EdgegenError(f"{self.name}: unknown option(s) {', '.join(sorted(unknown))}")
        self.config = {**self.defaults, **config}
        self.check_config()

    def check_config(self) -> None:
        """Raise EdgegenError on a bad config value."""

    def applicable(self, comp: dict) -> str | None:
        """Why this pass cannot run on a component (its manifest record), or None."""
        if comp.get("precision", "fp32") != "fp32":
            return f"it is already {comp['precision']} (optimize an fp32 artifact)"
        return None

    def applicable_graph(self, path: Path) -> str | None:
        """Why this pass cannot run on this graph, found before calibration data is collected."""
        return None

    def apply(self, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def record(self) -> dict:
        return {"name": self.name, "version": self.version, "config": dict(self.config)}

    def __repr__(self):
        return f"{self.name}{self.config}"


PASSES: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    if cls.name in PASSES:
        raise ValueError(f"pass {cls.name} registered twice")
    PASSES[cls.name] = cls
    return cls


def get_pass(name: str, **config) -> Pass:
    from . import passes  # noqa: F401  (registers the built-in passes)

    if name not in PASSES:
        raise EdgegenError(f"unknown pass {name!r}; known: {', '.join(sorted(PASSES))}")
    return PASSES[name](**config)


def order_passes(passes: list[Pass]) -> list[Pass]:
    """Check a combination and put it in application order (pruning before quantization)."""
    seen: dict[str, Pass] = {}
    for p in passes:
        if p.group in seen:
            other = seen[p.group]
            if other.name == p.name:
                raise EdgegenError(f"pass {p.name} given twice")
            raise EdgegenError(f"incompatible passes: {other.name} and {p.name} both set the {p.group}; choose one")
        seen[p.group] = p
    if not passes:
        raise EdgegenError("no pass given (e.g. --int8, --fp16, --int4, --prune 2:4)")
    return sorted(passes, key=lambda p: p.order)
