"""What keeps a real-size export within RAM: the TorchScript exporter's per-tensor files are gathered
one tensor at a time, and a pipeline the exporter loaded itself gives each component's weights back
once that component is exported and validated (before the onnxruntime session, where the fp64
re-check can't run anyway)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _graph_with_weights(folder):
    """y = (x @ W + pad) * s: W (1.44 MB) in a file of its own, as TorchScript writes a >2 GB model;
    pad (2400 bytes) and s (4 bytes) inline."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((600, 600)).astype(np.float32)
    pad = rng.standard_normal(600).astype(np.float32)
    s = np.array(0.5, dtype=np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "pad"], ["a"]),
         helper.make_node("Mul", ["a", "s"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 600])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 600])],
        [numpy_helper.from_array(pad, "pad"), numpy_helper.from_array(s, "s"), numpy_helper.from_array(w, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=4096)
    x = rng.standard_normal((2, 600)).astype(np.float32)
    return path, x, (x @ w + pad) * s


def test_consolidate_moves_one_tensor_at_a_time(tmp_path, monkeypatch):
    import onnx.external_data_helper as edh
    import onnxruntime as ort

    from edgegen.export.onnx_export import _consolidate
    from edgegen.export.streaming import ALIGN

    path, x, want = _graph_with_weights(tmp_path / "m")
    assert len(list(path.parent.iterdir())) == 2   # model.onnx + W's own file

    def whole_model(*a, **k):
        raise AssertionError("loaded every weight at once")

    def into_the_model(*a, **k):
        raise AssertionError("set a weight's bytes on the loaded model (protobuf keeps them until it goes)")

    monkeypatch.setattr(onnx, "load_external_data_for_model", whole_model)
    monkeypatch.setattr(edh, "load_external_data_for_model", whole_model)
    monkeypatch.setattr(edh, "load_external_data_for_tensor", into_the_model)
    _consolidate(path)
    monkeypatch.undo()

    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    m = onnx.load(str(path), load_external_data=False)
    where = {t.name: {e.key: e.value for e in t.external_data} for t in m.graph.initializer}
    assert where["W"]["location"] == where["pad"]["location"] == "model.onnx.data"   # >= 1024 bytes, as onnx.save
    assert not where["s"]                                                            # small: stays inline
    assert int(where["W"]["offset"]) == ALIGN                                        # >= 1 MiB: mmap-aligned
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture
def arbiter_never_runs(monkeypatch):
    """Every component as if too big for the fp64 re-check: its weights may go before the session."""
    import edgegen.export.onnx_export as oe

    monkeypatch.setattr(oe, "FP64_ARBITER_BYTES", 0)


def test_own_pipeline_is_released_component_by_component(tmp_path, monkeypatch, arbiter_never_runs):
    import json

    import edgegen.export.exporter as ex
    from edgegen.export.weights import Source, load_pipeline

    loaded = {}

    def load(family, source):
        loaded["pipe"] = load_pipeline(family, source)
        return loaded["pipe"]

    monkeypatch.setattr(ex, "load_pipeline", load)
    out = ex.export("sd15", Source("tiny", seed=0), tmp_path / "own")
    m = json.loads((out / "manifest.json").read_text())
    # The VAE decoder's release kept the weights the encoder (same AutoencoderKL) still needed.
    assert list(m["components"]) == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    assert all(c["validation"]["passed"] for c in m["components"].values())
    pipe = loaded["pipe"]
    assert {p.device.type for mod in (pipe.text_encoder, pipe.unet, pipe.vae) for p in mod.parameters()} == {"meta"}
    assert pipe.unet.config.sample_size   # configs stay


def test_callers_pipeline_is_left_as_given(tmp_path, arbiter_never_runs):
    from edgegen.export.exporter import export
    from edgegen.export.families import get_family
    from edgegen.export.weights import Source, load_pipeline

    source = Source("tiny", seed=0)
    pipe = load_pipeline(get_family("sd15"), source)
    export("sd15", source, tmp_path / "given", pipe=pipe)
    assert {p.device.type for p in pipe.unet.parameters()} == {"cpu"}
