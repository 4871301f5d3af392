"""Running the sampler graphs an export adds (export/sampler_graphs.py): torch-free, numpy + onnxruntime.

Two forms, both listed in the manifest by `add_sampler_graphs`:

- `GraphSampler`: a drop-in for a numpy `Sampler` (same methods, same rng use) whose schedule
  lives in `sampler_step.onnx` / `sampler_scale.onnx`. The runtime loops (unet_pipeline,
  flux_pipeline) run unchanged with it in place of `make_sampler(...)`.
- `DenoiseGraph`: `denoise-<sampler>-<steps>.onnx`, all N steps (denoiser + guidance + sampler)
  in one graph, for the fixed-step distilled families. Input: the initial latents already
  multiplied by init_noise_sigma (packed 2x2 for FLUX, as its transformer takes them), the
  denoiser's fixed conditioning inputs, `noise` [N, *latents.shape] for stochastic samplers,
  `guidance_scale` [1] when built with CFG. Output: `final_latents`, i.e. `final_sample` of
  the last step, what the pipeline unpacks/decodes.

`reference_denoise` is the N-call loop the runtime pipelines run, for validation and the bench.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .errors import EdgegenError
from .iospec import IOSpec
from .onnxruntime_backend import CPU_MEMORY, make_session

SAMPLER_GRAPHS = "sampler_graphs"   # manifest key: "<sampler>-<steps>" -> step/scale graph entry
DENOISE_GRAPHS = "denoise_graphs"   # manifest key: "<sampler>-<steps>" -> denoise graph entry
SCHEDULE_ATTRS = ("timesteps", "sigmas", "angles")  # numpy sampler tables an entry records


def graph_key(sampler: str, steps: int) -> str:
    return f"{sampler}-{int(steps)}"


class GivenNoise:
    """Stands in for np.random.Generator in a numpy sampler's `step`: hands out given noise.

    The numpy samplers draw at most one `standard_normal(shape)` per step (then cast it to
    float32); this returns `noise` for that draw and counts the calls, so a step can be fed
    the same noise a step graph gets, and export can see which steps draw.
    """

    def __init__(self, noise: np.ndarray | None = None):
        self.noise = None if noise is None else np.asarray(noise)
        self.calls = 0

    def standard_normal(self, size=None, *args, **kwargs):
        self.calls += 1
        if self.noise is None:
            raise EdgegenError("this sampler step draws noise but none was given")
        if tuple(np.shape(self.noise)) != tuple(np.atleast_1d(size)):
            raise EdgegenError(f"noise has shape {np.shape(self.noise)}, the sampler draws {size}")
        return np.array(self.noise, np.float64)


def draw_noise(rng: np.random.Generator | None, draws: list[bool], shape: tuple) -> np.ndarray:
    """[N, *shape] step noise drawn from `rng` exactly as the numpy loop draws it.

    Step i draws `rng.standard_normal(shape)` as float32 iff draws[i] (the numpy sampler's own
    rule, recorded at export); steps that draw nothing get zeros and consume nothing.
    """
    rng = np.random.default_rng() if rng is None else rng
    out = np.zeros((len(draws), *shape), np.float32)
    for i, d in enumerate(draws):
        if d:
            out[i] = rng.standard_normal(shape).astype(np.float32)
    return out


def reference_denoise(run_denoiser: Callable[..., np.ndarray], sampler, latents: np.ndarray, fixed: dict, *,
                      latent_input: str, timestep_scale: float = 1.0, cfg: bool = False, guidance: float = 1.0,
                      rng=None) -> np.ndarray:
    """The runtime pipelines' loop (unet_pipeline.denoise / flux_pipeline.denoise), with a prepared
    numpy sampler: N denoiser calls + numpy sampler steps. `latents` are already scaled by
    init_noise_sigma (and packed for FLUX); returns final_sample of the last step."""
    x = np.asarray(latents, np.float32)
    for i in range(len(sampler.timesteps)):
        xin = np.concatenate([x, x]) if cfg else x
        xin = sampler.scale_model_input(xin, i)
        ts = np.full(xin.shape[0], sampler.model_timestep(i) * timestep_scale, np.float32)
        pred = run_denoiser(**{latent_input: xin, "timestep": ts}, **fixed)
        if cfg:
            uncond, cond = np.split(pred, 2)
            pred = uncond + guidance * (cond - uncond)
        x = sampler.step(sampler.prepare_model_output(pred, x, i), i, x, rng)
    return sampler.final_sample(x)


def _entry(artifact, key: str, sampler: str, steps: int) -> dict:
    entries = artifact.manifest.get(key, {})
    k = graph_key(sampler, steps)
    if k not in entries:
        have = ", ".join(entries) or "none"
        raise EdgegenError(f"artifact {artifact.root} has no {key} entry for {k} (has: {have})")
    return entries[k]


def _same_schedule(entry: dict, sched) -> bool:
    """Whether a prepared numpy sampler has the schedule the graph was baked with."""
    if sched.name != entry["sampler"] or len(sched.timesteps) != entry["steps"]:
        return False
    for attr, values in entry["schedule"].items():
        ours = getattr(sched, attr, None)
        if ours is None or not np.array_equal(np.asarray(ours, np.float64), np.asarray(values, np.float64)):
            return False
    return True


class GraphSampler:
    """A numpy-Sampler look-alike backed by the artifact's sampler_step/sampler_scale graphs.

    `step` includes `prepare_model_output` (identity except for scm), so `prepare_model_output`
    here is the identity; everything else returns what the numpy sampler returns (float32,
    up to float32 rounding of the coefficients) and uses `rng` the same way.
    """

    def __init__(self, root: Path, entry: dict, scheduler_config: dict, device: str = "cpu", threads: int = 0):
        from .onnxruntime_backend import OrtComponent

        self.entry, self.scheduler_config = entry, scheduler_config
        self.name, self.num_steps = entry["sampler"], int(entry["steps"])
        self.stochastic, self.flow_matching = bool(entry["stochastic"]), bool(entry["flow_matching"])
        self.multistep = bool(entry["multistep"])
        self.draws = [bool(d) for d in entry["draws_noise"]]
        st, sc = entry["step"], entry["scale"]
        self._step = OrtComponent(f"{self.name} step", root / st["graph"], IOSpec.from_dict(st["io"]),
                                  device, threads)
        self._scale = OrtComponent(f"{self.name} scale", root / sc["graph"], IOSpec.from_dict(sc["io"]),
                                   device, threads)
        # The numpy sampler's tables, as recorded (so DenoiseGraph.match accepts a GraphSampler too).
        for attr, values in entry["schedule"].items():
            setattr(self, attr, np.asarray(values, np.float64))
        self.timesteps = np.asarray(entry["schedule"]["timesteps"], np.float32)
        io = self._scale.io
        probe = io.example(io.sizes("min", batch=1))["latents"]
        consts = [self._scale(latents=probe, step=np.array([i], np.int64)) for i in range(self.num_steps)]
        self._model_timesteps = np.array([c["timestep"] for c in consts], np.float32).reshape(-1)
        self.init_noise_sigma = float(consts[0]["init_noise_sigma"])
        self._final_scale = np.float32(consts[0]["final_scale"])
        self._state = None

    @classmethod
    def from_artifact(cls, artifact, sampler: str, steps: int, device: str = "cpu", threads: int = 0) -> "GraphSampler":
        entry = _entry(artifact, SAMPLER_GRAPHS, sampler, steps)
        return cls(artifact.root, entry, artifact.manifest["scheduler"], device, threads)

    def mu_for(self, image_seq_len: int):
        from .samplers import make_sampler

        s = make_sampler(self.name, self.scheduler_config)
        return s.mu_for(image_seq_len) if hasattr(s, "mu_for") else None

    def set_timesteps(self, num_steps: int, **kwargs) -> None:
        """Accepts the numpy sampler's arguments; refuses a schedule other than the baked one."""
        from .samplers import make_sampler

        if num_steps != self.num_steps:
            raise EdgegenError(f"the {self.name} step graph was exported for {self.num_steps} steps, not {num_steps}"
                               " (use the numpy sampler)")
        ref = make_sampler(self.name, self.scheduler_config)
        ref.set_timesteps(num_steps, **kwargs)
        if not _same_schedule(self.entry, ref):
            where = f" at latent size {self.entry['latent_size']}" if self.entry["depends_on_resolution"] else ""
            raise EdgegenError(f"the {self.name} step graph was exported for {self.num_steps} steps{where};"
                               " this schedule differs (use the numpy sampler)")
        self._state = None

    def _check(self, i: int) -> int:
        if not 0 <= int(i) < self.num_steps:
            raise ValueError(f"{self.name}: step index {i} outside 0..{self.num_steps - 1}")
        return int(i)

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        return self._scale(latents=sample, step=np.array([self._check(i)], np.int64))["model_input"]

    def model_timestep(self, i: int) -> np.float32:
        return self._model_timesteps[self._check(i)]

    def prepare_model_output(self, model_output: np.ndarray, sample: np.ndarray, i: int) -> np.ndarray:
        return model_output  # folded into the step graph

    def final_sample(self, sample: np.ndarray) -> np.ndarray:
        return np.asarray(sample, np.float32) * self._final_scale

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, rng=None) -> np.ndarray:
        i = self._check(i)
        sample = np.asarray(sample, np.float32)
        if self.draws[i]:
            rng = np.random.default_rng() if rng is None else rng
            noise = rng.standard_normal(sample.shape).astype(np.float32)
        else:
            noise = np.zeros_like(sample)
        feeds = {"latents": sample, "model_output": model_output, "step": np.array([i], np.int64), "noise": noise}
        if self.multistep:
            if self._state is None or i == 0:
                self._state = np.zeros_like(sample)
            feeds["prev_x0"] = self._state
        out = self._step(**feeds)
        if self.multistep:
            self._state = out["x0"]
        return out["next_latents"]


