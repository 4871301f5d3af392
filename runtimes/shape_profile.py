"""A compile-time shape profile: image size and batch, fixed or as ranges, narrowed onto every
component's IOSpec.

The user speaks in images (`--height 512 --width 512 --batch 1:4`); components speak in their
own dims (`latent_height`, `img_seq`, `batch` doubled under classifier-free guidance, ...). This
file is the one place that maps the first onto the second, from the pipeline recipe alone (no
family names). The result is a narrowed IOSpec per component: its (min, opt, max) ranges are the
TensorRT / TRT-RTX profiles, its fully fixed form the OpenVINO/NPU reshape and the CUDA-graph
shape, and the runtime's feed checks refuse anything outside it. No shape fact is restated.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import EdgegenError
from .iospec import Dim, IOSpec


@dataclass(frozen=True)
class Range:
    min: int
    opt: int
    max: int

    @property
    def fixed(self) -> bool:
        return self.min == self.max

    def to_list(self) -> list[int]:
        return [self.min, self.opt, self.max]


def parse_range(text: str | int | None, what: str) -> Range | None:
    """'512' (fixed), '256:768' (opt = min), '256:512:768' (min:opt:max); None stays None."""
    if text is None:
        return None
    parts = str(text).split(":")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise EdgegenError(f"--{what} {text}: expected N, MIN:MAX or MIN:OPT:MAX (integers)") from None
    if len(vals) == 1:
        vals = vals * 3
    elif len(vals) == 2:
        vals = [vals[0], vals[0], vals[1]]
    elif len(vals) != 3:
        raise EdgegenError(f"--{what} {text}: expected N, MIN:MAX or MIN:OPT:MAX")
    lo, opt, hi = vals
    if not 1 <= lo <= opt <= hi:
        raise EdgegenError(f"--{what} {text}: need 1 <= min <= opt <= max")
    return Range(lo, opt, hi)


@dataclass(frozen=True)
class ShapeProfile:
    """Requested image height/width (pixels) and images per call; None = the artifact's range."""

    height: Range | None = None
    width: Range | None = None
    batch: Range | None = None

    @staticmethod
    def parse(height=None, width=None, batch=None) -> "ShapeProfile":
        return ShapeProfile(parse_range(height, "height"), parse_range(width, "width"), parse_range(batch, "batch"))

    @property
    def static(self) -> bool:
        """Every image-derived dim is fixed: one shape bucket (CUDA graphs, NPU)."""
        return all(r is not None and r.fixed for r in (self.height, self.width, self.batch))

    def to_dict(self) -> dict:
        return {k: None if getattr(self, k) is None else getattr(self, k).to_list()
                for k in ("height", "width", "batch")}

    @staticmethod
    def from_dict(d: dict | None) -> "ShapeProfile":
        d = d or {}
        return ShapeProfile(*(Range(*d[k]) if d.get(k) else None for k in ("height", "width", "batch")))


def cfg_batch(recipe: dict) -> int:
    """How many denoiser rows one image takes at the recipe's default guidance (2 under CFG)."""
    return 2 if recipe.get("guidance") == "cfg" and recipe["defaults"]["guidance"] > 1.0 else 1


# Component dims an image size decides (batch aside); image_sizes says how.
IMAGE_DIMS = ("height", "width", "latent_height", "latent_width", "img_seq")


