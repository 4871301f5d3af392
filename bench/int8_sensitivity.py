"""Where an int8 U-Net's error comes from: float activations for one group of its quantized
layers at a time, and the U-Net's relative error against fp32 for each.

    python bench/int8_sensitivity.py FP32_ARTIFACT INT8_ARTIFACT [--latent 64] [--record int8_sensitivity_sd15]

The int8 artifact is `edgegen optimize FP32 --int8` (static QDQ). Each variant is that graph with
the QuantizeLinear/DequantizeLinear pair in front of the chosen nodes' activation input bypassed:
the node then reads the float activation (its weight stays int8 behind its DequantizeLinear), so
the drop in error is what quantizing those activations cost, everything else unchanged. No
re-calibration: a variant costs one session and one U-Net call (about 30 s at real size here),
where a re-quantization costs minutes. Groups are diffusers module paths (attention projections,
feed-forward, resnet convs, resamplers) and U-Net depths (block 0 = the first down block and the
last up block, at full latent resolution). Inputs: batch 2 (CFG), latent x latent, t=500, the
same feeds as bench/cpu_peers.py. Weights are seeded random: the ranking is evidence for this
architecture's layers, not a trained checkpoint's. Timing here is one call, not a benchmark.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402
from optimize_sd15 import feeds  # noqa: E402

WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
DQ_SUFFIX = "_DequantizeLinear_Output"   # onnxruntime.quantization's name for a dequantized activation
FP32_DATA = "fp32-"  # --weights: the fp32 graph's data file, linked beside the variant under this prefix
WEIGHTS_NOTE = {False: [], True: ["", "This run is `--weights`: each variant instead gives the chosen nodes the fp32 "
                                        "artifact's own weight (no DequantizeLinear), their activations staying int8."]}
GROUPS = {
    # Every quantized layer: what quantizing the activations (or, with --weights, the weights)
    # costs in all, the other side staying int8.
    "all": [r""],
    "attn1 to_q/k/v": [r"attn1/to_[qkv]/"], "attn1 to_out": [r"attn1/to_out"],
    "attn2 to_q": [r"attn2/to_q/"], "attn2 to_k/v": [r"attn2/to_[kv]/"], "attn2 to_out": [r"attn2/to_out"],
    "ff in (GEGLU proj)": [r"ff/net\.0"], "ff out": [r"ff/net\.2"],
    "resnet conv1": [r"resnets\.\d+/conv1/"], "resnet conv2": [r"resnets\.\d+/conv2/"],
    "conv_shortcut": [r"conv_shortcut"], "down/upsamplers": [r"downsamplers|upsamplers"],
    "downsamplers": [r"downsamplers"], "upsamplers": [r"upsamplers"],
    "proj_in": [r"/proj_in"], "proj_out": [r"/proj_out"],
}


def depth_groups(names: list[str]) -> dict[str, list[str]]:
    """Resnet convs per U-Net depth: depth d = down block d and the up block mirroring it."""
    ups = [int(m) for n in names for m in re.findall(r"up_blocks\.(\d+)", n)]
    last = max(ups) if ups else 0
    out = {}
    for d in range(last + 1):
        blocks = rf"(down_blocks\.{d}|up_blocks\.{last - d}{'|mid_block' if d == last else ''})/"
        out[f"resnet convs, depth {d}" + (" (full resolution)" if d == 0 else "")] = [blocks + r"resnets\.\d+/conv[12]/"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("int8", type=Path)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", action="append", default=[], metavar="GROUP",
                    help="measure only these groups (repeatable; default: all of them)")
    ap.add_argument("--weights", action="store_true",
                    help="float weights for each group instead of float activations (the fp32 "
                         "artifact's own initializers; activations stay int8)")
    ap.add_argument("--record")
    args = ap.parse_args()
    import onnx
    import onnxruntime as ort

    from edgegen.optimize.gate import rel_err
    from edgegen.runtimes.artifact import load_artifact

    f = feeds(args.fp32, args.latent)
    fp32_graph = load_artifact(args.fp32, verify=False).graph_path("unet")
    int8_graph = load_artifact(args.int8, verify=False).graph_path("unet")

    def run(path: Path) -> tuple[np.ndarray, float]:
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.log_severity_level = args.threads, 3
        s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        t = time.perf_counter()
        return s.run(None, f)[0], time.perf_counter() - t

    ref, _ = run(fp32_graph)
    base = onnx.load(str(int8_graph), load_external_data=False)
    quantized = [n.name for n in base.graph.node if n.op_type in WEIGHT_OPS and n.input[0].endswith(DQ_SUFFIX)]
    produced = {o for n in base.graph.node for o in n.output} | {i.name for i in base.graph.input}
    groups = {**GROUPS, **depth_groups(quantized)}
    if args.only:
        unknown = sorted(set(args.only) - set(groups))
        if unknown:
            raise SystemExit(f"--only: no group {unknown[0]!r}; the groups are: {', '.join(groups)}")
        groups = {k: v for k, v in groups.items() if k in args.only}
    res = {"command": "python bench/int8_sensitivity.py " + " ".join(sys.argv[1:]), "machine": describe(),
           "quantized_nodes": len(quantized), "int8_pass": next((p for p in reversed(load_artifact(
               args.int8, verify=False).manifest["passes"]) if p["name"] == "int8"), None), "rows": []}
    rel = lambda y: rel_err(ref, y)  # noqa: E731
    y, dt = run(int8_graph)
    res["rows"].append({"group": "none (all int8)", "nodes": 0, "rel_err": round(rel(y), 4), "seconds": round(dt, 1)})
    print(json.dumps(res["rows"][-1]), file=sys.stderr, flush=True)
    # The variant must sit beside the data file it reads in place (onnxruntime refuses external data
    # outside the model's folder, symlinks included): a hard link on the same disk.
    with tempfile.TemporaryDirectory(dir=int8_graph.parent.parent, prefix=".sensitivity-") as tmp:
        tmp = Path(tmp)
        for data in {e.value for t in base.graph.initializer for e in t.external_data if e.key == "location"}:
            os.link(int8_graph.parent / data, tmp / data)
        if args.weights:
            fp32 = {t.name: t for t in onnx.load(str(fp32_graph), load_external_data=False).graph.initializer}
            for t in fp32.values():
                for e in t.external_data:
                    if e.key == "location":
                        e.value = FP32_DATA + e.value
            for data in {e.value for t in fp32.values() for e in t.external_data if e.key == "location"}:
                os.link(fp32_graph.parent / data[len(FP32_DATA):], tmp / data)
        # --weights: a node's weight (input 1) from the fp32 initializers; else its activation
        # (input 0) from the float tensor in the graph.
        slot, floats = (1, fp32) if args.weights else (0, produced)
        for name, patterns in groups.items():
            m = copy.deepcopy(base)
            k, added = 0, set()
            for n in m.graph.node:
                if n.name in quantized and any(re.search(p, n.name) for p in patterns):
                    src = n.input[slot][: -len(DQ_SUFFIX)]
                    if src not in floats:
                        raise SystemExit(f"{n.name}: no float tensor {src!r} behind its dequantized input")
                    if args.weights and src not in added:
                        m.graph.initializer.append(fp32[src])
                        added.add(src)
                    n.input[slot] = src
                    k += 1
            if not k:
                continue
            onnx.save(m, str(tmp / "model.onnx"))
            y, dt = run(tmp / "model.onnx")
            res["rows"].append({"group": name, "nodes": k, "rel_err": round(rel(y), 4), "seconds": round(dt, 1)})
            print(json.dumps(res["rows"][-1]), file=sys.stderr, flush=True)
    res["int8"], res["float"] = str(args.int8), "weights" if args.weights else "activations"
    text = render(res)
    print(text)
    if args.record:
        (HERE / "results" / f"{args.record}.json").write_text(json.dumps(res, indent=1) + "\n")
        (HERE / "results" / f"{args.record}.md").write_text(text)


def render(res: dict) -> str:
    lines = [f"# int8 sensitivity of the U-Net, by layer group: {res['int8']}", "", f"Command: `{res['command']}`", "",
             f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores; {res['machine']['date']}. "
             f"{res['quantized_nodes']} quantized nodes; int8 pass: "
             f"{json.dumps(res['int8_pass'] and res['int8_pass']['config'])}.",
             "", __doc__.split("\n\n")[2].replace("\n", " "), *WEIGHTS_NOTE[res.get("float") == "weights"], "",
             f"| float {res.get('float', 'activations')} for | nodes | U-Net rel. error vs fp32 |", "|---|---|---|"]
    lines += [f"| {r['group']} | {r['nodes']} | {r['rel_err']} |" for r in res["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
