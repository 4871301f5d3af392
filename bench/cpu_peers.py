"""The CPU race: edgegen against OpenVINO + NNCF int8 with static shapes, per step and per image.

    python bench/cpu_peers.py [--artifact build/sd15-random] [--steps 25] [--threads 2]
                              [--record cpu_peers_sd15]
    python bench/cpu_peers.py --artifact build/sdturbo-random --vae-int8 ...   # 1 step, no CFG
    python bench/cpu_peers.py --artifact build/sdxlturbo-random --peer hybrid --vae-int8 ...  # SDXL in 24 GB

One run, one machine, every row in its own child process, one at a time; with --rounds N the
per-step rows run in turn N times over and each keeps its best (and its ratio to the peer in each
round), so a drift of the machine over the run lands on every row alike. Steps and guidance are
the artifact family's defaults unless given (sd15: 25 steps at 7.5; the turbo families: 1 step
without CFG, so the U-Net runs at batch 1 and cfg-cutoff / deepcache have nothing to act on and
are not raced).

Per step (the U-Net at batch 2 = CFG or 1 without, 64x64 latent = 512 px, 77 tokens, t=500; best of
--repeats after a warm-up), each with its relative L2 error against ORT fp32 on the same inputs:
- PyTorch eager fp32 (diffusers, the same seeded weights);
- edgegen on onnxruntime: the fp32 export, `optimize --int8`, and DeepCache's shallow U-Net
  (the graph a cached step runs; its error is against the whole graph on the same feature);
- edgegen compiled for OpenVINO (`edgegen compile --target openvino`), fp32 and int8 artifacts,
  dynamic and static (--height/--width/--batch);
- with --int8-nncf, edgegen's `optimize --int8-nncf` (NNCF's int8 on the ONNX graph, the same
  calibration data): on onnxruntime and compiled static for OpenVINO;
- with --int8-config, further `--pass int8:CONFIG` recipes compiled static for OpenVINO (with
  --compile-option, under those backend options, e.g. keep_f32=Add+Multiply), and with --tome each
  also behind token merging;
- the peer, built here from the same fp32 graph: NNCF int8 (ModelType.TRANSFORMER, calibrated
  on the same sampler-trajectory U-Net inputs edgegen's --int8 gets), dynamic and reshaped
  static, as optimum-intel's users run it. With --peer hybrid, optimum-intel's hybrid scheme
  instead (int8 weight-only MatMuls, nncf.quantize of the rest): the full recipe was OOM-killed at
  23.2 GiB on SDXL's U-Net here.

Per image (--steps at --guidance, 512 px, one prompt, fixed latents; components loaded and
warmed by a 2-step image first, then one timed generation; text encoder and VAE included):
- edgegen ORT fp32 (the reference image) and ORT int8; with --vae-int8, ORT int8 on the U-Net and
  the VAE decoder (the decode is most of a 1-step image);
- with --tome: token merging (`--pass tome`), fp32 and before --int8 per step (calibrated on the
  merged graph), and int8 + tome alone and with deepcache + cfg-cutoff per image;
- ORT int8 with each pipeline option (`optimize --pipeline-option`): cfg-cutoff, deepcache, both
  (`--option-rows combined`: both alone); with `--tiny-vae`, int8 and int8 + both with the VAE
  decoder swapped for a TAESD of seeded random weights (tiny-vae:weights=random, --no-gate): its
  time is valid, its image is not comparable to the full decoder's (random weights), so those
  rows carry no PSNR; the tiny VAE's quality comes from the trained edgegen-shapes model
  (bench/shapes_adherence.py);
- the peer: edgegen's static OpenVINO compile of the fp32 artifact (text encoder and VAE f32 on
  OpenVINO, reshaped static) with its U-Net replaced by the static NNCF int8 model, driven by
  the same sampler loop.
Each image row has PSNR/SSIM against the ORT fp32 image from the same latents, and the peak RSS
of its process. Every row has `ratio_vs_nncf`: the static NNCF peer's time divided by the row's.

Weights are seeded random (real architecture): time and memory do not depend on weight values;
errors and PSNR compare variants on the same random weights, weak evidence for a trained model.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from optimize_sd15 import child, feeds, time_fn  # noqa: E402

from edgegen.runtimes.host import ISA_FLAGS, cpu_flags  # noqa: E402

CALIB = ["--size", "256", "--steps", "4", "--calibration-prompts", "2", "--gate-prompts", "1"]
OPTION_GATE = ["--size", "256", "--steps", "6", "--gate-prompts", "1"]
PROMPT = "a photo of an astronaut riding a horse on the moon"
PEER = "openvino + nncf int8, static (peer)"
PEER_VAE = "openvino + nncf int8, static, VAE decoder int8 too (peer)"
TINY_VAE = "tiny-vae:weights=random"
# --peer: the NNCF peer's U-Net recipe (nncf_int8), as the report names it.
PEER_RECIPES = {"transformer": "nncf.quantize, TRANSFORMER preset with SmoothQuant",
                "hybrid": "optimum-intel's hybrid scheme: int8 weight-only MatMuls, nncf.quantize of the rest without "
                          "SmoothQuant"}


# The rows that read the default `--int8` artifact (it is built only when one of them races).
ORT_INT8, OV_INT8, OV_INT8_STATIC = ("ort int8 (edgegen --int8)", "openvino on edgegen int8",
                                     "openvino on edgegen int8, static")


def step_child(kind: str, path: str, art: Path, npy: Path, threads: int, repeats: int, latent: int, batch: int) -> dict:
    if kind == "torch":
        import torch

        from edgegen.bench.torch_baseline import load_reference
        from edgegen.runtimes.artifact import load_artifact

        torch.set_num_threads(threads)
        unet = load_reference(load_artifact(art, verify=False).manifest).unet.eval()
        f = feeds(art, latent, batch)
        t = {k: torch.from_numpy(v) for k, v in f.items()}
        with torch.inference_mode():
            # SDXL's micro-conditioning inputs, where the U-Net has them.
            added = {k: t[k] for k in ("text_embeds", "time_ids") if k in t} or None
            run = lambda: unet(t["sample"], t["timestep"], t["encoder_hidden_states"],  # noqa: E731
                               added_cond_kwargs=added).sample.numpy()
            res = time_fn(run, repeats)
            np.save(npy, run())
        return {**res, "backend": "pytorch eager", "precision": "f32"}
    if kind == "shallow":
        # DeepCache's cached step: the shallow graph on the whole graph's feature for these inputs.
        from edgegen.runtimes.pipeline import Pipeline
        from edgegen.runtimes.step_options import DEEP_FEATURE

        pipe = Pipeline.load(path, threads=threads)
        f = feeds(art, latent, batch)
        whole = pipe.component("unet")(**f)
        shallow = pipe.component(pipe.options["deepcache"]["component"])
        run = lambda: shallow(**f, **{DEEP_FEATURE: whole[DEEP_FEATURE]})["noise_pred"]  # noqa: E731
        res = time_fn(run, repeats)
        np.save(npy, run())
        np.save(str(npy) + ".whole.npy", whole["noise_pred"])
        return {**res, "backend": "onnxruntime", "precision": "int8"}
    f = feeds(art, latent, batch)
    if kind == "edgegen":      # an artifact through edgegen's own backend (compiled or not)
        from edgegen.runtimes.pipeline import Pipeline

        pipe = Pipeline.load(path, threads=threads)
        unet = pipe.component("unet")
        run = lambda: unet(**f)["noise_pred"]  # noqa: E731
        info = {"backend": pipe.backend.name, "precision": pipe.backend.resolved_precision()}
    elif kind in ("nncf", "nncf-static"):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path)
        if kind == "nncf-static":
            model.reshape({k: list(v.shape) for k, v in f.items()})
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        req = compiled.create_infer_request()
        out = compiled.output(0)
        run = lambda: np.array(req.infer(f)[out], copy=True)  # noqa: E731
        info = {"backend": "openvino (NNCF IR)",
                "precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()}
    else:
        raise ValueError(kind)
    res = time_fn(run, repeats)
    np.save(npy, run())
    return {**res, **info}


def _weighted_matmuls(model) -> list[str]:
    """Names of the MatMuls with a constant operand (through Convert/Transpose/Reshape), the
    layers optimum-intel's hybrid scheme compresses weight-only."""
    def const(node):
        while node.get_type_name() in ("Convert", "Transpose", "Reshape"):
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant"
    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"
            and any(const(op.input_value(i).get_node()) for i in (0, 1))]


