"""Export a full-size transformer (FLUX 11.9B, AuraFlow 6.8B) within a small RAM budget, and check it per block.

    python bench/export_big.py [--model flux-schnell|flux-dev|auraflow] [--dtype float16] [--work /tmp/edgegen-big] \
        [--record export_flux_schnell_streaming] [--cleanup] [--tiny]

1. A seeded random bf16 checkpoint (bench/make_random_checkpoint.py) unless one is there.
2. export/streaming.py's stream_export in a child process: wall time and peak RSS
   (ru_maxrss of that child, from os.wait4: what RUSAGE_CHILDREN reports, for this child alone).
3. Per-block check in another child: the whole graph can't run in fp32 here (47.6 GB for FLUX), and
   onnxruntime's CPU EP has no bfloat16 MatMul, so single blocks are cut out of the exported
   graph itself (onnx.utils.Extractor on the weight-less graph; the cut reuses model.onnx.data
   in place) and compared with the same diffusers block in PyTorch fp32, its weights loaded
   from the same checkpoint. Each cut holds the block plus whatever it needs from the graph
   inputs (timestep/text embedding, rotary tables); the residual streams entering it (found by
   their symbolic shapes: text, image, or AuraFlow's concatenated text+image sequence) are fed
   directly. Two comparisons per block:
   - the graph lifted to float32 (export.streaming.upcast_to_float32) vs PyTorch fp32 with the
     same (dtype-rounded) weights: only summation order differs, so this checks the graph and
     the weight mapping tightly;
   - the graph as exported (fp16) in onnxruntime vs PyTorch fp32 and vs PyTorch fp16: the
     precision cost of computing in fp16 (not possible for bfloat16 graphs on CPU).
   The first block includes the input embedders; the last block the output head.

Configs come from the family files; AuraFlow's IOSpec is the one export/arch/auraflow.py gives the
regular exporter (FLUX keeps the wider one below, as recorded). Weights are seeded random: export
time and memory don't depend on their values.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402

TINY = {"num_layers": 2, "num_single_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
        "joint_attention_dim": 32, "pooled_projection_dim": 32, "in_channels": 16, "axes_dims_rope": [4, 6, 6]}
PREFIX = "model."  # CastIO keeps the transformer as `.model`: initializer and scope names start with it
FP32_ATOL, FP32_RTOL = 1e-4, 1e-3   # lifted graph vs PyTorch fp32 (as export/onnx_export.py)
LOW_RTOL = 2e-2                     # fp16 graph vs PyTorch: error <= LOW_RTOL * max|reference|
MODELS = ("flux-schnell", "flux-dev", "auraflow")


@dataclass
class BigModel:
    """What the export and the per-block check need to know about one transformer."""
    name: str
    cls: type
    config: dict
    io: object                                  # IOSpec
    blocks: tuple[tuple[str, int], ...]         # (ModuleList name, length), in forward order
    streams: dict[str, tuple[str, ...]]         # ModuleList name -> the residual streams its blocks take and return
    shared: tuple[str, ...]                     # embedders and output head every cut may need (modules or params)
    check_sizes: tuple[dict, ...]               # shapes the blocks are checked at (not the export shape)
    stream_lengths: Callable[[dict], dict]      # residual stream ("enc"/"hidden"/"combined") -> seq length at sizes
    torch_block: Callable                       # PyTorch mirror of one cut (see _flux_block)

    @property
    def width(self) -> int:
        return self.config["num_attention_heads"] * self.config["attention_head_dim"]

    def order(self) -> list[str]:
        return [f"{kind}.{k}" for kind, n in self.blocks for k in range(n)]

    def default_blocks(self) -> list[str]:
        """First and last block of each kind."""
        return [b for kind, n in self.blocks for b in dict.fromkeys((f"{kind}.0", f"{kind}.{n - 1}"))]


def big_model(name: str, tiny: bool = False) -> BigModel:
    from make_random_checkpoint import family_model

    cls, cfg = family_model(name, tiny and not name.startswith("flux"))
    if name.startswith("flux"):
        if tiny:  # same class, tiny sizes: for trying this script out in a minute
            cfg = {**cfg, **TINY}
        return BigModel(name, cls, cfg, flux_io(cfg), (("transformer_blocks", cfg["num_layers"]),
                                                        ("single_transformer_blocks", cfg["num_single_layers"])),
                        {"transformer_blocks": ("enc", "hidden"), "single_transformer_blocks": ("enc", "hidden")},
                        ("x_embedder", "context_embedder", "time_text_embed", "pos_embed", "norm_out", "proj_out"),
                        ({"batch": 1, "img_seq": 64, "txt_seq": 24}, {"batch": 3, "img_seq": 32, "txt_seq": 8}),
                        lambda s: {"hidden": s["img_seq"], "enc": s["txt_seq"]}, _flux_block)
    if tiny:  # two blocks of each kind, so every kind of cut (first, middle, last) is exercised
        cfg = {**cfg, "num_mmdit_layers": 2, "num_single_dit_layers": 2}
    return auraflow_model(cls, cfg)


def auraflow_model(cls, cfg: dict) -> BigModel:
    """AuraFlow: config and IOSpec from the family and arch files (export/families/auraflow.py,
    export/arch/auraflow.py), the IOSpec the regular exporter uses for this transformer."""
    from types import SimpleNamespace

    import torch

    from edgegen.export.arch.auraflow import transformer
    from edgegen.export.components import vae_scale_factor
    from edgegen.export.families.auraflow import FAMILY
    from edgegen.export.streaming import build_on_meta

    (te,) = FAMILY.text_encoders
    vae = SimpleNamespace(config=SimpleNamespace(**FAMILY.vae.config))  # the factor needs the config only
    meta, _ = build_on_meta(cls, cfg, torch.float32)
    io = transformer(meta, FAMILY.resolution, vae_scale_factor(vae), te.max_length).io
    patch, registers = cfg["patch_size"], meta.register_tokens.shape[1]

    def lengths(s):
        img = (s["latent_height"] // patch) * (s["latent_width"] // patch)
        return {"hidden": img, "enc": s["txt_seq"] + registers, "combined": img + s["txt_seq"] + registers}

    return BigModel("auraflow", cls, cfg, io, (("joint_transformer_blocks", cfg["num_mmdit_layers"]),
                                               ("single_transformer_blocks", cfg["num_single_dit_layers"])),
                    # the single blocks run on text and image concatenated (outside the blocks) into one sequence
                    {"joint_transformer_blocks": ("enc", "hidden"), "single_transformer_blocks": ("combined",)},
                    ("pos_embed", "context_embedder", "register_tokens", "time_step_proj", "norm_out", "proj_out"),
                    # latents of 128x128 and 64x96 px: the block check doesn't need the export range
                    ({"batch": 1, "latent_height": 16, "latent_width": 16, "txt_seq": 24},
                     {"batch": 3, "latent_height": 8, "latent_width": 12, "txt_seq": 8}),
                    lengths, _auraflow_block)


def flux_io(config: dict, max_batch: int = 4):
    """FLUX transformer IO: packed 2x2 latents (img_seq = H/16 * W/16), T5 states, CLIP pooled, ids."""
    from edgegen.runtimes.iospec import Dim, IOSpec, TensorSpec

    ch, txt, pooled = config["in_channels"], config["joint_attention_dim"], config["pooled_projection_dim"]
    inputs = [TensorSpec("hidden_states", "float32", ("batch", "img_seq", ch)),
              TensorSpec("encoder_hidden_states", "float32", ("batch", "txt_seq", txt)),
              TensorSpec("pooled_projections", "float32", ("batch", pooled)),
              TensorSpec("timestep", "float32", ("batch",), 0.0, 1.0),
              TensorSpec("img_ids", "float32", ("img_seq", 3), 0.0, 127.0),
              TensorSpec("txt_ids", "float32", ("txt_seq", 3), 0.0, 0.0)]
    if config.get("guidance_embeds"):
        inputs.append(TensorSpec("guidance", "float32", ("batch",), 1.0, 10.0))
    dims = {"batch": Dim("batch", 1, 1, max_batch),
            "img_seq": Dim("img_seq", 16, 4096, 16384),   # 256 px .. 2048 px
            "txt_seq": Dim("txt_seq", 8, 256, 512)}       # schnell 256 tokens, dev 512
    return IOSpec(tuple(inputs), (TensorSpec("sample", "float32", ("batch", "img_seq", ch)),), dims)


# ---------------------------------------------------------------- children

def child_export(args) -> dict:
    from edgegen.export.streaming import stream_export

    m = big_model(args.model, args.tiny)
    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:6.0f} s] {s}", file=sys.stderr, flush=True)  # noqa: E731
    rep = stream_export(m.cls, m.config, Path(args.checkpoint), m.io, Path(args.out), dtype=args.dtype, log=log)
    return rep.to_dict()


def stream_kind(seq_dim) -> str | None:
    """Which residual stream a (batch, seq, width) value is, from its symbolic seq dim: text only
    ("txt_seq", "txt_seq + 8" with AuraFlow's register tokens) is "enc", image only ("img_seq",
    "s22*s94") is "hidden", both (AuraFlow's single blocks) is "combined"."""
    if not isinstance(seq_dim, str):
        return None
    symbols = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", seq_dim))
    if "txt_seq" not in symbols:
        return "hidden"
    return "enc" if symbols == {"txt_seq"} else "combined"


def _streams(model, values: list[str], width: int, made_in: set[str]) -> dict[str, str]:
    """{"enc"/"hidden"/"combined": value} among `values`: the (batch, seq, width) activations made by
    nodes traced directly in one of the modules `made_in` (a block's own residual adds, the model's
    top-level code such as AuraFlow's concatenation), not inside their submodules (an attention's
    joined text+image output) nor by nodes the optimizer created without a scope."""
    from edgegen.export.streaming import scope_of

    vi = {v.name: v for v in model.graph.value_info}
    made_by = {o: n for n in model.graph.node for o in n.output}
    cut = {}
    for name in values:
        scopes = scope_of(made_by[name]) if name in made_by else []
        if name not in vi or len(scopes) < 2 or scopes[-2] not in made_in:
            continue
        dims = [d.dim_param or d.dim_value for d in vi[name].type.tensor_type.shape.dim]
        kind = stream_kind(dims[1]) if len(dims) == 3 and dims[0] == "batch" and dims[2] == width else None
        if kind:
            if kind in cut:
                raise SystemExit(f"two {kind} streams: {cut[kind]} and {name}")
            cut[kind] = name
    return cut


def _load_modules(full, names: list[str], ckpt, dtype, compute):
    """Materialize only `names` (modules or parameters) of the meta model, weights = checkpoint -> graph dtype -> `compute`."""
    from torch import nn

    for name in names:
        if name in dict(full.named_parameters()):  # a parameter held by the model itself (AuraFlow's register tokens)
            owner, _, attr = name.rpartition(".")
            mod = full.get_submodule(owner) if owner else full
            setattr(mod, attr, nn.Parameter(ckpt.get(name).to(dtype).to(compute), requires_grad=False))
            continue
        mod = full.get_submodule(name)
        mod.to_empty(device="cpu")
        sd = {k: ckpt.get(f"{name}.{k}").to(dtype).to(compute) for k, _ in mod.named_parameters()}
        mod.load_state_dict(sd, strict=True)
        mod.to(compute)
    return full


def _tensors(feeds: dict, cut: dict, compute):
    import torch

    t = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)).to(compute) for k, v in feeds.items()}
    c = {k: torch.from_numpy(v.astype(np.float32)).to(compute) for k, v in cut.items()}
    return t, c


