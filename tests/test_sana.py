"""SANA and SANA-Sprint: exported graphs are checked, the runtime's text embeddings and images equal
SanaPipeline's / SanaSprintPipeline's (tiny configs, same latents), sizes must be multiples of 32."""
import inspect
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgegen.runtimes import Pipeline
from edgegen.runtimes.errors import EdgegenError

FAMILIES = ["sana-1600m", "sana-sprint-1600m"]
PROMPTS = ["  A Red FOX in snow, highly detailed ", "lighthouse"]  # preprocessing + different lengths


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def default_instruction(pipe) -> list[str]:
    return inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default


@pytest.mark.parametrize("family", FAMILIES)
def test_graphs_validated_at_other_shapes(family, tiny_export):
    """Every graph passed the exporter's NaN/accuracy check at a shape it was not traced at, and the
    linear-attention graphs stay finite and exact at non-square sizes too (the +1e-15 pitfall)."""
    import onnxruntime as ort
    import torch

    from edgegen.export.arch import sana
    from edgegen.export.families import get_family
    from edgegen.export.onnx_export import ATOL, RTOL

    art, pipe = tiny_export(family)
    manifest = json.loads((art / "manifest.json").read_text())
    fam = get_family(family)
    comps = {c.name: c for c in sana.components(fam, pipe, fam.tiny_resolution)}
    assert set(manifest["components"]) == set(comps)
    for name, c in manifest["components"].items():
        v = c["validation"]
        assert v["passed"] and all(ch["passed"] for ch in v["checks"]), name
        traced = comps[name].io.export_sizes()
        assert any(ch["sizes"] != {k: traced[k] for k in ch["sizes"]} for ch in v["checks"]), name
        spatial = [k for k in traced if k != "batch"]
        assert any(ch["sizes"][k] != traced[k] for ch in v["checks"] for k in spatial), (name, v["checks"])
    for name, sizes in (("transformer", {"batch": 2, "txt_seq": 300, "latent_height": 5, "latent_width": 7}),
                        ("vae_decoder", {"batch": 1, "latent_height": 8, "latent_width": 3})):
        comp = comps[name]
        feeds = comp.io.example(sizes, seed=5)
        sess = ort.InferenceSession(str(art / name / "model.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds)[0]
        with torch.no_grad():
            ref = comp.module(*(torch.from_numpy(feeds[n]) for n in comp.io.input_names))[0].numpy()
        assert got.shape == ref.shape and np.isfinite(got).all()
        assert np.abs(got - ref).max() <= ATOL + RTOL * np.abs(ref).max()


@pytest.mark.parametrize("family", FAMILIES)
def test_text_embeddings_match_diffusers(family, tiny_export):
    """Lowercase/strip, instruction prefix, right padding to (instruction + 298) tokens, Gemma with the
    mask, token 0 + last 299; the negative prompt without instruction at 300 tokens."""
    import torch

    art, pipe = tiny_export(family)
    ours = Pipeline.load(art)
    r = ours.recipe
    tok = ours.tokenizer("tokenizer")
    assert tok.padding_side == "right" and tok.max_length == r["max_sequence_length"] == 300
    assert r["instruction"] == "\n".join(default_instruction(pipe))
    assert r["prompt_length"] == tok.num_tokens(r["instruction"]) + 298
    hidden, mask = ours.encode_prompt(PROMPTS)
    with torch.no_grad():
        if family == "sana-1600m":
            ref, ref_mask, neg, neg_mask = pipe.encode_prompt(
                PROMPTS, True, negative_prompt="", device="cpu", complex_human_instruction=default_instruction(pipe))
            got_neg, got_neg_mask = ours.encode_negative([""] * len(PROMPTS))
            np.testing.assert_array_equal(got_neg_mask, neg_mask.numpy())
            np.testing.assert_allclose(got_neg, neg.numpy(), atol=1e-4, rtol=1e-4)
        else:
            ref, ref_mask = pipe.encode_prompt(PROMPTS, device="cpu",
                                               complex_human_instruction=default_instruction(pipe))
    assert hidden.shape == tuple(ref.shape) == (2, 300, pipe.text_encoder.config.hidden_size)
    np.testing.assert_array_equal(mask, ref_mask.numpy())
    assert mask[0].sum() > mask[1].sum()  # the two prompts really differ in length
    np.testing.assert_allclose(hidden, ref.numpy(), atol=1e-4, rtol=1e-4)


def diffusers_image(pipe, prompts, steps, guidance, latents, seed, monkeypatch, **kw):
    import torch

    # SCM draws step noise: diffusers draws it from the same numpy stream as the runtime.
    rng = np.random.default_rng(seed)
    module = sys.modules[type(pipe.scheduler).__module__]
    monkeypatch.setattr(module, "randn_tensor",
                        lambda shape, **_: torch.from_numpy(rng.standard_normal(tuple(shape)).astype(np.float32)))
    h, w = latents.shape[2] * 32, latents.shape[3] * 32
    with torch.no_grad():
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, latents=torch.from_numpy(latents),
                   height=h, width=w, output_type="np", use_resolution_binning=False, **kw).images
    return (out * 255).round().astype(np.uint8)


@pytest.mark.parametrize("family,steps,guidance", [
    ("sana-1600m", None, None),          # the defaults: 20 flow DPM-Solver++ steps, CFG 4.5 against ""
    ("sana-1600m", 4, 1.0),              # guidance <= 1: no CFG batch
    ("sana-sprint-1600m", None, None),   # the defaults: 2 sCM steps (angles pi/2, 1.3), guidance embedding 4.5
    ("sana-sprint-1600m", 3, 3.0),       # evenly spaced angles (no intermediate timestep)
])
def test_image_matches_diffusers(family, steps, guidance, tiny_export, monkeypatch):
    art, pipe = tiny_export(family)
    ours = Pipeline.load(art)
    d = ours.defaults
    steps = d["steps"] if steps is None else steps
    guidance = d["guidance"] if guidance is None else guidance
    latents = np.random.default_rng(3).standard_normal((2, 8, 4, 5)).astype(np.float32)
    img = ours(PROMPTS, steps=steps, guidance=guidance, latents=latents, seed=11)
    kw = {"intermediate_timesteps": None} if family == "sana-sprint-1600m" and steps != 2 else {}
    ref = diffusers_image(pipe, PROMPTS, steps, guidance, latents, 11, monkeypatch, **kw)
    assert img.shape == ref.shape == (2, 128, 160, 3)
    scores = [psnr(a, b) for a, b in zip(img, ref)]
    print(f"{family} steps={steps} guidance={guidance}: PSNR {scores}")
    assert min(scores) >= 40, scores


@pytest.mark.parametrize("family", FAMILIES)
def test_size_not_multiple_of_32(family, tiny_export, tmp_path):
    from edgegen.export.cli import main

    art, _ = tiny_export(family)
    with pytest.raises(EdgegenError, match="^height 112 is not a multiple of 32$"):
        Pipeline.load(art)("x", height=112, width=128)
    out = tmp_path / "x.png"
    r = CliRunner().invoke(main, ["generate", str(art), "x", "--width", "200", "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "multiple of 32" in errors[0] and "Traceback" not in r.output
    assert not out.exists()


def test_long_prompt_truncated_with_one_warning(tiny_export):
    import warnings

    import torch

    from edgegen.runtimes.tokenizer import TokenTruncationWarning

    art, pipe = tiny_export("sana-1600m")
    ours = Pipeline.load(art)
    prompts = ["a red fox in snow " * 150, "short"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hidden, mask = ours.encode_prompt(prompts)
    msgs = [str(w.message) for w in caught if issubclass(w.category, TokenTruncationWarning)]
    assert len(msgs) == 1 and msgs[0].startswith("prompt 0 is longer than the ") and "SANA" in msgs[0], msgs
    with torch.no_grad():
        ref, ref_mask = pipe.encode_prompt(prompts, False, device="cpu",
                                           complex_human_instruction=default_instruction(pipe))[:2]
    np.testing.assert_array_equal(mask, ref_mask.numpy())
    np.testing.assert_allclose(hidden, ref.numpy(), atol=1e-4, rtol=1e-4)
