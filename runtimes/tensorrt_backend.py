"""TensorRT backend: each component's ONNX graph built into a serialized engine at compile time.

The network is strongly typed: precision comes from the graph's own dtypes (an fp16 export,
Q/DQ nodes), never from builder flags, which TensorRT 11 removes anyway. One optimization
profile is the component's narrowed IOSpec. Engines are bound to the TensorRT version and the
GPU (name and compute capability); the driver is recorded but not bound, since engines survive
driver updates within a major. The runtime uses cuda-python for device memory and a stream,
and with a static profile replays one CUDA graph per call, as TensorRT's demo/Diffusion does.
"""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import numpy as np

from .backend import Backend, Built, ComponentSpec, package_versions
from .errors import EdgegenError
from .iospec import IOSpec

GiB = 2 ** 30


def profile_shapes(io: IOSpec) -> list[tuple[str, tuple, tuple, tuple]]:
    """(input, min, opt, max) for every input with a symbolic dim: each is dynamic in the ONNX
    graph (even when narrowed to one value), and TensorRT needs a range for all of them."""
    prof = io.profile()
    return [(t.name, *prof[t.name]) for t in io.inputs if any(isinstance(d, str) for d in t.shape)]


def _on(value) -> bool:
    """An option's truth, whether it came as a bool or as text from `--option k=v`."""
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def builder_flags(options: dict) -> list[str]:
    """BuilderFlag names the options ask for (STRONGLY_TYPED is a network flag, not one of these)."""
    flags = []
    if _on(options.get("refit")):
        flags.append("REFIT")
    if _on(options.get("weight_streaming")):
        flags.append("WEIGHT_STREAMING")
    return flags


def engine_name(cache_key: str) -> str:
    return f"engine-{cache_key}.plan"


def streaming_budget(value, streamable_bytes: int) -> int:
    """Bytes of weights kept on the device: an int (bytes) or 'N%' of the streamable weights."""
    if isinstance(value, str) and value.endswith("%"):
        return int(float(value[:-1]) / 100 * streamable_bytes)
    return int(value)


def _cudart():
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # cuda-python < 12.6
    return runtime


def _check_cuda(err, what: str):
    """cuda-python returns (error, *values): raise on an error, else return the value(s)."""
    code, values = (err[0], err[1:]) if isinstance(err, tuple) else (err, ())
    if int(code) != 0:
        raise EdgegenError(f"CUDA: {what} failed: {getattr(code, 'name', code)}")
    return values[0] if len(values) == 1 else values or None


class _Bucket:
    """Device buffers of one shape set. Addresses never change, so a captured graph stays valid."""

    def __init__(self, cudart, shapes: dict[str, tuple], dtypes: dict[str, np.dtype]):
        self.cudart, self.shapes, self.dtypes, self.ptrs = cudart, shapes, dtypes, {}
        for name, shape in shapes.items():
            nbytes = max(int(np.prod(shape)) * dtypes[name].itemsize, 1)
            self.ptrs[name] = _check_cuda(cudart.cudaMalloc(nbytes), f"cudaMalloc for {name}")
        self.graph = self.graph_exec = None

    def free(self):
        rt = self.cudart
        if self.graph_exec is not None:
            rt.cudaGraphExecDestroy(self.graph_exec)
            rt.cudaGraphDestroy(self.graph)
        for p in self.ptrs.values():
            rt.cudaFree(p)
        self.ptrs = {}


