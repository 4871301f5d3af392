import json
import shutil

import click
import pytest
from click.testing import CliRunner

from edgegen.profiles.commands import plan_cmd, profiles_cmd
from edgegen.profiles.device import (BUILTIN_DIR, ENV_DIR, check_precision, get_profile, load_profiles,
                                     match_host, parse_profile)
from edgegen.runtimes.errors import EdgegenError

REQUIRED_DEVICES = {"rtx4060", "rtx4060-laptop", "rtx3060", "rtx4070", "rtx4090", "rtx5090", "jetson-orin-nano-8gb",
                    "jetson-agx-orin-64gb", "apple-m1-8gb", "apple-m2-16gb", "apple-m3-max", "h100-80gb",
                    "cpu-avx512", "cpu-avx2"}


@pytest.fixture(autouse=True)
def no_user_dir(monkeypatch):
    monkeypatch.delenv(ENV_DIR, raising=False)


def cli():
    """A stand-in for the main CLI: EdgegenError becomes one line and exit code 2."""
    class Group(click.Group):
        def invoke(self, ctx):
            try:
                return super().invoke(ctx)
            except EdgegenError as e:
                click.echo(f"error: {e}", err=True)
                ctx.exit(2)

    group = Group("edgegen")
    group.add_command(profiles_cmd)
    group.add_command(plan_cmd)
    return group


def test_shipped_profiles_load_and_validate():
    profs = load_profiles()
    assert REQUIRED_DEVICES <= set(profs)
    for p in profs.values():
        assert 0 < p.usable_gb < p.memory_gb
        assert p.bandwidth_gbs > 0 and p.peak_tflops
        assert set(p.peak_tflops) <= set(p.precisions) | {"int4"}
        assert all(p.sources[k] for k in ("memory_gb", "bandwidth_gbs", "peak_tflops", "reserve"))
        assert p.name == p.path.rsplit("/", 1)[-1].removesuffix(".toml")
    assert profs["rtx4060"].memory_gb == 8 and profs["rtx4060"].compute_capability == "8.9"
    assert profs["rtx4090"].memory_gb == 24 and profs["rtx5090"].memory_gb == 32
    assert "fp4" in profs["rtx5090"].precisions and "fp8" not in profs["rtx3060"].precisions
    assert profs["jetson-orin-nano-8gb"].memory_kind == "shared"
    assert profs["apple-m3-max"].memory_kind == "unified" and "coreml" in profs["apple-m3-max"].backends
    assert profs["cpu-avx512"].match["cpu_flags"][0] == "avx512f"


def test_dropped_in_profile_is_listed_and_can_override(tmp_path, monkeypatch):
    text = (BUILTIN_DIR / "rtx4060.toml").read_text()
    (tmp_path / "my-gpu.toml").write_text(text.replace('name = "rtx4060"', 'name = "my-gpu"'))
    (tmp_path / "rtx4090.toml").write_text((BUILTIN_DIR / "rtx4090.toml").read_text()
                                           .replace("reserved_gb = 0.5", "reserved_gb = 1.5"))
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    profs = load_profiles()
    assert "my-gpu" in profs and REQUIRED_DEVICES <= set(profs)
    assert profs["rtx4090"].usable_gb == 22.5
    out = CliRunner().invoke(cli(), ["profiles"])
    assert out.exit_code == 0 and "my-gpu" in out.output


def test_missing_field_names_file_and_field(tmp_path, monkeypatch):
    text = (BUILTIN_DIR / "rtx3060.toml").read_text()
    bad = tmp_path / "broken.toml"
    bad.write_text("\n".join(l for l in text.splitlines() if not l.startswith("bandwidth_gbs")))
    with pytest.raises(EdgegenError, match=r"broken\.toml.*'bandwidth_gbs'"):
        parse_profile(bad)
    bad.write_text(text.replace("reserved_gb = 0.5\n", ""))
    with pytest.raises(EdgegenError, match="reserved_gb"):
        parse_profile(bad)
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    out = CliRunner().invoke(cli(), ["profiles"])
    assert out.exit_code == 2 and "broken.toml" in out.output and len(out.output.strip().splitlines()) == 1