def image_sizes(recipe: dict, height: int | None, width: int | None) -> dict[str, int]:
    """The image-derived dims at one image size: pixels, latent grid, packed token count."""
    scale, patch = recipe["vae_scale_factor"], recipe.get("patch", 1)
    out = {}
    if height is not None:
        out.update(height=height, latent_height=height // scale)
    if width is not None:
        out.update(width=width, latent_width=width // scale)
    if height is not None and width is not None:
        out["img_seq"] = (height // scale // patch) * (width // scale // patch)
    return out


def image_dims(recipe: dict, role: str, prof: ShapeProfile) -> dict[str, Range]:
    """Wanted range of each image-derived dim a component may have, keyed by dim name."""
    h, w = prof.height, prof.width
    ends = [image_sizes(recipe, getattr(h, e, None), getattr(w, e, None)) for e in ("min", "opt", "max")]
    out: dict[str, Range] = {d: Range(*(s[d] for s in ends)) for d in ends[0]}
    b = prof.batch
    if b is not None:
        if role == "denoiser":
            # The loop batches [uncond, cond] when guidance > 1: a range covers both forms, a fixed
            # profile is the default guidance's form (one shape, as CUDA graphs and NPUs need).
            k = cfg_batch(recipe)
            out["batch"] = Range(b.min * k, b.opt * k, b.max * k) if b.fixed else \
                Range(b.min, b.opt * k, b.max * (2 if recipe.get("guidance") == "cfg" else 1))
        else:
            out["batch"] = b
    return out


def narrow(io: IOSpec, want: dict[str, Range], component: str) -> IOSpec:
    """`io` with its dims restricted to `want`; a wanted range outside the exported one is an error."""
    dims = dict(io.dims)
    for name, r in want.items():
        d = dims.get(name)
        if d is None:
            continue
        for v in {r.min, r.opt, r.max}:
            problem = d.check(v)
            if problem:
                raise EdgegenError(f"{component}: the requested shape gives {problem} (exported: "
                                   f"{d.min}..{d.max})")
        dims[name] = Dim(name, r.min, r.opt, r.max, d.multiple)
    return replace(io, dims=dims)


def component_ios(manifest: dict, prof: ShapeProfile, roles: dict[str, str],
                  fixed_other: dict[str, dict[str, int]] | None = None) -> dict[str, IOSpec]:
    """Every component's IOSpec narrowed to `prof`. `fixed_other` (component -> dim -> value)
    pins the dims an image size does not decide (text length) where the target needs all dims
    static; the compile stage takes those values from the parent's own sampler run."""
    recipe = manifest["pipeline"]
    out = {}
    for name, comp in manifest["components"].items():
        io = IOSpec.from_dict(comp["io"])
        want = image_dims(recipe, roles.get(name, "other"), prof)
        for dim, v in (fixed_other or {}).get(name, {}).items():
            want.setdefault(dim, Range(v, v, v))
        out[name] = narrow(io, want, name)
    return out


def narrow_resolution(recipe: dict, prof: ShapeProfile) -> dict:
    """The recipe with its resolution range and default size inside the profile."""
    r = dict(recipe)
    lo, hi = r["resolution"]
    sides = [x for x in (prof.height, prof.width) if x is not None]
    for x in sides:
        if x.min < lo or x.max > hi:
            raise EdgegenError(f"requested size {x.min}..{x.max} is outside the artifact's resolution range "
                               f"[{lo}, {hi}]")
        step = max(r["size_multiple"], 8)
        for v in {x.min, x.opt, x.max}:
            if v % step:
                raise EdgegenError(f"requested size {v} is not a multiple of {step}")
    if sides:
        r["resolution"] = [min(x.min for x in sides), max(x.max for x in sides)]
        # Per side, so that a fixed 512x768 refuses 768x512 before any graph is run.
        r["sides"] = {**r.get("sides", {}), **{k: [x.min, x.max] for k, x in (("height", prof.height),
                                                                             ("width", prof.width)) if x is not None}}
        d = dict(r["defaults"])
        if prof.height is not None:
            d["height"] = prof.height.opt
        if prof.width is not None:
            d["width"] = prof.width.opt
        r["defaults"] = d
    if prof.batch is not None:
        r["batch"] = prof.batch.to_list()
    return r


def recipe_profile(recipe: dict) -> ShapeProfile:
    """The sizes a recipe was narrowed to (by a static or ranged export), as a profile that later
    stages start from, so that a static export stays static through optimize and compile."""
    sides, d = recipe.get("sides", {}), recipe["defaults"]
    side = {k: Range(sides[k][0], d[k], sides[k][1]) if k in sides else None for k in ("height", "width")}
    return ShapeProfile(side["height"], side["width"], Range(*recipe["batch"]) if "batch" in recipe else None)


def is_static(io: IOSpec) -> bool:
    return all(d.min == d.max for d in io.dims.values())
