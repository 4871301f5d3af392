"""Real-size SD1.5 UNet (seeded random weights): optimize passes, then per-step speed side
by side with plain ORT fp32, PyTorch fp32 eager and OpenVINO's default (bf16 on CPUs
with AVX512-BF16 or AMX, f32 otherwise), one child process per measurement.

    python bench/optimize_sd15.py [--artifact build/sd15-random] [--passes int8,int8-dynamic,fuse,fuse+int8]
                                  [--threads 2] [--repeats 3] [--record optimize_sd15]

Multi-minute: the export alone is ~35 s at 7 GB peak RSS; each optimize records its wall
time and peak RSS (the child's ru_maxrss, from os.wait4). Calibration and gate
trajectories run at --calib-size (default 256 px, 4 steps, 2+1 prompts) to bound time and
the calibrator's memory; the speed runs use a 64x64 latent (512 px), batch 2 (CFG).
OpenVINO is measured only where it is installed (it is not part of edgegen's extras).
A smoke run on a tiny export: --artifact build/sd15-tiny --latent 8.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402


def child(cmd: list[str]) -> tuple[int, float, float, str]:
    """(return code, wall seconds, peak RSS GB, stdout) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 2**20, out


def feeds(artifact: Path, latent: int, batch: int = 2):
    """UNet inputs from the artifact's IO spec: batch 2 (CFG), latent x latent, 77 tokens."""
    from edgegen.runtimes.artifact import load_artifact

    io = load_artifact(artifact, verify=False).io("unet")
    sizes = io.sizes("opt", batch=batch, latent_height=latent, latent_width=latent)
    f = io.example(sizes, seed=0)
    f["timestep"][:] = 500.0
    return f


def time_fn(fn, repeats: int) -> dict:
    fn()  # warm-up (first run allocates and, for OpenVINO, compiles)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"seconds_per_step": round(min(times), 3), "all": [round(t, 3) for t in times]}


