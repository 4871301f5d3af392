"""TensorRT-RTX backend: onnxruntime with NVIDIA's NvTensorRTRTX plugin execution provider.

The plugin (`onnxruntime-ep-nv-tensorrt-rtx-cu13`) is registered with onnxruntime once per
process and bound to its GPU through `add_provider_for_devices`. Compiling writes an EPContext
model (`model_ctx.onnx` plus the engine beside it) with onnxruntime's ModelCompiler, so a load
skips the engine build; a runtime cache folder, keyed like the engine, keeps the kernels
TensorRT-RTX JIT-compiles on first use. That folder is a cache, rewritten when a session
closes, so it is not among the digested files. Precision comes from the graph's dtypes: the
EP has no precision switch. The plugin's own check accepts only compute capability 8.6, 8.9
and 12.0+, so Hopper (9.0), A100 (8.0), B200 (10.0) and Turing are refused up front.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
from pathlib import Path

import numpy as np

from .backend import Backend, Built, ComponentSpec, check_feeds
from .capability import parse_cc, trt_rtx_supports
from .errors import EdgegenError
from .iospec import IOSpec

NO_DRIVER = "no NVIDIA driver/GPU (libcuda.so.1 not loadable)"
UNSUPPORTED_GPU = "Hopper/Ampere-datacenter GPUs are not supported by TensorRT-RTX"
_LIBCUDA = "nvcuda.dll" if os.name == "nt" else "libcuda.so.1"
_registered: set[str] = set()


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape)


def profile_options(io: IOSpec) -> dict[str, str]:
    """nv_profile_{min,opt,max}_shapes for every input. Without them every dynamic dim gets the
    EP's implicit 0..32767 range, which builds for shapes diffusion never runs."""
    prof = io.profile()
    return {f"nv_profile_{which}_shapes": ",".join(f"{t.name}:{_dims(prof[t.name][i])}" for t in io.inputs)
            for i, which in enumerate(("min", "opt", "max"))}


def provider_options(io: IOSpec, cache_dir: Path | None, static: bool, options: dict) -> dict[str, str]:
    out = profile_options(io)
    if cache_dir is not None:
        out["nv_runtime_cache_path"] = str(cache_dir)
    if static:
        out["enable_cuda_graph"] = "1"     # one shape: the EP captures once and replays
    if options.get("weight_streaming_budget") is not None:
        out["nv_weight_streaming_budget"] = str(options["weight_streaming_budget"])
    return out


def supported_compute_capability(cc: str | None) -> bool:
    """What the EP's IsComputeCapabilitySupported accepts (the rule lives in capability.py)."""
    try:
        parsed = parse_cc(cc)
    except ValueError:
        return False
    return parsed is not None and trt_rtx_supports(parsed)


def driver_missing(lib: str | None = None) -> str | None:
    """The plugin links libcuda and libnvidia-ml: without a driver it cannot even be registered."""
    try:
        ctypes.CDLL(lib or _LIBCUDA)
    except OSError:
        return NO_DRIVER
    return None


def gpu_unsupported(gpus) -> str | None:
    """UNSUPPORTED_GPU when NVIDIA GPUs are present but none has a compute capability the EP takes."""
    known = [g for g in gpus if g.compute_capability]
    if known and not any(supported_compute_capability(g.compute_capability) for g in known):
        return UNSUPPORTED_GPU
    return None


def placement(assignments, ep_name: str) -> tuple[int, list[str]]:
    """(nodes the EP runs, op types of nodes that went elsewhere), from a session's
    get_provider_graph_assignment_info()."""
    ours, elsewhere = 0, []
    for sub in assignments:
        nodes = sub.get_nodes()
        if sub.ep_name == ep_name:
            ours += len(nodes)
        else:
            elsewhere += [n.op_type for n in nodes]
    return ours, elsewhere


def _ep_devices(device_id: int):
    """(EP name, [its OrtEpDevice]), registering the plugin library on first use."""
    import onnxruntime as ort
    import onnxruntime_ep_nv_tensorrt_rtx as plugin  # importing it preloads TensorRT-RTX's libraries
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    name = plugin.get_ep_name()
    if name not in _registered:
        try:
            ort.register_execution_provider_library(name, plugin.get_library_path())
        except Fail as e:  # the plugin or a library it needs (libcuda, libnvidia-ml) did not load
            raise EdgegenError(f"onnxruntime could not load the TensorRT-RTX plugin: "
                               f"{(str(e).strip().splitlines() or [''])[0][:300]}") from None
        _registered.add(name)
    devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    if device_id >= len(devices):
        raise EdgegenError(f"TensorRT-RTX sees {len(devices)} GPU(s) here; device_id {device_id} is not one")
    return name, [devices[device_id]]


