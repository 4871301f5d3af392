"""Optimizer building blocks on synthetic graphs: metrics, fp16 islands, masks, int4 packing,
streaming weight rewrite. Fast (no export)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

from edgegen.optimize import graph as G
from edgegen.optimize.gate import cosine, psnr, rel_err, ssim
from edgegen.optimize.passes.fp16 import convert, find_islands
from edgegen.optimize.passes.weight_only import dequantize_blocks, pack_int4, quantize_blocks
from edgegen.optimize.passes.prune import magnitude_mask, n_m_mask
from edgegen.optimize.registry import Thresholds


def run(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


# -- metrics ------------------------------------------------------------------------------

def test_metrics():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 40, 3)).astype(np.uint8)
    assert psnr(img, img) == 100.0 and ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    worse = np.clip(img + rng.normal(0, 40, img.shape), 0, 255).astype(np.uint8)
    assert 25 < psnr(img, noisy) < 35 and psnr(img, worse) < psnr(img, noisy)
    assert ssim(img, worse) < ssim(img, noisy) < 1.0
    assert ssim(img, noisy) == pytest.approx(ssim(noisy, img))
    # Constant images: SSIM reduces to the luminance term (2ab + c1) / (a^2 + b^2 + c1).
    a, b = np.full((16, 16, 3), 100, np.uint8), np.full((16, 16, 3), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1))
    x = rng.standard_normal(100).astype(np.float32)
    assert cosine(x, x) == pytest.approx(1.0) and cosine(x, -x) == pytest.approx(-1.0)
    assert rel_err(x, x * 1.1) == pytest.approx(0.1, rel=1e-5)
    assert np.isnan(cosine(x, np.full_like(x, np.nan))) and rel_err(x, np.full_like(x, np.inf)) == np.inf


def test_thresholds_combine_to_the_looser():
    a, b = Thresholds(0.99, 0.1, 30, 0.9), Thresholds(0.95, 0.3, 25, 0.95)
    assert a.loosest(b) == Thresholds(0.95, 0.3, 25, 0.9)
    assert a.with_overrides({"psnr": 40.0}).psnr == 40.0


# -- fp16 islands -------------------------------------------------------------------------

def _fragile_graph():
    """y = ((x + 1000) - 1000) * s + big/1e4 where big = x * 1e5: cancellation and overflow in fp16."""
    x = h.make_tensor_value_info("x", T.FLOAT, ["n", 8])
    y = h.make_tensor_value_info("y", T.FLOAT, ["n", 8])
    inits = [numpy_helper.from_array(np.array([1000.0], np.float32), "c"),
             numpy_helper.from_array(np.array([1e5], np.float32), "k"),
             numpy_helper.from_array(np.array([1e-4], np.float32), "kinv"),
             numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(np.float32), "s")]
    nodes = [h.make_node("Add", ["x", "c"], ["a"], name="add"), h.make_node("Sub", ["a", "c"], ["d"], name="sub"),
             h.make_node("Mul", ["d", "s"], ["e"], name="scale"),
             h.make_node("Mul", ["x", "k"], ["big"], name="blow_up"), h.make_node("Mul", ["big", "kinv"], ["back"], name="shrink"),
             h.make_node("Add", ["e", "back"], ["y"], name="out")]
    return h.make_model(h.make_graph(nodes, "fragile", [x], [y], inits), opset_imports=[h.make_opsetid("", 17)])


def test_fp16_islands_found_from_data():
    model = _fragile_graph()
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(-1, 1, (4, 8)).astype(np.float32)} for _ in range(3)]
    ref = run(model, samples[0])[0]
    plain = run(convert(model, []), samples[0])[0]
    assert not np.isfinite(plain).all() or rel_err(ref, plain) > 0.1  # plain fp16 is broken
    block, rounds = find_islands(model, samples)
    # The overflowing product and its consumer, and the cancellation (pulled in upstream).
    assert {"blow_up", "shrink", "sub", "add"} <= set(block)
    assert "scale" not in block and "out" not in block  # well-conditioned nodes stay fp16
    fixed = run(convert(model, block), samples[0])[0]
    assert rel_err(ref, fixed) < 2e-3, rounds
    assert rounds[0]["overflowing_tensors"] >= 1


def test_cast_round_trips_removed_between_fp32_nodes():
    m16 = convert(_fragile_graph(), ["add", "sub"])
    casts = [n for n in m16.graph.node if n.op_type == "Cast"]
    producer = {o: n for n in m16.graph.node for o in n.output}
    for c in casts:  # no Cast(fp32) directly fed by a Cast(fp16) of an fp32 tensor
        p = producer.get(c.input[0])
        assert not (p is not None and p.op_type == "Cast" and c.attribute[0].i == T.FLOAT and p.input[0] == "x")
    add = next(n for n in m16.graph.node if n.name == "add")
    assert add.input[0] == "x"  # the island reads the fp32 graph input itself


# -- pruning masks ------------------------------------------------------------------------

def test_two_four_mask_along_reduction_axis():
    w = np.random.default_rng(0).standard_normal((8, 12, 3, 3)).astype(np.float32)
    mask = n_m_mask(w, 2, 4, axis=1)
    groups = np.moveaxis(mask, 1, -1).reshape(8, 3, 3, 3, 4)
    assert (groups.sum(-1) == 2).all()
    # The kept ones are the two largest of each group.
    g = np.moveaxis(np.abs(w), 1, -1).reshape(8, 3, 3, 3, 4)
    kept_min = np.where(groups, g, np.inf).min(-1)
    dropped_max = np.where(groups, -np.inf, g).max(-1)
    assert (kept_min >= dropped_max).all()
    # A remainder shorter than M stays dense.
    m2 = n_m_mask(np.ones((6, 3)), 2, 4, axis=0)
    assert m2[4:].all() and m2[:4].sum(0).tolist() == [2, 2, 2]


def test_magnitude_mask_exact_sparsity():
    w = np.random.default_rng(1).standard_normal((64, 33)).astype(np.float32)
    mask = magnitude_mask(w, 0.3)
    assert (~mask).sum() == round(w.size * 0.3)
    assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()
    ties = magnitude_mask(np.ones((10,), np.float32), 0.5)
    assert (~ties).sum() == 5


# -- int4 ---------------------------------------------------------------------------------

def test_int4_pack_and_blockwise_quantization():
    q = np.array([[-8, 7, 3], [1, -1, 0]], np.int8)
    t = h.make_tensor("q", T.INT4, q.shape, pack_int4(q), raw=True)
    assert (numpy_helper.to_array(t) == q).all() and len(t.raw_data) == 3
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64, 3, 3)).astype(np.float32)
    for bits, tol in ((4, 0.15), (8, 0.01)):
        qw, scale = quantize_blocks(w, 32, axis=1, bits=bits)
        lim = (1 << (bits - 1))
        assert qw.shape == w.shape and scale.shape == (16, 2, 3, 3) and qw.min() >= -lim and qw.max() < lim
        assert rel_err(w, dequantize_blocks(qw, scale, 32, axis=1)) < tol


def test_bf16_bits_round_to_nearest_even():
    from edgegen.optimize.passes.bf16 import from_bf16_bits, to_bf16_bits

    x = np.array([1.0, -2.5, 3.14159, 1e-30, 65504.0, 1e30, np.inf, np.nan], np.float32)
    back = from_bf16_bits(to_bf16_bits(x))
    fin = np.isfinite(x)
    assert np.allclose(back[fin], x[fin], rtol=2 ** -8) and np.isinf(back[6]) and np.isnan(back[7])
    # Halfway cases go to even: 1 + 2^-8 is between 1 and 1 + 2^-7.
    assert from_bf16_bits(to_bf16_bits(np.array([1 + 2 ** -8], np.float32)))[0] == 1.0
    assert from_bf16_bits(to_bf16_bits(np.array([1 + 3 * 2 ** -8], np.float32)))[0] == 1 + 2 ** -6


# -- streaming rewrite on external data ----------------------------------------------------

def test_rewrite_weights_streams_external_data(tmp_path):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, 16)).astype(np.float32)
    x = h.make_tensor_value_info("x", T.FLOAT, ["n", 64])
    y = h.make_tensor_value_info("y", T.FLOAT, ["n", 16])
    nodes = [h.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"), h.make_node("MatMul", ["a", "w2"], ["y"], name="mm2")]
    model = h.make_model(h.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(w1, "w1"),
                                                              numpy_helper.from_array(w2, "w2")]),
                         opset_imports=[h.make_opsetid("", 17)])
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(model, str(src / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    seen = []
    files = G.rewrite_weights(src / "model.onnx", tmp_path / "dst", lambda n, a: (seen.append(n), a * 0)[1], {"w1"})
    assert files == ["model.onnx", "model.onnx.data"] and seen == ["w1"]
    out = onnx.load(str(tmp_path / "dst" / "model.onnx"))
    arrs = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert (arrs["w1"] == 0).all() and (arrs["w2"] == w2).all()


def test_stage_gives_libraries_loadable_external_data(tmp_path):
    """Libraries get a staged copy of a graph; onnx refuses external data behind symbolic
    links or hard links, so the data must be a plain file there (real-size UNets hit this)."""
    w = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 64])
    y = h.make_tensor_value_info("y", T.FLOAT, [1, 32])
    model = h.make_model(h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x], [y],
                                      [numpy_helper.from_array(w, "w")]), opset_imports=[h.make_opsetid("", 17)])
    (tmp_path / "art").mkdir()
    onnx.save_model(model, str(tmp_path / "art" / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)
    staged = G.stage(tmp_path / "art" / "model.onnx", tmp_path / "stage")
    loaded = onnx.load(str(staged))
    assert (numpy_helper.to_array(loaded.graph.initializer[0]) == w).all()


# -- weight-only int4/int8, streaming ------------------------------------------------------

def _linear_zoo(rng):
    """The layouts exporters write for nn.Linear and Conv: MatMul [K, N], MatMul behind a
    Transpose of [N, K] (dynamo before folding), Gemm transB=1 with bias, Conv; plus
    first/last layers the skip list keeps in float."""
    K = 64
    ws = {"w_first": rng.standard_normal((8, K)), "w_mm": rng.standard_normal((K, K)),
          "w_nk": rng.standard_normal((K, K)), "w_gemm": rng.standard_normal((K, K)),
          "b_gemm": rng.standard_normal(K), "w_conv": rng.standard_normal((K, K, 3, 3)) * 0.1,
          "w_last": rng.standard_normal((K, 8))}
    nodes = [h.make_node("MatMul", ["x", "w_first"], ["a0"], name="first"),
             h.make_node("MatMul", ["a0", "w_mm"], ["a1"], name="mm"),
             h.make_node("Transpose", ["w_nk"], ["w_nk_t"], perm=[1, 0], name="tr"),
             h.make_node("MatMul", ["a1", "w_nk_t"], ["a2"], name="mm_t"),
             h.make_node("Gemm", ["a2", "w_gemm", "b_gemm"], ["a3"], transB=1, name="gemm"),
             h.make_node("Reshape", ["a3", "shape4"], ["a4"], name="to4d"),
             h.make_node("Conv", ["a4", "w_conv"], ["a5"], pads=[1, 1, 1, 1], name="conv"),
             h.make_node("Reshape", ["a5", "shape2"], ["a6"], name="to2d"),
             h.make_node("MatMul", ["a6", "w_last"], ["y"], name="last")]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in ws.items()]
    inits += [numpy_helper.from_array(np.array([1, K, 1, 1], np.int64), "shape4"),
              numpy_helper.from_array(np.array([1, K], np.int64), "shape2")]
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 8])
    y = h.make_tensor_value_info("y", T.FLOAT, [1, 8])
    return h.make_model(h.make_graph(nodes, "g", [x], [y], inits), opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("name,config,cos", [("int4", {}, 0.97), ("int4", {"format": "qdq"}, 0.97),
                                             ("int8-weights", {}, 0.999)])
def test_weight_only_streams_every_linear_layout(tmp_path, name, config, cos):
    from edgegen.optimize.registry import PassContext, get_pass

    rng = np.random.default_rng(0)
    model = _linear_zoo(rng)
    feeds = {"x": rng.standard_normal((1, 8)).astype(np.float32)}
    ref = run(model, feeds)[0]
    fp32_bytes = sum(G.initializer_bytes(model).values())
    (tmp_path / "src").mkdir()
    onnx.save_model(model, str(tmp_path / "src" / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)
    p = get_pass(name, **config)
    res = p.apply(PassContext("unet", "denoiser", tmp_path / "src" / "model.onnx", tmp_path / "dst", None, []))
    out = onnx.load(str(tmp_path / "dst" / res.files[0]))
    ops = [n.op_type for n in out.graph.node]
    assert "Transpose" not in ops and ops.count("Conv") == 1
    linear = "MatMulNBits" if config.get("format") != "qdq" else "DequantizeLinear"
    assert ops.count(linear) == (3 if linear == "MatMulNBits" else 4)
    assert res.report["matmuls"] == 3 and res.report["convs"] == 1
    assert sorted(res.report["skipped_nodes"]) == ["first", "last"]
    got = ort.InferenceSession(str(tmp_path / "dst" / res.files[0]), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert cosine(ref, got) > cos
    # The recorded weight error is that of the graph ORT runs: error of the dequantized
    # weight, bounded by half a quantization step per element.
    err = res.report["weight_error"]["per_layer"]
    qmax = 7 if name == "int4" else 127
    assert set(err) == {"mm", "mm_t", "gemm", "conv"} and all(0 < e < 1.0 / qmax for e in err.values())
    size = sum(G.initializer_bytes(out).values())
    assert size < (0.25 if name == "int4" else 0.4) * fp32_bytes


def test_matmulnbits_dequantization_matches_onnxruntime():
    """weight_only's reading of ORT's packed layout (used for weight_error) equals what
    MatMulNBits computes: x @ dequantized == ORT's output."""
    from edgegen.optimize.passes.weight_only import _quantize_linear

    rng = np.random.default_rng(1)
    for bits in (4, 8):
        w = rng.standard_normal((80, 24)).astype(np.float32)  # K not a multiple of the block
        packed, scales, deq = _quantize_linear(w, bits, 32, "matmulnbits")
        node = h.make_node("MatMulNBits", ["x", "q", "s"], ["y"], domain="com.microsoft", K=80, N=24, bits=bits,
                           block_size=32)
        g = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 80])],
                         [h.make_tensor_value_info("y", T.FLOAT, [2, 24])],
                         [numpy_helper.from_array(packed, "q"), numpy_helper.from_array(scales, "s")])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
        x = rng.standard_normal((2, 80)).astype(np.float32)
        np.testing.assert_allclose(run(m, {"x": x})[0], x @ deq, rtol=1e-4, atol=1e-4)
        assert 0 < rel_err(w, deq) < (0.15 if bits == 4 else 0.01)


