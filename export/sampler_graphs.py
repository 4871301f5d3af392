"""Sampler steps as small ONNX graphs, with the coefficients read off the numpy samplers.

Each numpy sampler's step (runtimes/samplers: euler, euler_a, ddim, lcm, dpmpp_2m,
flow_euler, flow_dpm, scm), with its `prepare_model_output` in front, is at step i an
affine map of the sample x, the model output m, the step noise n and (DPM-Solver++ 2M and
flow DPM) the previous step's data prediction p, with per-step scalar coefficients; DDIM and
LCM with clip_sample also clip their x0 = a x + b m to [-r, r] on the way. So every step is

    next  = cx[i] x + cm[i] m + cn[i] n + cp[i] p + clip(zx[i] x + zm[i] m, -L[i], L[i])
    state = sx[i] x + sm[i] m                        (multistep samplers: the x0 that is p next step)

(using d clip(z, -r, r) = clip(d z, -|d| r, |d| r), so the clipped term needs no factor of
its own). `sampler_step.onnx` holds those tables, gathers row `step` (int64, shape [1]) and
evaluates this; `model_output` is the guided model output as the runtime loop has it (the graph
includes `prepare_model_output`, the identity for all samplers but scm), and `noise` is read
only by stochastic steps (`draws_noise` in the manifest entry says which steps draw).

How the coefficients are derived (`derive_tables`): never from a second copy of the schedule
math. A deep copy of the prepared numpy sampler is *probed*: its float64 `_step` (the public
`step` minus the final float32 cast) runs once per step on 1-D arrays whose elements are the
basis inputs (all zero, x=1, m=1, n=1, p=1; the step is elementwise, so one call measures all
of them). Noise reaches the step through `GivenNoise` in place of the rng, which also records
whether the step draws at all (so runtimes can keep the numpy rng stream); the multistep
state goes in and out through the sampler's `_prev_x0`. With clip_sample on, three copies are
probed: clip off (the totals), clip range 0 (the part not through x0) and a tiny clip range
(saturated, which measures |d|). Each step is then checked on random inputs (large enough
to clip) against the probed form (AFFINE_RTOL), so a future sampler that is not affine
fails the export instead of producing a wrong graph; `validate_step_graph` checks the ONNX
graph against the numpy `step` (1e-5).

`sampler_scale.onnx` (latents, step) -> model_input (scale_model_input), timestep
(Sampler.model_timestep), denoiser_timestep (times the recipe's timestep_scale, as the
denoiser takes it), init_noise_sigma, final_scale (final_sample's factor); the factors are
probed the same way.

Graphs are written with onnx.helper: they are a handful of elementwise nodes around numpy
tables, and denoise_graph.py splices them between copies of an existing denoiser graph's
nodes, which is plain proto surgery rather than something onnxscript would express better.
"""
from __future__ import annotations

import copy
import importlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..runtimes.artifact import MANIFEST, Artifact, digest_files
from ..runtimes.errors import EdgegenError
from ..runtimes.graph_sampler import (DENOISE_GRAPHS, SAMPLER_GRAPHS, SCHEDULE_ATTRS, GivenNoise, graph_key)
from ..runtimes.iospec import IOSpec, TensorSpec
from ..runtimes.samplers import make_sampler

OPSET = 17
STEP_TOL = 1e-5      # step graph vs numpy step: max|diff| <= STEP_TOL * max(1, max|numpy|)
DENOISE_TOL = 1e-4   # denoise graph vs the numpy loop, same rule
TERMS = ("x", "out", "noise", "prev")
_TINY_RANGE = 2.0 ** -20
# The probed form vs the float64 step on random inputs. Not 1e-12: scm's prepare_model_output
# rounds to float32 inside the numpy sampler. A step that isn't affine misses by O(1).
AFFINE_RTOL = 1e-6


@dataclass
class SamplerTables:
    """A prepared numpy sampler, reduced to per-step scalars (float64 unless noted)."""

    sampler: str
    num_steps: int
    coef: dict[str, np.ndarray]                 # TERMS -> [N]: the affine part of next
    clip: dict[str, np.ndarray] | None          # "x", "out", "limit" -> [N]; None without clip_sample
    state: dict[str, np.ndarray] | None         # "x", "out" -> [N]; None unless multistep
    draws: np.ndarray                           # [N] bool: the numpy step draws noise
    input_scale: np.ndarray                     # [N]: scale_model_input(x, i) = input_scale[i] * x
    model_timesteps: np.ndarray                 # [N] float32: Sampler.model_timestep(i)
    init_noise_sigma: float
    final_scale: float                          # final_sample(x) = final_scale * x
    stochastic: bool
    flow_matching: bool
    schedule: dict[str, list] = field(default_factory=dict)  # the sampler's own tables, for matching

    @property
    def multistep(self) -> bool:
        return self.state is not None