def nncf_int8(art: Path, out_xml: Path, say, component: str = "unet", recipe: str = "transformer") -> dict:
    """The peer's recipe on the same calibration data edgegen's --int8 gets. The U-Net is a
    transformer-style model to NNCF (its attention MatMuls quantized); the VAE decoder is a plain
    CNN (NNCF's default preset). recipe "transformer": nncf.quantize with SmoothQuant on the whole
    U-Net. recipe "hybrid": optimum-intel's scheme for diffusion models
    (OVWeightQuantizationConfig(bits=8, quant_method="hybrid")): int8 weight-only compression of
    the MatMuls with weights, then nncf.quantize of everything else (the convolutions, attention's
    activation MatMuls) without SmoothQuant. It is the recipe that fits SDXL's U-Net in 24 GB: the
    full recipe was OOM-killed at 23.2 GiB after SmoothQuant, the hybrid one peaks at 16.5 GiB
    (bench/results/quantize_sdxl_int8_memory.md)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

    from edgegen.optimize.calibrate import collect
    from edgegen.runtimes.artifact import load_artifact

    a = load_artifact(art, verify=False)
    t0 = time.time()
    traj = collect(a, 2, 1, steps=4, size=256, say=say)
    data = traj.calibration[component]
    del traj
    model = ov.Core().read_model(str(a.graph_path(component)))
    kind = {"model_type": nncf.ModelType.TRANSFORMER} if component == "unet" else {}
    if component == "unet" and recipe == "hybrid":
        names = _weighted_matmuls(model)
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                      ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
        kind.update(ignored_scope=nncf.IgnoredScope(names=names, validate=False),
                    advanced_parameters=nncf.AdvancedQuantizationParameters(
                        smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)))
    q = nncf.quantize(model, nncf.Dataset(data), subset_size=len(data), **kind)
    del model
    ov.save_model(q, str(out_xml), compress_to_fp16=False)
    return {"samples": len(data), "seconds": round(time.time() - t0, 1), "recipe": recipe if component == "unet" else "default"}


def cfg_rows(art: Path, guidance: float) -> int:
    """U-Net rows per image: 2 under classifier-free guidance, 1 for guidance-free (turbo) runs."""
    from edgegen.runtimes.artifact import load_artifact
    from edgegen.runtimes.shape_profile import cfg_batch

    recipe = load_artifact(art, verify=False).manifest["pipeline"]
    return cfg_batch({**recipe, "defaults": {**recipe["defaults"], "guidance": guidance}})


class NncfComponent:
    """An NNCF-quantized graph, static, with an edgegen component's call surface (bench only:
    the peer's pipeline is OpenVINO's own components with the same sampler loop)."""

    def __init__(self, xml: str, threads: int, shapes: dict, output: str):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(xml)
        model.reshape(shapes)
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "PERFORMANCE_HINT": "LATENCY"})
        self.req, self.out, self.name = self.compiled.create_infer_request(), self.compiled.output(0), output

    def __call__(self, **f):
        return {self.name: np.array(self.req.infer(f)[self.out], copy=True)}


def image_child(kind: str, path: str, npy: Path, threads: int, steps: int, guidance: float, latent: int,
                nncf_xml: str | None) -> dict:
    from edgegen.runtimes.artifact import load_artifact
    from edgegen.runtimes.pipeline import Pipeline

    pipe = Pipeline.load(path, threads=threads)
    if kind.startswith("peer"):
        f = feeds(Path(path), latent, cfg_rows(Path(path), guidance))
        pipe._components["unet"] = NncfComponent(nncf_xml, threads, {k: list(v.shape) for k, v in f.items()},
                                                 "noise_pred")
        if kind == "peer-vae":  # the decoder's NNCF graph lies beside the U-Net's
            io = load_artifact(path, verify=False).io("vae_decoder")
            x = io.example(io.sizes("opt", batch=1, latent_height=latent, latent_width=latent), seed=0)
            pipe._components["vae_decoder"] = NncfComponent(str(Path(nncf_xml).with_name("vae_decoder.xml")), threads,
                                                            {k: list(v.shape) for k, v in x.items()},
                                                            io.outputs[0].name)
        # A few-step artifact's one-call denoise graph holds its own (f32) U-Net: the peer's
        # int8 U-Net runs in the per-step loop.
        pipe.use_denoise_graph = False
    z = np.random.default_rng(42).standard_normal((1, 4, latent, latent)).astype(np.float32)
    t0 = time.perf_counter()
    # Two steps (or the run's own count, if fewer) load and warm every graph at every shape the
    # timed run uses: the first step whole and with CFG, the second shallow (DeepCache) and after
    # a CFG cutoff.
    pipe(PROMPT, steps=min(2, steps), guidance=guidance, latents=z, seed=0)
    warm = time.perf_counter() - t0
    stages: dict[str, float] = {}
    pipe.observers.append(lambda s, i, o, dt: stages.__setitem__(s, stages.get(s, 0.0) + dt))
    t0 = time.perf_counter()
    img = pipe(PROMPT, steps=steps, guidance=guidance, latents=z, seed=0)
    total = time.perf_counter() - t0
    np.save(npy, img)
    den = pipe.recipe["denoiser"]
    groups = {"text": sum(v for k, v in stages.items() if k.startswith(("text_encoder", "tokenize"))),
              "denoiser": sum(v for k, v in stages.items() if k.startswith((den, "denoise_graph"))), "sampler": stages.get("sampler", 0.0),
              "vae": stages.get("vae_decoder", 0.0)}
    return {"seconds_per_image": round(total, 2), "stages": {k: round(v, 2) for k, v in groups.items()},
            "load_and_warm_seconds": round(warm, 1), "backend": pipe.backend.name}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", help="existing sd15 --random-weights artifact (default: export one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the per-step rows in turn this many times (each row's best over all rounds)")
    ap.add_argument("--steps", type=int, help="steps per image (default: the family's, 25 for sd15, 1 for turbo)")
    ap.add_argument("--guidance", type=float,
                    help="guidance per image (default: the family's; <= 1 runs the U-Net at batch 1, without CFG)")
    ap.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px); a smoke run: 8 on a tiny export")
    ap.add_argument("--deepcache", type=int, default=3, help="DeepCache interval")
    ap.add_argument("--cfg-cutoff", type=float, default=0.4, help="CFG cutoff ratio")
    ap.add_argument("--no-compiled", action="store_true", help="skip the OpenVINO compiles of edgegen's graphs")
    ap.add_argument("--per-step-only", action="store_true", help="the per-step rows alone (no options, no images)")
    ap.add_argument("--per-image-only", action="store_true", help="the per-image rows alone (and what they need)")
    ap.add_argument("--option-rows", choices=("all", "combined"), default="all",
                    help="per-image option rows: each option alone and both, or both only")
    ap.add_argument("--tiny-vae", action="store_true", help="add per-image rows with a TAESD decoder (random weights)")
    ap.add_argument("--compiled-images", action="store_true",
                    help="add per-image rows for edgegen's static OpenVINO compiles of its int8 artifacts, step "
                         "options included")
    ap.add_argument("--vae-int8", action="store_true",
                    help="add a per-image row with the VAE decoder int8 too (--int8 --components unet,vae_decoder)")
    ap.add_argument("--tome", metavar="CONFIG",
                    help="add token-merging rows (--pass tome:CONFIG, e.g. ratio=0.5): fp32 and int8 per step, int8 "
                         "and int8 + deepcache + cfg-cutoff per image")
    ap.add_argument("--no-outer", action="store_true", help="skip the int8:outer_convs=false row")
    ap.add_argument("--int8-config", action="append", default=[], metavar="CONFIG",
                    help="add an int8 recipe (--pass int8:CONFIG, e.g. reduce_range=false,attn_proj=true), per step "
                         "compiled static for OpenVINO (and on onnxruntime unless --openvino-only); repeatable; with "
                         "--tome, each also behind token merging")
    ap.add_argument("--compile-option", action="append", default=[], metavar="K=V",
                    help="an OpenVINO build option for the --int8-config recipes' compiles (edgegen compile --option, "
                         "e.g. keep_f32=Add+Multiply); repeatable")
    ap.add_argument("--int8-nncf", action="store_true",
                    help="add edgegen's --int8-nncf artifact (NNCF on the ONNX graph): per step on onnxruntime and "
                         "compiled static for OpenVINO; per image compiled, alone and with deepcache + cfg-cutoff")
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="race (and compile) only the per-step rows whose name contains TEXT, repeatable; the "
                         "peer's rows and ORT fp32 (the error reference) always run")
    ap.add_argument("--openvino-only", action="store_true",
                    help="the OpenVINO rows that race the peer, and the references: per step no dynamic compiles; per "
                         "image the ORT fp32 reference, edgegen's OpenVINO compiles and the peer (each compile's gate "
                         "costs minutes at 512 px)")
    ap.add_argument("--record", help="write JSON + Markdown under bench/results/ with this name")
    ap.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    ap.add_argument("--work", help="keep prepared artifacts in this folder (default: a temporary one, removed)")
    ap.add_argument("--step-child", nargs=3, metavar=("KIND", "PATH", "NPY"), help=argparse.SUPPRESS)
    ap.add_argument("--image-child", nargs=4, metavar=("KIND", "PATH", "NPY", "NNCF"), help=argparse.SUPPRESS)
    ap.add_argument("--peer", choices=tuple(PEER_RECIPES), default="transformer",
                    help="the NNCF peer's U-Net recipe: nncf.quantize with the TRANSFORMER preset and SmoothQuant "
                         "(default), or optimum-intel's hybrid scheme for diffusion models (int8 weight-only MatMuls, "
                         "int8 convolutions and attention; the one that quantizes SDXL's U-Net in 24 GB)")
    ap.add_argument("--nncf", nargs=2, metavar=("COMPONENT", "OUT_XML"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step_child:
        kind, path, npy = args.step_child
        print(json.dumps(step_child(kind, path, Path(args.artifact), Path(npy), args.threads, args.repeats,
                                    args.latent, cfg_rows(Path(args.artifact), args.guidance))))
        return
    if args.image_child:
        kind, path, npy, xml = args.image_child
        print(json.dumps(image_child(kind, path, Path(npy), args.threads, args.steps, args.guidance, args.latent,
                                     xml)))
        return
    if args.nncf:
        print(json.dumps(nncf_int8(Path(args.artifact), Path(args.nncf[1]), lambda m: None, args.nncf[0], args.peer)))
        return
    # Without the peer the race has no ratio to report: refuse before any preparation.
    missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"cpu_peers: the OpenVINO + NNCF peer needs {' and '.join(missing)}: pip install -e \".[bench]\"")

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="edgegen-cpu-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    flags = sorted(cpu_flags() & set(ISA_FLAGS))
    result = {"command": " ".join(["python bench/cpu_peers.py", *sys.argv[1:]]), "machine": describe(),
              "cpu_flags": flags, "threads": args.threads, "peer_recipe": args.peer, "prepare": {},
              "per_step": {}, "per_image": {}}
    art = Path(args.artifact) if args.artifact else work / "sd15"

    def prepare(name, cmd, out: Path | None = None):
        if out is not None and (out / "manifest.json").is_file():
            result["prepare"][name] = {"command": " ".join(cmd), "reused": str(out)}
            return True, ""
        rc, wall, rss, text = child(cmd)
        result["prepare"][name] = {"command": " ".join(cmd), "exit_code": rc, "wall_seconds": round(wall, 1),
                                   "peak_rss_gb": round(rss, 2)}
        print(name, json.dumps(result["prepare"][name]), flush=True)
        return rc == 0, text

    if not args.artifact and not prepare("export", ["edgegen", "export", "sd15", "--random-weights", "--out",
                                                    str(art)], art)[0]:
        sys.exit(1)
    from edgegen.runtimes.artifact import load_artifact

    defaults = load_artifact(art, verify=False).manifest["pipeline"]["defaults"]
    args.steps = defaults["steps"] if args.steps is None else args.steps
    args.guidance = defaults["guidance"] if args.guidance is None else args.guidance
    batch = cfg_rows(art, args.guidance)
    result.update(steps_per_image=args.steps, guidance=args.guidance, unet_batch=batch)
    picked = lambda name: not args.only or any(t in name for t in args.only)  # noqa: E731
    int8 = work / "int8"
    # The default recipe's rows: skipped (and not built, minutes at real size) when --only races others.
    if not (args.only and args.per_step_only) or any(map(picked, (ORT_INT8, OV_INT8, OV_INT8_STATIC))):
        prepare("optimize int8", ["edgegen", "optimize", str(art), "--int8", "--components", "unet", "--out",
                                  str(int8), *CALIB], int8)
    # At one or few steps the VAE decode is most of an image: the same recipe on the decoder too.
    int8_vae = work / "int8-unet-vae_decoder"
    vae_ok = args.vae_int8 and not args.per_step_only and prepare(
        "optimize int8, U-Net + VAE decoder", ["edgegen", "optimize", str(art), "--int8", "--components",
                                               "unet,vae_decoder", "--out", str(int8_vae), *CALIB], int8_vae)[0]
    int8n = work / "int8-nncf"
    nncf_pass_ok = args.int8_nncf and prepare("optimize int8-nncf", ["edgegen", "optimize", str(art), "--int8-nncf",
                                                                     "--components", "unet", "--out", str(int8n),
                                                                     *CALIB], int8n)[0]
    # The int8 recipe with the U-Net's full-resolution resnet convs float (bench/int8_sensitivity.py).
    int8_outer = work / "int8-outer-float"
    outer_ok = not (args.per_image_only or args.no_outer) and prepare("optimize int8:outer_convs=false", ["edgegen", "optimize", str(art), "--pass",
                                                            "int8:outer_convs=false", "--components", "unet", "--out",
                                                            str(int8_outer), *CALIB], int8_outer)[0]
    # Further int8 recipes by config: per step, on both runtimes (the choice is per backend).
    tomed = {}
    tome_tag = f"-{args.tome.replace('=', '').replace(',', '-')}" if args.tome else ""
    # With --tome, each recipe also runs behind token merging (calibrated on the merged graph).
    recipes = {}
    for cfg in ([] if args.per_image_only else args.int8_config):
        for merged in ([False, True] if args.tome else [False]):
            label = cfg + (f" + tome:{args.tome}" if merged else "")
            out = work / f"int8-{cfg.replace('=', '').replace(',', '-')}{'-tome' + tome_tag if merged else ''}"
            passes = (["--pass", f"tome:{args.tome}"] if merged else []) + ["--pass", f"int8:{cfg}"]
            if prepare(f"optimize int8:{label}", ["edgegen", "optimize", str(art), *passes, "--components", "unet",
                                                  "--out", str(out), *CALIB], out)[0]:
                recipes[label] = out
    # Token merging is a graph pass: fp32 alone (its own cost and error), and before int8 so that
    # calibration sees the merged activations.
    if args.tome and not (args.openvino_only and args.per_step_only):   # onnxruntime rows (and the images')
        for name, extra in (("fp32 + tome", []), ("int8 + tome", ["--int8"])):
            if name == "fp32 + tome" and args.per_image_only:
                continue
            out = work / f"{name.replace(' + ', '-')}{tome_tag}"
            if prepare(f"optimize {name}", ["edgegen", "optimize", str(art), "--pass", f"tome:{args.tome}", *extra,
                                            "--components", "unet", "--out", str(out), *CALIB], out)[0]:
                tomed[name] = out
    dc, cc = f"deepcache:interval={args.deepcache}", f"cfg-cutoff:ratio={args.cfg_cutoff}"
    opts = {} if args.per_step_only else {
        "int8 + cfg-cutoff": [cc], "int8 + deepcache": [dc], "int8 + deepcache + cfg-cutoff": [dc, cc]}
    if args.option_rows == "combined":
        opts.pop("int8 + cfg-cutoff", None), opts.pop("int8 + deepcache", None)
    if nncf_pass_ok and not args.per_step_only:
        opts["int8-nncf + deepcache + cfg-cutoff"] = [dc, cc]
    if args.tiny_vae and not args.per_step_only:
        opts.update({"int8 + tiny-vae": [TINY_VAE], "int8 + deepcache + cfg-cutoff + tiny-vae": [dc, cc, TINY_VAE]})
    # Options with nothing to act on in this run are not raced (their optimize would refuse or be a no-op).
    inapplicable = {} if batch == 2 else {cc: f"guidance {args.guidance}: no CFG pass to cut"}
    if args.steps < 2:
        inapplicable[dc] = f"{args.steps} step: no later step to reuse deep features in"
    for name in [n for n, specs in opts.items() if set(specs) & set(inapplicable)]:
        opts.pop(name)
    result["options_not_raced"] = {spec.split(":")[0]: why for spec, why in inapplicable.items()}
    random_decoder = {name for name, specs in opts.items() if TINY_VAE in specs}   # images not comparable
    bases = {name: int8n if name.startswith("int8-nncf") else int8 for name in opts}
    if "int8 + tome" in tomed and not args.per_step_only and not inapplicable:
        opts["int8 + tome + deepcache + cfg-cutoff"] = [dc, cc]
        bases["int8 + tome + deepcache + cfg-cutoff"] = tomed["int8 + tome"]
    optioned = {}
    for name, specs in opts.items():
        out = work / f"{name.replace(' + ', '-')}-dc{args.deepcache}-cc{args.cfg_cutoff}{tome_tag}"
        # A random-weight TAESD can't pass a gate against the full decoder: its time is what counts.
        gate = ["--no-gate", "--steps", "2"] if TINY_VAE in specs else OPTION_GATE
        cmd = ["edgegen", "optimize", str(bases[name]), *[a for s in specs for a in ("--pipeline-option", s)],
               "--out", str(out), *gate]
        if prepare(f"optimize {name}", cmd, out)[0]:
            optioned[name] = out
    px = str(args.latent * 8)
    static = ["--height", px, "--width", px, "--batch", "1"]
    compiled = {}
    # The peer's image runs edgegen's static OpenVINO compile; per step alone needs no compile at all.
    plan = [] if args.per_step_only and args.no_compiled else [("openvino default, static", art, static)]
    if not args.no_compiled:
        plan += [] if args.openvino_only else [("openvino default", art, []), (OV_INT8, int8, [])]
        plan += [(OV_INT8_STATIC, int8, static)]
        if nncf_pass_ok:
            plan.append(("openvino on edgegen int8-nncf, static", int8n, static))
        if outer_ok:    # the accurate int8 recipe, on the runtime that wins with AVX512-BF16
            plan.append(("openvino on edgegen int8 outer convs float, static", int8_outer, static))
        # --compile-option: the recipes' compiles take these backend options (e.g. keep_f32=Add+Multiply).
        opt_args = [a for o in args.compile_option for a in ("--option", o)]
        opt_tag = "".join(f", {o}" for o in args.compile_option)
        plan += [(f"openvino on edgegen int8:{cfg}, static{opt_tag}", out, static + opt_args)
                 for cfg, out in recipes.items()]
    # edgegen's whole pipeline on its own OpenVINO backend: its int8 QDQ graphs, static.
    image_compiles, image_only = {}, set()
    if args.compiled_images and not args.per_step_only:
        image_compiles[OV_INT8_STATIC] = int8
        if nncf_pass_ok:
            image_compiles["openvino on edgegen int8-nncf, static"] = int8n
        if vae_ok:
            image_compiles["openvino on edgegen int8 U-Net + VAE decoder, static"] = int8_vae
        # The step options compiled with their artifact (DeepCache's shallow graph too); a
        # random-weight TAESD is left out, its image can't be compared.
        # cfg-cutoff runs the U-Net at two batches, which one static shape can't hold: dynamic.
        for name, path in optioned.items():
            if name not in random_decoder:
                image_compiles[f"openvino on edgegen {name}{'' if cc in opts[name] else ', static'}"] = path
        image_only = set(image_compiles) - {p[0] for p in plan}
        plan += [(n, image_compiles[n], static if n.endswith(", static") else []) for n in sorted(image_only)]
    plan = [p for p in plan if picked(p[0]) or p[0] in image_compiles]
    for name, src, extra in plan:
        out = work / re.sub(r"[^A-Za-z0-9._-]", "", name.replace(" + ", "-").replace(" ", "-").replace(",", ""))
        if src in optioned.values():    # named for its source, which carries the option values
            out = work / f"openvino{'-static' if extra else ''}-{src.name}"
        ok, _ = prepare(f"compile {name}", ["edgegen", "compile", str(src), "--target", "openvino", "--out", str(out),
                                            "--steps", "2", "--gate-prompts", "1", *extra], out)
        if ok:
            compiled[name] = out
    nncf_xml = work / ("nncf" if args.peer == "transformer" else f"nncf-{args.peer}") / "unet.xml"
    nncf_xml.parent.mkdir(exist_ok=True)

    def nncf(component: str, label: str) -> bool:
        xml = nncf_xml.with_name(f"{component}.xml")
        if xml.is_file():
            return True
        ok, text = prepare(label, [sys.executable, __file__, "--artifact", str(art), "--peer", args.peer,
                                   "--nncf", component, str(xml)])
        if ok:
            result["prepare"][label].update(json.loads(text.strip().splitlines()[-1]))
        return ok

    nncf_ok = nncf("unet", "nncf int8")
    # Beyond optimum-intel's recipe (its hybrid mode quantizes the U-Net's activations only): the
    # peer with its decoder NNCF-int8 too, to race edgegen's --vae-int8 row fairly.
    nncf_vae_ok = vae_ok and nncf_ok and nncf("vae_decoder", "nncf int8 vae_decoder")

    # -- per step ---------------------------------------------------------------------------
    rows = [("pytorch eager fp32", "torch", art), ("ort fp32", "edgegen", art),
            (ORT_INT8, "edgegen", int8)]
    if nncf_pass_ok:
        rows.append(("ort int8-nncf (edgegen --int8-nncf)", "edgegen", int8n))
    if outer_ok:
        rows.append(("ort int8, outer convs float (int8:outer_convs=false)", "edgegen", int8_outer))
    if not args.openvino_only:
        rows += [(f"ort int8:{cfg}", "edgegen", out) for cfg, out in recipes.items()]
    rows += [(f"ort {n} (--pass tome:{args.tome})", "edgegen", p) for n, p in tomed.items()]
    if "int8 + deepcache" in optioned:
        rows.append(("ort int8, deepcache's shallow U-Net (a cached step)", "shallow", optioned["int8 + deepcache"]))
    # (Compiles made for the image rows only have the U-Net of a per-step row already there.)
    rows += [(n, "edgegen", p) for n, p in compiled.items() if n not in image_only]
    if nncf_ok:
        rows += [("openvino + nncf int8 (peer)", "nncf", nncf_xml), (PEER, "nncf-static", nncf_xml)]
    # The peer (the ratios' denominator) and ORT fp32 (the errors' reference) always run.
    rows = [r for r in rows if picked(r[0]) or r[2] == nncf_xml or r[0] == "ort fp32"]
    if args.per_image_only:
        rows = []
    me = [sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats), "--artifact",
          str(art), "--latent", str(args.latent), "--steps", str(args.steps), "--guidance", str(args.guidance)]
    outs = {}
    # Rows run in turn, --rounds times over: a shared 2-core VM drifts by 5-10% over the minutes
    # one pass takes (measured: the same two graphs 0.885x apart in one pass, 0.98x interleaved), so
    # each row's best is taken over rounds spread across the whole run, and each round's ratio
    # against the peer timed beside it is kept.
    for name, kind, path in rows:
        e = result["per_step"][name] = {"exit_code": 0, "peak_rss_gb": 0.0, "rounds": []}
        if name in compiled:
            t = json.loads((compiled[name] / "manifest.json").read_text())["target"]
            e["compile_gate_end_to_end"] = t.get("gate", {}).get("end_to_end")
    for rnd in range(args.rounds):
        for i, (name, kind, path) in enumerate(rows):
            e = result["per_step"][name]
            if e["exit_code"]:      # failed in an earlier round: the row is marked failed, not rerun
                continue
            npy = work / f"step-{i}.npy"
            rc, wall, rss, text = child(me + ["--step-child", kind, str(path), str(npy)])
            e["peak_rss_gb"] = max(e["peak_rss_gb"], round(rss, 2))
            if rc != 0:
                e["exit_code"] = rc
                e.pop("seconds_per_step", None)
                print(name, json.dumps(e), flush=True)
                continue
            got = json.loads(text.strip().splitlines()[-1])
            e["rounds"].append(got.pop("seconds_per_step"))
            e.update(got, seconds_per_step=min(e["rounds"]))
            outs[name] = np.load(npy)
            if kind == "shallow":
                outs[name + " (its whole graph)"] = np.load(str(npy) + ".whole.npy")
            print(name, f"round {rnd + 1}", json.dumps(e), flush=True)
    ref = outs.get("ort fp32")
    for name in list(result["per_step"]):
        out = outs.get(name)
        base = outs.get(name + " (its whole graph)", ref)
        if out is not None and base is not None:
            result["per_step"][name]["rel_err"] = round(float(np.linalg.norm(out.astype(np.float64) - base)
                                                              / np.linalg.norm(base)), 4)

    # -- per image --------------------------------------------------------------------------
    images = [] if args.per_step_only else [("ort fp32", "edgegen", art), ("ort int8", "edgegen", int8)]
    if args.openvino_only:
        images = images[:1]
    if vae_ok:
        images.append(("ort int8, U-Net + VAE decoder", "edgegen", int8_vae))
    if "int8 + tome" in tomed and not args.per_step_only:
        images.append(("ort int8 + tome", "edgegen", tomed["int8 + tome"]))
    images += [] if args.openvino_only else [(f"ort {n}", "edgegen", p) for n, p in optioned.items()]
    images += [(n, "edgegen", compiled[n]) for n in image_compiles if n in compiled]
    if images and nncf_ok and "openvino default, static" in compiled:
        images.append((PEER, "peer", compiled["openvino default, static"]))
        if nncf_vae_ok:
            images.append((PEER_VAE, "peer-vae", compiled["openvino default, static"]))
    pics = {}
    for name, kind, path in images:
        npy = work / f"image-{len(pics)}.npy"
        rc, wall, rss, text = child(me + ["--image-child", kind, str(path), str(npy), str(nncf_xml)])
        e = {"exit_code": rc, "peak_rss_gb": round(rss, 2)}
        if rc == 0:
            e.update(json.loads(text.strip().splitlines()[-1]))
            pics[name] = np.load(npy)
        result["per_image"][name] = e
        print(name, json.dumps(e), flush=True)
    from edgegen.optimize.gate import psnr, ssim

    ref_img = pics.get("ort fp32")
    for name, img in pics.items():
        if ref_img is not None and name.removeprefix("ort ") in random_decoder:
            result["per_image"][name]["quality"] = ("random-weight TAESD decoder: image not comparable with the full "
                                                    "decoder's; see the trained edgegen-shapes model")
        elif ref_img is not None:
            result["per_image"][name].update(psnr=round(psnr(ref_img, img), 2), ssim=round(ssim(ref_img, img), 4))
    for table in ("per_step", "per_image"):
        key = "seconds_per_step" if table == "per_step" else "seconds_per_image"
        peer = result[table].get(PEER, {}).get(key)
        for e in result[table].values():
            if peer and e.get(key):
                e["ratio_vs_nncf"] = round(peer / e[key], 3)
    peer_rounds = result["per_step"].get(PEER, {}).get("rounds", [])
    for e in result["per_step"].values():
        if len(peer_rounds) > 1 and len(e.get("rounds", [])) == len(peer_rounds):
            e["ratio_per_round"] = [round(p / t, 3) for p, t in zip(peer_rounds, e["rounds"])]
    text = report(result, args)
    print(text)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    data = json.dumps(result, indent=2) + "\n"
    if args.json:
        args.json.write_text(data)
    if args.record:
        res = Path(__file__).resolve().parent / "results"
        (res / f"{args.record}.json").write_text(data)
        (res / f"{args.record}.md").write_text(f"`{result['command']}`\n\n{text}\n")


def report(result: dict, args) -> str:
    lines = [] if not result["per_step"] else [
        f"Per step: U-Net, batch {result['unet_batch']}{' (CFG)' if result['unet_batch'] == 2 else ''}, "
        f"{args.latent}x{args.latent} latent ({args.latent * 8} px), best of {args.repeats}"
        + (f" in each of {args.rounds} rounds, the rows run in turn in each round" if args.rounds > 1 else "") + ".", "",
        "| variant | s/step | ratio_vs_nncf | ratio per round | rel. error vs ORT fp32 | compile gate PSNR | peak RSS GB |",
        "|---|---|---|---|---|---|---|"]
    for name, e in result["per_step"].items():
        g = e.get("compile_gate_end_to_end")
        gate = f"{g['psnr']:.1f} dB" if g else "-"
        per_round = " / ".join(map(str, e.get("ratio_per_round", []))) or "-"
        lines.append(f"| {name} ({e.get('precision') or e.get('backend', '?')}) | {e.get('seconds_per_step', 'failed')} | "
                     f"{e.get('ratio_vs_nncf', '-')} | {per_round} | {e.get('rel_err', '-')} | {gate} | "
                     f"{e['peak_rss_gb']} |")
    if result["per_image"]:
        n = result["steps_per_image"]
        lines += ["", f"Per image: {n} step{'s' * (n != 1)}, guidance {result['guidance']}, {args.latent * 8} px, "
                  "text encoder and VAE included, components loaded and warmed first.", "",
                  "| variant | s/image | ratio_vs_nncf | text / U-Net / sampler / VAE s | PSNR vs ORT fp32 | SSIM "
                  "| peak RSS GB |", "|---|---|---|---|---|---|---|"]
    for name, e in result["per_image"].items():
        st = e.get("stages", {})
        lines.append(f"| {name} | {e.get('seconds_per_image', 'failed')} | {e.get('ratio_vs_nncf', '-')} | "
                     f"{st.get('text', '-')} / {st.get('denoiser', '-')} / {st.get('sampler', '-')} / {st.get('vae', '-')} | "
                     f"{e.get('psnr', '-')} | {e.get('ssim', '-')} | {e['peak_rss_gb']} |")
    notes = sorted({e["quality"] for e in result["per_image"].values() if "quality" in e})
    lines += [f"Rows with tiny-vae: {n}." for n in notes]
    lines += [f"Not raced: {k} ({why})." for k, why in result.get("options_not_raced", {}).items()]
    recipe = PEER_RECIPES[result.get("peer_recipe", "transformer")]
    lines += ["", f"The peer's U-Net: {recipe}; calibrated on the same sampler-trajectory inputs as edgegen's int8.",
              f"CPU flags: {' '.join(result['cpu_flags'])}. Threads: {result['threads']}. Weights are seeded random "
              "(real architecture): time and memory do not depend on weight values; errors and PSNR compare variants "
              "on the same random weights, weak evidence for a trained checkpoint's quality.",
              "Preparation: " + "; ".join(f"{k} {v['wall_seconds']} s" if "wall_seconds" in v else f"{k} reused"
                                  for k, v in result["prepare"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
