"""Where one component's time goes on onnxruntime's CPU EP: per op type and resolution, side by side.

    python bench/ort_profile.py build/sdturbo-random build/peers-turbo/int8-unet-vae_decoder \\
        --component vae_decoder --height 512 --width 512 --batch 1 --record ort_profile_vae_int8

Each artifact's component runs in its own session with onnxruntime's per-node profiler on
(`make_session(profile=...)`, the same session options edgegen's runtime uses); the first run
is a warm-up and is left out. Node times are summed per (op type, output resolution) and per
run, so a QDQ graph's fused QLinearConv rows sit beside the float graph's Conv rows at the same
resolution. Each artifact's output is compared with the first one's (relative error, PSNR for
images): a faster row with a wrong output is not a result. Random-weight graphs give valid
times (they don't depend on weight values); their errors are weak evidence for trained weights.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402


def node_times(trace: list[dict], skip_runs: int) -> tuple[dict, int]:
    """{(op, resolution): [seconds, count]} over the runs after the first `skip_runs`, and how
    many runs that is. Resolution is the first output's last dim for rank-4 outputs (the image
    or latent width), else '-'."""
    runs = sorted(e["ts"] for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(runs) <= skip_runs:
        raise SystemExit(f"the profile holds {len(runs)} runs; need more than {skip_runs}")
    start = runs[skip_runs]
    out: dict = defaultdict(lambda: [0.0, 0])
    for e in trace:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < start:
            continue
        args = e.get("args", {})
        shapes = args.get("output_type_shape") or [{}]
        shape = next(iter(shapes[0].values()), []) if shapes and shapes[0] else []
        res = str(shape[-1]) if len(shape) == 4 else "-"
        row = out[(args.get("op_name", "?"), res)]
        row[0] += e["dur"] / 1e6
        row[1] += 1
    return dict(out), len(runs) - skip_runs


def parse_setting(text: str) -> dict:
    """'mem_pattern=0,cpu_mem_arena=0' -> the MEMORY_DEFAULTS keys it changes ('default': none)."""
    from edgegen.runtimes.onnxruntime_backend import MEMORY_DEFAULTS

    if text == "default":
        return {}
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in MEMORY_DEFAULTS or value not in ("0", "1"):
            raise SystemExit(f"--setting {item!r}: want KEY=0|1 with KEY one of {', '.join(MEMORY_DEFAULTS)}")
        out[key] = value == "1"
    return out


def profile(graph: Path, root: Path, feeds: dict, runs: int, threads: int, memory: dict, tmp: Path):
    from edgegen.runtimes.onnxruntime_backend import make_session

    session = make_session(graph, threads=threads, root=root, memory=memory,
                           profile=str(tmp / graph.parent.parent.name))
    walls, y = [], None
    for _ in range(runs + 1):
        t = time.perf_counter()
        y = session.run(None, feeds)[0]
        walls.append(time.perf_counter() - t)
    trace = json.loads(Path(session.end_profiling()).read_text())
    times, n = node_times(trace, 1)
    per_run = {f"{op}@{res}": [round(s / n, 4), c // n] for (op, res), (s, c) in times.items()}
    return y, {"wall_s": [round(w, 3) for w in walls[1:]], "nodes": per_run}


def compare(ref: np.ndarray, y: np.ndarray) -> dict:
    from edgegen.optimize.gate import psnr, rel_err

    from edgegen.runtimes.image import to_uint8

    out = {"rel_err": round(float(rel_err(ref, y)), 4)}
    if ref.ndim == 4 and ref.shape[1] == 3:  # an image: PSNR on the 8-bit pixels a user gets
        out["psnr_db"] = round(float(psnr(to_uint8(ref), to_uint8(y))), 2)
    return out


def render(res: dict) -> str:
    rows = res["artifacts"]
    keys = sorted({k for r in rows for k in r["nodes"]},
                  key=lambda k: -max(r["nodes"].get(k, [0])[0] for r in rows))
    head = " | ".join(f"{r['name']} s (nodes)" for r in rows)
    lines = [f"# onnxruntime CPU profile: {res['component']} at {res['sizes']}", "",
             f"Command: `{res['command']}`", "",
             f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores; flags: {res['cpu_flags']}; "
             f"onnxruntime {res['machine']['versions'].get('onnxruntime')}; {res['threads']} threads. "
             "Random-weight graphs: times are valid, errors weak evidence for trained weights. "
             "Inputs are the IOSpec's seeded example tensors, not a sampler's latents, so an error here is "
             "the graph's on those inputs, not a pipeline's image error.", "",
             "| artifact | wall s per run | accuracy vs the first |", "|---|---|---|"]
    for r in rows:
        acc = ", ".join(f"{k} {v}" for k, v in r["accuracy"].items()) or "reference"
        lines.append(f"| {r['name']} (`{r['path']}`) | {min(r['wall_s'])} (of {r['wall_s']}) | {acc} |")
    lines += ["", "Per op type at output width (seconds per run, nodes per run); rows under 1% of every run's total are left out:", "",
              f"| op @ width | {head} |", "|---|" + "---|" * len(rows)]
    totals = [sum(v[0] for v in r["nodes"].values()) for r in rows]
    for k in keys:
        if all(r["nodes"].get(k, [0])[0] < 0.01 * t for r, t in zip(rows, totals)):
            continue
        cells = [(f"{r['nodes'][k][0]:.3f} ({r['nodes'][k][1]})" if k in r["nodes"] else "") for r in rows]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| **sum of node times** | " + " | ".join(f"**{t:.3f}**" for t in totals) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--component", required=True)
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--runs", type=int, default=2, help="profiled runs after one warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--setting", action="append", default=None, metavar="KEY=0|1[,...]",
                    help="session memory settings to run each artifact under (repeatable; 'default' = "
                         "onnxruntime's defaults, the only one when none is given)")
    ap.add_argument("--record")
    args = ap.parse_args()
    from edgegen.runtimes.artifact import load_artifact
    from edgegen.runtimes.host import ISA_FLAGS, cpu_flags
    from edgegen.runtimes.shape_profile import image_sizes

    first = load_artifact(args.artifacts[0], verify=False)
    io = first.io(args.component)
    want = {k: v for k, v in image_sizes(first.manifest["pipeline"], args.height, args.width).items() if k in io.dims}
    if args.batch is not None:
        want["batch"] = args.batch
    sizes = io.sizes("opt", **want)
    feeds = io.example(sizes)
    res = {"command": "python bench/ort_profile.py " + " ".join(sys.argv[1:]), "machine": describe(),
           "cpu_flags": " ".join(sorted(cpu_flags() & set(ISA_FLAGS))), "component": args.component, "sizes": sizes, "threads": args.threads,
           "artifacts": []}
    settings = [(text, parse_setting(text)) for text in (args.setting or ["default"])]
    ref = None
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.artifacts:
            art = load_artifact(path, verify=False)
            if args.component not in art.components:
                raise SystemExit(f"{path}: no component {args.component!r} (it has {', '.join(art.components)})")
            for text, memory in settings:
                y, row = profile(art.graph_path(args.component), art.root, feeds, args.runs, args.threads,
                                 memory, Path(tmp))
                ref = y if ref is None else ref
                name = path.name if len(settings) == 1 else f"{path.name} [{text}]"
                row.update(name=name, path=str(path), setting=text, accuracy={} if y is ref else compare(ref, y),
                           passes=[p["name"] for p in art.manifest.get("passes", [])])
                res["artifacts"].append(row)
            print(json.dumps({k: row[k] for k in ("name", "wall_s", "accuracy")}), file=sys.stderr, flush=True)
    text = render(res)
    print(text)
    if args.record:
        (HERE / "results" / f"{args.record}.json").write_text(json.dumps(res, indent=1) + "\n")
        (HERE / "results" / f"{args.record}.md").write_text(text)


if __name__ == "__main__":
    main()