def test_fp16_keeps_sequence_ops_out_of_fp32_islands():
    """Blocking a SequenceAt made ORT's converter cast a sequence (invalid graph; SANA's
    unoptimized dynamo export has SplitToSequence -> SequenceAt)."""
    x = h.make_tensor_value_info("x", T.FLOAT, [4, 8])
    y = h.make_tensor_value_info("y", T.FLOAT, [2, 8])
    nodes = [h.make_node("SplitToSequence", ["x", "two"], ["seq"], axis=0, name="split"),
             h.make_node("SequenceAt", ["seq", "zero"], ["a"], name="at0"),
             h.make_node("SequenceAt", ["seq", "one"], ["b"], name="at1"),
             h.make_node("Mul", ["a", "b"], ["y"], name="mul")]
    inits = [numpy_helper.from_array(np.array([2, 2], np.int64), "two"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one")]
    model = h.make_model(h.make_graph(nodes, "g", [x], [y], inits), opset_imports=[h.make_opsetid("", 17)])
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)}
    m16 = convert(model, {"at0", "mul"})
    assert [n for n in m16.graph.node if n.op_type == "Cast" and n.input[0] == "seq"] == []
    np.testing.assert_allclose(run(m16, feeds)[0], run(model, feeds)[0], rtol=1e-2, atol=1e-3)