def _is_multistep(sampler) -> bool:
    return hasattr(sampler, "_prev_x0")


def _run_step(sampler, i: int, x, out, noise, prev, config: dict | None = None):
    """One float64 step of a copy of `sampler` (prepare_model_output in front): (next, state, draws)."""
    s = copy.deepcopy(sampler)
    if config:
        s.config = {**s.config, **config}
    multi = _is_multistep(s)
    if multi:
        s._prev_x0 = np.array(prev, np.float64)
    rng = GivenNoise(noise)
    m = np.asarray(s.prepare_model_output(out, x, i), np.float64)
    nxt = np.asarray(s._step(m, i, np.array(x, np.float64), rng), np.float64)
    state = np.asarray(s._prev_x0, np.float64) if multi else None
    return nxt, state, rng.calls


def _basis(scale: float = 1.0) -> dict[str, np.ndarray]:
    """Element 0 all zero, element k+1 has TERMS[k] = scale."""
    b = {t: np.zeros(len(TERMS) + 1) for t in TERMS}
    for k, t in enumerate(TERMS):
        b[t][k + 1] = scale
    return b


def _probe(sampler, i: int, config: dict | None = None) -> tuple[dict, dict | None, int]:
    b = _basis()
    nxt, state, calls = _run_step(sampler, i, b["x"], b["out"], b["noise"], b["prev"], config)
    for arr in (nxt, state):
        if arr is not None and abs(arr[0]) > 1e-12:
            raise EdgegenError(f"{sampler.name}: step {i} has a constant term {arr[0]}; not linear")
    coef = {t: float(nxt[k + 1]) for k, t in enumerate(TERMS)}
    st = None if state is None else {t: float(state[k + 1]) for k, t in enumerate(TERMS)}
    return coef, st, calls


def _probe_clip(sampler, i: int) -> tuple[dict, dict | None]:
    """(affine part, clip part) of a clip_sample step; see the module docstring."""
    total, _, _ = _probe(sampler, i, {"clip_sample": False})
    outside, _, _ = _probe(sampler, i, {"clip_sample_range": 0.0})
    z = {t: total[t] - outside[t] for t in TERMS}
    if abs(z["noise"]) > 1e-12 or abs(z["prev"]) > 1e-12:
        raise EdgegenError(f"{sampler.name}: clipped x0 depends on noise/state at step {i}")
    if z["x"] == 0 and z["out"] == 0:
        return outside, None
    # Saturate x0 along the input with the larger share: with a tiny clip range the clipped
    # term is d * range * sign, so |d| = |delta| / range (checked at two input sizes).
    along = "x" if abs(z["x"]) >= abs(z["out"]) else "out"
    probe = {t: np.zeros(2) for t in TERMS}
    probe[along][:] = (1.0, 2.0)
    args = (probe["x"], probe["out"], probe["noise"], probe["prev"])
    tiny = _run_step(sampler, i, *args, {"clip_sample_range": _TINY_RANGE})[0]
    zero = _run_step(sampler, i, *args, {"clip_sample_range": 0.0})[0]
    delta = tiny - zero
    if not np.isclose(delta[0], delta[1], rtol=1e-6, atol=0) or delta[0] == 0:
        raise EdgegenError(f"{sampler.name}: could not saturate the clipped x0 at step {i}")
    d = abs(delta[0]) / _TINY_RANGE
    limit = d * float(sampler.config["clip_sample_range"])
    return outside, {"x": z["x"], "out": z["out"], "limit": limit}


def _affine(coef: dict, clip: dict | None, v: dict) -> np.ndarray:
    y = sum(coef[t] * v[t] for t in TERMS)
    if clip is not None:
        y = y + np.clip(clip["x"] * v["x"] + clip["out"] * v["out"], -clip["limit"], clip["limit"])
    return y


def schedule_of(sampler) -> dict[str, list]:
    """The prepared sampler's own tables (timesteps, sigmas, angles): what identifies a schedule."""
    return {a: np.asarray(getattr(sampler, a), np.float64).tolist() for a in SCHEDULE_ATTRS
            if getattr(sampler, a, None) is not None and np.size(getattr(sampler, a))}


