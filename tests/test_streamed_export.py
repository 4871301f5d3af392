"""`edgegen export --stream` (export/streamed.py) and the CPU graph from it (weight-only passes'
compute=float32), on tiny FLUX.1-schnell: the T5 encoder and the transformer are traced on meta and
streamed in bfloat16, the rest exports as usual, in one artifact the runtime runs after
`optimize --pass int4:compute=float32`."""
import json

import numpy as np
import onnx
import pytest

from edgegen.export.exporter import export
from edgegen.export.streamed import StreamRequest
from edgegen.export.weights import Source
from edgegen.runtimes.errors import EdgegenError

STREAMED = ("text_encoder_2", "transformer")


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    out = tmp_path_factory.mktemp("streamed") / "flux-bf16"
    return export("flux-schnell", Source("tiny", seed=0), out, stream=StreamRequest("bfloat16", STREAMED))


@pytest.fixture(scope="module")
def cpu_graph(streamed, tmp_path_factory):
    from edgegen.optimize.apply import optimize
    from edgegen.optimize.commands import build_passes

    out = tmp_path_factory.mktemp("cpu") / "flux-int4"
    return optimize(streamed, build_passes(extra=["int4:compute=float32"]), out, components=list(STREAMED),
                    gate=False)


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_streamed_components_validated_against_pytorch(streamed):
    m = manifest(streamed)
    assert m["passes"][0]["config"]["stream"] == {"dtype": "bfloat16", "components": list(STREAMED)}
    for name, c in m["components"].items():
        assert c["validation"]["passed"], name
        if name in STREAMED:
            assert (c["precision"], c["compute_dtype"], c["exporter"]) == ("bf16", "bfloat16", "streaming")
            assert c["validation"]["whole_graph"] and c["validation"]["graph"] == "lifted to float32"
            assert c["validation"]["streamed"]["weights_device"] == "meta"
            g = onnx.load(str(streamed / c["graph"]), load_external_data=False)
            assert any(t.data_type == onnx.TensorProto.BFLOAT16 for t in g.graph.initializer)
        else:
            assert c["precision"] == "fp32" and "compute_dtype" not in c
    # the random checkpoints were written beside the artifact and are gone
    assert not [p for p in streamed.parent.iterdir() if ".weights-" in p.name]


def test_cpu_refuses_a_bfloat16_component_before_its_session(streamed):
    from edgegen.runtimes.pipeline import Pipeline

    pipe = Pipeline.load(streamed)
    with pytest.raises(EdgegenError, match=r"text_encoder_2 computes in bfloat16.*int4:compute=float32"):
        pipe("a red circle", steps=2, height=64, width=64)


def test_compute_float32_widens_everything_around_the_quantized_weights(cpu_graph):
    m = manifest(cpu_graph)
    for name in STREAMED:
        c = m["components"][name]
        assert (c["precision"], c["compute_dtype"]) == ("int4", "float32")
        rep = c["optimize"]["reports"][0]
        assert rep["compute"] == "float32" and rep["widened_to_float32"] > 0 and rep["matmuls"] > 0
        g = onnx.load(str(cpu_graph / c["graph"]), load_external_data=False)
        low = (onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16)
        assert not [t.name for t in g.graph.initializer if t.data_type in low]
        assert not [n.name for n in g.graph.node if n.op_type == "Cast"
                    for a in n.attribute if a.name == "to" and a.i in low]
        assert any(n.op_type == "MatMulNBits" for n in g.graph.node)


