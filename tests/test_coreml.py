"""`edgegen export --target coreml`: conversion of every U-Net family, spec read-back, split-einsum
attention against diffusers' own, compression bits and gate, every refusal one line.

Conversion and spec checks run anywhere coremltools installs; prediction needs macOS and is
tested there only.
"""
import json
import platform
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_user_error, run_cli

pytest.importorskip("coremltools", reason="coremltools is not installed: pip install 'edgegen[coreml]'")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from edgegen.export.coreml_spec import read_package  # noqa: E402
from edgegen.runtimes.artifact import load_artifact  # noqa: E402
from edgegen.runtimes.iospec import IOSpec  # noqa: E402

ON_MAC = platform.system() == "Darwin"


def _unet_families() -> list[str]:
    from edgegen.export.families import families

    return [name for name, fam in families().items() if fam.arch == "unet"]


# Where each U-Net family's conversion is tested: exported in full (sd15, sd21), its denoiser
# quantized and converted (lcm-sd15, sdxl-turbo), a twin's graph (sd-turbo, sdxl), the rest one by one.
FULL, QUANTIZED, TWINS = ("sd15", "sd21"), ("lcm-sd15", "sdxl-turbo"), {"sd-turbo": "sd21", "sdxl": "sdxl-turbo"}
OTHER_UNETS = [f for f in _unet_families() if f not in (*FULL, *QUANTIZED, *TWINS)]
MAC_ONLY = pytest.mark.skipif(not ON_MAC, reason="CoreML prediction needs macOS (coremltools predict)")


def export_ok(out, family, *args):
    r = run_cli("export", family, "--tiny", "--target", "coreml", "--out", out, *args)
    assert r.exit_code == 0, r.output
    return json.loads((out / "manifest.json").read_text())


