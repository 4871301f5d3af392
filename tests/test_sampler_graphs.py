"""Sampler steps and whole few-step loops as ONNX graphs (export/sampler_graphs.py, export/denoise_graph.py)
against the numpy samplers and the runtime pipeline."""
import copy
import json
import shutil

import numpy as np
import pytest

from edgegen.export.sampler_graphs import (add_sampler_graphs, derive_tables, merge_entries, prepare_sampler,
                                           write_sampler_graphs)
from edgegen.runtimes import EdgegenError, Pipeline, load_artifact
from edgegen.runtimes.artifact import save_manifest
from edgegen.runtimes.flux_pipeline import pack
from edgegen.runtimes.graph_sampler import DenoiseGraph, GivenNoise, GraphSampler
from edgegen.runtimes.iospec import Dim, TensorSpec
from edgegen.runtimes.samplers import SAMPLERS, EulerSampler, make_sampler

SD15 = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
        "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False, "steps_offset": 1,
        "timestep_spacing": "leading"}
SD21_V = {**SD15, "prediction_type": "v_prediction"}
FLUX_DEV = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
            "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}
# (sampler, scheduler config, steps, set_timesteps kwargs): every sampler, the clipping and
# multistep paths, the flow schedules as FluxPipeline / SD3 / SANA prepare them.
CASES = [
    ("euler", SD15, 25, {}),
    ("euler", {**SD21_V, "timestep_spacing": "trailing"}, 4, {}),
    ("euler_a", SD15, 4, {}),
    ("ddim", SD21_V, 10, {}),
    ("ddim", {**SD21_V, "clip_sample": True, "clip_sample_range": 1.5}, 7, {}),
    ("lcm", SD15, 4, {}),
    ("lcm", {**SD21_V, "set_alpha_to_one": True, "clip_sample": True}, 8, {}),
    ("dpmpp_2m", SD15, 25, {}),
    ("dpmpp_2m", SD21_V, 2, {}),
    ("flow_euler", FLUX_DEV, 28, {"mu": 0.83, "sigmas": np.linspace(1.0, 1 / 28, 28)}),
    ("flow_euler", {"shift": 3.0}, 4, {}),
    ("flow_dpm", {"flow_shift": 3.0}, 20, {}),
    ("scm", {}, 2, {}),
    ("scm", {}, 4, {"intermediate_timesteps": None}),
    ("edm_euler", {}, 4, {}),
    ("edm_dpmpp_2m", {"sigma_data": 0.5, "prediction_type": "epsilon"}, 25, {}),
    ("edm_dpmpp_2m", {"prediction_type": "v_prediction"}, 3, {}),
]
LATENT = TensorSpec("sample", "float32", ("batch", 4, "latent_height", "latent_width"))
DIMS = {"batch": Dim("batch", 1, 2, 8), "latent_height": Dim("latent_height", 4, 8, 64),
        "latent_width": Dim("latent_width", 4, 8, 64)}
SHAPE = (2, 4, 6, 5)


def _prepared(name, cfg, n, kw):
    s = make_sampler(name, cfg)
    s.set_timesteps(n, **kw)
    return s


def _close(got, want, tol):
    err = float(np.abs(np.asarray(got, np.float64) - want).max())
    return err <= tol * max(1.0, float(np.abs(want).max())), err


def test_cases_cover_every_sampler():
    assert {c[0] for c in CASES} == set(SAMPLERS)