def test_cpu_graph_runs_and_stays_near_the_lifted_parent(streamed, cpu_graph, tmp_path):
    """The int4 transformer against its bf16 parent lifted to fp32, on the same inputs: only the
    weights' 4-bit rounding differs (tolerance: what int4 block-32 costs on random weights)."""
    import onnxruntime as ort

    from edgegen.export.streaming import upcast_to_float32
    from edgegen.runtimes.iospec import IOSpec

    m = manifest(streamed)
    io = IOSpec.from_dict(m["components"]["transformer"]["io"])
    feeds = io.example(io.sizes("opt", batch=1), seed=3)
    parent = upcast_to_float32(streamed / m["components"]["transformer"]["graph"], tmp_path / "p.onnx")
    ref = ort.InferenceSession(str(parent), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    child = cpu_graph / manifest(cpu_graph)["components"]["transformer"]["graph"]
    got = ort.InferenceSession(str(child), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert 0 < rel < 0.15, rel

    from edgegen.runtimes.pipeline import Pipeline

    image = Pipeline.load(cpu_graph)("a red circle", steps=2, height=64, width=64, seed=1)
    arr = np.asarray(image[0] if isinstance(image, list) else image)
    assert arr.size and np.isfinite(arr.astype(np.float32)).all()


def test_stream_errors(tmp_path):
    with pytest.raises(EdgegenError, match="--stream vae: flux-schnell streams only text_encoder, text_encoder_2, "
                                           "transformer"):
        export("flux-schnell", Source("tiny"), tmp_path / "a", stream=StreamRequest("bfloat16", ("vae",)))
    with pytest.raises(EdgegenError, match="a single-file source is loaded whole"):
        export("flux-schnell", Source("single-file", "x.safetensors"), tmp_path / "b", stream=StreamRequest())
    with pytest.raises(EdgegenError, match="--stream-dtype int8"):
        export("flux-schnell", Source("tiny"), tmp_path / "c", stream=StreamRequest("int8"))
    assert not list(tmp_path.iterdir())


def test_auto_choice_streams_only_models_of_a_billion_parameters():
    from edgegen.export.families import get_family
    from edgegen.export.streamed import choose

    assert choose(get_family("flux-schnell"), Source("random"), StreamRequest()) == ["text_encoder_2", "transformer"]
    assert choose(get_family("sd15"), Source("random"), StreamRequest()) == []
    assert choose(get_family("flux-schnell"), Source("tiny"), StreamRequest()) == []


def test_stream_cli_errors(tmp_path):
    from helpers import assert_user_error, run_cli

    assert_user_error(run_cli("export", "flux-schnell", "--tiny", "--stream", "--int8", "--out", tmp_path / "a"),
                      "--stream exports only", "edgegen optimize")
    assert_user_error(run_cli("export", "flux-schnell", "--tiny", "--stream-components", "vae", "--out", tmp_path / "b"),
                      "--stream vae: flux-schnell streams only")
    assert not list(tmp_path.iterdir())


def test_generate_refuses_bfloat16_on_cpu_in_one_line(streamed, tmp_path):
    from helpers import assert_user_error, run_cli

    assert_user_error(run_cli("generate", streamed, "a red circle", "--out", tmp_path / "x.png"),
                      "text_encoder_2 computes in bfloat16", "--pass int4:compute=float32")
    assert not (tmp_path / "x.png").exists()


def test_stream_from_a_diffusers_folder(tmp_path):
    """A user's folder: each streamed component reads its own subfolder's safetensors (diffusers'
    and transformers' file names, T5's tied embedding saved once), nothing else is loaded whole."""
    from edgegen.export.families import get_family
    from edgegen.export.weights import build_random

    folder = tmp_path / "flux-folder"
    build_random(get_family("flux-schnell"), tiny=True, seed=4).save_pretrained(str(folder), safe_serialization=True)
    out = export("flux-schnell", Source("folder", str(folder)), tmp_path / "art",
                 stream=StreamRequest("float32", STREAMED))
    m = manifest(out)
    for name in STREAMED:
        c = m["components"][name]
        assert c["exporter"] == "streaming" and c["validation"]["passed"]
        assert c["validation"]["graph"] == "as written"
        assert c["validation"]["streamed"]["checkpoint"] == {"path": str(folder / name)}
    assert not [p for p in tmp_path.iterdir() if ".weights-" in p.name]