def nothing_written(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def check_specs(root, manifest):
    """Every package exists and declares exactly its IOSpec's tensors, read back from the file."""
    for name, comp in manifest["components"].items():
        pkg = root / comp["graph"]
        assert pkg.is_dir() and (pkg / "Manifest.json").is_file()
        spec = read_package(pkg)
        io = IOSpec.from_dict(comp["io"])
        sizes = {n: d.opt for n, d in io.dims.items()}
        assert all(d.min == d.max for d in io.dims.values()), f"{name} is not static"
        want = [(t.name, "int32" if t.dtype.startswith("int") else t.dtype, list(t.resolve(sizes))) for t in io.inputs]
        assert [(f["name"], f["dtype"], f["shape"]) for f in spec["inputs"]] == want
        want = [(t.name, t.dtype, list(t.resolve(sizes))) for t in io.outputs]
        assert [(f["name"], f["dtype"], f["shape"]) for f in spec["outputs"]] == want
        assert spec["inputs"] == manifest["target"]["components"][name]["spec"]["inputs"]
    return spec


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    out = tmp_path_factory.mktemp("cm") / "sd15-coreml"
    return out, export_ok(out, "sd15")


@pytest.fixture(scope="module")
def sd21_ane(tmp_path_factory):
    """The iPhone profile's settings, its attention overridden by an option, 6-bit palettes.
    (sd21's tiny UNet has 2-4 heads where the others have 8: split-einsum converts in a third of
    the time.)"""
    out = tmp_path_factory.mktemp("cm") / "sd21-ane"
    return out, export_ok(out, "sd21", "--device", "iphone-15-pro", "--attention", "split-einsum-v2",
                          "--palettize", "6", "--gate-prompts", "1")


def tiny_unet_component(family):
    """(pipeline, the family's denoiser Component narrowed to 64 px and one image, static)."""
    from edgegen.export.arch import get_arch
    from edgegen.export.components import MAX_BATCH
    from edgegen.export.coreml import pin
    from edgegen.export.families import get_family
    from edgegen.export.sizes import SizeRequest, narrow_export, resolution
    from edgegen.export.weights import Source, load_pipeline

    fam = get_family(family)
    pipe = load_pipeline(fam, Source("tiny"))
    arch = get_arch(fam.arch)
    req = SizeRequest(64, 64, "1")
    res = resolution(fam.tiny_resolution, arch.size_limits(pipe), req)
    comps = arch.components(fam, pipe, res)
    ios, recipe = narrow_export({c.name: c.io for c in comps}, arch.recipe(fam, pipe, res), req,
                                {te.component for te in fam.text_encoders}, MAX_BATCH)
    unet = next(c for c in comps if c.name == recipe["denoiser"])
    unet.io = pin(ios[unet.name])
    return pipe, unet


def save(model, path):
    from edgegen.export.coreml import quiet

    with quiet():
        model.save(str(path))
    return read_package(path)


def mil_ops(path):
    """Op types of a saved package's main function, read from its spec."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    fn = spec.mlProgram.functions["main"]
    return [op.type for op in fn.block_specializations[fn.opset].operations]


# -- attention --------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [None, 512])
@pytest.mark.parametrize("masked", [False, True])
def test_split_einsum_matches_sdpa(chunk, masked):
    from edgegen.export.coreml_attention import split_einsum

    g = torch.Generator().manual_seed(0)
    b, heads, dh, sq, sk = 2, 4, 8, 1100, 77     # 1100 = two 512-chunks and a tail
    q, k, v = (torch.randn(b, heads * dh, 1, s, generator=g) for s in (sq, sk, sk))
    mask = torch.randn(b, heads, 1, sk, generator=g) if masked else None
    ref = F.scaled_dot_product_attention(*(x.squeeze(2).view(b, heads, dh, -1).transpose(2, 3) for x in (q, k, v)),
                                         attn_mask=mask)
    ref = ref.transpose(2, 3).reshape(b, heads * dh, 1, sq)
    out = split_einsum(q, k, v, heads, mask, chunk)
    assert float((out - ref).abs().max()) < 1e-5


@pytest.mark.parametrize("family", ["sd15", "sd21"])
def test_split_einsum_unet_matches_original_attention(family):
    """The whole tiny UNet with the Neural Engine layout, against diffusers' processors, at a latent
    size where a query sequence is long enough for split-einsum-v2 to chunk (576 >= 512)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from edgegen.export.coreml_attention import CHUNK, SplitEinsumProcessor, attention_processors
    from edgegen.export.families import get_family
    from edgegen.export.weights import Source, load_pipeline

    pipe = load_pipeline(get_family(family), Source("tiny"))
    unet, cfg = pipe.unet.eval(), pipe.unet.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, 48, 48, generator=g)
    ehs = torch.randn(2, 77, cfg.cross_attention_dim, generator=g)
    kw = {}
    if cfg.addition_embed_type == "text_time":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pipe.text_encoder_2.config.projection_dim,
                                                              generator=g),
                                   "time_ids": torch.rand(2, 6, generator=g) * 512}
    t = torch.tensor([500.0, 20.0])
    seen = []
    with torch.no_grad():
        ref = unet(x, t, ehs, **kw).sample
        for impl in ("split-einsum", "split-einsum-v2"):
            with attention_processors(unet, impl):
                procs = list(unet.attn_processors.values())
                assert procs and all(isinstance(p, SplitEinsumProcessor) for p in procs)
                assert {p.chunk for p in procs} == {CHUNK if impl.endswith("v2") else None}
                out = unet(x, t, ehs, **kw).sample
            seen.append(float((out - ref).abs().max()))
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())   # restored
    assert max(seen) < 1e-4, seen


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_lean_palette_indices_pick_the_entries_coremltools_picks(bits):
    """The O(weight)-memory index search used while converting gives the values coremltools' own
    search gives, on palettized weights with rounding noise, and restores the original after."""
    from coremltools.optimize import _utils as optimize_utils

    from edgegen.export.coreml_compress import lean_lut_indices

    rng = np.random.default_rng(bits)
    table = rng.normal(size=2 ** bits).astype(np.float32)
    lut = table.reshape(1, 1, -1, 1)
    data = (table[rng.integers(0, table.size, (64, 48))] + rng.normal(0, 1e-4, (64, 48))).astype(np.float32)
    original = optimize_utils.find_indices_for_lut
    want = original(data, lut)
    with lean_lut_indices():
        got = optimize_utils.find_indices_for_lut(data, lut)
    assert optimize_utils.find_indices_for_lut is original
    assert got.dtype == want.dtype and np.array_equal(table[got.astype(int)], table[want.astype(int)])


