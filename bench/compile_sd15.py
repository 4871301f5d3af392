"""Real-size SD1.5 UNet (seeded random weights) on every CPU backend, with the error of each row.

    python bench/compile_sd15.py [--artifact build/sd15-random] [--threads 2] [--repeats 3]
                                 [--record compile_sd15_cpu]

Rows, all measured in one run, one child process each, on the same UNet inputs (batch 2 =
CFG, 64x64 latent = 512 px, 77 tokens, t=500):
- edgegen on onnxruntime: fp32, and `edgegen optimize --int8`;
- edgegen compiled for OpenVINO (`edgegen compile --target openvino`): the fp32 artifact at
  OpenVINO's default precision for this CPU, and the int8 artifact; each with the artifact's
  own shape ranges and with a static profile (--height 512 --width 512 --batch 1);
- the peer: OpenVINO + NNCF int8 (ModelType.TRANSFORMER, SmoothQuant, calibrated on the same
  sampler-trajectory UNet inputs edgegen's --int8 uses), dynamic and reshaped static, the
  way optimum-intel's users run it.
Every row reports its relative L2 error against ORT fp32 on the same inputs; compiled rows
also carry their compile gate. Multi-minute (export ~35 s, int8 calibration ~5 min, NNCF ~4 min).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from optimize_sd15 import _cpu_flags, child, feeds, time_fn  # noqa: E402

CALIB = ["--size", "256", "--steps", "4", "--calibration-prompts", "2", "--gate-prompts", "1"]


def measure(kind: str, path: str, artifact: Path, out_npy: Path, threads: int, repeats: int, latent: int) -> dict:
    """Inside a child: load one variant, time it, save its output for the error column."""
    f = feeds(artifact, latent)
    info = {}
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
    np.save(out_npy, run())
    return {**res, **info}


def nncf_int8(art: Path, out_xml: Path, say) -> dict:
    """The peer's recipe on the same calibration data edgegen's --int8 gets."""
    import time

    import nncf
    import openvino as ov

    from edgegen.optimize.calibrate import collect
    from edgegen.runtimes.artifact import load_artifact

    a = load_artifact(art, verify=False)
    t0 = time.time()
    traj = collect(a, 2, 1, steps=4, size=256, say=say)
    data = traj.calibration["unet"]
    model = ov.Core().read_model(str(a.graph_path("unet")))
    q = nncf.quantize(model, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(data))
    ov.save_model(q, str(out_xml), compress_to_fp16=False)
    return {"samples": len(data), "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", help="existing sd15 --random-weights artifact (default: export one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px); a tiny smoke run: 8")
    ap.add_argument("--record", help="write JSON + Markdown under bench/results/ with this name")
    ap.add_argument("--measure", nargs=3, metavar=("KIND", "PATH", "NPY"), help=argparse.SUPPRESS)
    ap.add_argument("--nncf", nargs=1, metavar="OUT_XML", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        kind, path, npy = args.measure
        print(json.dumps(measure(kind, path, Path(args.artifact), Path(npy), args.threads, args.repeats,
                                   args.latent)))
        return
    if args.nncf:
        print(json.dumps(nncf_int8(Path(args.artifact), Path(args.nncf[0]), lambda m: None)))
        return

    work = Path(tempfile.mkdtemp(prefix="edgegen-compile-bench-"))
    result = {"command": " ".join(["python bench/compile_sd15.py", *sys.argv[1:]]), "machine": describe(),
              "cpu_flags": _cpu_flags(), "prepare": {}, "speed": {}}
    art = Path(args.artifact) if args.artifact else work / "sd15"

    def prepare(name, cmd):
        rc, wall, rss, text = child(cmd)
        result["prepare"][name] = {"command": " ".join(cmd), "exit_code": rc, "wall_seconds": round(wall, 1),
                                   "peak_rss_gb": round(rss, 2)}
        print(name, json.dumps(result["prepare"][name]), flush=True)
        return rc == 0, text

    if not args.artifact and not prepare("export", ["edgegen", "export", "sd15", "--random-weights", "--out",
                                                    str(art)])[0]:
        sys.exit(1)
    int8 = work / "sd15-int8"
    prepare("optimize int8", ["edgegen", "optimize", str(art), "--int8", "--components", "unet", "--out", str(int8),
                              *CALIB])
    px = str(args.latent * 8)
    static = ["--height", px, "--width", px, "--batch", "1"]
    compiled = {}
    for name, src, extra in (("openvino default", art, []), ("openvino on edgegen int8", int8, []),
                             ("openvino default, static", art, static),
                             ("openvino on edgegen int8, static", int8, static)):
        out = work / name.replace(" ", "-").replace(",", "")
        # The compile gate runs the parent's trajectories: at 256 px and 4 steps here (time).
        ok, _ = prepare(f"compile {name}", ["edgegen", "compile", str(src), "--target", "openvino", "--out", str(out),
                                            "--steps", "4", "--gate-prompts", "1", *extra])
        if ok:
            compiled[name] = out
    nncf_xml = work / "nncf" / "unet.xml"
    nncf_xml.parent.mkdir()
    ok, text = prepare("nncf int8", [sys.executable, __file__, "--artifact", str(art), "--nncf", str(nncf_xml)])
    if ok:
        result["prepare"]["nncf int8"].update(json.loads(text.strip().splitlines()[-1]))

    runs = [("ort fp32", "edgegen", art), ("ort int8 (edgegen --int8)", "edgegen", int8)]
    runs += [(n, "edgegen", p) for n, p in compiled.items()]
    if ok:
        runs += [("openvino + nncf int8 (peer)", "nncf", nncf_xml),
                 ("openvino + nncf int8, static (peer)", "nncf-static", nncf_xml)]
    me = [sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats),
          "--artifact", str(art), "--latent", str(args.latent), "--measure"]
    outputs = {}
    for name, kind, path in runs:
        npy = work / f"{len(outputs)}.npy"
        rc, wall, rss, text = child(me + [kind, str(path), str(npy)])
        entry = {"exit_code": rc, "peak_rss_gb": round(rss, 2)}
        if rc == 0:
            entry.update(json.loads(text.strip().splitlines()[-1]))
            outputs[name] = np.load(npy)
        if name in compiled:
            t = json.loads((compiled[name] / "manifest.json").read_text())["target"]
            entry["compile_gate"] = t.get("gate", {}).get("end_to_end")
            entry["compile_seconds"] = t["build"]["seconds"]
        result["speed"][name] = entry
        print(name, json.dumps(entry), flush=True)
    ref = outputs.get("ort fp32")
    for name, out in outputs.items():
        if ref is not None:
            result["speed"][name]["rel_err_vs_ort_fp32"] = round(
                float(np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)), 4)

    lines = [f"| variant | s/step, best of {args.repeats} | vs ORT fp32 | vs OV+NNCF static | rel. error vs ORT fp32 "
             "| compile gate (PSNR vs parent) | peak RSS GB |", "|---|---|---|---|---|---|---|"]
    base = result["speed"].get("ort fp32", {}).get("seconds_per_step")
    peer = result["speed"].get("openvino + nncf int8, static (peer)", {}).get("seconds_per_step")
    for name, e in result["speed"].items():
        s = e.get("seconds_per_step")
        g = e.get("compile_gate")
        gate = f"{g['psnr']:.1f} dB" if g else "-"
        lines.append(f"| {name} ({e.get('precision') or e.get('backend', '?')}) | {s or 'failed'} | "
                     f"{f'{base / s:.2f}x' if s and base else '-'} | {f'{peer / s:.2f}x' if s and peer else '-'} | "
                     f"{e.get('rel_err_vs_ort_fp32', '-')} | {gate} | "
                     f"{e['peak_rss_gb']} |")
    lines += ["", f"CPU flags: {' '.join(result['cpu_flags'])}. Threads: {args.threads}. Batch 2 (CFG), "
              f"{args.latent}x{args.latent} latent ({args.latent * 8} px). Weights are seeded random (real architecture): speed and memory do not depend on weight "
              "values; the error column compares each variant with fp32 on the same random weights, which is weak "
              "evidence for a trained checkpoint's quality.",
              "Preparation (wall s, peak RSS GB): " + "; ".join(
                  f"{k} {v['wall_seconds']} s, {v['peak_rss_gb']} GB" for k, v in result["prepare"].items())]
    table = "\n".join(lines)
    print(table)
    shutil.rmtree(work, ignore_errors=True)
    if args.record:
        res = Path(__file__).resolve().parent / "results"
        (res / f"{args.record}.json").write_text(json.dumps(result, indent=2) + "\n")
        (res / f"{args.record}.md").write_text(f"`{result['command']}`\n\n{table}\n")


if __name__ == "__main__":
    main()
