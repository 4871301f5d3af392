"""Where a U-Net step's time goes on OpenVINO's CPU plugin: per layer type and kernel, side by side.

    python bench/ov_profile.py build/sd15-random \\
        edgegen=build/peers/openvino-static-int8/unet/model.xml peer=build/peers/nncf/unet.xml \\
        --runs 3 --record ov_profile_sd15_int8

Each NAME=GRAPH (an OpenVINO IR or ONNX file) is reshaped to the artifact's U-Net inputs (batch 2
for CFG, 64x64 latent, t=500; static, as the race runs it), compiled with the precision hint
edgegen's backend picks here and PERF_COUNT on, and run --runs times after a warm-up. OpenVINO's
per-node counters (`InferRequest.get_profiling_info`) are summed per (layer type, kernel) and
averaged per run: the kernel name says whether a convolution ran as int8 (`I8`/`U8` in its name)
or in bf16/f32, so two quantization recipes
of one graph compare node group by node group. Each graph's output is compared with the first's
(relative L2 error): a faster graph with a wrong output is not a result. Random-weight graphs give
valid times (they don't depend on weight values); their errors are weak evidence for trained ones.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402
from optimize_sd15 import feeds  # noqa: E402


def layer_times(infos_per_run: list[list]) -> dict:
    """{(layer type, kernel): [ms per run, nodes]} from get_profiling_info lists.
    Nodes OpenVINO fused away report NOT_RUN and no time; they are left out."""
    out: dict = defaultdict(lambda: [0.0, 0])
    for infos in infos_per_run:
        for p in infos:
            if str(p.status).endswith("NOT_RUN"):
                continue
            row = out[(p.node_type, p.exec_type)]
            row[0] += p.real_time.total_seconds() * 1e3 / len(infos_per_run)
            row[1] += 1
    return {k: [v[0], v[1] // len(infos_per_run)] for k, v in out.items()}


def profile(graph: str, f: dict, runs: int, threads: int, precision: str,
            keep_f32: frozenset = frozenset()) -> tuple[dict, np.ndarray, list]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(graph)
    model.reshape({k: list(v.shape) for k, v in f.items()})
    if keep_f32:
        from edgegen.runtimes.openvino_backend import keep_f32 as marked

        model, counts = marked(core, model, sorted(keep_f32))
        if not any(counts.values()):
            sys.exit(f"ov_profile: keep_f32: the graph has no layer of type {', '.join(sorted(keep_f32))}")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": True})
    req = compiled.create_infer_request()
    req.infer(f)   # warm-up: first-touch of every buffer
    infos, walls = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        req.infer(f)
        walls.append(time.perf_counter() - t0)
        infos.append(req.get_profiling_info())
    y = np.array(req.get_output_tensor(0).data, copy=True)
    return layer_times(infos), y, walls


def kind(layer: str, kernel: str) -> str:
    """A coarse group: int8 compute, 16/32-bit compute, or data movement."""
    k = kernel.lower()
    if any(t in k for t in ("i8", "u8")):
        return "int8"
    if "bf16" in k:
        return "bf16"
    if "f16" in k or "fp16" in k:
        return "f16"
    return "f32" if "f32" in k or "fp32" in k else "other"


def render(res: dict, top: int) -> str:
    names = list(res["graphs"])
    lines = ["# OpenVINO CPU profile: one U-Net step", "",
             f"Command: `{res['command']}`", "",
             f"Machine: {res['machine']}. OpenVINO {res['openvino']}, precision hint {res['precision']} unless a row says, "
             f"{res['threads']} threads; batch {res['batch']}, latent {res['latent']}x{res['latent']}, static shapes; "
             f"per-node counters averaged over {res['runs']} runs after a warm-up. Weights are seeded random: times "
             "do not depend on weight values, errors are weak evidence for a trained model.", "",
             "| graph | precision hint | layer types kept f32 | wall s/step (best) | sum of node times s | "
             "rel. error vs " + names[0] + " |",
             "|---|---|---|---|---|---|"]
    for n in names:
        g = res["graphs"][n]
        kept = ", ".join(g.get("keep_f32", [])) or "-"
        lines.append(f"| {n} | {g.get('precision', res['precision'])} | {kept} | {min(g['wall']):.3f} | "
                     f"{g['node_sum_ms'] / 1e3:.3f} | {g['rel_err']:.4f} |")
    groups: dict = defaultdict(lambda: {n: [0.0, 0] for n in names})
    kernels: dict = defaultdict(lambda: {n: [0.0, 0] for n in names})
    for n in names:
        for r in res["graphs"][n]["rows"]:
            g = groups[(r["layer"], kind(r["layer"], r["kernel"]))][n]
            g[0] += r["ms"]
            g[1] += r["nodes"]
            kernels[(r["layer"], r["kernel"])][n] = [r["ms"], r["nodes"]]
    lines += _table("By layer type and compute (ms per step)", "compute", groups, names, top)
    lines += _table("By kernel (ms per step, top rows)", "kernel", kernels, names, top)
    return "\n".join(lines) + "\n"


def _table(title: str, second: str, cells: dict, names: list[str], top: int) -> list[str]:
    """Rows (layer type, `second`) by their largest time in any graph, one column per graph."""
    out = ["", f"## {title}", "", f"| layer type | {second} | " + " | ".join(f"{n} ms (nodes)" for n in names) + " |",
           "|---|---|" + "---|" * len(names)]
    for k in sorted(cells, key=lambda k: -max(v[0] for v in cells[k].values()))[:top]:
        out.append(f"| {k[0]} | {k[1]} | " + " | ".join(f"{cells[k][n][0]:.0f} ({cells[k][n][1]})" for n in names) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifact", help="the fp32 artifact whose U-Net IO spec gives the inputs")
    ap.add_argument("graphs", nargs="+", metavar="NAME=GRAPH", help="OpenVINO IR (.xml) or ONNX files to profile")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--precision", help="INFERENCE_PRECISION_HINT (default: the one edgegen's backend picks here)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--record", help="write JSON + Markdown under bench/results/ with this name")
    args = ap.parse_args()
    import openvino as ov

    from edgegen.runtimes.openvino_backend import OpenVinoBackend

    precision = args.precision or OpenVinoBackend(device="CPU").resolved_precision()
    pairs = []
    for item in args.graphs:
        name, sep, spec = item.partition("=")
        graph, *opts = spec.split(",")
        if not sep or not Path(graph).is_file():
            sys.exit(f"ov_profile: expected NAME=GRAPH[,precision=P][,keep_f32=TYPE+TYPE] with an existing file, "
                     f"got {item!r}")
        o = {"precision": precision, "keep_f32": ""}
        for kv in opts:
            k, eq, v = kv.partition("=")
            if k not in o or not eq or not v:
                sys.exit(f"ov_profile: {name}: unknown option {kv!r} (precision=P or keep_f32=TYPE+TYPE)")
            o[k] = v
        pairs.append((name, graph, o["precision"], frozenset(t for t in o["keep_f32"].split("+") if t)))
    f = feeds(Path(args.artifact), args.latent, args.batch)
    res = {"command": " ".join(["python bench/ov_profile.py", *sys.argv[1:]]), "machine": describe(),
           "openvino": ov.get_version().split("-")[0], "precision": precision, "threads": args.threads,
           "batch": args.batch, "latent": args.latent, "runs": args.runs, "graphs": {}}
    ref = None
    for name, graph, prec, keep in pairs:
        rows, y, walls = profile(graph, f, args.runs, args.threads, prec, keep)
        ref = y if ref is None else ref
        err = float(np.linalg.norm(y.astype(np.float64) - ref) / (np.linalg.norm(ref) + 1e-12))
        res["graphs"][name] = {
            "graph": graph, "precision": prec, "keep_f32": sorted(keep),
            "wall": [round(w, 3) for w in walls], "rel_err": round(err, 5),
            "node_sum_ms": round(sum(v[0] for v in rows.values()), 1),
            "rows": sorted(({"layer": k[0], "kernel": k[1], "ms": round(v[0], 2), "nodes": v[1]}
                            for k, v in rows.items()), key=lambda r: -r["ms"])}
        print(name, f"best {min(walls):.3f} s, rel err {err:.4f}", flush=True)
    text = render(res, args.top)
    print(text)
    if args.record:
        out = HERE / "results" / args.record
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))
        out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
