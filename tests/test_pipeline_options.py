"""Pipeline options (cfg-cutoff, deepcache, vae-tiling): against diffusers where it has the same
idea, by their invariants where it has not, and their refusals."""
import json

import numpy as np
import pytest

from edgegen.optimize.steps.apply import apply_options
from edgegen.optimize.steps.registry import get_option
from edgegen.runtimes import Pipeline
from edgegen.runtimes.errors import EdgegenError
from edgegen.runtimes.step_options import StepPlan, tiled_decode, tiles
from helpers import assert_user_error, psnr, reference_image, run_cli

PROMPT = "a red fox in snow, highly detailed"


def latents(seed=3, h=8, w=8):
    return np.random.default_rng(seed).standard_normal((1, 4, h, w)).astype(np.float32)


@pytest.fixture(scope="module")
def sd15(tiny_export):
    return tiny_export("sd15")


def with_option(parent, tmp_path, name, gate=True, **config):
    out = tmp_path / "-".join([name, *map(str, config.values())])
    return apply_options(parent, [get_option(name, **config)], out, gate=gate, steps=6)


def stages(pipe, **call):
    """The image and the stages the pipeline ran, in order."""
    seen = []
    pipe.observers.append(lambda stage, i, o, s: seen.append((stage, len(next(iter(i.values()))))))
    img = pipe(PROMPT, **call)
    pipe.observers.pop()
    return img, seen


def test_cfg_cutoff_matches_diffusers_callback(sd15, tmp_path, monkeypatch):
    """diffusers' SDCFGCutoffCallback on the same U-Net, latents and scheduler gives our image."""
    import torch
    from diffusers.callbacks import SDCFGCutoffCallback

    art, ref = sd15
    new = with_option(art, tmp_path, "cfg-cutoff", ratio=0.4)
    pipe = Pipeline.load(new)
    z = latents()
    img, seen = stages(pipe, steps=6, guidance=7.5, latents=z, seed=1)
    # CFG through step int(6 * 0.4) = 2: three batch-2 U-Net calls, then three batch-1.
    assert [b for s, b in seen if s == "unet"] == [2, 2, 2, 1, 1, 1]
    want = reference_image(ref, art, pipe.defaults["sampler"], 1, monkeypatch, prompt=PROMPT, num_inference_steps=6,
                           guidance_scale=7.5, latents=torch.from_numpy(z), height=64, width=64,
                           callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.4))
    assert psnr(img, want) >= 40, psnr(img, want)
    plain = Pipeline.load(art)(PROMPT, steps=6, guidance=7.5, latents=z, seed=1)
    assert not np.array_equal(img, plain)      # the option changed the computation
    rec = json.loads((new / "manifest.json").read_text())["pipeline_options"]["cfg-cutoff"]
    assert rec["version"] == 1 and rec["config"] == {"ratio": 0.4} and rec["gate"]["end_to_end"]["passed"]
    assert rec["gate"]["denoiser_work"]["batch_rows"] == 9 and rec["gate"]["denoiser_work"]["plain_batch_rows"] == 12


def test_deepcache_interval_one_is_the_plain_loop(sd15, tmp_path):
    art, _ = sd15
    new = with_option(art, tmp_path, "deepcache", interval=1)
    z = latents()
    img, seen = stages(Pipeline.load(new), steps=5, latents=z, seed=0)
    assert img.tobytes() == Pipeline.load(art)(PROMPT, steps=5, latents=z, seed=0).tobytes()
    assert [s for s, _ in seen].count("unet") == 5 and "unet_shallow" not in [s for s, _ in seen]


def test_deepcache_runs_the_shallow_graph_between_whole_steps(sd15, tmp_path):
    art, _ = sd15
    new = with_option(art, tmp_path, "deepcache", interval=3)
    m = json.loads((new / "manifest.json").read_text())
    rec = m["pipeline_options"]["deepcache"]
    assert rec["component"] == "unet_shallow" and rec["check"]["rel_err"] <= 1e-4
    assert 0 < rec["shallow_node_fraction"] < 1
    assert [o["name"] for o in m["components"]["unet"]["io"]["outputs"]] == ["noise_pred", "deep_feature"]
    pipe = Pipeline.load(new)
    img, seen = stages(pipe, steps=7, latents=latents(), seed=0)
    calls = [s for s, _ in seen if s.startswith("unet")]
    assert calls == ["unet", "unet_shallow", "unet_shallow"] * 2 + ["unet"]
    plain = Pipeline.load(art)(PROMPT, steps=7, latents=latents(), seed=0)
    assert 25 < psnr(img, plain) < 100
    # Sequential memory keeps both graphs of the denoiser together, then drops them for the VAE.
    seq = Pipeline.load(new, memory="sequential")
    assert seq.stage_of("unet_shallow") == seq.stage_of("unet") == "denoiser"
    assert seq(PROMPT, steps=7, latents=latents(), seed=0).tobytes() == img.tobytes()