def derive_tables(sampler, check_seed: int = 0) -> SamplerTables:
    """Per-step coefficients of a numpy sampler after set_timesteps (see the module docstring)."""
    n = len(sampler.timesteps)
    if n == 0:
        raise EdgegenError(f"{sampler.name}: call set_timesteps before deriving a step graph")
    clipping = bool(sampler.config.get("clip_sample"))
    coef = {t: np.zeros(n) for t in TERMS}
    clip = {k: np.zeros(n) for k in ("x", "out", "limit")} if clipping else None
    state = {k: np.zeros(n) for k in ("x", "out")} if _is_multistep(sampler) else None
    draws = np.zeros(n, bool)
    rng = np.random.default_rng(check_seed)
    for i in range(n):
        c, st, calls = _probe(sampler, i, {"clip_sample": False} if clipping else None)
        if calls > 1:
            raise EdgegenError(f"{sampler.name}: step {i} draws noise {calls} times; a step graph takes one draw")
        draws[i] = calls == 1
        cl = None
        if clipping:
            c, cl = _probe_clip(sampler, i)
            for k in clip:
                clip[k][i] = 0.0 if cl is None else cl[k]
        for t in TERMS:
            coef[t][i] = c[t]
        if state is not None:
            if abs(st["noise"]) > 1e-12 or abs(st["prev"]) > 1e-12:
                raise EdgegenError(f"{sampler.name}: multistep state depends on noise/state at step {i}")
            state["x"][i], state["out"][i] = st["x"], st["out"]
        # The probed form must reproduce the float64 step on arbitrary inputs (clipping included).
        # float32-representable values: the samplers round their noise draw to float32.
        v = {t: (rng.standard_normal(64) * 4).astype(np.float32).astype(np.float64) for t in TERMS}
        got_next, got_state, _ = _run_step(sampler, i, v["x"], v["out"], v["noise"], v["prev"])
        want = _affine(c, cl, v)
        if not np.allclose(got_next, want, rtol=AFFINE_RTOL, atol=AFFINE_RTOL * np.abs(got_next).max()):
            raise EdgegenError(f"{sampler.name}: step {i} is not affine in (sample, output, noise, state)")
        if state is not None and not np.allclose(got_state, st["x"] * v["x"] + st["out"] * v["out"],
                                                 rtol=AFFINE_RTOL, atol=AFFINE_RTOL * np.abs(got_state).max()):
            raise EdgegenError(f"{sampler.name}: multistep state of step {i} is not affine")
    one = np.ones(1, np.float64)
    input_scale = np.array([float(np.asarray(sampler.scale_model_input(one, i), np.float64)[0]) for i in range(n)])
    for i in range(n):
        two = float(np.asarray(sampler.scale_model_input(2 * one, i), np.float64)[0])
        if not np.isclose(two, 2 * input_scale[i], rtol=1e-6, atol=0):
            raise EdgegenError(f"{sampler.name}: scale_model_input is not a per-step factor")
    final = float(np.asarray(sampler.final_sample(one), np.float64)[0])
    return SamplerTables(
        sampler=sampler.name, num_steps=n, coef=coef, clip=clip, state=state, draws=draws,
        input_scale=input_scale, model_timesteps=np.array([sampler.model_timestep(i) for i in range(n)], np.float32),
        init_noise_sigma=float(sampler.init_noise_sigma), final_scale=final, stochastic=bool(sampler.stochastic),
        flow_matching=bool(sampler.flow_matching), schedule=schedule_of(sampler))


# ----------------------------------------------------------------------------- graph building

class GraphBuilder:
    """Collects nodes and initializers with unique names (shared with denoise_graph.py)."""

    def __init__(self, prefix: str = ""):
        self.nodes, self.inits, self.prefix, self._n = [], [], prefix, 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}{hint}_{self._n}"

    def const(self, value, dtype=np.float32, hint: str = "c") -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: list[str] | int | None = None,
           **attrs) -> str | list[str]:
        from onnx import helper

        if isinstance(outputs, int):
            outputs = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        outs = outputs or [self.name(hint or op_type.lower())]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(f"{op_type}_node"), **attrs))
        return outs if (outputs and len(outs) > 1) else outs[0]

    def add_all(self, terms: list[str], out: str | None = None) -> str:
        acc = terms[0]
        for k, t in enumerate(terms[1:]):
            last = k == len(terms) - 2
            acc = self.op("Add", [acc, t], outputs=[out] if (last and out) else None)
        if len(terms) == 1 and out:
            acc = self.op("Identity", [acc], outputs=[out])
        return acc


