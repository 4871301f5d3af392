"""Weight-only blockwise quantization, streamed tensor by tensor: int4 (`int4`, RTN) and
int8 (`int8-weights`).

MatMul/Gemm weights become com.microsoft MatMulNBits (format "matmulnbits": ORT's fused
dequantize-matmul kernel) or DequantizeLinear(block_size) -> MatMul (format "qdq":
standard ONNX, what TensorRT reads as explicit weight-only quantization). Conv weights
(most of a UNet's) become DequantizeLinear(blocks along input channels) -> Conv: no
library quantizes convs weight-only; ORT runs that DequantizeLinear at each call, the
file and the resident weights shrink to ~1/6 (int4) or ~1/3.6 (int8). Token embedding
tables (Gather) become com.microsoft GatherBlockQuantized (format "matmulnbits" only):
a text encoder's vocabulary table is a third of CLIP-L and 12% of T5-XXL.

The per-tensor arithmetic is onnxruntime's (DefaultWeightOnlyQuantizer.qbits_block_quant:
its C++ quantize_matmul_{4,8}bits kernels, the code MatMulNBitsQuantizer runs). The graph
walk and the streaming are written here because MatMulNBitsQuantizer loads the whole
model (a 24 GB FLUX transformer needs more than this 24 GB machine), and because it skips
two layouts exporters write for nn.Linear: a weight behind a Transpose (dynamo before
constant folding, edgegen's streaming exporter) and Gemm with transB=1 (time embedders).

Each quantized tensor is dequantized again right away and its relative error recorded
(`weight_error` in the report), so even a model too large to run here gets a number.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import graph as G
from ..registry import Pass, PassContext, PassResult, Thresholds, register
from ...runtimes.errors import EdgegenError
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def pack_int4(q: np.ndarray) -> bytes:
    """Signed int4 values, two per byte, low nibble first (the ONNX INT4 layout)."""
    flat = q.ravel().astype(np.uint8) & 0xF
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def quantize_blocks(w: np.ndarray, block: int, axis: int = 1, bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric signed `bits` integers along `axis` in blocks, scale per block (ONNX
    blocked quantization layout: scale has w's shape with ceil(dim/block) along `axis`).
    For Conv weights, which no library quantizes weight-only."""
    qmax = (1 << (bits - 1)) - 1
    w = np.moveaxis(w.astype(np.float32), axis, -1)
    n = w.shape[-1]
    nb = -(-n // block)
    pad = nb * block - n
    wp = np.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, pad)])
    wb = wp.reshape(*w.shape[:-1], nb, block)
    amax = np.abs(wb).max(axis=-1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.round(wb / scale[..., None]), -qmax - 1, qmax).astype(np.int8)
    q = q.reshape(*w.shape[:-1], nb * block)[..., :n]
    return np.moveaxis(q, -1, axis), np.moveaxis(scale, -1, axis)


def dequantize_blocks(q: np.ndarray, scale: np.ndarray, block: int, axis: int = 1) -> np.ndarray:
    n = q.shape[axis]
    return q.astype(np.float32) * np.repeat(scale, block, axis=axis).take(range(n), axis=axis)


@dataclass
class Target:
    node: onnx.NodeProto
    weight: str                               # initializer name
    kind: str                                 # "linear" (MatMul/Gemm) or "conv"
    stored_nk: bool = False                   # linear weight stored [N, K] (behind Transpose / transB)
    transpose: onnx.NodeProto | None = None   # the Transpose to drop
    bias: str | None = None                   # Gemm's C
    k: int = 0                                # reduction size, set when quantized
    n: int = 0


def _attr(node, name, default):
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


