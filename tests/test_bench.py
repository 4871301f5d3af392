"""edgegen bench on a tiny artifact: measured stages, the torch baseline, reports, refusals, estimates."""
import json

import pytest
from click.testing import CliRunner

from edgegen.bench.harness import spread, summarize
from edgegen.bench.host import Gpu, Host, detect, matches
from edgegen.export.cli import main
from edgegen.profiles.device import BUILTIN_DIR, ENV_DIR, get_profile

STAGES = ["tokenize:tokenizer", "text_encoder", "unet", "sampler", "vae_decoder"]


@pytest.fixture
def profiles_dir(tmp_path, monkeypatch):
    """A CPU profile every host matches (no required flags) and one no host matches."""
    d = tmp_path / "profiles"
    d.mkdir()
    base = (BUILTIN_DIR / "cpu-avx2.toml").read_text()
    (d / "anycpu.toml").write_text(base.replace('name = "cpu-avx2"', 'name = "test-any-cpu"')
                                   .replace('cpu_flags = ["avx2", "fma"]', "cpu_flags = []"))
    (d / "nocpu.toml").write_text(base.replace('name = "cpu-avx2"', 'name = "test-no-cpu"')
                                  .replace('cpu_flags = ["avx2", "fma"]', 'cpu_flags = ["edgegen-no-such-flag"]'))
    monkeypatch.setenv(ENV_DIR, str(d))
    return d


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_bench_with_torch_baseline(tiny_export, profiles_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # the children inherit it: tiny models run fastest on one thread
    art, _ = tiny_export("sd15")
    rep = tmp_path / "report"
    r = run("bench", art, "--device", "test-any-cpu", "--baseline", "torch", "--interleave", "--runs", 2,
            "--warmup", 0, "--steps", 2, "--json", "--report", rep)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["kind"] == "measurement" and res["settings"]["runs"] == 2
    assert res["schedule"].startswith("interleaved")
    assert "--baseline torch" in res["command"] and res["machine"]["versions"]["onnxruntime"]
    for name in ("edgegen", "torch"):
        rt = res["runtimes"][name]
        assert list(rt["stages"]) == STAGES, (name, list(rt["stages"]))
        for s in STAGES:
            st = rt["stages"][s]
            assert st["per_run"]["n"] == 2 and st["per_run"]["median"] > 0
            assert 0 < st["per_run"]["min"] <= st["per_run"]["median"] <= st["per_run"]["max"]
        assert rt["stages"]["unet"]["calls_per_run"] == 2             # one denoiser call per step
        assert rt["stages"]["text_encoder"]["calls_per_run"] == 2     # prompt and negative (CFG)
        assert rt["end_to_end"]["median"] >= sum(v["per_run"]["median"] for v in rt["stages"].values()) * 0.9
        assert rt["memory"]["peak_rss_bytes"] > 50 * 2**20
        assert rt["planner"]["note"].startswith("no prediction")     # tiny: the planner models real sizes
    ratios = res["ratios"]
    assert ratios["end_to_end_speedup"] > 0 and ratios["peak_memory"] > 0
    assert set(ratios["stage_speedup"]) == set(STAGES) and all(v > 0 for v in ratios["stage_speedup"].values())
    # Without torch in its process, edgegen's runtime is far smaller than the diffusers pipeline.
    assert ratios["peak_memory"] < 0.8
    assert res["image_psnr_db"] > 35          # the baseline really ran the same model
    files = sorted(p.suffix for p in rep.iterdir())
    assert files == [".json", ".md", ".png"]
    md = next(rep.glob("*.md")).read_text()
    assert res["command"] in md and "unet per step" in md and "ESTIMATE" not in md
    assert next(rep.glob("*.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_table_without_baseline(tiny_export, profiles_dir):
    art, _ = tiny_export("sd15")
    r = run("bench", art, "--device", "test-any-cpu", "--runs", 1, "--warmup", 0, "--steps", 1, "--no-verify")
    assert r.exit_code == 0, r.output
    assert "measured" in r.stdout and "end to end" in r.stdout and "ESTIMATE" not in r.stdout
    assert "edgegen" in r.stdout and "GiB" in r.stdout


def test_bench_refuses_a_device_that_is_not_this_host(tiny_export, profiles_dir):
    art, _ = tiny_export("sd15")
    one_line_error(run("bench", art, "--device", "test-no-cpu"), "does not match this host", "test-any-cpu",
                   "--estimate")
    if not matches(get_profile("rtx4060"), detect()):
        one_line_error(run("bench", art, "--device", "rtx4060"), "--device rtx4060 does not match")


def test_bench_bad_input(tiny_export, profiles_dir, tmp_path):
    art, _ = tiny_export("sd15")
    line = one_line_error(run("bench", art, "--device", "rtx9999"), "unknown device 'rtx9999'", "known:")
    assert "rtx4060" in line and "cpu-avx2" in line
    one_line_error(run("bench", art), "give --device", "rtx4060")
    one_line_error(run("bench", tmp_path / "missing", "--device", "test-any-cpu"), "no artifact at")
    one_line_error(run("bench", art, "--device", "test-any-cpu", "--runs", 0), "--runs")
    one_line_error(run("bench", art, "--device", "test-any-cpu", "--height", 72), "height 72")
    one_line_error(run("bench", art, "--device", "rtx4060", "--estimate", "--baseline", "torch"), "--estimate")
    one_line_error(run("bench", art, "--device", "test-any-cpu", "--interleave"), "--interleave", "--baseline")


def test_bench_estimate_is_labelled(tiny_export, profiles_dir, tmp_path):
    art, _ = tiny_export("sd15")
    r = run("bench", art, "--device", "rtx4060", "--estimate", "--json", "--report", tmp_path / "est")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["kind"] == "estimate" and res["label"].startswith("ESTIMATE")
    assert "runtimes" not in res and "ratios" not in res          # nothing measured, nothing mixed in
    assert set(res["stages"]) == {"text_encoder", "unet", "vae_decoder"}
    unet = res["stages"]["unet"]
    assert unet["calls"] == 25 and unet["flops_per_call"] > 0 and unet["bound"] in ("compute", "memory")
    assert res["end_to_end_seconds"] == pytest.approx(sum(s["seconds"] for s in res["stages"].values()))
    md = next((tmp_path / "est").glob("*.md"))
    assert md.name.startswith("bench_estimate_") and md.read_text().startswith("# ESTIMATE")
    table = run("bench", art, "--device", "rtx4060", "--estimate").stdout
    assert "ESTIMATE" in table and "measured:" not in table


def test_estimate_flops_of_real_sd15():
    """The FLOP count on the real architecture (meta device, no weights) matches the known figures."""
    from edgegen.bench.estimate import count_flops

    manifest = {"family": "sd15", "size": "full",
                "pipeline": {"text_encoders": [{"component": "text_encoder"}], "denoiser": "unet",
                             "vae_decoder": "vae_decoder", "vae_scale_factor": 8}}
    f = count_flops(manifest, 512, 512, 2)
    assert f["unet"] / 2 == pytest.approx(0.80e12, rel=0.03)      # ~0.4 TMACs per image at 512x512
    assert f["vae_decoder"] == pytest.approx(2.51e12, rel=0.03)
    assert f["text_encoder"] == pytest.approx(13.3e9, rel=0.03)


def test_missing_baseline_is_named(tiny_export, profiles_dir):
    import importlib.util

    if importlib.util.find_spec("openvino") is not None:
        pytest.skip("openvino is installed here")
    art, _ = tiny_export("sd15")
    one_line_error(run("bench", art, "--device", "test-any-cpu", "--baseline", "openvino"),
                   "--baseline openvino needs openvino", "pip install openvino")


def test_host_matching_and_stats():
    ti = Host(gpus=[Gpu("NVIDIA GeForce RTX 4060 Ti", 8.0)])
    plain = Host(gpus=[Gpu("NVIDIA GeForce RTX 4060", 7.996)])
    small = Host(gpus=[Gpu("NVIDIA GeForce RTX 3060", 8.0)])
    assert matches(get_profile("rtx4060"), plain) and not matches(get_profile("rtx4060"), ti)
    assert not matches(get_profile("rtx3060"), small)                # the 8 GB 3060 is not the 12 GB profile
    assert matches(get_profile("cpu-avx2"), Host(cpu_flags={"avx2", "fma", "sse2"}))
    assert not matches(get_profile("cpu-avx512"), Host(cpu_flags={"avx2", "fma"}))
    s = spread([3.0, 1.0, 2.0, 10.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0 and s["iqr"] == pytest.approx(3.0)
    child = {"runs": [{"warmup": True, "seconds": 9, "cpu_seconds": 9, "stages": {"a": [5]}},
                      {"warmup": False, "seconds": 2, "cpu_seconds": 3, "stages": {"a": [0.5, 0.5], "b": [0.5]}},
                      {"warmup": False, "seconds": 4, "cpu_seconds": 5, "stages": {"a": [1.0, 1.0], "b": [1.0]}}]}
    out = summarize(child)
    assert out["end_to_end"]["median"] == 3 and out["stages"]["a"]["calls_per_run"] == 2
    assert out["stages"]["a"]["per_run"]["median"] == 1.5 and out["stages"]["a"]["per_call"]["median"] == 0.75
    assert out["unstaged_seconds"] == pytest.approx(0.75)   # median e2e 3 s less median staged time 2.25 s
