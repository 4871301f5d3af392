"""int8 (static QDQ, dynamic) and fp8 (E4M3 QDQ): onnxruntime.quantization does the work.

What edgegen adds: calibration data from real sampler trajectories (several prompts x
all steps, see calibrate.py), the skip list (graph.SKIP_PATTERNS: embeddings,
time/guidance projections, conv_in/out, proj_in/out, norms, first/last layer), and
quantizing only weight-bearing Conv/MatMul/Gemm nodes: attention's activation x
activation MatMuls stay float (the usual recipe; they carry softmax probabilities).

Static QDQ uses symmetric int8 activations and per-channel symmetric weights: explicit
quantization TensorRT consumes directly (zero points 0), and ORT CPU runs it with its
QDQ int8 kernels. Two int8 settings come from measurement (tiny SD1.5 UNet, rel. error vs
fp32; OpenVINO 2026.4 and ORT 1.32 on an AVX2 CPU; see bench/results/int8_openvino.md):
- nodes whose activation comes straight from a Concat stay float (the UNet up-blocks'
  conv_shortcut on concat(hidden, skip)). OpenVINO's CPU low-precision transforms split a
  signed int8 Q/DQ behind a Concat per input and round in real units instead of steps of the
  scale (a 5-level activation): 0.31 where ORT gives 0.14. Those convs are also the costliest
  to quantize when run exactly (0.089 -> 0.041 without them).
- `reduce_range` (7-bit weights, NNCF's "overflow fix"): without VNNI, u8s8/s8s8 dot
  products saturate 16-bit intermediates in both runtimes (ORT 0.155 -> 0.022 on the MatMuls).

Memory: calibration runs first and alone, with one copy of the weights (optimize/ranges.py);
the library's calibration cache then hands its ranges to quantize_static, which loads the
model once more and runs no calibrator. ORT's calibrators keep histograms, not activations.
"""
from __future__ import annotations

import re
from pathlib import Path

from .. import graph as G
from ..calibrate import FeedReader
from ..ranges import METHODS, compute_ranges
from ..registry import Pass, PassContext, PassResult, Thresholds, register
from ...runtimes.errors import EdgegenError



_ATTN_PROJ = re.compile(r"(^|[./])(proj_in|proj_out)([./ ]|$)")
# The U-Net's down/upsampler convs. Measured on the real-size SDXL U-Net (bench/int8_sensitivity.py,
# bench/results/int8_sensitivity_sdxlturbo.md): 4 of its 740 int8 nodes, and the largest share of
# the activation error of any group (float activations on them: 0.096 -> 0.082; any other
# group of attention or feed-forward layers: 0.001 or less). On the real-size SD1.5 U-Net with
# the inputs-only placement (bench/results/int8_sensitivity_sd15_resamplers.md) that error is the
# downsamplers' (float activations: 0.0467 -> 0.0426; the upsamplers': -> 0.0463), while the
# upsamplers do most of the FLOPs (3x3 convs at the upsampled size): `resamplers=up` keeps them
# int8 and the downsamplers float.
_RESAMPLER_KINDS = {"down": "downsamplers", "up": "upsamplers"}


def _resampler_pattern(kinds) -> re.Pattern:
    return re.compile(rf"(^|[./])({'|'.join(kinds)})[./]\d+[./]conv([./ ]|$)")


def _float_resamplers(value) -> tuple[str, ...]:
    """The resampler kinds kept float under `resamplers=value` (which ones are int8)."""
    if value is True:
        return ()
    if value is False:
        return tuple(_RESAMPLER_KINDS.values())
    return tuple(v for k, v in _RESAMPLER_KINDS.items() if k != value)


def _matching(model, names: list[str], pattern: re.Pattern) -> set[str]:
    inits = G.initializer_names(model)
    keys = {n.name: G.node_key(n, inits) for n in model.graph.node}
    return {n for n in names if pattern.search(keys[n])}


def _quantizable(model, op_types, skip: bool, concat_fed: bool = True, outer_convs: bool = True,
                 attn_proj: bool = False, resamplers: bool | str = True) -> tuple[list[str], list[str]]:
    nodes = [n.name for n in G.weight_nodes(model, op_types)]
    skipped = set(G.skip_list(model, op_types)) if skip else set()
    if skipped and attn_proj:
        skipped -= _attn_proj(model, skipped)
    if not concat_fed:
        skipped |= _concat_fed(model, nodes)
    if not outer_convs:
        skipped |= _outer_convs(model, nodes)
    floats = _float_resamplers(resamplers)
    if floats:
        skipped |= _matching(model, nodes, _resampler_pattern(floats))
    return [n for n in nodes if n not in skipped], sorted(skipped)