@pytest.mark.parametrize("name,cfg,n,kw", CASES, ids=[f"{c[0]}-{c[2]}-{k}" for k, c in enumerate(CASES)])
def test_step_graph_matches_numpy_step(name, cfg, n, kw, tmp_path):
    import onnxruntime as ort

    sched = _prepared(name, cfg, n, kw)
    entry = write_sampler_graphs(tmp_path, "g", sched, LATENT, DIMS, timestep_scale=0.5)
    assert entry["validation"]["passed"]
    step = ort.InferenceSession(str(tmp_path / entry["step"]["graph"]), providers=["CPUExecutionProvider"])
    scale = ort.InferenceSession(str(tmp_path / entry["scale"]["graph"]), providers=["CPUExecutionProvider"])
    ref = copy.deepcopy(sched)
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(SHAPE) * sched.init_noise_sigma).astype(np.float32)
    state = np.zeros(SHAPE, np.float32)
    for i in range(n):
        out = (rng.standard_normal(SHAPE) * 2).astype(np.float32)
        noise = rng.standard_normal(SHAPE).astype(np.float32)
        feeds = {"latents": x, "model_output": out, "step": np.array([i], np.int64), "noise": noise}
        if entry["multistep"]:
            feeds["prev_x0"] = state
        got = step.run(None, feeds)
        # prepare_model_output is the identity for all samplers but scm, where the graph includes it.
        want = ref.step(ref.prepare_model_output(out, x, i), i, x, GivenNoise(noise))
        ok, err = _close(got[0], want, 1e-5)
        assert ok, (i, err)
        model_input, timestep, den_t, init_sigma, final = scale.run(None, {"latents": x, "step": np.array([i])})
        assert _close(model_input, ref.scale_model_input(x, i), 1e-5)[0]
        assert timestep == ref.model_timestep(i) and den_t == np.float32(ref.model_timestep(i) * 0.5)
        assert init_sigma == np.float32(sched.init_noise_sigma)
        assert final == np.float32(ref.final_sample(np.ones(1))[0])
        if entry["multistep"]:
            state = got[1]
        x = want


@pytest.mark.parametrize("name,cfg,n,kw", [CASES[k] for k in (2, 5, 7, 9, 12)],
                         ids=["euler_a", "lcm", "dpmpp_2m", "flow_euler", "scm"])
def test_graph_sampler_is_a_drop_in(name, cfg, n, kw, tmp_path):
    """GraphSampler takes the numpy sampler's calls and rng, and gives its results."""
    sched = _prepared(name, cfg, n, kw)
    entry = write_sampler_graphs(tmp_path, "g", sched, LATENT, DIMS, validate=False)
    gs = GraphSampler(tmp_path, entry, cfg)
    gs.set_timesteps(n, **kw)
    assert gs.init_noise_sigma == pytest.approx(sched.init_noise_sigma, rel=1e-6)
    np.testing.assert_array_equal(gs.timesteps, sched.timesteps)
    rng_np, rng_gs = np.random.default_rng(1), np.random.default_rng(1)
    src = np.random.default_rng(2)
    x_np = x_gs = (src.standard_normal(SHAPE) * sched.init_noise_sigma).astype(np.float32)
    for i in range(n):
        assert gs.model_timestep(i) == sched.model_timestep(i)
        assert _close(gs.scale_model_input(x_gs, i), sched.scale_model_input(x_np, i), 1e-5)[0]
        out = src.standard_normal(SHAPE).astype(np.float32)
        x_np = sched.step(sched.prepare_model_output(out, x_np, i), i, x_np, rng_np)
        x_gs = gs.step(gs.prepare_model_output(out, x_gs, i), i, x_gs, rng_gs)
        assert _close(x_gs, x_np, 1e-4)[0]
    assert _close(gs.final_sample(x_gs), sched.final_sample(x_np), 1e-4)[0]
    assert rng_np.bit_generator.state == rng_gs.bit_generator.state  # same draws consumed
    with pytest.raises(EdgegenError, match="exported for"):
        gs.set_timesteps(n + 1)


def test_non_affine_step_is_refused():
    class Tanh(EulerSampler):
        name = "tanh"

        def _step(self, out, i, x, rng):
            return np.tanh(super()._step(out, i, x, rng))

    s = Tanh(SD15)
    s.set_timesteps(3)
    with pytest.raises(EdgegenError, match="not affine"):
        derive_tables(s)


def _copy(tiny_export, family, tmp_path):
    art, _ = tiny_export(family)
    dst = tmp_path / family
    shutil.copytree(art, dst)
    return dst


