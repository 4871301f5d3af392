"""TensorRT and TensorRT-RTX backends: their pure pieces on a real IOSpec everywhere; building
and running only where the library, a driver and a supported GPU are present (skipped with the
exact reason otherwise)."""
import enum
import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgegen.runtimes import host
from edgegen.runtimes import tensorrt_backend as trtb
from edgegen.runtimes import tensorrt_rtx_backend as rtx
from edgegen.runtimes.backend import ComponentSpec, backend_class
from edgegen.runtimes.errors import EdgegenError
from edgegen.runtimes.host import Gpu
from edgegen.runtimes.iospec import Dim, IOSpec, TensorSpec
from edgegen.runtimes.shape_profile import Range, is_static, narrow
from onnx import TensorProto, helper

RTX_4090 = Gpu("NVIDIA GeForce RTX 4090", 23.99, "8.9", "575.57")
H100 = Gpu("NVIDIA H100 80GB HBM3", 79.6, "9.0", "575.57")


def unet_io() -> IOSpec:
    latent = {"min": 32, "opt": 64, "max": 96, "multiple": 8}
    return IOSpec(
        inputs=(
            TensorSpec("sample", "float32", ("batch", 4, "latent_height", "latent_width")),
            TensorSpec("timestep", "float32", ("batch",), 0, 1000),
            TensorSpec("encoder_hidden_states", "float32", ("batch", "text_seq", 768)),
            TensorSpec("guidance_scale", "float32", (1,)),
        ),
        outputs=(TensorSpec("out_sample", "float32", ("batch", 4, "latent_height", "latent_width")),),
        dims={"batch": Dim("batch", 1, 2, 4), "latent_height": Dim("latent_height", **latent),
              "latent_width": Dim("latent_width", **latent), "text_seq": Dim("text_seq", 77, 77, 154, 77)},
    )


def static_io() -> IOSpec:
    return narrow(unet_io(), {"batch": Range(2, 2, 2), "latent_height": Range(64, 64, 64),
                              "latent_width": Range(64, 64, 64), "text_seq": Range(77, 77, 77)}, "unet")


@pytest.fixture
def fake_gpus(monkeypatch):
    def use(*gpus):
        monkeypatch.setattr(host, "gpus", lambda: tuple(gpus))
    return use


# -- TensorRT: pure pieces --------------------------------------------------------------------
def test_profile_shapes_cover_every_dynamic_input():
    assert trtb.profile_shapes(unet_io()) == [
        ("sample", (1, 4, 32, 32), (2, 4, 64, 64), (4, 4, 96, 96)),
        ("timestep", (1,), (2,), (4,)),
        ("encoder_hidden_states", (1, 77, 768), (2, 77, 768), (4, 154, 768)),
    ]   # guidance_scale has no symbolic dim: fixed in the graph, no profile entry


def test_profile_shapes_static_keeps_every_symbolic_input():
    io = static_io()
    assert is_static(io)
    shapes = trtb.profile_shapes(io)
    assert [s[0] for s in shapes] == ["sample", "timestep", "encoder_hidden_states"]
    assert all(lo == opt == hi for _, lo, opt, hi in shapes)
    assert shapes[0][1] == (2, 4, 64, 64)


@pytest.mark.parametrize("options, flags", [
    ({}, []),
    ({"refit": True}, ["REFIT"]),
    ({"weight_streaming": "1"}, ["WEIGHT_STREAMING"]),
    ({"refit": "true", "weight_streaming": True}, ["REFIT", "WEIGHT_STREAMING"]),
    ({"refit": "0", "weight_streaming": "false"}, []),
    ({"fp16": True}, []),
])
def test_builder_flags(options, flags):
    assert trtb.builder_flags(options) == flags


def test_engine_name():
    assert trtb.engine_name("0123abcd4567ef89") == "engine-0123abcd4567ef89.plan"


@pytest.mark.parametrize("value, want", [(1 << 30, 1 << 30), ("2048", 2048), ("25%", 250), ("100%", 1000)])
def test_streaming_budget(value, want):
    assert trtb.streaming_budget(value, 1000) == want


class _Err(enum.IntEnum):   # the shape of cuda-python's cudaError_t
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


def test_check_cuda_returns_values_and_raises_on_error():
    assert trtb._check_cuda((_Err.cudaSuccess,), "sync") is None
    assert trtb._check_cuda((_Err.cudaSuccess, 1234), "cudaMalloc") == 1234
    assert trtb._check_cuda((_Err.cudaSuccess, 5, 10), "cudaMemGetInfo") == (5, 10)
    with pytest.raises(EdgegenError, match="CUDA: cudaMalloc for sample failed: cudaErrorMemoryAllocation"):
        trtb._check_cuda((_Err.cudaErrorMemoryAllocation, None), "cudaMalloc for sample")


def test_check_cuda_on_real_bindings():
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    from cuda.bindings import runtime

    err = runtime.cudaMemGetInfo()
    if int(err[0]) == 0:
        free, total = trtb._check_cuda(err, "cudaMemGetInfo")
        assert 0 <= free <= total
    else:    # no driver here: the enum's name reaches the message
        with pytest.raises(EdgegenError, match=err[0].name):
            trtb._check_cuda(err, "cudaMemGetInfo")


