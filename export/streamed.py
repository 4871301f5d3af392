"""`edgegen export --stream`: components too big for a regular export go through the streaming
exporter (export/streaming.py), the rest export as usual, into one artifact.

A regular export holds a component's fp32 weights in PyTorch, traces them, and loads the graph
in onnxruntime to validate it: FLUX's 11.9B transformer would need 48 GB twice, T5-XXL's 4.8B
encoder 19 GB twice. A streamed component is traced on the meta device and its weights are
copied from safetensors into the graph one tensor at a time (about 1 GB of RAM for FLUX), in
the stream dtype (bfloat16 by default: a bf16 checkpoint is copied bit for bit).

Where its weights come from: a diffusers folder's own component subfolder; for --random-weights,
a seeded random checkpoint written beside the output first (export/random_checkpoint.py) and
deleted after. Hub ids and single files are not streamed (diffusers would load them whole).

Validation: when the component's fp32 copy fits in RAM (tiny configs, small models), the
graph lifted to float32 (streaming.upcast_to_float32; only rounding of the weights to the
stream dtype is shared with the reference) is compared with PyTorch in fp32 holding the same
checkpoint weights, at the regular exporter's tolerances. Above that the whole graph can't run
here (onnxruntime's CPU EP has no bfloat16 MatMul), and the manifest says so; the per-block
check of bench/export_big.py covers the big transformers.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..runtimes.errors import EdgegenError
from .family import Family
from .weights import Source

# 1B parameters: 4 GB of fp32 weights, held by PyTorch, by the tracer's copies and by the
# validating onnxruntime session; the largest regular export measured here (playground-v25's
# 2.6B UNet) peaked at 15.7 GiB on a 24 GB machine.
STREAM_MIN_PARAMS = 1_000_000_000
# Whole-graph validation of a streamed component needs its fp32 copy in PyTorch and in onnxruntime.
VALIDATE_MAX_PARAMS = 500_000_000
LOW = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class StreamRequest:
    dtype: str = "bfloat16"
    components: tuple[str, ...] | None = None   # None: every model over STREAM_MIN_PARAMS

    def check(self) -> None:
        if self.dtype not in LOW:
            raise EdgegenError(f"--stream-dtype {self.dtype}: want one of {', '.join(LOW)}")


def _models(family: Family) -> dict[str, object]:
    """component -> its ModelDef / TextEncoderDef (the models a stream can cover; VAEs are small)."""
    return {**{te.component: te for te in family.text_encoders}, family.denoiser.component: family.denoiser}


def model_class(family: Family, name: str):
    import diffusers
    import transformers

    d = _models(family)[name]
    return getattr(transformers, d.model_class) if hasattr(d, "model_class") else getattr(diffusers, d.cls)


def model_config(family: Family, source: Source, name: str):
    """The config a component is built from: the family's own (random/tiny) or the folder's."""
    cls = model_class(family, name)
    if source.kind in ("random", "tiny"):
        d = _models(family)[name]
        cfg = (d.tiny if source.tiny else d.config) if hasattr(d, "model_class") else d.get(source.tiny)
        return {k: v for k, v in cfg.items() if not k.startswith("_")}
    folder = Path(source.path) / name
    if getattr(cls, "config_class", None) is not None:
        return cls.config_class.from_pretrained(str(folder))
    return cls.load_config(str(folder))


def meta_model(family: Family, source: Source, name: str):
    """The component's model with shapes only (IO specs and parameter counts need nothing more)."""
    import torch

    from .streaming import construct

    with torch.device("meta"):
        return construct(model_class(family, name), model_config(family, source, name)).eval()


def choose(family: Family, source: Source, req: StreamRequest) -> list[str]:
    """The components to stream, or a one-line error naming what is wrong."""
    req.check()
    if source.kind not in ("random", "tiny", "folder"):
        raise EdgegenError(f"--stream reads weights tensor by tensor from a diffusers folder or writes random ones; "
                           f"a {source.kind} source is loaded whole by diffusers (save it as a folder first)")
    known = list(_models(family))
    if req.components is not None:
        bad = [c for c in req.components if c not in known]
        if bad:
            raise EdgegenError(f"--stream {bad[0]}: {family.name} streams only {', '.join(known)}")
        return list(req.components)
    sizes = {n: sum(p.numel() for p in meta_model(family, source, n).parameters()) for n in known}
    return [n for n in known if sizes[n] >= STREAM_MIN_PARAMS]


