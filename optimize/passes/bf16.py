"""bf16 weight storage: weights of Conv/MatMul/Gemm (and other float tensors of 1024+
elements) stored as bfloat16 and widened by a Cast at load.

Why storage only: onnxruntime's CPU EP has no bf16 kernels for these ops, so a graph
computing in bf16 would not run here; ORT folds the Casts at session creation and
computes in fp32 with bf16-rounded weights (what bf16 inference does to the weights;
activations keep fp32). The file halves like fp16, without fp16's range limit, so no
fp32 islands are needed. Runtimes with bf16 compute (OpenVINO on AVX512-BF16, TensorRT)
apply their own precision to the graph.

Written by hand (no library converts weights to bf16 behind Casts); streaming like
pruning: one tensor in memory at a time.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from .. import graph as G
from ..registry import Pass, PassContext, PassResult, Thresholds, register


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


@register
class BF16(Pass):
    name = "bf16"
    version = 1
    group = "precision"
    order = 20
    roles = ("denoiser", "text_encoder", "vae_decoder", "vae_encoder", "other")
    thresholds = Thresholds(cosine=0.999, rel_err=0.03, psnr=32.0, ssim=0.97)
    defaults = {"min_elements": 1024}
    help = "bf16 weight storage (fp32 compute in ORT CPU, which has no bf16 kernels)"

    def apply(self, ctx: PassContext) -> PassResult:
        model = G.structure(ctx.src)
        targets = {t.name for t in model.graph.initializer
                   if t.data_type == TensorProto.FLOAT and int(np.prod(t.dims)) >= self.config["min_elements"]}

        def edit(m: onnx.ModelProto) -> None:
            casts = []
            for t in m.graph.initializer:
                if t.name in targets:
                    orig = t.name
                    t.name = f"{orig}_bf16"
                    casts.append(onnx.helper.make_node("Cast", [t.name], [orig], to=TensorProto.FLOAT,
                                                       name=f"{orig}_bf16_cast"))
            nodes = casts + list(m.graph.node)
            del m.graph.node[:]
            m.graph.node.extend(nodes)

        files = G.rewrite_weights(ctx.src, ctx.dst, lambda n, a: (to_bf16_bits(a), TensorProto.BFLOAT16),
                                  targets, edit)
        return PassResult(files, precision="bf16", report={"bf16_tensors": len(targets)})