def test_weight_transposes_fold_for_library_quantizers(tmp_path):
    """int8-dynamic (onnxruntime.quantization) quantizes a MatMul whose weight sits behind a
    Transpose once edgegen folds it; before, such graphs had 'no MatMul weights'."""
    from edgegen.optimize.registry import PassContext, get_pass

    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 64)).astype(np.float32)  # [N, K], as nn.Linear stores it
    x = h.make_tensor_value_info("x", T.FLOAT, [2, 64])
    y = h.make_tensor_value_info("y", T.FLOAT, [2, 32])
    nodes = [h.make_node("Transpose", ["w"], ["wt"], perm=[1, 0], name="tr"),
             h.make_node("MatMul", ["x", "wt"], ["y"], name="mm")]
    model = h.make_model(h.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(w, "w")]),
                         opset_imports=[h.make_opsetid("", 17)])
    assert [n.name for n in G.weight_transposes(model)] == ["tr"]
    feeds = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    ref = run(model, feeds)[0]
    (tmp_path / "src").mkdir()
    onnx.save_model(model, str(tmp_path / "src" / "model.onnx"))
    res = get_pass("int8-dynamic", skip=False).apply(
        PassContext("unet", "denoiser", tmp_path / "src" / "model.onnx", tmp_path / "dst", None, []))
    out = onnx.load(str(tmp_path / "dst" / res.files[0]))
    assert "MatMulInteger" in [n.op_type for n in out.graph.node] and res.report["quantized_nodes"] == 1
    got = ort.InferenceSession(str(tmp_path / "dst" / res.files[0]), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert cosine(ref, got) > 0.999


@pytest.mark.parametrize("name,tol", [("int4", 0.15), ("int8-weights", 0.01)])
def test_embedding_tables_become_gather_block_quantized(tmp_path, name, tol):
    from edgegen.optimize.registry import PassContext, get_pass

    rng = np.random.default_rng(0)
    table = rng.standard_normal((100, 64)).astype(np.float32)
    ids = h.make_tensor_value_info("ids", T.INT64, [1, 5])
    y = h.make_tensor_value_info("y", T.FLOAT, [1, 5, 64])
    w = rng.standard_normal((64, 64)).astype(np.float32)
    nodes = [h.make_node("Gather", ["table", "ids"], ["e"], name="token_embedding"),
             h.make_node("MatMul", ["e", "w"], ["y"], name="mm")]
    model = h.make_model(h.make_graph(nodes, "g", [ids], [y], [numpy_helper.from_array(table, "table"),
                                                                numpy_helper.from_array(w, "w")]),
                         opset_imports=[h.make_opsetid("", 17)])
    feeds = {"ids": np.array([[0, 7, 99, 7, 42]], np.int64)}
    ref = run(model, feeds)[0]
    (tmp_path / "src").mkdir()
    onnx.save_model(model, str(tmp_path / "src" / "model.onnx"))
    res = get_pass(name, skip=False).apply(
        PassContext("te", "text_encoder", tmp_path / "src" / "model.onnx", tmp_path / "dst", None, []))
    out = onnx.load(str(tmp_path / "dst" / res.files[0]))
    assert [n.op_type for n in out.graph.node] == ["GatherBlockQuantized", "MatMulNBits"]
    assert res.report["embeddings"] == 1
    got = ort.InferenceSession(str(tmp_path / "dst" / res.files[0]), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert rel_err(ref, got) < tol
    # The recorded error of the table is that of the table ORT gathers from.
    assert 0 < res.report["weight_error"]["per_layer"]["token_embedding"] < tol


def test_int8_outer_convs_are_the_full_resolution_resnet_convs():
    """int8:outer_convs=false keeps float the resnet convs of the first down block and of the
    last up block, whatever the U-Net's depth (SD1.5: up_blocks.3; SDXL: up_blocks.2);
    int8:resamplers=false keeps float the down/upsamplers' convs, and nothing else."""
    from edgegen.optimize.passes.quant import _outer_convs, _quantizable

    for last in (3, 2):
        paths = [f"down_blocks.{d}/resnets.{r}/conv{c}" for d in range(last + 1) for r in (0, 1) for c in (1, 2)]
        paths += [f"up_blocks.{u}/resnets.{r}/conv{c}" for u in range(last + 1) for r in (0, 1, 2) for c in (1, 2)]
        paths += ["down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q", "up_blocks.0/upsamplers.0/conv",
                  f"up_blocks.{last}/resnets.0/conv_shortcut", "down_blocks.0/downsamplers.0/conv"]
        nodes, inits = [], []
        for i, p in enumerate(paths):
            op = "MatMul" if "to_q" in p else "Conv"
            w = numpy_helper.from_array(np.zeros((2, 2) if op == "MatMul" else (2, 2, 1, 1), np.float32), f"w{i}")
            inits.append(w)
            nodes.append(h.make_node(op, ["x", w.name], [f"y{i}"], name=f"/model/{p}/{op}"))
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, None)],
                         [h.make_tensor_value_info(f"y{i}", T.FLOAT, None) for i in range(len(paths))], inits)
        m = h.make_model(g)
        want = {f"/model/{p}/Conv" for p in paths
                if p.startswith(("down_blocks.0/resnets", f"up_blocks.{last}/resnets")) and p.endswith(("conv1", "conv2"))}
        assert _outer_convs(m, [n.name for n in nodes]) == want and len(want) == 4 + 6
        kept, skipped = _quantizable(m, ("Conv", "MatMul"), skip=False, outer_convs=False)
        assert set(skipped) == want and not want & set(kept)
        assert _quantizable(m, ("Conv", "MatMul"), skip=False)[1] == []
        resamplers = {"/model/up_blocks.0/upsamplers.0/conv/Conv", "/model/down_blocks.0/downsamplers.0/conv/Conv"}
        kept, skipped = _quantizable(m, ("Conv", "MatMul"), skip=False, resamplers=False)
        assert set(skipped) == resamplers and not resamplers & set(kept)
        # resamplers=up|down names the int8 ones: the other kind stays float
        up, down = sorted(resamplers, reverse=True)
        assert "upsamplers" in up and "downsamplers" in down
        for value, floats in (("up", {down}), ("down", {up})):
            kept, skipped = _quantizable(m, ("Conv", "MatMul"), skip=False, resamplers=value)
            assert set(skipped) == floats and resamplers - floats <= set(kept)