def find_targets(model: onnx.ModelProto, skip: bool, convs: bool, gathers: bool = False,
                 block: int = 32) -> tuple[list[Target], list[str]]:
    """Weight nodes to quantize and the names of those the skip list keeps in float.
    gathers: also embedding tables (Gather on axis 0 of a 2-D float table whose rows
    split into whole blocks); the skip list is for layers, not tables."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    users: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    producer = {o: n for n in g.node for o in n.output}

    def sole_float(name, rank=None):
        t = inits.get(name)
        return (t is not None and users.get(name) == 1 and t.data_type in FLOAT_TYPES
                and (rank is None or len(t.dims) == rank))

    found: list[Target] = []
    for n in g.node:
        if n.op_type == "MatMul":
            b = n.input[1]
            if sole_float(b, 2):
                found.append(Target(n, b, "linear"))
            elif b in producer and producer[b].op_type == "Transpose" and users.get(b) == 1:
                tr = producer[b]
                if sole_float(tr.input[0], 2) and list(_attr(tr, "perm", [1, 0])) == [1, 0]:
                    found.append(Target(n, tr.input[0], "linear", stored_nk=True, transpose=tr))
        elif n.op_type == "Gemm" and sole_float(n.input[1], 2):
            if _attr(n, "transA", 0) or _attr(n, "alpha", 1.0) != 1.0 or _attr(n, "beta", 1.0) != 1.0:
                continue
            bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
            if bias is not None and (bias not in inits or len(inits[bias].dims) != 1):
                continue
            found.append(Target(n, n.input[1], "linear", stored_nk=bool(_attr(n, "transB", 0)), bias=bias))
        elif convs and n.op_type == "Conv" and sole_float(n.input[1]) and len(inits[n.input[1]].dims) >= 3 \
                and _attr(n, "group", 1) == 1:
            found.append(Target(n, n.input[1], "conv"))
    tables = []
    if gathers:
        for n in g.node:
            if n.op_type == "Gather" and sole_float(n.input[0], 2) and _attr(n, "axis", 0) == 0 \
                    and inits[n.input[0]].dims[1] % block == 0:
                tables.append(Target(n, n.input[0], "gather"))
    if not skip or not found:
        return found + tables, []
    # The weight-only skip list (graph.WEIGHT_ONLY_SKIP_PATTERNS: embedders, time and
    # guidance projections, conv_in/out, norm_out) plus the first and last weight layer,
    # matched on node name, weight name and scope metadata.
    names = set(inits)
    keys = [G.node_key(t.node, names) + " " + t.weight for t in found]
    skipped = {i for i, k in enumerate(keys) if G.matches_skip_pattern(k, weight_only=True)} | {0, len(found) - 1}
    kept = [t for i, t in enumerate(found) if i not in skipped]
    return kept + tables, sorted(found[i].node.name for i in skipped)


def _quantize_linear(w_kn: np.ndarray, bits: int, block: int, fmt: str):
    """(packed bytes, scales, dequantized fp32 [K, N]) through onnxruntime's kernels."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                  DefaultWeightOnlyQuantizer)

    qfmt = QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator
    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, quant_format=qfmt, bits=bits)
    packed, scales, _ = DefaultWeightOnlyQuantizer(cfg).qbits_block_quant(np.ascontiguousarray(w_kn))
    k, n = w_kn.shape
    if fmt == "qdq":  # int4 [K, N] row-major, signed, two per byte; scales [K/block, N]
        q = unpack_int4(packed, k * n).reshape(k, n)
        deq = q * np.repeat(scales, block, axis=0)[:k]
    else:  # MatMulNBits: [N, K/block, blob] unsigned with the implicit zero point 2^(bits-1)
        zp = 1 << (bits - 1)
        if bits == 4:
            q = unpack_uint4(packed.reshape(n, -1), packed.shape[1] * block)
        else:
            q = packed.reshape(n, -1).astype(np.int16)
        q = (q.astype(np.float32) - zp)[:, :packed.shape[1] * block]
        deq = (q * np.repeat(scales, block, axis=1))[:, :k].T
    return packed, scales, deq


def unpack_uint4(packed: np.ndarray, count: int) -> np.ndarray:
    """Low nibble first, per row."""
    lo, hi = packed & 0xF, packed >> 4
    return np.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], -1)[..., :count]


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    u = unpack_uint4(packed.ravel(), count).astype(np.int8)
    return np.where(u > 7, u - 16, u).astype(np.float32)


