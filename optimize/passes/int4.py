"""int4 weight-only, blockwise.

MatMuls: onnxruntime's MatMulNBitsQuantizer (format "matmulnbits": com.microsoft
MatMulNBits, ORT's fast kernel; format "qdq": DequantizeLinear(int4, block_size) ->
MatMul, standard ONNX that TensorRT reads). Scales: round-to-nearest by default, or
GPTQ (algo=gptq: calibration-aware, ORT's bundled numpy implementation fed with the
trajectory inputs). RTN is the default because it measured better or equal on every
tiny family (GPTQ on the CLIP encoders: rel err 0.21-0.51 vs RTN 0.15-0.26) and is
several times faster; GPTQ stays available for real weights.

Convs (most of a UNet's weights): no library quantizes them weight-only, so this file
writes DequantizeLinear(int4 weight, per-block scale, axis=1 = input channels,
block_size) -> Conv by hand (opset 21). ORT runs the DequantizeLinear at each call
(reference kernel); the file and the resident weights shrink to ~1/6.

GPTQ is called through onnxruntime.quantization.neural_compressor.gptq_quantize, the
function MatMulNBitsQuantizer itself calls, because the quantizer does not pass its
nodes_to_exclude to GPTQ (the skip list would be ignored).

Memory: one copy of the weights (the library works on the loaded model); the Conv part
replaces tensors one by one in that model.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import graph as G
from ..calibrate import FeedReader
from ..registry import Pass, PassContext, PassResult, Thresholds, register
from ...runtimes.errors import EdgegenError


def pack_int4(q: np.ndarray) -> bytes:
    """Signed int4 values, two per byte, low nibble first (the ONNX INT4 layout)."""
    flat = q.ravel().astype(np.uint8) & 0xF
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def quantize_blocks(w: np.ndarray, block: int, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 along `axis` in blocks: q in [-8, 7], scale per block (ONNX blocked
    quantization layout: scale has w's shape with ceil(dim/block) along `axis`)."""
    w = np.moveaxis(w.astype(np.float32), axis, -1)
    n = w.shape[-1]
    nb = -(-n // block)
    pad = nb * block - n
    wp = np.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, pad)])
    wb = wp.reshape(*w.shape[:-1], nb, block)
    amax = np.abs(wb).max(axis=-1)
    scale = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float32)
    q = np.clip(np.round(wb / scale[..., None]), -8, 7).astype(np.int8)
    q = q.reshape(*w.shape[:-1], nb * block)[..., :n]
    return np.moveaxis(q, -1, axis), np.moveaxis(scale, -1, axis)


