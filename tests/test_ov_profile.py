"""bench/ov_profile.py: OpenVINO's per-node counters summed per layer type and kernel, on a real compile."""
import importlib.util
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "ov_profile.py"
_spec = importlib.util.spec_from_file_location("ov_profile", _PATH)
ov_profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ov_profile)


def _info(node_type, exec_type, ms, status="Status.EXECUTED"):
    return SimpleNamespace(node_type=node_type, exec_type=exec_type, real_time=timedelta(milliseconds=ms),
                           status=status)


def test_layer_times_average_per_run_and_leave_out_fused_nodes():
    runs = [[_info("Convolution", "brgconv_avx512_core_vnni_I8", 10), _info("Convolution", "brgconv_avx512_core_vnni_I8", 6),
             _info("Softmax", "jit_avx512_bf16", 2), _info("Reorder", "unknown_I8", 0, "Status.NOT_RUN")],
            [_info("Convolution", "brgconv_avx512_core_vnni_I8", 12), _info("Convolution", "brgconv_avx512_core_vnni_I8", 4),
             _info("Softmax", "jit_avx512_bf16", 4), _info("Reorder", "unknown_I8", 0, "Status.NOT_RUN")]]
    times = ov_profile.layer_times(runs)
    assert times == {("Convolution", "brgconv_avx512_core_vnni_I8"): [16.0, 2], ("Softmax", "jit_avx512_bf16"): [3.0, 1]}
    assert ov_profile.kind("Convolution", "brgconv_avx512_core_vnni_I8") == "int8"
    assert ov_profile.kind("Softmax", "jit_avx512_bf16") == "bf16"
    assert ov_profile.kind("MatMul", "brgemm_avx512_FP32") == "f32"


def test_profile_runs_a_real_graph_and_sums_its_convolution(tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[openvino]')")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(1).standard_normal((1, 4, 16, 16)).astype(np.float32)
    rows, y, walls = ov_profile.profile(str(path), {"x": x}, runs=2, threads=1, precision="f32")
    assert y.shape == (1, 8, 16, 16) and len(walls) == 2
    conv = {k: v for k, v in rows.items() if k[0] == "Convolution"}
    assert conv and sum(v[1] for v in conv.values()) == 1
    import torch

    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(numpy_helper.to_array(w)), padding=1)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-4, atol=1e-4)


def test_render_puts_each_graph_in_its_own_column_and_groups_int8_kernels():
    rows = lambda ms: [{"layer": "Convolution", "kernel": "brgconv_avx512_core_vnni_I8", "ms": ms, "nodes": 3},  # noqa: E731
                       {"layer": "Convolution", "kernel": "brgconv_avx512_core_bf16", "ms": 5.0, "nodes": 1}]
    res = {"command": "python bench/ov_profile.py x", "machine": "m", "openvino": "2026.4.1", "precision": "bf16",
           "threads": 2, "batch": 2, "latent": 64, "runs": 2,
           "graphs": {"a": {"wall": [1.2, 1.0], "node_sum_ms": 990.0, "rel_err": 0.0, "rows": rows(40.0)},
                      "b": {"wall": [0.9], "node_sum_ms": 880.0, "rel_err": 0.07, "rows": rows(20.0)}}}
    text = ov_profile.render(res, top=5)
    assert "| a | bf16 | - | 1.000 | 0.990 | 0.0000 |" in text and "| b | bf16 | - | 0.900 | 0.880 | 0.0700 |" in text
    assert "| Convolution | int8 | 40 (3) | 20 (3) |" in text
    assert "| Convolution | brgconv_avx512_core_bf16 | 5 (1) | 5 (1) |" in text


def test_mark_f32_adds_the_attribute_to_the_chosen_layer_types_only():
    xml = ('<net><layers><layer id="0" name="a" type="Add" version="opset1"><rt_info>'
           '<attribute name="fused_names" version="0" value="a"/></rt_info></layer>'
           '<layer id="1" name="m" type="MVN" version="opset6"/><layer id="2" name="c" type="Convolution" '
           'version="opset1"/></layers></net>')
    from edgegen.runtimes.openvino_backend import mark_f32

    out, n = mark_f32(xml, ("Add", "MVN"))
    assert n == {"Add": 1, "MVN": 1}
    import xml.etree.ElementTree as ET

    layers = {l.get("name"): l for l in ET.fromstring(out).iter("layer")}
    marks = {k: [a.get("name") for a in l.iter("attribute")] for k, l in layers.items()}
    assert marks == {"a": ["fused_names", "DisablePrecisionConversion"], "m": ["DisablePrecisionConversion"], "c": []}
    assert layers["m"].find("rt_info/attribute").get("value") == "dynamic:f16"


def test_mark_f32_leaves_integer_layers_and_those_feeding_a_fake_quantize_alone():
    """Shape arithmetic is integer, and a layer whose output OpenVINO rounds to int8 next gains
    nothing from f32 (OpenVINO 2026.4 fails to compile a marked residual Add feeding an int8 conv)."""
    from edgegen.runtimes.openvino_backend import mark_f32

    port = '<output><port id="1" precision="{}"/></output>'
    xml = ('<net><layers>'
           f'<layer id="0" name="res" type="Add" version="opset1">{port.format("FP32")}</layer>'
           f'<layer id="1" name="fq" type="FakeQuantize" version="opset1">{port.format("FP32")}</layer>'
           f'<layer id="2" name="shape" type="Add" version="opset1">{port.format("I64")}</layer>'
           f'<layer id="3" name="kept" type="Add" version="opset1">{port.format("FP32")}</layer>'
           '</layers><edges><edge from-layer="0" from-port="1" to-layer="1" to-port="0"/>'
           '<edge from-layer="3" from-port="1" to-layer="0" to-port="0"/></edges></net>')
    out, n = mark_f32(xml, ("Add",))
    import xml.etree.ElementTree as ET

    marked = {l.get("name") for l in ET.fromstring(out).iter("layer") if l.find("rt_info") is not None}
    assert n == {"Add": 1} and marked == {"kept"}


def test_keep_f32_runs_the_marked_layers_in_f32_under_a_bf16_hint(tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[openvino]')")
    from edgegen.runtimes.host import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no AVX512-BF16 or AMX: OpenVINO computes everything in f32, nothing to keep")
    import openvino as ov
    from openvino import opset13 as op

    rng = np.random.default_rng(0)
    x = op.parameter([1, 16, 8, 8], np.float32, name="x")
    w = op.constant(rng.standard_normal((16, 16, 3, 3)).astype(np.float32))
    c1 = op.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
    m = op.mvn(c1, op.constant(np.array([1, 2, 3], np.int64)), True, 1e-5, "inside_sqrt")
    c2 = op.convolution(m, w, [1, 1], [1, 1], [1, 1], [1, 1])
    path = tmp_path / "m.xml"
    ov.save_model(ov.Model([c2], [x]), str(path), compress_to_fp16=False)
    f = {"x": rng.standard_normal((1, 16, 8, 8)).astype(np.float32)}
    plain = ov_profile.profile(str(path), f, runs=1, threads=1, precision="bf16")[0]
    kept = ov_profile.profile(str(path), f, runs=1, threads=1, precision="bf16", keep_f32=frozenset({"MVN"}))[0]
    kinds = lambda rows, t: {ov_profile.kind(*k) for k in rows if k[0] == t}  # noqa: E731
    assert kinds(plain, "MVN") == {"bf16"} and kinds(kept, "MVN") == {"f32"}
    assert kinds(kept, "Convolution") == {"bf16"}
