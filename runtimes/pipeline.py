"""The torch-free text-to-image pipeline (and img2img, inpainting): shared parts, and `Pipeline.load`.

Everything family-specific comes from the artifact's manifest ("pipeline" recipe);
each architecture's denoising loop lives in its own file (unet_pipeline.py,
flux_pipeline.py, ...), chosen by the recipe's "kind".
"""
from __future__ import annotations

import gc
import importlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .artifact import Artifact, load_artifact
from .errors import EdgegenError
from .image import image_to_array, load_image, mask_to_array, nearest_resize, to_uint8
from .capability import check_runtime
from .backend import Backend, ComponentSpec, binding_differences, get_backend
from .samplers import SAMPLERS, make_sampler
from .shape_profile import is_static
from . import step_options
from .tokenizer import TextTokenizer

KINDS = {"unet": "unet_pipeline", "flux": "flux_pipeline", "sd3": "sd3_pipeline", "sana": "sana_pipeline",
         "auraflow": "auraflow_pipeline"}
MEMORY_MODES = ("resident", "sequential")
IMG2IMG_STRENGTH = 0.8   # StableDiffusionImg2ImgPipeline's default
INPAINT_STRENGTH = 1.0   # StableDiffusionInpaintPipeline's: start from pure noise


@dataclass
class ImageInput:
    """A checked img2img / inpainting request."""
    image: object           # PIL image
    mask: object | None     # PIL image, same size; white repaints
    strength: float


def resolve_backend(art: Artifact, backend: str | None, device: str | None, precision: str | None,
                    threads: int, options: dict | None = None) -> Backend:
    """The backend an artifact runs on: the one it was compiled for (refusing a host whose
    fingerprint differs), else `backend` (onnxruntime by default) at load time."""
    target = art.manifest.get("target")
    if target is None:
        name = backend or "onnxruntime"
        if name == "onnxruntime" and device is None:
            device = "cpu"
        if name == "openvino" and device in ("cpu", "cuda"):
            device = {"cpu": "CPU", "cuda": "GPU"}[device]
        return get_backend(name, device, precision, threads, options)
    name, opts = target["backend"], {**target["options"], **(options or {})}
    if backend is not None and backend != name:
        raise EdgegenError(f"{art.root} is compiled for {name}; it cannot run on {backend} "
                           f"(load its parent artifact with backend={backend!r}, or compile one for it)")
    if precision is not None and precision != opts.get("precision"):
        raise EdgegenError(f"{art.root} is compiled for precision {opts.get('precision')}; got {precision}")
    dev = opts.pop("device")
    if device is not None and device.lower() != dev.lower():
        raise EdgegenError(f"{art.root} is compiled for device {dev}; got {device}")
    prec = opts.pop("precision", None)
    be = get_backend(name, dev, prec, threads, opts)
    diffs = binding_differences(target["binding"], be.binding())
    if diffs:
        raise EdgegenError(f"{art.root} was compiled on another machine ({diffs[0]}); recompile it here: "
                           f"edgegen compile {target.get('parent', {}).get('path', 'PARENT')} --target "
                           f"{target['target']} --out NEW_DIR")
    return be


def component_spec(art: Artifact, name: str) -> ComponentSpec:
    io = art.io(name)
    return ComponentSpec(name, art.graph_path(name), io, art.root, art.components[name].get("compiled"), is_static(io))


