"""Pipelines this project did not make: other widths than any family's tiny config, exported with
and without a family name, matching diffusers; family inference; chosen sizes; one-line errors."""
import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest
from helpers import assert_user_error, run_cli

from edgegen.export.families import choose_family, families, get_family
from edgegen.export.families.infer import candidates, read_model
from edgegen.runtimes import Pipeline

CLIP16 = {"hidden_size": 16, "intermediate_size": 30, "num_attention_heads": 2, "projection_dim": 16}
CLIP24 = {"hidden_size": 24, "intermediate_size": 40, "num_attention_heads": 4, "projection_dim": 24}
UNET15 = {"cross_attention_dim": 24, "block_out_channels": [16, 48], "norm_num_groups": 8}
FLUX = {"joint_attention_dim": 24, "pooled_projection_dim": 24, "num_attention_heads": 3}
# family -> (denoiser overrides, text encoder overrides in order): every width differs from the tiny
# config, and each set is consistent (e.g. SDXL cross attention 16 + 24 = 40, pooled 20 + 6 x 8 time ids).
ODD = {
    "sd15": (UNET15, [CLIP24]),
    "lcm-sd15": ({**UNET15, "time_cond_proj_dim": 16}, [CLIP24]),
    "sdxl": ({"cross_attention_dim": 40, "projection_class_embeddings_input_dim": 68}, [CLIP16, {**CLIP24, "projection_dim": 20}]),
    "flux-dev": (FLUX, [CLIP24, {"d_model": 24, "d_kv": 6}]),
    "flux-schnell": (FLUX, [CLIP24, {"d_model": 24, "d_kv": 6}]),
    "sd3-medium": ({"joint_attention_dim": 48, "pooled_projection_dim": 40, "num_attention_heads": 3,
                    "caption_projection_dim": 24}, [CLIP16, CLIP24, {"d_model": 48}]),
    "sana-1600m": ({"caption_channels": 24}, [{"hidden_size": 24}]),
}


def odd_pipeline(name: str):
    from edgegen.export.weights import build_random

    fam = get_family(name)
    den, tes = ODD[name]
    fam = dataclasses.replace(
        fam, denoiser=dataclasses.replace(fam.denoiser, tiny={**fam.denoiser.tiny, **den}),
        text_encoders=tuple(dataclasses.replace(te, tiny={**te.tiny, **o}) for te, o in zip(fam.text_encoders, tes)))
    return build_random(fam, tiny=True, seed=5)


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            pipe = odd_pipeline(name)
            folder = tmp_path_factory.mktemp("odd") / name
            pipe.save_pretrained(folder)
            cache[name] = (folder, pipe)
        return cache[name]

    return get