def _install(root, **kw):
    """add_sampler_graphs + merge into the manifest, as the exporter would."""
    manifest = json.loads((root / "manifest.json").read_text())
    entries = add_sampler_graphs(root, manifest, **kw)
    merge_entries(manifest, entries)
    manifest = {k: v for k, v in manifest.items() if k not in ("format", "format_version")}
    save_manifest(root, manifest)
    return entries


def _runtime_run(art, steps, guidance, sampler, latents, seed):
    """Run the runtime's numpy loop; return (the denoiser's fixed inputs, the last sampler output)."""
    pipe = Pipeline.load(art)
    pipe.use_denoise_graph = False  # the reference is the per-step loop
    seen = {}

    def observe(stage, inputs, outputs, dt):
        if stage == pipe.recipe["denoiser"] and "fixed" not in seen:
            seen["fixed"] = {k: v for k, v in inputs.items() if k not in ("sample", "hidden_states", "timestep")}
        if stage == "sampler":
            seen["last"] = outputs["latents"]

    pipe.observers.append(observe)
    pipe("a red fox in snow", steps=steps, guidance=guidance, sampler=sampler, latents=latents, seed=seed)
    return pipe, seen["fixed"], seen["last"]


@pytest.mark.parametrize("family", ["lcm-sd15", "sd-turbo", "flux-schnell"])
def test_denoise_graph_matches_runtime_pipeline(family, tiny_export, tmp_path):
    root = _copy(tiny_export, family, tmp_path)
    entries = _install(root)
    art = load_artifact(root)  # digests of the new graphs are verified too
    d = art.manifest["pipeline"]["defaults"]
    key = f"{d['sampler']}-{d['steps']}"
    assert entries["denoise_graphs"][key]["validation"]["passed"]
    assert entries["sampler_graphs"][key]["validation"]["passed"]
    latents = np.random.default_rng(3).standard_normal((1, 4, 8, 8)).astype(np.float32)
    pipe, fixed, last = _runtime_run(root, d["steps"], d["guidance"], d["sampler"], latents, seed=11)
    sched, _ = prepare_sampler(root, art.manifest, d["sampler"], d["steps"], 64, 64)
    dg = DenoiseGraph.find(art, sched, cfg=False)
    assert dg is not None and dg.steps == d["steps"]
    x = latents * np.float32(sched.init_noise_sigma)
    if art.manifest["pipeline"]["kind"] == "flux":
        x = pack(x)  # the flux denoise graph takes packed latents
    got = dg(x, rng=np.random.default_rng(11), **fixed)
    ok, err = _close(got, last, 1e-4)
    assert ok, err
    if family == "lcm-sd15":  # stochastic: the noise does matter
        other = dg(x, rng=np.random.default_rng(12), **fixed)
        assert not _close(other, last, 1e-4)[0]


def test_denoise_graph_cfg_multistep_stochastic(tiny_export, tmp_path):
    """CFG in the graph, DPM++ 2M's carried x0 and Euler-a's noise, against the runtime."""
    root = _copy(tiny_export, "sd-turbo", tmp_path)
    _install(root, samplers=[("euler_a", 2), ("dpmpp_2m", 3)], denoise=True, cfg=True)
    art = load_artifact(root)
    latents = np.random.default_rng(4).standard_normal((1, 4, 8, 12)).astype(np.float32)
    for sampler, steps in (("euler_a", 2), ("dpmpp_2m", 3)):
        pipe, fixed, last = _runtime_run(root, steps, 3.0, sampler, latents, seed=5)
        sched, _ = prepare_sampler(root, art.manifest, sampler, steps, 64, 96)
        assert DenoiseGraph.find(art, sched, cfg=False) is None
        dg = DenoiseGraph.find(art, sched, cfg=True)
        got = dg(latents * np.float32(sched.init_noise_sigma), rng=np.random.default_rng(5), guidance_scale=3.0,
                 **fixed)
        ok, err = _close(got, last, 1e-4)
        assert ok, (sampler, err)


