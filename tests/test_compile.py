"""`edgegen compile` and load-time backends: OpenVINO executed here, every refusal one line."""
import json
import shutil

import numpy as np
import pytest
from helpers import assert_user_error, run_cli

from edgegen.runtimes import EdgegenError, Pipeline
from edgegen.runtimes.host import cpu_has_bf16

pytest.importorskip("openvino", reason="openvino is not installed: pip install 'edgegen[openvino]'")

FAMILIES = ["sd15", "sd21", "sd-turbo", "sdxl", "sdxl-turbo", "lcm-sd15", "flux-schnell", "flux-dev", "sd3-medium",
            "sd35-medium", "sd35-large", "sd35-large-turbo", "sana-1600m", "sana-sprint-1600m"]
FAST = ("--steps", 2, "--gate-prompts", 1)


def psnr(a, b):
    from edgegen.optimize.gate import psnr as p

    return p(a, b)


def compile_ok(src, out, *args):
    r = run_cli("compile", src, "--out", out, *FAST, *args)
    assert r.exit_code == 0, r.output
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def sd15_ov(tiny_export, tmp_path_factory):
    src, _ = tiny_export("sd15")
    out = tmp_path_factory.mktemp("ov") / "sd15-ov"
    compile_ok(src, out, "--target", "openvino", "--precision", "f32")
    return src, out


@pytest.mark.parametrize("family", FAMILIES)
def test_openvino_f32_matches_onnxruntime(tiny_export, tmp_path, family):
    src, _ = tiny_export(family)
    m = compile_ok(src, tmp_path / "ov", "--target", "openvino", "--precision", "f32")
    t = m["target"]
    assert t["backend"] == "openvino" and t["options"]["precision"] == "f32"
    assert t["gate"]["end_to_end"]["passed"] and t["gate"]["end_to_end"]["psnr"] >= 40
    assert all(c["gate"]["passed"] for c in m["components"].values())
    steps = 2
    ref = Pipeline.load(src)("a red fox in snow", steps=steps, seed=3)
    img = Pipeline.load(tmp_path / "ov")("a red fox in snow", steps=steps, seed=3)
    assert psnr(ref, img) >= 40


def test_compiled_artifact_runs_from_the_cli_and_reports(sd15_ov, tmp_path):
    src, ov = sd15_ov
    r = run_cli("generate", ov, "a red fox", "--steps", 2, "--out", tmp_path / "fox.png")
    assert r.exit_code == 0, r.output
    r = run_cli("info", ov, "--json")
    s = json.loads(r.output)["summary"]
    assert s["target"]["target"] == "openvino" and s["target"]["gate"]["passed"]
    m = json.loads((ov / "manifest.json").read_text())
    t = m["target"]
    for key in ("versions", "options", "shape_profile", "binding", "fingerprint", "cache_keys", "build", "parent"):
        assert key in t
    # every component's compiled model is named by its key, and the key differs per component
    keys = t["cache_keys"]
    assert len(set(keys.values())) == len(keys)
    for name, key in keys.items():
        assert m["components"][name]["compiled"]["blob"] == f"ov-{key}.blob"
        assert (ov / name / f"ov-{key}.blob").stat().st_size > 0


def test_compiled_openvino_artifact_imports_its_model_wherever_it_lies(sd15_ov, tmp_path, monkeypatch):
    """A compiled OpenVINO artifact carries the compiled model itself (export_model): a copy in
    another folder, read-only, loads it without compiling anything and gives the same image."""
    import os
    import stat

    import openvino as ov

    _, ov_art = sd15_ov
    ref = Pipeline.load(ov_art)("a red fox", steps=2, seed=1)
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(ov_art, moved)
    for p in moved.rglob("*"):
        if p.is_file():
            os.chmod(p, stat.S_IRUSR)

    def no_compile(*a, **k):
        raise AssertionError("a compiled artifact must not compile at load")

    monkeypatch.setattr(ov.Core, "compile_model", no_compile)
    assert np.array_equal(Pipeline.load(moved)("a red fox", steps=2, seed=1), ref)
    # A truncated blob is refused in one line naming the component and the file.
    unet = moved / "unet"
    blob = next(unet.glob("ov-*.blob"))
    os.chmod(blob, stat.S_IRUSR | stat.S_IWUSR)
    blob.write_bytes(blob.read_bytes()[:1000])
    from edgegen.runtimes.artifact import load_artifact
    from edgegen.runtimes.pipeline import component_spec, resolve_backend

    art = load_artifact(moved, verify=False)
    with pytest.raises(EdgegenError, match=f"unet: OpenVINO cannot import its compiled model {blob.name}"):
        resolve_backend(art, None, None, None, 2).load(component_spec(art, "unet"))