def affine_step(b: GraphBuilder, coefs: dict[str, str], clip: tuple[str, str, str] | None, values: dict[str, str],
                out: str | None = None) -> str:
    """Emit next = sum coef*value (+ clip(zx x + zm m, -L, L)); coefs/clip are scalar value names."""
    terms = [b.op("Mul", [values[t], c]) for t, c in coefs.items()]
    if clip is not None:
        zx, zm, lim = clip
        z = b.op("Add", [b.op("Mul", [values["x"], zx]), b.op("Mul", [values["out"], zm])])
        terms.append(b.op("Clip", [z, b.op("Neg", [lim]), lim]))
    return b.add_all(terms, out)


def _nonzero(tab: np.ndarray) -> bool:
    return bool(np.any(np.asarray(tab) != 0))


def _value_info(name: str, shape, elem=None):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, elem if elem is not None else TensorProto.FLOAT, shape)


def _save(graph, path: Path, opset: int = OPSET) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgegen")
    model.ir_version = min(model.ir_version, 8)  # readable by older runtimes; opset 17 needs IR 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))


def build_step_graph(tables: SamplerTables, path: Path, latent_shape: tuple = ("batch", "channels", "height", "width"),
                     opset: int = OPSET) -> None:
    """Write sampler_step.onnx: (latents, model_output, step, noise[, prev_x0]) -> next_latents[, x0]."""
    from onnx import TensorProto, helper

    b = GraphBuilder()
    idx = b.op("Reshape", ["step", b.const(np.zeros(0), np.int64, "scalar_shape")], "index")  # [1] -> []

    def gathered(tab, hint):
        return b.op("Gather", [b.const(np.asarray(tab, np.float32), np.float32, f"{hint}_table"), idx], hint)

    values = {"x": "latents", "out": "model_output", "noise": "noise", "prev": "prev_x0"}
    coefs = {t: gathered(tables.coef[t], f"c_{t}") for t in TERMS if _nonzero(tables.coef[t])}
    clip = None
    if tables.clip is not None and _nonzero(tables.clip["limit"]):
        clip = tuple(gathered(tables.clip[k], f"clip_{k}") for k in ("x", "out", "limit"))
    affine_step(b, coefs, clip, values, out="next_latents")
    inputs = [_value_info("latents", latent_shape), _value_info("model_output", latent_shape),
              _value_info("step", [1], TensorProto.INT64), _value_info("noise", latent_shape)]
    outputs = [_value_info("next_latents", latent_shape)]
    if tables.multistep:
        inputs.append(_value_info("prev_x0", latent_shape))
        st = {t: gathered(tables.state[t], f"s_{t}") for t in ("x", "out") if _nonzero(tables.state[t])}
        affine_step(b, st, None, values, out="x0")
        outputs.append(_value_info("x0", latent_shape))
    doc = (f"{tables.sampler} step, {tables.num_steps} steps (edgegen): next_latents = step(prepare_model_output("
           "model_output, latents, step), step, latents) with the given noise")
    _save(helper.make_graph(b.nodes, f"{tables.sampler}_step", inputs, outputs, b.inits, doc_string=doc), path, opset)


def denoiser_timesteps(tables: SamplerTables, timestep_scale: float) -> np.ndarray:
    """model_timestep(i) * timestep_scale in float32, as the runtime loops compute it."""
    return np.array([t * timestep_scale for t in tables.model_timesteps], np.float32)


def build_scale_graph(tables: SamplerTables, path: Path, latent_shape: tuple = ("batch", "channels", "height", "width"),
                      timestep_scale: float = 1.0, opset: int = OPSET) -> None:
    """Write sampler_scale.onnx: (latents, step) -> model_input, timestep, denoiser_timestep,
    init_noise_sigma, final_scale."""
    from onnx import TensorProto, helper

    b = GraphBuilder()
    idx = b.op("Reshape", ["step", b.const(np.zeros(0), np.int64, "scalar_shape")], "index")
    scale = b.op("Gather", [b.const(tables.input_scale, np.float32, "input_scale"), idx])
    b.op("Mul", ["latents", scale], outputs=["model_input"])
    b.op("Gather", [b.const(tables.model_timesteps, np.float32, "timesteps"), idx], outputs=["timestep"])
    b.op("Gather", [b.const(denoiser_timesteps(tables, timestep_scale), np.float32, "denoiser_timesteps"), idx],
         outputs=["denoiser_timestep"])
    b.op("Identity", [b.const(tables.init_noise_sigma, np.float32, "init_noise_sigma")], outputs=["init_noise_sigma"])
    b.op("Identity", [b.const(tables.final_scale, np.float32, "final_scale")], outputs=["final_scale"])
    inputs = [_value_info("latents", latent_shape), _value_info("step", [1], TensorProto.INT64)]
    outputs = [_value_info("model_input", latent_shape), _value_info("timestep", []),
               _value_info("denoiser_timestep", []), _value_info("init_noise_sigma", []),
               _value_info("final_scale", [])]
    doc = (f"{tables.sampler} schedule, {tables.num_steps} steps (edgegen): scale_model_input, model timesteps "
           f"(denoiser_timestep = timestep * {timestep_scale}), init_noise_sigma, final_sample factor")
    _save(helper.make_graph(b.nodes, f"{tables.sampler}_scale", inputs, outputs, b.inits, doc_string=doc), path, opset)