def _outer_convs(model, names: list[str]) -> set[str]:
    """The U-Net's resnet convolutions at full latent resolution: those of the first down block
    and of the last up block. Measured on the real-size SD1.5 U-Net (bench/int8_sensitivity.py):
    they are 10 of its 212 int8 nodes and carry most of its error (float activations on them:
    0.069 -> 0.058 relative error; on any other group of layers: 0.062 or more)."""
    inits = G.initializer_names(model)
    ups = [int(m) for n in model.graph.node for m in re.findall(r"up_blocks[./](\d+)", G.node_key(n, inits))]
    if not ups:
        return set()
    return _matching(model, names, re.compile(
        rf"(down_blocks[./]0|up_blocks[./]{max(ups)})[./]resnets[./]\d+[./]conv[12]([./ ]|$)"))


def _attn_proj(model, names) -> set[str]:
    """The transformer blocks' proj_in/proj_out (1x1 convs or linears over every token)."""
    return _matching(model, names, _ATTN_PROJ)


def _concat_fed(model, names: list[str]) -> set[str]:
    """Nodes whose activation input is a Concat's output."""
    producer = {o: n for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    out = set()
    for name in names:
        p = producer.get(by_name[name].input[0])
        if p is not None and p.op_type == "Concat":
            out.add(name)
    return out


def _load_for_library(ctx: PassContext, opset: int):
    """(graph structure without weights, a model path for onnxruntime.quantization).

    The library loads the weights itself; edgegen loads them only when it must change the
    graph first (unnamed nodes, an opset upgrade for float8, weights behind a Transpose),
    then stages that copy on
    disk and drops it, so one copy of the weights is in memory at a time."""
    model = G.structure(ctx.src)
    stage = ctx.dst.parent / f"{ctx.dst.name}.input"
    if G.needs_names(model) or G.opset(model) < opset or G.weight_transposes(model):
        full = G.load_model(ctx.src)
        G.fold_weight_transposes(full)  # so the library sees constant MatMul weights
        G.ensure_node_names(full)
        full = G.upgrade_opset(full, opset)
        path = G.stage(ctx.src, stage, full)
        del full
        return G.structure(path), path
    return model, G.stage(ctx.src, stage)


def _float_consumers_read_float(path: Path, quantized: set[str]) -> int:
    """Point every consumer of an activation's DequantizeLinear that is not a quantized layer
    back at the float tensor; drop the Q/DQ pairs nothing reads any more. Returns how many
    inputs changed.

    onnxruntime.quantization routes all consumers of a quantized tensor through its one
    DequantizeLinear (DedicatedQDQPair splits it only between several quantized readers), so a
    resampler's input quantized for its conv also reaches the skip Concat, and its output,
    quantized for the next conv_shortcut, reaches the next block's GroupNorm: the residual
    stream itself was rounded to int8 at every block boundary. Measured on the real-size SDXL
    U-Net: 79 such inputs; output_qdq=false reaches 0.065 relative error with this edit
    (bench/results/int8_recipes_sdxlturbo_inputs.md), 0.091 without it (by hand). No option of
    the library does it; the graph edit is a few lines, done here on the structure alone (the
    weights file is untouched)."""
    import onnx

    model = G.structure(path)
    producer = {o: n for n in model.graph.node for o in n.output}
    changed = 0
    for node in model.graph.node:
        if node.name in quantized:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                changed += 1
    if changed:
        outputs = {o.name for o in model.graph.output}
        for op in ("DequantizeLinear", "QuantizeLinear"):
            read = {i for n in model.graph.node for i in n.input} | outputs
            dead = [n for n in model.graph.node if n.op_type == op and not set(n.output) & read]
            for n in dead:
                model.graph.node.remove(n)
        onnx.save(model, str(path))
    return changed


def _weight_bytes(model) -> int:
    return sum(G.initializer_bytes(model).values())


def _files(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir())
    return [G.GRAPH] + [n for n in names if n != G.GRAPH]


class _StaticQDQ(Pass):
    group = "precision"
    order = 20
    roles = ("denoiser",)
    needs_calibration = True
    opset = 17
    activation = weight = None  # QuantType names

    def check_config(self):
        if self.config["method"] not in METHODS:
            raise EdgegenError(f"{self.name}: calibration method must be one of {', '.join(METHODS)}")
        r = self.config.get("resamplers", True)
        if not (isinstance(r, bool) or r in _RESAMPLER_KINDS):
            raise EdgegenError(f"{self.name}: resamplers must be true, false, up or down (the int8 ones), "
                               f"not {self.config['resamplers']!r}")

    def apply(self, ctx: PassContext) -> PassResult:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        if not ctx.calibration:
            raise EdgegenError(f"{ctx.component}: {self.name} needs calibration inputs")
        model, path = _load_for_library(ctx, self.opset)
        nodes, skipped = _quantizable(model, ("Conv", "MatMul", "Gemm"), self.config["skip"],
                                      self.config["concat_fed"], self.config.get("outer_convs", True),
                                      self.config.get("attn_proj", False), self.config.get("resamplers", True))
        if not nodes:
            raise EdgegenError(f"{ctx.component}: nothing for {self.name} to quantize")
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True}
        if not self.config.get("output_qdq", True):
            # Q/DQ where a quantized layer reads and nowhere else, as NNCF places its
            # FakeQuantize: the layers' outputs stay float into the bias add and the residual
            # sum (and every other reader of a quantized tensor reads it float, below).
            extra["OpTypesToExcludeOutputQuantization"] = ["Conv", "MatMul", "Gemm"]
        ctx.dst.mkdir(parents=True, exist_ok=True)
        big = _weight_bytes(model) > G.INLINE_LIMIT
        del model
        cache = ctx.dst.parent / f"{ctx.dst.name}.ranges.json"
        try:
            with G.quiet():
                # Calibration first, alone, in one copy of the weights (optimize/ranges.py); the
                # library's calibration cache carries its ranges into quantize_static.
                method = compute_ranges(path, FeedReader(ctx.calibration, ctx.io.input_names),
                                        self.config["method"], ["Conv", "MatMul", "Gemm"],
                                        {"percentile": self.config["percentile"], "symmetric": True}, cache)
                quantize_static(
                    str(path), str(ctx.dst / G.GRAPH), None,
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                    per_channel=self.config["per_channel"], reduce_range=self.config["reduce_range"], activation_type=getattr(QuantType, self.activation),
                    weight_type=getattr(QuantType, self.weight), nodes_to_quantize=nodes,
                    use_external_data_format=big, calibrate_method=method, extra_options=extra,
                    calibration_cache_path=str(cache),
                )
        finally:
            cache.unlink(missing_ok=True)
        report = {"quantized_nodes": len(nodes), "skipped_nodes": skipped, "calibration_samples": len(ctx.calibration)}
        if not self.config.get("output_qdq", True):
            report["float_inputs_restored"] = _float_consumers_read_float(ctx.dst / G.GRAPH, set(nodes))
        return PassResult(_files(ctx.dst), precision=self.precision, report=report)


