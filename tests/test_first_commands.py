"""The command lines edgegen is known by work as typed: family aliases, the hub fallback, and
`edgegen bench --device D` without an artifact."""
import json

import pytest
from helpers import assert_user_error, run_cli

from edgegen.export.families import ALIASES, choose_family, families, get_family


def test_every_alias_names_a_family_and_is_listed():
    known = families()
    out = run_cli("families").output
    for alias, targets in ALIASES.items():
        assert alias not in known and all(t in known for t in targets)
        assert alias in out and targets[0] in out
    assert get_family("flux").name == "flux-schnell"


def test_alias_lets_the_weights_decide(tmp_path):
    from edgegen.export.weights import write_config_folder

    write_config_folder(get_family("flux-dev"), tmp_path / "dev", tiny=True)
    assert choose_family("flux", str(tmp_path / "dev")) == "flux-dev"
    write_config_folder(get_family("flux-schnell"), tmp_path / "schnell", tiny=True)
    assert choose_family("flux", str(tmp_path / "schnell")) == "flux-schnell"
    assert choose_family("flux") == "flux-schnell"
    assert choose_family("sd3", str(tmp_path / "schnell")) == "sd3-medium"


def test_export_flux_int8_by_alias_then_generate(tmp_path):
    out = tmp_path / "flux"
    r = run_cli("export", "flux", "--tiny", "--int8", "--out", out, "--calibration-prompts", 2,
                "--gate-prompts", 1)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["family"] == "flux-schnell" and m["components"]["transformer"]["precision"] == "int8"
    r = run_cli("generate", out, "a red fox", "--out", tmp_path / "fox.png")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("alias, family", [("sd3", "sd3-medium"), ("sana", "sana-1600m")])
def test_export_by_alias(tmp_path, alias, family):
    r = run_cli("export", alias, "--tiny", "--out", tmp_path / alias)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / alias / "manifest.json").read_text())["family"] == family


def test_offline_without_a_weight_source_says_how_to_go_on(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))
    r = run_cli("export", "flux", "--int8", "--out", tmp_path / "x")
    assert_user_error(r, "black-forest-labs/FLUX.1-schnell", "not in the Hugging Face cache", "--weights PATH",
                      "--random-weights", "--tiny")
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.")]


def _plan_verdicts(device):
    from edgegen.profiles.device import get_profile
    from edgegen.profiles.planner import plan_for_device

    prof = get_profile(device)
    return {(f, p["label"]): p["verdict"] for f in families() for p in plan_for_device(f, prof)["plans"]}


@pytest.mark.parametrize("device", ["rtx4060", "apple-m2-16gb"])
def test_bench_a_device_across_families(device, tmp_path):
    r = run_cli("bench", "--device", device, "--json", "--report", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    rows = res["rows"]
    assert {row["family"] for row in rows} == set(families())
    # this CPU host is neither device: every row is a labelled estimate
    assert all(row["source"] == "estimate" and row["why_estimate"] for row in rows)
    assert all(row["seconds_per_image"] > 0 and row["stages"] for row in rows)
    # fit verdicts are the planner's, as `edgegen plan` prints them
    assert {(row["family"], row["plan"]): row["verdict"] for row in rows} == _plan_verdicts(device)
    assert sum(row["proposed"] for row in rows) <= len(families())
    assert (tmp_path / "rep" / f"device_{device}.md").is_file()


def test_bench_device_table_and_bad_combinations(tmp_path):
    r = run_cli("bench", "--device", "rtx4060", "--family", "sd15")
    assert r.exit_code == 0, r.output
    assert "sd15" in r.output and "estimate" in r.output
    assert_user_error(run_cli("bench", "--device", "rtx4060", "--baseline", "torch"), "--baseline needs an ARTIFACT")
    assert_user_error(run_cli("bench", "--device", "rtx4060", "--family", "dalle"), "weights are not public")
    assert_user_error(run_cli("bench"), "give --device")


def test_mismatch_message_names_both_sides_correctly():
    """Real FLUX widths with dev's guidance embedding, named as schnell: the message names the
    feature, each side's value and the family that matches (never 'is 64, expects 64')."""
    from edgegen.export.families.infer import ModelInfo, check_named, family_features
    from edgegen.runtimes.errors import EdgegenError

    fam = get_family("flux-schnell")
    cfg = dict(fam.denoiser.config, guidance_embeds=True)
    model = ModelInfo("w", "FluxPipeline", fam.denoiser.cls, cfg, ("text_encoder", "text_encoder_2"), {})
    with pytest.raises(EdgegenError) as e:
        check_named(fam, model, families())
    assert ("not flux-schnell: guidance embedding (time_cond_proj_dim / guidance_embeds): the weights have yes, "
            "flux-schnell has no; try: edgegen export flux-dev") in str(e.value)
    for name, f in families().items():
        assert family_features(f) == family_features(f, tiny=True), name
