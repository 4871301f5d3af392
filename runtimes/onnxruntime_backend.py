"""ONNX Runtime backend: one InferenceSession per component, CPU EP or CUDA EP.

On the CUDA EP every component runs through IO binding: each input and output has a device
buffer per shape bucket, an input whose array is the same object as in the last call (text
embeddings, time ids: the loop's fixed conditioning) is not copied again, and with
`cuda_graph` the session captures one CUDA graph per bucket (`gpu_graph_id`), which needs the
fixed buffer addresses IO binding gives. Compiled `cuda` artifacts turn CUDA graphs on when
their shape profile is static.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import Backend, ComponentSpec, check_feeds
from .errors import EdgegenError
from .iospec import IOSpec
from .paths import check_graph

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}
# Session memory settings, each a backend option (Pipeline.load(backend_options=...)); the values
# here are onnxruntime's own defaults (edgegen's CPU sessions differ: memory_options).
# bench/memory_where.py measures each one's effect on memory, bench/ort_profile.py on time.
MEMORY_DEFAULTS = {
    "cpu_mem_arena": True,      # SessionOptions.enable_cpu_mem_arena: activations from a growing BFC arena
    "mem_pattern": True,        # SessionOptions.enable_mem_pattern: one planned activation block per shape
    "prepacking": True,         # False: session.disable_prepacking (no MLAS-packed copies of weights)
}
# Where edgegen's CPU sessions leave onnxruntime's defaults. The memory pattern: measured with
# bench/ort_profile.py (bench/results/ort_profile_sd15_unet_pattern.md, ort_profile_sdturbo_vae.md),
# ORT plans it on a shape's first run and takes its block on the second, fresh memory whose
# first-touch page faults land in that run's kernels (the SD1.5 UNet's 2nd call 14.7 s against
# 9.2 s without; SD-Turbo's decoder InstanceNorms 2.9 s against 0.36 s per run). Later runs are as
# fast either way, and the block holds the UNet's activations a second time
# (bench/results/memory_sd15.md: peak 9.50 -> 7.32 GiB).
CPU_MEMORY = {"mem_pattern": False}


def make_session(graph: Path, device: str = "cpu", threads: int = 0, provider_options: dict | None = None,
                 root: Path | None = None, fixed: dict[str, int] | None = None, memory: dict | None = None,
                 profile: str | None = None):
    """An InferenceSession on `device`'s providers; refuses a silent fallback to CPU.
    With `root`, the graph and its external data must lie inside that artifact folder.
    `fixed` pins symbolic dims by name (a static shape profile): ORT then folds the Shape/Gather/
    Concat chains that compute reshape targets at run time. The CUDA EP places those int64 chains
    on the CPU, and one CPU node is enough for ORT to refuse CUDA graph capture; on a tiny SD1.5
    UNet pinning removed all 51 Shape nodes. `memory`: MEMORY_DEFAULTS keys to change.
    `profile`: a file prefix for onnxruntime's per-node profiler (`session.end_profiling()`)."""
    import onnxruntime as ort

    if root is not None:
        check_graph(root, graph)

    if device not in PROVIDERS:
        raise EdgegenError(f"unknown onnxruntime device {device!r}; known: {', '.join(PROVIDERS)}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    for name, value in (fixed or {}).items():
        opts.add_free_dimension_override_by_name(name, int(value))
    mem = memory_settings(memory)
    opts.enable_cpu_mem_arena, opts.enable_mem_pattern = mem["cpu_mem_arena"], mem["mem_pattern"]
    if not mem["prepacking"]:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if profile:
        opts.enable_profiling, opts.profile_file_prefix = True, profile
    providers = list(PROVIDERS[device])
    if provider_options:
        providers[0] = (providers[0], {k: str(v) for k, v in provider_options.items()})
    session = ort.InferenceSession(str(graph), opts, providers=providers)
    # ORT falls back to CPU silently when CUDA libraries are missing.
    if PROVIDERS[device][0] not in session.get_providers():
        raise EdgegenError(f"onnxruntime could not use {PROVIDERS[device][0]} here "
                           f"(available: {', '.join(ort.get_available_providers())})")
    return session


def memory_settings(memory: dict | None) -> dict[str, bool]:
    """MEMORY_DEFAULTS with `memory`'s values (keys checked by OnnxRuntimeBackend.memory_options)."""
    return {**MEMORY_DEFAULTS, **{k: bool(v) for k, v in (memory or {}).items()}}


class OrtComponent:
    """A component graph with its IOSpec; checks feeds against the spec before running."""

    def __init__(self, name: str, graph: Path, io: IOSpec, device: str = "cpu", threads: int = 0,
                 root: Path | None = None, memory: dict | None = None):
        self.session = make_session(graph, device, threads, root=root, fixed=io.fixed_sizes(), memory=memory)
        self.name, self.io = name, io

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        feeds, _ = check_feeds(self.name, self.io, feeds)
        return dict(zip(self.io.output_names, self.session.run(self.io.output_names, feeds)))


class _Bucket:
    """Device buffers of one shape bucket, bound once; graph_id names its CUDA graph."""

    def __init__(self, session, io: IOSpec, sizes: dict[str, int], graph_id: int, device_id: int):
        import onnxruntime as ort

        self.graph_id = graph_id
        self.binding = session.io_binding()
        self.inputs, self.outputs, self.last = {}, {}, {}
        for t in io.inputs:
            v = ort.OrtValue.ortvalue_from_shape_and_type(t.resolve(sizes), np.dtype(t.dtype), "cuda", device_id)
            self.inputs[t.name] = v
            self.binding.bind_ortvalue_input(t.name, v)
        for t in io.outputs:
            try:
                shape = t.resolve(sizes)
            except (KeyError, ValueError):
                shape = None    # an output dim no input decides: ORT allocates (no CUDA graph then)
            if shape is None:
                self.binding.bind_output(t.name, "cuda", device_id)
                continue
            v = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.dtype(t.dtype), "cuda", device_id)
            self.outputs[t.name] = v
            self.binding.bind_ortvalue_output(t.name, v)


