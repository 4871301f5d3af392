"""bench/cpu_peers.py's peer recipes, run for real on the tiny SD1.5 U-Net."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_hybrid_peer_compresses_weighted_matmuls_and_quantizes_the_rest(tiny_export, tmp_path):
    """optimum-intel's hybrid scheme: every MatMul with a weight is int8 weight-only (no
    FakeQuantize on its activation), the convolutions run int8 behind FakeQuantize, and the
    result still computes the U-Net (compared with onnxruntime fp32 on the same inputs)."""
    ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[openvino]')")
    pytest.importorskip("nncf", reason="nncf is not installed (pip install -e '.[bench]')")
    import onnxruntime as ort
    from cpu_peers import _weighted_matmuls, nncf_int8
    from optimize_sd15 import feeds

    from edgegen.optimize.gate import rel_err

    src, _ = tiny_export("sd15")
    xml = tmp_path / "unet.xml"
    info = nncf_int8(src, xml, lambda m: None, "unet", "hybrid")
    assert info["recipe"] == "hybrid" and info["samples"] > 0
    fp32 = ov.Core().read_model(str(src / "unet" / "model.onnx"))
    weighted = set(_weighted_matmuls(fp32))
    assert weighted and len(weighted) < sum(op.get_type_name() == "MatMul" for op in fp32.get_ops())
    q = ov.Core().read_model(str(xml))
    ops = {op.get_friendly_name(): op for op in q.get_ops()}

    def producers(op):
        return [op.input_value(i).get_node() for i in range(op.get_input_size())]

    for name in weighted:
        # the weight: an int8/uint8 constant decompressed in the graph; the activation: no FakeQuantize
        assert all(p.get_type_name() != "FakeQuantize" for p in producers(ops[name])), name
    assert any(str(op.get_output_element_type(0)) in ("<Type: 'uint8_t'>", "<Type: 'int8_t'>")
               for op in q.get_ops() if op.get_type_name() == "Constant")
    convs = [op for op in q.get_ops() if op.get_type_name() == "Convolution"]
    assert any(p.get_type_name() == "FakeQuantize" for c in convs for p in producers(c))
    f = feeds(src, 8, 2)
    ref = ort.InferenceSession(str(src / "unet" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, f)[0]
    got = ov.Core().compile_model(q, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(f)[0]
    assert 0 < rel_err(ref, np.asarray(got)) < 0.3


def test_only_races_the_named_rows_and_builds_nothing_else(tiny_export, tmp_path):
    """--only with --per-step-only: the named rows, the peer's and the ORT fp32 reference run;
    the default int8 artifact, which no raced row reads, is not built (minutes at real size)."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[openvino]')")
    pytest.importorskip("nncf", reason="nncf is not installed (pip install -e '.[bench]')")
    import json
    import subprocess

    src, _ = tiny_export("sd15")
    work = tmp_path / "work"
    p = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "cpu_peers.py"),
                        "--artifact", str(src), "--latent", "8", "--per-step-only", "--openvino-only", "--no-outer",
                        "--no-compiled", "--only", "ort fp32", "--repeats", "1", "--work", str(work),
                        "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads((tmp_path / "r.json").read_text())["per_step"]
    assert set(rows) == {"ort fp32", "openvino + nncf int8 (peer)", "openvino + nncf int8, static (peer)"}
    assert all(r["exit_code"] == 0 for r in rows.values())
    assert not (work / "int8").exists()