# -- exports ----------------------------------------------------------------------------------

def test_sd15_exports_with_static_specs_and_default_settings(sd15):
    out, m = sd15
    assert set(m["components"]) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    load_artifact(out)                       # digests of every package file
    spec = check_specs(out, m)
    t = m["target"]
    assert t["target"] == "coreml" and t["settings"]["deployment_target"] == "macOS14"
    assert t["settings"]["from"] == {"deployment_target": "default", "compute_units": "default",
                                     "attention": "default"}
    for name, c in t["components"].items():
        assert c["spec"]["spec_version"] == 8 and "macOS14" in c["spec"]["deployment_target"]
        assert c["spec"]["metadata"]["compute_units"] == c["compute_units"] == "all"
        assert c["weight_bits"]["average_bits"] == 16.0 and not c["weight_bits"]["compressed"]
        assert c["bytes"] == sum(f["bytes"] for f in m["components"][name]["files"].values())
        assert c["conversion_seconds"] > 0
    # CFG doubles the denoiser batch; one image for the rest, at the tiny family's 64 px.
    unet = t["components"]["unet"]["spec"]
    assert unet["inputs"][0]["shape"] == [2, 4, 8, 8] and spec["inputs"][0]["shape"] == [1, 3, 64, 64]
    assert m["pipeline"]["sides"] == {"height": [64, 64], "width": [64, 64]}


def test_info_shows_coreml_packages(sd15):
    out, _ = sd15
    r = run_cli("info", out)
    assert r.exit_code == 0, r.output
    assert "CoreML" in r.output and "macOS14" in r.output and "unet" in r.output
    s = json.loads(run_cli("info", out, "--json").output)["summary"]["target"]
    assert s["target"] == "coreml" and s["components"]["unet"]["compute_units"] == "all"
    assert s["components"]["unet"]["inputs"][0] == "sample 2x4x8x8 float32"


def test_palettized_split_einsum_export_carries_bits_layout_gate_and_profile(sd21_ane):
    from diffusers.models.attention_processor import Attention

    from edgegen.export.families import get_family
    from edgegen.export.weights import Source, load_pipeline

    out, m = sd21_ane
    check_specs(out, m)
    t = m["target"]
    assert t["settings"]["from"] == {"deployment_target": "profile iphone-15-pro",
                                     "compute_units": "profile iphone-15-pro", "attention": "option"}
    assert t["settings"]["deployment_target"] == "iOS17" and t["settings"]["attention"] == "split-einsum-v2"
    unet = t["components"]["unet"]
    assert unet["compute_units"] == "cpu-and-ne" and unet["spec"]["metadata"]["compute_units"] == "cpu-and-ne"
    assert unet["spec"]["metadata"]["attention"] == "split-einsum-v2" and "iOS17" in unet["spec"]["deployment_target"]
    assert t["components"]["text_encoder"]["attention"] == "original"
    # The layout really is in the package: one softmax per head of every attention (the query is
    # 16 tokens at 64 px, below split-einsum-v2's chunk), where original attention has one per module.
    model = load_pipeline(get_family("sd21"), Source("tiny")).unet
    heads = [mod.heads for mod in model.modules() if isinstance(mod, Attention)]
    assert max(heads) > 1 and mil_ops(out / unet["mlpackage"]).count("softmax") == sum(heads)
    bits = unet["weight_bits"]
    assert set(bits["compressed"]) == {"6"} and bits["constexpr_ops"]["constexpr_lut_to_dense"] > 0
    assert bits["compressed"]["6"] > 10 * sum(bits["dense"].values())
    assert set(t["components"]["text_encoder"]["weight_bits"]["compressed"]) == {"6"}
    assert t["components"]["vae_decoder"]["weight_bits"]["compressed"] == {}   # the VAE stays 16-bit
    weights = out / "unet" / "model.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    fp16_bytes = 2 * (bits["compressed"]["6"] + bits["dense"]["16"])
    assert weights.stat().st_size < 0.45 * fp16_bytes        # 6/16 = 0.375, plus palettes and fp16 biases
    gate = t["compression"]["gate"]
    e2e = gate["end_to_end"]
    print(f"palettize-6 gate on tiny sd21: PSNR {e2e['psnr']} dB, SSIM {e2e['ssim']}, "
          f"unet rel err {gate['components']['unet']['rel_err']}")
    assert e2e["passed"] and e2e["psnr"] >= gate["thresholds"]["psnr"] and e2e["prompts"] == 1
    assert set(gate["components"]) == {"text_encoder", "unet"}
    assert all(0 < g["rel_err"] <= gate["thresholds"]["rel_err"] for g in gate["components"].values())


