"""bench/int8_recipes.py: int8 recipes by accuracy, run for real on the tiny SD1.5 U-Net."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "int8_recipes.py"


def test_recipes_are_quantized_and_measured_on_both_runtimes(tiny_export, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[openvino]')")
    src, _ = tiny_export("sd15")
    work = tmp_path / "work"
    cmd = [sys.executable, str(BENCH), str(src), "--config", "", "--config", "percentile=99.99", "--latent", "8",
           "--openvino", "--work", str(work)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {}
    for line in p.stdout.splitlines():
        name, _, rest = line.partition(" {")
        if rest:
            rows.setdefault(name, []).append(json.loads("{" + rest))
    # each recipe: its own artifact, recorded with the pass config, and an error on each runtime
    pass_cfg = json.loads((work / "int8-percentile-99.99" / "manifest.json").read_text())["passes"]
    assert any(p.get("config", {}).get("percentile") == 99.99 for p in pass_cfg), pass_cfg
    assert [r["runtime"] for r in rows["(defaults)"]] == ["onnxruntime", "openvino"]
    assert rows["fp32"][0]["runtime"] == "openvino" and rows["fp32"][0]["rel_err"] < 0.05
    for name in ("(defaults)", "percentile=99.99"):
        assert all(0 < r["rel_err"] < 0.5 for r in rows[name]), rows[name]
    assert "| percentile=99.99 |" in p.stdout


def test_no_config_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, str(BENCH), str(tmp_path), "--work", str(tmp_path / "w")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0 and "--config" in p.stderr
