"""img2img: the runtime's image equals diffusers' Img2Img pipelines' (tiny exports, every random
draw from one numpy stream), and bad image input is one line, exit 2, nothing written."""
import subprocess
import sys

import numpy as np
import pytest

from edgegen.runtimes import Pipeline
from edgegen.runtimes.image import read_png_meta
from edgegen.runtimes.samplers import SAMPLERS, make_sampler
from helpers import assert_close, assert_user_error, patch_randn, psnr, reference_image, run_cli as run, sample_image

PROMPT = "a lighthouse on a cliff at dusk"


def late_start_cases():
    from edgegen.export.families import get_family

    sd = get_family("sd15").scheduler
    ddpm = {"leading": sd, "trailing_v": sd | {"timestep_spacing": "trailing", "prediction_type": "v_prediction"},
            "linspace": sd | {"timestep_spacing": "linspace"}}
    configs = {name: ddpm for name in ("euler", "euler_a", "ddim", "dpmpp_2m", "lcm")}
    configs["flow_euler"] = {f: get_family(f).scheduler for f in ("sd3-medium", "flux-schnell")}
    configs["flow_dpm"] = {"sana": get_family("sana-1600m").scheduler}
    configs["edm_euler"] = {"edm": {}, "edm_v": {"prediction_type": "v_prediction"}}
    configs["edm_dpmpp_2m"] = {"edm": {}}
    for name, cfgs in configs.items():
        for cfg_id, cfg in cfgs.items():
            for steps, strength in ((5, 0.6), (10, 0.35), (4, 1.0)):
                yield pytest.param(name, cfg, steps, strength, id=f"{name}-{cfg_id}-{steps}-{strength}")


@pytest.mark.parametrize("name,cfg,steps,strength", list(late_start_cases()))
def test_sampler_late_start_matches_diffusers(name, cfg, steps, strength, monkeypatch):
    """set_strength + add_noise + the remaining steps against the diffusers scheduler after the
    img2img pipelines' get_timesteps / set_begin_index / add_noise (scale_noise for flow Euler)."""
    import diffusers
    import torch

    cls = SAMPLERS[name]
    ref = getattr(diffusers, cls.diffusers_class).from_config(getattr(cls, "diffusers_defaults", {}) | cfg)
    ours = make_sampler(name, cfg)
    ours.set_timesteps(steps)
    skip = steps - min(int(steps * strength), steps)
    ours.set_strength(strength, skip)
    if name == "lcm":  # LatentConsistencyModelImg2ImgPipeline: strength goes to set_timesteps, nothing skipped
        ref.set_timesteps(steps, strength=strength)
        timesteps = ref.timesteps
    else:
        ref.set_timesteps(steps)
        timesteps = ref.timesteps[skip * ref.order:]
        if hasattr(ref, "set_begin_index"):
            ref.set_begin_index(skip * ref.order)
    if cls.edm:   # c_noise = log(sigma) / 4: numpy's and torch's float32 log may differ by an ulp
        np.testing.assert_allclose(ours.timesteps, timesteps.numpy(), rtol=1e-6)
    else:
        np.testing.assert_array_equal(ours.timesteps, timesteps.numpy().astype(np.float32))
    data = np.random.default_rng(steps)
    clean, noise = (data.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(2))
    c, n, t0 = torch.from_numpy(clean), torch.from_numpy(noise), timesteps[:1]
    noisy = ref.scale_noise(c, t0, n) if name == "flow_euler" else ref.add_noise(c, n, t0)
    assert_close(ours.add_noise(clean, noise), noisy.numpy())
    ours_rng, ref_rng = np.random.default_rng(7), np.random.default_rng(7)
    patch_randn(monkeypatch, type(ref), ref_rng)
    x = noisy.numpy()
    scale = getattr(ref, "scale_model_input", lambda x, t: x)  # flow Euler has none: the identity
    for i, t in enumerate(timesteps):
        assert_close(ours.scale_model_input(x, i), scale(torch.from_numpy(x), t).numpy())
        out = data.standard_normal(x.shape).astype(np.float32)
        expected = ref.step(torch.from_numpy(out), t, torch.from_numpy(x)).prev_sample.numpy()
        assert_close(ours.step(out, i, x, rng=ours_rng), expected)
        x = expected
    assert ours_rng.bit_generator.state == ref_rng.bit_generator.state


