"""Token merging (--pass tome): the graph against tomesd, the reference implementation, on the
same PyTorch U-Net; and the pass through `edgegen optimize`."""
import copy
import json

import numpy as np
import pytest

from edgegen.optimize.passes.tome import apply_tome, find_blocks
from helpers import assert_user_error, run_cli


@pytest.fixture(scope="module")
def sd15(tiny_export):
    return tiny_export("sd15")


def _feeds(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return {"sample": rng.standard_normal((2, 4, h, w)).astype(np.float32),
            "timestep": np.array([500.0, 300.0], np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32)}


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_graph_matches_tomesd(sd15, tmp_path, ratio):
    tomesd = pytest.importorskip("tomesd", reason="tomesd (the reference) is not installed: pip install tomesd")
    import onnx
    import onnxruntime as ort
    import torch

    art, pipe = sd15
    model = onnx.load(str(art / "unet" / "model.onnx"))
    assert len(find_blocks(model)[0]) == 4
    # The tiny U-Net has attention at downsample 2 only (CrossAttnDownBlock2D second).
    rep = apply_tome(model, "sample", ratio, 2, 2, 2)
    assert rep["blocks"] == 4 and rep["levels"] == [1] and rep["unrecognised"] == 0
    onnx.checker.check_model(model)
    path = tmp_path / "tome.onnx"
    onnx.save(model, str(path))
    merged = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(art / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    unet = copy.deepcopy(pipe.unet).eval()
    tomesd.apply_patch(unet, ratio=ratio, max_downsample=2, use_rand=False)
    # 12x10: level-1 grid 6x5, whose last column is outside every whole 2x2 cell (all src).
    for h, w in ((16, 16), (12, 10)):
        f = _feeds(h, w)
        with torch.no_grad():
            ref = unet(*(torch.from_numpy(f[k]) for k in ("sample", "timestep", "encoder_hidden_states"))).sample
        out = merged.run(None, f)[0]
        assert out.shape == (2, 4, h, w)
        assert _rel(out, ref.numpy()) < 1e-4, (h, w, _rel(out, ref.numpy()))
        # ...and it is not the plain U-Net: a test that cannot fail would not notice a no-op.
        assert _rel(out, plain.run(None, f)[0]) > 1e-3


def test_pass_through_optimize(sd15, tmp_path):
    art, _ = sd15
    out = tmp_path / "tome"
    r = run_cli("optimize", art, "--pass", "tome:ratio=0.5,max_downsample=2", "--components", "unet",
                "--steps", "4", "--out", out)
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "manifest.json").read_text())["components"]["unet"]
    report = rec["optimize"]["reports"][0]
    assert report["pass"] == "tome" and report["blocks"] == 4 and report["levels"] == [1]
    # Only the graph changed: the weights are the parent's bytes.
    assert rec["optimize"]["weights"] is None
    # A DeepCache cut is still found in the merged graph, and int8 calibrates on it.
    r = run_cli("optimize", out, "--pipeline-option", "deepcache:interval=2", "--steps", "4", "--no-gate",
                "--out", tmp_path / "tome-dc")
    assert r.exit_code == 0, r.output
    r = run_cli("generate", tmp_path / "tome-dc", "a red fox", "--steps", "4", "--out", tmp_path / "fox.png")
    assert r.exit_code == 0, r.output


def test_runs_before_fusions(sd15, tmp_path):
    # Fusions replace the exporter's module-scoped names ToMe finds its blocks by: it goes first.
    art, _ = sd15
    out = tmp_path / "fused"
    r = run_cli("optimize", art, "--fuse", "--pass", "tome:max_downsample=2", "--components", "unet", "--steps", "4",
                "--out", out)
    assert r.exit_code == 0, r.output
    reports = json.loads((out / "manifest.json").read_text())["components"]["unet"]["optimize"]["reports"]
    assert [x["pass"] for x in reports] == ["tome", "fuse"] and reports[0]["blocks"] == 4


def test_openvino_runs_the_merged_graph(sd15, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed: pip install 'edgegen[openvino]'")
    art, _ = sd15
    out = tmp_path / "tome"
    assert run_cli("optimize", art, "--pass", "tome:max_downsample=2", "--components", "unet", "--steps", "4",
                   "--out", out).exit_code == 0
    # f32: the check is that OpenVINO computes the merge ops as onnxruntime does. The default
    # would be bf16 on an AVX512-BF16 CPU (45 dB here), which tests bf16, not the merge.
    r = run_cli("compile", out, "--target", "openvino", "--precision", "f32", "--steps", "4", "--gate-prompts", "1",
                "--out", tmp_path / "ov")
    assert r.exit_code == 0, r.output
    e2e = json.loads((tmp_path / "ov" / "manifest.json").read_text())["target"]["gate"]["end_to_end"]
    assert e2e["passed"] and e2e["psnr"] > 60, e2e


def test_refusals(sd15, tiny_export, tmp_path):
    art, _ = sd15
    x = tmp_path / "x"
    flux, _ = tiny_export("flux-schnell")
    assert_user_error(run_cli("optimize", flux, "--pass", "tome", "--out", x), "no component to optimize",
                      "tome on transformer: it has no U-Net transformer blocks")
    # The tiny U-Net has no self-attention at full latent resolution: nothing to merge.
    assert_user_error(run_cli("optimize", art, "--pass", "tome", "--components", "unet", "--out", x),
                      "cannot apply tome to unet", "downsample <= 1", "at 2")
    assert_user_error(run_cli("optimize", art, "--pass", "tome", "--out", x),
                      "no component to optimize", "tome on unet: no U-Net self-attention at downsample <= 1")
    assert_user_error(run_cli("optimize", art, "--pass", "tome:ratio=0.8", "--out", x), "ratio must be in (0, 0.75]")
    assert_user_error(run_cli("optimize", art, "--pass", "tome:max_downsample=3", "--out", x), "1, 2, 4 or 8")
    assert_user_error(run_cli("optimize", art, "--pipeline-option", "tome", "--out", x), "graph pass", "--pass tome")
    assert not x.exists()