def test_tensorrt_missing_names_the_extra_and_nvidia_index():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    why = backend_class("tensorrt").missing()
    assert "pip install 'edgegen[tensorrt]'" in why and "NVIDIA's package index" in why


def test_tensorrt_missing_asks_for_cuda_python(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *a):
        if name == "tensorrt":
            return object()
        if name.startswith("cuda."):
            raise ModuleNotFoundError(name)
        return real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    why = trtb.TensorRtBackend.missing()
    assert "cuda-python" in why and "edgegen[tensorrt]" in why


def test_tensorrt_binding_is_version_and_gpu_not_driver(fake_gpus, monkeypatch):
    fake_gpus(RTX_4090)
    monkeypatch.setattr(trtb.TensorRtBackend, "versions", lambda self: {"tensorrt": "10.13.3.9"})
    b = trtb.TensorRtBackend()
    assert b.binding() == {"backend": "tensorrt", "versions": {"tensorrt": "10.13.3.9"},
                           "gpu": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
    assert b.host()["driver"] == "575.57"


def test_tensorrt_refuses_an_uncompiled_graph(tmp_path):
    graph = tiny_graph(tmp_path)
    spec = ComponentSpec("unet", graph, tiny_io(), tmp_path)
    with pytest.raises(EdgegenError, match="edgegen compile --target tensorrt"):
        trtb.TensorRtBackend().load(spec)


# -- TensorRT-RTX: pure pieces ----------------------------------------------------------------
def test_rtx_profile_options_exact_strings():
    assert rtx.profile_options(unet_io()) == {
        "nv_profile_min_shapes": "sample:1x4x32x32,timestep:1,encoder_hidden_states:1x77x768,guidance_scale:1",
        "nv_profile_opt_shapes": "sample:2x4x64x64,timestep:2,encoder_hidden_states:2x77x768,guidance_scale:1",
        "nv_profile_max_shapes": "sample:4x4x96x96,timestep:4,encoder_hidden_states:4x154x768,guidance_scale:1",
    }


def test_rtx_profile_options_static():
    fixed = "sample:2x4x64x64,timestep:2,encoder_hidden_states:2x77x768,guidance_scale:1"
    assert rtx.profile_options(static_io()) == {
        "nv_profile_min_shapes": fixed, "nv_profile_opt_shapes": fixed, "nv_profile_max_shapes": fixed}


def test_rtx_provider_options(tmp_path):
    dyn = rtx.provider_options(unet_io(), None, False, {})
    assert set(dyn) == {"nv_profile_min_shapes", "nv_profile_opt_shapes", "nv_profile_max_shapes"}
    cache = tmp_path / "rtx-cache-abc"
    opts = rtx.provider_options(static_io(), cache, True, {"weight_streaming_budget": "512M"})
    assert opts["nv_runtime_cache_path"] == str(cache)
    assert opts["enable_cuda_graph"] == "1"
    assert opts["nv_weight_streaming_budget"] == "512M"
    assert rtx.provider_options(unet_io(), None, False, {"weight_streaming_budget": 0})["nv_weight_streaming_budget"] == "0"
    assert all(isinstance(v, str) for v in opts.values())


@pytest.mark.parametrize("cc, ok", [
    ("8.6", True), ("8.9", True), ("12.0", True), ("12.1", True),
    ("9.0", False), ("8.0", False), ("10.0", False), ("7.5", False), ("8.7", False), (None, False), ("x", False),
])
def test_rtx_supported_compute_capability(cc, ok):
    assert rtx.supported_compute_capability(cc) is ok


def test_rtx_driver_and_gpu_checks():
    assert rtx.driver_missing("libedgegen-no-such-driver.so.1") == "no NVIDIA driver/GPU (libcuda.so.1 not loadable)"
    assert rtx.driver_missing("libc.so.6") is None
    assert rtx.gpu_unsupported([H100]) == "Hopper/Ampere-datacenter GPUs are not supported by TensorRT-RTX"
    assert rtx.gpu_unsupported([H100, RTX_4090]) is None
    assert rtx.gpu_unsupported([]) is None


def test_rtx_missing(monkeypatch, fake_gpus):
    if importlib.util.find_spec(rtx.TensorRtRtxBackend.library) is None:
        assert "pip install 'edgegen[rtx]'" in rtx.TensorRtRtxBackend.missing()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == rtx.TensorRtRtxBackend.library
                        else real(name, *a))
    monkeypatch.setattr(rtx, "_LIBCUDA", "libedgegen-no-such-driver.so.1")
    assert rtx.TensorRtRtxBackend.missing() == "no NVIDIA driver/GPU (libcuda.so.1 not loadable)"
    monkeypatch.setattr(rtx, "_LIBCUDA", "libc.so.6")
    fake_gpus(H100)
    assert rtx.TensorRtRtxBackend.missing() == "Hopper/Ampere-datacenter GPUs are not supported by TensorRT-RTX"
    fake_gpus(RTX_4090)
    assert rtx.TensorRtRtxBackend.missing() is None


