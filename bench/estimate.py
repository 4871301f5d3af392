"""`edgegen bench --estimate`: a roofline estimate from the device profile. Nothing is measured.

FLOPs. Each component is built on the meta device from the artifact family's config (the real
one, or the tiny one for a tiny artifact: shapes only, no memory, no weights) with the same
wrapper the exporter uses, fed meta tensors of the shapes it gets at the requested size
(the denoiser at batch 2 under classifier-free guidance), and its forward pass is counted by
torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-add). That count is

    FLOPs per call = 2 * sum over weight layers (weights * positions the layer is applied at)
                   + 4 * sum over attention layers (query tokens * key tokens * width)

i.e. every linear weight once per token, every conv weight once per output pixel of its level,
plus QK^T and attention x V; norms, activations, softmax and elementwise ops are not counted.
For sd15 at 512x512 this gives 1.61 TFLOPs per UNet step (batch 2: 0.80 per image), 13.3 GFLOPs
per CLIP-L pass and 2.51 TFLOPs for the VAE decoder.

Time. Per call, the roofline bound

    t = max(FLOPs / peak_throughput[precision], weight_bytes / bandwidth)

with the profile's dense peak for the component's precision, the component's weight bytes as
stored in the artifact (read once per call) and the profile's memory bandwidth. Activation
traffic, kernel efficiency, launch overheads, tokenization and the sampler are ignored, so this
is a lower bound on latency: the time the device could not beat, not a prediction of what it
will do. Stage time = calls per generation * t; end to end = their sum.

Memory. The planner's prediction for the device (profiles/planner.py): resident and sequential
peaks on accelerators, the onnxruntime process RSS model on CPU profiles; for full-size
artifacts only (the planner models the real architectures).
"""
from __future__ import annotations

from ..profiles.device import Profile
from ..runtimes.errors import EdgegenError

GiB = 2 ** 30
LABEL = "ESTIMATE: roofline bound from the device profile; nothing was measured"


def _dim_sizes(io, recipe: dict, height: int, width: int, batch: int) -> dict[str, int]:
    from ..runtimes.shape_profile import image_sizes

    known = {"batch": batch, **image_sizes(recipe, height, width)}
    return {name: known.get(name, dim.opt) for name, dim in io.dims.items()}


def count_flops(manifest: dict, height: int, width: int, cfg_batch: int) -> dict[str, float]:
    """FLOPs of one call of each runtime component (text encoders, denoiser, VAE decoder)."""
    try:
        import diffusers  # noqa: F401  (the architecture is built with them)
        import torch
        import transformers  # noqa: F401
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        raise EdgegenError("--estimate counts FLOPs on the model's architecture and needs the export extras "
                           "(pip install 'edgegen[export]')") from None
    from ..export.arch import get_arch
    from ..export.families import get_family
    from ..export.weights import build_random

    fam = get_family(manifest["family"])
    pipe = build_random(fam, manifest.get("size") == "tiny", 0, device="meta")
    recipe = manifest["pipeline"]
    comps = {c.name: c for c in get_arch(fam.arch).components(fam, pipe, fam.resolution)}
    wanted = [te["component"] for te in recipe["text_encoders"]] + [recipe["denoiser"], recipe["vae_decoder"]]
    dtypes = {"float32": torch.float32, "float16": torch.float32, "int64": torch.int64, "int32": torch.int32}
    out = {}
    for name in wanted:
        c = comps[name]
        sizes = _dim_sizes(c.io, recipe, height, width, cfg_batch if name == recipe["denoiser"] else 1)
        # A text attention mask is left out (None): it changes no FLOPs, and some encoders (UMT5) test
        # it for all-ones with .item(), which a meta tensor cannot answer.
        feeds = [None if t.name == "attention_mask" else
                 torch.zeros(t.resolve(sizes), dtype=dtypes[t.dtype], device="meta") for t in c.io.inputs]
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            c.module(*feeds)
        out[name] = float(counter.get_total_flops())
    return out


