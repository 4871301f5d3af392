"""Peak memory of the process that runs one measured configuration.

CPU: every configuration (edgegen's runtime, the torch baseline, ...) runs in its own child
process, so its peak resident set belongs to it alone. The child reads VmHWM ("high water
mark", the peak RSS of its own address space) and VmRSS from /proc/self/status at checkpoints
(after loading, after each run, at the end); the final VmHWM is the reported peak. The kernel's
ru_maxrss for the child (os.wait4 in the parent) is recorded as a cross-check but not used:
Linux folds the parent's high-water mark into the child's maxrss when the child execs after
fork/vfork, so it is at least the parent's peak (hundreds of MB in a test process holding torch).
Where /proc is missing (macOS), the child's own ru_maxrss is used.

GPU: NVML (`pynvml`, from the nvidia-ml-py package) is sampled in a background thread every
few milliseconds: this process's used memory from nvmlDeviceGetComputeRunningProcesses, or,
where the driver does not report per-process figures (containers, WSL), the device's used
memory less what was in use when sampling started. The torch baseline also reports
torch.cuda.max_memory_allocated / max_memory_reserved (the caching allocator's view, without
the CUDA context).
"""
from __future__ import annotations

import os
import sys
import threading
import time

GiB = 2 ** 30


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes (empty where /proc is missing)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def maxrss_bytes(ru_maxrss: int) -> int:
    """ru_maxrss is KiB on Linux, bytes on macOS."""
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


def self_peak_rss() -> int:
    import resource

    hwm = proc_status().get("VmHWM")
    return hwm if hwm is not None else maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class VramSampler:
    """Peak GPU memory of this process while active, by polling NVML. `available` is False (and
    `peak` None) where NVML cannot be used; the caller then says so instead of reporting a number."""

    def __init__(self, index: int = 0, interval: float = 0.005):
        self.index, self.interval = index, interval
        self.peak_own: int | None = None
        self.peak_device: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.available = True
        except Exception:  # ImportError, or NVMLError when no driver is loaded
            self._nvml, self.available = None, False

    def _own_usage(self) -> int | None:
        nv, pid = self._nvml, os.getpid()
        try:
            for p in nv.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if p.pid == pid and p.usedGpuMemory is not None:
                    return int(p.usedGpuMemory)
        except nv.NVMLError:
            pass
        return None

    def _device_used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def sample(self) -> None:
        own = self._own_usage()
        if own is not None:
            self.peak_own = own if self.peak_own is None else max(self.peak_own, own)
        dev = self._device_used() - self._baseline
        self.peak_device = dev if self.peak_device is None else max(self.peak_device, dev)

    @property
    def peak(self) -> int | None:
        return self.peak_own if self.peak_own is not None else self.peak_device

    @property
    def method(self) -> str:
        if self.peak_own is not None:
            return "NVML per-process used memory (sampled)"
        if self.peak_device is not None:
            return "NVML device used memory less the level before the run (sampled)"
        return "unavailable (no NVML: pip install nvidia-ml-py)"

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self):
        if self.available:
            self._baseline = self._device_used()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.sample()
            self._nvml.nvmlShutdown()
        return False