def _image(art, pipe, family, monkeypatch):
    """Ours and diffusers' image from the same latents (64 px)."""
    import test_pipeline_parity
    import test_sana

    ours = Pipeline.load(art)
    d = ours.defaults
    steps = min(max(d["steps"], 2), 4)
    c = ours.recipe["latent_channels"]
    scale = ours.recipe["vae_scale_factor"]
    latents = np.random.default_rng(3).standard_normal((1, c, 64 // scale, 64 // scale)).astype(np.float32)
    img = ours("a red fox in snow", steps=steps, guidance=d["guidance"], latents=latents, seed=11)
    if ours.recipe["kind"] == "sana":
        ref = test_sana.diffusers_image(pipe, ["a red fox in snow"], steps, d["guidance"], latents, 11, monkeypatch)[0]
    else:
        ref = test_pipeline_parity.diffusers_image(pipe, art, d["sampler"], "a red fox in snow", steps, d["guidance"],
                                                   latents, 11, monkeypatch)
    return img, ref


@pytest.mark.parametrize("family", list(ODD))
def test_other_widths_export_with_and_without_family_and_match_diffusers(family, odd_folder, tmp_path, monkeypatch):
    from test_pipeline_parity import psnr

    folder, pipe = odd_folder(family)
    plain = run_cli("export", "--weights", folder, "--out", tmp_path / "plain", "--min-size", 64, "--max-size", 256)
    assert plain.exit_code == 0, plain.output
    assert f"inferred family {family}" in plain.output
    named = run_cli("export", family, "--weights", folder, "--out", tmp_path / "named", "--min-size", 64,
                    "--max-size", 256)
    assert named.exit_code == 0, named.output
    for art in (tmp_path / "plain", tmp_path / "named"):
        m = json.loads((art / "manifest.json").read_text())
        assert m["family"] == family and m["pipeline"]["resolution"] == [64, 256]
        img, ref = _image(art, pipe, family, monkeypatch)
        assert img.shape == ref.shape == (64, 64, 3)
        assert psnr(img, ref) >= 40, (art.name, psnr(img, ref))


@pytest.mark.parametrize("tiny", [False, True])
def test_family_inferred_from_each_family_config(tiny, tmp_path):
    """The real and tiny configs of every family infer that family; where families share an
    architecture and every hint (sd35-large and its turbo: same scheduler, same pipeline class),
    the family is among the candidates and the first is the registry's."""
    from edgegen.export.weights import write_config_folder

    known = families()
    for name, fam in known.items():
        folder = write_config_folder(fam, tmp_path / f"{name}-{tiny}", tiny=tiny)
        got = choose_family(None, str(folder))
        fits = candidates(read_model(str(folder)), known)
        if name == "sd35-large-turbo":
            assert got == "sd35-large" and name in fits, fits
        else:
            assert got == name, (name, fits)


def test_wrong_family_names_both_sides_and_suggests(odd_folder, tmp_path):
    folder, _ = odd_folder("sd15")
    out = tmp_path / "x"
    r = run_cli("export", "sdxl", "--weights", folder, "--out", out)
    assert_user_error(r, "holds a StableDiffusionPipeline", "not sdxl",
                      "the weights have text_encoder, sdxl has text_encoder + text_encoder_2",
                      "try: edgegen export sd15")
    assert_user_error(run_cli("export", "flux-dev", "--weights", odd_folder("flux-schnell")[0], "--out", out),
                      "guidance embedding", "the weights have no, flux-dev has yes", "try: edgegen export flux-schnell")
    assert not out.exists()


def test_folder_matching_no_family(odd_folder, tmp_path):
    folder = tmp_path / "strange"
    shutil.copytree(odd_folder("sd15")[0], folder)
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**cfg, "addition_embed_type": "text"}))
    assert_user_error(run_cli("export", "--weights", folder, "--out", tmp_path / "o"),
                      "matches no family", "sd15, sd21")
    assert_user_error(run_cli("export", "--tiny", "--out", tmp_path / "o"), "name the family")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["dall-e-3", "DALLE", "midjourney", "imagen-4"])
def test_closed_models_say_weights_are_not_public(name, tmp_path):
    assert_user_error(run_cli("export", name, "--tiny", "--out", tmp_path / "o"), "weights are not public")


