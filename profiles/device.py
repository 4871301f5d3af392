"""Device profiles: one TOML file per device, built in (this folder) or dropped into $EDGEGEN_PROFILES_DIR.

Torch-free. Memory is in GiB (2**30 bytes): an "8 GB" GPU has 8192 MiB. A user
profile with the same name as a built-in one replaces it, so a number can be
corrected without editing the package.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..runtimes.errors import EdgegenError

BUILTIN_DIR = Path(__file__).parent
ENV_DIR = "EDGEGEN_PROFILES_DIR"

KINDS = ("gpu", "soc", "cpu")
MEMORY_KINDS = ("dedicated", "shared", "unified", "system")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8", "int4", "fp4")
BACKENDS = ("tensorrt", "cuda", "coreml", "openvino", "cpu", "onnxruntime")
MATCH_KEYS = ("gpu_name", "chip", "device_model", "cpu_flags")

REQUIRED = {
    "name": str, "description": str, "kind": str, "memory_gb": (int, float), "memory_kind": str,
    "bandwidth_gbs": (int, float), "peak_tflops": dict, "precisions": list, "backends": list,
    "match": dict, "sources": dict,
}
# Every number has to say where it came from.
SOURCED = ("memory_gb", "bandwidth_gbs", "peak_tflops", "reserve")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    kind: str
    memory_gb: float
    memory_kind: str
    bandwidth_gbs: float
    peak_tflops: dict[str, float]   # dense; int8/int4 figures are TOPS
    precisions: tuple[str, ...]
    backends: tuple[str, ...]
    match: dict
    sources: dict[str, str]
    reserved_gb: float | None = None
    usable_memory_fraction: float | None = None
    compute_capability: str | None = None
    path: str = ""

    @property
    def usable_gb(self) -> float:
        """Memory a pipeline can have: total less the OS / display / runtime context share."""
        if self.usable_memory_fraction is not None:
            return self.memory_gb * self.usable_memory_fraction
        return self.memory_gb - self.reserved_gb

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(precisions=list(self.precisions), backends=list(self.backends), usable_gb=round(self.usable_gb, 3))
        return d


def _bad(path: Path, msg: str) -> EdgegenError:
    return EdgegenError(f"device profile {path}: {msg}")


def parse_profile(path: Path) -> Profile:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot read: {e}") from None
    for key, typ in REQUIRED.items():
        if key not in data:
            raise _bad(path, f"missing required field {key!r}")
        if not isinstance(data[key], typ) or isinstance(data[key], bool):
            raise _bad(path, f"field {key!r} has the wrong type ({type(data[key]).__name__})")
    has_frac, has_res = "usable_memory_fraction" in data, "reserved_gb" in data
    if has_frac == has_res:
        raise _bad(path, "missing required field 'reserved_gb' (or 'usable_memory_fraction'; give exactly one)")
    for key, allowed in (("kind", KINDS), ("memory_kind", MEMORY_KINDS)):
        if data[key] not in allowed:
            raise _bad(path, f"{key} {data[key]!r} is not one of {', '.join(allowed)}")
    for key, allowed in (("precisions", PRECISIONS), ("backends", BACKENDS), ("peak_tflops", PRECISIONS)):
        unknown = [v for v in data[key] if v not in allowed]
        if unknown:
            raise _bad(path, f"{key} has unknown entries {unknown}; known: {', '.join(allowed)}")
    if not data["precisions"]:
        raise _bad(path, "precisions is empty")
    if any(not isinstance(v, (int, float)) or v <= 0 for v in data["peak_tflops"].values()):
        raise _bad(path, "peak_tflops values must be positive numbers")
    if data["memory_gb"] <= 0 or data["bandwidth_gbs"] <= 0:
        raise _bad(path, "memory_gb and bandwidth_gbs must be positive")
    if not any(k in data["match"] for k in MATCH_KEYS):
        raise _bad(path, f"match needs one of {', '.join(MATCH_KEYS)}")
    missing = [k for k in SOURCED if k not in data["sources"]]
    if missing:
        raise _bad(path, f"missing required field 'sources.{missing[0]}'")
    frac = data.get("usable_memory_fraction")
    if frac is not None and not 0 < frac <= 1:
        raise _bad(path, "usable_memory_fraction must be in (0, 1]")
    reserved = data.get("reserved_gb")
    if reserved is not None and not 0 <= reserved < data["memory_gb"]:
        raise _bad(path, "reserved_gb must be in [0, memory_gb)")
    if data["kind"] == "gpu" and "gpu_name" in data["match"] and "compute_capability" not in data:
        raise _bad(path, "missing required field 'compute_capability' (NVIDIA GPUs)")
    return Profile(
        name=data["name"], description=data["description"], kind=data["kind"],
        memory_gb=float(data["memory_gb"]), memory_kind=data["memory_kind"],
        bandwidth_gbs=float(data["bandwidth_gbs"]),
        peak_tflops={k: float(v) for k, v in data["peak_tflops"].items()},
        precisions=tuple(data["precisions"]), backends=tuple(data["backends"]),
        match=dict(data["match"]), sources=dict(data["sources"]),
        reserved_gb=None if reserved is None else float(reserved), usable_memory_fraction=frac,
        compute_capability=data.get("compute_capability"), path=str(path),
    )


def profile_dirs() -> list[Path]:
    dirs = [BUILTIN_DIR]
    extra = os.environ.get(ENV_DIR)
    if extra:
        p = Path(extra).expanduser()
        if not p.is_dir():
            raise EdgegenError(f"{ENV_DIR}={extra} is not a folder")
        dirs.append(p)
    return dirs


def load_profiles() -> dict[str, Profile]:
    """All profiles by name; later folders (the user's) override earlier ones."""
    out: dict[str, Profile] = {}
    for d in profile_dirs():
        seen: dict[str, Path] = {}
        for f in sorted(d.glob("*.toml")):
            prof = parse_profile(f)
            if prof.name in seen:
                raise _bad(f, f"name {prof.name!r} is already used by {seen[prof.name]}")
            seen[prof.name] = f
            out[prof.name] = prof
    return dict(sorted(out.items()))


def get_profile(name: str) -> Profile:
    known = load_profiles()
    if name not in known:
        raise EdgegenError(f"unknown device {name!r}; known: {', '.join(known)}")
    return known[name]


def check_precision(profile: Profile, precision: str) -> None:
    """Refuse, before any work, a precision the device cannot run."""
    if precision not in PRECISIONS:
        raise EdgegenError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision not in profile.precisions:
        why = f" (compute capability {profile.compute_capability})" if profile.compute_capability else ""
        raise EdgegenError(f"{profile.name} does not support {precision}{why}; "
                           f"it supports: {', '.join(profile.precisions)}")


def match_host(profile: Profile, gpu_names: list[str] = (), cpu_flags: set[str] = frozenset(),
               chip: str = "", device_model: str = "", memory_gb: float | None = None) -> bool:
    """Whether the host described by these facts is this device (bench uses it to refuse a mismatch).

    Every criterion in the profile's [match] table must hold; `exclude` lists substrings
    that rule a name out ("RTX 4060" must not match "RTX 4060 Ti"). memory_gb, when the
    host reports it, must be within 10% for gpu/soc profiles (the RTX 3060 also ships with 8 GB).
    """
    m, exclude = profile.match, profile.match.get("exclude", [])

    def named(want: str, names) -> bool:
        return any(want.lower() in n.lower() and not any(x.lower() in n.lower() for x in exclude) for n in names)

    if "gpu_name" in m and not named(m["gpu_name"], gpu_names):
        return False
    if "chip" in m and not named(m["chip"], [chip]):
        return False
    if "device_model" in m and not named(m["device_model"], [device_model]):
        return False
    if not set(m.get("cpu_flags", [])) <= set(cpu_flags):
        return False
    if memory_gb is not None and profile.kind != "cpu" and abs(memory_gb - profile.memory_gb) > 0.1 * profile.memory_gb:
        return False
    return True
