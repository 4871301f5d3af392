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


def _consolidate(path: Path) -> None:
    """Gather the TorchScript exporter's one-file-per-tensor external data into model.onnx.data."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    for f in path.parent.iterdir():
        if f != path:
            f.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)


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


def validate_component(comp: Component, graph: Path, seed: int = 1) -> dict:
    """Run ORT and torch on the same inputs; raise EdgegenError on NaN or a miss."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    io = comp.io
    checks = []
    for k, sizes in enumerate(validation_points(io)):
        feeds = io.example(sizes, seed=seed + k)
        with torch.no_grad():
            ref = comp.module(*(torch.from_numpy(feeds[n]) for n in io.input_names))
        got = sess.run(io.output_names, feeds)
        for spec, r, g in zip(io.outputs, ref, got):
            r = r.numpy()
            if g.shape != spec.resolve(sizes) or g.shape != r.shape:
                raise EdgegenError(f"{comp.name}.{spec.name}: ONNX shape {g.shape}, PyTorch {r.shape} at {sizes}")
            if not np.isfinite(g).all():
                raise EdgegenError(f"{comp.name}.{spec.name}: ONNX output has NaN/inf at {sizes}")
            err = float(np.abs(g.astype(np.float64) - r).max())
            scale = float(np.abs(r).max())
            tol = ATOL + RTOL * scale
            check = {"output": spec.name, "sizes": sizes, "max_abs_err": err, "max_abs_ref": scale, "tolerance": tol}
            if err > tol:
                check.update(_fp64_arbiter(comp, io, feeds, spec, g, r))
                err = check["max_abs_err_fp64"]
            checks.append({**check, "passed": err <= tol})
            if err > tol:
                raise EdgegenError(f"{comp.name}.{spec.name}: ONNX differs from PyTorch by {err:.3g} > {tol:.3g} at {sizes}")
    del sess
    return {"reference": "pytorch fp32", "rule": f"max|onnx-torch| <= {ATOL} + {RTOL}*max|torch|",
            "passed": True, "checks": checks}