def checkpoint_seed(family: Family, name: str, seed: int) -> int:
    """The seed of a streamed component's random checkpoint, for source seed `seed`."""
    return seed + 100 + sorted(_models(family)).index(name)


def checkpoint(family: Family, source: Source, name: str, model, scratch: Path, dtype: str,
               seed: int) -> tuple[Path, dict]:
    """Where the component's weights are read from, and what they are; random ones are written
    to `scratch` first (the record names the seed: bench/make_random_checkpoint.py rewrites the
    same bytes for a later per-block check)."""
    if source.kind == "folder":
        return Path(source.path) / name, {"path": str(Path(source.path) / name)}
    from .random_checkpoint import make_random_checkpoint

    path = scratch / f"{name}.safetensors"
    info = make_random_checkpoint(type(model), model.config, path, "bfloat16" if dtype == "bfloat16" else "float32",
                                  seed=checkpoint_seed(family, name, seed))
    return path, {k: v for k, v in info.items() if k != "path"}


def export_streamed(comp, ckpt: Path, weights: dict, folder: Path, dtype: str, say) -> tuple[list[str], dict]:
    """Stream `comp` (its module wraps a meta model) into folder/model.onnx from checkpoint `ckpt`
    (described by `weights`, as `checkpoint` returns them); (files, validation)."""
    from .streaming import CastFn, stream_export

    model, fn = comp.module.model, comp.module._fn
    rep = stream_export(type(model), model.config, ckpt, comp.io, folder, dtype=dtype,
                        wrapper=lambda m, io, dt: CastFn(m, io, dt, fn), log=say)
    if comp.params > VALIDATE_MAX_PARAMS:
        validation = {"whole_graph": False,
                      "why": f"{comp.params / 1e9:.1f}B parameters: the fp32 reference would not fit beside the "
                             f"graph, and onnxruntime's CPU EP has no {dtype} MatMul; bench/export_big.py checks "
                             f"single blocks"}
    else:
        validation = validate_lifted(comp, ckpt, folder / "model.onnx", dtype)
    streamed = {k: v for k, v in rep.to_dict().items() if k != "files"}
    return rep.files, {**validation, "streamed": {**streamed, "checkpoint": weights}}


def validate_lifted(comp, ckpt: Path, graph: Path, dtype: str) -> dict:
    """The graph (lifted to fp32 when it computes in bf16/fp16) against PyTorch fp32 with the
    checkpoint's weights, at the regular exporter's tolerances."""
    import torch

    from .components import Component, TupleOut
    from .onnx_export import validate_component
    from .streaming import Checkpoint, construct, upcast_to_float32

    meta = comp.module.model
    real = construct(type(meta), meta.config).eval()
    ck = Checkpoint(ckpt)
    with torch.no_grad():
        for name, p in real.named_parameters():
            if name not in ck:
                raise EdgegenError(f"{ckpt}: no tensor {name!r} for {comp.name}")
            p.copy_(ck.get(name).to(torch.float32))
    ref = Component(comp.name, TupleOut(real, comp.module._fn).eval(), comp.io, comp.params)
    with tempfile.TemporaryDirectory() as tmp:
        lifted = graph if dtype == "float32" else upcast_to_float32(graph, Path(tmp) / "model.onnx")
        result = validate_component(ref, lifted)
    return {**result, "whole_graph": True, "graph": "lifted to float32" if dtype != "float32" else "as written"}


@contextmanager
def scratch(out: Path, needed: bool):
    """Room for random checkpoints beside the output (same disk, so no /tmp size surprise),
    removed however the export ends; None when nothing needs it."""
    if not needed:
        yield None
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{out.name}.weights-", dir=out.parent))
    try:
        yield path
    finally:
        remove(path)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