def test_denoise_graph_stores_weights_once(tiny_export, tmp_path):
    import onnx

    root = _copy(tiny_export, "lcm-sd15", tmp_path)
    entries = _install(root)
    unet = onnx.load(str(root / "unet/model.onnx"))
    entry = entries["denoise_graphs"]["lcm-4"]
    den = onnx.load(str(root / entry["graph"]))
    weights = {t.name for t in unet.graph.initializer}
    assert weights <= {t.name for t in den.graph.initializer}
    assert len(den.graph.initializer) - len(weights) < 40 * entry["steps"]  # only the sampler's scalars besides
    assert len(den.graph.node) >= entry["steps"] * len(unet.graph.node)
    # On disk: the weights once plus N copies of the node list (not N copies of the weights).
    weight_bytes = sum(t.ByteSize() for t in unet.graph.initializer)
    unet_bytes = (root / "unet/model.onnx").stat().st_size
    assert weight_bytes > 0.8 * unet_bytes
    assert (root / entry["graph"]).stat().st_size < weight_bytes + entry["steps"] * (unet_bytes - weight_bytes) + 65536
    # A denoise graph built from another denoiser (e.g. before an optimize pass) is not used.
    art = load_artifact(root)
    sched, _ = prepare_sampler(root, art.manifest, "lcm", 4)
    assert DenoiseGraph.match(art, sched, cfg=False) == "lcm-4"
    art.manifest["components"]["unet"]["files"]["unet/model.onnx"]["sha256"] = "0" * 64
    assert DenoiseGraph.match(art, sched, cfg=False) is None


def test_graph_sampler_in_runtime_pipeline(tiny_export, tmp_path, monkeypatch):
    """The runtime loops run unchanged with GraphSampler in place of the numpy sampler."""
    import edgegen.runtimes.pipeline as rp

    root = _copy(tiny_export, "flux-schnell", tmp_path)
    _install(root, denoise=False)
    latents = np.random.default_rng(3).standard_normal((1, 4, 8, 8)).astype(np.float32)
    want = Pipeline.load(root)("a red fox", latents=latents, seed=1)
    art = load_artifact(root)
    monkeypatch.setattr(rp, "make_sampler", lambda name, cfg: GraphSampler.from_artifact(art, name, 4))
    got = Pipeline.load(root)("a red fox", latents=latents, seed=1)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    with pytest.raises(EdgegenError, match="exported for"):
        Pipeline.load(root)("a red fox", latents=latents, seed=1, steps=3)


def test_resolution_dependent_schedule_is_recorded(tiny_export, tmp_path):
    """FLUX.1-dev's dynamic shift bakes the schedule for one latent size; other sizes are refused."""
    root = _copy(tiny_export, "flux-schnell", tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["scheduler"] = {**manifest["scheduler"], **FLUX_DEV}
    (root / "manifest.json").write_text(json.dumps(manifest))
    entries = _install(root, denoise=True)
    entry = entries["sampler_graphs"]["flow_euler-4"]
    assert entry["depends_on_resolution"] and entry["latent_size"] == [8, 8]
    art = load_artifact(root)
    gs = GraphSampler.from_artifact(art, "flow_euler", 4)
    gs.set_timesteps(4, mu=gs.mu_for(16), sigmas=np.linspace(1, 1 / 4, 4))  # 64x64 px: 4x4 packed tokens
    assert DenoiseGraph.match(art, gs, cfg=False) == "flow_euler-4"  # a GraphSampler matches like a numpy one
    with pytest.raises(EdgegenError, match="latent size"):
        gs.set_timesteps(4, mu=gs.mu_for(64), sigmas=np.linspace(1, 1 / 4, 4))
    other, _ = prepare_sampler(root, art.manifest, "flow_euler", 4, 128, 128)
    assert DenoiseGraph.find(art, other, cfg=False) is None
    same, _ = prepare_sampler(root, art.manifest, "flow_euler", 4, 64, 64)
    assert DenoiseGraph.find(art, same, cfg=False) is not None


def test_corrupted_sampler_graph_fails_verify(tiny_export, tmp_path):
    root = _copy(tiny_export, "sd-turbo", tmp_path)
    entries = _install(root, denoise=False)
    path = root / entries["sampler_graphs"]["euler-1"]["step"]["graph"]
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(EdgegenError, match="sampler_step.onnx"):
        load_artifact(root)