@pytest.mark.parametrize("family, compression, target, op", [
    ("lcm-sd15", "int8-weights", "macOS14", "constexpr_affine_dequantize"),
    ("sdxl-turbo", "int4-weights", "macOS15", "constexpr_blockwise_shift_scale"),
])
def test_linear_weights_store_their_bit_width(tmp_path, family, compression, target, op):
    """The family's denoiser, quantized in torch, converts with its weights stored at that width
    (these two families' denoisers are converted here only)."""
    from edgegen.export.coreml import convert, import_coremltools
    from edgegen.export.coreml_compress import COMPRESSIONS, compress

    ct = import_coremltools()
    comp = COMPRESSIONS[compression]
    _, unet = tiny_unet_component(family)
    report = compress(unet.module, comp)
    assert report["weights_compressed"] > 0
    model, _ = convert(ct, unet, "fp16", "all", target)
    spec = save(model, tmp_path / "unet.mlpackage")
    assert spec["spec_version"] == ct.target[target].value
    bits = spec["weights"]
    assert set(bits["compressed"]) == {str(comp.bits)} and bits["constexpr_ops"][op] > 0


def test_the_families_named_above_are_unet_families():
    """The split above names real U-Net families (a renamed one would silently drop out of it), and
    every twin's graph is one converted here."""
    named = {*FULL, *QUANTIZED, *TWINS}
    assert named <= set(_unet_families()), named - set(_unet_families())
    assert set(TWINS.values()) <= {*FULL, *QUANTIZED}


@pytest.mark.parametrize("family", OTHER_UNETS)
def test_every_unet_family_denoiser_converts(family, tmp_path):
    """Families not converted above (lcm-sd15 and sdxl-turbo: the int8/int4 test): their denoiser, the
    component that differs, converts and declares its IOSpec (their text encoders and VAEs are the
    classes the full exports convert)."""
    from edgegen.export.coreml import convert, import_coremltools
    from edgegen.export.families import get_family

    ct = import_coremltools()
    _, unet = tiny_unet_component(family)
    model, how = convert(ct, unet, "fp16", "all", "macOS14")
    spec = save(model, tmp_path / "unet.mlpackage")
    sizes = {n: d.opt for n, d in unet.io.dims.items()}
    assert [(f["name"], f["shape"]) for f in spec["inputs"]] == [(t.name, list(t.resolve(sizes)))
                                                               for t in unet.io.inputs]
    assert spec["outputs"][0]["shape"] == list(unet.io.outputs[0].resolve(sizes))
    fam = get_family(family)
    assert spec["inputs"][0]["shape"][0] == (2 if fam.guidance_mode == "cfg" and fam.guidance > 1 else 1)


@pytest.mark.parametrize("family, twin", TWINS.items())
def test_families_whose_tiny_unet_another_converts(family, twin):
    """sd-turbo and sdxl are not converted again: their tiny denoiser traces to the same graph as
    their twin's, which is converted above (sd21 has upcast_attention, which only diffusers'
    legacy attention processor reads)."""
    from edgegen.export.coreml import _capture, quiet

    graphs = []
    for name in (family, twin):
        _, unet = tiny_unet_component(name)
        feeds = unet.io.example({n: d.opt for n, d in unet.io.dims.items()})
        with quiet():
            traced = _capture(unet.module, tuple(torch.from_numpy(v) for v in feeds.values()), "torch.jit.trace")
        graphs.append([n.kind() for n in traced.inlined_graph.nodes()])
    assert graphs[0] == graphs[1] and len(graphs[0]) > 100