class _WeightOnly(Pass):
    group = "precision"
    order = 20
    roles = ("denoiser", "text_encoder")
    bits: int
    _linear = True  # False: convs only (int4 GPTQ leaves the MatMuls to the library)
    # compute=float32: a bf16/fp16 parent (a streamed FLUX or T5-XXL export) comes out computing in
    # float32 around the quantized weights, its other tensors widened while they stream:
    # onnxruntime's CPU EP has no bf16 MatMulNBits (nor bf16 MatMul), so this is the graph a CPU runs.
    defaults = {"block_size": 32, "format": "matmulnbits", "convs": True, "embeddings": True, "skip": True,
                "accuracy_level": 0, "compute": "keep"}

    def check_config(self):
        c = self.config
        if c["format"] not in ("matmulnbits", "qdq"):
            raise EdgegenError(f"{self.name}: format must be matmulnbits or qdq")
        if c["format"] == "qdq" and self.bits != 4:
            raise EdgegenError(f"{self.name}: format=qdq is int4 only (onnxruntime packs int8 weights for MatMulNBits)")
        if c["compute"] not in ("keep", "float32"):
            raise EdgegenError(f"{self.name}: compute must be keep or float32")
        b = c["block_size"]
        if not isinstance(b, int) or b < 16 or b & (b - 1):
            raise EdgegenError(f"{self.name}: block_size must be a power of two >= 16")

    def applicable(self, comp: dict) -> str | None:
        if comp.get("precision", "fp32") not in ("fp32", "fp16", "bf16"):
            return f"it is already {comp['precision']}"
        return None

    def apply(self, ctx: PassContext) -> PassResult:
        c, bits, block = self.config, self.bits, self.config["block_size"]
        model = G.structure(ctx.src)
        G.ensure_node_names(model)
        targets, skipped = find_targets(model, c["skip"], c["convs"], c["embeddings"] and c["format"] != "qdq",
                                        block)
        if not self._linear:
            targets = [t for t in targets if t.kind == "conv"]
        if not targets:
            raise EdgegenError(f"{ctx.component}: no MatMul/Gemm/Conv weights for {self.name}")
        by_weight = {t.weight: t for t in targets}
        dtypes = {t.name: t.data_type for t in model.graph.initializer}
        lift = c["compute"] == "float32"
        widen = {n for n, d in dtypes.items() if lift and d in G.LOW_FLOATS and n not in by_weight}
        errors: dict[str, float] = {}
        sizes: dict[str, int] = {}

        def quantize(name: str, arr: np.ndarray):
            if name in widen:
                return arr.astype(np.float32), TensorProto.FLOAT
            t = by_weight[name]
            w = arr.astype(np.float32)
            scale_np, scale_type = (np.float32, TensorProto.FLOAT) if lift else (arr.dtype, dtypes[name])
            if t.kind in ("gather", "conv"):  # blocks along axis 1: input channels / table rows
                q, scale = quantize_blocks(w, block, axis=1, bits=bits)
                deq = dequantize_blocks(q, scale, block, axis=1)
                if bits == 4:
                    out = [G.NewTensor(f"{name}_q4", np.frombuffer(pack_int4(q), np.uint8), TensorProto.INT4,
                                       q.shape)]
                elif t.kind == "conv":
                    out = [G.NewTensor(f"{name}_q8", q, TensorProto.INT8)]
                else:  # GatherBlockQuantized stores 8 bits as uint8 with an explicit zero point of 128
                    out = [G.NewTensor(f"{name}_q8", (q.astype(np.int16) + 128).astype(np.uint8),
                                       TensorProto.UINT8),
                           G.NewTensor(f"{name}_zero_points", np.full(scale.shape, 128, np.uint8), TensorProto.UINT8)]
                ref = w
            else:
                w_kn = w.T if t.stored_nk else w
                t.k, t.n = w_kn.shape
                packed, scale, deq = _quantize_linear(w_kn, bits, block, c["format"])
                dims = w_kn.shape if c["format"] == "qdq" else None
                qtype = TensorProto.INT4 if c["format"] == "qdq" else TensorProto.UINT8
                out = [G.NewTensor(f"{name}_q{bits}", packed, qtype, dims)]
                ref = w_kn
            out.append(G.NewTensor(f"{name}_scales", scale.astype(scale_np), scale_type))
            errors[t.node.name] = float(np.linalg.norm(deq - ref) / max(np.linalg.norm(ref), 1e-30))
            sizes[t.node.name] = ref.size
            return out

        def edit(m: onnx.ModelProto) -> None:
            self._rewrite_nodes(m, targets)
            if lift:
                G.lift_to_float32(m.graph, initializers=False)

        if c["convs"] and any(t.kind == "conv" for t in targets) or c["format"] == "qdq":
            model = G.upgrade_opset(model, 21)  # blocked DequantizeLinear
        files = G.rewrite_weights(ctx.src, ctx.dst, quantize, set(by_weight) | widen, edit, model=model)
        total = sum(sizes.values())
        return PassResult(files, precision=self.precision, report={
            "matmuls": sum(t.kind == "linear" for t in targets), "convs": sum(t.kind == "conv" for t in targets),
            **({"compute": "float32", "widened_to_float32": len(widen)} if lift else {}),
            "embeddings": sum(t.kind == "gather" for t in targets),
            "skipped_nodes": skipped,
            # Relative L2 error of each dequantized weight vs the original, and the
            # size-weighted mean: a check that needs no forward pass.
            "weight_error": {"mean": round(sum(errors[k] * sizes[k] for k in errors) / total, 5),
                             "max": round(max(errors.values()), 5),
                             "per_layer": {k: round(v, 5) for k, v in errors.items()}}})

    def _rewrite_nodes(self, m: onnx.ModelProto, targets: list[Target]) -> None:
        c, bits, block = self.config, self.bits, self.config["block_size"]
        new_before: dict[str, list[onnx.NodeProto]] = {}
        replace: dict[str, onnx.NodeProto] = {}
        drop = {t.transpose.name for t in targets if t.transpose is not None}
        by_name = {n.name: n for n in m.graph.node}  # m may be an opset-upgraded copy
        for t in targets:
            n, qname, sname = by_name[t.node.name], f"{t.weight}_q{bits}", f"{t.weight}_scales"
            if t.kind == "gather":
                inputs = [qname, n.input[1], sname] + ([f"{t.weight}_zero_points"] if bits == 8 else [])
                replace[n.name] = helper.make_node("GatherBlockQuantized", inputs, list(n.output),
                                                   name=f"{n.name}_Q{bits}", domain="com.microsoft", gather_axis=0,
                                                   quantize_axis=1, block_size=block, bits=bits)
                continue
            if t.kind == "conv" or c["format"] == "qdq":
                deq = f"{t.weight}_dequantized"
                axis = 1 if t.kind == "conv" else 0
                new_before[n.name] = [helper.make_node("DequantizeLinear", [qname, sname], [deq], axis=axis,
                                                       block_size=block, name=f"{n.name}_weight_dq")]
                n.input[1] = deq
                if n.op_type == "Gemm":  # stored [K, N] now
                    for a in n.attribute:
                        if a.name == "transB":
                            a.i = 0
                continue
            inputs = [n.input[0], qname, sname]
            if t.bias:
                inputs += ["", "", t.bias]
            attrs = {"K": t.k, "N": t.n, "bits": bits, "block_size": block}
            if c["accuracy_level"]:
                attrs["accuracy_level"] = c["accuracy_level"]
            replace[n.name] = helper.make_node("MatMulNBits", inputs, list(n.output), name=f"{n.name}_Q{bits}",
                                               domain="com.microsoft", **attrs)
        for name, new in replace.items():  # keep the exporter's module scopes: per-block cuts find blocks by them
            new.metadata_props.extend(by_name[name].metadata_props)
        nodes = []
        for n in m.graph.node:
            if n.name in drop:
                continue
            nodes.extend(new_before.get(n.name, []))
            nodes.append(replace.get(n.name, n))
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        if replace and not any(o.domain == "com.microsoft" for o in m.opset_import):
            m.opset_import.append(helper.make_opsetid("com.microsoft", 1))


@register
class Int8Weights(_WeightOnly):
    name = "int8-weights"
    version = 1
    bits = 8
    precision = "int8-weights"
    # Blocks of 64: scale overhead 1/16 of a byte per weight, and 64 divides every
    # reduction size of the supported families (SD's 320 does not divide by 128).
    defaults = {**_WeightOnly.defaults, "block_size": 64}
    thresholds = Thresholds(cosine=0.995, rel_err=0.1, psnr=30.0, ssim=0.95)
    help = "int8 weight-only, blockwise (MatMulNBits bits=8; int8 DequantizeLinear for convs); streams"
