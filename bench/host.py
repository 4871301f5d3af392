"""What this host is, in the terms device profiles match on, and whether a profile is this host.

Torch-free. GPU facts come from NVML (the `nvidia-ml-py` package, module `pynvml`) when it is
importable, else from `nvidia-smi`; a host with neither has no NVIDIA GPU as far as bench knows.
"""
from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field

from ..profiles.device import Profile, load_profiles, match_host
from ..runtimes.errors import EdgegenError
from ..runtimes.host import Gpu, cpu_flags, gpus

GiB = 2 ** 30


@dataclass
class Host:
    cpu_flags: set[str] = field(default_factory=set)
    gpus: list[Gpu] = field(default_factory=list)
    chip: str = ""           # Apple brand string
    device_model: str = ""   # /proc/device-tree/model (Jetson)
    ram_gb: float | None = None

    def to_dict(self) -> dict:
        return {"gpus": [{"name": g.name, "memory_gb": round(g.memory_gb, 2)} for g in self.gpus],
                "chip": self.chip or None, "device_model": self.device_model or None,
                "ram_gb": None if self.ram_gb is None else round(self.ram_gb, 1),
                "cpu_flags_checked": sorted(self.cpu_flags & _INTERESTING)}

    def summary(self) -> str:
        parts = []
        if self.gpus:
            parts.append(", ".join(f"{g.name} ({g.memory_gb:.1f} GiB)" for g in self.gpus))
        else:
            parts.append("no NVIDIA GPU")
        if self.chip:
            parts.append(self.chip)
        if self.device_model:
            parts.append(self.device_model)
        simd = sorted(self.cpu_flags & _INTERESTING)
        parts.append("CPU flags: " + (" ".join(simd) if simd else "none of " + " ".join(sorted(_INTERESTING))))
        return "; ".join(parts)


# The flags profiles match on, for messages (the full list is long).
_INTERESTING = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx_vnni", "neon", "asimd"}


def _chip() -> str:
    if platform.system() != "Darwin":
        return ""
    try:
        return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _device_model() -> str:
    try:
        with open("/proc/device-tree/model", "rb") as f:
            return f.read().rstrip(b"\0").decode(errors="replace").strip()
    except OSError:
        return ""


def _ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (ValueError, OSError, AttributeError):
        return None


def detect() -> Host:
    return Host(cpu_flags(), list(gpus()), _chip(), _device_model(), _ram_gb())


def matches(profile: Profile, host: Host) -> bool:
    """profiles.device.match_host with this host's facts: a GPU profile must match one GPU
    (name and memory), a shared/unified-memory device is checked against system RAM."""
    if "gpu_name" in profile.match:
        return any(match_host(profile, [g.name], host.cpu_flags, host.chip, host.device_model, g.memory_gb)
                   for g in host.gpus)
    mem = host.ram_gb if profile.kind != "cpu" else None
    return match_host(profile, [g.name for g in host.gpus], host.cpu_flags, host.chip, host.device_model, mem)


def require_match(profile: Profile, host: Host) -> None:
    """Refuse to measure on a host the profile does not describe (one line, names what does match)."""
    if matches(profile, host):
        return
    fitting = [p.name for p in load_profiles().values() if matches(p, host)]
    want = ", ".join(f"{k.replace('_', ' ')} {' + '.join(v) if isinstance(v, list) else repr(v)}"
                     for k, v in profile.match.items() if k != "exclude")
    hint = f"profiles matching this host: {', '.join(fitting)}" if fitting else "no profile matches this host"
    raise EdgegenError(f"--device {profile.name} does not match this host (profile wants {want}; host has "
                       f"{host.summary()}); {hint}; --estimate gives a roofline estimate without measuring")


def runtime_device(profile: Profile) -> str:
    """The onnxruntime device edgegen's pipeline uses on a host matching `profile`."""
    if profile.kind in ("gpu", "soc") and ("gpu_name" in profile.match or "device_model" in profile.match) \
            and "cuda" in profile.backends:
        return "cuda"
    return "cpu"
