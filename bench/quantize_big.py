"""Weight-only quantization of the full-size FLUX transformer (11.9B parameters, 23.8 GB in
bf16) within a small RAM budget: the streaming int4 / int8-weights passes, one child
process each, wall time and peak RSS (ru_maxrss of that child, from os.wait4).

    python bench/export_big.py --dtype bfloat16            # the graph: WORK/flux-schnell-bfloat16-onnx
    python bench/quantize_big.py [--graph WORK/flux-schnell-bfloat16-onnx/model.onnx] \
        [--passes int4,int8-weights] [--work /tmp/edgegen-big] [--record quantize_flux_schnell] [--cleanup]

The passes are the ones `edgegen optimize` runs (optimize/passes/weight_only.py), called on
the bare graph the streaming exporter writes. Weights are seeded random: time and memory
don't depend on their values. Quality: the whole 12B graph can't run here (onnxruntime's
CPU EP has no bf16 MatMulNBits, and fp32 would need 47.6 GB), so the figure recorded is
each quantized weight's relative L2 error after dequantization (the report's
weight_error); at tiny size the same passes run through the full gate in tests/.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402

BUDGET_GB = 8


def child_stage(name: str, graph: Path, out: Path) -> dict:
    from edgegen.optimize import graph as G
    from edgegen.optimize.registry import PassContext, get_pass

    p = get_pass(name)
    t0 = time.perf_counter()
    res = p.apply(PassContext("transformer", "denoiser", graph, out, None, []))
    secs = time.perf_counter() - t0
    import onnx

    onnx.checker.check_model(str(out / res.files[0]))  # path form: works beyond 2 GiB
    rep = dict(res.report)
    rep["weight_error"] = {k: v for k, v in rep["weight_error"].items() if k != "per_layer"}
    return {"pass": p.record(), "seconds": round(secs, 1), "files": res.files,
            "bytes": G.graph_bytes(out, res.files), "parent_bytes": G.graph_bytes(graph.parent, _files(graph)),
            "weights": G.weight_change(graph, out / res.files[0]), **rep,
            "skipped_nodes": len(rep.get("skipped_nodes", []))}


def _files(graph: Path) -> list[str]:
    return [f.name for f in graph.parent.iterdir() if f.is_file()]


def run_child(name: str, graph: Path, out: Path) -> tuple[dict, float, float]:
    cmd = [sys.executable, __file__, "--stage", name, "--graph", str(graph), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{name} failed (exit {os.waitstatus_to_exitcode(status)})")
    return json.loads(stdout.strip().splitlines()[-1]), wall, usage.ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgegen-big"))
    ap.add_argument("--graph", type=Path, help="default: WORK/flux-schnell-bfloat16-onnx/model.onnx")
    ap.add_argument("--passes", default="int4,int8-weights")
    ap.add_argument("--record", help="write bench/results/<name>.json and .md")
    ap.add_argument("--cleanup", action="store_true", help="delete the quantized graphs at the end")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    graph = args.graph or args.work / "flux-schnell-bfloat16-onnx" / "model.onnx"
    if args.stage:
        print(json.dumps(child_stage(args.stage, graph, args.out)))
        return
    if not graph.exists():
        sys.exit(f"{graph} not found: run python bench/export_big.py --dtype bfloat16 first")
    result = {"command": "python bench/quantize_big.py " + " ".join(sys.argv[1:]), "graph": str(graph),
              "weights": "seeded random bf16 checkpoint (real architecture): time and memory don't depend on values",
              "machine": describe(), "budget_gb": BUDGET_GB, "runs": {}}
    for name in [p for p in args.passes.split(",") if p]:
        out = args.work / f"{graph.parent.name}-{name}"
        shutil.rmtree(out, ignore_errors=True)
        rep, wall, peak = run_child(name, graph, out)
        result["runs"][name] = {"wall_seconds": round(wall, 1), "peak_rss_gb": round(peak, 2),
                                "within_budget": peak <= BUDGET_GB, **rep}
        print(json.dumps({name: result["runs"][name]}, indent=1), file=sys.stderr, flush=True)
        if args.cleanup:
            shutil.rmtree(out, ignore_errors=True)
    if args.record:
        write_record(args.record, result)
    print(json.dumps(result, indent=2))


def write_record(name: str, r: dict) -> None:
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / f"{name}.json").write_text(json.dumps(r, indent=2) + "\n")
    m = r["machine"]
    lines = ["# Streaming weight-only quantization: FLUX.1-schnell transformer (11.9B parameters)", "",
             f"Command: `{r['command']}` (graph from `python bench/export_big.py --dtype bfloat16`)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; Python {m['python']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f". Date: {m['date']}.", "",
             f"Weights: {r['weights']}. Budget: peak RSS <= {r['budget_gb']} GB.", "",
             "| pass | wall s | peak RSS GB | within budget | parent GB | output GB | quantized weights: new/old bytes "
             "| MatMul/Gemm | weight rel. error mean / max |", "|---|---|---|---|---|---|---|---|---|"]
    for pname, x in r["runs"].items():
        w = x.get("weights") or {}
        lines.append(f"| {pname} | {x['wall_seconds']} | {x['peak_rss_gb']} | {x['within_budget']} | "
                     f"{x['parent_bytes'] / 1e9:.2f} | {x['bytes'] / 1e9:.2f} | {w.get('ratio', '-')} "
                     f"({w.get('replaced_fp32_bytes', 0) / 1e9:.2f} -> {w.get('new_bytes', 0) / 1e9:.2f} GB) | "
                     f"{x['matmuls']} | {x['weight_error']['mean']} / {x['weight_error']['max']} |")
    lines += ["", "The quantized weights' ratio is against their bf16 bytes (int4 block 32 with bf16 scales: "
              "(0.5 + 2/32) / 2 = 0.28; int8 block 64: (1 + 2/64) / 2 = 0.52); against fp32 it is half that. "
              "The weight-only skip list keeps 8 layers bf16 (input embedders, time/guidance/text projections, "
              "norm_out, first/last); every block linear, the norms' modulation linears included, is quantized.",
              "Quality: the bf16 graph can't run on this CPU (no bf16 MatMulNBits kernel; fp32 would need 47.6 GB); "
              "the weight error is each dequantized weight against the original. The same passes go through the "
              "full quality gate at tiny size in tests/test_optimize.py."]
    (res / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
