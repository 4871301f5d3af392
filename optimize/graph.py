"""ONNX graph helpers shared by the passes: loading and saving with external data, the
weight-bearing nodes of a graph, the skip list, exposing intermediate tensors.

Memory: `load_model` reads a graph and its external data once (one copy of the weights
in memory); `structure` reads the graph without its weights (kilobytes, even for a
multi-GB UNet) for everything that only looks at nodes; `rewrite_weights` streams a
graph's initializers one tensor at a time from the source files into one new data file,
so a pass built on it (pruning) never holds more than one tensor.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

GRAPH = "model.onnx"
DATA = "model.onnx.data"
# Beyond this a graph cannot be one protobuf (2 GiB limit); below it one file is simpler.
INLINE_LIMIT = 1_500_000_000
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")


def load_model(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=True)


def structure(path: Path) -> onnx.ModelProto:
    """The graph without external weights (inline initializers are still read)."""
    return onnx.load(str(path), load_external_data=False)


def save_model(model: onnx.ModelProto, folder: Path, name: str = GRAPH) -> list[str]:
    """Write `model` into `folder`; weights go to one external file only when they must."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in (folder / name, folder / DATA):
        if f.exists():
            f.unlink()
    size = sum(len(t.raw_data) for t in model.graph.initializer) + model.ByteSize() // 8
    if _has_external(model) or size > INLINE_LIMIT:
        onnx.save_model(model, str(folder / name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA, size_threshold=1024)
        return [name, DATA]
    onnx.save_model(model, str(folder / name))
    return [name]


def _has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """Convert to `target` opset (int4/fp8 types need 19/21) with onnx's version converter.

    The converter serialises the model, so a >2 GiB graph is converted without its
    weights (they stay external) and the weights are attached back by name.
    """
    if opset(model) >= target:
        return model
    from onnx import version_converter

    weights = {t.name: t for t in model.graph.initializer}
    shell = onnx.ModelProto()
    shell.CopyFrom(model)
    del shell.graph.initializer[:]
    for t in model.graph.initializer:  # weightless stand-ins keep names, types and shapes
        stub = shell.graph.initializer.add()
        stub.name, stub.data_type = t.name, t.data_type
        stub.dims.extend(t.dims)
        stub.data_location = TensorProto.EXTERNAL
        e = stub.external_data.add()
        e.key, e.value = "location", "__weights_in_memory__"
    out = version_converter.convert_version(shell, target)
    inits = []
    for stub in out.graph.initializer:
        inits.append(weights[stub.name] if stub.name in weights else stub)
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    if out.ir_version < 10 and target >= 21:
        out.ir_version = 10
    return out


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def weight_input(node: onnx.NodeProto, inits: set[str]) -> str | None:
    """The constant weight of a Conv/MatMul/Gemm node, or None for activation x activation."""
    if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
        return None
    w = node.input[1]
    return w if w in inits else None


def weight_nodes(model: onnx.ModelProto, op_types=WEIGHT_OPS) -> list[onnx.NodeProto]:
    """Conv/MatMul/Gemm nodes with a constant weight, in graph (topological) order."""
    inits = initializer_names(model)
    return [n for n in model.graph.node if n.op_type in op_types and weight_input(n, inits)]


# -- the skip list ------------------------------------------------------------------------
# Layers the best int8/fp8 recipes keep in float: embeddings, time/guidance projections,
# the first and last convolutions and the attention block's proj_in/proj_out, norms.
# Matched against diffusers module paths, which both exporters keep: TorchScript in node
# names (/model/down_blocks.0/resnets.0/time_emb_proj/Gemm) and weight names
# (model.conv_in.weight), dynamo in weight names (conv_in.weight) and node metadata.
SKIP_PATTERNS = (
    r"embedding",             # time_embedding, add_embedding, token/position_embedding
    r"time_proj|time_emb_proj|add_time_proj|cond_proj|guidance",
    r"(^|[./])(conv_in|conv_out|proj_in|proj_out)([./]|$)",
    r"(^|[./])(post_quant_conv|quant_conv)([./]|$)",
    r"norm",                  # norm1/2/3, final_layer_norm, norm_out (adaptive norms' linears)
    r"text_projection|context_embedder|x_embedder",   # text projection, DiT input embedders
)
_SKIP_RE = re.compile("|".join(f"(?:{p})" for p in SKIP_PATTERNS))


# Weight-only quantization has no activation ranges to protect, so it keeps only what
# the int4 recipes for diffusion models keep (GGUF/NF4 FLUX and SD3 checkpoints): the
# input embedders, the sinusoidal time/guidance projections and the output head. Norm
# modulation linears and block-level proj_in/proj_out (a third of FLUX's weights) and the
# UNet resnets' time_emb_proj are ordinary linears and quantize well weight-only.
WEIGHT_ONLY_SKIP_PATTERNS = (
    r"embedding|embedder|time_proj|add_time_proj|cond_proj|guidance",
    r"(^|[./])(conv_in|conv_out|post_quant_conv|quant_conv|norm_out)([./]|$)",
    r"text_projection",
)
_WEIGHT_ONLY_SKIP_RE = re.compile("|".join(f"(?:{p})" for p in WEIGHT_ONLY_SKIP_PATTERNS))


def matches_skip_pattern(key: str, weight_only: bool = False) -> bool:
    return bool((_WEIGHT_ONLY_SKIP_RE if weight_only else _SKIP_RE).search(key))


def node_key(node: onnx.NodeProto, inits: set[str]) -> str:
    """The names that identify a node's module: node name, weight names, scope metadata."""
    parts = [node.name] + [i for i in node.input if i in inits]
    parts += [p.value for p in node.metadata_props if p.key in ("namespace", "pkg.torch.onnx.name_scopes")]
    return " ".join(parts)


def skip_list(model: onnx.ModelProto, op_types=WEIGHT_OPS, first_last: bool = True) -> list[str]:
    """Names of weight nodes to keep in float: the patterns above plus the first and last."""
    inits = initializer_names(model)
    nodes = weight_nodes(model, op_types)
    skip = [n.name for n in nodes if _SKIP_RE.search(node_key(n, inits))]
    if first_last and nodes:
        for n in (nodes[0], nodes[-1]):
            if n.name not in skip:
                skip.append(n.name)
    return skip


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Quantizers and block lists address nodes by name; give unnamed nodes one."""
    seen = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}_edgegen"
        seen.add(n.name)


# -- intermediate tensors -----------------------------------------------------------------

def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Float32 outputs of compute nodes (not Constants), in graph order, via shape inference."""
    inferred = onnx.shape_inference.infer_shapes(_weightless(model))
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    outs = {o.name for o in model.graph.output}
    names = []
    for n in model.graph.node:
        if n.op_type in ("Constant", "Shape", "Identity"):
            continue
        for o in n.output:
            if o and o not in outs and types.get(o) == TensorProto.FLOAT:
                names.append(o)
    return names


def _weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference does not need weight values: drop raw data, keep dims (2 GiB-safe)."""
    shell = onnx.ModelProto()
    shell.CopyFrom(model)
    for t in shell.graph.initializer:
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.ClearField("int64_data")
        t.ClearField("int32_data")
        t.ClearField("external_data")
        t.data_location = TensorProto.DEFAULT
    # Recorded value_info can disagree with a converted graph (the fp16 converter retypes
    # tensors); inference starts from the nodes alone.
    del shell.graph.value_info[:]
    return shell


def expose(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` with `names` added as float32 graph outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for n in names:
        if n not in have:
            out.graph.output.append(onnx.helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    return out


# -- streaming weight rewrite -------------------------------------------------------------

def read_initializer(t: onnx.TensorProto, base: Path) -> np.ndarray:
    if t.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(t)
    info = {e.key: e.value for e in t.external_data}
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    count = int(np.prod(t.dims)) if len(t.dims) else 1
    offset = int(info.get("offset", 0))
    with open(base / info["location"], "rb") as f:
        f.seek(offset)
        arr = np.fromfile(f, dtype=dtype, count=count)
    return arr.reshape(tuple(t.dims))


LOW_FLOATS = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


def lift_to_float32(g: onnx.GraphProto, initializers: bool = True) -> None:
    """Make a float16/bfloat16 graph compute in float32, in place: Constant/ConstantOfShape
    values, Cast targets, graph IO and value_info types and (unless `initializers` is False, for
    callers that stream them) initializers. value_info keeps its symbolic shapes (the per-block
    checks find the residual streams by them).

    onnxruntime.transformers.float16 / onnxconverter-common only go fp32 -> fp16; nothing in
    onnx or onnxruntime goes back, so this is written here.
    """
    def lift_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)

    def lift_type(tp) -> None:
        if tp.HasField("tensor_type") and tp.tensor_type.elem_type in LOW_FLOATS:
            tp.tensor_type.elem_type = TensorProto.FLOAT

    if initializers:
        for i, t in enumerate(g.initializer):
            if t.data_type in LOW_FLOATS:
                g.initializer[i].CopyFrom(lift_tensor(t))
    for v in (*g.input, *g.output, *g.value_info):
        lift_type(v.type)
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in LOW_FLOATS:
                a.t.CopyFrom(lift_tensor(a.t))
            elif a.type == onnx.AttributeProto.GRAPH:
                lift_to_float32(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sg in a.graphs:
                    lift_to_float32(sg)
            elif n.op_type == "Cast" and a.name == "to" and a.i in LOW_FLOATS:
                a.i = TensorProto.FLOAT


@dataclass
class NewTensor:
    """An initializer that replaces another in `rewrite_weights`: `array` holds the stored
    bytes; `dims` the logical shape where they differ (int4 packs two values per byte)."""

    name: str
    array: np.ndarray
    data_type: int
    dims: tuple[int, ...] | None = None


def rewrite_weights(src: Path, dst: Path, fn: Callable[[str, np.ndarray], object],
                    names: set[str], edit: Callable[[onnx.ModelProto], None] | None = None,
                    model: onnx.ModelProto | None = None) -> list[str]:
    """Copy graph `src` into folder `dst`, replacing initializer `name` in `names` by
    fn(name, array): an array of the same shape and dtype, None (unchanged),
    (array, onnx data type) to store it as another type (bf16 as uint16 bits), or a list
    of `NewTensor`s that take its place (a quantized weight and its scales).
    `edit(model)` may change the graph (not the weights) before it is saved; `model` is
    src's weightless structure when the caller already changed it (an opset upgrade).

    External tensors are read one by one from the source files and appended to one new
    data file, so peak memory is one tensor whatever the model size. Returns file names.
    """
    model = structure(src) if model is None else model
    base = src.parent
    dst.mkdir(parents=True, exist_ok=True)
    external = _has_external(model)
    data_path = dst / DATA
    inits = []
    with open(data_path, "wb") if external else _NullFile() as data:
        for t in model.graph.initializer:
            if t.name in names:
                arr = read_initializer(t, base)
                new = fn(t.name, arr)
                if isinstance(new, list):
                    for nt in new:
                        out = onnx.TensorProto()
                        out.name, out.data_type = nt.name, nt.data_type
                        out.dims.extend(nt.dims if nt.dims is not None else nt.array.shape)
                        _store(out, nt.array, data, external)
                        inits.append(out)
                    continue
                if isinstance(new, tuple):
                    new, t.data_type = new
                elif new is not None:
                    assert new.shape == arr.shape and new.dtype == arr.dtype, t.name
                arr = arr if new is None else new
                _store(t, arr, data, external)
            elif t.data_location == TensorProto.EXTERNAL:
                _store(t, read_initializer(t, base), data, external)
            inits.append(t)
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    if edit is not None:
        edit(model)
    onnx.save_model(model, str(dst / GRAPH))
    return [GRAPH, DATA] if external else [GRAPH]


class _NullFile:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _store(t: onnx.TensorProto, arr: np.ndarray, data, external: bool) -> None:
    raw = np.ascontiguousarray(arr).tobytes()
    for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        t.ClearField(f)
    if not external or len(raw) < 1024:
        t.ClearField("external_data")
        t.data_location = TensorProto.DEFAULT
        t.raw_data = raw
        return
    # Align like onnx's own writer does, so the data file can be memory-mapped.
    pos = data.tell()
    pad = (-pos) % 4096
    if pad:
        data.write(b"\0" * pad)
        pos += pad
    data.write(raw)
    t.ClearField("raw_data")
    t.ClearField("external_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", DATA), ("offset", str(pos)), ("length", str(len(raw)))):
        e = t.external_data.add()
        e.key, e.value = k, v


def graph_bytes(folder: Path, files: list[str]) -> int:
    return sum(os.path.getsize(folder / f) for f in files)


# -- sessions and intermediate sizes -------------------------------------------------------

PROTO_LIMIT = 1_800_000_000


def session(model: onnx.ModelProto, workdir: Path | None = None, optimize: bool = True):
    """A CPU onnxruntime session for an in-memory model; a >2 GiB model goes through a
    temporary file with external data (protobuf cannot serialise it). optimize=False:
    basic graph optimizations only (analysis sessions with many exposed outputs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Spinning pool threads would steal the cores numpy needs between runs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if sum(len(t.raw_data) for t in model.graph.initializer) < PROTO_LIMIT:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    import tempfile

    tmp = Path(tempfile.mkdtemp(dir=workdir))
    save_model(model, tmp)
    return ort.InferenceSession(str(tmp / GRAPH), opts, providers=["CPUExecutionProvider"])


def tensor_bytes(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, int]:
    """Estimated bytes of each named tensor at the shapes of `feeds` (shape inference with
    the inputs pinned); tensors it cannot size get the largest size it found."""
    shell = _weightless(model)
    for i in shell.graph.input:
        if i.name in feeds:
            dims = i.type.tensor_type.shape.dim
            for d, v in zip(dims, feeds[i.name].shape):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    inferred = onnx.shape_inference.infer_shapes(shell)
    sizes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            sizes[v.name] = 4 * int(np.prod([d.dim_value for d in dims]))
    biggest = max(sizes.values(), default=1 << 20)
    return {n: sizes.get(n, biggest) for n in names}


def chunks(names: list[str], sizes: dict[str, int], budget: int) -> list[list[str]]:
    """Split names into runs whose outputs fit `budget` bytes together."""
    out, cur, used = [], [], 0
    for n in names:
        if cur and used + sizes[n] > budget:
            out.append(cur)
            cur, used = [], 0
        cur.append(n)
        used += sizes[n]
    if cur:
        out.append(cur)
    return out


# -- library chatter ------------------------------------------------------------------------

class quiet:
    """Silence onnxruntime.quantization's prints, progress bars and INFO/WARNING logging
    (the CLI reports progress itself); errors still raise. stderr=True also swallows
    progress bars written to stderr (onnxruntime.transformers' tqdm)."""

    def __init__(self, stderr: bool = False):
        self.stderr = stderr

    def __enter__(self):
        import contextlib
        import io
        import logging

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        if self.stderr:
            self._stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        self._levels = []
        for name in ("", "onnxruntime", "onnxruntime.quantization",
                     "onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.transformers"):
            lg = logging.getLogger(name)
            self._levels.append((lg, lg.level))
            lg.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for lg, level in self._levels:
            lg.setLevel(level)
        self._stack.close()
        return False


def initializer_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Stored size of each initializer from its dims and type (no weight data read)."""
    out = {}
    for t in model.graph.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
            out[t.name] = (n + 1) // 2
        else:
            out[t.name] = n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return out


def weight_change(parent: Path, child: Path) -> dict | None:
    """Bytes of the parent's weights a pass replaced, and of what replaced them: the size
    ratio of the quantized part alone (a tiny model's fp32 embeddings hide it otherwise)."""
    pa, pb = structure(parent), structure(child)
    a, b = initializer_bytes(pa), initializer_bytes(pb)
    ta = {t.name: t.data_type for t in pa.graph.initializer}
    tb = {t.name: t.data_type for t in pb.graph.initializer}
    gone = {k for k in a if k not in b or b[k] != a[k] or tb[k] != ta[k]}
    new = {k for k in b if k not in a or a[k] != b[k] or ta[k] != tb[k]}
    # A library may only rename a float weight it left alone (quantize_dynamic's
    # "<name>_Transposed" for skipped Gemms): same type and size, name extended.
    for k in sorted(new):
        twin = next((g for g in gone if k.startswith(g) and ta[g] == tb[k] and a[g] == b[k]), None)
        if twin is not None:
            gone.discard(twin)
            new.discard(k)
    removed, added = sum(a[k] for k in gone), sum(b[k] for k in new)
    if not removed:
        return None
    return {"replaced_fp32_bytes": removed, "new_bytes": added, "ratio": round(added / removed, 4)}


def stage(src: Path, folder: Path, model: onnx.ModelProto | None = None) -> Path:
    """A path for libraries that take a model file: `src` linked into `folder` (they write
    side files such as 'model-inferred.onnx' beside their input, never in the parent
    artifact), or `model` saved there when the pass changed it. Handing a path instead of
    a ModelProto lets the library hold the only copy of the weights.

    The graph file is linked; its external data is copied: onnx refuses external data
    behind a symbolic link or with several hard links (its guard against link attacks)."""
    folder.mkdir(parents=True, exist_ok=True)
    if model is not None:
        save_model(model, folder)
        return folder / GRAPH
    for f in src.parent.iterdir():
        if f.is_file() and (f.name == src.name or not f.name.endswith(".onnx")):
            if f.name == src.name:
                link_or_copy(f.resolve(), folder / f.name)
            else:
                shutil.copy2(f.resolve(), folder / f.name)
    return folder / src.name


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (artifacts are immutable, digests guard them), a copy across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def weight_transposes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Transpose nodes whose input is an initializer read only by them: how dynamo graphs
    exported without constant folding (SANA's, edgegen's streaming export) hold nn.Linear
    weights. Libraries that look for constant MatMul weights do not see through them."""
    inits = initializer_names(model)
    users: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    return [n for n in model.graph.node if n.op_type == "Transpose" and n.input[0] in inits
            and users[n.input[0]] == 1]


def fold_weight_transposes(model: onnx.ModelProto) -> int:
    """Replace each weight Transpose by the transposed initializer (weights loaded)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes = weight_transposes(model)
    for n in nodes:
        t = inits[n.input[0]]
        arr = numpy_helper.to_array(t)
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), list(range(arr.ndim))[::-1])
        g.initializer.remove(t)
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr.transpose(perm)), n.output[0]))
        g.node.remove(n)
    return len(nodes)


