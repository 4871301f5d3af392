"""Weight compression for the CoreML target, on the torch side, behind a quality gate.

coremltools.optimize.torch's post-training palettizer (k-means) and weight-only quantizer rewrite
each Linear/Conv2d weight to its decompressed values and register `_COREML_/...` metadata beside
it; ct.convert reads that metadata and stores the weight compressed (constexpr_lut_to_dense,
constexpr_affine_dequantize or constexpr_blockwise_shift_scale in the MIL program). So the torch
model after compression computes exactly what the mlpackage's weights decompress to, and the gate
runs it in PyTorch against the untouched model: images through the diffusers pipeline at the same
latents and generator, and each compressed component's outputs on its IOSpec examples.

Which weights: the denoiser's and the text encoders', as Apple's ml-stable-diffusion
`--quantize-nbits` does; embedding tables (gather) and the VAE stay 16-bit. Apple recommends at
least 6 bits for post-training palettization of Stable Diffusion (fewer needs fine-tuning or
mixed-bit recipes), which is why 4-bit may fail the gate on real weights.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..optimize.gate import _verdict, cosine, psnr, rel_err, ssim
from ..optimize.registry import Thresholds
from ..runtimes.errors import EdgegenError

PALETTE_BITS = (4, 6, 8)
INT4_BLOCK = 32          # int4 scales per 32 input channels (blockwise; iOS18/macOS15 ops)
GATE_STEPS = 4           # denoising steps per gate image (fewer if the family runs fewer)


@dataclass(frozen=True)
class Compression:
    name: str             # palettize-6, int8-weights, int4-weights
    method: str           # palettize | linear
    bits: int
    min_spec: int         # the CoreML spec version whose ops carry it (7: iOS16/macOS13)
    thresholds: Thresholds

    def config(self, nn):
        """The coremltools.optimize.torch config: Linear and Conv2d weights only (no embeddings)."""
        if self.method == "palettize":
            from coremltools.optimize.torch.palettization import PostTrainingPalettizerConfig as C

            mod = {"n_bits": self.bits, "granularity": "per_tensor"}
        else:
            from coremltools.optimize.torch.quantization import PostTrainingQuantizerConfig as C

            mod = {"weight_dtype": "int8", "granularity": "per_channel"} if self.bits == 8 else \
                {"weight_dtype": "int4", "granularity": "per_block", "block_size": INT4_BLOCK}
        return C.from_dict({"global_config": None, "module_type_configs": {nn.Linear: mod, nn.Conv2d: mod}})

    @property
    def flag(self) -> str:
        return f"--palettize {self.bits}" if self.method == "palettize" else f"--{self.name}"

    def to_dict(self) -> dict:
        return {"name": self.name, "method": self.method, "bits": self.bits,
                "thresholds": self.thresholds.to_dict()}


# Limits against the uncompressed fp32 PyTorch model, from the ONNX optimize passes of similar
# cost (int8 weight-only: 30 dB; int4: 22 dB). Image PSNR measured on the tiny configs (random
# weights, 64 px, 2 prompts): palettize-8 54-59 dB (sdxl, flux-schnell, sd3), palettize-6 32-43
# (sd21, sdxl), palettize-4 33-34 (sd15, sdxl), int8 54 (sd15), int4 34-36 (sdxl, sd15).
COMPRESSIONS = {
    "palettize-8": Compression("palettize-8", "palettize", 8, 7, Thresholds(0.995, 0.1, 30.0, 0.95)),
    "palettize-6": Compression("palettize-6", "palettize", 6, 7, Thresholds(0.98, 0.2, 25.0, 0.85)),
    "palettize-4": Compression("palettize-4", "palettize", 4, 7, Thresholds(0.94, 0.35, 20.0, 0.75)),
    "int8-weights": Compression("int8-weights", "linear", 8, 7, Thresholds(0.995, 0.1, 30.0, 0.95)),
    "int4-weights": Compression("int4-weights", "linear", 4, 9, Thresholds(0.94, 0.35, 20.0, 0.75)),
}


def choose(palettize: int | None, int8_weights: bool, int4_weights: bool) -> Compression | None:
    """The one compression asked for (None: 16-bit weights); a bad request is a one-line error."""
    asked = [f for f, on in ((f"--palettize {palettize}", palettize is not None), ("--int8-weights", int8_weights),
                             ("--int4-weights", int4_weights)) if on]
    if len(asked) > 1:
        raise EdgegenError(f"{asked[0]} and {asked[1]} both compress the weights; choose one")
    if palettize is not None:
        if palettize not in PALETTE_BITS:
            raise EdgegenError(f"--palettize {palettize}: CoreML palettization here takes "
                               f"{', '.join(map(str, PALETTE_BITS))} bits")
        return COMPRESSIONS[f"palettize-{palettize}"]
    if int8_weights:
        return COMPRESSIONS["int8-weights"]
    if int4_weights:
        return COMPRESSIONS["int4-weights"]
    return None


def compress(module, comp: Compression) -> dict:
    """Compress `module`'s Linear/Conv2d weights in place; what was and was not compressed."""
    import torch

    cfg = comp.config(torch.nn)
    if comp.method == "palettize":
        from coremltools.optimize.torch.palettization import PostTrainingPalettizer

        # One process: worker processes are spawned, so they re-import the caller's main module (a
        # script without a __main__ guard dies) and print coremltools' import warnings; on the
        # real-size SD1.5 UNet two workers took 107 s against 135 s for one.
        PostTrainingPalettizer(module, cfg).compress(num_kmeans_workers=1, inplace=True)
    else:
        from coremltools.optimize.torch.quantization import PostTrainingQuantizer

        PostTrainingQuantizer(module, cfg).compress(inplace=True)
    done, skipped = 0, []
    for name, m in module.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            if any("_COREML_" in b for b, _ in m.named_buffers(recurse=False)):
                done += 1
            else:   # e.g. int4 blocks need the input channels to be a multiple of the block
                skipped.append(name)
    return {"weights_compressed": done, "weights_skipped": len(skipped), "skipped": skipped[:20]}


