"""int8-nncf: NNCF's post-training int8 (ONNX backend), calibrated on edgegen's sampler trajectories.

Why a second int8 recipe: `--int8` is onnxruntime.quantization's, and OpenVINO's CPU
low-precision transforms read part of it badly (a signed Q/DQ behind a Concat: see quant.py),
so that recipe keeps the up-blocks' Concat-fed convolutions float, and the peer users pick on
a CPU (optimum-intel: NNCF on OpenVINO) does not. NNCF places its quantizers for the targets
it knows (unified scales across a Concat's inputs, attention MatMuls quantized under
ModelType.TRANSFORMER), applies SmoothQuant and bias correction, and writes standard
QuantizeLinear/DequantizeLinear pairs: the artifact stays one ONNX graph that onnxruntime,
OpenVINO and TensorRT all run, and the gate measures it like any pass.

What edgegen adds: the calibration inputs (several prompts x all steps of real sampler
trajectories, calibrate.py), optionally its own float list (`skip=true`: embeddings, time
projections, conv_in/out, norms; `outer_convs=false`: the full-resolution resnet convs, which
carry most of the U-Net's int8 error), and the gate.

Memory: the graph is read without its weights; NNCF reads them from the staged folder
(BackendParameters.EXTERNAL_DATA_DIR) when it builds its calibration sessions, and loads them
into the quantized model once at the end, where the int8 weights replace the float ones.
"""
from __future__ import annotations

import logging

from .. import graph as G
from ..registry import Pass, PassContext, PassResult, Thresholds, register
from ...runtimes.errors import EdgegenError
from .quant import _files, _load_for_library, _outer_convs

_MODEL_TYPES = ("transformer", "default")
_PRESETS = ("performance", "mixed")


def _transpose_fed_convs(model) -> set[str]:
    """Convs whose activation comes from a Transpose (the U-Net's attention proj_out, back from
    tokens to NCHW). Kept float always: with NNCF's quantizer there, OpenVINO 2026.4 computes
    the graph wrongly once its shapes are static (tiny SD1.5 U-Net against onnxruntime on the
    same graph: 0.39 relative error static, 0.02 dynamic; 0.02 both with these 4 convs float;
    no other group of layers matters)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return {n.name for n in G.weight_nodes(model, ("Conv",))
            if getattr(producer.get(n.input[0]), "op_type", "") == "Transpose"}


@register
class Int8Nncf(Pass):
    name = "int8-nncf"
    version = 1
    group = "precision"
    order = 20
    roles = ("denoiser",)
    needs_calibration = True
    thresholds = Thresholds(cosine=0.9, rel_err=0.45, psnr=18.0, ssim=0.7)   # as int8's
    # smooth_quant: NNCF's SmoothQuant alpha for MatMuls (-1 turns it off); NNCF's own default
    # for transformers is 0.95.
    # skip: edgegen's float list (quant.py), but with the attention blocks' proj_in convs left to
    # NNCF: 1x1 convs over up to 4096 tokens, which OpenVINO runs in int8 (the peer does).
    defaults = {"model_type": "transformer", "preset": "performance", "smooth_quant": 0.95,
                "fast_bias_correction": True, "skip": True, "outer_convs": True}
    help = "int8 by NNCF (SmoothQuant, bias correction), calibrated along sampler trajectories; reads best on OpenVINO"

    def check_config(self):
        c = self.config
        if c["model_type"] not in _MODEL_TYPES:
            raise EdgegenError(f"{self.name}: model_type must be one of {', '.join(_MODEL_TYPES)}, "
                               f"not {c['model_type']!r}")
        if c["preset"] not in _PRESETS:
            raise EdgegenError(f"{self.name}: preset must be one of {', '.join(_PRESETS)}, not {c['preset']!r}")
        if not isinstance(c["smooth_quant"], (int, float)) or not (c["smooth_quant"] == -1 or 0 <= c["smooth_quant"] <= 1):
            raise EdgegenError(f"{self.name}: smooth_quant must be an alpha in [0, 1], or -1 for off, "
                               f"not {c['smooth_quant']!r}")
        if not c["fast_bias_correction"] and c["smooth_quant"] != -1:
            # NNCF 3.4's full BiasCorrection on ONNX re-adds SmoothQuant's scaling nodes (a duplicate
            # definition onnxruntime refuses): found on the tiny SD1.5 U-Net.
            raise EdgegenError(f"{self.name}: fast_bias_correction=false needs smooth_quant=-1 "
                               "(NNCF's full bias correction breaks the SmoothQuant graph on ONNX)")

    def apply(self, ctx: PassContext) -> PassResult:
        try:
            import nncf
            from nncf.onnx.quantization.backend_parameters import BackendParameters
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
        except ImportError:
            raise EdgegenError(f"{self.name} needs NNCF: pip install -e \".[nncf]\"") from None
        if not ctx.calibration:
            raise EdgegenError(f"{ctx.component}: {self.name} needs calibration inputs")
        _, path = _load_for_library(ctx, 13)   # NNCF quantizes per channel from opset 13
        model = G.structure(path)
        nodes = [n.name for n in G.weight_nodes(model, ("Conv", "MatMul", "Gemm"))]
        floats = _transpose_fed_convs(model)
        if self.config["skip"]:
            inits = G.initializer_names(model)
            by_name = {n.name: n for n in model.graph.node}
            floats |= {n for n in G.skip_list(model, ("Conv", "MatMul", "Gemm"))
                       if "proj_in" not in G.node_key(by_name[n], inits)}
        if not self.config["outer_convs"]:
            floats |= _outer_convs(model, nodes)
        c = self.config
        adv = AdvancedQuantizationParameters(
            backend_params={BackendParameters.EXTERNAL_DATA_DIR: str(path.parent.resolve())},
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=float(c["smooth_quant"])))
        feeds = [{k: v for k, v in f.items() if k in ctx.io.input_names} for f in ctx.calibration]
        kw = {"model_type": nncf.ModelType.TRANSFORMER} if c["model_type"] == "transformer" else {}
        # NNCF logs each ignored node and a progress bar per algorithm: its warnings are enough.
        nncf.set_log_level(logging.WARNING)
        with G.quiet():
            q = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds),
                              preset=getattr(nncf.QuantizationPreset, c["preset"].upper()),
                              fast_bias_correction=c["fast_bias_correction"],
                              ignored_scope=nncf.IgnoredScope(names=sorted(floats), validate=False),
                              advanced_parameters=adv, **kw)
        del model
        G.save_model(q, ctx.dst)
        quantized = sum(1 for n in q.graph.node if n.op_type == "DequantizeLinear")
        del q
        return PassResult(_files(ctx.dst), precision="int8",
                          report={"library": f"nncf {nncf.__version__}", "dequantize_nodes": quantized,
                                  "float_nodes": sorted(floats), "calibration_samples": len(feeds)})