def test_deepcache_with_cfg_cutoff(sd15, tmp_path):
    """The cache made with CFG (batch 2) feeds the conditional half after the cutoff."""
    art, _ = sd15
    both = apply_options(art, [get_option("deepcache", interval=2), get_option("cfg-cutoff", ratio=0.5)],
                         tmp_path / "both", steps=6)
    img, seen = stages(Pipeline.load(both), steps=6, guidance=7.5, latents=latents(), seed=0)
    assert [(s, b) for s, b in seen if s.startswith("unet")] == [
        ("unet", 2), ("unet_shallow", 2), ("unet", 2), ("unet_shallow", 2), ("unet", 1), ("unet_shallow", 1)]


def test_step_plan():
    p = StepPlan.from_options({"cfg-cutoff": {"config": {"ratio": 0.4}},
                               "deepcache": {"config": {"interval": 3}, "component": "s"}}, 25)
    assert [i for i in range(25) if p.cfg(i)] == list(range(11))
    assert [i for i in range(25) if p.whole(i)] == list(range(0, 25, 3))
    assert p.denoiser_work(cfg=True) == {"batch_rows": 36, "plain_batch_rows": 50, "whole_unet_steps": 9,
                                         "shallow_unet_steps": 16}
    assert not StepPlan.from_options({}, 25).active


@pytest.mark.parametrize("size,tile,overlap", [(64, 32, 8), (40, 32, 8), (128, 32, 8), (8, 6, 4), (33, 16, 5)])
def test_tiles_cover_with_full_tiles(size, tile, overlap):
    starts = tiles(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == size
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))   # every overlap >= `overlap`
    assert tiles(size, size + 3, overlap) == [0]


def test_tiled_decode_blend_weights_sum_to_one():
    """A decoder that only upsamples must come back exactly: the blend's weights sum to one."""
    z = np.random.default_rng(0).standard_normal((2, 4, 20, 28)).astype(np.float32)
    up = lambda t: np.repeat(np.repeat(t[:, :3], 8, axis=2), 8, axis=3)  # noqa: E731
    np.testing.assert_allclose(tiled_decode(up, z, 8, 3, 8), up(z), atol=1e-6)


def test_vae_tiling(sd15, tmp_path):
    art, ref = sd15
    new = with_option(art, tmp_path, "vae-tiling", tile=6, overlap=4)
    rec = json.loads((new / "manifest.json").read_text())["pipeline_options"]["vae-tiling"]
    assert rec["gate"]["end_to_end"]["psnr"] >= 30
    seen = []
    pipe = Pipeline.load(new)
    pipe.observers.append(lambda s, i, o, t: seen.append((s, i.get("latent", np.zeros(0)).shape)))
    img = pipe(PROMPT, steps=3, latents=latents(h=8, w=12), seed=0)
    assert [shape for s, shape in seen if s == "vae_decoder"] == [(1, 4, 6, 6)] * 8   # 2 rows x 4 columns
    plain = Pipeline.load(art)(PROMPT, steps=3, latents=latents(h=8, w=12), seed=0)
    assert 25 <= psnr(img, plain) < 100   # near the untiled image (the gate judged 8x8 at 6 steps)
    # A tile at least the latent size decodes once: the untiled image.
    whole = with_option(art, tmp_path, "vae-tiling", gate=False, tile=16, overlap=4)
    assert Pipeline.load(whole)(PROMPT, steps=3, latents=latents(), seed=0).tobytes() == \
        Pipeline.load(art)(PROMPT, steps=3, latents=latents(), seed=0).tobytes()


def test_gate_refuses_and_writes_nothing(sd15, tmp_path):
    art, _ = sd15
    with pytest.raises(EdgegenError, match=r"quality gate failed for vae-tiling: end-to-end image psnr .* < 30"):
        with_option(art, tmp_path, "vae-tiling", tile=4, overlap=2)
    assert not any(tmp_path.iterdir())