class Pipeline:
    # Whether this kind's loop starts from an input image, and whether it feeds an inpainting
    # denoiser's mask and masked-image channels.
    image_input = True
    mask_channels = False
    # diffusers' get_timesteps: the SD pipelines keep int(steps * strength) steps; the FLUX and SD3
    # ones skip int(steps - steps * strength).
    round_kept_steps_down = True
    # The pipeline options (step_options.py) this kind's denoising loop implements; the decode's
    # (step_options.DECODE_OPTIONS) are shared.
    loop_options: tuple[str, ...] = ()

    def __init__(self, artifact: Artifact, device: str | None = None, threads: int = 0, backend: str | None = None,
                 precision: str | None = None, memory: str = "resident", backend_options: dict | None = None):
        """`backend_options`: run settings of the backend (e.g. onnxruntime's cpu_mem_arena).
        `memory`: "resident" keeps every component loaded once it has run (fastest for many
        images in one process); "sequential" holds one stage's components at a time (text
        encoders, then the denoiser, then the VAE), releasing the others before the next loads:
        the peak is then the largest stage, not their sum, at the cost of reloading per image."""
        if memory not in MEMORY_MODES:
            raise EdgegenError(f"unknown memory mode {memory!r}; known: {', '.join(MEMORY_MODES)}")
        self.memory = memory
        self.artifact = artifact
        self.recipe = artifact.manifest["pipeline"]
        self.options = step_options.read(artifact.manifest)
        for name in self.options:
            if name not in step_options.DECODE_OPTIONS and name not in self.loop_options:
                raise EdgegenError(f"this artifact uses pipeline option {name}, which a {self.recipe['kind']} "
                                   "pipeline does not run")
        self.backend = resolve_backend(artifact, backend, device, precision, threads, backend_options)
        self.backend.memory_mode = memory
        self.device, self.threads = self.backend.device, threads
        self._components: dict[str, Callable[..., dict[str, np.ndarray]]] = {}
        self._tokenizers: dict[str, TextTokenizer] = {}
        # Called as fn(stage, inputs, outputs, seconds) after every stage: per-stage timing
        # for bench, calibration data capture for optimize.
        self.observers: list[Callable[[str, dict, dict, float], None]] = []
        # Few-step artifacts carry denoise.onnx (all steps in one graph); calibration capture
        # needs per-step denoiser calls and turns this off. Backends that do not run the
        # artifact's ONNX graphs as they are use the per-step loop.
        self.use_denoise_graph = self.backend.runs_onnx_graphs
        self._denoise_graphs: dict = {}

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, verify: bool = True, threads: int = 0,
             backend: str | None = None, precision: str | None = None, memory: str = "resident",
             backend_options: dict | None = None) -> "Pipeline":
        """`backend` picks one at load time for an artifact that was not compiled; a compiled
        artifact (`edgegen compile`) runs on the backend it was compiled and gated for."""
        return cls.for_artifact(load_artifact(path, verify=verify), device=device, threads=threads,
                                backend=backend, precision=precision, memory=memory,
                                backend_options=backend_options)

    @staticmethod
    def for_artifact(art: Artifact, device: str | None = None, threads: int = 0, backend: str | None = None,
                     precision: str | None = None, memory: str = "resident",
                     backend_options: dict | None = None) -> "Pipeline":
        """The pipeline class of the artifact's recipe kind, on an already loaded artifact."""
        kind = art.manifest.get("pipeline", {}).get("kind")
        if kind not in KINDS:
            raise EdgegenError(f"{art.root}: unknown pipeline kind {kind!r}; this edgegen runs {', '.join(KINDS)}")
        impl = getattr(importlib.import_module(f"{__package__}.{KINDS[kind]}"), "PIPELINE")
        return impl(art, device=device, threads=threads, backend=backend, precision=precision, memory=memory,
                    backend_options=backend_options)

    @property
    def defaults(self) -> dict:
        return self.recipe["defaults"]

    def component(self, name: str) -> Callable[..., dict[str, np.ndarray]]:
        if name not in self._components:
            if self.memory == "sequential":
                self.release(keep=self.stage_of(name))
            check_runtime(self.backend.name, self.backend.device, name, self.artifact.components[name])
            self._components[name] = self.backend.load(component_spec(self.artifact, name))
        return self._components[name]

    def stage_of(self, name: str) -> str:
        """The stage a component belongs to: its text encoders run together (SDXL's two, SD3's
        three, once for the prompt and once for the negative), the denoiser alone over the loop,
        the VAE's encoder and decoder each alone."""
        r = self.recipe
        if name in {te["component"] for te in r.get("text_encoders", ())}:
            return "text"
        if name == r.get("denoiser") or name == self.options.get("deepcache", {}).get("component"):
            return "denoiser"
        return name

    def release(self, keep: str | None = None) -> None:
        """Drop every loaded component (and one-call denoise graph) outside stage `keep`, so that
        its memory is free before the next stage's session is built."""
        gone = [n for n in self._components if self.stage_of(n) != keep]
        for n in gone:
            del self._components[n]
        if keep != "denoiser" and self._denoise_graphs:
            gone.append("denoise_graph")
            self._denoise_graphs.clear()
        if gone:
            gc.collect()   # a session caught in a reference cycle would keep its arena until the next collection

    def tokenizer(self, name: str, label: str | None = None) -> TextTokenizer:
        if name not in self._tokenizers:
            self._tokenizers[name] = TextTokenizer.from_dir(self.artifact.root / name, name=label)
        return self._tokenizers[name]

    def _stage(self, stage: str, fn, inputs: dict) -> dict:
        t0 = time.perf_counter()
        out = fn(**inputs)
        dt = time.perf_counter() - t0
        for obs in self.observers:
            obs(stage, inputs, out, dt)
        return out

    def run_component(self, name: str, **feeds) -> dict[str, np.ndarray]:
        return self._stage(name, self.component(name), feeds)

    def encode_text(self, te: dict, prompts: list[str]) -> dict[str, np.ndarray]:
        """Tokenize and run one text encoder; returns its outputs (hidden_states and/or pooled)."""
        tok = self.tokenizer(te["tokenizer"], te.get("label"))
        ids = self._stage(f"tokenize:{te['tokenizer']}", lambda prompts: {"input_ids": tok(prompts)},
                          {"prompts": prompts})["input_ids"]
        return self.run_component(te["component"], input_ids=ids)

    def check_size(self, height: int, width: int) -> tuple[int, int]:
        r = self.recipe
        step, (lo, hi), scale = r["size_multiple"], r["resolution"], r["vae_scale_factor"]
        sides = r.get("sides", {})
        for side, value in (("height", height), ("width", width)):
            if value % 8 or value % step:
                raise EdgegenError(f"{side} {value} is not a multiple of {max(step, 8)}")
            s_lo, s_hi = sides.get(side, (lo, hi))
            if not s_lo <= value <= s_hi:
                what = f"fixed at {s_lo}" if s_lo == s_hi else f"range [{s_lo}, {s_hi}]"
                raise EdgegenError(f"{side} {value} is outside this artifact's {what}")
        return height // scale, width // scale

    def __call__(self, prompt: str | list[str], steps: int | None = None, guidance: float | None = None,
                 height: int | None = None, width: int | None = None, seed: int = 0,
                 sampler: str | None = None, latents: np.ndarray | None = None,
                 negative_prompt: str | list[str] | None = None, callback=None, image=None, mask=None,
                 strength: float | None = None) -> np.ndarray:
        """Generate; returns HxWx3 uint8 for one prompt, NxHxWx3 for a list.

        `latents` is the initial noise, NCHW float32 at latent resolution (H/8, W/8).

        `image` (a file path, PIL image or uint8 HxWx3 array) starts from that image (img2img):
        its latents are noised to the point where `strength` (in (0, 1], default 0.8) of the
        schedule remains, as diffusers' img2img pipelines do; `latents`, if given, is that noise.
        Height and width default to the image's, rounded down to a size the artifact takes.
        `mask` (same size as the image; white is repainted, black kept) inpaints, with an
        inpainting denoiser; strength then defaults to 1.0 (pure noise).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        d = self.defaults
        steps = d["steps"] if steps is None else int(steps)
        guidance = self.check_guidance(guidance)
        sampler = sampler or d["sampler"]
        if steps < 1:
            raise EdgegenError(f"steps must be >= 1, got {steps}")
        if sampler not in SAMPLERS:
            raise EdgegenError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
        if not prompts:
            raise EdgegenError("no prompt given")
        cond = self.image_inputs(image, mask, strength)
        n, c, scale = len(prompts), self.recipe["latent_channels"], self.recipe["vae_scale_factor"]
        sized_by_image = False
        if latents is not None:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.ndim != 4 or latents.shape[:2] != (n, c):
                raise EdgegenError(f"latents must have shape ({n}, {c}, H/{scale}, W/{scale}), got {latents.shape}")
            height, width = latents.shape[2] * scale, latents.shape[3] * scale
        elif cond is not None and not (height and width):
            # diffusers rounds down to the VAE factor; the exported graphs need their own multiple.
            m, sized_by_image = math.lcm(8, self.recipe["size_multiple"]), True
            height = height or cond.image.height - cond.image.height % m
            width = width or cond.image.width - cond.image.width % m
        try:
            lh, lw = self.check_size(height or d["height"], width or d["width"])
        except EdgegenError as e:
            if not sized_by_image:
                raise
            raise EdgegenError(f"{e} (from the {cond.image.width}x{cond.image.height} input image; give a "
                               "height and width to resize it to)") from None
        rng = np.random.default_rng(seed)
        if latents is None and cond is None:
            latents = rng.standard_normal((n, c, lh, lw)).astype(np.float32)
        try:
            sched = make_sampler(sampler, self.artifact.manifest["scheduler"])
            self.set_timesteps(sched, steps, lh, lw)
            if cond is not None:
                sched.set_strength(cond.strength, self.skipped_steps(steps, cond.strength))
        except ValueError as e:
            raise EdgegenError(str(e)) from None
        if cond is None:
            start, extra = latents * np.float32(sched.init_noise_sigma), []
        else:
            start, extra = self.image_latents(cond, sched, (n, c, lh, lw), latents, rng)
        latents = self.denoise(prompts, negative_prompt, guidance, sched, start, rng, callback, extra)
        image = self.decode(latents)
        return image[0] if isinstance(prompt, str) else image

    def check_guidance(self, guidance: float | None) -> float:
        guidance = self.defaults["guidance"] if guidance is None else float(guidance)
        if guidance < 0:
            raise EdgegenError(f"guidance must be >= 0, got {guidance}")
        return guidance

    def set_timesteps(self, sched, steps: int, lh: int, lw: int) -> None:
        if not hasattr(sched, "mu_for"):
            sched.set_timesteps(steps)
            return
        # Flow matching: resolution-dependent shift from the image token count, and the
        # pipeline's own sigma schedule where it passes one (FLUX: linspace(1, 1/n, n)).
        patch = self.recipe.get("patch", 1)
        sigmas = np.linspace(1.0, 1 / steps, steps) if self.recipe.get("sigmas") == "linspace" else None
        sched.set_timesteps(steps, mu=sched.mu_for((lh // patch) * (lw // patch)), sigmas=sigmas)

    def inpainting(self) -> bool:
        """Whether the denoiser takes channels beside the latents (an inpainting UNet's mask and
        masked-image latents): its latent input is wider than its output."""
        io = self.artifact.io(self.recipe["denoiser"])
        inp, out = io.inputs[0].shape, io.outputs[0].shape
        return len(inp) == 4 and inp[1] != out[1]

    def image_inputs(self, image, mask, strength) -> ImageInput | None:
        """Check an img2img / inpainting request against the artifact; None for text-to-image."""
        den, inpaint = self.recipe["denoiser"], self.inpainting()
        if image is None and mask is not None:
            raise EdgegenError("a mask needs the image it masks: give an input image too (--image)")
        if inpaint and mask is None:
            raise EdgegenError(f"this artifact's {den} is an inpainting one: it needs an input image and a mask "
                               "(--image and --mask)")
        if image is None:
            if strength is not None:
                raise EdgegenError("strength applies to an input image (--image), and none was given")
            return None
        if not self.image_input:
            raise EdgegenError(f"this artifact's pipeline ({self.recipe['kind']}) takes no input image")
        if self.recipe.get("vae_encoder") not in self.artifact.components:
            raise EdgegenError("this artifact has no VAE encoder, which an input image needs; re-export it")
        if inpaint:
            c, width = self.recipe["latent_channels"], self.artifact.io(den).inputs[0].shape[1]
            if not self.mask_channels or width != 2 * c + 1:
                raise EdgegenError(f"this artifact's {den} takes {width} input channels; this runtime feeds "
                                   f"{2 * c + 1} to a {self.recipe['kind']} inpainting denoiser (latents, mask, "
                                   "masked-image latents)")
        elif mask is not None:
            raise EdgegenError(f"a mask needs an inpainting denoiser, and this artifact's {den} takes the latents "
                               "alone (no mask or masked-image channels); export a 9-channel inpainting "
                               "checkpoint, e.g. edgegen export sd15-inpaint (or sdxl-inpaint)")
        strength = (INPAINT_STRENGTH if mask is not None else IMG2IMG_STRENGTH) if strength is None else float(strength)
        if not 0 < strength <= 1:
            raise EdgegenError(f"strength must be in (0, 1], got {strength}")
        img = load_image(image, "image")
        msk = None if mask is None else load_image(mask, "mask")
        if msk is not None and msk.size != img.size:
            raise EdgegenError(f"the mask is {msk.width}x{msk.height} but the image is {img.width}x{img.height}; "
                               "they must be the same size")
        return ImageInput(img, msk, strength)

    def skipped_steps(self, steps: int, strength: float) -> int:
        """How many leading steps of the schedule img2img skips (diffusers' get_timesteps)."""
        if self.round_kept_steps_down:
            return steps - min(int(steps * strength), steps)
        return int(max(steps - steps * strength, 0))

    def encode_image(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Latents of a (1, 3, H, W) image in [-1, 1] as diffusers' pipelines take them: a sample of
        the VAE's latent distribution (its noise drawn from `rng`), minus shift_factor, times
        scaling_factor."""
        r = self.recipe
        out = self.run_component(r["vae_encoder"], image=pixels)
        mean, logvar = out["latent_mean"], out["latent_logvar"]
        z = mean + np.exp(np.float32(0.5) * logvar) * rng.standard_normal(mean.shape).astype(np.float32)
        if r.get("shift_factor") is not None:
            z = z - np.float32(r["shift_factor"])
        stats = self.latent_stats()
        if stats is not None:   # StableDiffusionXLImg2ImgPipeline: (z - mean) * scaling / std
            return ((z - stats[0]) * np.float32(r["scaling_factor"]) / stats[1]).astype(np.float32)
        return (z * np.float32(r["scaling_factor"])).astype(np.float32)

    def image_latents(self, cond: ImageInput, sched, shape: tuple, noise: np.ndarray | None,
                      rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
        """The starting latents from the input image, and the denoiser's channels beside them
        (inpainting: mask, masked-image latents). Draws from `rng` in diffusers' order: the image's
        VAE sample, the noise (unless given), the masked image's VAE sample."""
        n, _, lh, lw = shape
        h, w = lh * self.recipe["vae_scale_factor"], lw * self.recipe["vae_scale_factor"]
        pixels = image_to_array(cond.image, h, w)
        # Inpainting at full strength starts from pure noise, as diffusers does: the image then
        # reaches the denoiser through the masked-image channels only.
        pure = cond.mask is not None and cond.strength == 1.0
        clean = None if pure else np.repeat(self.encode_image(pixels, rng), n, axis=0)
        if noise is None:
            noise = rng.standard_normal(shape).astype(np.float32)
        start = noise * np.float32(sched.init_noise_sigma) if pure else sched.add_noise(clean, noise)
        if cond.mask is None:
            return start, []
        mask = mask_to_array(cond.mask, h, w)
        masked = self.encode_image(pixels * (mask < 0.5), rng)
        return start, [np.repeat(nearest_resize(mask, lh, lw), n, axis=0), np.repeat(masked, n, axis=0)]

    def denoise(self, prompts, negative_prompt, guidance, sched, latents, rng, callback, extra=()) -> np.ndarray:
        """The loop: from `latents` (noise times init_noise_sigma, or the noised image latents) to
        the latents to decode. `extra`: the denoiser's input channels after the latents (inpainting)."""
        raise NotImplementedError

    def denoise_graph(self, sched, cfg: bool):
        """The artifact's one-call denoise graph for this schedule, or None (absent, stale, other steps)."""
        from .graph_sampler import DenoiseGraph

        # A late start (img2img) cuts the sampler's tables; the graph holds the whole schedule.
        # A step plan (CFG cutoff, DeepCache) changes the calls per step: the loop runs it.
        if getattr(sched, "begin_index", 0) or self.step_plan(len(sched.timesteps)).active:
            return None
        key = DenoiseGraph.match(self.artifact, sched, cfg) if self.use_denoise_graph else None
        if key is None:
            return None
        if key not in self._denoise_graphs:
            if self.memory == "sequential":
                self.release(keep="denoiser")
            entry = self.artifact.manifest["denoise_graphs"][key]
            self._denoise_graphs[key] = DenoiseGraph(self.artifact.root, entry, self.device, self.threads)
        return self._denoise_graphs[key]

    def step_plan(self, steps: int) -> step_options.StepPlan:
        return step_options.StepPlan.from_options(self.options, steps)

    def guided_step(self, sched, i: int, pred: np.ndarray, latents: np.ndarray, cfg: bool, guidance: float, rng):
        """Classifier-free guidance on a batched [uncond, cond] prediction, then one sampler step."""
        def step(pred, latents):
            if cfg:
                uncond, cond = np.split(pred, 2)
                pred = uncond + guidance * (cond - uncond)
            return {"latents": sched.step(pred, i, latents, rng)}

        return self._stage("sampler", step, {"pred": pred, "latents": latents})["latents"]

    def latent_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-channel (mean, std) of the VAE's latents, shaped (1, C, 1, 1), where its config has them."""
        r = self.recipe
        if r.get("latents_mean") is None or r.get("latents_std") is None:
            return None
        return tuple(np.asarray(r[k], np.float32).reshape(1, -1, 1, 1) for k in ("latents_mean", "latents_std"))

    def decode(self, latents: np.ndarray) -> np.ndarray:
        r, stats = self.recipe, self.latent_stats()
        if stats is not None:   # StableDiffusionXLPipeline's order: z * std / scaling + mean
            z = latents * stats[1] / np.float32(r["scaling_factor"]) + stats[0]
        else:
            z = latents / np.float32(r["scaling_factor"])
        if r.get("shift_factor") is not None:
            z = z + np.float32(r["shift_factor"])
        z = z.astype(np.float32)
        tiling = self.options.get("vae-tiling")
        if tiling:
            cfg = tiling["config"]
            image = step_options.tiled_decode(lambda t: self.run_component(r["vae_decoder"], latent=t)["image"], z,
                                              cfg["tile"], cfg["overlap"], r["vae_scale_factor"])
        else:
            image = self.run_component(r["vae_decoder"], latent=z)["image"]
        return to_uint8(image)
