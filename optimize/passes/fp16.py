"""fp16 with automatic fp32 islands.

The conversion itself is onnxruntime.transformers.float16.convert_float_to_float16
(keep_io_types=True: the component keeps its fp32 IO spec). What no library does is
choosing the nodes to keep in fp32 from data, so that part is here:

1. Run the fp32 graph on calibration inputs (captured along sampler trajectories) with
   every intermediate float tensor exposed; any tensor whose magnitude comes near the
   fp16 limit keeps its producer and its consumers in fp32 (overflow).
2. Run an fp16 emulation of the graph (`emulate_fp16`: every tensor fp16 would store is
   rounded to fp16) on the same inputs and compare every intermediate tensor with fp32:
   a node whose output goes non-finite from finite inputs, or whose relative error
   exceeds the budget and is `amplification` times its inputs' error, is kept in fp32. A node already in fp32 that still amplifies error (sin of a large timestep: the
   damage is the fp16 rounding of its input) pulls its nearest fp16 producers in.
3. Repeat until no node is added (at most `max_rounds`).

Between fp32 nodes the converter leaves Cast(fp16)->Cast(fp32) round trips, which would
round the island's values to fp16 anyway; `collapse_cast_pairs` removes them (hand
written: the converter has no such cleanup).

Memory: one copy of the weights (the fp32 model) plus the converted fp16 copy; the
exposed intermediates are fetched in chunks of at most `chunk_mb` per run.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto

from .. import graph as G
from ..registry import Pass, PassContext, PassResult, Thresholds, register
from ...runtimes.errors import EdgegenError

FP16_MAX = 65504.0


def convert(model: onnx.ModelProto, block: list[str] | set[str], in_place: bool = False) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if in_place:
        m = model
    else:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    block = unblock_sequences(m, set(block))
    _constants_to_initializers(m, block)
    m16 = convert_float_to_float16(m, keep_io_types=True, node_block_list=sorted(block),
                                   disable_shape_infer=False)
    G.toposort(m16)
    collapse_cast_pairs(m16)
    return m16


SEQUENCE_OPS = ("SplitToSequence", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SequenceEmpty",
                "SequenceAt", "ConcatFromSequence", "SequenceLength")


def unblock_sequences(model: onnx.ModelProto, block: set[str]) -> set[str]:
    """Sequence ops stay out of the fp32 islands. The converter puts Casts at island
    boundaries and cannot cast a sequence (dynamo graphs exported without the optimizer
    keep SplitToSequence -> SequenceAt); these ops only move values, so keeping them
    fp16 loses nothing: their float neighbours are still blocked, with tensor Casts."""
    seq = {n.name for n in model.graph.node if n.op_type in SEQUENCE_OPS}
    return set(block) - seq


def _constants_to_initializers(model: onnx.ModelProto, block: set[str]) -> None:
    """The converter rewrites every float Constant node to fp16, even one feeding an fp32
    node (LCM/SD's timestep frequencies: sin(999 * f) needs f in fp32). Initializers it
    tracks per consumer, so float Constants read by blocked nodes become initializers."""
    g = model.graph
    wanted = {i for n in g.node if n.name in block for i in n.input}
    for n in list(g.node):
        if n.op_type != "Constant" or n.output[0] not in wanted:
            continue
        attr = next((a for a in n.attribute if a.name == "value"), None)
        if attr is None or attr.t.data_type != TensorProto.FLOAT:
            continue
        t = onnx.TensorProto()
        t.CopyFrom(attr.t)
        t.name = n.output[0]
        g.initializer.append(t)
        g.node.remove(n)


def collapse_cast_pairs(model: onnx.ModelProto) -> int:
    """Rewire Cast(to=float)(Cast(to=float16)(x)) to x when x is float32; drop dead Casts."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    types = _float32_tensors(model)
    outputs = {o.name for o in g.output}
    rename = {}
    for n in g.node:
        if n.op_type != "Cast" or _cast_to(n) != TensorProto.FLOAT or n.output[0] in outputs:
            continue
        p = producer.get(n.input[0])
        if p is not None and p.op_type == "Cast" and _cast_to(p) == TensorProto.FLOAT16 and p.input[0] in types:
            rename[n.output[0]] = p.input[0]
    if not rename:
        return 0
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    # Remove Casts whose outputs nothing reads any more (repeat: a chain frees its producer).
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.op_type == "Cast" and all(o not in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    return len(rename)


def _cast_to(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "to"), -1)


def _float32_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(G._weightless(model))
    vals = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    out = {v.name for v in vals if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    out |= {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L2 error (float32 BLAS dot: ample for a 1% budget, and fast)."""
    if not np.isfinite(b).all():
        return float("inf")
    a = np.ascontiguousarray(a, dtype=np.float32).ravel()
    d = np.ascontiguousarray(b, dtype=np.float32).ravel() - a
    n = float(np.sqrt(np.dot(a, a)))
    e = float(np.sqrt(np.dot(d, d)))
    return e / n if n > 0 else (0.0 if e == 0 else float("inf"))


def emulate_fp16(model: onnx.ModelProto, block: set[str], floats: set[str]) -> onnx.ModelProto:
    """The fp32 graph with fp16 storage emulated: every float tensor that the converted
    graph would hold in fp16 is rounded (Cast to fp16 and back) where it is read.

    Why not run the converted graph: ORT's CPU EP has no fp16 kernels for most ops, so it
    computes them in fp32 and drops the casts between them; fp16 on CPU is more accurate
    than fp16 on a GPU and would hide the nodes that need fp32. Rounding every stored
    tensor is what a GPU does (its kernels accumulate in fp32), and overflow shows as inf.
    Tensors that stay fp32: outputs of nodes in `block` (and of the converter's own
    op block list) read by nodes in `block`, graph inputs and weights read by them.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    fp32 = lambda n: n.name in block or n.op_type in DEFAULT_OP_BLOCK_LIST  # noqa: E731
    consumers = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)

    def rounding(src: str, dst: str) -> list[onnx.NodeProto]:
        mid = f"{dst}__fp16"
        return [onnx.helper.make_node("Cast", [src], [mid], to=TensorProto.FLOAT16, name=f"{mid}_cast"),
                onnx.helper.make_node("Cast", [mid], [dst], to=TensorProto.FLOAT, name=f"{dst}_cast")]

    def round_for_fp16_readers(t: str) -> list[onnx.NodeProto]:
        readers = [c for c in consumers[t] if not fp32(c)]
        if not readers:
            return []
        r = f"{t}__r16"
        for c in readers:
            for k, name in enumerate(c.input):
                if name == t:
                    c.input[k] = r
        return rounding(t, r)

    sources = [i.name for i in g.input] + [t.name for t in g.initializer]
    head = [n for t in sources if t in floats for n in round_for_fp16_readers(t)]
    body = []
    for n in g.node:
        outs = [o for o in n.output if o in floats]
        if n.op_type == "Constant" or fp32(n):
            body.append(n)
            for o in outs:
                body += round_for_fp16_readers(o)
            continue
        extra = []
        for k, o in enumerate(n.output):
            if o in outs:
                raw = f"{o}__fp32"
                n.output[k] = raw
                extra += rounding(raw, o)
        body.append(n)
        body += extra
    del g.node[:]
    g.node.extend(head + body)
    return m


def find_islands(model: onnx.ModelProto, samples: list[dict], overflow: float = FP16_MAX / 4,
                 budget: float = 0.01, amplification: float = 10.0, floor: float = 1e-3,
                 max_rounds: int = 8, chunk_mb: int = 1024, say=lambda msg: None) -> tuple[list[str], list[dict]]:
    """Names of the nodes to keep in fp32, and what each round found."""
    G.ensure_node_names(model)
    g = model.graph
    outs = [o.name for o in g.output]
    tensors = G.float_tensors(model) + outs
    floats = _float32_tensors(model)
    producer = {o: n for n in g.node for o in n.output if o}
    consumers = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    s32 = G.session(G.expose(model, tensors), optimize=False)
    sizes = G.tensor_bytes(model, samples[0], tensors)
    runs = G.chunks(tensors, sizes, chunk_mb << 20)

    amax = dict.fromkeys(tensors, 0.0)
    for f in samples:
        for names in runs:
            for t, v in zip(names, s32.run(names, f)):
                if v.size and np.isfinite(v).any():
                    amax[t] = max(amax[t], float(np.nanmax(np.abs(np.where(np.isfinite(v), v, 0)))))
    block: set[str] = set()
    overflowing = [t for t in tensors if amax[t] > overflow]
    for t in overflowing:
        if t in producer:
            block.add(producer[t].name)
        block.update(c.name for c in consumers[t])
    rounds = [{"round": 0, "overflowing_tensors": len(overflowing), "fp32_nodes": len(block)}]
    say(f"fp16 islands: {len(overflowing)} tensors beyond fp16 range, {len(block)} nodes kept fp32")

    for r in range(1, max_rounds + 1):
        s16 = G.session(G.expose(emulate_fp16(model, block, floats), tensors), optimize=False)
        err = dict.fromkeys(tensors, 0.0)
        for f in samples:
            for names in runs:
                for t, a, b in zip(names, s32.run(names, f), s16.run(names, f)):
                    if np.isfinite(a).all():
                        err[t] = max(err[t], _rel(a, b))
        new = set()
        for n in g.node:
            fout = [o for o in n.output if o in err]
            if not fout:
                continue
            e_out = max(err[o] for o in fout)
            e_in = max((err.get(i, 0.0) for i in n.input), default=0.0)
            broke = np.isinf(e_out) and not np.isinf(e_in)
            amplifies = e_out > budget and e_out > amplification * max(e_in, floor)
            if not (broke or amplifies):
                continue
            if n.name not in block:
                new.add(n.name)
            else:
                new |= _fp16_producers(n, producer, block, err)
        output_err = max(err[o] for o in outs)
        rounds.append({"round": r, "output_rel_err": round(float(output_err), 6), "added": len(new - block),
                       "fp32_nodes": len(block | new)})
        say(f"fp16 islands round {r}: output rel err {output_err:.3g} (emulated fp16), {len(new - block)} nodes added")
        if not new - block:
            break
        block |= new
    return sorted(block), rounds


def _fp16_producers(node, producer, block, floats, depth: int = 3) -> set[str]:
    """fp16 producers of float tensors upstream of an fp32 island, up to `depth` levels
    past the island's edge (shape arithmetic and constants are not followed)."""
    found, seen = set(), set()
    stack = [(t, 0) for t in node.input]
    while stack:
        t, d = stack.pop()
        if t in seen or t not in producer or t not in floats:
            continue
        seen.add(t)
        p = producer[t]
        if p.op_type == "Constant":
            continue
        if p.name not in block:
            found.add(p.name)
            d += 1
        if d < depth:
            stack.extend((i, d) for i in p.input)
    return found


@register
class FP16(Pass):
    name = "fp16"
    version = 1
    group = "precision"
    order = 20
    roles = ("denoiser", "text_encoder", "vae_decoder", "vae_encoder", "other")
    thresholds = Thresholds(cosine=0.999, rel_err=0.01, psnr=35.0, ssim=0.98)
    needs_calibration = True
    defaults = {"islands": True, "overflow": FP16_MAX / 4, "budget": 0.01, "amplification": 10.0,
                "max_rounds": 8, "samples": 4}
    help = "fp16 weights and compute, fp32 islands found from calibration data"

    def apply(self, ctx: PassContext) -> PassResult:
        model = G.load_model(ctx.src)
        G.ensure_node_names(model)
        block, rounds = [], []
        if self.config["islands"]:
            if not ctx.calibration:
                raise EdgegenError(f"{ctx.component}: fp16 islands need calibration inputs")
            idx = np.unique(np.linspace(0, len(ctx.calibration) - 1, self.config["samples"]).round().astype(int))
            block, rounds = find_islands(
                model, [ctx.calibration[i] for i in idx], overflow=self.config["overflow"],
                budget=self.config["budget"], amplification=self.config["amplification"],
                max_rounds=self.config["max_rounds"], say=ctx.say)
        m16 = convert(model, block, in_place=True)  # the converter retypes the weights in place
        del model
        files = G.save_model(m16, ctx.dst)
        return PassResult(files, precision="fp16",
                          report={"fp32_nodes": block, "island_rounds": rounds})