class RtxComponent:
    def __init__(self, name: str, io: IOSpec, session):
        self.name, self.io, self.session = name, io, session

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        feeds, _ = check_feeds(self.name, self.io, feeds)
        return dict(zip(self.io.output_names, self.session.run(self.io.output_names, feeds)))


class TensorRtRtxBackend(Backend):
    name = "tensorrt-rtx"
    library = "onnxruntime_ep_nv_tensorrt_rtx"
    extra = "rtx"
    devices = ("cuda",)

    @classmethod
    def missing(cls) -> str | None:
        for mod in (cls.library, "onnxruntime"):
            if importlib.util.find_spec(mod) is None:
                return f"the {cls.name} backend needs {mod}: pip install 'edgegen[{cls.extra}]'"
        from .host import gpus

        return driver_missing() or gpu_unsupported(gpus())

    def library_packages(self) -> tuple[str, ...]:
        return ("onnxruntime_ep_nv_tensorrt_rtx_cu13", "onnxruntime_ep_nv_tensorrt_rtx_cu12", "onnxruntime",
                "onnxruntime_gpu")

    def _gpu(self):
        from .host import gpus

        g, i = gpus(), int(self.options.get("device_id", 0))
        return g[i] if i < len(g) else None

    def host(self) -> dict:
        g = self._gpu()
        return {"gpu": g.name, "compute_capability": g.compute_capability, "driver": g.driver} if g else {}

    def binding(self) -> dict:
        # EPContext engines are portable across 8.6/8.9/12.0 in principle, but the runtime cache
        # is reused only on the exact SM: bind the compute capability, not the GPU's name.
        g = self._gpu()
        return {"backend": self.name, "versions": self.versions(),
                "compute_capability": g.compute_capability if g else None}

    def _check_gpu(self):
        g = self._gpu()
        if g is not None and g.compute_capability and not supported_compute_capability(g.compute_capability):
            raise EdgegenError(f"{UNSUPPORTED_GPU} (this host has {g.name}, compute capability "
                               f"{g.compute_capability}; it needs 8.6, 8.9 or 12.0+)")

    def _session_options(self, io: IOSpec, cache_dir: Path | None, static: bool):
        import onnxruntime as ort

        self._check_gpu()
        ep, devices = _ep_devices(int(self.options.get("device_id", 0)))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if self.threads:
            so.intra_op_num_threads = self.threads
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        so.add_provider_for_devices(devices, provider_options(io, cache_dir, static, self.options))
        return so, ep

    def build(self, spec: ComponentSpec, out_dir: Path, cache_key: str) -> Built:
        import onnxruntime as ort

        from .paths import check_graph

        check_graph(spec.root, spec.graph)
        out_dir.mkdir(parents=True, exist_ok=True)
        cache = out_dir / f"rtx-cache-{cache_key}"
        cache.mkdir()
        so, _ = self._session_options(spec.io, cache, spec.static)
        compiler = ort.ModelCompiler(so, str(spec.graph), embed_compiled_data_into_model=False,
                                     flags=ort.OrtCompileApiFlags.ERROR_IF_NO_NODES_COMPILED)
        compiler.compile_to_file(str(out_dir / "model_ctx.onnx"))
        # The ctx model and the engine file(s) it names; the runtime cache is left undigested.
        files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")
                       if p.is_file() and cache not in p.parents)
        return Built(graph="model_ctx.onnx", files=files, info={"cache_dir": cache.name})

    def load(self, spec: ComponentSpec):
        import onnxruntime as ort

        from .paths import check_graph

        check_graph(spec.root, spec.graph)
        cache = None
        if spec.compiled and spec.compiled.get("cache_dir"):
            cache = spec.graph.parent / spec.compiled["cache_dir"]
        so, ep = self._session_options(spec.io, cache, spec.static)
        session = ort.InferenceSession(str(spec.graph), sess_options=so)
        ours, elsewhere = placement(session.get_provider_graph_assignment_info(), ep)
        if not ours or elsewhere:
            raise EdgegenError(f"{spec.name}: TensorRT-RTX runs {ours} node(s); {len(elsewhere)} fell back to "
                               f"other providers ({', '.join(sorted(set(elsewhere))[:5]) or 'none'})")
        return RtxComponent(spec.name, spec.io, session)

    def memory(self) -> dict:
        out = super().memory()
        from .onnxruntime_backend import device_memory

        out.update(device_memory(int(self.options.get("device_id", 0))))
        return out


BACKEND = TensorRtRtxBackend
