"""OpenVINO backend: ONNX (or the IR a compile wrote) compiled by OpenVINO itself on CPU, GPU or NPU.

Precision is always set explicitly (`INFERENCE_PRECISION_HINT`): OpenVINO's CPU default is bf16
on CPUs with AVX512-BF16/AMX and f32 elsewhere, so leaving it implicit would make the same
artifact compute differently on two machines. The default here follows the same rule, but is
written into the compiled artifact and gated there. A static shape profile is applied with
`model.reshape` before compiling (NPUs only take static shapes; on CPU it lets OpenVINO plan
memory once). A compiled artifact keeps the compiled model itself next to the IR
(`CompiledModel.export_model`, in a file named by the cache key), which the runtime imports from
a memory map instead of compiling. Measured on the real-size SD1.5 U-Net, bf16 (the peak RSS of a
load and one call): the import peaks at 5.4 GiB and loads in 1.7 s; OpenVINO's CACHE_DIR with an
ov.Model, the earlier form, peaks at 6.6 GiB (OpenVINO serializes the model to hash it for the
cache key) and loads in 5.6 s; CACHE_DIR with the IR's path avoids that but keys the cache by the
file's path, so a moved artifact recompiles; importing the blob read into bytes peaks at 7.0 GiB.
Artifacts compiled before this keep loading through their cache folder.

`keep_f32` (a build option, e.g. "Add+Multiply") keeps those layer types in f32 under a bf16 or
f16 hint, through OpenVINO's own DisablePrecisionConversion runtime attribute written into the IR.
Measured on the real-size SD1.5 U-Net (bench/results/ov_profile_sd15_keep_f32.md): most of bf16's
error is the residual stream's element-wise ops (0.035 relative error, 0.0135 with Add and
Multiply in f32, at 0.90x the bf16 speed), while MVN, Softmax or MatMul in f32 change nothing.
Multiply alone keeps that accuracy at a fifth of the cost (bench/results/ov_profile_sd15_inputs_keep_f32.md:
0.0437 against 0.0435 on an int8 U-Net, 3.18 against 3.53 s per step; bf16 alone 0.0531, 3.11 s):
a residual Add kept f32 can no longer fuse into its convolution, so it costs Reorders both ways.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import Backend, Built, ComponentSpec, check_feeds
from .errors import EdgegenError
from .host import ISA_FLAGS, cpu_flags, cpu_has_bf16, cpu_model
from .shape_profile import is_static

# edgegen's precision names -> OpenVINO's element types for INFERENCE_PRECISION_HINT
_HINT = {"f32": "f32", "bf16": "bf16", "f16": "f16"}
OPTIONS = ("keep_f32",)


def f32_types(value) -> tuple[str, ...]:
    """keep_f32's layer types, from "Add+Multiply" (the CLI's form) or a list."""
    items = value.split("+") if isinstance(value, str) else list(value or ())
    types = tuple(sorted({str(t).strip() for t in items if str(t).strip()}))
    bad = [t for t in types if not t.isidentifier() or not t[0].isupper()]
    if not types or bad:
        raise EdgegenError(f"openvino: keep_f32 takes OpenVINO layer types joined by '+' (e.g. Add+Multiply), "
                           f"not {value!r}")
    return types


def mark_f32(xml: str, types) -> tuple[str, dict[str, int]]:
    """An IR's XML with DisablePrecisionConversion on every floating-point layer of these types,
    and the count marked per type. Written to the XML because OpenVINO's Python API has no setter
    for that runtime attribute; the IR reader builds it from `<rt_info><attribute .../>`, and the
    CPU plugin then keeps the node's original (f32) precision under a bf16/f16 hint.

    Left unmarked: integer layers (shape arithmetic) and layers that feed a FakeQuantize (an int8
    Q/DQ pair as OpenVINO reads it). Their output is rounded to 8 bits next, so f32 buys nothing
    there, and OpenVINO 2026.4 cannot compile it: a marked residual Add feeding the int8
    downsampler of the real-size SD1.5 U-Net failed with "object is not initialized" (bisected)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    layers = {layer.get("id"): layer for layer in root.iter("layer")}
    feeds_fq = {e.get("from-layer") for e in root.iter("edge")
                if layers.get(e.get("to-layer")) is not None and layers[e.get("to-layer")].get("type") == "FakeQuantize"}
    counts = dict.fromkeys(types, 0)
    for lid, layer in layers.items():
        if layer.get("type") not in counts or lid in feeds_fq:
            continue
        if {p.get("precision") for p in layer.findall("output/port")} - {"FP32", "FP16", "BF16"}:
            continue
        rt = layer.find("rt_info")
        if rt is None:
            rt = ET.Element("rt_info")
            layer.insert(0, rt)
        ET.SubElement(rt, "attribute", name="DisablePrecisionConversion", version="0", value="dynamic:f16")
        counts[layer.get("type")] += 1
    return ET.tostring(root, encoding="unicode"), counts


