"""The image sizes and batch an export covers: the family's defaults, bounded by what the model
itself can take, changed by the user's options.

The range decides every component's IOSpec before tracing (so the trace, the validation points,
the ONNX dims and the runtime checks all come from it); a fixed `--height/--width/--batch` is then
applied by the same narrowing `edgegen compile` uses (runtimes/shape_profile.py), which maps image
sizes onto each component's own dims. Torch-free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..runtimes.errors import EdgegenError
from ..runtimes.iospec import IOSpec
from ..runtimes.shape_profile import Range, ShapeProfile, image_dims, narrow, narrow_resolution, parse_range


@dataclass(frozen=True)
class Limits:
    """What the model allows: sides are multiples of `multiple`, at most `max_side` (None: no limit)."""

    multiple: int
    max_side: int | None = None
    why: str = ""        # how max_side follows from the config, for the error message


@dataclass(frozen=True)
class SizeRequest:
    """The user's size options (None: not given)."""

    height: int | None = None
    width: int | None = None
    batch: str | None = None         # N or MIN:MAX images per call
    min_size: int | None = None
    max_size: int | None = None

    @property
    def profile(self) -> ShapeProfile:
        return ShapeProfile(parse_range(self.height, "height"), parse_range(self.width, "width"),
                            parse_range(self.batch, "batch"))

    @property
    def static(self) -> bool:
        return self.profile.static

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("height", "width", "batch", "min_size", "max_size")}

    def check(self) -> None:
        """The checks that need no model: run before anything is loaded."""
        for name in ("height", "width", "min_size", "max_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise EdgegenError(f"--{name.replace('_', '-')} {v}: must be a positive number of pixels")
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise EdgegenError(f"--min-size {self.min_size} is larger than --max-size {self.max_size}")
        for side in ("height", "width"):
            v = getattr(self, side)
            for bound, ok in (("min_size", lambda b: v >= b), ("max_size", lambda b: v <= b)):
                b = getattr(self, bound)
                if v is not None and b is not None and not ok(b):
                    raise EdgegenError(f"--{side} {v} is outside --min-size/--max-size "
                                       f"[{self.min_size or '-'}, {self.max_size or '-'}]")
        self.profile   # parses --batch


def resolution(default: tuple[int, int, int], limits: Limits, req: SizeRequest) -> tuple[int, int, int]:
    """(min, opt, max) side in pixels: the family's default range, widened or narrowed by the user,
    within the model's limits. A user value beyond a limit is an error; a default beyond it is cut."""
    m = math.lcm(8, limits.multiple)    # the runtime takes sides in multiples of 8 as well
    asked = [(f"--{k.replace('_', '-')}", getattr(req, k)) for k in ("min_size", "max_size", "height", "width")]
    for flag, v in asked:
        if v is None:
            continue
        if v % m:
            raise EdgegenError(f"{flag} {v} is not a multiple of {m}, this model's size step")
        if limits.max_side is not None and v > limits.max_side:
            raise EdgegenError(f"{flag} {v} is beyond this model's limit of {limits.max_side} px ({limits.why})")
    lo, opt, hi = default
    lo = req.min_size if req.min_size is not None else lo
    hi = req.max_size if req.max_size is not None else hi
    fixed = [v for v in (req.height, req.width) if v is not None]
    if fixed and req.min_size is None:
        lo = min([lo, *fixed])
    if fixed and req.max_size is None:
        hi = max([hi, *fixed])
    if limits.max_side is not None:
        hi = min(hi, limits.max_side)
    lo = -(-max(lo, m) // m) * m
    hi = hi // m * m
    if lo > hi:
        raise EdgegenError(f"no size fits: the range [{lo}, {hi}] is empty for this model (step {m}"
                           + (f", limit {limits.max_side} px: {limits.why})" if limits.max_side else ")"))
    opt = min(max(opt // m * m, lo), hi)
    if fixed:
        opt = fixed[0]
    return lo, opt, hi


def narrow_export(ios: dict[str, IOSpec], recipe: dict, req: SizeRequest, text_encoders: set[str],
                  max_batch: int) -> tuple[dict[str, IOSpec], dict]:
    """Each component's IOSpec and the recipe narrowed to the user's fixed sizes and batch.

    With every image size and the batch fixed, the other dims of the denoiser and VAE (text
    length) are pinned at their opt, the length the runtime feeds, so their graphs are fully
    static (NPU, CoreML, CUDA graphs). Text encoders keep their sequence dims: CLIP and T5 take
    a fixed length already, and Gemma (SANA) is fed two lengths (prompt and negative)."""
    prof = req.profile
    if prof.batch is not None and prof.batch.max * 2 > max_batch:
        raise EdgegenError(f"--batch {req.batch}: exports take up to {max_batch // 2} images per call "
                           f"({max_batch} denoiser rows under guidance)")
    if prof == ShapeProfile():
        return ios, recipe
    recipe = narrow_resolution(recipe, prof)
    out = {}
    for name, io in ios.items():
        role = "denoiser" if name == recipe["denoiser"] else "other"
        want = image_dims(recipe, role, prof)
        if prof.static and name not in text_encoders:
            for d, dim in io.dims.items():
                want.setdefault(d, Range(dim.opt, dim.opt, dim.opt))
        out[name] = narrow(io, want, name)
    return out, recipe

