"""Graph fusions, safe for the chosen target: onnxruntime.transformers' optimizer
(attention -> Attention/MultiHeadAttention, LayerNorm, SkipLayerNorm, Gelu/QuickGelu,
BiasGelu) with the fusions whose ops only CUDA implements switched off for CPU targets.

With the default FusionOptions the optimizer emits NhwcConv, GroupNorm, SkipGroupNorm,
BiasSplitGelu, BiasAdd and packed QKV/KV attention: ORT's CPU EP has no kernel for them,
so a CPU artifact carrying them would not load. For target=cpu those are off, and the
pass then opens the result in a CPU session: an op without a CPU kernel fails the pass
here instead of on a user's machine. target=cuda keeps every fusion (the CUDA EP runs
them); its gate then needs onnxruntime's CUDA EP.

The optimizer's own graph-level passes (opt_level > 0) are not used: they run an ORT
session for the host's EP and bake EP-specific layouts into the file (19.5 GB peak RSS
on the SD1.5 UNet, for no CPU gain). Memory: one copy of the weights.

The optimizer type comes from the component's role and graph, not the family: VAE
graphs -> "vae", text encoders -> "clip", denoisers with convolutions -> "unet", without
(DiT) -> "mmdit".
"""
from __future__ import annotations

import collections

from .. import graph as G
from ..registry import NothingToDo, Pass, PassContext, PassResult, Thresholds, register
from ...runtimes.errors import EdgegenError

CUDA_ONLY_FUSIONS = ("enable_nhwc_conv", "enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu",
                     "enable_bias_add", "enable_packed_qkv", "enable_packed_kv")


def model_type(role: str, has_conv: bool) -> str:
    if role in ("vae_decoder", "vae_encoder"):
        return "vae"
    if role == "text_encoder":
        return "clip"
    return "unet" if has_conv else "mmdit"


@register
class Fuse(Pass):
    name = "fuse"
    version = 1
    group = "graph"
    order = 5  # before sparsity and precision: the fusion patterns expect the exporter's float graph
    roles = ("denoiser", "text_encoder", "vae_decoder", "vae_encoder")
    # Fusions reorder arithmetic only: outputs must agree to float rounding.
    thresholds = Thresholds(cosine=0.9999, rel_err=0.01, psnr=40.0, ssim=0.99)
    defaults = {"target": "cpu"}
    help = "graph fusions (attention, LayerNorm, Gelu) safe for the target (cpu: no CUDA-only ops)"

    def check_config(self):
        if self.config["target"] not in ("cpu", "cuda"):
            raise EdgegenError("fuse: target must be cpu or cuda")

    def apply(self, ctx: PassContext) -> PassResult:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        structure = G.structure(ctx.src)
        before = collections.Counter(n.op_type for n in structure.graph.node)
        mtype = model_type(ctx.role, before["Conv"] > 0)
        opts = FusionOptions(mtype)
        if self.config["target"] == "cpu":
            for flag in CUDA_ONLY_FUSIONS:
                setattr(opts, flag, False)
        big = sum(G.initializer_bytes(structure).values()) > G.INLINE_LIMIT
        del structure
        with G.quiet(stderr=True):
            try:
                fused = optimize_model(str(ctx.src), model_type=mtype, opt_level=0, optimization_options=opts,
                                       use_gpu=self.config["target"] == "cuda", only_onnxruntime=False)
            except Exception as e:  # its pattern matchers assume shapes some exports lack
                msg = (str(e).splitlines() or [""])[0][:160]
                raise NothingToDo(f"onnxruntime.transformers' {mtype} fusions fail on this graph "
                                  f"({type(e).__name__}: {msg})") from None
            after = collections.Counter(n.op_type for n in fused.model.graph.node)
            ctx.dst.mkdir(parents=True, exist_ok=True)
            fused.save_model_to_file(str(ctx.dst / G.GRAPH), use_external_data_format=big,
                                     all_tensors_to_one_file=True)
        del fused
        new_ops = {k: v for k, v in sorted(after.items()) if v > before.get(k, 0) and k not in before}
        if not new_ops:
            raise NothingToDo(f"no {self.config['target']}-safe fusion applies to this graph ({mtype} patterns)")
        if self.config["target"] == "cpu":
            self._check_cpu(ctx)
        files = sorted(p.name for p in ctx.dst.iterdir())
        return PassResult([G.GRAPH] + [f for f in files if f != G.GRAPH], precision=None, report={
            "target": self.config["target"], "optimizer_model_type": mtype, "fused_ops": new_ops,
            "nodes": {"before": sum(before.values()), "after": sum(after.values())}})

    @staticmethod
    def _check_cpu(ctx: PassContext) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(str(ctx.dst / G.GRAPH), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EdgegenError(f"{ctx.component}: fused graph does not load on onnxruntime's CPU EP "
                               f"({str(e).splitlines()[0][:200]})") from None