def test_backend_at_load_time_without_compiling(tiny_export):
    src, _ = tiny_export("sd15")
    a = Pipeline.load(src)("a red fox", steps=2, seed=1)
    b = Pipeline.load(src, backend="openvino", precision="f32")("a red fox", steps=2, seed=1)
    assert psnr(a, b) >= 40
    with pytest.raises(EdgegenError, match="unknown backend"):
        Pipeline.load(src, backend="tpu")


def test_default_precision_follows_the_cpu(tiny_export, tmp_path):
    src, _ = tiny_export("sd15")
    m = compile_ok(src, tmp_path / "ov", "--target", "openvino")
    assert m["target"]["options"]["precision"] == ("bf16" if cpu_has_bf16() else "f32")
    assert m["target"]["gate"]["end_to_end"]["passed"]


def test_static_profile_reshapes_and_refuses_other_sizes(tiny_export, tmp_path):
    src, _ = tiny_export("sd15")
    m = compile_ok(src, tmp_path / "ov", "--target", "openvino", "--precision", "f32",
                   "--height", 64, "--width", 64, "--batch", 1)
    assert m["target"]["shape_profile"]["static"]
    unet = m["components"]["unet"]["io"]["dims"]
    # CFG doubles the denoiser's batch; the text length is pinned at what the pipeline feeds
    assert unet["batch"] == {"min": 2, "opt": 2, "max": 2, "multiple": 1}
    assert unet["latent_height"]["min"] == unet["latent_height"]["max"] == 8
    assert unet["text_seq"]["min"] == unet["text_seq"]["max"] == 77
    pipe = Pipeline.load(tmp_path / "ov")
    assert pipe("a fox", steps=2).shape == (64, 64, 3)
    with pytest.raises(EdgegenError, match="outside"):
        pipe("a fox", steps=2, height=128, width=128)


def test_keep_f32_compiles_the_residual_stream_in_f32_and_is_closer_to_onnxruntime(tiny_export, tmp_path):
    """keep_f32=Add+Multiply under bf16: the marks land in the compiled IR (the runtime reads them
    back from it), the manifest counts them, and the image is closer to onnxruntime's f32 one."""
    if not cpu_has_bf16():
        pytest.skip("this CPU has no AVX512-BF16 or AMX: OpenVINO computes in f32 here, nothing to keep in f32")
    src, _ = tiny_export("sd15")
    size = ("--height", 64, "--width", 64, "--batch", 1)
    plain = compile_ok(src, tmp_path / "bf16", "--target", "openvino", "--precision", "bf16", *size)
    kept = compile_ok(src, tmp_path / "kept", "--target", "openvino", "--precision", "bf16", *size,
                      "--option", "keep_f32=Multiply+Add")
    assert kept["target"]["options"]["keep_f32"] == "Add+Multiply"
    unet = kept["components"]["unet"]["compiled"]
    assert unet["f32_layers"]["Add"] > 10 and unet["f32_layers"]["Multiply"] > 0
    assert "f32_layers" not in plain["components"]["unet"]["compiled"]
    xml = (tmp_path / "kept" / "unet" / "model.xml").read_text()
    assert xml.count("DisablePrecisionConversion") == sum(unet["f32_layers"].values())
    ref = Pipeline.load(src)("a red fox", steps=2, seed=3, height=64, width=64)
    got = {n: Pipeline.load(tmp_path / n)("a red fox", steps=2, seed=3, height=64, width=64) for n in ("bf16", "kept")}
    assert psnr(ref, got["kept"]) > psnr(ref, got["bf16"])


def test_static_cpu_compile_pins_the_sessions_dims(tiny_export, tmp_path):
    """A static profile reaches onnxruntime as free-dimension overrides: the session's inputs are
    concrete, so ORT folds the shape chains (on the CUDA EP those stay on the CPU and block graphs)."""
    src, _ = tiny_export("sd15")
    m = compile_ok(src, tmp_path / "cpu", "--target", "cpu", "--height", 64, "--width", 64, "--batch", 1)
    assert m["target"]["gate"]["end_to_end"]["passed"]
    pipe = Pipeline.load(tmp_path / "cpu")
    unet = pipe.component("unet")
    assert [i.shape for i in unet.session.get_inputs()] == [[2, 4, 8, 8], [2], [2, 77, 32]]
    dynamic = Pipeline.load(src).component("unet")
    assert dynamic.session.get_inputs()[0].shape == ["batch", 4, "latent_height", "latent_width"]


