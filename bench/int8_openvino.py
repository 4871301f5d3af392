"""Why `--int8` leaves Concat-fed nodes float and uses 7-bit weights: each setting's UNet error
on onnxruntime and on OpenVINO, against fp32, at tiny size (seconds per variant).

    python bench/int8_openvino.py [--family sd15] [--record int8_openvino]

For each int8 variant (`--pass int8:concat_fed=..,reduce_range=..`), the same QDQ UNet runs on
onnxruntime CPU and on OpenVINO CPU (INFERENCE_PRECISION_HINT f32, so only the int8 handling
differs), on the UNet inputs of real sampler trajectories (the gate prompts); the error is the
relative L2 distance to the fp32 UNet on onnxruntime over all those inputs. Tiny random
weights: the figures show runtime disagreement, not a trained model's quality.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from optimize_sd15 import _cpu_flags  # noqa: E402

VARIANTS = {
    "int8 v1 (Concat-fed nodes quantized, 8-bit weights)": "concat_fed=true,reduce_range=false",
    "+ reduce_range (7-bit weights)": "concat_fed=true,reduce_range=true",
    "Concat-fed nodes left float": "concat_fed=false,reduce_range=false",
    "**both: --int8 v2 default**": "concat_fed=false,reduce_range=true",
}


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="sd15")
    ap.add_argument("--record")
    args = ap.parse_args()
    import openvino as ov

    from edgegen.optimize.calibrate import collect
    from edgegen.runtimes.artifact import load_artifact
    from edgegen.runtimes.onnxruntime_backend import OrtComponent

    work = Path(tempfile.mkdtemp(prefix="edgegen-int8-ov-"))
    fp32 = work / "fp32"
    run(["edgegen", "export", args.family, "--tiny", "--out", str(fp32)])
    art = load_artifact(fp32)
    traj = collect(art, 0, 2, steps=8)
    den = art.manifest["pipeline"]["denoiser"]
    feeds = traj.gate_inputs[den]
    io = art.io(den)
    ref = np.concatenate([o["noise_pred"].ravel() for o in traj.gate_outputs[den]])

    def err(outs):
        x = np.concatenate([o.ravel() for o in outs])
        return round(float(np.linalg.norm(x - ref) / np.linalg.norm(ref)), 4)

    rows = {}
    core = ov.Core()
    for name, cfg in VARIANTS.items():
        out = work / cfg.replace(",", "-").replace("=", "_")
        run(["edgegen", "optimize", str(fp32), "--pass", f"int8:{cfg}", "--components", den, "--out", str(out),
             "--no-gate", "--calibration-prompts", "4", "--steps", "8"])
        graph = load_artifact(out).graph_path(den)
        ort = OrtComponent(den, graph, io)
        compiled = core.compile_model(core.read_model(str(graph)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        req = compiled.create_infer_request()
        ov_out = [np.array(req.infer(f)[compiled.output(0)], copy=True) for f in feeds]
        rows[name] = {"pass": f"int8:{cfg}", "onnxruntime": err([ort(**f)["noise_pred"] for f in feeds]),
                      "openvino": err(ov_out)}
        print(name, rows[name], flush=True)
    lines = ["| int8 variant | `--pass` | rel. error, onnxruntime | rel. error, OpenVINO (f32 hint) |", "|---|---|---|---|"]
    lines += [f"| {n} | `{r['pass']}` | {r['onnxruntime']} | {r['openvino']} |" for n, r in rows.items()]
    lines += ["", f"Tiny {args.family} UNet, seeded random weights; {len(feeds)} UNet inputs from 2 gate trajectories "
              "(8 steps); calibrated on 4 other prompts. Error: relative L2 distance to the fp32 UNet on onnxruntime "
              f"over all inputs. CPU flags: {' '.join(_cpu_flags())}."]
    table = "\n".join(lines)
    print(table)
    if args.record:
        res = Path(__file__).resolve().parent / "results"
        cmd = " ".join(["python bench/int8_openvino.py", *sys.argv[1:]])
        (res / f"{args.record}.json").write_text(json.dumps({"command": cmd, "machine": describe(),
                                                             "rows": rows}, indent=2) + "\n")
        (res / f"{args.record}.md").write_text(f"`{cmd}`\n\n{table}\n")


if __name__ == "__main__":
    main()
