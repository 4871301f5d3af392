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
from edgegen.optimize.passes.int4 import int4_convs, pack_int4, quantize_blocks
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

def test_int4_pack_and_blockwise_conv():
    q = np.array([[-8, 7, 3], [1, -1, 0]], np.int8)
    t = h.make_tensor("q", T.INT4, q.shape, pack_int4(q), raw=True)
    assert (numpy_helper.to_array(t) == q).all() and len(t.raw_data) == 3
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64, 3, 3)).astype(np.float32)
    qw, scale = quantize_blocks(w, 32, axis=1)
    assert qw.shape == w.shape and scale.shape == (16, 2, 3, 3) and qw.min() >= -8 and qw.max() <= 7
    deq = (np.moveaxis(qw, 1, -1).reshape(16, 3, 3, 2, 32) * np.moveaxis(scale, 1, -1)[..., None]).reshape(16, 3, 3, 64)
    assert rel_err(w, np.moveaxis(deq, -1, 1)) < 0.15
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 64, 8, 8])
    y = h.make_tensor_value_info("y", T.FLOAT, [1, 16, 8, 8])
    conv = h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")
    model = h.make_model(h.make_graph([conv], "g", [x], [y], [numpy_helper.from_array(w, "w")]),
                         opset_imports=[h.make_opsetid("", 17)])
    feeds = {"x": rng.standard_normal((1, 64, 8, 8)).astype(np.float32)}
    ref = run(model, feeds)[0]
    m21 = G.upgrade_opset(model, 21)
    assert int4_convs(m21, {"conv"}, 32) == 1
    onnx.checker.check_model(m21)
    out = run(m21, feeds)[0]
    assert cosine(ref, out) > 0.98
    assert sum(G.initializer_bytes(m21).values()) < 0.2 * w.nbytes


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