class OrtCudaComponent:
    """CUDA EP through IO binding, inputs kept on the device across calls, optional CUDA graphs."""

    def __init__(self, name: str, graph: Path, io: IOSpec, threads: int = 0, device_id: int = 0,
                 cuda_graph: bool = False, root: Path | None = None):
        self.graph_refused = None
        opts = {"device_id": device_id}
        if cuda_graph:
            try:
                self.session = make_session(graph, "cuda", threads, {**opts, "enable_cuda_graph": 1}, root=root,
                                            fixed=io.fixed_sizes())
            except Exception as e:
                # ORT refuses capture when any node stays on the CPU (a dynamic dim's shape chain, an op
                # the CUDA EP lacks): run without graphs and say why, rather than not at all.
                if "graph capture" not in str(e):
                    raise
                self.graph_refused = (str(e).strip().splitlines() or [""])[0][-200:]
                cuda_graph = False
        if not cuda_graph:
            self.session = make_session(graph, "cuda", threads, opts, root=root, fixed=io.fixed_sizes())
        self.name, self.io, self.device_id, self.cuda_graph = name, io, device_id, cuda_graph
        self._buckets: dict[tuple, _Bucket] = {}

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        feeds, sizes = check_feeds(self.name, self.io, feeds)
        key = tuple(sorted(sizes.items()))
        b = self._buckets.get(key)
        if b is None:
            # Graph ids start at 1 so none is the EP's implicit default 0; one per shape bucket.
            b = self._buckets[key] = _Bucket(self.session, self.io, sizes, len(self._buckets) + 1, self.device_id)
        for name, arr in feeds.items():
            if b.last.get(name) is arr:
                continue        # same array as last call: its device copy is current
            b.inputs[name].update_inplace(arr)
            b.last[name] = arr
        ro = ort.RunOptions()
        if self.cuda_graph:
            ro.add_run_config_entry("gpu_graph_id", str(b.graph_id))
        self.session.run_with_iobinding(b.binding, ro)
        if b.outputs:
            return {n: b.outputs[n].numpy() for n in self.io.output_names}
        return dict(zip(self.io.output_names, b.binding.copy_outputs_to_cpu()))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    library = "onnxruntime"
    extra = "cuda"
    devices = ("cpu", "cuda")
    runs_onnx_graphs = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.memory_options()   # an unknown option fails here, before any session is built

    def library_packages(self) -> tuple[str, ...]:
        return ("onnxruntime", "onnxruntime_gpu")

    def not_ready(self) -> str | None:
        import onnxruntime as ort

        want = PROVIDERS[self.device][0]
        if want not in ort.get_available_providers():
            return (f"this onnxruntime has no {want} (it has {', '.join(ort.get_available_providers())}): "
                    f"pip install 'edgegen[{self.extra}]' (onnxruntime-gpu replaces onnxruntime)")
        return None

    def host(self) -> dict:
        if self.device != "cuda":
            return {}
        from .host import gpus

        g = gpus()
        return {"gpu": g[0].name, "compute_capability": g[0].compute_capability, "driver": g[0].driver} if g else {}

    def binding(self) -> dict:
        # An ONNX graph is portable: a compiled cpu/cuda artifact binds only the EP it was gated on.
        return {"backend": self.name, "device": self.device}

    def build_options(self) -> dict:
        return {"device": self.device, "cuda_graph": bool(self.options.get("cuda_graph", False))}

    def load(self, spec: ComponentSpec):
        if self.device == "cuda":
            cg = bool(self.options.get("cuda_graph", spec.static))
            return OrtCudaComponent(spec.name, spec.graph, spec.io, self.threads,
                                    int(self.options.get("device_id", 0)), cg, root=spec.root)
        return OrtComponent(spec.name, spec.graph, spec.io, "cpu", self.threads, root=spec.root,
                            memory=self.memory_options())

    def memory_options(self) -> dict:
        """The session memory settings among this backend's options (checked, ORT's defaults filled in)."""
        unknown = sorted(set(self.options) - {"cuda_graph", "device_id", *MEMORY_DEFAULTS})
        if unknown:
            raise EdgegenError(f"unknown onnxruntime option {unknown[0]!r}; known: cuda_graph, device_id, "
                               f"{', '.join(MEMORY_DEFAULTS)}")
        given = {k: v for k, v in self.options.items() if k in MEMORY_DEFAULTS}
        if self.device == "cpu":
            given = {**CPU_MEMORY, **given}
        if self.memory_mode == "sequential" and self.device == "cpu":
            # Measured on the real-size SD1.5 (bench/results/memory_sd15.md): the CPU arena keeps every
            # block a session ever held, and with the memory pattern the second run of a shape takes
            # one planned block beside the first run's chunks, so the UNet's activations are held
            # twice (+2.2 to 2.6 GiB after the 2nd step). Without the arena they go back after each run.
            given.setdefault("cpu_mem_arena", False)
        return memory_settings(given)

    def memory(self) -> dict:
        out = super().memory()
        if self.device == "cuda":
            out.update(device_memory())
        return out


def device_memory(index: int = 0) -> dict:
    """Used/total device memory from NVML (nvidia-ml-py), where it can be read."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            m = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            return {"device_used_bytes": int(m.used), "device_total_bytes": int(m.total)}
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML here: say nothing rather than a made-up figure
        return {}


BACKEND = OnnxRuntimeBackend