@pytest.mark.parametrize("family,sampler,steps,strength,guidance", [
    ("sd15", "euler", 5, 0.6, 7.5),          # leading Euler: noised to the first kept step's sigma
    ("sd15", "dpmpp_2m", 5, 0.5, 7.5),       # multistep solver starting (first order) mid-schedule
    ("sd15", "ddim", 4, 0.7, 7.5),           # DDPM add_noise at the first kept timestep
    ("sd15", "euler_a", 4, 0.8, 4.0),        # step noise drawn after the VAE sample and the noise
    ("sdxl", "euler", 4, 0.6, 5.0),          # zeroed negatives, time ids from the image size
    ("flux-schnell", "flow_euler", 4, 0.6, 0.0),  # FLUX skips int(4 - 2.4) = 1 step where SD skips 2
    ("sd3-medium", "flow_euler", 4, 0.7, 7.0),    # CFG; the VAE's shift_factor
    ("lcm-sd15", "lcm", 4, 0.6, 8.5),        # LCM shortens its distillation schedule instead
    ("playground-v25", "edm_dpmpp_2m", 5, 0.6, 3.0),   # EDM: image latents by the VAE's mean/std
])
def test_img2img_matches_diffusers(family, sampler, steps, strength, guidance, tiny_export, monkeypatch):
    from diffusers import AutoPipelineForImage2Image

    art, pipe = tiny_export(family)
    ours = Pipeline.load(art)
    image = sample_image(64, 96)
    img = ours(PROMPT, image=image, strength=strength, steps=steps, guidance=guidance, sampler=sampler, seed=4)
    kw = {}
    if ours.recipe["kind"] in ("flux", "sd3"):
        kw.update(height=64, width=96)  # these pipelines default to the model's size, not the image's
    if ours.recipe["kind"] == "flux":
        kw["max_sequence_length"] = ours.artifact.io("text_encoder_2").inputs[0].shape[1]
    ref = reference_image(AutoPipelineForImage2Image.from_pipe(pipe), art, sampler, 4, monkeypatch, prompt=PROMPT,
                          image=image, strength=strength, num_inference_steps=steps, guidance_scale=guidance, **kw)
    assert img.shape == ref.shape == (64, 96, 3)
    assert psnr(img, ref) >= 40, psnr(img, ref)


def test_image_strength_and_noise(tiny_export):
    """What the parity tests rest on: another image or strength lands well below their threshold,
    only the kept steps run, `latents` is the noise mixed in, and the size comes from the image."""
    ours = Pipeline.load(tiny_export("sd15")[0])
    calls = []
    ours.observers.append(lambda stage, *_: calls.append(stage))
    a = ours(PROMPT, image=sample_image(64, 96), strength=0.6, steps=5, seed=4)
    assert calls.count(ours.recipe["denoiser"]) == 3  # int(5 * 0.6)
    b = ours(PROMPT, image=sample_image(64, 96, seed=1).rotate(180), strength=0.6, steps=5, seed=4)
    c = ours(PROMPT, image=sample_image(64, 96), strength=0.3, steps=5, seed=4)
    assert psnr(a, b) < 40 and psnr(a, c) < 40, (psnr(a, b), psnr(a, c))
    # The runtime draws the VAE sample, then the noise: giving that noise reproduces the image.
    rng = np.random.default_rng(4)
    rng.standard_normal((1, 4, 8, 12))
    noise = rng.standard_normal((1, 4, 8, 12)).astype(np.float32)
    assert np.array_equal(ours(PROMPT, image=sample_image(64, 96), strength=0.6, steps=5, seed=4, latents=noise), a)
    # 70x100 rounds down to the artifact's multiple (16 here), as diffusers rounds to 8.
    assert ours(PROMPT, image=np.asarray(sample_image(70, 100)), steps=2, strength=1.0).shape == (64, 96, 3)