def int4_convs(model: onnx.ModelProto, nodes: set[str], block: int) -> int:
    """Replace the weights of the named Convs by int4 DequantizeLinear; returns the count."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    users: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    done = 0
    new_nodes = []
    for n in list(g.node):
        if n.name not in nodes or n.op_type != "Conv" or n.input[1] not in inits:
            continue
        if users[n.input[1]] != 1 or next((a.i for a in n.attribute if a.name == "group"), 1) != 1:
            continue  # shared or grouped weights: leave float
        t = inits[n.input[1]]
        w = numpy_helper.to_array(t)
        if w.ndim < 3 or w.shape[1] < block:
            continue
        q, scale = quantize_blocks(w, block, axis=1)
        qname, sname, out = f"{t.name}_int4", f"{t.name}_int4_scale", f"{t.name}_dequantized"
        g.initializer.remove(t)
        g.initializer.append(helper.make_tensor(qname, TensorProto.INT4, q.shape, pack_int4(q), raw=True))
        g.initializer.append(numpy_helper.from_array(scale, sname))
        new_nodes.append((n, helper.make_node("DequantizeLinear", [qname, sname], [out], axis=1, block_size=block,
                                              name=f"{n.name}_weight_DequantizeLinear")))
        n.input[1] = out
        done += 1
    for conv, dq in new_nodes:  # keep topological order: the DequantizeLinear right before its Conv
        idx = list(g.node).index(conv)
        g.node.insert(idx, dq)
    return done


@register
class Int4(Pass):
    name = "int4"
    version = 1
    group = "precision"
    order = 20
    roles = ("denoiser", "text_encoder")
    thresholds = Thresholds(cosine=0.94, rel_err=0.35, psnr=22.0, ssim=0.85)
    needs_calibration = True
    defaults = {"algo": "rtn", "block_size": 32, "format": "matmulnbits", "convs": True, "skip": True,
                "accuracy_level": 0}
    help = "int4 weight-only, blockwise: MatMulNBits (RTN or GPTQ scales) and int4 DequantizeLinear for convs"

    def check_config(self):
        c = self.config
        if c["algo"] not in ("gptq", "rtn"):
            raise EdgegenError("int4: algo must be gptq or rtn")
        if c["format"] not in ("matmulnbits", "qdq"):
            raise EdgegenError("int4: format must be matmulnbits or qdq")
        b = c["block_size"]
        if not isinstance(b, int) or b < 16 or b & (b - 1):
            raise EdgegenError("int4: block_size must be a power of two >= 16")
        if c["format"] == "qdq" and c["algo"] == "gptq":
            raise EdgegenError("int4: GPTQ writes MatMulNBits; use algo=rtn with format=qdq")

    def apply(self, ctx: PassContext) -> PassResult:
        c = self.config
        model = G.load_model(ctx.src)
        G.ensure_node_names(model)
        skipped = set(G.skip_list(model)) if c["skip"] else set()
        inits = G.initializer_names(model)
        matmuls = [n.name for n in G.weight_nodes(model, ("MatMul",))
                   if n.name not in skipped and _is_2d(model, n.input[1])]
        convs = {n.name for n in G.weight_nodes(model, ("Conv",)) if n.name not in skipped} if c["convs"] else set()
        if not matmuls and not convs:
            raise EdgegenError(f"{ctx.component}: no MatMul/Conv weights for int4")
        excluded = [n.name for n in G.weight_nodes(model, ("MatMul",)) if n.name not in matmuls]
        del inits
        n_convs = 0
        if convs:  # first: the version converter knows no com.microsoft ops
            model = G.upgrade_opset(model, 21)
            n_convs = int4_convs(model, convs, c["block_size"])
        if matmuls:
            with G.quiet():
                model = self._matmuls(model, matmuls, excluded, ctx)
        if not any(o.domain == "com.microsoft" for o in model.opset_import) and \
                any(n.domain == "com.microsoft" for n in model.graph.node):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        files = G.save_model(model, ctx.dst)
        return PassResult(files, precision="int4",
                          report={"matmuls": len(matmuls), "convs": n_convs, "skipped_nodes": sorted(skipped)})

    def _matmuls(self, model, matmuls, excluded, ctx) -> onnx.ModelProto:
        from onnxruntime.quantization import QuantFormat
        from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                      MatMulNBitsQuantizer)

        c = self.config
        if c["algo"] == "gptq":
            from onnxruntime.quantization.neural_compressor import gptq_quantize

            if not ctx.calibration:
                raise EdgegenError(f"{ctx.component}: int4 GPTQ needs calibration inputs")
            cfg = {n: {"bits": 4, "group_size": c["block_size"], "scheme": "sym"} for n in matmuls}
            cfg.update({n: "fp32" for n in excluded})
            reader = FeedReader(ctx.calibration, ctx.io.input_names)
            out = gptq_quantize(model, dataloader=_Loader(reader), weight_config=cfg, num_bits=4,
                                group_size=c["block_size"], scheme="sym", n_samples=-1,
                                accuracy_level=c["accuracy_level"])
            return out.model if hasattr(out, "model") else out
        fmt = QuantFormat.QDQ if c["format"] == "qdq" else QuantFormat.QOperator
        algo = DefaultWeightOnlyQuantConfig(block_size=c["block_size"], is_symmetric=True,
                                            accuracy_level=c["accuracy_level"] or None, quant_format=fmt,
                                            op_types_to_quantize=("MatMul",))
        q = MatMulNBitsQuantizer(model, bits=4, block_size=c["block_size"], is_symmetric=True,
                                 accuracy_level=c["accuracy_level"] or None, nodes_to_exclude=excluded,
                                 quant_format=fmt, op_types_to_quantize=("MatMul",), algo_config=algo)
        q.process()
        return q.model.model


def _is_2d(model, name) -> bool:
    t = next((t for t in model.graph.initializer if t.name == name), None)
    return t is not None and len(t.dims) == 2


class _Loader:
    """The (inputs, label) batches GPTQ's data loader contract expects."""

    batch_size = 1

    def __init__(self, reader: FeedReader):
        self.reader = reader

    def __iter__(self):
        for feeds in self.reader:
            yield feeds, None
