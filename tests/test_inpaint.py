"""Inpainting with 9-channel UNets: the runtime's image equals diffusers' inpaint pipelines' (tiny
exports, every random draw from one numpy stream), and misuse is one line, exit 2, nothing written."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgegen.runtimes import Pipeline
from edgegen.runtimes.image import read_png_meta
from helpers import assert_user_error, psnr, reference_image, run_cli as run, sample_image

PROMPT = "a red fox sitting in the snow"


def box_mask(height: int, width: int, box: tuple[int, int, int, int]) -> Image.Image:
    """White (repaint) inside box = (left, top, right, bottom), black elsewhere; RGB, as masks
    often come, so that the resize-then-grayscale order matters."""
    m = np.zeros((height, width, 3), np.uint8)
    left, top, right, bottom = box
    m[top:bottom, left:right] = 255
    return Image.fromarray(m)


# Edges off the 8-pixel grid, so the nearest-neighbour downsampling to latent size shows.
MASK_BOX = (13, 10, 70, 45)


@pytest.mark.parametrize("family,sampler,steps,strength,guidance", [
    ("sd15-inpaint", "euler", 4, 1.0, 7.5),     # full strength: pure noise times init_noise_sigma
    ("sd15-inpaint", "euler", 5, 0.6, 7.5),     # image sample, noise, masked-image sample, in that order
    ("sd15-inpaint", "dpmpp_2m", 4, 0.75, 7.5),  # another sampler's add_noise and late start
    ("sdxl-inpaint", "euler", 4, 1.0, 5.0),     # SDXL: zeroed negatives, pooled embeds, time ids
    ("sdxl-inpaint", "euler", 4, 0.9999, 5.0),  # StableDiffusionXLInpaintPipeline's default: skips one step
])
def test_inpaint_matches_diffusers(family, sampler, steps, strength, guidance, tiny_export, monkeypatch):
    art, pipe = tiny_export(family)
    ours = Pipeline.load(art)
    image, mask = sample_image(64, 96), box_mask(64, 96, MASK_BOX)
    img = ours(PROMPT, image=image, mask=mask, strength=strength, steps=steps, guidance=guidance, sampler=sampler,
               seed=9)
    ref = reference_image(pipe, art, sampler, 9, monkeypatch, prompt=PROMPT, image=image, mask_image=mask,
                          height=64, width=96, strength=strength, num_inference_steps=steps, guidance_scale=guidance)
    assert img.shape == ref.shape == (64, 96, 3)
    assert psnr(img, ref) >= 40, psnr(img, ref)


def test_mask_shapes_the_result(tiny_export):
    """Another mask lands well below the parity threshold; the default strength is 1.0."""
    ours = Pipeline.load(tiny_export("sd15-inpaint")[0])
    image = sample_image(64, 96)
    a = ours(PROMPT, image=image, mask=box_mask(64, 96, MASK_BOX), steps=3, seed=9)
    b = ours(PROMPT, image=image, mask=box_mask(64, 96, (40, 0, 96, 64)), steps=3, seed=9)
    assert psnr(a, b) < 40, psnr(a, b)
    assert np.array_equal(a, ours(PROMPT, image=image, mask=box_mask(64, 96, MASK_BOX), steps=3, seed=9,
                                  strength=1.0))


def test_no_denoise_graph_for_an_inpainting_unet(tiny_export, tmp_path):
    """The sampler graphs step the 4 latent channels of a 9-channel UNet; a one-call denoise graph,
    which feeds the UNet the latents alone, is refused."""
    import shutil

    from edgegen.export.sampler_graphs import add_sampler_graphs
    from edgegen.runtimes.errors import EdgegenError

    art = shutil.copytree(tiny_export("sd15-inpaint")[0], tmp_path / "art")
    manifest = json.loads((art / "manifest.json").read_text())
    (entry,) = manifest["sampler_graphs"].values()
    assert [t["shape"][1] for t in entry["step"]["io"]["inputs"] if t["name"] == "latents"] == \
        [manifest["pipeline"]["latent_channels"]]
    with pytest.raises(EdgegenError, match="no denoise graph for unet"):
        add_sampler_graphs(art, samplers=[("euler", 4)], denoise=True, validate=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    sample_image(64, 96).save(d / "in.png")
    box_mask(64, 96, MASK_BOX).save(d / "mask.png")
    box_mask(64, 80, MASK_BOX).save(d / "narrow_mask.png")
    return d


def test_generate_inpaint_writes_metadata(tiny_export, files, tmp_path):
    out = tmp_path / "fill.png"
    r = run("generate", tiny_export("sd15-inpaint")[0], "a fox", "--image", files / "in.png", "--mask",
            files / "mask.png", "--steps", 2, "--out", out)
    assert r.exit_code == 0, r.output
    meta = read_png_meta(out)
    assert meta["image"] == str(files / "in.png") and meta["mask"] == str(files / "mask.png")
    assert meta["strength"] == "1.0" and meta["size"] == "96x64"


@pytest.mark.parametrize("args,fragments", [
    (["--image", "{d}/in.png", "--mask", "{d}/narrow_mask.png"], ["80x64", "96x64", "same size"]),
    (["--image", "{d}/in.png"], ["inpainting", "--image and --mask"]),
    ([], ["inpainting", "--image and --mask"]),
    (["--mask", "{d}/mask.png"], ["mask needs the image", "--image"]),
    (["--image", "{d}/in.png", "--mask", "{d}/missing.png"], ["--mask", "no such file"]),
])
def test_generate_bad_inpaint_input(args, fragments, tiny_export, files, tmp_path):
    out = tmp_path / "x.png"
    args = [a.format(d=files) for a in args]
    assert_user_error(run("generate", tiny_export("sd15-inpaint")[0], "p", "--out", out, *args), *fragments)
    assert not out.exists()


def test_inpaint_never_imports_torch(tiny_export, files):
    code = (
        "import sys, numpy as np\n"
        "from edgegen.runtimes import Pipeline\n"
        f"img = Pipeline.load({str(tiny_export('sd15-inpaint')[0])!r})('a fox', image={str(files / 'in.png')!r}, "
        f"mask={str(files / 'mask.png')!r}, steps=2)\n"
        "assert img.shape == (64, 96, 3) and img.dtype == np.uint8\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
