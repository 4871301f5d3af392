"""The torch-free text-to-image pipeline: shared parts, and `Pipeline.load`.

Everything family-specific comes from the artifact's manifest ("pipeline" recipe);
each architecture's denoising loop lives in its own file (unet_pipeline.py,
flux_pipeline.py, ...), chosen by the recipe's "kind".
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .artifact import Artifact, load_artifact
from .errors import EdgegenError
from .image import to_uint8
from .backend import Backend, ComponentSpec, binding_differences, get_backend
from .samplers import SAMPLERS, make_sampler
from .shape_profile import is_static
from .tokenizer import TextTokenizer

KINDS = {"unet": "unet_pipeline", "flux": "flux_pipeline", "sd3": "sd3_pipeline", "sana": "sana_pipeline"}


def resolve_backend(art: Artifact, backend: str | None, device: str | None, precision: str | None,
                    threads: int) -> Backend:
    """The backend an artifact runs on: the one it was compiled for (refusing a host whose
    fingerprint differs), else `backend` (onnxruntime by default) at load time."""
    target = art.manifest.get("target")
    if target is None:
        name = backend or "onnxruntime"
        if name == "onnxruntime" and device is None:
            device = "cpu"
        if name == "openvino" and device in ("cpu", "cuda"):
            device = {"cpu": "CPU", "cuda": "GPU"}[device]
        return get_backend(name, device, precision, threads)
    name, opts = target["backend"], dict(target["options"])
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
    def __init__(self, artifact: Artifact, device: str | None = None, threads: int = 0, backend: str | None = None,
                 precision: str | None = None):
        self.artifact = artifact
        self.recipe = artifact.manifest["pipeline"]
        self.backend = resolve_backend(artifact, backend, device, precision, threads)
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
             backend: str | None = None, precision: str | None = None) -> "Pipeline":
        """`backend` picks one at load time for an artifact that was not compiled; a compiled
        artifact (`edgegen compile`) runs on the backend it was compiled and gated for."""
        return cls.for_artifact(load_artifact(path, verify=verify), device=device, threads=threads,
                                backend=backend, precision=precision)

    @staticmethod
    def for_artifact(art: Artifact, device: str | None = None, threads: int = 0, backend: str | None = None,
                     precision: str | None = None) -> "Pipeline":
        """The pipeline class of the artifact's recipe kind, on an already loaded artifact."""
        kind = art.manifest.get("pipeline", {}).get("kind")
        if kind not in KINDS:
            raise EdgegenError(f"{art.root}: unknown pipeline kind {kind!r}; this edgegen runs {', '.join(KINDS)}")
        impl = getattr(importlib.import_module(f"{__package__}.{KINDS[kind]}"), "PIPELINE")
        return impl(art, device=device, threads=threads, backend=backend, precision=precision)

    @property
    def defaults(self) -> dict:
        return self.recipe["defaults"]

    def component(self, name: str) -> Callable[..., dict[str, np.ndarray]]:
        if name not in self._components:
            self._components[name] = self.backend.load(component_spec(self.artifact, name))
        return self._components[name]

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
        for side, value in (("height", height), ("width", width)):
            if value % 8 or value % step:
                raise EdgegenError(f"{side} {value} is not a multiple of {max(step, 8)}")
            if not lo <= value <= hi:
                raise EdgegenError(f"{side} {value} is outside this artifact's range [{lo}, {hi}]")
        return height // scale, width // scale

    def __call__(self, prompt: str | list[str], steps: int | None = None, guidance: float | None = None,
                 height: int | None = None, width: int | None = None, seed: int = 0,
                 sampler: str | None = None, latents: np.ndarray | None = None,
                 negative_prompt: str | list[str] | None = None, callback=None) -> np.ndarray:
        """Generate; returns HxWx3 uint8 for one prompt, NxHxWx3 for a list.

        `latents` is the initial noise, NCHW float32 at latent resolution (H/8, W/8).
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
        n, c, scale = len(prompts), self.recipe["latent_channels"], self.recipe["vae_scale_factor"]
        if latents is not None:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.ndim != 4 or latents.shape[:2] != (n, c):
                raise EdgegenError(f"latents must have shape ({n}, {c}, H/{scale}, W/{scale}), got {latents.shape}")
            height, width = latents.shape[2] * scale, latents.shape[3] * scale
        lh, lw = self.check_size(height or d["height"], width or d["width"])
        rng = np.random.default_rng(seed)
        if latents is None:
            latents = rng.standard_normal((n, c, lh, lw)).astype(np.float32)
        try:
            sched = make_sampler(sampler, self.artifact.manifest["scheduler"])
            self.set_timesteps(sched, steps, lh, lw)
        except ValueError as e:
            raise EdgegenError(str(e)) from None
        latents = self.denoise(prompts, negative_prompt, guidance, sched, latents, rng, callback)
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

    def denoise(self, prompts, negative_prompt, guidance, sched, latents, rng, callback) -> np.ndarray:
        raise NotImplementedError

    def denoise_graph(self, sched, cfg: bool):
        """The artifact's one-call denoise graph for this schedule, or None (absent, stale, other steps)."""
        from .graph_sampler import DenoiseGraph

        key = DenoiseGraph.match(self.artifact, sched, cfg) if self.use_denoise_graph else None
        if key is None:
            return None
        if key not in self._denoise_graphs:
            entry = self.artifact.manifest["denoise_graphs"][key]
            self._denoise_graphs[key] = DenoiseGraph(self.artifact.root, entry, self.device, self.threads)
        return self._denoise_graphs[key]

    def guided_step(self, sched, i: int, pred: np.ndarray, latents: np.ndarray, cfg: bool, guidance: float, rng):
        """Classifier-free guidance on a batched [uncond, cond] prediction, then one sampler step."""
        def step(pred, latents):
            if cfg:
                uncond, cond = np.split(pred, 2)
                pred = uncond + guidance * (cond - uncond)
            return {"latents": sched.step(pred, i, latents, rng)}

        return self._stage("sampler", step, {"pred": pred, "latents": latents})["latents"]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        r = self.recipe
        z = latents / np.float32(r["scaling_factor"])
        if r.get("shift_factor") is not None:
            z = z + np.float32(r["shift_factor"])
        return to_uint8(self.run_component(r["vae_decoder"], latent=z)["image"])