def test_static_export_has_static_graphs_and_refuses_other_sizes(tmp_path):
    out = tmp_path / "static"
    r = run_cli("export", "sd15", "--tiny", "--height", 64, "--width", 96, "--batch", 1, "--out", out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    for comp in ("unet", "vae_decoder", "vae_encoder", "text_encoder"):
        model = onnx.load(str(out / comp / "model.onnx"), load_external_data=False)
        dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        assert all(isinstance(v, int) for shape in dims.values() for v in shape), (comp, dims)
    assert [d.dim_value for d in onnx.load(str(out / "unet" / "model.onnx")).graph.input[0].type.tensor_type.shape.dim] \
        == [2, 4, 8, 12]   # [uncond, cond] at 64x96 through the tiny VAE's 8x
    assert m["passes"][0]["config"]["static"] is True
    img = Pipeline.load(out)("a lighthouse", steps=2)
    assert img.shape == (64, 96, 3)
    assert_user_error(run_cli("generate", out, "a lighthouse", "--steps", 2, "--height", 96, "--width", 64,
                              "--out", tmp_path / "x.png"), "height 96 is outside this artifact's fixed at 64")
    assert not (tmp_path / "x.png").exists()
    # Downstream stages keep it static without being told again.
    r = run_cli("optimize", out, "--fp16", "--out", tmp_path / "fp16")
    assert r.exit_code == 0, r.output
    dims = json.loads((tmp_path / "fp16" / "manifest.json").read_text())["components"]["unet"]["io"]["dims"]
    assert all(d["min"] == d["max"] for d in dims.values()), dims
    r = run_cli("compile", tmp_path / "fp16", "--target", "cpu", "--out", tmp_path / "cpu")
    assert r.exit_code == 0, r.output
    target = json.loads((tmp_path / "cpu" / "manifest.json").read_text())["target"]
    assert target["shape_profile"] == {"height": [64, 64, 64], "width": [96, 96, 96], "batch": [1, 1, 1], "static": True}


def test_size_range_and_model_limits(tmp_path):
    out = tmp_path / "o"
    # Tiny SD3: pos_embed_max_size 32 x patch 2 x VAE 8 = 512 px.
    assert_user_error(run_cli("export", "sd3-medium", "--tiny", "--height", 1024, "--width", 512, "--out", out),
                      "--height 1024 is beyond this model's limit of 512 px", "pos_embed_max_size 32")
    assert_user_error(run_cli("export", "sd15", "--tiny", "--min-size", 512, "--max-size", 256, "--out", out),
                      "--min-size 512 is larger than --max-size 256")
    assert_user_error(run_cli("export", "sd15", "--tiny", "--min-size", 100, "--out", out), "not a multiple of 16")
    assert_user_error(run_cli("export", "sd15", "--tiny", "--batch", "1:64", "--out", out), "up to 4 images")
    assert not out.exists()
    r = run_cli("export", "sd15", "--tiny", "--min-size", 32, "--max-size", 128, "--batch", "1:2", "--out", out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["pipeline"]["resolution"] == [32, 128]
    unet = m["components"]["unet"]["io"]["dims"]
    assert (unet["latent_height"]["min"], unet["latent_height"]["max"]) == (4, 16)
    assert (unet["batch"]["min"], unet["batch"]["max"]) == (1, 4)   # two images under guidance
    from edgegen.runtimes.iospec import IOSpec

    io = IOSpec.from_dict(m["components"]["unet"]["io"])
    for check in m["components"]["unet"]["validation"]["checks"]:   # inside the range, not the trace shape
        assert check["sizes"] != io.export_sizes() and io.infer_sizes(io.example(check["sizes"])) == check["sizes"]


def test_linear_attention_encoder_checked_against_fp64(tmp_path):
    """DC-AE with ReLU linear attention at 640 px: eager fp32 PyTorch is the inaccurate side (long
    reductions), so a miss is arbitrated by PyTorch in float64, and the graph passes only if it is
    within tolerance of that."""
    import torch
    from diffusers import AutoencoderDC

    from edgegen.export.arch.sana import dc_encoder
    from edgegen.export.onnx_export import export_component, validate_component

    torch.manual_seed(0)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
                        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)),
                        decoder_qkv_multiscales=((), (5,)), encoder_layers_per_block=(1, 1),
                        decoder_layers_per_block=[1, 1], downsample_block_type="conv",
                        upsample_block_type="interpolate").eval()
    comp = dc_encoder(vae, (256, 1024, 2048), 2)
    export_component(comp, tmp_path / "enc", "dynamo")
    result = validate_component(comp, tmp_path / "enc" / "model.onnx")
    big = [c for c in result["checks"] if c["sizes"]["height"] == 640]
    assert big and all(c["passed"] for c in result["checks"])
    assert big[0]["fp32_reference_err"] > big[0]["tolerance"] > big[0]["max_abs_err_fp64"]


def test_single_file_family_by_diffusers_rules(tmp_path):
    """A single .safetensors has no configs: its tensor names and shapes (header only) go through
    diffusers' own model-type rules. Headers of the keys those rules read stand in for checkpoints."""
    from safetensors.numpy import save_file

    def ckpt(name, **tensors):
        path = tmp_path / f"{name}.safetensors"
        save_file({k: np.zeros(v, np.float32) for k, v in tensors.items()}, str(path))
        return str(path)

    sdxl = ckpt("xl", **{"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (4,),
                         "model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3)})
    inpaint = ckpt("inp", **{"model.diffusion_model.input_blocks.0.0.weight": (32, 9, 3, 3)})
    schnell = ckpt("fs", **{"double_blocks.0.img_attn.norm.key_norm.scale": (4,)})
    assert choose_family(None, sdxl) == "sdxl"
    assert choose_family(None, inpaint) == "sd15-inpaint"
    assert choose_family(None, schnell) == "flux-schnell"
    # Header-only stand-ins cannot load: one line, nothing written.
    assert_user_error(run_cli("export", "--weights", sdxl, "--out", tmp_path / "o"),
                      "not a sdxl single-file checkpoint")
    assert not (tmp_path / "o").exists()