@register
class Int8Static(_StaticQDQ):
    name = "int8"
    version = 2
    precision = "int8"
    activation = weight = "QInt8"
    thresholds = Thresholds(cosine=0.9, rel_err=0.45, psnr=18.0, ssim=0.7)
    # outer_convs=False keeps the U-Net's full-resolution resnet convs float (see _outer_convs).
    defaults = {"method": "percentile", "percentile": 99.999, "per_channel": True, "skip": True,
                "concat_fed": False, "reduce_range": True, "outer_convs": True, "attn_proj": False,
                "resamplers": True, "output_qdq": True}
    help = ("int8 static QDQ, calibrated along sampler trajectories (outer_convs=false: full-resolution convs float; "
            "output_qdq=false: Q/DQ only where an int8 layer reads, for OpenVINO/TensorRT; "
            "resamplers=true|false|up|down: which down/upsampler convs are int8)")


@register
class FP8(_StaticQDQ):
    name = "fp8"
    version = 1
    precision = "fp8"
    opset = 19  # float8 QuantizeLinear/DequantizeLinear
    activation = weight = "QFLOAT8E4M3FN"
    thresholds = Thresholds(cosine=0.95, rel_err=0.3, psnr=20.0, ssim=0.8)
    # ORT computes float8 scales from the activations' distribution (its only float8 method).
    defaults = {"method": "distribution", "percentile": 99.999, "per_channel": False, "skip": True,
                "concat_fed": True, "reduce_range": False}
    help = "fp8 E4M3 QDQ (Ada/Hopper GPUs), calibrated like int8"


@register
class Int8Dynamic(Pass):
    name = "int8-dynamic"
    version = 1
    group = "precision"
    order = 20
    roles = ("denoiser", "text_encoder")
    thresholds = Thresholds(cosine=0.98, rel_err=0.2, psnr=24.0, ssim=0.9)
    defaults = {"per_channel": False, "skip": True}
    help = "int8 dynamic quantization of MatMul/Gemm weights (dynamic ConvInteger is 2.5x slower on CPU)"

    def apply(self, ctx: PassContext) -> PassResult:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        model, path = _load_for_library(ctx, 0)
        nodes, skipped = _quantizable(model, ("MatMul", "Gemm"), self.config["skip"])
        if not nodes:
            raise EdgegenError(f"{ctx.component}: no MatMul/Gemm weights for {self.name} to quantize")
        big = _weight_bytes(model) > G.INLINE_LIMIT
        del model
        ctx.dst.mkdir(parents=True, exist_ok=True)
        with G.quiet():
            quantize_dynamic(str(path), str(ctx.dst / G.GRAPH), op_types_to_quantize=["MatMul", "Gemm"],
                             per_channel=self.config["per_channel"], weight_type=QuantType.QInt8,
                             nodes_to_quantize=nodes, use_external_data_format=big,
                             extra_options={"MatMulConstBOnly": True})
        return PassResult(_files(ctx.dst), precision="int8-dynamic",
                          report={"quantized_nodes": len(nodes), "skipped_nodes": skipped})