class TrtComponent:
    def __init__(self, name: str, io: IOSpec, engine, cuda_graph: bool):
        import tensorrt as trt

        self.name, self.io, self.engine, self.cuda_graph = name, io, engine, cuda_graph
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EdgegenError(f"{name}: TensorRT could not create an execution context (out of device memory?)")
        self.cudart = rt = _cudart()
        self.stream = _check_cuda(rt.cudaStreamCreate(), "cudaStreamCreate")
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in io.input_names + io.output_names}
        self._buckets: dict[tuple, _Bucket] = {}
        self._active = None

    def _bucket(self, sizes: dict[str, int]) -> _Bucket:
        key = tuple(sorted(sizes.items()))
        b = self._buckets.get(key)
        if b is None or self._active is not b:
            # The context holds one set of shapes and addresses: set them on every bucket switch.
            for t in self.io.inputs:
                if not self.context.set_input_shape(t.name, t.resolve(sizes)):
                    raise EdgegenError(f"{self.name}: TensorRT refused shape {t.resolve(sizes)} for {t.name}")
            if b is None:
                shapes = {t.name: t.resolve(sizes) for t in self.io.inputs}
                shapes.update({n: tuple(self.context.get_tensor_shape(n)) for n in self.io.output_names})
                b = self._buckets[key] = _Bucket(self.cudart, shapes, self.dtypes)
            for n, p in b.ptrs.items():
                self.context.set_tensor_address(n, int(p))
            self._active = b
        return b

    def _execute(self):
        if not self.context.execute_async_v3(int(self.stream)):
            raise EdgegenError(f"{self.name}: TensorRT execution failed (see its log)")

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        rt = self.cudart
        # The engine's dtype, not the spec's: the device buffer was sized by it.
        feeds = {n: np.ascontiguousarray(feeds[n], dtype=self.dtypes[n]) for n in self.io.input_names if n in feeds}
        try:
            sizes = self.io.infer_sizes(feeds)
        except ValueError as e:
            raise EdgegenError(f"{self.name}: {e}") from None
        b = self._bucket(sizes)
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for n, arr in feeds.items():
            _check_cuda(rt.cudaMemcpyAsync(b.ptrs[n], arr.ctypes.data, arr.nbytes, h2d, self.stream), f"copy {n} in")
        if not self.cuda_graph:
            self._execute()
        elif b.graph_exec is not None:
            _check_cuda(rt.cudaGraphLaunch(b.graph_exec, self.stream), "cudaGraphLaunch")
        else:
            # The warm-up run does TensorRT's lazy setup outside the capture and computes this
            # call's outputs; the captured run is only recorded, not executed.
            self._execute()
            _check_cuda(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
                        "cudaStreamBeginCapture")
            try:
                self._execute()
            finally:    # end the capture even on failure, or the stream stays unusable
                b.graph = _check_cuda(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
            b.graph_exec = _check_cuda(rt.cudaGraphInstantiate(b.graph, 0), "cudaGraphInstantiate")
        out = {}
        for n in self.io.output_names:
            out[n] = np.empty(b.shapes[n], dtype=self.dtypes[n])
            _check_cuda(rt.cudaMemcpyAsync(out[n].ctypes.data, b.ptrs[n], out[n].nbytes, d2h, self.stream),
                        f"copy {n} out")
        _check_cuda(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return out

    def close(self):
        for b in self._buckets.values():
            b.free()
        self._buckets = {}
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self):
        with contextlib.suppress(AttributeError, TypeError):   # at interpreter exit, half torn down
            self.close()


class TensorRtBackend(Backend):
    name = "tensorrt"
    library = "tensorrt"
    extra = "tensorrt"
    devices = ("cuda",)
    precisions = ()     # strongly typed: the graph's dtypes decide

    @classmethod
    def missing(cls) -> str | None:
        hint = f"pip install 'edgegen[{cls.extra}]' (TensorRT wheels come from NVIDIA's package index)"
        if importlib.util.find_spec("tensorrt") is None:
            return f"the {cls.name} backend needs tensorrt: {hint}"
        try:
            has_cuda = importlib.util.find_spec("cuda.bindings") or importlib.util.find_spec("cuda.cudart")
        except ModuleNotFoundError:
            has_cuda = None
        if not has_cuda:
            return f"the {cls.name} backend needs cuda-python for device memory: {hint}"
        return None

    def versions(self) -> dict[str, str]:
        try:
            import tensorrt as trt
        except ImportError:
            return package_versions(("tensorrt",))
        return {"tensorrt": trt.__version__}     # the bindings actually loaded, whichever wheel

    def _gpu(self):
        from .host import gpus

        g, i = gpus(), int(self.options.get("device_id", 0))
        return g[i] if i < len(g) else None

    def host(self) -> dict:
        g = self._gpu()
        return {"gpu": g.name, "compute_capability": g.compute_capability, "driver": g.driver,
                "memory_gb": round(g.memory_gb, 1)} if g else {}

    def binding(self) -> dict:
        g = self._gpu()
        return {"backend": self.name, "versions": self.versions(),
                "gpu": g.name if g else None, "compute_capability": g.compute_capability if g else None}

    def build(self, spec: ComponentSpec, out_dir: Path, cache_key: str) -> Built:
        import tensorrt as trt

        from .paths import check_graph

        check_graph(spec.root, spec.graph)
        out_dir.mkdir(parents=True, exist_ok=True)
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        net_flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):   # TRT 11: always, no flag
            net_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(net_flags)
        parser = trt.OnnxParser(network, logger)
        # From the file, not bytes: the parser then finds external data next to the graph.
        if not parser.parse_from_file(str(spec.graph)):
            errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
            raise EdgegenError(f"{spec.name}: TensorRT cannot parse {spec.graph.name}: "
                               f"{(errors or ['unknown error'])[0][:300]}")
        config = builder.create_builder_config()
        if self.options.get("workspace_gb"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(float(self.options["workspace_gb"]) * GiB))
        profile = builder.create_optimization_profile()
        shapes = profile_shapes(spec.io)
        for name, lo, opt, hi in shapes:
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        flags = builder_flags(self.options)
        for f in flags:
            config.set_flag(getattr(trt.BuilderFlag, f))
        timing = out_dir / f"timing-{cache_key}.cache"
        cache = config.create_timing_cache(timing.read_bytes() if timing.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EdgegenError(f"{spec.name}: TensorRT could not build an engine (its log above says why)")
        engine = out_dir / engine_name(cache_key)
        engine.write_bytes(plan)
        timing.write_bytes(config.get_timing_cache().serialize())
        return Built(graph=engine.name, files=[engine.name, timing.name],
                     info={"engine": engine.name, "flags": flags,
                           "profile": {n: [list(lo), list(opt), list(hi)] for n, lo, opt, hi in shapes}})

    def load(self, spec: ComponentSpec):
        from .paths import check_graph

        check_graph(spec.root, spec.graph)
        if spec.graph.suffix == ".onnx":
            raise EdgegenError(f"{spec.name}: the tensorrt backend runs engines; compile the artifact with "
                               f"`edgegen compile --target tensorrt` first")
        import tensorrt as trt

        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(spec.graph.read_bytes())
        if engine is None:
            raise EdgegenError(f"{spec.name}: TensorRT cannot load {spec.graph.name} (built by another TensorRT "
                               f"version or for another GPU?)")
        budget = self.options.get("weight_streaming_budget")
        if budget is not None:
            engine.weight_streaming_budget_v2 = streaming_budget(budget, engine.streamable_weights_size)
        return TrtComponent(spec.name, spec.io, engine, cuda_graph=_on(self.options.get("cuda_graph", spec.static)))

    def memory(self) -> dict:
        out = super().memory()
        try:
            free, total = _check_cuda(_cudart().cudaMemGetInfo(), "cudaMemGetInfo")
        except (ImportError, EdgegenError):   # no cuda-python or no driver: say nothing
            return out
        out.update(device_used_bytes=int(total) - int(free), device_total_bytes=int(total))
        return out


BACKEND = TensorRtBackend
