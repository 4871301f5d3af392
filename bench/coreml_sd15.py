"""CoreML conversion of real-size SD1.5 (seeded random weights): time, peak RSS and mlpackage sizes
for fp16 and for 6-bit and 4-bit palettization.

    python bench/coreml_sd15.py [--tiny] [--gate] [--record coreml_sd15]

Each variant is one `edgegen export sd15 --target coreml --height 512 --width 512` in its own
process; peak RSS is that process's VmHWM as the export records it in the manifest (target.build).
Sizes are the saved packages' bytes. Targets from the issue: 6-bit <= 0.40x and 4-bit <= 0.27x the
fp16 size, judged on the UNet (the denoiser and text encoder are palettized, embeddings and the VAE
stay 16-bit, so the whole artifact shrinks less; both ratios are reported).

Without --gate the compressed exports run with --no-gate: with random weights the quality gate
measures nothing real (bench/results only reports speed and memory from such weights), and Apple
recommends >= 6 bits for post-training palettization, so 4-bit may legitimately fail it.
--tiny dry-runs the script on the tiny config at 64 px (seconds, not a measurement).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from edgegen.runtimes.host import ISA_FLAGS, cpu_flags  # noqa: E402

VARIANTS = (("fp16", ()), ("palettize-6", ("--palettize", "6")), ("palettize-4", ("--palettize", "4")))
TARGETS = {"palettize-6": 0.40, "palettize-4": 0.27}   # max size vs fp16


def run_variant(name: str, extra: tuple, out: Path, tiny: bool, gate: bool) -> dict:
    side = "64" if tiny else "512"
    cmd = ["edgegen", "export", "sd15", "--tiny" if tiny else "--random-weights", "--target", "coreml",
           "--height", side, "--width", side, "--out", str(out), "--force", *extra]
    if extra and not gate:
        cmd.append("--no-gate")
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    m = json.loads((out / "manifest.json").read_text())
    t = m["target"]
    comps = {n: {"bytes": c["bytes"], "average_bits": c["weight_bits"]["average_bits"],
                 "conversion_seconds": c["conversion_seconds"], "compute_precision": c["compute_precision"]}
             for n, c in t["components"].items()}
    gate = ((t.get("compression") or {}).get("gate") or {})
    return {"export_command": " ".join(cmd), "wall_seconds": round(wall, 1),
            "conversion_seconds": round(sum(c["conversion_seconds"] for c in comps.values()), 1),
            "peak_rss_gb": round(t["build"]["peak_rss_bytes"] / 2**30, 2),
            "total_bytes": sum(c["bytes"] for c in comps.values()), "components": comps,
            "gate": "skipped" if gate.get("skipped") else gate.get("end_to_end")}


def markdown(result: dict) -> str:
    rows = ["| variant | UNet MB | UNet x fp16 | total MB | total x fp16 | UNet bits/weight | conversion s "
            "| wall s | peak RSS GB | target (UNet) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in result["variants"].items():
        target = TARGETS.get(name)
        verdict = "-" if target is None else f"<= {target:.2f}x: {'met' if v['unet_ratio'] <= target else 'missed'}"
        rows.append(f"| {name} | {v['components']['unet']['bytes'] / 1e6:.1f} | {v['unet_ratio']:.3f} "
                    f"| {v['total_bytes'] / 1e6:.1f} | {v['total_ratio']:.3f} "
                    f"| {v['components']['unet']['average_bits']} | {v['conversion_seconds']} | {v['wall_seconds']} "
                    f"| {v['peak_rss_gb']} | {verdict} |")
    mach = result["machine"]
    return (f"`{result['command']}`\n\n{result['weights']}; {mach['cpu']}, {mach['cores']} cores, "
            f"{mach['ram_gb']} GB RAM, CPU flags {' '.join(result['cpu_flags']) or 'none'}; {mach['date']}.\n\n"
            + "\n".join(rows) + "\n\nPeak RSS is each export process's own VmHWM; sizes are the saved "
            "mlpackages. The VAE and embedding tables stay 16-bit, hence total > UNet ratio.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="dry run on the tiny config (not a measurement)")
    ap.add_argument("--gate", action="store_true", help="run the quality gate on the compressed variants")
    ap.add_argument("--record", help="write bench/results/NAME.json and NAME.md")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgegen-coreml-bench-"))
    try:
        variants = {}
        for name, extra in VARIANTS:
            variants[name] = run_variant(name, extra, tmp / name, args.tiny, args.gate)
            shutil.rmtree(tmp / name, ignore_errors=True)   # a real-size artifact is GBs
        base = variants["fp16"]
        for v in variants.values():
            v["unet_ratio"] = round(v["components"]["unet"]["bytes"] / base["components"]["unet"]["bytes"], 4)
            v["total_ratio"] = round(v["total_bytes"] / base["total_bytes"], 4)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"command": " ".join(["python bench/coreml_sd15.py", *sys.argv[1:]]),
              "weights": "tiny config, 64 px (dry run)" if args.tiny else
              "seeded random weights on the real SD1.5 architecture, 512 px (valid for size, time and memory)",
              "machine": describe(), "cpu_flags": sorted(cpu_flags() & set(ISA_FLAGS)), "variants": variants}
    print(markdown(result))
    if args.record:
        res = Path(__file__).resolve().parent / "results"
        res.mkdir(exist_ok=True)
        (res / f"{args.record}.json").write_text(json.dumps(result, indent=2) + "\n")
        (res / f"{args.record}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