def test_cli_and_refusals(sd15, tiny_export, tmp_path):
    art, _ = sd15
    out = tmp_path / "dc"
    r = run_cli("optimize", art, "--pipeline-option", "deepcache:interval=2", "--steps", "4", "--out", out)
    assert r.exit_code == 0, r.output
    assert "deepcache {'interval': 2}: PSNR" in r.output and "whole U-Net steps 2/4" in r.output
    assert_user_error(run_cli("optimize", art, "--pipeline-option", "deepcache", "--out", out), "already exists")
    assert_user_error(run_cli("optimize", out, "--pipeline-option", "deepcache", "--out", tmp_path / "x"),
                      "already uses deepcache")
    assert_user_error(run_cli("optimize", out, "--int8", "--out", tmp_path / "x"),
                      "uses deepcache", "apply graph passes to its parent")
    assert_user_error(run_cli("optimize", art, "--pipeline-option", "tome", "--out", tmp_path / "x"),
                      "unknown pipeline option 'tome'", "cfg-cutoff", "--pass tome")
    assert_user_error(run_cli("optimize", art, "--pipeline-option", "deepcache:interval=0", "--out", tmp_path / "x"),
                      "interval must be a whole number >= 1")
    assert_user_error(run_cli("optimize", art, "--pipeline-option", "cfg-cutoff:ratio=1.5", "--out", tmp_path / "x"),
                      "ratio must be a number in [0, 1)")
    assert_user_error(run_cli("optimize", art, "--pipeline-option", "cfg-cutoff:step=3", "--out", tmp_path / "x"),
                      "unknown option(s) step", "ratio")
    assert_user_error(run_cli("optimize", art, "--pipeline-option", "deepcache", "--int8", "--out", tmp_path / "x"),
                      "--pipeline-option runs alone")
    assert_user_error(run_cli("optimize", art, "--pipeline-option", "vae-tiling:tile=2,overlap=1",
                              "--out", tmp_path / "x"), "not the tile size 2")
    flux, _ = tiny_export("flux-schnell")
    assert_user_error(run_cli("optimize", flux, "--pipeline-option", "deepcache", "--out", tmp_path / "x"),
                      "cannot use deepcache", "flux transformer")
    assert_user_error(run_cli("optimize", flux, "--pipeline-option", "cfg-cutoff", "--out", tmp_path / "x"),
                      "no classifier-free guidance")
    assert not (tmp_path / "x").exists()


def test_runtime_refuses_options_it_does_not_run(sd15, tmp_path):
    art, _ = sd15
    new = with_option(art, tmp_path, "cfg-cutoff", gate=False)
    m = json.loads((new / "manifest.json").read_text())
    m["pipeline_options"]["cfg-cutoff"]["version"] = 2
    (new / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgegenError, match="uses cfg-cutoff version 2; this edgegen runs version 1"):
        Pipeline.load(new)
    m["pipeline_options"] = {"tome": {"version": 1, "config": {}}}
    (new / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgegenError, match="pipeline option 'tome', which this edgegen does not know"):
        Pipeline.load(new)


def test_compiled_artifact_keeps_and_runs_the_options(sd15, tmp_path):
    """compile carries the options: OpenVINO runs the whole and the shallow U-Net, gated."""
    pytest.importorskip("openvino", reason="openvino is not installed: pip install 'edgegen[openvino]'")
    from edgegen.runtimes.compile import compile_artifact

    art, _ = sd15
    opts = apply_options(art, [get_option("deepcache", interval=2), get_option("cfg-cutoff")], tmp_path / "o", steps=6)
    ov = compile_artifact(opts, "openvino", tmp_path / "ov", steps=6, gate_prompts=1)
    m = json.loads((ov / "manifest.json").read_text())
    assert set(m["pipeline_options"]) == {"deepcache", "cfg-cutoff"} and m["target"]["gate"]["end_to_end"]["passed"]
    assert "compiled" in m["components"]["unet_shallow"]
    img, seen = stages(Pipeline.load(ov), steps=6, latents=latents(), seed=0)
    assert [s for s, _ in seen if s.startswith("unet")] == ["unet", "unet_shallow"] * 3
    assert psnr(img, Pipeline.load(opts)(PROMPT, steps=6, latents=latents(), seed=0)) >= 40
    r = run_cli("info", ov)
    assert r.exit_code == 0 and "pipeline option deepcache v1 {'interval': 2}: gate passed" in r.output
