"""`--baseline optimum`: Hugging Face Optimum's ONNX Runtime diffusion pipeline on the same weights.

Optimum exports the diffusers pipeline itself (its own ONNX export, not edgegen's graphs), so
this compares both the export and the runtime glue. The weights are saved as a diffusers folder
first (seeded random and tiny sources have no folder), then `ORTDiffusionPipeline` exports them
(`export=True`). Timed stages: Optimum's text encoder, UNet/transformer and VAE decoder model
objects and the scheduler's step; loading (which includes the export) is not timed as a stage.
"""
from __future__ import annotations

import tempfile
import time

from ..runtimes.errors import EdgegenError


def optimum_runner(cfg: dict, manifest: dict, rec):
    import diffusers
    import numpy as np
    import torch

    try:
        from optimum.onnxruntime import ORTDiffusionPipeline
    except ImportError:
        raise EdgegenError("--baseline optimum needs optimum[onnxruntime] >= 1.22 (ORTDiffusionPipeline)") from None
    from ..runtimes.samplers import SAMPLERS
    from .torch_baseline import load_reference

    ref = load_reference(manifest)
    tmp = tempfile.mkdtemp(prefix="edgegen-optimum-")
    ref.save_pretrained(tmp, safe_serialization=True)
    del ref
    pipe = ORTDiffusionPipeline.from_pretrained(tmp, export=True,
                                                provider="CUDAExecutionProvider" if cfg["device"] == "cuda" else
                                                "CPUExecutionProvider")
    pipe.scheduler = getattr(diffusers, SAMPLERS[cfg["sampler"]].diffusers_class).from_config(manifest["scheduler"])
    r = manifest["pipeline"]
    stage_of = {te["component"]: te["component"] for te in r["text_encoders"]}
    stage_of.update({r["denoiser"]: r["denoiser"], "vae_decoder": r["vae_decoder"]})
    for attr, stage in stage_of.items():
        model = getattr(pipe, attr, None)
        if model is None:
            continue
        orig = model.forward

        def timed(*a, _orig=orig, _stage=stage, **k):
            t0 = time.perf_counter()
            out = _orig(*a, **k)
            rec.add(_stage, time.perf_counter() - t0)
            return out

        model.forward = timed
    step = pipe.scheduler.step

    def timed_step(*a, **k):
        t0 = time.perf_counter()
        out = step(*a, **k)
        rec.add("sampler", time.perf_counter() - t0)
        return out

    pipe.scheduler.step = timed_step

    def generate(latents):
        out = pipe(cfg["prompt"], num_inference_steps=cfg["steps"], guidance_scale=cfg["guidance"],
                   height=cfg["height"], width=cfg["width"], latents=torch.from_numpy(latents),
                   output_type="np").images
        return (out[0] * 255).round().clip(0, 255).astype(np.uint8)

    import optimum.version

    return generate, {"runtime": f"optimum {optimum.version.__version__} (ORTDiffusionPipeline)"}, dict