def _memory_estimate(manifest: dict, profile: Profile, precision: str, height: int, width: int) -> dict:
    if manifest.get("size") != "full":
        return {"note": "the planner models full-size architectures; this is a tiny artifact"}
    from ..profiles import planner

    try:
        if profile.kind == "cpu":
            peak = planner.predict_peak_rss(manifest["family"], precision, height, width, 1, "onnxruntime-cpu", True)
            return {"model": "planner: onnxruntime-cpu process RSS (warm)", "predicted_gib": round(peak / GiB, 3),
                    "usable_gib": round(profile.usable_gb, 3)}
        plan = planner.plan_for_device(manifest["family"], profile, height, width, 1, precision)["plans"][0]
        return {"model": "planner: accelerator memory", "predicted_gib": plan["resident_peak_gib"],
                "sequential_peak_gib": plan["sequential_peak_gib"], "verdict": plan["meaning"],
                "usable_gib": plan["usable_gib"]}
    except EdgegenError as e:
        return {"note": f"no planner prediction: {e}"}


def component_precisions(manifest: dict) -> dict[str, str]:
    return {n: c.get("precision", "fp32") for n, c in manifest["components"].items()}


# edgegen's 4-bit passes are weight-only (MatMulNBits / int4 DequantizeLinear): the math runs in
# the activations' 16-bit type whatever int4 tensor-core rate a profile lists.
WEIGHT_ONLY = ("int4", "fp4", "int8-weights")


def _weight_only_compute(prec: str, profile: Profile) -> str | None:
    """A device without math in `prec` runs such weights weight-only: dequantized into its 16-bit
    (else fp32) units. Memory traffic still counts the small weights."""
    if prec in ("int4", "fp4", "fp8", "int8", "int8-weights", "bf16"):
        return next((p for p in ("fp16", "bf16", "fp32") if p in profile.peak_tflops), None)
    return None


def estimate(manifest: dict, profile: Profile, steps: int, height: int, width: int, guidance: float,
             flops: dict[str, float] | None = None) -> dict:
    """`flops` (count_flops' result) may be passed in: it depends on the architecture and size only."""
    r = manifest["pipeline"]
    cfg = r["guidance"] == "cfg" and guidance > 1.0
    precisions = component_precisions(manifest)
    flops = flops or count_flops(manifest, height, width, 2 if cfg else 1)
    te_calls = 1 if not cfg or r.get("force_zeros_for_empty_prompt") else 2
    calls = {**{te["component"]: te_calls for te in r["text_encoders"]}, r["denoiser"]: steps, r["vae_decoder"]: 1}
    stages, total = {}, 0.0
    for name, n in calls.items():
        prec = precisions.get(name, "fp32")
        compute = prec if prec in profile.peak_tflops and prec not in WEIGHT_ONLY else _weight_only_compute(prec, profile)
        if compute is None:
            raise EdgegenError(f"{profile.name} gives no peak throughput for {prec} ({name}); "
                               f"it has {', '.join(profile.peak_tflops)}")
        peak = profile.peak_tflops[compute] * 1e12
        wbytes = sum(f["bytes"] for f in manifest["components"][name]["files"].values())
        t_compute, t_memory = flops[name] / peak, wbytes / (profile.bandwidth_gbs * 1e9)
        per_call = max(t_compute, t_memory)
        stages[name] = {"calls": n, "precision": prec, "compute_precision": compute, "flops_per_call": flops[name], "weight_bytes": wbytes,
                        "compute_seconds_per_call": t_compute, "memory_seconds_per_call": t_memory,
                        "bound": "compute" if t_compute >= t_memory else "memory",
                        "seconds_per_call": per_call, "seconds": n * per_call}
        total += n * per_call
    den = precisions.get(r["denoiser"], "fp32")
    return {"kind": "estimate", "label": LABEL, "stages": stages, "end_to_end_seconds": total,
            "memory": _memory_estimate(manifest, profile, den, height, width),
            "method": {"flops": "torch.utils.flop_counter on the architecture built on the meta device: "
                                "2*sum(weights*positions) + 4*sum(q_tokens*k_tokens*width) per call",
                       "time": "max(FLOPs / peak_tflops[precision], weight bytes / bandwidth) per call; "
                               "activation traffic, efficiency, tokenizer and sampler ignored (a lower bound)",
                       "peak_tflops": profile.peak_tflops, "bandwidth_gbs": profile.bandwidth_gbs,
                       "sources": {k: profile.sources[k] for k in ("peak_tflops", "bandwidth_gbs")}}}
