"""int8 recipes side by side by accuracy: one `--pass int8:CONFIG` artifact per config, each U-Net's
relative error against the fp32 U-Net on onnxruntime (and, with --openvino, on OpenVINO's CPU
plugin compiled static at its default precision, optionally with the element-wise ops kept f32).

    python bench/int8_recipes.py FP32_ARTIFACT --config "" --config percentile=99.99 \\
        [--openvino [--keep-f32 Add+Multiply]] --work build/recipes [--record int8_recipes_sd15]

Why a bench of its own: cpu_peers.py races recipes for speed, and each of its OpenVINO compiles
runs a 512 px gate (minutes); choosing a calibration setting needs only the error, and one
quantization plus one U-Net call per recipe. The quantization and its calibration are edgegen's
own (`edgegen optimize --pass int8:...`, the same calibration arguments as cpu_peers.py), so a
recipe found here is raced there unchanged. Inputs: batch 2 (CFG), latent x latent, t=500, the
feeds of cpu_peers.py. Weights are seeded random: errors are weak evidence for a trained
checkpoint. Each call runs in its own process (the 3.4 GB U-Net twice would not share memory).
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cpu_peers import CALIB  # noqa: E402
from machine import describe  # noqa: E402
from optimize_sd15 import feeds  # noqa: E402

from edgegen.runtimes.host import ISA_FLAGS, cpu_flags  # noqa: E402


def _slug(config: str) -> str:
    return "int8-" + (re.sub(r"[^A-Za-z0-9_.]+", "-", config).strip("-") or "default")


def run_child(kind: str, graph: str, fp32: Path, latent: int, threads: int, npy: Path, keep_f32: str) -> dict:
    f = feeds(fp32, latent)
    t0 = time.perf_counter()
    if kind == "ort":
        from edgegen.runtimes.onnxruntime_backend import make_session

        sess = make_session(graph, threads=threads)
        out = sess.run(["noise_pred"], f)[0]
        info = {"runtime": "onnxruntime"}
    else:
        import openvino as ov

        from edgegen.runtimes.openvino_backend import f32_types
        from edgegen.runtimes.openvino_backend import keep_f32 as keep_f32_types

        core = ov.Core()
        model = core.read_model(graph)
        model.reshape({k: list(v.shape) for k, v in f.items()})
        marked = {}
        if keep_f32:
            model, marked = keep_f32_types(core, model, f32_types(keep_f32))
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        out = np.array(compiled.create_infer_request().infer(f)[compiled.output(0)], copy=True)
        info = {"runtime": "openvino", "precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                "keep_f32": keep_f32, "f32_layers": marked}
    np.save(npy, out)
    return {**info, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("--config", action="append", default=[], help="an int8 pass config (\"\" = the defaults)")
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--openvino", action="store_true", help="also run each graph on OpenVINO (static, its default precision)")
    ap.add_argument("--keep-f32", default="", help="with --openvino: layer types OpenVINO keeps f32 (e.g. Add+Multiply, as compile's keep_f32)")
    ap.add_argument("--work", type=Path, required=True, help="the int8 artifacts go here (reused when present)")
    ap.add_argument("--record")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "GRAPH", "NPY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(*args.child[:2], args.fp32, args.latent, args.threads, Path(args.child[2]),
                                   args.keep_f32)))
        return
    if not args.config:
        sys.exit("int8_recipes: give at least one --config (\"\" for the int8 defaults)")
    args.work.mkdir(parents=True, exist_ok=True)

    def child(kind, graph, npy):
        cmd = [sys.executable, __file__, str(args.fp32), "--latent", str(args.latent), "--threads", str(args.threads),
               "--keep-f32", args.keep_f32, "--work", str(args.work), "--child", kind, str(graph), str(npy)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"int8_recipes: {kind} on {graph} failed: {p.stderr.strip().splitlines()[-1:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    result = {"command": shlex.join(["python", "bench/int8_recipes.py", *sys.argv[1:]]), "machine": describe(),
              "cpu_flags": sorted(cpu_flags() & set(ISA_FLAGS)), "rows": {}}
    ref = args.work / "fp32.npy"
    child("ort", args.fp32 / "unet" / "model.onnx", ref)
    base = np.load(ref).astype(np.float64)

    def rel(npy):
        return round(float(np.linalg.norm(np.load(npy).astype(np.float64) - base) / np.linalg.norm(base)), 4)

    graphs = [("fp32", args.fp32)]
    for config in args.config:
        out = args.work / _slug(config)
        cmd = ["edgegen", "optimize", str(args.fp32), "--pass", f"int8:{config}" if config else "int8",
               "--components", "unet", "--out", str(out), *CALIB, "--no-gate"]
        name = config or "(defaults)"
        row = {"config": name, "command": " ".join(cmd)}
        if not (out / "manifest.json").is_file():
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"int8_recipes: {' '.join(cmd)} failed: {p.stderr.strip().splitlines()[-1:]}")
            row["quantize_seconds"] = round(time.perf_counter() - t0, 1)
        result["rows"][name] = row
        graphs.append((name, out))
        npy = out / "ort.npy"
        row["ort"] = {**child("ort", out / "unet" / "model.onnx", npy), "rel_err": rel(npy)}
        print(name, json.dumps(row["ort"]), flush=True)
    if args.openvino:
        for name, art in graphs:
            npy = args.work / f"ov-{_slug(name)}.npy"
            row = result["rows"].setdefault(name, {"config": name})
            row["openvino"] = {**child("ov", art / "unet" / "model.onnx", npy), "rel_err": rel(npy)}
            print(name, json.dumps(row["openvino"]), flush=True)
    text = report(result)
    print(text)
    if args.record:
        res = HERE / "results"
        (res / f"{args.record}.json").write_text(json.dumps(result, indent=1))
        (res / f"{args.record}.md").write_text(text)


def report(r: dict) -> str:
    lines = [f"# int8 recipes by accuracy: the U-Net's relative error against fp32", "",
             f"Command: `{r['command']}`", "",
             f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, flags {' '.join(r['cpu_flags'])}; "
             f"{r['machine']['date']}. Inputs: batch 2 (CFG), 512 px latents, t=500 (cpu_peers.py's). Weights are "
             "seeded random: the errors are weak evidence for a trained checkpoint.", "",
             "| int8 config | rel. error, onnxruntime | rel. error, OpenVINO static | OpenVINO precision (f32 ops kept) |",
             "|---|---|---|---|"]
    for name, row in r["rows"].items():
        ov = row.get("openvino", {})
        prec = f"{ov.get('precision', '-')} ({ov.get('keep_f32') or 'none'})" if ov else "-"
        lines.append(f"| {name} | {row.get('ort', {}).get('rel_err', '-')} | {ov.get('rel_err', '-')} | {prec} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