def measure(kind: str, path: str, artifact: Path, latent: int, threads: int, repeats: int) -> dict:
    """Runs inside a child: one runtime, one graph."""
    f = feeds(artifact, latent)
    if kind == "ort":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return time_fn(lambda: sess.run(None, {k: f[k] for k in names}), repeats)
    if kind == "openvino":
        try:
            import openvino as ov
        except ImportError:
            return {"skipped": "openvino is not installed (pip install openvino)"}

        core = ov.Core()
        model = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads})
        hint = model.get_property("INFERENCE_PRECISION_HINT")
        hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        names = [i.get_any_name() for i in model.inputs]
        req = model.create_infer_request()
        res = time_fn(lambda: req.infer({k: f[k] for k in names}), repeats)
        return {**res, "inference_precision": hint}
    if kind == "torch":
        import torch
        from diffusers import UNet2DConditionModel

        from edgegen.export.families import get_family

        from edgegen.runtimes.artifact import load_artifact

        m = load_artifact(artifact, verify=False).manifest
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**get_family(m["family"]).denoiser.get(m.get("size") == "tiny")).eval()
        t = {k: torch.from_numpy(v) for k, v in f.items()}
        with torch.inference_mode():
            return time_fn(lambda: unet(t["sample"], t["timestep"], t["encoder_hidden_states"]), repeats)
    raise ValueError(kind)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", help="existing sd15 --random-weights artifact (default: export one)")
    ap.add_argument("--passes", default="int8,int8-dynamic,fuse,fuse+int8",
                    help="variants, comma-separated; a+b applies passes a and b together")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--latent", type=int, default=64, help="latent side for the speed runs (64 = 512 px)")
    ap.add_argument("--record", help="write JSON + Markdown under bench/results/ with this name")
    ap.add_argument("--keep", action="store_true", help="keep the optimized variants (default: deleted at the end)")
    ap.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, Path(args.artifact), args.latent, args.threads, args.repeats)))
        return

    work = Path(tempfile.mkdtemp(prefix="edgegen-opt-bench-"))
    result = {"command": " ".join(["python bench/optimize_sd15.py", *sys.argv[1:]]), "machine": describe(),
              "optimize": {}, "speed": {}}
    art = Path(args.artifact) if args.artifact else work / "sd15"
    if not args.artifact:
        rc, wall, rss, _ = child(["edgegen", "export", "sd15", "--random-weights", "--out", str(art)])
        if rc:
            sys.exit(rc)
        result["export"] = {"wall_seconds": round(wall, 1), "peak_rss_gb": round(rss, 2)}
    variants = {"ort fp32": art / "unet" / "model.onnx"}
    for p in [p for p in args.passes.split(",") if p]:
        out = work / f"sd15-{p}"
        flags = [f"--{x}" for x in p.split("+")]  # "fuse+int8": passes applied together
        cmd = ["edgegen", "optimize", str(art), *flags, "--components", "unet", "--out", str(out), "--force",
               "--size", str(args.calib_size), "--steps", str(args.steps), "--calibration-prompts", "2",
               "--gate-prompts", "1"]
        rc, wall, rss, text = child(cmd)
        entry = {"command": " ".join(cmd), "wall_seconds": round(wall, 1), "peak_rss_gb": round(rss, 2),
                 "exit_code": rc}
        if rc == 0:
            comp = json.loads((out / "manifest.json").read_text())["components"]["unet"]
            e2e = json.loads((out / "manifest.json").read_text()).get("gate", {}).get("end_to_end")
            entry.update(gate=comp["gate"], end_to_end=e2e, size_ratio=comp["optimize"]["size_ratio"],
                         weights=comp["optimize"]["weights"], bytes=comp["optimize"]["bytes"])
            variants[f"ort {p}"] = out / "unet" / "model.onnx"
        result["optimize"][p] = entry
        print(json.dumps({p: entry}, indent=1), flush=True)

    me = [sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats),
          "--artifact", str(art), "--latent", str(args.latent), "--measure"]
    runs = [(name, "ort", str(path)) for name, path in variants.items()]
    runs += [("pytorch fp32 eager", "torch", "-"), ("openvino default", "openvino", str(variants["ort fp32"]))]
    if "ort int8" in variants:  # OpenVINO reads QDQ graphs and runs them in int8
        runs.append(("openvino on edgegen int8", "openvino", str(variants["ort int8"])))
    for name, kind, path in runs:
        rc, wall, rss, text = child(me + [kind, path])
        entry = {"exit_code": rc, "peak_rss_gb": round(rss, 2)}
        if rc == 0:
            entry.update(json.loads(text.strip().splitlines()[-1]))
        result["speed"][name] = entry
        print(name, json.dumps(entry), flush=True)

    lines = [f"| variant | s/step (batch 2, {args.latent}x{args.latent} latent), best of {args.repeats} | "
             "speed-up vs ORT fp32 | vs PyTorch eager | peak RSS GB | gate (cosine, rel. error; end-to-end PSNR) |",
             "|---|---|---|---|---|---|"]
    base = {k: result["speed"].get(k, {}).get("seconds_per_step") for k in ("ort fp32", "pytorch fp32 eager")}
    for name, e in result["speed"].items():
        p = name.split(" ", 1)[1] if name.startswith("ort ") else None
        g = result["optimize"].get(p, {}).get("gate") if p else None
        e2e = result["optimize"].get(p, {}).get("end_to_end") if p else None
        gate = f"cos {g['cosine']:.4f}, rel {g['rel_err']:.3f}" if g else "-"
        if e2e:
            gate += f"; {e2e['psnr']:.1f} dB"
        speed = e.get("seconds_per_step")
        ratios = [f"{base[k] / speed:.2f}x" if speed and base[k] else "-" for k in base]
        if "inference_precision" in e:
            name += f" ({e['inference_precision']})"
        lines.append(f"| {name} | {speed or e.get('skipped', 'failed')} | {ratios[0]} | {ratios[1]} | "
                     f"{e['peak_rss_gb']} | {gate} |")
    flags = _cpu_flags()
    lines += ["", f"CPU SIMD flags: {' '.join(flags) or 'unknown'}. OpenVINO's default precision follows the CPU: "
              "bf16 where it has AVX512-BF16 or AMX, f32 otherwise (shown in brackets).",
              "Weights: seeded random (real architecture): speed and memory don't depend on weight values; "
              "gate figures measure each variant against the fp32 graph on the same random weights."]
    table = "\n".join(lines)
    print(table)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)  # several multi-GB variants
    if args.record:
        res = Path(__file__).resolve().parent / "results"
        res.mkdir(exist_ok=True)
        (res / f"{args.record}.json").write_text(json.dumps(result, indent=2) + "\n")
        (res / f"{args.record}.md").write_text(f"`{result['command']}`\n\n{table}\n")


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    have = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(f for f in have if f.startswith(("avx", "amx", "fma")) or f in ("f16c", "avx_vnni"))


if __name__ == "__main__":
    main()