# ----------------------------------------------------------------------------- validation

def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _err(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    return float(np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64)).max()), float(np.abs(ref).max())


def validate_step_graph(step_path: Path, scale_path: Path, sampler, shape: tuple = (2, 4, 8, 8), seed: int = 0,
                        timestep_scale: float = 1.0, tol: float = STEP_TOL) -> dict:
    """Run the graphs and the numpy sampler (a copy) on the same random inputs at every step,
    carrying state; raise EdgegenError past `tol`. Inputs are N(0, 1) times 1..3x the sampler's
    init_noise_sigma, so clipping samplers clip."""
    ref = copy.deepcopy(sampler)
    n = len(ref.timesteps)
    step_sess, scale_sess = _session(step_path), _session(scale_path)
    multi = "prev_x0" in {i.name for i in step_sess.get_inputs()}
    rng = np.random.default_rng(seed)
    worst = {"step": (0.0, 0.0), "scale": (0.0, 0.0), "timestep": (0.0, 0.0)}
    x = (rng.standard_normal(shape) * ref.init_noise_sigma).astype(np.float32)
    state = np.zeros(shape, np.float32)
    for i in range(n):
        out = (rng.standard_normal(shape) * rng.uniform(1, 3)).astype(np.float32)
        noise = rng.standard_normal(shape).astype(np.float32)
        step = np.array([i], np.int64)
        feeds = {"latents": x, "model_output": out, "step": step, "noise": noise}
        if multi:
            feeds["prev_x0"] = state
        got = dict(zip([o.name for o in step_sess.get_outputs()], step_sess.run(None, feeds)))
        sc = dict(zip([o.name for o in scale_sess.get_outputs()], scale_sess.run(None, {"latents": x, "step": step})))
        want_in = ref.scale_model_input(x, i)
        want = ref.step(ref.prepare_model_output(out, x, i), i, x, GivenNoise(noise))
        for key, e in (("step", _err(got["next_latents"], want)), ("scale", _err(sc["model_input"], want_in)),
                       ("timestep", _err(sc["denoiser_timestep"],
                                         np.float32(ref.model_timestep(i) * timestep_scale)))):
            worst[key] = max(worst[key], e)
        if multi:
            state = got["x0"]
        # Next step's sample: numpy's, scaled up now and then so clipping is exercised.
        x = want.astype(np.float32)
    checks, passed = [], True
    for key, (err, scale) in worst.items():
        limit = tol * max(1.0, scale)
        checks.append({"output": key, "max_abs_err": err, "max_abs_ref": scale, "tolerance": limit,
                       "passed": err <= limit})
        passed &= err <= limit
    for name, want_v in (("init_noise_sigma", ref.init_noise_sigma), ("final_scale", ref.final_sample(np.ones(1))[0])):
        e = abs(float(sc[name]) - float(want_v))
        checks.append({"output": name, "max_abs_err": e, "tolerance": tol * max(1.0, abs(float(want_v))),
                       "passed": e <= tol * max(1.0, abs(float(want_v)))})
        passed &= checks[-1]["passed"]
    result = {"reference": "numpy sampler step (float64 math)", "rule": f"max|onnx-numpy| <= {tol}*max(1, max|numpy|)",
              "shape": list(shape), "steps": n, "passed": bool(passed), "checks": checks}
    if not passed:
        bad = next(c for c in checks if not c["passed"])
        raise EdgegenError(f"{sampler.name} step graph differs from numpy: {bad}")
    return result


# ----------------------------------------------------------------------------- artifacts

def _runtime_pipeline(root: Path, manifest: dict):
    """The runtime pipeline object for this recipe (no sessions are opened): its set_timesteps
    is how the runtime prepares samplers (FLUX passes mu and sigmas)."""
    from ..runtimes.pipeline import KINDS, Pipeline

    art = Artifact(root, manifest)
    try:
        impl = getattr(importlib.import_module(f"edgegen.runtimes.{KINDS[manifest['pipeline']['kind']]}"), "PIPELINE")
    except (ImportError, KeyError, AttributeError):
        impl = Pipeline
    return impl(art)