# -- refusals: one line, exit 2, nothing written ----------------------------------------------

def _nothing_written(tmp_path, name="out"):
    assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}.tmp")]


@pytest.mark.parametrize("args, fragments", [
    (("--target", "tpu"), ("unknown target 'tpu'", "openvino")),
    (("--target", "openvino", "--device", "rtx4060"), ("rtx4060", "NVIDIA GPU")),
    (("--target", "cuda", "--device", "cpu-avx2"), ("needs an NVIDIA GPU", "cpu-avx2")),
    (("--target", "tensorrt-rtx", "--device", "h100-80gb"), ("8.6, 8.9 and >= 12.0", "9.0")),
    (("--target", "openvino", "--device", "cpu-avx2", "--precision", "bf16"), ("cpu-avx2", "bf16")),
    (("--target", "openvino", "--height", 4096), ("4096", "outside")),
    (("--target", "openvino", "--height", "64:32"), ("--height 64:32",)),
    (("--target", "openvino", "--ov-device", "NPU"), ("NPU needs static shapes",)),
    (("--target", "tensorrt", "--device", "rtx4060"), ("tensorrt", "pip install 'edgegen[tensorrt]'")),
    (("--target", "openvino", "--precision", "f8"), ("precision 'f8'",)),
    (("--target", "openvino", "--threshold", "speed=1"), ("unknown gate metric 'speed'",)),
    (("--target", "openvino", "--option", "keep_fp32=Add"), ("no build option 'keep_fp32'", "keep_f32")),
    (("--target", "openvino", "--option", "keep_f32=add+1x"), ("keep_f32 takes OpenVINO layer types", "add+1x")),
    (("--target", "openvino", "--precision", "f32", "--option", "keep_f32=Add"), ("keep_f32 only matters", "f32")),
])
def test_bad_compile_requests(tiny_export, tmp_path, args, fragments):
    src, _ = tiny_export("sd15")
    r = run_cli("compile", src, "--out", tmp_path / "out", *FAST, *args)
    assert_user_error(r, *fragments)
    _nothing_written(tmp_path)


def test_out_exists_and_compiled_parent(sd15_ov, tmp_path):
    src, ov = sd15_ov
    (tmp_path / "out").mkdir()
    assert_user_error(run_cli("compile", src, "--target", "openvino", "--out", tmp_path / "out"),
                      "already exists", "--force")
    assert_user_error(run_cli("compile", ov, "--target", "openvino", "--out", tmp_path / "x"), "already compiled")