def _flux_block(m: BigModel, full, block: str, feeds: dict, cut: dict, last: bool, compute):
    """What the graph cut computes, in PyTorch (mirrors FluxTransformer2DModel.forward and CastIO)."""
    import torch

    t, cut = _tensors(feeds, cut, compute)
    with torch.no_grad():
        ts = t["timestep"] * 1000
        temb = (full.time_text_embed(ts, t["guidance"] * 1000, t["pooled_projections"]) if "guidance" in t
                else full.time_text_embed(ts, t["pooled_projections"]))
        rope = full.pos_embed(torch.cat((t["txt_ids"], t["img_ids"]), dim=0))
        if cut:
            hidden, enc = cut["hidden"], cut["enc"]
        else:
            hidden, enc = full.x_embedder(t["hidden_states"]), full.context_embedder(t["encoder_hidden_states"])
        enc, hidden = full.get_submodule(block)(hidden_states=hidden, encoder_hidden_states=enc, temb=temb,
                                                image_rotary_emb=rope)
        if last:
            return {m.io.output_names[0]: full.proj_out(full.norm_out(hidden, temb)).float().numpy()}
        return {"enc": enc.float().numpy(), "hidden": hidden.float().numpy()}


def _auraflow_block(m: BigModel, full, block: str, feeds: dict, cut: dict, last: bool, compute):
    """What the graph cut computes, in PyTorch (mirrors AuraFlowTransformer2DModel.forward and CastIO)."""
    import torch

    t, cut = _tensors(feeds, cut, compute)
    with torch.no_grad():
        temb = full.time_step_proj(full.time_step_embed(t["timestep"]).to(compute))
        if cut:
            hidden, enc, combined = cut.get("hidden"), cut.get("enc"), cut.get("combined")
        else:  # the first block: patch + position embedding, caption projection, register tokens
            hidden = full.pos_embed(t["hidden_states"])
            enc = full.context_embedder(t["encoder_hidden_states"])
            enc = torch.cat([full.register_tokens.to(enc.dtype).repeat(enc.size(0), 1, 1), enc], dim=1)
        mod = full.get_submodule(block)
        if block.startswith("joint_transformer_blocks."):
            enc, hidden = mod(hidden_states=hidden, encoder_hidden_states=enc, temb=temb)
            out = {"enc": enc, "hidden": hidden}
            if last:  # a model without single blocks
                combined = torch.cat([enc, hidden], dim=1)
        else:
            combined = mod(hidden_states=combined, temb=temb)
            out = {"combined": combined}
        if not last:
            return {k: v.float().numpy() for k, v in out.items()}
        n_txt = t["encoder_hidden_states"].shape[1] + full.register_tokens.shape[1]
        x = full.proj_out(full.norm_out(combined[:, n_txt:], temb))
        b, _, h, w = t["hidden_states"].shape
        p, oc = m.config["patch_size"], m.config["out_channels"]
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(b, h // p, w // p, p, p, oc)).reshape(b, oc, h, w)
        return {m.io.output_names[0]: x.float().numpy()}


def child_validate(args) -> dict:
    import onnx
    import onnxruntime as ort
    import torch

    from edgegen.export.streaming import (DTYPES, Checkpoint, build_on_meta, extract_submodel, scope_boundary,
                                          upcast_to_float32)

    m = big_model(args.model, args.tiny)
    graph_file, limit = "model.onnx", None
    if args.artifact:  # a transformer inside an edgegen artifact (e.g. after int4:compute=float32)
        import dataclasses

        from edgegen.optimize.registry import get_pass
        from edgegen.runtimes.iospec import IOSpec

        comp = json.loads((args.artifact / "manifest.json").read_text())["components"]["transformer"]
        m = dataclasses.replace(m, io=IOSpec.from_dict(comp["io"]))
        args.out = (args.artifact / comp["graph"]).parent
        graph_file = Path(comp["graph"]).name
        applied = comp.get("optimize", {}).get("passes", [])
        # A quantized graph is held to its pass's own error limit (its gate's rel_err), per block.
        limit = get_pass(applied[-1]).thresholds.rel_err if applied else None
    io, order = m.io, m.order()
    out = Path(args.out)
    graph = onnx.load(str(out / graph_file), load_external_data=False)
    ckpt = Checkpoint(Path(args.checkpoint))
    gdtype = DTYPES[args.dtype]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    kinds = tuple(kind for kind, _ in m.blocks)
    results = []
    for block in args.blocks:
        t0 = time.perf_counter()
        first, last = block == order[0], block == order[-1]
        ins, outs = scope_boundary(graph, PREFIX + block)
        # The first block's cut starts at the graph inputs (it includes the input embedders); the others
        # start at the residual streams entering the block.
        want = set(m.streams[block.rsplit(".", 1)[0]])
        prev = None if first else order[order.index(block) - 1]
        cut_in = {} if first else _streams(graph, ins, m.width, {PREFIX[:-1], PREFIX + prev})
        if not first and set(cut_in) != want:
            raise SystemExit(f"{block}: expected the residual streams {sorted(want)} entering it, found {cut_in}")
        if last:
            keys, outputs = list(io.output_names), list(io.output_names)
        else:
            cut_out = _streams(graph, outs, m.width, {PREFIX + block})
            if set(cut_out) != want:
                raise SystemExit(f"{block}: expected the residual streams {sorted(want)} leaving it, found {cut_out}")
            keys = sorted(cut_out)
            outputs = [cut_out[k] for k in keys]
        inputs = [*cut_in.values(), *io.input_names]
        sub_path = extract_submodel(out / graph_file, inputs, outputs, out / f"check_{block}.onnx")
        sub = onnx.load(str(sub_path), load_external_data=False)
        weights = sorted(t.name for t in sub.graph.initializer if t.name.startswith(PREFIX))
        own = [w for w in weights if w.startswith(f"{PREFIX}{block}.")]
        foreign = [w for w in weights if not w.startswith(f"{PREFIX}{block}.") and w.split(".")[1] in kinds]
        if foreign:
            raise SystemExit(f"{block}: the cut pulled in other blocks' weights: {foreign[:4]}")
        lifted = upcast_to_float32(sub_path, out / "lifted" / f"check_{block}.onnx")
        refs = {}
        for compute in (torch.float32, torch.float16):
            full, _ = build_on_meta(m.cls, m.config, torch.float32)
            _load_modules(full, [*m.shared, block], ckpt, gdtype, compute)
            refs[str(compute).split(".")[1]] = full
        low = ort.InferenceSession(str(sub_path), opts, providers=["CPUExecutionProvider"]) \
            if args.dtype == "float16" else None
        hi = ort.InferenceSession(str(lifted), opts, providers=["CPUExecutionProvider"])
        checks = []
        for k, sizes in enumerate(m.check_sizes):
            feeds = io.example(sizes, seed=10 + k)
            rng = np.random.default_rng(20 + k)
            seq = m.stream_lengths(sizes)
            cut_feeds = {key: rng.standard_normal((sizes["batch"], seq[key], m.width)).astype(np.float16)
                         for key in sorted(cut_in)}
            # What the graph sees: float inputs rounded to its dtype by CastIO.
            seen = {k2: torch.from_numpy(v).to(gdtype).float().numpy() if v.dtype == np.float32 else v
                    for k2, v in feeds.items()}
            ref32 = m.torch_block(m, refs["float32"], block, seen, cut_feeds, last, torch.float32)
            ref16 = m.torch_block(m, refs["float16"], block, seen, cut_feeds, last, torch.float16)
            sub_names = [i.name for i in sub.graph.input]
            by_name = {**seen, **{cut_in[key]: v for key, v in cut_feeds.items()}}
            got32 = dict(zip(keys, hi.run(None, {n: by_name[n].astype(np.float32) if n in cut_in.values() else by_name[n]
                                                for n in sub_names})))
            got16 = dict(zip(keys, low.run(None, {n: by_name[n] for n in sub_names}))) if low else {}
            for key in keys:
                r32, r16 = ref32[key], ref16[key]
                scale = float(np.abs(r32).max())
                row = {"sizes": sizes, "output": key, "max_abs_ref": scale,
                       "lifted_fp32_vs_torch_fp32": float(np.abs(got32[key] - r32).max()),
                       "torch_fp16_vs_torch_fp32": float(np.abs(r16 - r32).max())}
                row["lifted_tolerance"] = FP32_ATOL + FP32_RTOL * scale
                ok = row["lifted_fp32_vs_torch_fp32"] <= row["lifted_tolerance"] and np.isfinite(got32[key]).all()
                if limit is not None:
                    from edgegen.optimize.gate import cosine, rel_err

                    d, r = got32[key].astype(np.float64).ravel(), r32.astype(np.float64).ravel()
                    row["rel_err"], row["cosine"] = rel_err(r, d), cosine(r, d)
                    row["rel_err_limit"] = limit
                    if key in cut_feeds:  # a residual stream: the error against the block's own update,
                        upd = r - cut_feeds[key].astype(np.float64).ravel()  # which the residual input hides
                        row["rel_err_of_update"] = float(np.linalg.norm(d - r) / np.linalg.norm(upd))
                    ok = bool(np.isfinite(d).all()) and row["rel_err"] <= limit
                if got16:
                    g = got16[key].astype(np.float32)
                    row["finite"] = bool(np.isfinite(g).all())
                    row["graph_fp16_vs_torch_fp32"] = float(np.abs(g - r32).max())
                    row["graph_fp16_vs_torch_fp16"] = float(np.abs(g - r16).max())
                    row["fp16_tolerance"] = LOW_RTOL * scale
                    ok = ok and row["finite"] and row["graph_fp16_vs_torch_fp32"] <= row["fp16_tolerance"]
                row["passed"] = bool(ok)
                checks.append(row)
                print(json.dumps({"block": block, **row}), file=sys.stderr, flush=True)
        del low, hi, refs
        for p in (sub_path, lifted, lifted.with_name(lifted.name + ".data")):
            p.unlink(missing_ok=True)
        results.append({"block": block, "cut_inputs": cut_in, "weights_in_cut": len(weights),
                        "block_weights": len(own), "checks": checks, "seconds": round(time.perf_counter() - t0, 1),
                        "passed": all(c["passed"] for c in checks)})
    shutil.rmtree(out / "lifted", ignore_errors=True)
    return {"blocks": results, "passed": all(r["passed"] for r in results),
            "rule": {"lifted": (f"quantized graph: rel. L2 error vs torch fp32 <= {limit} (its pass's gate limit)"
                                if limit is not None else
                                f"max|onnx_fp32 - torch_fp32| <= {FP32_ATOL} + {FP32_RTOL}*max|torch|"),
                     "fp16": (f"max|onnx_fp16 - torch_fp32| <= {LOW_RTOL}*max|torch|, no NaN/inf"
                              if args.dtype == "float16" else
                              f"the {args.dtype} graph itself can't run here (onnxruntime's CPU EP has no "
                              f"{args.dtype} MatMul): checked lifted to fp32 only")}}


# ---------------------------------------------------------------- parent

def run_child(stage: str, args, extra: list[str]) -> tuple[dict, float, float]:
    """Run a stage in a child; returns (its JSON result, wall seconds, its peak RSS in GiB)."""
    cmd = [sys.executable, __file__, "--stage", stage, "--model", args.model, "--dtype", args.dtype, *(["--tiny"] * args.tiny),
           *(["--artifact", str(args.artifact)] if args.artifact else []),
           "--checkpoint", str(args.checkpoint), "--out", str(args.out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (Linux ru_maxrss: KiB)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{stage} failed (exit {proc.returncode})")
    return json.loads(stdout.strip().splitlines()[-1]), wall, usage.ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="flux-schnell", choices=MODELS)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgegen-big"))
    ap.add_argument("--checkpoint", type=Path, help="default: WORK/<model>-random-bf16.safetensors")
    ap.add_argument("--out", type=Path, help="default: WORK/<model>-<dtype>-onnx")
    ap.add_argument("--blocks", nargs="+", help="default: first and last of each kind")
    ap.add_argument("--tiny", action="store_true", help="a tiny config of the same class (tries the script out)")
    ap.add_argument("--skip-export", action="store_true", help="validate an existing export")
    ap.add_argument("--record", help="write bench/results/<name>.json and .md")
    ap.add_argument("--cleanup", action="store_true", help="delete the checkpoint and the export at the end")
    ap.add_argument("--note", help="a line for the record (e.g. what else ran on the machine)")
    ap.add_argument("--artifact", type=Path, help="check the transformer of this edgegen artifact (e.g. an "
                    "`edgegen export --stream` one after int4:compute=float32) instead of exporting; with "
                    "--checkpoint the random weights it was streamed from (--seed)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random checkpoint written when it is missing")
    ap.add_argument("--json-out", type=Path, help="also write the result JSON to this file")
    ap.add_argument("--stage", choices=["export", "validate"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    tag = args.model + ("-tiny" if args.tiny else "")
    args.checkpoint = args.checkpoint or args.work / f"{tag}-random-bf16.safetensors"
    args.out = args.out or args.work / f"{tag}-{args.dtype}-onnx"
    args.blocks = args.blocks or big_model(args.model, args.tiny).default_blocks()
    if args.stage:
        res = child_export(args) if args.stage == "export" else child_validate(args)
        print(json.dumps(res))
        return

    m = big_model(args.model, args.tiny)
    argv = [a for i, a in enumerate(sys.argv[1:]) if a != "--note" and (i == 0 or sys.argv[i] != "--note")]
    result = {"command": "python bench/export_big.py " + " ".join(argv), "model": tag,
              "weights": "seeded random bf16 checkpoint (real architecture); export time and memory don't depend on values",
              "machine": describe(), "config": m.config, "io": m.io.to_dict(), "export_sizes": m.io.export_sizes()}
    if args.note:
        result["note"] = args.note
    from make_random_checkpoint import make_random_checkpoint, summary_path

    if not args.checkpoint.exists():
        print(f"writing {args.checkpoint}", file=sys.stderr)
        result["checkpoint"] = make_random_checkpoint(m.cls, m.config, args.checkpoint, "bfloat16", seed=args.seed)
        result["checkpoint"]["command"] = (f"python bench/make_random_checkpoint.py {args.model} {args.checkpoint}"
                                           if not args.tiny else "make_random_checkpoint() on the --tiny config")
        # This process has done nothing else yet: its peak is the writer's.
        result["checkpoint"]["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    elif summary_path(args.checkpoint).exists():
        result["checkpoint"] = json.loads(summary_path(args.checkpoint).read_text())
    else:
        result["checkpoint"] = {"path": str(args.checkpoint), "bytes": args.checkpoint.stat().st_size}
    if not args.skip_export and not args.artifact:
        rep, wall, peak = run_child("export", args, [])
        result["export"] = {"dtype": args.dtype, "wall_seconds": round(wall, 1), "peak_rss_gb": round(peak, 2),
                            "budget_gb": 8, "within_budget": peak <= 8, **rep}
        print(json.dumps(result["export"], indent=2), file=sys.stderr)
    val, wall, peak = run_child("validate", args, ["--blocks", *args.blocks])
    result["validation"] = {"wall_seconds": round(wall, 1), "peak_rss_gb": round(peak, 2), **val}
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    if args.record:
        write_record(args.record, result)
    if args.cleanup:
        if not args.artifact:  # never an artifact's own folder
            shutil.rmtree(args.out, ignore_errors=True)
        args.checkpoint.unlink(missing_ok=True)
        summary_path(args.checkpoint).unlink(missing_ok=True)
    if not val["passed"]:
        sys.exit(1)


MECHANISM = (
    "export/streaming.py: the transformer is built with every parameter on the meta device; "
    "torch.onnx.export(dynamo=True, optimize=False) traces it with meta inputs (initializers carry no data); "
    "onnxscript's optimizer runs with the weights turned into graph inputs so nothing folds or renames them; "
    "the weight-less graph is serialized (a few MB) and each weight is then read from the safetensors file "
    "(safe_open get_tensor), cast to the graph dtype and appended to model.onnx.data with "
    "onnx.external_data_helper.save_external_data, one tensor at a time.")


_SHORT = {"batch": "b", "img_seq": "img", "txt_seq": "txt", "latent_height": "lat_h", "latent_width": "lat_w"}


def write_record(name: str, r: dict) -> None:
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / f"{name}.json").write_text(json.dumps(r, indent=2) + "\n")
    m, e, val = r["machine"], r.get("export", {}), r["validation"]
    ck = r.get("checkpoint", {})
    lines = [f"# Streaming ONNX export: {r['model']} transformer", "",
             f"Command: `{r['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs), {m['ram_gb']} GB RAM; Python {m['python']}; "
             + ", ".join(f"{k} {ver}" for k, ver in m["versions"].items()) + f". Date: {m['date']}.", "",
             f"Weights: {r['weights']}. Checkpoint: {ck.get('bytes', 0) / 1e9:.2f} GB safetensors"
             + (f", {ck['params']:,} parameters, written in {ck['seconds']} s by bench/make_random_checkpoint.py"
                if "params" in ck else " (bench/make_random_checkpoint.py)") + ".", "",
             f"Mechanism: {MECHANISM}", ""] + ([f"Note: {r['note']}", ""] if r.get("note") else [])
    if e:
        sec = e["seconds"]
        lines += ["| export | value |", "|---|---|",
                  f"| graph dtype (weights and compute; inputs/outputs float32) | {e['dtype']} |",
                  f"| wall time | {e['wall_seconds']} s (build {sec.get('build')}, trace {sec.get('trace')}, "
                  f"optimize {sec.get('optimize')}, stream {sec.get('stream')}) |",
                  f"| peak RSS of the export process (ru_maxrss) | {e['peak_rss_gb']} GB (budget {e['budget_gb']} GB) |",
                  f"| tensors streamed | {e['tensors']} (unused, dropped: {len(e.get('dropped', []))}) |",
                  f"| model.onnx.data | {e['data_bytes'] / 1e9:.2f} GB |",
                  f"| largest tensor in memory at once (checkpoint copy + cast copy) | {e['max_tensor_bytes'] / 1e6:.0f} MB |",
                  f"| weights while tracing | {e['weights_device']} |", ""]
    blocks = [b["block"] for b in val["blocks"]]
    export_at = ", ".join(f"{k} {v}" for k, v in r.get("export_sizes", {}).items())
    lines += [f"Per-block check ({val['wall_seconds']} s, peak RSS {val['peak_rss_gb']} GB): each block is cut out of the "
              "exported graph (inputs: the residual streams entering it, fed random N(0,1) in fp16, plus the graph "
              f"inputs for the timestep/text embedding{', rotary tables' if r['model'].startswith('flux') else ''}) and compared with the diffusers block in "
              "PyTorch on the same checkpoint weights, at two shapes other than the export shape "
              f"({export_at}). {blocks[0]} includes the input embedders; {blocks[-1]} includes the output head "
              f"(the graph output). Rules: {val['rule']['lifted']} (graph lifted to fp32); {val['rule'].get('fp16', '')}.",
              "", "| block | output | sizes | max abs ref | lifted fp32 vs torch fp32 | fp16 graph vs torch fp32 | "
              "fp16 graph vs torch fp16 | torch fp16 vs torch fp32 | passed |", "|---|---|---|---|---|---|---|---|---|"]

    def fmt(x):
        return "n/a" if x is None else f"{x:.2e}"

    for b in val["blocks"]:
        for c in b["checks"]:
            s = c["sizes"]
            lines.append(f"| {b['block']} | {c['output']} | {' '.join(f'{_SHORT.get(k, k)}{v}' for k, v in s.items())} | "
                         f"{c['max_abs_ref']:.3g} | {c['lifted_fp32_vs_torch_fp32']:.2e} | "
                         f"{fmt(c.get('graph_fp16_vs_torch_fp32'))} | "
                         f"{fmt(c.get('graph_fp16_vs_torch_fp16'))} | {c['torch_fp16_vs_torch_fp32']:.2e} | "
                         f"{c['passed']} |")
    (res / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