def test_int8_resamplers_takes_a_boolean_or_a_kind():
    from edgegen.optimize.registry import get_pass
    from edgegen.runtimes.errors import EdgegenError

    for good in (True, False, "up", "down"):
        assert get_pass("int8", resamplers=good).config["resamplers"] == good
    for bad in ("both", 1, "Up"):
        with pytest.raises(EdgegenError, match=r"resamplers must be true, false, up or down .*not"):
            get_pass("int8", resamplers=bad)


def test_int8_attn_proj_quantizes_the_transformer_blocks_proj_in_out_only():
    """int8:attn_proj=true takes the attention blocks' proj_in/proj_out off the float list and
    keeps everything else there (conv_in/conv_out, norms, time embedding)."""
    from edgegen.optimize.passes.quant import _quantizable

    paths = ["conv_in", "time_embedding/linear_1", "down_blocks.0/attentions.0/proj_in",
             "down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q", "down_blocks.0/attentions.0/proj_out",
             "down_blocks.0/resnets.0/conv1", "conv_norm_out", "conv_out"]
    nodes, inits = [], []
    for i, p in enumerate(paths):
        w = numpy_helper.from_array(np.zeros((2, 2, 1, 1), np.float32), f"w{i}")
        inits.append(w)
        nodes.append(h.make_node("Conv", ["x", w.name], [f"y{i}"], name=f"/model/{p}/Conv"))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, None)],
                     [h.make_tensor_value_info(f"y{i}", T.FLOAT, None) for i in range(len(paths))], inits)
    m = h.make_model(g)
    proj = {"/model/down_blocks.0/attentions.0/proj_in/Conv", "/model/down_blocks.0/attentions.0/proj_out/Conv"}
    kept, skipped = _quantizable(m, ("Conv",), skip=True)
    assert proj <= set(skipped) and "/model/conv_in/Conv" in skipped
    kept2, skipped2 = _quantizable(m, ("Conv",), skip=True, attn_proj=True)
    assert set(skipped2) == set(skipped) - proj and proj <= set(kept2)