def prepare_sampler(root: Path, manifest: dict, sampler: str, steps: int, height: int | None = None,
                    width: int | None = None):
    """A numpy sampler after set_timesteps exactly as the runtime pipeline prepares it."""
    pipe = _runtime_pipeline(root, manifest)
    d = manifest["pipeline"]["defaults"]
    lh, lw = pipe.check_size(height or d["height"], width or d["width"])
    sched = make_sampler(sampler, manifest["scheduler"])
    pipe.set_timesteps(sched, steps, lh, lw)
    return sched, (lh, lw)


def _depends_on_resolution(root: Path, manifest: dict, sampler: str, steps: int, tables: SamplerTables) -> bool:
    lo, hi = manifest["pipeline"]["resolution"]
    for side in (lo, hi):
        try:
            other = prepare_sampler(root, manifest, sampler, steps, side, side)[0]
        except EdgegenError:  # a size the recipe refuses
            continue
        if schedule_of(other) != tables.schedule:
            return True
    return False


def latent_spec(io: IOSpec) -> TensorSpec:
    """The denoiser input that takes the latents: the one shaped like its first output. An
    inpainting UNet's input differs from it only in taking more channels (latents, then mask and
    masked-image latents); the sampler steps the latents alone, so that input comes back with
    the output's shape (see `takes_extra_channels`)."""
    out = io.outputs[0]
    for t in io.inputs:
        if t.shape == out.shape:
            return t
    for t in io.inputs:
        if _extra_channels(t.shape, out.shape):
            return replace(t, shape=out.shape)
    raise EdgegenError(f"cannot tell which denoiser input takes the latents ({', '.join(io.input_names)})")


def _extra_channels(shape: tuple, out_shape: tuple) -> bool:
    """Whether `shape` is NCHW `out_shape` with more (fixed) channels."""
    return (len(shape) == len(out_shape) == 4 and shape[0] == out_shape[0] and shape[2:] == out_shape[2:]
            and isinstance(shape[1], int) and isinstance(out_shape[1], int) and shape[1] > out_shape[1])


def takes_extra_channels(io: IOSpec) -> bool:
    """Whether the denoiser's latent input also carries conditioning channels (inpainting)."""
    lat = latent_spec(io)
    return next(t for t in io.inputs if t.name == lat.name).shape != lat.shape


def _step_io(lat: TensorSpec, dims: dict, multistep: bool) -> IOSpec:
    shape = lat.shape
    ins = [TensorSpec("latents", "float32", shape, -4, 4), TensorSpec("model_output", "float32", shape, -4, 4),
           TensorSpec("step", "int64", (1,), 0, 0), TensorSpec("noise", "float32", shape, -4, 4)]
    outs = [TensorSpec("next_latents", "float32", shape)]
    if multistep:
        ins.append(TensorSpec("prev_x0", "float32", shape, -4, 4))
        outs.append(TensorSpec("x0", "float32", shape))
    return IOSpec(tuple(ins), tuple(outs), dims)


def _scale_io(lat: TensorSpec, dims: dict) -> IOSpec:
    return IOSpec((TensorSpec("latents", "float32", lat.shape, -4, 4), TensorSpec("step", "int64", (1,), 0, 0)),
                  (TensorSpec("model_input", "float32", lat.shape), TensorSpec("timestep", "float32", ()),
                   TensorSpec("denoiser_timestep", "float32", ()), TensorSpec("init_noise_sigma", "float32", ()),
                   TensorSpec("final_scale", "float32", ())), dims)


def _used_dims(dims: dict, *shapes) -> dict:
    names = {d for s in shapes for d in s if isinstance(d, str)}
    return {k: v for k, v in dims.items() if k in names}


def _onnx_shape(shape: tuple) -> list:
    return [d if isinstance(d, (int, str)) else str(d) for d in shape]