# -- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (("--palettize", "5"), "--palettize 5"),
    (("--compute-units", "bogus"), "--compute-units bogus"),
    (("--attention", "flash"), "--attention flash"),
    (("--palettize", "6", "--int4-weights"), "choose one"),
    (("--int4-weights",), "macOS15"),
    (("--precision", "fp32", "--compute-units", "cpu-and-ne"), "Neural Engine"),
    (("--batch", "1:2"), "static"),
    (("--device", "rtx4090"), "no CoreML"),
    (("--int8",), "ONNX optimize pass"),
    (("--no-gate",), "only applies with a compression"),
])
def test_bad_coreml_options_are_one_line_and_write_nothing(tmp_path, args, fragment):
    out = tmp_path / "x"
    r = run_cli("export", "sd15", "--tiny", "--target", "coreml", "--out", out, *args)
    assert_user_error(r, fragment)
    nothing_written(out)


def test_coreml_only_options_need_the_coreml_target(tmp_path):
    out = tmp_path / "x"
    assert_user_error(run_cli("export", "sd15", "--tiny", "--palettize", "6", "--out", out), "--target coreml")
    nothing_written(out)


def test_split_einsum_refused_for_a_transformer_denoiser(tmp_path):
    out = tmp_path / "x"
    r = run_cli("export", "flux-schnell", "--tiny", "--target", "coreml", "--attention", "split-einsum", "--out", out)
    assert_user_error(r, "U-Net families")
    nothing_written(out)


def test_family_coremltools_cannot_convert_names_the_op(tmp_path):
    out = tmp_path / "sana"
    r = run_cli("export", "sana-1600m", "--tiny", "--target", "coreml", "--out", out)
    assert_user_error(r, "cannot convert text_encoder", "op 'new_ones'")
    nothing_written(out)


def test_failing_gate_refuses_and_writes_nothing(tmp_path):
    out = tmp_path / "p4"
    r = run_cli("export", "sd15", "--tiny", "--target", "coreml", "--palettize", "4", "--threshold", "psnr=99",
                "--out", out)
    assert_user_error(r, "failed the quality gate", "psnr")
    nothing_written(out)


def test_missing_coremltools_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "coremltools", None)    # `import coremltools` raises ImportError
    out = tmp_path / "x"
    assert_user_error(run_cli("export", "sd15", "--tiny", "--target", "coreml", "--out", out),
                      "pip install 'edgegen[coreml]'")
    nothing_written(out)


@pytest.mark.skipif(ON_MAC, reason="checks the refusal off macOS")
def test_generate_off_macos_is_one_line(sd15, tmp_path):
    out, _ = sd15
    png = tmp_path / "fox.png"
    assert_user_error(run_cli("generate", out, "a red fox", "--out", png), "needs macOS")
    assert not png.exists()


def test_runtime_and_option_checks_import_neither_torch_nor_coremltools():
    code = ("import sys, edgegen.runtimes, edgegen.runtimes.coreml_backend, edgegen.export.coreml\n"
            "bad = [m for m in ('torch', 'coremltools') if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- prediction (macOS) -----------------------------------------------------------------------

@MAC_ONLY
def test_coreml_unet_matches_pytorch_on_mac(sd15):
    import coremltools as ct

    from edgegen.export.families import get_family
    from edgegen.export.weights import Source, load_pipeline

    out, m = sd15
    io = IOSpec.from_dict(m["components"]["unet"]["io"])
    feeds = io.example({n: d.opt for n, d in io.dims.items()}, seed=3)
    model = ct.models.MLModel(str(out / m["components"]["unet"]["graph"]), compute_units=ct.ComputeUnit.CPU_ONLY)
    got = model.predict(feeds)["noise_pred"]
    unet = load_pipeline(get_family("sd15"), Source("tiny")).unet.eval()
    with torch.no_grad():
        ref = unet(*(torch.from_numpy(v) for v in feeds.values()), return_dict=False)[0].numpy()
    assert np.abs(got - ref).max() <= 2e-2 * max(1.0, np.abs(ref).max())   # fp16 compute


@MAC_ONLY
def test_generate_runs_a_coreml_artifact_on_mac(sd15, tmp_path):
    out, _ = sd15
    r = run_cli("generate", out, "a red fox", "--steps", 2, "--out", tmp_path / "fox.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "fox.png").stat().st_size > 0
