"""bench/int8_sensitivity.py: float activations (or, with --weights, float weights) for a group of
an int8 U-Net's layers, run for real on the tiny SD1.5 U-Net."""
import json
import subprocess
import sys
from pathlib import Path

from helpers import run_cli

BENCH = Path(__file__).resolve().parents[1] / "bench" / "int8_sensitivity.py"


def _run(*args):
    return subprocess.run([sys.executable, str(BENCH), *map(str, args)], capture_output=True, text=True)


def test_float_weights_and_float_activations_each_change_the_graph_they_name(tiny_export, tmp_path):
    src, _ = tiny_export("sd15")
    int8 = tmp_path / "int8"
    r = run_cli("optimize", src, "--int8", "--components", "unet", "--out", int8, "--calibration-prompts", 2,
                "--gate-prompts", 1, "--steps", 4, "--no-gate")
    assert r.exit_code == 0, r.output
    rows = {}
    for mode in ([], ["--weights"]):
        p = _run(src, int8, "--latent", 8, "--only", "all", "--only", "resnet conv1", *mode)
        assert p.returncode == 0, p.stderr[-2000:]
        got = [json.loads(line) for line in p.stderr.splitlines() if line.startswith("{")]
        rows[bool(mode)] = {g["group"]: g for g in got}
        assert ("| float weights for |" if mode else "| float activations for |") in p.stdout
    for weights, r in rows.items():
        assert set(r) == {"none (all int8)", "all", "resnet conv1"}, r
        # every int8 layer is in "all"; and each substitution reaches the output
        assert r["all"]["nodes"] > r["resnet conv1"]["nodes"] > 0
        assert r["all"]["rel_err"] != r["none (all int8)"]["rel_err"], (weights, r)
    assert rows[False]["none (all int8)"]["rel_err"] == rows[True]["none (all int8)"]["rel_err"]
    assert rows[False]["all"]["rel_err"] != rows[True]["all"]["rel_err"]


def test_unknown_group_is_one_line(tiny_export, tmp_path):
    src, _ = tiny_export("sd15")
    p = _run(src, src, "--latent", 8, "--only", "colour")
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0
    assert "no group 'colour'" in p.stderr and "resnet conv1" in p.stderr
