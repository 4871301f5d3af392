"""Export a model bigger than RAM to ONNX: trace it with weights on the meta device, then
stream the weights from safetensors into one external data file, one tensor at a time.

Mechanism (torch 2.13 / onnxscript 0.7 / onnx 1.23), measured on FLUX.1-schnell's 11.9B
transformer in bench/export_big.py:

1. Build the model with every parameter on the meta device (shapes and dtypes, no storage).
   Buffers are computed for real while building (they are small and some, such as sin/cos
   tables, are not in checkpoints), set aside, and then the model moves to meta entirely.
2. ``torch.onnx.export(dynamo=True, optimize=False)`` with meta example inputs. torch.export
   traces with fake tensors anyway, so meta weights suffice for the whole graph; the ONNX
   program's weight initializers are then TorchTensors around meta tensors (no data).
   ``torch.onnx.enable_fake_mode`` is gone from torch 2.13; meta parameters are the
   supported route. The exporter's own optimizer can't run here: it constant-folds small
   weights (transposing them, renaming them), which needs their values.
3. onnxscript's optimizer (constant folding, rewrite rules, dead-code removal: what
   ``optimize=True`` runs) with the weights temporarily turned into graph inputs, so no
   pass can fold, read or rename them; they become initializers again afterwards.
4. Serialize the graph without weights (a few MB), then for each weight: read it with
   ``safetensors.safe_open(...).get_tensor``, cast it to the graph's dtype, and append it to
   ``model.onnx.data`` with onnx's ``external_data_helper.save_external_data``, which sets the
   initializer's location/offset/length. At most one tensor is in memory at a time.

Precision: the graph computes in ``dtype`` ("float16" or "bfloat16"; "float32" for tests)
and stores its weights in it; inputs and outputs keep the IOSpec's dtypes (float32), cast at
the boundary by the wrapper, like ``keep_io_types``. bfloat16 weights from a bf16 checkpoint
are copied bit for bit; float16 casts them (an overflow past fp16's range is an error).
onnxruntime's CPU EP has no bfloat16 MatMul, so a bfloat16 graph runs on CUDA/TensorRT only;
``upcast_to_float32`` turns any (sub)graph into an fp32 one for checking on CPU.
"""
from __future__ import annotations

import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..runtimes.errors import EdgegenError
from ..runtimes.iospec import IOSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_IO_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32}
# Tensors of at least ALIGN_THRESHOLD bytes start on an ALIGN boundary in the data file, so a
# runtime can mmap them (onnx.save's own defaults: 1 MiB threshold, 64 KiB granularity).
ALIGN = 64 * 1024
ALIGN_THRESHOLD = 1 << 20


