"""Where edgegen's CPU memory goes, and what each runtime setting does to the peak.

    python bench/memory_where.py ARTIFACT [--steps 4] [--height 512 --width 512] \
        [--configs resident,arena-off,...] [--baseline torch] [--record memory_sd15]

Each configuration generates one image in its own child process (fresh address space, no torch
in the edgegen children), from the same initial latents. The child records its resident set
(VmRSS, anonymous vs file-backed, and the high-water mark VmHWM) after every component load and
after the first run of every stage, so the table shows which load or stage sets the peak. The
image is compared with the first configuration's (PSNR): a memory setting must not change the
answer. `--baseline torch` adds plain diffusers at fp32 on the same checkpoint (its own child,
bench/worker.py), the peer the issue measures against.

Weights in the recorded runs are seeded random: memory and time do not depend on weight values.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402

from edgegen.runtimes.host import ISA_FLAGS, cpu_flags  # noqa: E402

GiB = 2 ** 30
# name -> (Pipeline memory mode, onnxruntime backend options). Each mode takes the backend's own
# settings (CPU sessions: no memory pattern; sequential: no arena either); "pattern-on" is
# onnxruntime's default (edgegen's until 2026-12-04, the recorded runs' "resident"), and
# "sequential+arena" keeps the arena.
CONFIGS = {
    "resident": ("resident", {}),
    "arena-off": ("resident", {"cpu_mem_arena": False}),
    "pattern-on": ("resident", {"mem_pattern": True}),
    "prepack-off": ("resident", {"prepacking": False}),
    "sequential+arena": ("sequential", {"cpu_mem_arena": True}),
    "sequential": ("sequential", {}),
}


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def child(cfg: dict) -> dict:
    import numpy as np

    from edgegen.runtimes import Pipeline

    t0 = time.perf_counter()
    timeline = [{"event": "start", **_status()}]
    pipe = Pipeline.load(cfg["artifact"], memory=cfg["memory"], backend_options=cfg["options"], verify=False)
    load = pipe.backend.load

    def watched(spec):
        t = time.perf_counter()
        out = load(spec)
        timeline.append({"event": f"load {spec.name}", "seconds": round(time.perf_counter() - t, 2), **_status()})
        return out

    pipe.backend.load = watched
    ran = set()

    stage_seconds: dict[str, float] = {}

    def observe(stage, inputs, outputs, seconds):
        stage_seconds[stage] = stage_seconds.get(stage, 0.0) + seconds
        if stage not in ran and not stage.startswith("tokenize"):
            ran.add(stage)
            timeline.append({"event": f"ran {stage}", "seconds": round(seconds, 2), **_status()})

    pipe.observers.append(observe)
    r = pipe.recipe
    c, s = r["latent_channels"], r["vae_scale_factor"]
    latents = np.random.default_rng(0).standard_normal((1, c, cfg["height"] // s, cfg["width"] // s)).astype(np.float32)
    t1 = time.perf_counter()
    image = pipe(cfg["prompt"], steps=cfg["steps"], latents=latents)
    gen = time.perf_counter() - t1
    np.save(cfg["image_out"], image)
    end = _status()
    return {"timeline": timeline, "peak_rss_bytes": end["VmHWM"], "generate_seconds": round(gen, 2),
            "stage_seconds": {k: round(v, 2) for k, v in stage_seconds.items()},
            "total_seconds": round(time.perf_counter() - t0, 2)}


def _run_child(cfg: dict, tmp: Path) -> dict:
    path = tmp / f"{cfg['name']}.json"
    path.write_text(json.dumps(cfg))
    p = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True)
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _torch_peak(args, tmp: Path) -> dict:
    """Plain diffusers through bench/worker.py's torch runner (its own child, fp32)."""
    manifest = json.loads((args.artifact / "manifest.json").read_text())
    d = manifest["pipeline"]["defaults"]
    cfg = {"artifact": str(args.artifact), "device": "cpu", "prompt": args.prompt, "steps": args.steps,
           "guidance": d["guidance"], "sampler": d["sampler"], "seed": 0, "height": args.height, "width": args.width,
           "runs": 1, "warmup": 0, "verify": False, "mode": "torch", "image_out": str(tmp / "torch.npy")}
    (tmp / "torch_cfg.json").write_text(json.dumps(cfg))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "edgegen.bench.worker", str(tmp / "torch_cfg.json"),
                        str(tmp / "torch_out.json")], capture_output=True, text=True)
    if p.returncode or not (tmp / "torch_out.json").exists():
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    out = json.loads((tmp / "torch_out.json").read_text())
    if out.get("error"):
        return {"error": str(out["error"]).splitlines()[-1]}
    return {"peak_rss_bytes": out["peak_rss_self"], "total_seconds": round(time.perf_counter() - t0, 2),
            "generate_seconds": round(out["runs"][0]["seconds"], 2), "runtime": out.get("runtime")}


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def render(res: dict) -> str:
    m = res["machine"]
    lines = [f"# Where the memory goes: {res['artifact']}", "",
             f"Command: `{res['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, CPU flags "
             f"{' '.join(res['cpu_flags']) or 'none'}; {m['date']}. onnxruntime {m['versions'].get('onnxruntime')}.",
             f"{res['steps']} steps at {res['width']}x{res['height']}, one image per configuration, each in a fresh "
             "process. Weights are seeded random: memory and time do not depend on weight values. The PSNR is "
             "against the first configuration's image from the same latents (a memory setting must not change "
             "the answer; inf = identical).", "",
             "| configuration | peak RSS (GiB) | vs first | vs diffusers | generate (s) | PSNR vs first |",
             "|---|---|---|---|---|---|"]
    first = next((r for r in res["configs"].values() if "peak_rss_bytes" in r), None)
    base = res.get("baseline", {}).get("peak_rss_bytes")
    for name, r in res["configs"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | |")
            continue
        p = r["peak_rss_bytes"]
        lines.append(f"| {name} | {p / GiB:.2f} | {p / first['peak_rss_bytes']:.2f}x | "
                     f"{'' if not base else f'{p / base:.2f}x'} | {r['generate_seconds']} | {r['psnr_vs_first']} |")
    if base:
        b = res["baseline"]
        lines.append(f"| diffusers (torch fp32, resident) | {base / GiB:.2f} | | 1.00x | {b.get('generate_seconds')} | "
                     "(another runtime) |")
    for name, r in res["configs"].items():
        if "timeline" not in r:
            continue
        if r.get("stage_seconds"):
            lines += ["", f"{name}, seconds per stage over the whole image (loads not included): "
                      + ", ".join(f"{k} {v}" for k, v in r["stage_seconds"].items())]
        lines += ["", f"## {name}: resident set after each load and each stage's first run (GiB)", "",
                  *timeline_table(r["timeline"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(Path(sys.argv[2]).read_text()))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--baseline", choices=("torch",))
    ap.add_argument("--prompt", default="a photograph of an astronaut riding a horse on the moon")
    ap.add_argument("--record", help="write bench/results/<RECORD>.json and .md")
    args = ap.parse_args()
    names = [c for c in args.configs.split(",") if c]
    bad = [c for c in names if c not in CONFIGS]
    if bad:
        sys.exit(f"unknown configuration {bad[0]!r}; known: {', '.join(CONFIGS)}")
    import numpy as np

    res = {"command": "python bench/memory_where.py " + " ".join(sys.argv[1:]), "machine": describe(),
           "cpu_flags": sorted(cpu_flags() & set(ISA_FLAGS)), "artifact": str(args.artifact), "steps": args.steps,
           "height": args.height, "width": args.width, "configs": {}}
    with tempfile.TemporaryDirectory(prefix="edgegen-memory-") as tmp:
        tmp = Path(tmp)
        first = None
        for name in names:
            mode, opts = CONFIGS[name]
            cfg = {"name": name, "artifact": str(args.artifact), "memory": mode, "options": opts, "steps": args.steps,
                   "height": args.height, "width": args.width, "prompt": args.prompt,
                   "image_out": str(tmp / f"{name}.npy")}
            print(f"{name} ...", file=sys.stderr, flush=True)
            r = _run_child(cfg, tmp)
            if "error" not in r:
                img = np.load(cfg["image_out"])
                first = img if first is None else first
                r["psnr_vs_first"] = round(_psnr(first, img), 2)
                print(f"  peak {r['peak_rss_bytes'] / GiB:.2f} GiB, {r['generate_seconds']} s", file=sys.stderr)
            else:
                print(f"  failed: {r['error']}", file=sys.stderr)
            res["configs"][name] = {"memory": mode, "options": opts, **r}
        if args.baseline:
            print("diffusers ...", file=sys.stderr, flush=True)
            res["baseline"] = _torch_peak(args, tmp)
    text = render(res)
    print(text)
    if args.record:
        write_record(args.record, res, text)


def write_record(name: str, res: dict, text: str) -> None:
    out = HERE / "results" / name
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(text)


def timeline_table(timeline: list[dict]) -> list[str]:
    lines = ["| event | seconds | RSS | anon | file | high-water |", "|---|---|---|---|---|---|"]
    for e in timeline:
        lines.append(f"| {e['event']} | {e.get('seconds', '')} | {e['VmRSS'] / GiB:.2f} | {e['RssAnon'] / GiB:.2f} | "
                     f"{e['RssFile'] / GiB:.2f} | {e['VmHWM'] / GiB:.2f} |")
    return lines


if __name__ == "__main__":
    main()