def test_corrupted_graph_is_refused(tiny_export, tmp_path):
    src, _ = tiny_export("sd15")
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    g = bad / "unet" / "model.onnx"
    data = bytearray(g.read_bytes())
    data[len(data) // 2] ^= 0xFF
    g.write_bytes(bytes(data))
    assert_user_error(run_cli("compile", bad, "--target", "openvino", "--out", tmp_path / "out"), "corrupted")
    _nothing_written(tmp_path)


def test_other_fingerprint_is_refused_with_how_to_recompile(sd15_ov, tmp_path):
    _, ov = sd15_ov
    moved = tmp_path / "moved"
    shutil.copytree(ov, moved)
    m = json.loads((moved / "manifest.json").read_text())
    m["target"]["binding"]["versions"]["openvino"] = "2024.0.0"
    (moved / "manifest.json").write_text(json.dumps(m))
    r = run_cli("generate", moved, "a fox", "--out", tmp_path / "x.png")
    assert_user_error(r, "versions.openvino: compiled for 2024.0.0", "edgegen compile", "--target openvino")
    with pytest.raises(EdgegenError, match="compiled for openvino"):
        Pipeline.load(moved, backend="onnxruntime")


@pytest.fixture(scope="module")
def variants(tiny_export, tmp_path_factory):
    """family -> pass -> optimized artifact (built once)."""
    cache = {}

    def get(family, flag):
        if (family, flag) not in cache:
            src, _ = tiny_export(family)
            out = tmp_path_factory.mktemp("opt") / f"{family}-{flag.strip('-').replace(':', '_').replace('=', '_')}"
            r = run_cli("optimize", src, *flag.split(), "--out", out, "--calibration-prompts", 2,
                        "--gate-prompts", 1, "--steps", 4)
            assert r.exit_code == 0, r.output
            cache[(family, flag)] = out
        return cache[(family, flag)]

    return get


@pytest.mark.parametrize("family", ["sd15", "flux-schnell"])
@pytest.mark.parametrize("flag", ["--int8", "--int8-nncf", "--fp16"])
def test_openvino_on_optimized_variants(variants, tmp_path, family, flag):
    src = variants(family, flag)
    m = compile_ok(src, tmp_path / "ov", "--target", "openvino")
    g = m["target"]["gate"]
    assert g["end_to_end"]["passed"], g
    assert all(c["gate"]["passed"] for c in m["components"].values())


def _qdq_around(path):
    """(int8 layers (Conv/MatMul reading a DequantizeLinear), those of them whose output feeds
    a QuantizeLinear, the other nodes that read a dequantized activation)."""
    import onnx

    m = onnx.load(str(path / "unet" / "model.onnx"), load_external_data=False)
    producer = {o: n for n in m.graph.node for o in n.output}
    op = lambda name: getattr(producer.get(name), "op_type", "")  # noqa: E731
    quantized = {n.name for n in m.graph.node if n.op_type in ("Conv", "MatMul") and op(n.input[0]) == "DequantizeLinear"}
    requantized = {producer[n.input[0]].name for n in m.graph.node
                   if n.op_type == "QuantizeLinear" and producer.get(n.input[0]) is not None} & quantized
    readers = {n.name for n in m.graph.node if n.name not in quantized and any(
        op(x) == "DequantizeLinear" and op(producer[x].input[0]) == "QuantizeLinear" for x in n.input)}
    return quantized, requantized, readers


def test_int8_without_output_qdq_quantizes_inputs_only_and_openvino_computes_it(variants, tmp_path):
    """int8:output_qdq=false puts Q/DQ on the int8 layers' inputs only (NNCF's placement): their
    outputs reach the bias add and the residual sum in float, and no other node reads a
    dequantized activation. The default requantizes every output (what onnxruntime fuses into
    QLinearConv), and float nodes (norms, skip Concats) read the rounded tensor. OpenVINO
    compiles the inputs-only graph within its gate, dynamic and static."""
    quantized, requantized, readers = _qdq_around(variants("sd15", "--int8"))
    assert quantized and requantized == quantized
    assert any("samplers" in n for n in quantized)
    assert any("norm" in n or "Concat" in n for n in readers)   # the residual stream, rounded
    src = variants("sd15", "--pass int8:output_qdq=false,resamplers=false")
    quantized, requantized, readers = _qdq_around(src)
    assert quantized and not requantized and not readers
    assert not any("samplers" in n for n in quantized)
    report = json.loads((src / "manifest.json").read_text())["components"]["unet"]["optimize"]["reports"][0]
    assert report["pass"] == "int8" and report["float_inputs_restored"] > 0
    for name, shape in (("dynamic", ()), ("static", ("--height", 64, "--width", 64, "--batch", 1))):
        m = compile_ok(src, tmp_path / name, "--target", "openvino", *shape)
        assert m["target"]["gate"]["end_to_end"]["passed"], name
        assert all(c["gate"]["passed"] for c in m["components"].values()), name


def _concat_fed_convs(path):
    """(Convs fed by a Concat, those of them that run int8: Concat -> Q -> DQ -> Conv)."""
    import onnx

    m = onnx.load(str(path / "unet" / "model.onnx"), load_external_data=False)
    producer = {o: n for n in m.graph.node for o in n.output}
    op = lambda name: getattr(producer.get(name), "op_type", "")  # noqa: E731
    fed, int8 = set(), set()
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        x = n.input[0]
        if op(x) == "Concat":
            fed.add(n.name)
        elif op(x) == "DequantizeLinear" and op(producer[x].input[0]) == "QuantizeLinear" \
                and op(producer[producer[x].input[0]].input[0]) == "Concat":
            fed.add(n.name)
            int8.add(n.name)
    return fed, int8


def test_nncf_int8_quantizes_the_convs_behind_a_concat_and_openvino_computes_it(variants, tmp_path):
    """--int8 keeps the up blocks' Concat-fed convs float because OpenVINO mis-rounds its Q/DQ
    there (next test); NNCF's placement (one scale across a Concat's inputs) quantizes them and
    OpenVINO's compile gate passes it, static too (where a quantized proj_out broke it: see
    optimize/passes/nncf_quant.py)."""
    fed, int8 = _concat_fed_convs(variants("sd15", "--int8"))
    assert fed and not int8
    src = variants("sd15", "--int8-nncf")
    fed_nncf, int8_nncf = _concat_fed_convs(src)
    assert int8_nncf and int8_nncf <= fed_nncf
    for name, shape in (("dynamic", ()), ("static", ("--height", 64, "--width", 64, "--batch", 1))):
        m = compile_ok(src, tmp_path / name, "--target", "openvino", *shape)
        assert m["target"]["gate"]["end_to_end"]["passed"], name
        assert all(c["gate"]["passed"] for c in m["components"].values()), name


def test_gate_fails_a_backend_that_computes_something_else(variants, tmp_path):
    """OpenVINO's CPU int8 transforms mis-round a signed int8 Q/DQ that sits behind a Concat
    (see optimize/passes/quant.py). An int8 graph quantized with those nodes included is a
    configuration OpenVINO computes wrongly: the compile gate refuses it in one line, writes
    nothing, while onnxruntime runs the same graph within the optimize gate."""
    src = variants("sd15", "--pass int8:concat_fed=true,reduce_range=false")
    r = run_cli("compile", src, "--target", "openvino", "--out", tmp_path / "out", *FAST)
    assert_user_error(r, "compile gate failed for openvino", "unet")
    _nothing_written(tmp_path)
    # the same configuration with the gate off is written, and marked as ungated
    m = compile_ok(src, tmp_path / "ungated", "--target", "openvino", "--no-gate")
    assert m["target"]["gate"] == {"skipped": True}


def test_bench_reports_the_compiled_backend_and_compile_time(sd15_ov):
    _, ov = sd15_ov
    r = run_cli("bench", ov, "--device", "cpu-avx2", "--runs", 1, "--warmup", 0, "--steps", 2, "--json")
    assert r.exit_code == 0, r.output
    e = json.loads(r.stdout)["runtimes"]["edgegen"]
    assert "openvino" in e["runtime"] and "compiled" in e["runtime"]
    assert e["compile"]["target"] == "openvino" and e["compile"]["seconds"] > 0
    assert e["compile"]["gate"]["passed"]


def test_cuda_target_without_the_cuda_ep_fails_before_work(tiny_export, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA EP; the refusal is for builds without it")
    src, _ = tiny_export("sd15")
    r = run_cli("compile", src, "--target", "cuda", "--device", "rtx4060", "--out", tmp_path / "out")
    assert_user_error(r, "no CUDAExecutionProvider", "edgegen[cuda]")
    _nothing_written(tmp_path)


def _with_options(src, out, *specs):
    from edgegen.optimize.steps.apply import apply_options
    from edgegen.optimize.steps.registry import get_option

    return apply_options(src, [get_option(name, **cfg) for name, cfg in specs], out, gate=False, steps=4)


def test_static_compile_of_a_deepcache_artifact_shapes_its_shallow_unet_as_the_denoiser(tiny_export, tmp_path):
    # The shallow U-Net runs at the CFG batch like the whole one; shaped as 'other' it was pinned
    # at batch 1 and the compile stopped on the gate's first feed.
    src, _ = tiny_export("sd15")
    dc = _with_options(src, tmp_path / "dc", ("deepcache", {"interval": 2}))
    m = compile_ok(dc, tmp_path / "ov", "--target", "openvino", "--precision", "f32",
                   "--height", 64, "--width", 64, "--batch", 1)
    dims = m["components"]["unet_shallow"]["io"]["dims"]["batch"]
    assert (dims["min"], dims["max"]) == (2, 2) and m["target"]["gate"]["end_to_end"]["passed"]
    ref = Pipeline.load(dc)("a red fox in snow", steps=4, seed=3)
    assert psnr(ref, Pipeline.load(tmp_path / "ov")("a red fox in snow", steps=4, seed=3)) >= 40


def test_cfg_cutoff_with_a_fixed_batch_is_refused_before_work(tiny_export, tmp_path):
    src, _ = tiny_export("sd15")
    cc = _with_options(src, tmp_path / "cc", ("cfg-cutoff", {"ratio": 0.5}))
    assert_user_error(run_cli("compile", cc, "--target", "openvino", "--out", tmp_path / "ov", "--batch", 1, *FAST),
                      "cfg-cutoff option runs the denoiser at two batch sizes", "leave out --batch")
    assert not (tmp_path / "ov").exists()
    compile_ok(cc, tmp_path / "ov-dynamic", "--target", "openvino", "--precision", "f32")   # dynamic: fine