def needs_names(model: onnx.ModelProto) -> bool:
    names = [n.name for n in model.graph.node]
    return not all(names) or len(set(names)) != len(names)


def toposort(model: onnx.ModelProto) -> None:
    """Sort the main graph's nodes topologically in place (ORT's fp16 converter appends its
    Casts at the end; ONNX wants producers first and shape inference needs it)."""
    g = model.graph
    known = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    # Subgraph nodes may read outer-scope names: count them as inputs of their node.
    def needs(n):
        names = set(n.input)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                inner = {o for sn in sub.node for o in sn.output} | {i.name for i in sub.input} | \
                        {t.name for t in sub.initializer}
                names |= {i for sn in sub.node for i in sn.input if i not in inner}
        return names
    from collections import deque

    reqs = [needs(n) - known for n in g.node]
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    waiting = [0] * len(reqs)
    readers: dict[int, list[int]] = {}
    for i, req in enumerate(reqs):
        for name in req:
            if name in producer:  # names produced by no node (dangling) do not block
                waiting[i] += 1
                readers.setdefault(producer[name], []).append(i)
    queue = deque(i for i, w in enumerate(waiting) if w == 0)
    order = []
    while queue:  # Kahn's algorithm, stable: ties keep the original order
        i = queue.popleft()
        order.append(i)
        for j in readers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                queue.append(j)
    if len(order) < len(reqs):  # a cycle: leave the rest in its original order
        seen = set(order)
        order += [i for i in range(len(reqs)) if i not in seen]
    ordered = [g.node[i] for i in order]
    nodes = [onnx.NodeProto() for _ in ordered]
    for dst, src in zip(nodes, ordered):
        dst.CopyFrom(src)
    del g.node[:]
    g.node.extend(nodes)
