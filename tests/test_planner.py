import json

import click
import pytest
from click.testing import CliRunner

from edgegen.profiles import planner
from edgegen.profiles.catalog import get_model, models
from edgegen.profiles.commands import plan_cmd
from edgegen.profiles.device import ENV_DIR, get_profile
from edgegen.profiles.planner import GiB, TABLE_MODELS, TABLE_ROWS, fit_table, plan_for_device, table_cells
from edgegen.runtimes.errors import EdgegenError

# Measured on this repository's real-size (--random-weights) sd15 artifact, 512x512, one prompt with
# CFG, onnxruntime 1.32 CPU, 2 threads, VmHWM: first generation / after every stage ran twice.
SD15_ORT_RSS_GIB = {"cold": 9.606, "warm": 10.513}   # onnxruntime's memory pattern on (profiles/README.md)
SD15_ORT_RSS_NO_PATTERN_GIB = 7.32   # edgegen's CPU default, 2 steps (bench/results/memory_sd15.md, pattern-off)


@pytest.fixture(autouse=True)
def no_user_dir(monkeypatch):
    monkeypatch.delenv(ENV_DIR, raising=False)


def cli():
    class Group(click.Group):
        def invoke(self, ctx):
            try:
                return super().invoke(ctx)
            except EdgegenError as e:
                click.echo(f"error: {e}", err=True)
                ctx.exit(2)

    group = Group("edgegen")
    group.add_command(plan_cmd)
    return group


def test_sd15_counts_recomputed_on_meta_device():
    parts = {p.name: p for p in get_model("sd15").parts}
    got = {name: planner.count_weights(p) for name, p in parts.items()}
    assert got == {"text_encoder": 123_060_480, "unet": 859_520_964, "vae_decoder": 49_490_199}
    # The cache the planner reads agrees with the architecture.
    assert {name: planner.weight_count(p) for name, p in parts.items()} == got


def test_cache_covers_every_model():
    cache = json.loads(planner.CACHE.read_text())
    missing = [f"{m.name}/{p.name}" for m in models().values() for p in m.parts if planner._key(p) not in cache]
    assert not missing, f"configs changed: run python -m edgegen.profiles.planner ({missing})"


@pytest.mark.parametrize("model,part,lo,hi", [
    ("flux-dev", "transformer", 11.85e9, 11.95e9),      # 11.9B
    ("flux-dev", "text_encoder_2", 4.70e9, 4.80e9),     # T5-XXL encoder 4.76B
    ("sd35-large", "transformer", 8.0e9, 8.2e9),        # 8.1B with its positional table
    ("sd35-medium", "transformer", 2.4e9, 2.55e9),      # 2.5B
    ("auraflow", "transformer", 6.7e9, 6.9e9),     # ~6.8B
    ("playground-v25", "unet", 2.5e9, 2.6e9),          # SDXL's 2.57B UNet
    ("sd35-medium", "text_encoder_2", 0.69e9, 0.70e9),  # OpenCLIP bigG with projection
])
def test_catalog_parameter_counts(model, part, lo, hi):
    p = next(p for p in get_model(model).parts if p.name == part)
    assert lo <= planner.weight_count(p) <= hi


def test_catalog_configs_build():
    """A cache miss builds on the meta device, fast, even for the 12B FLUX transformer."""
    p = next(p for p in get_model("flux-schnell").parts if p.role == "denoiser")
    assert planner.count_weights(p) == 11_891_178_560


def test_flux_dev_fp16_does_not_fit_24gb_without_offload():
    cells = table_cells(rows=(24, 32), models=("flux-dev",))["flux-dev"]
    fp16, fp8, int4 = cells[24]
    assert fp16.precisions["transformer"] == "fp16" and fp16.verdict == "offload"
    assert fp8.verdict == "resident" and int4.verdict == "resident"
    assert cells[32][0].verdict == "sequential"
    plan = plan_for_device("flux-dev", get_profile("rtx4090"))
    assert plan["plans"][0]["verdict"] == "offload"
    assert plan["proposal"]["label"] == "8-bit" and plan["proposal"]["precisions"]["transformer"] == "fp8"


def test_sd35_medium_fp16_fits_10gb_sequentially():
    cells = table_cells(rows=(8, 10, 20), models=("sd35-medium",))["sd35-medium"]
    assert cells[10][0].precisions["text_encoder_3"] == "fp16"
    assert cells[10][0].verdict == "sequential"
    assert cells[8][0].verdict == "offload" and cells[20][0].verdict == "resident"
    # T5-XXL, not the transformer, is the largest stage at fp16.
    top = max(cells[10][0].stages, key=lambda s: s.peak)
    assert top.name == "text_encoder_3"


def test_table_renders_all_rows_and_columns():
    md = fit_table()
    lines = md.splitlines()
    header = lines[0]
    for title in ("SD3.5 Medium", "SDXL", "Playground v2.5", "AuraFlow v0.2", "SD3.5 Large", "SD3.5 Large Turbo",
                  "FLUX.1 dev", "FLUX.1 schnell"):
        assert f"| {title} |" in header
    rows = [l for l in lines if l.startswith("| ") and " GB |" in l]
    assert [r.split("|")[1].strip() for r in rows] == [f"{gb} GB" for gb in TABLE_ROWS]
    for r in rows:
        cells = r.strip("|").split("|")[1:]
        assert len(cells) == len(TABLE_MODELS) and all(c.count("/") == 2 for c in cells)
    assert "**no**" in md and "seq" in md and "res" in md