def write_sampler_graphs(root: Path, folder: str, sched, lat: TensorSpec, dims: dict, *, timestep_scale: float = 1.0,
                         validate: bool = True, tables: SamplerTables | None = None,
                         validation_shape: tuple | None = None) -> dict:
    """Write `root/folder/sampler_step.onnx` and `sampler_scale.onnx` for a prepared numpy sampler;
    return their manifest entry (what runtimes.graph_sampler.GraphSampler reads). `lat` is the
    latents' TensorSpec (the denoiser's latent input), `dims` its dims."""
    tables = tables or derive_tables(sched)
    shape = _onnx_shape(lat.shape)
    step_rel, scale_rel = f"{folder}/sampler_step.onnx", f"{folder}/sampler_scale.onnx"
    build_step_graph(tables, root / step_rel, shape)
    build_scale_graph(tables, root / scale_rel, shape, timestep_scale)
    val = None
    if validate:
        vshape = validation_shape or lat.resolve({n: d.min for n, d in dims.items()})
        val = validate_step_graph(root / step_rel, root / scale_rel, sched, vshape, timestep_scale=timestep_scale)
    return {
        "sampler": tables.sampler, "steps": tables.num_steps, "stochastic": tables.stochastic,
        "flow_matching": tables.flow_matching, "multistep": tables.multistep,
        "draws_noise": [bool(v) for v in tables.draws], "schedule": tables.schedule,
        "depends_on_resolution": False, "latent_size": None, "timestep_scale": timestep_scale,
        "step": {"graph": step_rel, "files": digest_files(root, [step_rel]),
                 "io": _step_io(lat, dims, tables.multistep).to_dict()},
        "scale": {"graph": scale_rel, "files": digest_files(root, [scale_rel]), "io": _scale_io(lat, dims).to_dict()},
        "validation": val,
    }


def add_sampler_graphs(artifact_dir: str | Path, manifest: dict | None = None,
                       samplers: list[tuple[str, int]] | None = None, denoise: bool | None = None,
                       cfg: bool | None = None, validate: bool = True, say=None) -> dict:
    """Write sampler step/scale graphs (and, for fixed-step distilled recipes, a denoise graph)
    into an artifact folder; return the manifest entries to merge (see `merge_entries`).

    samplers: (name, steps) pairs; default the recipe's default sampler and steps. denoise:
    None builds a denoise graph for the default pair when the recipe is a few-step one
    (default steps <= MAX_DENOISE_STEPS); True for every pair; False for none. cfg: whether the
    denoise graph runs classifier-free guidance; default as the runtime decides for the default
    guidance (recipe guidance "cfg" and default guidance > 1).

    Schedules are prepared by the runtime pipeline's own set_timesteps at the recipe's default
    size; an entry records whether its schedule changes with resolution (FLUX.1-dev's dynamic
    shift), and the runtime helpers refuse other schedules.
    """
    from .denoise_graph import MAX_DENOISE_STEPS

    root = Path(artifact_dir)
    say = say or (lambda msg: None)
    manifest = manifest if manifest is not None else json.loads((root / MANIFEST).read_text())
    recipe = manifest["pipeline"]
    d = recipe["defaults"]
    denoiser = recipe["denoiser"]
    dio = IOSpec.from_dict(manifest["components"][denoiser]["io"])
    lat = latent_spec(dio)
    pairs = samplers or [(d["sampler"], int(d["steps"]))]
    timestep_scale = float(recipe.get("timestep_scale", 1.0))
    dims = _used_dims(dio.dims, lat.shape)
    out = {SAMPLER_GRAPHS: {}, DENOISE_GRAPHS: {}}
    for k, (name, steps) in enumerate(pairs):
        key = graph_key(name, steps)
        sched, size = prepare_sampler(root, manifest, name, steps)
        tables = derive_tables(sched)
        depends = _depends_on_resolution(root, manifest, name, steps, tables)
        say(f"sampler graphs {key}")
        entry = write_sampler_graphs(root, f"sampler/{key}", sched, lat, dims, timestep_scale=timestep_scale,
                                     validate=validate, tables=tables,
                                     validation_shape=lat.resolve(dio.sizes("min", batch=2)))
        entry.update(depends_on_resolution=depends, latent_size=list(size) if depends else None)
        out[SAMPLER_GRAPHS][key] = entry
        common = {k2: entry[k2] for k2 in DENOISE_COMMON}
        want = denoise if denoise is not None else (k == 0 and int(steps) <= MAX_DENOISE_STEPS)
        if want and takes_extra_channels(dio):
            # The graph feeds the stepped latents straight into the denoiser; it has no mask inputs.
            if denoise:
                raise EdgegenError(f"no denoise graph for {denoiser}: it takes mask and masked-image channels "
                                   "beside the latents (inpainting), which a denoise graph does not feed")
            want = False
        if not want:
            continue
        use_cfg = cfg if cfg is not None else (recipe.get("guidance") == "cfg" and float(d["guidance"]) > 1.0)
        out[DENOISE_GRAPHS][key] = write_denoise_graph(root, manifest, key, sched, tables, common, use_cfg,
                                                       validate, say)
    if not out[DENOISE_GRAPHS]:
        del out[DENOISE_GRAPHS]
    return out


# The sampler facts a denoise graph's entry shares with its sampler graphs' entry.
DENOISE_COMMON = ("sampler", "steps", "stochastic", "flow_matching", "multistep", "draws_noise", "schedule",
                  "depends_on_resolution", "latent_size", "timestep_scale")


