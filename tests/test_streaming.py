"""Streaming export (export/streaming.py) on a tiny FluxTransformer2DModel: weights stay on meta while
tracing, stream from a safetensors file written tensor by tensor, and the graph matches PyTorch."""
import json
import struct

import numpy as np
import pytest
import torch

from edgegen.bench.make_random_checkpoint import make_random_checkpoint, write_safetensors_streaming
from edgegen.runtimes.errors import EdgegenError
from edgegen.runtimes.iospec import Dim, IOSpec, TensorSpec

TINY = {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
        "joint_attention_dim": 32, "pooled_projection_dim": 32, "in_channels": 16, "axes_dims_rope": [4, 6, 6]}
IO = IOSpec(
    (TensorSpec("hidden_states", "float32", ("batch", "img_seq", 16)),
     TensorSpec("encoder_hidden_states", "float32", ("batch", "txt_seq", 32)),
     TensorSpec("pooled_projections", "float32", ("batch", 32)),
     TensorSpec("timestep", "float32", ("batch",), 0.0, 1.0),
     TensorSpec("img_ids", "float32", ("img_seq", 3), 0.0, 31.0),
     TensorSpec("txt_ids", "float32", ("txt_seq", 3), 0.0, 0.0)),
    (TensorSpec("sample", "float32", ("batch", "img_seq", 16)),),
    {"batch": Dim("batch", 1, 1, 4), "img_seq": Dim("img_seq", 4, 64, 256), "txt_seq": Dim("txt_seq", 4, 16, 64)},
)


def flux_cls():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    make_random_checkpoint(flux_cls(), TINY, path, "bfloat16", seed=3)
    return path


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    from edgegen.export.streaming import stream_export

    out = tmp_path_factory.mktemp("onnx")
    return stream_export(flux_cls(), TINY, ckpt, IO, out, dtype="float16"), out


def torch_model(ckpt, weight_dtype):
    """The diffusers model in fp32 with the checkpoint's weights, rounded through `weight_dtype` first."""
    from safetensors.torch import load_file

    model = flux_cls()(**TINY).eval()
    model.load_state_dict({k: v.to(weight_dtype).float() for k, v in load_file(str(ckpt)).items()})
    return model


def run_torch(model, feeds, io_dtype=torch.float32):
    t = {k: torch.from_numpy(v).to(io_dtype).float() for k, v in feeds.items()}
    with torch.no_grad():
        return model(**t, return_dict=False)[0].numpy()


def test_streaming_safetensors_writer(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1.5, -2.0], dtype=np.float16)
    path = tmp_path / "x.safetensors"
    write_safetensors_streaming(path, [("a", "float32", (2, 3)), ("b", "float16", (2,))],
                                [iter([a[:1], a[1:]]), iter([b.tobytes()])])
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert n % 8 == 0 and json.loads(path.read_bytes()[8:8 + n])["a"]["data_offsets"] == [0, 24]
    got = load_file(str(path))
    assert np.array_equal(got["a"].numpy(), a) and np.array_equal(got["b"].numpy(), b)
    with pytest.raises(ValueError, match="wrote 2 bytes, expected 4"):
        write_safetensors_streaming(tmp_path / "bad.safetensors", [("b", "float16", (2,))], [iter([b[:1]])])
    assert not list(tmp_path.glob("bad.safetensors*"))

    # The random checkpoint: every parameter of the model, bf16, seeded.
    ck = tmp_path / "flux.safetensors"
    info = make_random_checkpoint(flux_cls(), TINY, ck, "bfloat16", seed=5)
    model = flux_cls()(**TINY)
    with safe_open(str(ck), "pt") as f:
        assert sorted(f.keys()) == sorted(n for n, _ in model.named_parameters())
        w = f.get_tensor("transformer_blocks.0.attn.to_q.weight")
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert w.dtype == torch.bfloat16 and 0 < w.float().abs().max() <= 1 / 32 ** 0.5
    make_random_checkpoint(flux_cls(), TINY, tmp_path / "again.safetensors", "bfloat16", seed=5)
    assert (tmp_path / "again.safetensors").read_bytes() == ck.read_bytes()


def test_stream_export_layout(exported, ckpt):
    import onnx
    from safetensors import safe_open

    rep, out = exported
    n_params = sum(1 for _ in flux_cls()(**TINY).parameters())
    assert rep.weights_device == "meta"  # the traced model never held a real weight
    assert rep.files == ["model.onnx", "model.onnx.data"] and rep.tensors == n_params and not rep.dropped
    # One tensor in memory at a time: at most the largest checkpoint tensor plus its converted copy.
    with safe_open(str(ckpt), "pt") as f:
        largest = max(f.get_slice(k).get_shape()[0] * int(np.prod(f.get_slice(k).get_shape()[1:])) for k in f.keys())
    assert rep.max_tensor_bytes <= largest * (2 + 2)
    m = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert len(m.graph.initializer) >= n_params
    weights = [t for t in m.graph.initializer if t.name.startswith("model.")]
    assert len(weights) == n_params
    for t in weights:
        info = {e.key: e.value for e in t.external_data}
        assert t.data_location == onnx.TensorProto.EXTERNAL and info["location"] == "model.onnx.data"
        assert t.data_type == onnx.TensorProto.FLOAT16
    # Bytes in the data file are the checkpoint's tensor, cast to fp16.
    t = next(t for t in weights if t.name == "model.transformer_blocks.0.ff.net.0.proj.weight")
    info = {e.key: int(e.value) for e in t.external_data if e.key != "location"}
    raw = (out / "model.onnx.data").read_bytes()[info["offset"]:info["offset"] + info["length"]]
    with safe_open(str(ckpt), "pt") as f:
        want = f.get_tensor("transformer_blocks.0.ff.net.0.proj.weight").to(torch.float16).numpy()
    assert np.array_equal(np.frombuffer(raw, np.float16).reshape(want.shape), want)


@pytest.mark.parametrize("sizes", [IO.sizes("mid", batch=1), IO.sizes("max", batch=3, img_seq=40)])
def test_stream_export_matches_pytorch(exported, ckpt, sizes, tmp_path):
    """At shapes other than the export shape (batch 2, img 4, txt 4): the fp16 graph is close to
    PyTorch fp32, and the same graph lifted to fp32 matches it to float32 rounding."""
    import onnxruntime as ort

    from edgegen.export.streaming import upcast_to_float32

    _, out = exported
    feeds = IO.example(sizes, seed=7)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    got = ort.InferenceSession(str(out / "model.onnx"), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ref = run_torch(torch_model(ckpt, torch.bfloat16), feeds)
    assert got.shape == ref.shape == IO.outputs[0].resolve(sizes)
    assert np.isfinite(got).all()
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 2e-2 * scale

    lifted = upcast_to_float32(out / "model.onnx", tmp_path / "fp32.onnx")
    got32 = ort.InferenceSession(str(lifted), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    # The lifted graph has the fp16-rounded weights and no fp16 rounding of its inputs.
    ref32 = run_torch(torch_model(ckpt, torch.float16), feeds)
    assert np.abs(got32 - ref32).max() <= 1e-4 + 1e-3 * scale


def test_checkpoint_mismatch_fails_before_tracing(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    from edgegen.export.streaming import stream_export

    sd = load_file(str(ckpt))
    sd.pop("proj_out.bias")
    sd["proj_out.weight"] = sd["proj_out.weight"][:, :8].contiguous()
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(EdgegenError, match=r"missing proj_out\.bias; shape proj_out\.weight"):
        stream_export(flux_cls(), TINY, bad, IO, tmp_path / "out")
    assert not (tmp_path / "out").exists()