@contextmanager
def lean_lut_indices():
    """While converting, find palette indices in memory proportional to the weight.

    ct.convert turns a torch-side palettized weight into indices with
    coremltools.optimize._utils.find_indices_for_lut, which in coremltools 9.0 compares every
    element with every palette entry at once: an array of weight size x 2**bits (about 10 GB for
    one 13M-element SD1.5 GEGLU weight at 6 bits), which killed a real-size export on a 23 GB
    machine. For one scalar palette per tensor (what compress() makes) the nearest entry comes
    from a binary search over the sorted palette instead; other palette shapes keep coremltools'
    own function. Same indices' values (tests/test_coreml.py compares them)."""
    from coremltools.converters.mil.mil import types
    from coremltools.optimize import _utils as optimize_utils

    original = getattr(optimize_utils, "find_indices_for_lut", None)
    if original is None:      # another coremltools layout: nothing to replace
        yield
        return

    def lean(data, lut, vector_axis=None):
        if lut.ndim != data.ndim + 2 or lut.shape[-1] != 1 or math.prod(lut.shape[:-2]) != 1:
            return original(data, lut, vector_axis)
        table = lut.reshape(-1)
        order = np.argsort(table, kind="stable")
        ordered = table[order]
        pos = np.searchsorted((ordered[1:] + ordered[:-1]) / 2, data.reshape(-1))
        nbits = int(math.log2(table.size))
        dtype = types.nptype_from_builtin(types.string_to_builtin(f"uint{nbits}"))
        return order[pos].reshape(data.shape).astype(dtype)

    optimize_utils.find_indices_for_lut = lean
    try:
        yield
    finally:
        optimize_utils.find_indices_for_lut = original


def _example_outputs(comp, sizes: dict, seeds: range) -> list[list[np.ndarray]]:
    import torch

    outs = []
    with torch.no_grad():
        for s in seeds:
            feeds = comp.io.example(sizes, seed=s)
            res = comp.module(*(torch.from_numpy(v) for v in feeds.values()))
            outs.append([r.float().numpy() for r in res])
    return outs


