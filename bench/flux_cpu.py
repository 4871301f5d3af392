"""FLUX.1-schnell at full size on this CPU, end to end, in the normal runtime, from one artifact.

    edgegen export flux-schnell --random-weights --stream --out W/flux-bf16          # 12B + T5-XXL streamed, bf16
    edgegen optimize W/flux-bf16 --pass int4:compute=float32 --components transformer --no-gate --out W/flux-t4
    edgegen optimize W/flux-t4 --pass int8-weights:compute=float32 --components text_encoder_2 --no-gate \
        --out W/flux-cpu
    python bench/flux_cpu.py W/flux-cpu [--steps 4] [--size 512] [--checkpoint W/transformer.safetensors] \
        [--record flux_schnell_cpu]

The bf16 artifact is what a GPU compile starts from; the CPU artifact keeps its graphs and adds
int4 (transformer) and int8-weights (T5-XXL) weights computing in fp32 (onnxruntime's CPU EP has
no bf16 kernels). This script:
1. generates one image (--steps, --size, sequential memory: one stage's components at a time) in a
   child process through bench/memory_where.py: wall time per stage, RSS after every load and
   stage, the peak (VmHWM);
2. checks the int4 transformer block by block against diffusers' blocks in PyTorch fp32 holding
   the same bf16 checkpoint weights (bench/export_big.py --artifact): the first and last joint
   and single blocks, each cut out of the artifact's graph, relative error per block against the
   int4 pass's own limit. The checkpoint is the seeded random one the export streamed from, written
   again from its seed when missing (the same bytes) and deleted after.
The whole 12B graph can't run against a reference here (PyTorch fp32 needs 48 GB; the bf16 parent
can't run on this CPU), so the blocks are the numerical check; the image is checked for being
finite and not constant. Weights are seeded random: time and memory don't depend on values;
quality on random weights is weak evidence, the block errors say what int4 costs on them.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402
from memory_where import GiB, _run_child, timeline_table, write_record  # noqa: E402

from edgegen.runtimes.host import ISA_FLAGS, cpu_flags  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse on the moon"


def block_check(art: Path, checkpoint: Path, seed: int) -> dict:
    cmd = [sys.executable, str(HERE / "export_big.py"), "--model", "flux-schnell", "--dtype", "bfloat16",
           "--artifact", str(art), "--checkpoint", str(checkpoint), "--seed", str(seed), "--cleanup"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "check.json"
        p = subprocess.run(cmd + ["--json-out", str(out)], text=True, capture_output=True)
        if not out.exists():
            return {"error": (p.stderr.strip().splitlines() or ["?"])[-1], "command": " ".join(cmd)}
        return {**json.loads(out.read_text()), "command": " ".join(cmd)}


def streamed_seed(art: Path) -> int:
    """The seed of the random checkpoint the transformer was streamed from, read from the first
    ancestor that recorded it; else export/streamed.py's rule for the artifact's source seed. Parents are recorded as given (maybe relative
    to where optimize ran, maybe deleted): looked up there and beside the artifact."""
    m = json.loads((art / "manifest.json").read_text())
    parent = m.get("parent", {}).get("path")
    while parent:
        where = next((p for p in (Path(parent), art.parent / Path(parent).name) if (p / "manifest.json").is_file()),
                     None)
        if where is None:
            break
        pm = json.loads((where / "manifest.json").read_text())
        ck = pm["components"]["transformer"].get("validation", {}).get("streamed", {}).get("checkpoint", {})
        if "seed" in ck:
            return int(ck["seed"])
        parent = pm.get("parent", {}).get("path")
    from edgegen.export.families import get_family
    from edgegen.export.streamed import checkpoint_seed

    return checkpoint_seed(get_family(m["family"]), "transformer", int(m["source"].get("seed") or 0))


def _generate(art: Path, args, tmp: Path) -> dict:
    cfg = {"name": "sequential", "artifact": str(art), "memory": "sequential", "options": {}, "steps": args.steps,
           "height": args.size, "width": args.size, "prompt": PROMPT, "image_out": str(tmp / "image.npy")}
    print("generating ...", file=sys.stderr, flush=True)
    run = _run_child(cfg, tmp)
    if "error" not in run:
        img = np.load(cfg["image_out"]).astype(np.float32)
        run["image"] = {"shape": list(img.shape), "finite": bool(np.isfinite(img).all()),
                        "std": round(float(img.std()), 3), "mean": round(float(img.mean()), 3)}
    print(json.dumps({k: v for k, v in run.items() if k != "timeline"}), file=sys.stderr, flush=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path, help="the CPU artifact (int4 transformer, int8-weights T5, fp32 compute)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--checkpoint", type=Path, help="the transformer's random checkpoint (default: a temporary "
                    "file beside the artifact, written from the export's seed and deleted after)")
    ap.add_argument("--skip-blocks", action="store_true")
    ap.add_argument("--reuse-run", action="store_true", help="take the image run from the existing --record JSON "
                    "(same artifact) and only check the blocks")
    ap.add_argument("--record", help="write bench/results/<RECORD>.json and .md")
    args = ap.parse_args()
    art = args.artifact
    m = json.loads((art / "manifest.json").read_text())
    res = {"command": "python bench/flux_cpu.py " + " ".join(sys.argv[1:]), "machine": describe(),
           "cpu_flags": sorted(cpu_flags() & set(ISA_FLAGS)), "artifact": str(art), "steps": args.steps,
           "size": args.size, "weights": "seeded random (real architecture): time and memory don't depend on values",
           "components": {k: {"precision": c["precision"], "compute_dtype": c.get("compute_dtype", "float32"),
                              "params": c["params"], "bytes": sum(f["bytes"] for f in c["files"].values())}
                          for k, c in m["components"].items()},
           "passes": [{k: p.get(k) for k in ("name", "config", "components", "seconds")} for p in m["passes"]]}
    prev = HERE / "results" / f"{args.record}.json" if args.record else None
    if args.reuse_run:
        if prev is None or not prev.is_file():
            sys.exit("--reuse-run needs --record naming an existing record")
        old = json.loads(prev.read_text())
        if old["artifact"] != str(art) or "error" in old["run"]:
            sys.exit(f"{prev} is not a finished run of {art}")
        res.update(run=old["run"], run_command=old["command"], command=res["command"])
    else:
        with tempfile.TemporaryDirectory(prefix="edgegen-flux-") as tmp:
            res["run"] = _generate(art, args, Path(tmp))
    if not args.skip_blocks:
        ck = args.checkpoint or art.parent / f".{art.name}.transformer-check.safetensors"
        print("per-block check ...", file=sys.stderr, flush=True)
        res["blocks"] = block_check(art, ck, streamed_seed(art))
    text = render(res)
    print(text)
    if args.record:
        write_record(args.record, res, text)
    ok = "error" not in res["run"] and res["run"]["image"]["finite"] and (
        args.skip_blocks or res["blocks"].get("validation", {}).get("passed"))
    sys.exit(0 if ok else 1)


def render(r: dict) -> str:
    mc, run = r["machine"], r["run"]
    lines = [f"# FLUX.1-schnell, full size, end to end on the CPU: {r['artifact']}", "",
             f"Command: `{r['command']}`" + (f" (the image run: `{r['run_command']}`, same artifact)"
                                             if r.get("run_command") else ""), "",
             f"Machine: {mc['cpu']}, {mc['cores']} cores, {mc['ram_gb']} GB RAM, CPU flags "
             f"{' '.join(r['cpu_flags']) or 'none'}; {mc['date']}. "
             + ", ".join(f"{k} {v}" for k, v in mc["versions"].items()) + ".",
             f"Weights: {r['weights']}. {r['steps']} steps at {r['size']}x{r['size']}, one image, sequential memory "
             "(one stage's components loaded at a time), in a fresh process.", "",
             "| component | parameters | precision (compute) | on disk GB |", "|---|---|---|---|"]
    for k, c in r["components"].items():
        lines.append(f"| {k} | {c['params'] / 1e9:.3f}B | {c['precision']} ({c['compute_dtype']}) | "
                     f"{c['bytes'] / 1e9:.2f} |")
    if "error" in run:
        lines += ["", f"The run failed: {run['error']}"]
    else:
        lines += ["", f"**Peak RSS {run['peak_rss_bytes'] / GiB:.2f} GiB**; generate {run['generate_seconds']} s, "
                  f"process total (with loads) {run['total_seconds']} s. Image {run['image']}.", "",
                  "Seconds per stage over the image (loads not included): "
                  + ", ".join(f"{k} {v}" for k, v in run.get("stage_seconds", {}).items()), "",
                  "Resident set after each load and each stage's first run (GiB):", "", *timeline_table(run["timeline"])]
    b = r.get("blocks")
    if b:
        lines += ["", "## The int4 transformer, block by block, against PyTorch fp32", ""]
        if "error" in b:
            lines.append(f"Failed: {b['error']} (`{b['command']}`)")
        else:
            v = b["validation"]
            lines += [f"`{b['command']}`. Rule: {v['rule']['lifted']}. Each block is cut out of the artifact's "
                      "graph; its inputs are the residual streams entering it (random N(0,1)) and the graph inputs. "
                      f"Passed: **{v['passed']}** ({v['wall_seconds']} s, peak RSS {v['peak_rss_gb']} GB).", "",
                      "A block's output is its residual input plus its update; the error against the update alone "
                      "(where the input is a fed stream) says what int4 costs the block itself.", "",
                      "| block | output | sizes | rel. error | rel. error of the update | cosine | limit | passed |",
                      "|---|---|---|---|---|---|---|---|"]
            for blk in v["blocks"]:
                for c in blk["checks"]:
                    s = " ".join(f"{k}{n}" for k, n in c["sizes"].items())
                    upd = c.get("rel_err_of_update")
                    lines.append(f"| {blk['block']} | {c['output']} | {s} | {c.get('rel_err', float('nan')):.4f} | "
                                 f"{'-' if upd is None else f'{upd:.4f}'} | {c.get('cosine', float('nan')):.5f} | "
                                 f"{c.get('rel_err_limit')} | {c['passed']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
