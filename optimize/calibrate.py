"""Calibration and gate data from real sampler trajectories of the parent artifact.

The parent pipeline runs several prompts through all denoising steps; an observer on
the pipeline records every component's inputs (and, for the gate prompts, its
outputs). The same run gives the parent's images at fixed latents for the end-to-end
gate. Calibration prompts and gate prompts are disjoint, so a pass is never judged on
the data it was calibrated on.

Components the text-to-image loop does not call get inputs derived from the run where
that is meaningful (the VAE encoder gets the decoded images, clipped to [-1, 1], the way
image-to-image would feed it) and seeded IOSpec examples otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..runtimes.artifact import Artifact

# Varied subjects, styles and lengths; the first ones calibrate, the next ones gate.
PROMPTS = (
    "a photo of an astronaut riding a horse on the moon",
    "a watercolor painting of a lighthouse at dawn, soft pastel colors",
    "close-up portrait of an old fisherman, dramatic lighting, 85mm",
    "a bowl of ramen on a wooden table, studio photograph",
    "an isometric pixel art city at night with neon signs",
    "a red fox sitting in fresh snow, national geographic",
    "a futuristic sports car in the desert, octane render",
    "a vase of sunflowers, oil painting in the style of van gogh",
)


@dataclass
class Trajectories:
    calibration: dict[str, list[dict[str, np.ndarray]]]   # component -> inputs (calibration prompts)
    gate_inputs: dict[str, list[dict[str, np.ndarray]]]   # component -> inputs (gate prompts)
    gate_outputs: dict[str, list[dict[str, np.ndarray]]]  # the parent's outputs on gate_inputs
    images: list[np.ndarray]                              # the parent's images for the gate prompts
    gate_runs: list[dict]                                 # how to regenerate them: prompt, seed, latents, ...
    config: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {**self.config, "samples": {c: len(v) for c, v in self.calibration.items()}}


def make_pipeline(art: Artifact):
    """The runtime pipeline for an in-memory Artifact (the gate runs one on a folder whose
    manifest is not written yet)."""
    from ..runtimes.pipeline import Pipeline

    pipe = Pipeline.for_artifact(art)
    pipe.use_denoise_graph = False  # calibration needs the denoiser's per-step inputs
    return pipe


def _evenly(items: list, n: int) -> list:
    """At most n items spread over the list (prompt-major, step-minor: covers all timesteps)."""
    if len(items) <= n:
        return items
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def _normalise(art: Artifact, comp: str, feeds: dict) -> dict[str, np.ndarray]:
    io = art.io(comp)
    return {t.name: np.array(feeds[t.name], dtype=t.dtype, copy=True) for t in io.inputs if t.name in feeds}


def _inpaint_inputs(height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    """A smooth colour field with texture, and a centred rectangle to repaint (a quarter of the area)."""
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    rgb = np.stack([xx, yy, (xx + yy) / 2], -1) * 200 + np.random.default_rng(seed).normal(0, 20, (height, width, 3))
    mask = np.zeros((height, width, 3), np.uint8)
    mask[height // 4:3 * height // 4, width // 4:3 * width // 4] = 255
    return {"image": np.clip(rgb + 30, 0, 255).astype(np.uint8), "mask": mask}


def collect(art: Artifact, calibration_prompts: int = 4, gate_prompts: int = 2, steps: int | None = None,
            size: int | None = None, max_samples: int = 32, say=lambda msg: None, width: int | None = None,
            batch: int = 1) -> Trajectories:
    """`size` is the image height (and width unless `width` is given). `batch` > 1 generates
    each prompt that many times in one call (a compiled artifact with a fixed batch); with no
    calibration prompts only the gate data is collected (the compile gate)."""
    if calibration_prompts < 0 or gate_prompts < 1 or calibration_prompts + gate_prompts > len(PROMPTS):
        raise ValueError(f"need 0 <= calibration prompts, 1 <= gate prompts, sum <= {len(PROMPTS)}")
    pipe = make_pipeline(art)
    comps = set(art.components)
    recipe = art.manifest["pipeline"]
    d = recipe["defaults"]
    steps = d["steps"] if steps is None else steps
    height = size or d["height"]
    width = width or size or d["width"]
    lh, lw = height // recipe["vae_scale_factor"], width // recipe["vae_scale_factor"]

    calib: dict[str, list] = {c: [] for c in comps}
    gate_in: dict[str, list] = {c: [] for c in comps}
    gate_out: dict[str, list] = {c: [] for c in comps}
    sink = {"inputs": calib, "outputs": None}

    def observe(stage, inputs, outputs, seconds):
        if stage in comps:
            sink["inputs"][stage].append(_normalise(art, stage, inputs))
            if sink["outputs"] is not None:
                sink["outputs"][stage].append({k: np.array(v, copy=True) for k, v in outputs.items()})

    pipe.observers.append(observe)
    decoded_calib, decoded_gate, images, runs = [], [], [], []
    prompts = PROMPTS[:calibration_prompts + gate_prompts]
    for i, prompt in enumerate(prompts):
        gating = i >= calibration_prompts
        sink["inputs"], sink["outputs"] = (gate_in, gate_out) if gating else (calib, None)
        say(f"{'gate' if gating else 'calibration'} trajectory {i + 1}/{len(prompts)}: {steps} steps")
        latents = np.random.default_rng(1000 + i).standard_normal(
            (1, recipe["latent_channels"], lh, lw)).astype(np.float32)
        # An inpainting denoiser only runs with an image and a mask: give it a fixed synthetic pair.
        extra = _inpaint_inputs(height, width, i) if pipe.inpainting() else {}
        if batch > 1:
            latents = np.repeat(latents, batch, axis=0)
            image = pipe([prompt] * batch, steps=steps, seed=i, latents=latents, **extra)[0]
        else:
            image = pipe(prompt, steps=steps, seed=i, latents=latents, **extra)
        dec = sink["inputs"][recipe["vae_decoder"]][-1]
        decoded = pipe.component(recipe["vae_decoder"])(**dec)["image"]
        (decoded_gate if gating else decoded_calib).append(np.clip(decoded, -1, 1).astype(np.float32))
        if gating:
            images.append(image)
            runs.append({"prompt": [prompt] * batch if batch > 1 else prompt, "seed": i, "steps": steps,
                         "latents": latents, "inputs": extra})

    # Components the loop did not call (the VAE encoder, extra parts): derived inputs.
    for c in sorted(comps):
        if calib[c] or gate_in[c]:
            continue
        io = art.io(c)
        names = io.input_names
        if len(names) == 1 and io.inputs[0].dtype == "float32" and len(io.inputs[0].shape) == 4 \
                and io.inputs[0].shape[1] == 3:
            calib[c] = [{names[0]: x} for x in decoded_calib]
            gate_in[c] = [{names[0]: x} for x in decoded_gate]
        else:
            sizes = io.sizes("opt", **({"batch": batch} if "batch" in io.dims else {}))
            calib[c] = [io.example(sizes, seed=s) for s in range(calibration_prompts)]
            gate_in[c] = [io.example(sizes, seed=100 + s) for s in range(gate_prompts)]
        comp = pipe.component(c)
        gate_out[c] = [comp(**f) for f in gate_in[c]]

    return Trajectories(
        calibration={c: _evenly(v, max_samples) for c, v in calib.items()},
        gate_inputs={c: _evenly(v, max_samples) for c, v in gate_in.items()},
        gate_outputs={c: _evenly(v, max_samples) for c, v in gate_out.items()},  # same picks as inputs
        images=images, gate_runs=runs,
        config={"calibration_prompts": calibration_prompts, "gate_prompts": gate_prompts, "steps": steps,
                "height": height, "width": width, "batch": batch, "sampler": d["sampler"], "max_samples": max_samples},
    )


class FeedReader(CalibrationDataReader):
    """onnxruntime.quantization CalibrationDataReader over captured feeds (deep-copyable,
    as ORT's GPTQ requires)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], input_names: list[str] | None = None):
        self.feeds = [{k: v for k, v in f.items() if input_names is None or k in input_names} for f in feeds]
        self.pos, self.end = 0, len(self.feeds)

    def get_next(self):
        if self.pos >= self.end:
            return None
        self.pos += 1
        return self.feeds[self.pos - 1]

    def set_range(self, start_index: int, end_index: int):
        """The window ORT's strided calibration reads next (CalibStridedMinMax)."""
        self.pos, self.end = start_index, min(end_index, len(self.feeds))

    def rewind(self):
        self.pos, self.end = 0, len(self.feeds)

    def __iter__(self):
        return iter(self.feeds)

    def __len__(self):
        return len(self.feeds)
