"""Wall time and peak RSS of `edgegen export` in a child process.

    python bench/export_memory.py sd15 --random-weights [--keep build/sd15-random]

Peak RSS is the child's ru_maxrss (Linux: KiB), i.e. the whole export process
including model construction, ONNX export and validation in onnxruntime.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("family")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--keep", help="keep the artifact at this path")
    ap.add_argument("--record", help="write results JSON + Markdown under bench/results/ with this name")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgegen-bench-"))
    out = Path(args.keep) if args.keep else tmp / "artifact"
    cmd = ["edgegen", "export", args.family, "--out", str(out), "--force"]
    cmd += ["--random-weights"] if args.random_weights else ["--tiny"] if args.tiny else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode:
        sys.exit(proc.returncode)
    manifest = json.loads((out / "manifest.json").read_text())
    comps = {n: {"params": c["params"], "bytes": sum(f["bytes"] for f in c["files"].values()),
                 "export_seconds": c.get("export_seconds"),
                 "max_abs_err": max(k["max_abs_err"] for k in c["validation"]["checks"])}
             for n, c in manifest["components"].items()}
    result = {"command": " ".join(["python bench/export_memory.py", *sys.argv[1:]]), "export_command": " ".join(cmd),
              "wall_seconds": round(wall, 1), "peak_rss_gb": round(peak_kib / 2**20, 2),
              "weights": "seeded random (real architecture)" if args.random_weights else "tiny",
              "components": comps, "machine": describe()}
    print(json.dumps(result, indent=2))
    if args.record:
        res = Path(__file__).resolve().parent / "results"
        res.mkdir(exist_ok=True)
        (res / f"{args.record}.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