def test_bad_values_are_refused(tmp_path):
    text = (BUILTIN_DIR / "rtx4060.toml").read_text()
    f = tmp_path / "x.toml"
    for old, new, msg in (('kind = "gpu"', 'kind = "tpu"', "kind"), ('"tensorrt",', '"tensorrtx",', "backends"),
                          ("memory_gb = 8", "memory_gb = 0", "positive"), ("\nreserve = ", "\nreserv = ", "sources.reserve"),
                          ('compute_capability = "8.9"', "", "compute_capability"), ("fp8 = 60.5", "fp8 = -1", "positive")):
        f.write_text(text.replace(old, new))
        with pytest.raises(EdgegenError, match=msg):
            parse_profile(f)
    f.write_text("name = [")
    with pytest.raises(EdgegenError, match="cannot read"):
        parse_profile(f)


def test_unknown_device_lists_known():
    with pytest.raises(EdgegenError, match=r"unknown device 'rtx9999'; known: .*rtx4060.*cpu-avx2|cpu-avx2.*rtx4060"):
        get_profile("rtx9999")
    out = CliRunner().invoke(cli(), ["plan", "sd15", "--device", "rtx9999"])
    assert out.exit_code == 2 and "rtx3060" in out.output


def test_precision_checks():
    check_precision(get_profile("rtx4060"), "fp8")
    check_precision(get_profile("rtx5090"), "fp4")
    with pytest.raises(EdgegenError, match="rtx3060 does not support fp8"):
        check_precision(get_profile("rtx3060"), "fp8")
    with pytest.raises(EdgegenError, match="does not support fp4"):
        check_precision(get_profile("rtx4090"), "fp4")
    with pytest.raises(EdgegenError, match="unknown precision"):
        check_precision(get_profile("rtx4090"), "fp6")
    out = CliRunner().invoke(cli(), ["plan", "sd15", "--device", "rtx3060", "--precision", "fp8"])
    assert out.exit_code == 2 and "does not support fp8" in out.output


def test_host_matching():
    profs = load_profiles()
    assert match_host(profs["rtx4060"], ["NVIDIA GeForce RTX 4060"], memory_gb=8)
    assert not match_host(profs["rtx4060"], ["NVIDIA GeForce RTX 4060 Ti"])
    assert not match_host(profs["rtx4060"], ["NVIDIA GeForce RTX 4060 Laptop GPU"])
    assert match_host(profs["rtx4060-laptop"], ["NVIDIA GeForce RTX 4060 Laptop GPU"])
    assert not match_host(profs["rtx3060"], ["NVIDIA GeForce RTX 3060"], memory_gb=8)
    assert match_host(profs["cpu-avx2"], cpu_flags={"sse4_2", "avx2", "fma"})
    assert not match_host(profs["cpu-avx512"], cpu_flags={"avx2", "fma"})
    assert match_host(profs["apple-m1-8gb"], chip="Apple M1") and not match_host(profs["apple-m1-8gb"], chip="Apple M1 Pro")
    assert match_host(profs["jetson-orin-nano-8gb"], device_model="NVIDIA Jetson Orin Nano Developer Kit")


def test_profiles_json():
    out = CliRunner().invoke(cli(), ["profiles", "--json"])
    assert out.exit_code == 0
    rows = json.loads(out.output)
    assert {r["name"] for r in rows} >= REQUIRED_DEVICES
    r = next(r for r in rows if r["name"] == "rtx3060")
    assert r["memory_gb"] == 12 and r["usable_gb"] == 11.5 and "fp8" not in r["precisions"]


def test_user_dir_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "nope"))
    with pytest.raises(EdgegenError, match=ENV_DIR):
        load_profiles()


def test_duplicate_name_in_one_folder(tmp_path, monkeypatch):
    shutil.copy(BUILTIN_DIR / "rtx4060.toml", tmp_path / "a.toml")
    shutil.copy(BUILTIN_DIR / "rtx4060.toml", tmp_path / "b.toml")
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    with pytest.raises(EdgegenError, match="already used"):
        load_profiles()