def write_denoise_graph(root: Path, manifest: dict, key: str, sched, tables: SamplerTables, common: dict, cfg: bool,
                        validate: bool = True, say=None) -> dict:
    """Build (and validate against the runtime loop) the one-call denoise graph `key` from the
    manifest's denoiser graph in `root`; return its manifest entry."""
    from .denoise_graph import build_denoise_graph, denoise_io, validate_denoise_graph

    recipe = manifest["pipeline"]
    d = recipe["defaults"]
    denoiser = recipe["denoiser"]
    dio = IOSpec.from_dict(manifest["components"][denoiser]["io"])
    lat = latent_spec(dio)
    timestep_scale = float(recipe.get("timestep_scale", 1.0))
    dgraph = root / manifest["components"][denoiser]["graph"]
    rel = f"{denoiser}/denoise-{key}.onnx"
    (say or (lambda msg: None))(f"denoise graph {key} ({'cfg' if cfg else 'no cfg'})")
    # An optimized artifact's copy may be a hard link to its parent's file: never write through it.
    (root / rel).unlink(missing_ok=True)
    shared = build_denoise_graph(dgraph, root / rel, tables, dio, latent_input=lat.name,
                                 timestep_scale=timestep_scale, cfg=cfg)
    io = denoise_io(dio, lat.name, tables, cfg)
    dval = None
    if validate:
        dval = validate_denoise_graph(root / rel, dgraph, sched, dio, io, latent_input=lat.name,
                                      timestep_scale=timestep_scale, cfg=cfg,
                                      guidance=float(d["guidance"]) if float(d["guidance"]) > 1 else 4.0)
    return {
        **common, "graph": rel, "files": digest_files(root, [rel]), "io": io.to_dict(), "cfg": bool(cfg),
        "latent_input": lat.name, "packed": recipe.get("kind") == "flux", "denoiser": denoiser,
        # The denoiser's weights file(s) the graph reads in place (listed by the component, not here),
        # and the component's digests it was built from: a changed denoiser makes the graph stale.
        "shares_external_data": [f"{denoiser}/{f}" for f in shared],
        "denoiser_files": copy.deepcopy(manifest["components"][denoiser]["files"]),
        "validation": dval,
    }


def rebuild_denoise_graphs(root: Path, manifest: dict, say=None) -> None:
    """Rebuild, in place, every denoise graph of `manifest` whose denoiser changed since it was
    built (an optimized U-Net or DiT), so a few-step artifact keeps its one-call path instead of
    carrying a stale graph the runtime would skip. One that can't be rebuilt and validated (a
    denoiser graph onnxruntime's CPU provider can't run, say) is dropped, with its reason in
    manifest["denoise_graphs_dropped"]: the runtime then runs the per-step loop, as it would
    have for a stale graph."""
    say = say or (lambda msg: None)
    for key, entry in list(manifest.get(DENOISE_GRAPHS, {}).items()):
        if manifest["components"][entry["denoiser"]]["files"] == entry["denoiser_files"]:
            continue
        for rel in entry.get("files", {}):
            manifest.get("files", {}).pop(rel, None)
        try:
            sched, _ = prepare_sampler(root, manifest, entry["sampler"], int(entry["steps"]))
            new = write_denoise_graph(root, manifest, key, sched, derive_tables(sched),
                                      {k: entry[k] for k in DENOISE_COMMON}, bool(entry["cfg"]), True, say)
        except Exception as e:  # noqa: BLE001 - any failure leaves the per-step loop, which the gate checked
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            for rel in entry.get("files", {}):
                (root / rel).unlink(missing_ok=True)
            del manifest[DENOISE_GRAPHS][key]
            manifest.setdefault("denoise_graphs_dropped", {})[key] = why
            say(f"denoise graph {key} dropped (the per-step loop runs): {why}")
            continue
        manifest[DENOISE_GRAPHS][key] = new
        manifest.setdefault("files", {}).update(new["files"])
    if DENOISE_GRAPHS in manifest and not manifest[DENOISE_GRAPHS]:
        del manifest[DENOISE_GRAPHS]


def merge_entries(manifest: dict, entries: dict) -> dict:
    """Add add_sampler_graphs' entries to a manifest, listing every new graph file under
    manifest["files"] so that Artifact.verify checks their digests without knowing these keys
    (a denoise graph's shared weights stay listed by their component only)."""
    files = manifest.setdefault("files", {})
    for section, items in entries.items():
        manifest.setdefault(section, {}).update(items)
        for item in items.values():
            for part in (item, item.get("step"), item.get("scale")):
                if part and "files" in part:
                    files.update(part["files"])
    return manifest
