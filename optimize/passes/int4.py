"""int4 weight-only, blockwise.

Round-to-nearest (the default) streams tensor by tensor through weight_only.py:
MatMulNBits (format "matmulnbits", ORT's fast kernel) or DequantizeLinear(int4,
block_size) -> MatMul (format "qdq", standard ONNX that TensorRT reads), and int4
DequantizeLinear -> Conv for convolutions.

GPTQ (algo=gptq: calibration-aware scales) is onnxruntime's bundled implementation fed
with the trajectory inputs; it runs on the whole loaded model, so it needs memory for one
copy of the weights. Convs are quantized first by the streaming code, then the library
quantizes the MatMuls. It is called through
onnxruntime.quantization.neural_compressor.gptq_quantize, the function
MatMulNBitsQuantizer itself calls, because the quantizer does not pass its
nodes_to_exclude to GPTQ (the skip list would be ignored). RTN is the default because it
measured better or equal on every tiny family (GPTQ on the CLIP encoders: rel err
0.21-0.51 vs RTN 0.15-0.26) and is several times faster; GPTQ stays available for real
weights.
"""
from __future__ import annotations

from onnx import helper

from .. import graph as G
from ..calibrate import FeedReader
from ..registry import PassContext, PassResult, Thresholds, register
from ...runtimes.errors import EdgegenError
from .weight_only import _WeightOnly, find_targets


@register
class Int4(_WeightOnly):
    name = "int4"
    version = 2  # 2: RTN streams tensor by tensor; Gemm and Transpose'd weights; weight-only skip list
    bits = 4
    precision = "int4"
    thresholds = Thresholds(cosine=0.94, rel_err=0.35, psnr=22.0, ssim=0.85)
    defaults = {**_WeightOnly.defaults, "algo": "rtn"}
    help = "int4 weight-only, blockwise: MatMulNBits (RTN or GPTQ scales) and int4 DequantizeLinear for convs"

    def check_config(self):
        super().check_config()
        c = self.config
        if c["algo"] not in ("gptq", "rtn"):
            raise EdgegenError("int4: algo must be gptq or rtn")
        if c["format"] == "qdq" and c["algo"] == "gptq":
            raise EdgegenError("int4: GPTQ writes MatMulNBits; use algo=rtn with format=qdq")
        self.needs_calibration = c["algo"] == "gptq"

    def apply(self, ctx: PassContext) -> PassResult:
        if self.config["algo"] == "rtn":
            return super().apply(ctx)
        if not ctx.calibration:
            raise EdgegenError(f"{ctx.component}: int4 GPTQ needs calibration inputs")
        report = {}
        src = ctx.src
        model = G.structure(src)
        G.ensure_node_names(model)
        targets, skipped = find_targets(model, self.config["skip"], self.config["convs"])
        if self.config["convs"] and any(t.kind == "conv" for t in targets):
            convs_only = type(self)(**{**self.config, "algo": "rtn"})
            convs_only._linear = False
            stage = ctx.dst.parent / f"{ctx.dst.name}.convs"
            res = convs_only.apply(PassContext(ctx.component, ctx.role, src, stage, ctx.io, [], ctx.say))
            src, report = stage / res.files[0], res.report
        model = G.load_model(src)
        G.fold_weight_transposes(model)  # GPTQ looks for constant MatMul weights
        G.ensure_node_names(model)
        matmuls = [t.node.name for t in targets if t.kind == "linear" and t.node.op_type == "MatMul"]
        excluded = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in matmuls]
        from onnxruntime.quantization.neural_compressor import gptq_quantize

        c = self.config
        cfg = {n: {"bits": 4, "group_size": c["block_size"], "scheme": "sym"} for n in matmuls}
        cfg.update({n: "fp32" for n in excluded})
        with G.quiet():
            out = gptq_quantize(model, dataloader=_Loader(FeedReader(ctx.calibration, ctx.io.input_names)),
                                weight_config=cfg, num_bits=4, group_size=c["block_size"], scheme="sym",
                                n_samples=-1, accuracy_level=c["accuracy_level"])
        model = out.model if hasattr(out, "model") else out
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        files = G.save_model(model, ctx.dst)
        return PassResult(files, precision="int4", report={**report, "matmuls": len(matmuls),
                                                           "skipped_nodes": skipped})


class _Loader:
    """The (inputs, label) batches GPTQ's data loader contract expects."""

    batch_size = 1

    def __init__(self, reader: FeedReader):
        self.reader = reader

    def __iter__(self):
        for feeds in self.reader:
            yield feeds, None
