"""Helpers shared by test modules (tests/ is on sys.path under pytest's default import mode)."""
import sys

import numpy as np
from click.testing import CliRunner


def run_cli(*args):
    from edgegen.export.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, *fragments):
    """A user mistake: exit 2, exactly one `error:` line containing `fragments`, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in result.output


def patch_randn(monkeypatch, scheduler, rng):
    """Make a diffusers scheduler (class or instance) take its noise from `rng`, as our samplers draw it."""
    import torch

    module = sys.modules[scheduler.__module__]

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        draw = rng.standard_normal(tuple(shape)).astype(np.float32)
        return torch.from_numpy(draw).to(dtype or torch.float32)

    monkeypatch.setattr(module, "randn_tensor", randn_tensor)


def sample_image(height: int, width: int, seed: int = 0):
    """An RGB PIL image with structure (gradients) and texture (noise), for img2img tests."""
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width]
    x = np.stack([xx * 200 / width, yy * 220 / height, (xx + yy) * 120 / (height + width) + 60], -1)
    x = x + np.random.default_rng(seed).normal(0, 25, x.shape)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def reference_image(ref, art, sampler: str, seed: int, monkeypatch, **call) -> np.ndarray:
    """Run the diffusers pipeline `ref` with the artifact's scheduler config read by the class
    `sampler` mirrors, every random draw (VAE sample, initial noise, step noise) taken from one
    numpy stream seeded with `seed`, as the runtime draws them; HxWx3 uint8."""
    import diffusers
    import torch
    from diffusers.models.autoencoders import vae

    from edgegen.runtimes.artifact import load_artifact
    from edgegen.runtimes.samplers import SAMPLERS

    config = load_artifact(art, verify=False).manifest["scheduler"]
    # `ref` is often a session fixture's pipeline: put its own scheduler back afterwards, or a
    # later test that saves it sees this one's (and infers another family from the folder)
    monkeypatch.setattr(ref, "scheduler", getattr(diffusers, SAMPLERS[sampler].diffusers_class).from_config(config))
    rng = np.random.default_rng(seed)
    for holder in (ref, ref.scheduler, vae.DiagonalGaussianDistribution):
        patch_randn(monkeypatch, holder, rng)
    with torch.no_grad():
        out = ref(output_type="np", **call).images
    return (out[0] * 255).round().astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def assert_close(ours, ref):
    ref = np.asarray(ref, np.float64)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