def save_marked(model, xml: Path, types) -> dict[str, int]:
    """Save `model` as an IR at `xml` with `types` kept f32 (none: saved as it is)."""
    import openvino as ov

    # The IR keeps the graph's own weights (no fp16 compression): precision is the hint's job.
    ov.save_model(model, str(xml), compress_to_fp16=False)
    if not types:
        return {}
    text, counts = mark_f32(xml.read_text(), types)
    xml.write_text(text)
    return counts


def keep_f32(core, model, types) -> tuple[object, dict[str, int]]:
    """`model` re-read with `types` kept f32 (through a temporary IR; its weights end in memory)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgegen-ov-f32-") as tmp:
        counts = save_marked(model, Path(tmp) / "model.xml", types)
        return core.read_model(str(Path(tmp) / "model.xml")), counts


class OvComponent:
    def __init__(self, name: str, compiled, io, blob=None):
        # An imported model computes from the blob's memory: `blob` keeps that mapping alive.
        self.name, self.io, self.compiled, self._blob = name, io, compiled, blob
        self.request = compiled.create_infer_request()
        self._outputs = [compiled.output(n) for n in io.output_names]

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        feeds, _ = check_feeds(self.name, self.io, feeds)
        res = self.request.infer(feeds)
        # The request reuses its output tensors on the next call: copy out.
        return {n: np.array(res[o], copy=True) for n, o in zip(self.io.output_names, self._outputs)}


class OpenVinoBackend(Backend):
    name = "openvino"
    library = "openvino"
    extra = "openvino"
    devices = ("CPU", "GPU", "NPU")
    precisions = ("f32", "bf16", "f16")

    def check_options(self) -> None:
        unknown = sorted(set(self.options) - set(OPTIONS))
        if unknown:
            raise EdgegenError(f"openvino has no build option {unknown[0]!r}; known: {', '.join(OPTIONS)}")
        if "keep_f32" in self.options:
            self.options["keep_f32"] = "+".join(f32_types(self.options["keep_f32"]))
            if self.resolved_precision() == "f32":
                raise EdgegenError("openvino: keep_f32 only matters under a bf16 or f16 precision; this compile "
                                   "computes everything in f32 already")

    def _f32_types(self) -> tuple[str, ...]:
        return f32_types(self.options["keep_f32"]) if self.options.get("keep_f32") else ()

    def resolved_precision(self) -> str:
        if self.precision:
            return self.precision
        if self.device == "CPU":
            return "bf16" if cpu_has_bf16() else "f32"
        return "f16"     # Intel GPUs and NPUs compute in f16

    def host(self) -> dict:
        if self.device == "CPU":
            return {"cpu": cpu_model(), "isa": sorted(cpu_flags() & set(ISA_FLAGS))}
        return {"ov_device": self.device, "full_name": self._core().get_property(self.device, "FULL_DEVICE_NAME")}

    def binding(self) -> dict:
        b = {"backend": self.name, "device": self.device,
             "versions": {"openvino": self.versions().get("openvino", "?").split("-")[0]}}
        if self.device == "CPU" and self.resolved_precision() == "bf16":
            b["cpu_bf16"] = True     # the gated numbers were bf16: a CPU without it computes otherwise
        if self.device != "CPU":
            b["full_name"] = self.host().get("full_name")
        return b

    def _core(self):
        import openvino as ov

        if not hasattr(self, "_ov_core"):
            self._ov_core = ov.Core()
            if self.device not in self._ov_core.available_devices:
                raise EdgegenError(f"OpenVINO has no {self.device} device here (available: "
                                   f"{', '.join(self._ov_core.available_devices)})")
        return self._ov_core

    def _config(self, cache_dir: Path | None) -> dict:
        cfg = {"INFERENCE_PRECISION_HINT": _HINT[self.resolved_precision()], "PERFORMANCE_HINT": "LATENCY"}
        if self.threads and self.device == "CPU":
            cfg["INFERENCE_NUM_THREADS"] = self.threads
        if cache_dir is not None:
            cfg["CACHE_DIR"] = str(cache_dir)
        return cfg

    def _model(self, spec: ComponentSpec, graph: Path):
        from .paths import check_graph

        check_graph(spec.root, graph)
        model = self._core().read_model(str(graph))
        if is_static(spec.io):
            sizes = {n: d.min for n, d in spec.io.dims.items()}
            model.reshape({t.name: list(t.resolve(sizes)) for t in spec.io.inputs})
        elif self.device == "NPU":
            raise EdgegenError(f"{spec.name}: OpenVINO's NPU needs static shapes; compile with fixed "
                               f"--height, --width and --batch")
        return model

    def build(self, spec: ComponentSpec, out_dir: Path, cache_key: str) -> Built:
        out_dir.mkdir(parents=True, exist_ok=True)
        model = self._model(spec, spec.graph)
        counts = save_marked(model, out_dir / "model.xml", self._f32_types())
        del model
        compiled = self._core().compile_model(self._core().read_model(str(out_dir / "model.xml")),
                                              self.device, self._config(None))
        self._check_precision(compiled)
        blob = out_dir / f"ov-{cache_key}.blob"
        stream = compiled.export_model()   # io.BytesIO: the Python API writes to no other stream
        del compiled
        blob.write_bytes(stream.getbuffer())
        del stream
        files = sorted(p for p in out_dir.rglob("*") if p.is_file())
        return Built(graph="model.xml", files=[str(p.relative_to(out_dir)) for p in files],
                     info={"ir": "model.xml", "blob": blob.name, **({"f32_layers": counts} if counts else {})})

    def load(self, spec: ComponentSpec):
        import openvino as ov

        compiled_info = spec.compiled or {}
        if compiled_info.get("blob"):
            path = spec.graph.parent / compiled_info["blob"]
            # A copy-on-write map: the pages stay the file's (a read-only artifact works, and
            # nothing is read into anonymous memory up front); OpenVINO computes from the
            # tensor's memory, so the component keeps it.
            blob = ov.Tensor(np.memmap(path, dtype=np.uint8, mode="c"), shared_memory=True)
            return OvComponent(spec.name, self._checked(
                spec, f"import its compiled model {path.name}",
                lambda: self._core().import_model(blob, self.device, self._config(None))), spec.io, blob)
        cache = None
        if compiled_info.get("cache_dir"):
            cache = spec.graph.parent / compiled_info["cache_dir"]
        model = self._model(spec, spec.graph)
        if self._f32_types() and spec.graph.suffix != ".xml":
            # An uncompiled graph: mark it now (a compiled IR carries its marks).
            model, _ = keep_f32(self._core(), model, self._f32_types())
        return OvComponent(spec.name, self._checked(
            spec, "compile it", lambda: self._core().compile_model(model, self.device, self._config(cache))), spec.io)

    def _checked(self, spec: ComponentSpec, what: str, make):
        try:
            compiled = make()
        except RuntimeError as e:
            raise EdgegenError(f"{spec.name}: OpenVINO cannot {what} on {self.device}: "
                               f"{str(e).strip().splitlines()[0][:300]}") from None
        self._check_precision(compiled)
        return compiled

    def _check_precision(self, compiled) -> None:
        # OpenVINO quietly computes in f32 when the device has no bf16/f16 kernels: refuse
        # instead, so an artifact never runs in a precision other than the one it was gated in.
        got = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        want = _HINT[self.resolved_precision()]
        if got != want:
            raise EdgegenError(f"OpenVINO on {self.device} computes in {got} here, not {want} "
                               f"(the device lacks {want} support); use precision {got}")


BACKEND = OpenVinoBackend