@pytest.mark.parametrize("method", ["percentile", "entropy", "minmax", "distribution"])
def test_lean_ranges_equal_the_librarys_calibrator(tmp_path, method):
    """optimize/ranges.py builds onnxruntime's calibrator itself (to drop its copy of the weights
    before the session loads): its ranges must be create_calibrator's, method by method, on a
    model whose weights lie in external data as a big model's do."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.calibrate import load_tensors_data

    from edgegen.optimize.calibrate import FeedReader
    from edgegen.optimize.ranges import compute_ranges

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(8, 5)).astype(np.float32), "w2")
    g = h.make_graph([h.make_node("Conv", ["x", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                      h.make_node("Relu", ["c"], ["r"], name="relu"),
                      h.make_node("Transpose", ["r"], ["t"], name="tr", perm=[0, 2, 3, 1]),
                      h.make_node("MatMul", ["t", "w2"], ["y"], name="mm")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 6, 6])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 6, 6, 5])], [w1, w2])
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "model.onnx"
    onnx.save_model(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(path),
                    save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data",
                    size_threshold=0)
    feeds = [{"x": rng.normal(size=(1, 3, 6, 6)).astype(np.float32) * (i + 1)} for i in range(3)]
    options = {"percentile": 99.9, "symmetric": True}
    used = compute_ranges(path, FeedReader(feeds), method, ["Conv", "MatMul"], options, tmp_path / "ranges.json")
    got = load_tensors_data(tmp_path / "ranges.json")
    lib_opts = {"percentile": 99.9, "symmetric": True} if method != "distribution" else {}
    lib_method = getattr(CalibrationMethod, {"minmax": "MinMax"}.get(method, method.title()))
    assert used == lib_method
    lib = create_calibrator(path, ["Conv", "MatMul"], str(tmp_path / "aug.onnx"), lib_method,
                            use_external_data_format=True, extra_options=lib_opts)
    reader = FeedReader(feeds)
    for i in range(len(feeds)):
        reader.set_range(i, i + 1)
        lib.collect_data(reader)
    want = lib.compute_data()
    assert set(got.data) == set(want.data) and len(got.data) >= 3
    for name in want.data:
        np.testing.assert_allclose(np.asarray(got.data[name].range_value, np.float64),
                                   np.asarray(want.data[name].range_value, np.float64), rtol=1e-6)
    if method == "percentile":
        # The whole pass: quantize_static from the cache equals quantize_static in one call.
        from onnxruntime.quantization import QuantFormat, quantize_static

        common = dict(quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "MatMul"], per_channel=True,
                      calibrate_method=CalibrationMethod.Percentile,
                      extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        quantize_static(str(path), str(tmp_path / "cached.onnx"), None, calibration_cache_path=str(tmp_path / "ranges.json"),
                        **common)
        reader.rewind()
        common["extra_options"].update({"CalibPercentile": 99.9, "CalibTensorRangeSymmetric": True, "CalibStridedMinMax": 1})
        quantize_static(str(path), str(tmp_path / "one_call.onnx"), reader, **common)
        a, b = onnx.load(str(tmp_path / "cached.onnx")), onnx.load(str(tmp_path / "one_call.onnx"))
        assert len(a.graph.node) == len(b.graph.node) > 4
        assert {t.name: t.SerializeToString() for t in a.graph.initializer} == \
               {t.name: t.SerializeToString() for t in b.graph.initializer}
