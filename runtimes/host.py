"""What this machine is: CPU flags and model, NVIDIA GPUs with compute capability and driver.

Torch-free, and free of every backend library: compile fingerprints, capability checks and
bench's profile matching all read the host through here. GPU facts come from NVML (the
`nvidia-ml-py` package, module `pynvml`) when it is importable, else from `nvidia-smi`; a host
with neither has no NVIDIA GPU as far as edgegen knows.
"""
from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

GiB = 2 ** 30

# CPU features that change what a backend may compute in (bf16, VNNI int8) or how fast.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8",
             "avx_vnni", "neon", "asimd")


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float                   # GiB, as NVML reports the total
    compute_capability: str | None = None   # "8.9"
    driver: str | None = None


def cpu_flags() -> set[str]:
    """/proc/cpuinfo's `flags` (x86) or `Features` (ARM) of the first CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return {"neon", "asimd"}
    return set()


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _nvml_gpus() -> list[Gpu] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            out.append(Gpu(name, pynvml.nvmlDeviceGetMemoryInfo(h).total / GiB, f"{major}.{minor}", driver))
        return out
    finally:
        pynvml.nvmlShutdown()


def _smi_gpus() -> list[Gpu]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,compute_cap,driver_version",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in r.stdout.splitlines() if r.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            gpus.append(Gpu(",".join(parts[:-3]), float(parts[-3]) / 1024, parts[-2], parts[-1]))
        except ValueError:
            continue
    return gpus


@lru_cache(maxsize=1)
def gpus() -> tuple[Gpu, ...]:
    found = _nvml_gpus()
    return tuple(found if found is not None else _smi_gpus())