def test_denoise_graph_only_for_the_whole_schedule(tiny_export, monkeypatch):
    """flux-schnell's artifact holds a one-call graph of its 4 steps: img2img that skips no step
    may run it (and still matches diffusers); a late start runs the per-step loop."""
    from diffusers import AutoPipelineForImage2Image

    art, pipe = tiny_export("flux-schnell")
    ours = Pipeline.load(art)
    stages = []
    ours.observers.append(lambda stage, *_: stages.append(stage))
    image = sample_image(64, 96)
    img = ours(PROMPT, image=image, strength=1.0, steps=4, seed=4)
    assert "denoise_graph" in stages
    ref = reference_image(AutoPipelineForImage2Image.from_pipe(pipe), art, "flow_euler", 4, monkeypatch,
                          prompt=PROMPT, image=image, strength=1.0, num_inference_steps=4, guidance_scale=0.0,
                          height=64, width=96,
                          max_sequence_length=ours.artifact.io("text_encoder_2").inputs[0].shape[1])
    assert psnr(img, ref) >= 40, psnr(img, ref)
    stages.clear()
    ours(PROMPT, image=image, strength=0.6, steps=4, seed=4)
    assert "denoise_graph" not in stages and stages.count(ours.recipe["denoiser"]) == 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    sample_image(64, 96).save(d / "in.png")
    (d / "text.png").write_text("not an image")
    sample_image(64, 96).convert("L").save(d / "mask.png")
    return d


def test_generate_img2img_writes_metadata(tiny_export, files, tmp_path):
    out = tmp_path / "i2i.png"
    r = run("generate", tiny_export("lcm-sd15")[0], "a fox", "--image", files / "in.png", "--strength", 0.5,
            "--steps", 2, "--out", out)
    assert r.exit_code == 0, r.output
    meta = read_png_meta(out)
    assert meta["image"] == str(files / "in.png") and meta["strength"] == "0.5" and meta["size"] == "96x64"
    assert "mask" not in meta
    default = tmp_path / "default.png"
    assert run("generate", tiny_export("lcm-sd15")[0], "a fox", "--image", files / "in.png", "--steps", 2,
               "--out", default).exit_code == 0
    assert read_png_meta(default)["strength"] == "0.8"


@pytest.mark.parametrize("family,args,fragments", [
    ("lcm-sd15", ["--image", "{d}/missing.png"], ["--image", "no such file"]),
    ("lcm-sd15", ["--image", "{d}/text.png"], ["--image", "not a readable image"]),
    ("lcm-sd15", ["--image", "{d}", "--mask", "{d}/mask.png"], ["--image", "not a readable image"]),
    ("lcm-sd15", ["--image", "{d}/in.png", "--strength", 0], ["strength must be in (0, 1]"]),
    ("lcm-sd15", ["--image", "{d}/in.png", "--strength", 1.5], ["strength must be in (0, 1]"]),
    ("lcm-sd15", ["--strength", 0.5], ["strength", "--image"]),
    ("lcm-sd15", ["--mask", "{d}/mask.png"], ["mask needs the image", "--image"]),
    ("lcm-sd15", ["--image", "{d}/in.png", "--mask", "{d}/mask.png"], ["inpainting", "sd15-inpaint"]),
    ("sd15", ["--image", "{d}/in.png", "--strength", 0.1, "--steps", 4], ["strength 0.1", "none of the 4 steps"]),
    ("lcm-sd15", ["--image", "{d}/in.png", "--strength", 0.05, "--steps", 4], ["strength 0.05", "fewer than"]),
])
def test_generate_bad_image_input(family, args, fragments, tiny_export, files, tmp_path):
    out = tmp_path / "x.png"
    args = [a.format(d=files) if isinstance(a, str) else a for a in args]
    assert_user_error(run("generate", tiny_export(family)[0], "p", "--out", out, *args), *fragments)
    assert not out.exists()


def test_img2img_never_imports_torch(tiny_export, files):
    code = (
        "import sys, numpy as np\n"
        "from edgegen.runtimes import Pipeline\n"
        f"img = Pipeline.load({str(tiny_export('lcm-sd15')[0])!r})('a fox', image={str(files / 'in.png')!r}, "
        "strength=0.5, steps=2)\n"
        "assert img.shape == (64, 96, 3) and img.dtype == np.uint8\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