@dataclass
class StreamedExport:
    files: list[str]                       # relative to out_dir
    dtype: str                             # the graph's compute and weight dtype
    tensors: int                           # initializers streamed from the checkpoint or buffers
    data_bytes: int                        # size of model.onnx.data
    weights_device: str                    # where the traced model's weights lived ("meta")
    max_tensor_bytes: int                  # largest single tensor held in memory while streaming
    dropped: list[str] = field(default_factory=list)  # weights the graph doesn't use
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class CastIO(nn.Module):
    """forward(*inputs in IOSpec order) -> tuple of outputs in IOSpec order.

    Floating inputs are cast to the compute dtype (what diffusers pipelines do before calling
    the model), outputs to the IOSpec's dtype; the model is called with keyword arguments
    named after the IOSpec inputs and ``return_dict=False``.
    """

    def __init__(self, model: nn.Module, io: IOSpec, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self._names = io.input_names
        self._out = [_IO_DTYPES[t.dtype] for t in io.outputs]
        self._dtype = dtype

    def forward(self, *args):
        out = self._call(*(a.to(self._dtype) if a.is_floating_point() else a for a in args))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return tuple(o.to(d) for o, d in zip(out, self._out))

    def _call(self, *args):
        return self.model(**dict(zip(self._names, args)), return_dict=False)


class CastFn(CastIO):
    """CastIO around a component's own call, `fn(model, *inputs)` (export/components.py's
    TupleOut): the streamed graph then has exactly the regular export's inputs and outputs."""

    def __init__(self, model: nn.Module, io: IOSpec, dtype: torch.dtype, fn):
        super().__init__(model, io, dtype)
        self._fn = fn

    def _call(self, *args):
        return self._fn(self.model, *args)


@contextmanager
def _params_on_meta():
    """Parameters go to the meta device as they are registered; buffers stay real.

    (accelerate's init_empty_weights(include_buffers=False) does the same; it isn't a
    dependency here.) A Linear's `torch.empty` weight is allocated but never touched before
    it moves, so it never becomes resident; its init then runs on meta, at no cost.
    """
    orig = nn.Module.register_parameter

    def register(self, name, param):
        orig(self, name, param)
        if param is not None and param.device.type != "meta":
            p = self._parameters[name]
            self._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = orig


def construct(model_cls, config) -> nn.Module:
    """A diffusers ModelMixin (from_config), a transformers PreTrainedModel (config_class) or any nn.Module(**config)."""
    if getattr(model_cls, "config_class", None) is not None:
        cfg = model_cls.config_class(**config) if isinstance(config, dict) else config
        return model_cls(cfg)
    if hasattr(model_cls, "from_config"):
        return model_cls.from_config(config)
    return model_cls(**config)


def build_on_meta(model_cls, config, dtype: torch.dtype) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The model in `dtype` with all weights on meta, and its buffers' real values by name."""
    with _params_on_meta(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = construct(model_cls, config)
    keep = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    # nn.Module.to, not diffusers' override, which warns about _keep_in_fp32_modules (handled here).
    nn.Module.to(model, dtype)
    for name, mod in model.named_modules():
        if keep and any(k in name.split(".") for k in keep):
            nn.Module.float(mod)
    buffers = {n: b.detach().clone() for n, b in model.named_buffers() if b.device.type != "meta"}
    model.to("meta")
    return model.eval(), buffers


class Checkpoint:
    """Tensors by name from one .safetensors file, a sharded *.safetensors.index.json, or a folder of either.

    Each read opens its shard and closes it again (about a millisecond). safetensors 0.8's
    get_tensor leaves no file pages resident even with one long-lived handle (measured: 3.1 GB
    read, RSS +9 MB), but a reader that copies out of a whole-file mmap would keep every page
    it touched in this process's RSS until the handle closes; closing bounds that either way.
    """

    def __init__(self, path: Path):
        from safetensors import safe_open

        self._open = lambda f: safe_open(str(f), framework="pt")
        path = Path(path)
        if path.is_dir():
            idx = sorted(path.glob("*.safetensors.index.json"))
            shards = sorted(path.glob("*.safetensors"))
            if not idx and not shards:
                raise EdgegenError(f"{path}: no .safetensors files")
            path = idx[0] if idx else shards[0] if len(shards) == 1 else path
        if path.is_dir():
            files = sorted(path.glob("*.safetensors"))
        elif path.name.endswith(".index.json"):
            wm = json.loads(path.read_text())["weight_map"]
            files = sorted({path.parent / f for f in wm.values()})
        else:
            files = [path]
        self.where: dict[str, Path] = {}
        for f in files:
            with self._open(f) as h:
                for k in h.keys():
                    self.where[k] = f

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def shape(self, key: str) -> tuple[int, ...]:
        with self._open(self.where[key]) as h:
            return tuple(h.get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        with self._open(self.where[key]) as h:
            return h.get_tensor(key)


def _name_map(wrapper: nn.Module, model: nn.Module) -> dict[str, list[str]]:
    """Wrapper FQN (what the dynamo exporter names initializers) -> the model's own names for that tensor.

    Identity-based, so any wrapper prefix works, and tied weights list all their names.
    """
    inner: dict[int, list[str]] = {}
    for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        inner.setdefault(id(t), []).append(n)
    out = {}
    for n, t in [*wrapper.named_parameters(remove_duplicate=False), *wrapper.named_buffers(remove_duplicate=False)]:
        if id(t) in inner:
            out[n] = inner[id(t)]
    return out


def _meta_args(io: IOSpec) -> tuple[torch.Tensor, ...]:
    sizes = io.export_sizes()
    return tuple(torch.empty(t.resolve(sizes), dtype=_IO_DTYPES[t.dtype], device="meta") for t in io.inputs)


def _is_meta(value) -> bool:
    raw = getattr(value.const_value, "raw", None)
    return isinstance(raw, torch.Tensor) and raw.device.type == "meta"


def _optimize(model) -> None:
    """What torch.onnx.export(optimize=True) runs (onnxscript.optimizer.optimize_ir), minus rewrite
    rules whose pattern has several output nodes.

    onnxscript's matcher tries such a pattern against every combination of candidate nodes, which
    is quadratic in graph size: on FLUX's ~19k-node graph it took 1057 of 1430 seconds of
    optimization, for no rewrite (the one such rule in onnxscript 0.7, SlicesSplit, doesn't fire
    on these graphs; node counts are the same with and without it). optimize_ir takes no rule
    list, so its pass sequence is repeated here; if onnxscript's internals move, the plain
    optimizer runs instead (slower, same result).
    """
    import onnxscript.optimizer

    try:
        import onnx_ir.passes.common as common
        from onnxscript import rewriter
        from onnxscript.optimizer import _constant_folding

        rules = [r for r in rewriter._DEFAULT_REWRITE_RULES if r._target_pattern.has_single_output_node]
        fold = _constant_folding.FoldConstantsPass(shape_inference=True,
                                                   input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                                                   output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT)
    except (ImportError, AttributeError):
        onnxscript.optimizer.optimize(model)
        return
    import onnx_ir as ir

    ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager([fold, rewriter.RewritePass(rules), common.RemoveUnusedNodesPass(),
                               common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass()],
                              steps=2, early_stop=True),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


def _optimize_without_weights(model, weight_names: list[str]) -> list[str]:
    """Run onnxscript's optimizer with the weights as graph inputs; returns the weights left unused."""
    g = model.graph
    lifted = []
    for name in weight_names:
        v = g.initializers.pop(name)
        v.const_value = None
        g.inputs.append(v)
        lifted.append(v)
    _optimize(model)
    for v in lifted:
        g.inputs.remove(v)
    return [v.name for v in lifted if not v.uses()]


def _onnx_types() -> dict:
    from onnx import TensorProto as T

    return {torch.float32: T.FLOAT, torch.float16: T.FLOAT16, torch.bfloat16: T.BFLOAT16, torch.float64: T.DOUBLE,
            torch.int64: T.INT64, torch.int32: T.INT32, torch.int8: T.INT8, torch.uint8: T.UINT8, torch.bool: T.BOOL}


def _checkpoint_key(own: list[str], ckpt: Checkpoint, key_map) -> str | None:
    """The checkpoint key for a tensor known by `own` names (several when tied), or None."""
    for n in own:
        k = key_map(n) if key_map else n
        if k in ckpt:
            return k
    return None


def _check_checkpoint(model: nn.Module, buffers: dict, ckpt: Checkpoint, where: Path, key_map) -> None:
    missing, wrong = [], []
    groups: dict[int, tuple[list[str], torch.Tensor]] = {}
    for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        groups.setdefault(id(t), ([], t))[0].append(n)
    for aliases, t in groups.values():
        own = aliases[0]
        key = _checkpoint_key(aliases, ckpt, key_map)
        if key is None:
            if not any(a in buffers for a in aliases):
                missing.append(own if not key_map else f"{own} (key {key_map(own)!r})")
        elif ckpt.shape(key) != tuple(t.shape):
            wrong.append(f"{key}: {ckpt.shape(key)} in the checkpoint, {tuple(t.shape)} in the model")
    if missing or wrong:
        more = lambda xs: "" if len(xs) <= 3 else f" and {len(xs) - 3} more"  # noqa: E731
        raise EdgegenError(f"{where} doesn't fit {type(model).__name__}: "
                           + "; ".join(([f"missing {', '.join(missing[:3])}{more(missing)}"] if missing else [])
                                       + ([f"shape {'; '.join(wrong[:3])}{more(wrong)}"] if wrong else [])))


def _tensor_bytes(t: torch.Tensor) -> bytes:
    # numpy has no bfloat16: reinterpret the bytes (little-endian, as ONNX raw_data wants) first.
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def stream_export(model_cls, config, checkpoint: Path, io: IOSpec, out_dir: Path, dtype: str = "float16",
                  wrapper: Callable[[nn.Module, IOSpec, torch.dtype], nn.Module] = CastIO,
                  key_map: Callable[[str], str] | None = None, optimize: bool = True,
                  log: Callable[[str], None] | None = None) -> StreamedExport:
    """Write out_dir/model.onnx + model.onnx.data for `model_cls(config)` with weights from `checkpoint`.

    io: the IOSpec; the wrapper's forward takes its inputs in order and returns its outputs.
    dtype: compute and storage dtype of the graph. key_map: model state_dict name -> checkpoint
    key, when they differ. The model never holds real weights (see the module docstring).
    """
    import onnx
    import onnx_ir as ir
    from onnx.external_data_helper import save_external_data, set_external_data

    say = log or (lambda s: None)
    onnx_types = _onnx_types()
    if dtype not in DTYPES:
        raise EdgegenError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    from .onnx_export import _torch_dims

    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    ckpt = Checkpoint(checkpoint)
    model, buffers = build_on_meta(model_cls, config, DTYPES[dtype])
    module = wrapper(model, io, DTYPES[dtype]).eval()
    module.to("meta")
    names = _name_map(module, model)
    devices = sorted({t.device.type for t in [*module.parameters(), *module.buffers()]})
    _check_checkpoint(model, buffers, ckpt, checkpoint, key_map)  # fail before the long trace
    secs["build"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("tracing on meta and translating to ONNX")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, _meta_args(io), dynamo=True, dynamic_shapes=(_torch_dims(io),),
                                 input_names=io.input_names, output_names=io.output_names,
                                 optimize=False, verbose=False)
    secs["trace"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ir_model = prog.model
    g = ir_model.graph
    specs = {n: (v.const_value.raw.dtype, tuple(v.const_value.raw.shape)) for n, v in g.initializers.items() if _is_meta(v)}
    unknown = [n for n in specs if n not in names]
    if unknown:  # e.g. a tensor constant created inside forward: its value was lost on meta
        raise EdgegenError(f"initializers with no data and no parameter/buffer behind them: {unknown[:5]}")
    if optimize:
        say(f"optimizing the graph ({ir_model.graph.num_nodes()} nodes)")
        dropped = _optimize_without_weights(ir_model, list(specs))
    else:
        for n in specs:
            g.initializers.pop(n).const_value = None
        dropped = []
    kept = [n for n in specs if n not in dropped]
    # The graph without weights: a few MB however big the model, so protobuf's 2 GB limit is no concern.
    proto = ir.to_proto(ir_model)
    del prog, ir_model, g
    secs["optimize"] = time.perf_counter() - t0

    out_dir.mkdir(parents=True, exist_ok=True)
    path, data_name = out_dir / "model.onnx", "model.onnx.data"
    path.unlink(missing_ok=True)
    (out_dir / data_name).write_bytes(b"")

    t0 = time.perf_counter()
    say(f"streaming {len(kept)} tensors from {checkpoint}")
    offset, biggest = 0, 0
    for i, name in enumerate(kept):
        target, want = specs[name]
        own = names[name][0]
        key = _checkpoint_key(names[name], ckpt, key_map)
        buf = next((buffers[a] for a in names[name] if a in buffers), None)
        if key is not None:
            src = ckpt.get(key)
        elif buf is not None:
            src = buf
        else:
            raise EdgegenError(f"{checkpoint}: no tensor for {own}" + (f" (key {key_map(own)!r})" if key_map else ""))
        if tuple(src.shape) != want:
            raise EdgegenError(f"{own}: checkpoint shape {tuple(src.shape)}, model wants {want}")
        t = src.to(target)
        if target == torch.float16 and src.dtype not in (torch.float16,) and src.is_floating_point():
            bad = torch.isinf(t) & torch.isfinite(src)
            if bad.any():
                raise EdgegenError(f"{own}: {int(bad.sum())} values overflow float16; export with dtype='bfloat16'")
        tp = onnx.TensorProto()
        tp.name = name
        tp.data_type = onnx_types[target]
        tp.dims.extend(want)
        tp.raw_data = _tensor_bytes(t)
        n = len(tp.raw_data)
        biggest = max(biggest, n + src.numel() * src.element_size())
        del src, t
        if n >= ALIGN_THRESHOLD:
            offset = -(-offset // ALIGN) * ALIGN
        # onnx's helper appends raw_data at `offset` (padding the gap) and records location/offset/length.
        set_external_data(tp, data_name, offset=offset)
        save_external_data(tp, str(out_dir))
        tp.ClearField("raw_data")
        offset += n
        proto.graph.initializer.append(tp)
        if (i + 1) % 100 == 0:
            say(f"  {i + 1}/{len(kept)} tensors, {offset / 2**30:.2f} GiB")
    secs["stream"] = time.perf_counter() - t0
    onnx.save_model(proto, str(path))
    onnx.checker.check_model(str(path))  # by path: checks the external data references, loads no weights
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.iterdir() if p.is_file())
    return StreamedExport(files=files, dtype=dtype, tensors=len(kept), data_bytes=(out_dir / data_name).stat().st_size,
                          weights_device=",".join(devices), max_tensor_bytes=biggest, dropped=dropped,
                          seconds={k: round(s, 1) for k, s in secs.items()})


# --- Checking a streamed export piece by piece -------------------------------------------
# A 12B graph can't run in fp32 here, and onnxruntime's CPU EP can't run bfloat16 at all.
# These helpers cut one module's nodes out of the exported graph (the sub-model reuses the
# big model's external data file in place) and, for the check, lift it to float32.

SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # module FQNs the dynamo exporter records per node


def scope_of(node) -> list[str]:
    import ast

    for p in node.metadata_props:
        if p.key == SCOPES_KEY:
            return ast.literal_eval(p.value)
    return []


def scope_boundary(model, scope: str) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of the nodes traced inside module `scope` (a wrapper FQN, e.g.
    "model.transformer_blocks.3"): values made outside and used inside (initializers
    excluded), and values made inside and used outside or returned by the graph."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    inside = [scope in scope_of(n) for n in g.node]
    if not any(inside):
        raise EdgegenError(f"no node of the graph was traced inside {scope!r}")
    made_in = {o for n, i in zip(g.node, inside) if i for o in n.output}
    ins, outs = [], []
    for n, i in zip(g.node, inside):
        for v in n.input:
            if i and v and v not in made_in and v not in inits and v not in ins:
                ins.append(v)
            if not i and v in made_in and v not in outs:
                outs.append(v)
    outs += [o.name for o in g.output if o.name in made_in and o.name not in outs]
    return ins, outs


def extract_submodel(model_path: Path, inputs: list[str], outputs: list[str], out_path: Path) -> Path:
    """The nodes between `inputs` and `outputs`, saved next to model_path so its weights stay
    where they are (external data locations are relative to the model file's folder).

    onnx.utils.extract_model would do this but loads every weight first (24 GB for FLUX);
    its Extractor works on the graph alone, so it runs on a weight-less load here. Graph
    inputs the cut doesn't need are dropped.
    """
    import onnx
    import onnx.utils

    if out_path.parent.resolve() != model_path.parent.resolve():
        raise EdgegenError("the sub-model must sit next to the model to share its external data")
    m = onnx.load(str(model_path), load_external_data=False)
    sub = onnx.utils.Extractor(m).extract_model(inputs, outputs)
    used = {v for n in sub.graph.node for v in n.input}
    keep = [i for i in sub.graph.input if i.name in used]
    del sub.graph.input[:]
    sub.graph.input.extend(keep)
    onnx.save_model(sub, str(out_path))
    return out_path


def upcast_to_float32(model_path: Path, out_path: Path) -> Path:
    """A copy of a float16/bfloat16 graph computing in float32 (optimize.graph.lift_to_float32).
    Loads the sub-model's weights: use it on extracted blocks and small graphs, not on a whole
    12B graph (the weight-only passes' compute=float32 lifts while streaming)."""
    import onnx

    from ..optimize.graph import lift_to_float32

    m = onnx.load(str(model_path), load_external_data=True)
    lift_to_float32(m.graph)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(m, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=out_path.name + ".data", size_threshold=1024)
    return out_path
