"""Export one component to ONNX from its IOSpec, then check it against PyTorch."""
from __future__ import annotations

import gc
import warnings
from pathlib import Path

import numpy as np
import torch

from ..runtimes.errors import EdgegenError
from ..runtimes.iospec import IOSpec
from .components import Component

# fp32 graph vs fp32 eager: reordered reductions only. atol covers near-zero outputs,
# rtol scales with the output's magnitude (random real-size weights give large ones).
ATOL = 1e-4
RTOL = 1e-3
# Above this, weights go to one external .data file (protobuf's limit is 2 GB).
EXTERNAL_DATA_BYTES = 1 << 30
# The float64 re-check of a miss (see _fp64_arbiter) holds the weights at 8 bytes each.
FP64_ARBITER_BYTES = 8 << 30


def _torch_dims(io: IOSpec) -> tuple:
    made = {}
    for name, d in io.dims.items():
        if d.min == d.max:      # a fixed dim stays a constant in the graph (static exports)
            continue
        if d.multiple > 1:
            base = torch.export.Dim(f"{name}_div{d.multiple}", min=d.min // d.multiple, max=d.max // d.multiple)
            made[name] = d.multiple * base
        else:
            made[name] = torch.export.Dim(name, min=d.min, max=d.max)
    return tuple({i: made[s] for i, s in enumerate(t.shape) if s in made} or None for t in io.inputs)


def _dynamic_axes(io: IOSpec) -> dict[str, dict[int, str]]:
    def fixed(expr: str) -> bool:   # an output dim such as "8*latent_height" is fixed when its dim is
        return all(d.min == d.max for n, d in io.dims.items() if n in expr.replace("*", " ").replace("/", " ").split())

    return {t.name: {i: str(s) for i, s in enumerate(t.shape) if isinstance(s, str) and not fixed(s)}
            for t in (*io.inputs, *io.outputs)}


def _tensors_of(graph):
    """Initializers and attribute tensors of `graph` and its subgraphs."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from _tensors_of(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _tensors_of(g)


def _consolidate(path: Path, size_threshold: int = 1024) -> None:
    """Gather the TorchScript exporter's one-file-per-tensor external data into model.onnx.data,
    one tensor at a time.

    Loading the model with its weights and saving it again (onnx.load + onnx.save_model) held
    every weight a second time while the PyTorch model was still resident: for SDXL's UNet
    10.3 GB on top of the 14.4 GB pipeline, past this machine's 23.5 GB. The bytes are copied
    file to file and never set on the loaded model: protobuf (upb) keeps a message's bytes
    fields in its arena until the whole message goes, so setting and clearing raw_data tensor
    by tensor would grow to the full size all the same (measured). Layout as onnx.save's
    (tensors of at least 1 MiB start on a 64 KiB boundary, so runtimes can mmap them); inline
    tensors of at least `size_threshold` bytes move to the data file too, as with onnx.save.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    from .streaming import ALIGN, ALIGN_THRESHOLD

    folder, data_name = path.parent, path.name + ".data"
    model = onnx.load(str(path), load_external_data=False)
    moved = set()
    offset = 0
    with open(folder / data_name, "wb") as data:
        for t in _tensors_of(model.graph):
            if uses_external_data(t):
                info = ExternalDataInfo(t)
                if info.location == data_name:
                    raise EdgegenError(f"{path}: a tensor already lives in {data_name}")
                with open(folder / info.location, "rb") as f:
                    f.seek(info.offset or 0)
                    raw = f.read(info.length) if info.length else f.read()
                moved.add(info.location)
            elif t.HasField("raw_data") and len(t.raw_data) >= size_threshold:
                raw = t.raw_data
                t.ClearField("raw_data")
            else:
                continue
            if len(raw) >= ALIGN_THRESHOLD:
                pad = -offset % ALIGN
                data.write(b"\0" * pad)
                offset += pad
            data.write(raw)
            del t.external_data[:]
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", offset), ("length", len(raw))):
                entry = t.external_data.add()
                entry.key, entry.value = key, str(value)
            offset += len(raw)
            del raw
    onnx.save_model(model, str(path))
    for f in moved:
        (folder / f).unlink()


def export_component(comp: Component, out_dir: Path, exporter: str = "torchscript") -> list[str]:
    """Write `out_dir/model.onnx` (+ model.onnx.data when large); return the files written.

    exporter "torchscript" (opset 17) is fast and yields graphs whose attention
    onnxruntime.transformers can fuse; "dynamo" (opset 20) handles ops TorchScript
    cannot (RMSNorm in DiTs) but takes ~10x longer.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    io = comp.io
    feeds = io.example(io.export_sizes(), seed=0)
    args = tuple(torch.from_numpy(feeds[n]) for n in io.input_names)
    big = comp.params * 4 > EXTERNAL_DATA_BYTES
    path = out_dir / "model.onnx"
    comp.module.eval()  # TorchScript export restores the training flag of the outermost module
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(comp.module, args, str(path), dynamo=True, dynamic_shapes=(_torch_dims(io),),
                              input_names=io.input_names, output_names=io.output_names,
                              external_data=big, verbose=False, optimize=comp.onnx_optimize)
        elif exporter == "torchscript":
            torch.onnx.export(comp.module, args, str(path), dynamo=False, opset_version=17,
                              input_names=io.input_names, output_names=io.output_names,
                              dynamic_axes=_dynamic_axes(io))
            if big or len(list(out_dir.iterdir())) > 1:
                _consolidate(path)
        else:
            raise EdgegenError(f"unknown exporter {exporter!r}; known: torchscript, dynamo")
    gc.collect()
    return sorted(str(p.relative_to(out_dir)) for p in out_dir.iterdir() if p.is_file())


def validation_points(io: IOSpec) -> list[dict[str, int]]:
    """Shapes inside the declared ranges and, where a range allows, other than the export shape:
    the smallest batch between min and opt, and a bigger batch at min (a static export has one)."""
    b = io.dims["batch"]
    points = [io.sizes("mid", batch=b.min), io.sizes("min", batch=min(3, b.max))]
    return [p for k, p in enumerate(points) if p not in points[:k]]


def _fp64_arbiter(comp: Component, io: IOSpec, feeds: dict, spec, got: np.ndarray, ref32: np.ndarray) -> dict:
    """On a miss, ask PyTorch in float64 which side is right. Long fp32 reductions can be the
    inaccurate side: DC-AE's ReLU linear attention sums ~1e5 positions at 640 px, where eager fp32
    PyTorch is 0.58 off its own fp64 result while onnxruntime's fused graph is 3e-5 off it. The
    graph passes only if it is within tolerance of the fp64 result."""
    k = io.output_names.index(spec.name)
    if comp.params * 8 > FP64_ARBITER_BYTES:
        return {"max_abs_err_fp64": float("inf")}   # too big to hold in float64 here: the fp32 verdict stands
    try:
        with torch.no_grad():
            comp.module.double()
            ref64 = comp.module(*(torch.from_numpy(feeds[n]).double() if feeds[n].dtype == np.float32
                                  else torch.from_numpy(feeds[n]) for n in io.input_names))[k].numpy()
    except (RuntimeError, TypeError):   # a module that cannot run in float64 keeps the fp32 verdict
        return {"max_abs_err_fp64": float("inf")}
    finally:
        comp.module.float()   # float32 -> float64 -> float32 is exact: the weights are unchanged
    return {"max_abs_err_fp64": float(np.abs(got.astype(np.float64) - ref64).max()),
            "fp32_reference_err": float(np.abs(ref32.astype(np.float64) - ref64).max())}


def validate_component(comp: Component, graph: Path, seed: int = 1, release=None) -> dict:
    """Run ORT and torch on the same inputs; raise EdgegenError on NaN or a miss.

    PyTorch's references are computed before the onnxruntime session exists. `release`, when
    given, is called between the two if nothing here can read the weights afterwards (the fp64
    re-check of a miss can't run at this size), so the caller can free them: the torch weights
    and the session's copy never need to be resident together (SDXL's UNet: 10.3 GB each).
    """
    import onnxruntime as ort

    io = comp.io
    points = validation_points(io)
    feeds = [io.example(sizes, seed=seed + k) for k, sizes in enumerate(points)]
    refs = []
    for f in feeds:
        with torch.no_grad():
            refs.append([r.numpy() for r in comp.module(*(torch.from_numpy(f[n]) for n in io.input_names))])
    if release is not None and comp.params * 8 > FP64_ARBITER_BYTES:
        release()
        gc.collect()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    checks = []
    for sizes, f, ref in zip(points, feeds, refs):
        got = sess.run(io.output_names, f)
        for spec, r, g in zip(io.outputs, ref, got):
            if g.shape != spec.resolve(sizes) or g.shape != r.shape:
                raise EdgegenError(f"{comp.name}.{spec.name}: ONNX shape {g.shape}, PyTorch {r.shape} at {sizes}")
            if not np.isfinite(g).all():
                raise EdgegenError(f"{comp.name}.{spec.name}: ONNX output has NaN/inf at {sizes}")
            err = float(np.abs(g.astype(np.float64) - r).max())
            scale = float(np.abs(r).max())
            tol = ATOL + RTOL * scale
            check = {"output": spec.name, "sizes": sizes, "max_abs_err": err, "max_abs_ref": scale, "tolerance": tol}
            if err > tol:
                check.update(_fp64_arbiter(comp, io, f, spec, g, r))
                err = check["max_abs_err_fp64"]
            checks.append({**check, "passed": err <= tol})
            if err > tol:
                raise EdgegenError(f"{comp.name}.{spec.name}: ONNX differs from PyTorch by {err:.3g} > {tol:.3g} at {sizes}")
    del sess
    return {"reference": "pytorch fp32", "rule": f"max|onnx-torch| <= {ATOL} + {RTOL}*max|torch|",
            "passed": True, "checks": checks}