class DenoiseGraph:
    """All N denoising steps in one onnxruntime call (see the module docstring for the IO)."""

    def __init__(self, root: Path, entry: dict, device: str = "cpu", threads: int = 0):
        self.entry = entry
        self.root = root
        self.io = IOSpec.from_dict(entry["io"])
        self.steps, self.cfg = int(entry["steps"]), bool(entry["cfg"])
        self.draws = [bool(d) for d in entry["draws_noise"]]
        self.session = make_session(root / entry["graph"], device, threads,
                                    memory=CPU_MEMORY if device == "cpu" else None)

    @classmethod
    def from_artifact(cls, artifact, sampler: str, steps: int, device: str = "cpu", threads: int = 0) -> "DenoiseGraph":
        return cls(artifact.root, _entry(artifact, DENOISE_GRAPHS, sampler, steps), device, threads)

    @staticmethod
    def match(artifact, sched, cfg: bool) -> str | None:
        """The key of the artifact's denoise graph for this prepared numpy sampler and CFG choice,
        or None: none was exported for it, or its denoiser changed since (e.g. optimized)."""
        key = graph_key(sched.name, len(sched.timesteps))
        entry = artifact.manifest.get(DENOISE_GRAPHS, {}).get(key)
        if entry is None or bool(entry["cfg"]) != bool(cfg) or not _same_schedule(entry, sched):
            return None
        if artifact.components.get(entry["denoiser"], {}).get("files") != entry["denoiser_files"]:
            return None
        return key

    @staticmethod
    def find(artifact, sched, cfg: bool, device: str = "cpu", threads: int = 0) -> "DenoiseGraph | None":
        """A session on the matching denoise graph (see `match`), or None. Opens a new session:
        callers that denoise repeatedly should keep it (or cache by `match`'s key)."""
        key = DenoiseGraph.match(artifact, sched, cfg)
        if key is None:
            return None
        return DenoiseGraph(artifact.root, artifact.manifest[DENOISE_GRAPHS][key], device, threads)

    def noise(self, rng, latents_shape: tuple) -> np.ndarray:
        return draw_noise(rng, self.draws, tuple(latents_shape))

    def __call__(self, latents: np.ndarray, rng=None, noise: np.ndarray | None = None,
                 guidance_scale: float | None = None, **fixed: np.ndarray) -> np.ndarray:
        """Final latents from initial ones (already times init_noise_sigma). Noise, if the sampler
        draws any, is `noise` or else drawn from `rng` as the numpy loop would draw it."""
        latents = np.ascontiguousarray(latents, np.float32)
        feeds = {"latents": latents}
        names = self.io.input_names
        for name in names:
            if name in fixed:
                feeds[name] = np.ascontiguousarray(fixed[name], np.float32)
        if "noise" in names:
            feeds["noise"] = self.noise(rng, latents.shape) if noise is None else np.asarray(noise, np.float32)
        if "guidance_scale" in names:
            if guidance_scale is None:
                raise EdgegenError("this denoise graph runs classifier-free guidance: give guidance_scale")
            feeds["guidance_scale"] = np.array([guidance_scale], np.float32)
        missing = [n for n in names if n not in feeds]
        if missing:
            raise EdgegenError(f"denoise graph: missing inputs {', '.join(missing)}")
        try:
            self.io.infer_sizes(feeds)
        except ValueError as e:
            raise EdgegenError(f"denoise graph: {e}") from None
        return self.session.run(["final_latents"], feeds)[0]
