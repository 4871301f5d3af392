"""Backends: one file each, imported lazily, with one small surface.

A backend loads one component graph with its IOSpec and runs it (`load` -> a callable taking
and returning numpy arrays by name), reports memory, and, for `edgegen compile`, builds what it
needs ahead of time into the artifact (`build`). The pipeline and samplers only ever call a
component; they never learn which backend runs it.

Compile targets name a backend and a device: `cuda` is onnxruntime on its CUDA EP, `openvino`
is OpenVINO on CPU (or --ov-device GPU/NPU), `tensorrt` and `tensorrt-rtx` are NVIDIA's.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from .errors import EdgegenError
from .iospec import IOSpec

BACKENDS = {
    "onnxruntime": "onnxruntime_backend",
    "openvino": "openvino_backend",
    "tensorrt": "tensorrt_backend",
    "tensorrt-rtx": "tensorrt_rtx_backend",
    "coreml": "coreml_backend",   # artifacts of `edgegen export --target coreml` (predicts on macOS only)
}
# target -> (backend, default device)
TARGETS = {
    "cpu": ("onnxruntime", "cpu"),
    "cuda": ("onnxruntime", "cuda"),
    "openvino": ("openvino", "CPU"),
    "tensorrt": ("tensorrt", "cuda"),
    "tensorrt-rtx": ("tensorrt-rtx", "cuda"),
}


@dataclass
class ComponentSpec:
    """One component as a backend sees it: where its graph is, its (narrowed) IOSpec, and what
    compile recorded for it (None for an artifact that was not compiled)."""

    name: str
    graph: Path
    io: IOSpec
    root: Path
    compiled: dict | None = None
    static: bool = False


@dataclass
class Built:
    """What `Backend.build` wrote for one component, relative to the artifact root."""

    graph: str                      # what `load` opens (ONNX, IR xml, engine)
    files: list[str]                # every file written (digested into the manifest)
    info: dict = field(default_factory=dict)


class Backend:
    """Subclasses set the class attributes and implement `load` (and `build` if they compile)."""

    name: ClassVar[str]
    library: ClassVar[str]          # import name checked by `missing`
    extra: ClassVar[str]            # pip extra that installs it
    devices: ClassVar[tuple[str, ...]]
    precisions: ClassVar[tuple[str, ...]] = ()   # inference precisions the backend can be told
    runs_onnx_graphs: ClassVar[bool] = False     # the artifact's ONNX sampler/denoise graphs too

    def __init__(self, device: str | None = None, precision: str | None = None, threads: int = 0,
                 options: dict | None = None):
        self.device = device or self.devices[0]
        if self.device not in self.devices:
            raise EdgegenError(f"{self.name} has no device {self.device!r}; known: {', '.join(self.devices)}")
        if precision is not None and precision not in self.precisions:
            raise EdgegenError(f"{self.name} has no precision {precision!r}; known: {', '.join(self.precisions) or 'none'}")
        self.precision, self.threads, self.options = precision, threads, dict(options or {})
        self.memory_mode = "resident"   # the pipeline's (Pipeline(memory=...)); backends may size their pools by it

    # -- availability and facts -----------------------------------------------------------
    @classmethod
    def missing(cls) -> str | None:
        """Why this backend cannot run here (one line naming the pip extra), or None."""
        if importlib.util.find_spec(cls.library.split(".")[0]) is None:
            return f"the {cls.name} backend needs {cls.library}: pip install 'edgegen[{cls.extra}]'"
        return None

    def check_options(self) -> None:
        """Refuse, in one line, build options this backend does not take or values it cannot use.
        Called before any work; backends that take options override it."""

    def not_ready(self) -> str | None:
        """Why this backend cannot run on its device here although the library imports (a CPU-only
        build, no such device), or None. Checked before any work."""
        return None

    def versions(self) -> dict[str, str]:
        return package_versions(self.library_packages())

    def library_packages(self) -> tuple[str, ...]:
        return (self.library,)

    def host(self) -> dict:
        """Facts of the device this backend runs on, for the fingerprint."""
        return {}

    def binding(self) -> dict:
        """The part of the fingerprint a compiled artifact is bound to: a host that differs in
        any of these must recompile. Backends narrow or widen this."""
        return {"backend": self.name, "device": self.device, "versions": self.versions()}

    def build_options(self) -> dict:
        """What the build was told (recorded in the manifest, part of the cache key)."""
        return {"device": self.device, "precision": self.resolved_precision(), **self.options}

    def resolved_precision(self) -> str | None:
        return self.precision

    # -- the surface ------------------------------------------------------------------------
    def build(self, spec: ComponentSpec, out_dir: Path, cache_key: str) -> Built | None:
        """Compile one component into out_dir (a folder inside the new artifact). None: nothing
        to build ahead (the graph is used as it is)."""
        return None

    def load(self, spec: ComponentSpec) -> Callable[..., dict[str, np.ndarray]]:
        raise NotImplementedError

    def memory(self) -> dict:
        """Memory now in use: resident set on CPU, device memory where the backend knows it."""
        return {"rss_bytes": proc_status_bytes("VmRSS")}


def check_feeds(name: str, io: IOSpec, feeds: dict) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Feeds cast to the spec's dtypes and checked against it (one line naming the component)."""
    feeds = {t.name: np.ascontiguousarray(feeds[t.name], dtype=t.dtype) for t in io.inputs if t.name in feeds}
    try:
        sizes = io.infer_sizes(feeds)
    except ValueError as e:
        raise EdgegenError(f"{name}: {e}") from None
    return feeds, sizes


def proc_status_bytes(key: str) -> int | None:
    """A /proc/self/status memory figure (VmRSS, VmHWM) in bytes; None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def package_versions(packages) -> dict[str, str]:
    out = {}
    for pkg in packages:
        for name in (pkg, pkg.replace("_", "-")):
            try:
                out[pkg] = version(name)
                break
            except PackageNotFoundError:
                continue
    return out


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise EdgegenError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    return getattr(importlib.import_module(f"{__package__}.{BACKENDS[name]}"), "BACKEND")


def get_backend(name: str, device: str | None = None, precision: str | None = None, threads: int = 0,
                options: dict | None = None, require: bool = True) -> Backend:
    cls = backend_class(name)
    why = cls.missing() if require else None
    if why:
        raise EdgegenError(why)
    return cls(device=device, precision=precision, threads=threads, options=options)


def cache_key(binding: dict, build_options: dict, shape_profile: dict, graph_digest: str) -> str:
    """Engines and caches are keyed on everything that makes them invalid elsewhere: the device
    (GPU name and compute capability, CPU ISA), library versions, build options, shapes and the
    graph itself. (TensorRT demo's engine paths lack the GPU; this key has it.)"""
    blob = json.dumps({"binding": binding, "options": build_options, "shapes": shape_profile,
                       "graph": graph_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def binding_differences(compiled: dict, here: dict) -> list[str]:
    """'what: compiled for A, this host has B' for every binding fact that differs."""
    a, b = _flat(compiled), _flat(here)
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k}: compiled for {a.get(k, 'nothing')}, this host has {b.get(k, 'nothing')}")
    return out