def _images(pipe, prompts, height: int, width: int, steps: int, guidance: float, inpaint: bool) -> list:
    """One image per prompt from the diffusers pipeline. Each run's generator is seeded by the
    prompt's index, so the initial latents (and any sampler noise) are the same in every call;
    the pipeline draws them itself, in whatever layout it packs latents (FLUX: 2x2 patches)."""
    import torch

    from ..optimize.calibrate import _inpaint_inputs

    images = []
    for i, prompt in enumerate(prompts):
        extra = {}
        if inpaint:   # the same synthetic image and mask the optimize gate feeds an inpainting artifact
            from PIL import Image

            pair = _inpaint_inputs(height, width, i)
            extra = {"image": Image.fromarray(pair["image"]), "mask_image": Image.fromarray(pair["mask"])}
        with torch.no_grad():
            out = pipe(prompt=prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                       generator=torch.Generator().manual_seed(1000 + i), output_type="np", **extra).images
        images.append((np.clip(out[0], 0, 1) * 255).round().astype(np.uint8))
    return images


def compress_and_gate(pipe, comps: list, recipe: dict, comp: Compression, gate: bool, thresholds: Thresholds,
                      gate_prompts: int, say=lambda msg: None) -> dict:
    """Compress `comps` (Components) in place and, with `gate`, judge them against their state
    before: per component on IOSpec examples, end to end on images from `pipe` (whose modules the
    components wrap). Raises EdgegenError naming the first failure; returns the manifest record."""
    from ..optimize.calibrate import PROMPTS

    d = recipe["defaults"]
    height, width = d["height"], d["width"]
    steps = min(GATE_STEPS, d["steps"])
    denoiser = next(c for c in comps if c.name == recipe["denoiser"])
    inpaint = denoiser.io.inputs[0].shape[1] == 2 * recipe["latent_channels"] + 1
    prompts = PROMPTS[:gate_prompts]
    pipe.set_progress_bar_config(disable=True)
    sizes = {c.name: {n: dim.opt for n, dim in c.io.dims.items()} for c in comps}
    seeds = range(2)
    if gate:
        say(f"gate reference: {len(prompts)} images, {steps} steps, uncompressed PyTorch")
        ref_images = _images(pipe, prompts, height, width, steps, d["guidance"], inpaint)
        ref_out = {c.name: _example_outputs(c, sizes[c.name], seeds) for c in comps}
    report = {}
    for c in comps:
        say(f"compressing {c.name} ({comp.name}, {c.params / 1e6:.1f}M params)")
        report[c.name] = compress(c.module, comp)
    record = {"compression": comp.to_dict(), "components": report}
    if not gate:
        record["gate"] = {"skipped": True}
        return record
    say("gate: the compressed weights in PyTorch against the reference")
    per = {}
    for c in comps:
        new = _example_outputs(c, sizes[c.name], seeds)
        pairs = [(r, n) for rs, ns in zip(ref_out[c.name], new) for r, n in zip(rs, ns)]
        vals = {"cosine": min(cosine(r, n) for r, n in pairs), "rel_err": max(rel_err(r, n) for r, n in pairs),
                "max_abs_err": max(float(np.abs(r.astype(np.float64) - n).max()) for r, n in pairs)}
        fails = _verdict(vals, thresholds, ("cosine", "rel_err"))
        per[c.name] = {**{k: round(v, 6) for k, v in vals.items()}, "samples": len(seeds), "passed": not fails,
                       "failures": fails}
    images = _images(pipe, prompts, height, width, steps, d["guidance"], inpaint)
    ps = [psnr(a, b) for a, b in zip(ref_images, images)]
    ss = [ssim(a, b) for a, b in zip(ref_images, images)]
    e2e_vals = {"psnr": min(ps), "ssim": min(ss)}
    fails = _verdict(e2e_vals, thresholds, ("psnr", "ssim"))
    record["gate"] = {
        "reference": "uncompressed fp32 PyTorch, same seeded generator (latents and sampler noise)",
        "thresholds": thresholds.to_dict(), "components": per,
        "end_to_end": {"prompts": len(prompts), "steps": steps, "height": height, "width": width,
                       "psnr": round(min(ps), 3), "psnr_mean": round(float(np.mean(ps)), 3),
                       "ssim": round(min(ss), 4), "passed": not fails, "failures": fails},
    }
    bad = [(n, g["failures"][0]) for n, g in per.items() if not g["passed"]]
    if fails:
        bad.append(("end to end", fails[0]))
    if bad:
        where, what = bad[0]
        raise EdgegenError(f"{comp.name} failed the quality gate: {where} {what} (against uncompressed PyTorch); "
                           f"nothing written. Use more bits, or --no-gate to keep it anyway")
    return record