def test_more_quantisation_never_needs_more_memory():
    for m, by_gb in table_cells().items():
        plans = by_gb[TABLE_ROWS[0]]
        peaks = [p.sequential_peak for p in plans]
        assert peaks == sorted(peaks, reverse=True), m
        assert all(p.precisions[s.name] == "fp16" for p in plans for s in p.stages if s.name == "vae_decoder")


def test_activations_grow_with_resolution_and_batch():
    small = plan_for_device("sdxl", get_profile("rtx4090"), 512, 512)["plans"][0]
    big = plan_for_device("sdxl", get_profile("rtx4090"), 1024, 1024, batch=2)["plans"][0]
    act = lambda plan, name: next(s["activations_gib"] for s in plan["stages"] if s["component"] == name)
    assert act(big, "unet") > 4 * act(small, "unet") and act(big, "vae_decoder") > 4 * act(small, "vae_decoder")
    # VAE decode at full resolution is the largest activation of SDXL at 1024px.
    assert act(big, "vae_decoder") > act(big, "unet")


def test_predict_peak_rss_sd15_matches_measurement():
    warm = planner.predict_peak_rss("sd15", "fp32", 512, 512, 1, runtime="onnxruntime-cpu", mem_pattern=True)
    cold = planner.predict_peak_rss("sd15", "fp32", 512, 512, 1, warm=False, mem_pattern=True)
    assert abs(warm / GiB / SD15_ORT_RSS_GIB["warm"] - 1) < 0.05
    assert abs(cold / GiB / SD15_ORT_RSS_GIB["cold"] - 1) < 0.05
    # Without the pattern a second run reuses the arena's chunks: warm or cold, one activation set each.
    default = planner.predict_peak_rss("sd15", "fp32", 512, 512, 1)
    assert default == planner.predict_peak_rss("sd15", "fp32", 512, 512, 1, warm=False)
    assert abs(default / GiB / SD15_ORT_RSS_NO_PATTERN_GIB - 1) < 0.05
    parts = planner.rss_breakdown("sd15")
    assert parts["unet weights"] == 859_520_964 * 4
    torch_rss = planner.predict_peak_rss("sd15", runtime="torch-cpu")
    assert torch_rss < cold   # fused SDPA and one live activation set
    with pytest.raises(EdgegenError, match="unknown runtime"):
        planner.predict_peak_rss("sd15", runtime="tensorrt")


def test_cpu_profile_plan_uses_ort_model():
    res = plan_for_device("sd15", get_profile("cpu-avx2"), 512, 512)
    assert res["plans"][0]["resident_peak_gib"] == pytest.approx(planner.predict_peak_rss("sd15") / GiB, abs=1e-3)


def test_bad_sizes_and_names():
    with pytest.raises(EdgegenError, match="multiples of 16"):
        plan_for_device("sd15", get_profile("rtx4060"), 500, 512)
    with pytest.raises(EdgegenError, match="unknown model 'sd99'; known: .*flux-dev"):
        plan_for_device("sd99", get_profile("rtx4060"))


def test_cli_plan_json_and_text():
    out = CliRunner().invoke(cli(), ["plan", "sd35-medium", "--device", "rtx3060", "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert res["device"] == "rtx3060" and res["height"] == 1024
    assert all(p["precisions"]["transformer"] != "fp8" for p in res["plans"])   # no fp8 on Ampere
    out = CliRunner().invoke(cli(), ["plan", "flux-dev", "--device", "rtx4060", "--height", "768", "--width", "768"])
    assert out.exit_code == 0 and "proposal:" in out.output and "768x768" in out.output
    out = CliRunner().invoke(cli(), ["plan", "flux-dev", "--device", "h100-80gb", "--precision", "fp16", "--json"])
    assert json.loads(out.output)["proposal"]["verdict"] == "resident"


def test_cli_table(tmp_path):
    out = CliRunner().invoke(cli(), ["plan", "--table"])
    assert out.exit_code == 0 and out.output == fit_table()
    f = tmp_path / "fit.md"
    out = CliRunner().invoke(cli(), ["plan", "--table", "--out", str(f)])
    assert out.exit_code == 0 and f.read_text() == fit_table()


@pytest.mark.parametrize("args,msg", [
    (["plan"], "give a model"),
    (["plan", "sd15"], "give --device"),
    (["plan", "sd15", "--device", "rtx4060", "--out", "x.md"], "--out goes with --table"),
    (["plan", "--table", "sd15"], "takes no FAMILY"),
    (["plan", "nope", "--device", "rtx4060"], "unknown model"),
])
def test_cli_plan_errors(args, msg):
    out = CliRunner().invoke(cli(), args)
    assert out.exit_code == 2 and msg in out.output and len(out.output.strip().splitlines()) == 1


def test_readme_table_is_current():
    from pathlib import Path

    readme = (Path(planner.__file__).parent / "README.md").read_text()
    grid = fit_table().split("\n\n")[0]
    assert grid in readme, "profiles/README.md's fit table is stale: paste `edgegen plan --table`'s first table"