def test_rtx_binding(fake_gpus, monkeypatch):
    fake_gpus(RTX_4090)
    monkeypatch.setattr(rtx.TensorRtRtxBackend, "versions",
                        lambda self: {"onnxruntime_ep_nv_tensorrt_rtx_cu13": "0.5.0", "onnxruntime": "1.32.0"})
    b = rtx.TensorRtRtxBackend()
    assert b.binding() == {"backend": "tensorrt-rtx", "compute_capability": "8.9",
                           "versions": {"onnxruntime_ep_nv_tensorrt_rtx_cu13": "0.5.0", "onnxruntime": "1.32.0"}}
    assert "onnxruntime_ep_nv_tensorrt_rtx_cu13" in b.library_packages()


def test_rtx_refuses_hopper_before_loading_the_plugin(tmp_path, fake_gpus):
    fake_gpus(H100)
    spec = ComponentSpec("unet", tiny_graph(tmp_path), tiny_io(), tmp_path)
    with pytest.raises(EdgegenError, match="not supported by TensorRT-RTX.*H100.*9.0"):
        rtx.TensorRtRtxBackend().load(spec)


def test_rtx_placement_counts_nodes_per_provider(tmp_path):
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    sess = ort.InferenceSession(str(tiny_graph(tmp_path)), so, providers=["CPUExecutionProvider"])
    info = sess.get_provider_graph_assignment_info()
    assert rtx.placement(info, "NvTensorRTRTXExecutionProvider") == (0, ["Mul", "Add"])
    assert rtx.placement(info, "CPUExecutionProvider") == (2, [])


# -- building and running (GPU hosts only) ----------------------------------------------------
def tiny_io() -> IOSpec:
    lat = {"min": 8, "opt": 8, "max": 16, "multiple": 8}
    shape = ("batch", 4, "latent_height", "latent_width")
    return IOSpec((TensorSpec("sample", "float32", shape),), (TensorSpec("out_sample", "float32", shape),),
                  {"batch": Dim("batch", 1, 1, 2), "latent_height": Dim("latent_height", **lat),
                   "latent_width": Dim("latent_width", **lat)})


def tiny_graph(root):
    """out_sample = sample * 2 + 1, with the IOSpec's dims as symbolic ONNX dims."""
    shape = ["batch", 4, "latent_height", "latent_width"]
    two, one = (helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("two", 2.0), ("one", 1.0)))
    g = helper.make_graph([helper.make_node("Mul", ["sample", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["out_sample"])],
                          "tiny", [helper.make_tensor_value_info("sample", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, shape)], [two, one])
    path = root / "unet" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def _trt_skip_reason() -> str | None:
    why = trtb.TensorRtBackend.missing()
    if why is None and not host.gpus():
        why = "no NVIDIA GPU found (NVML or nvidia-smi)"
    return why


def _build_and_run(backend, tmp_path, static: bool):
    io = tiny_io()
    if static:
        io = narrow(io, {"batch": Range(1, 1, 1), "latent_height": Range(8, 8, 8), "latent_width": Range(16, 16, 16)}, "unet")
    spec = ComponentSpec("unet", tiny_graph(tmp_path), io, tmp_path, None, static)
    out_dir = tmp_path / "compiled" / "unet"
    built = backend.build(spec, out_dir, "0123abcd4567ef89")
    assert all((out_dir / f).is_file() for f in built.files) and built.graph in built.files
    comp = backend.load(ComponentSpec("unet", out_dir / built.graph, io, tmp_path, built.info, static))
    shapes = [(1, 4, 8, 16)] * 2 if static else [(1, 4, 8, 8), (2, 4, 16, 8), (1, 4, 8, 8)]
    for i, shape in enumerate(shapes):   # repeated shapes replay the CUDA graph / reuse the buffers
        x = np.random.default_rng(i).standard_normal(shape, dtype=np.float32)
        np.testing.assert_allclose(comp(sample=x)["out_sample"], x * 2 + 1, rtol=1e-5, atol=1e-5)
    with pytest.raises(EdgegenError, match="unet"):
        comp(sample=np.zeros((1, 4, 24, 8), np.float32))
    return built


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static-cuda-graph"])
def test_tensorrt_build_and_run(tmp_path, static):
    reason = _trt_skip_reason()
    if reason:
        pytest.skip(reason)
    built = _build_and_run(trtb.TensorRtBackend(), tmp_path, static)
    assert built.graph == "engine-0123abcd4567ef89.plan"
    assert "timing-0123abcd4567ef89.cache" in built.files


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static-cuda-graph"])
def test_tensorrt_rtx_build_and_run(tmp_path, static):
    reason = rtx.TensorRtRtxBackend.missing()   # the extra, NO_DRIVER or UNSUPPORTED_GPU, verbatim
    if reason:
        pytest.skip(reason)
    built = _build_and_run(rtx.TensorRtRtxBackend(), tmp_path, static)
    assert built.graph == "model_ctx.onnx" and built.info["cache_dir"] == "rtx-cache-0123abcd4567ef89"
