"""Time of the one-call denoise graph vs the runtime's loop (N denoiser calls + numpy sampler steps).

    python bench/denoise_graph_overhead.py lcm-sd15 --tiny --record tiny-lcm-sd15
    python bench/denoise_graph_overhead.py sd15 --artifact /tmp/bench/sd15-random --sampler euler --steps 4 \
        --height 256 --width 256 --repeat 3 --record real-sd15-euler4

Without --artifact a --tiny artifact of the family is exported first (needs torch). The given
artifact is not modified: the denoiser folder is mirrored with hard links into a temp folder
(so a denoise graph can point at the same external weights) and the graphs are built there
by export.sampler_graphs.add_sampler_graphs (which also validates them against the loop).

Both forms run on the same inputs (batch 1, no CFG unless --cfg; random conditioning at the
denoiser's opt sizes, latents at --height/--width) in onnxruntime CPU sessions with the same
options, alternating loop and graph for --repeat rounds after one warm-up each, so load from
other processes hits both alike (--sequential: all loop rounds with only the denoiser session
open, then all graph rounds, for models too big to hold two sessions). Reported: median wall time per full denoise, the loop's
split into denoiser calls and numpy sampler work, ratio graph/loop, session creation time,
sizes, and the max difference of the two outputs. --record merges the result under its label
into bench/results/denoise_graph_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from edgegen.export.denoise_graph import RowNoise  # noqa: E402
from edgegen.export.sampler_graphs import add_sampler_graphs, latent_spec, prepare_sampler  # noqa: E402
from edgegen.runtimes.graph_sampler import draw_noise, reference_denoise  # noqa: E402
from edgegen.runtimes.iospec import IOSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "denoise_graph_overhead.json"


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    t0 = time.perf_counter()
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return s, time.perf_counter() - t0


def fill_old_recipe(manifest: dict) -> list[str]:
    """Artifacts from before recipes carried resolution/size_multiple: derive them from the
    denoiser's latent dims (U-Net artifacts). Returns the keys added."""
    r = manifest["pipeline"]
    dims = manifest["components"][r["denoiser"]]["io"]["dims"]
    added = []
    if "latent_height" in dims:
        lat, scale = dims["latent_height"], r["vae_scale_factor"]
        if "resolution" not in r:
            r["resolution"] = [lat["min"] * scale, lat["max"] * scale]
            added.append("resolution")
        if "size_multiple" not in r:
            r["size_multiple"] = lat.get("multiple", 1) * scale
            added.append("size_multiple")
    return added


def mirror(src: Path, manifest: dict, dst: Path) -> None:
    """dst gets the manifest and a hard-linked copy of the denoiser folder (same files, no bytes copied)."""
    comp = manifest["pipeline"]["denoiser"]
    (dst / comp).mkdir(parents=True)
    for f in (src / comp).iterdir():
        try:
            os.link(f, dst / comp / f.name)
        except OSError:
            shutil.copy2(f, dst / comp / f.name)
    (dst / "manifest.json").write_text(json.dumps(manifest))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("family")
    ap.add_argument("--tiny", action="store_true", help="export a --tiny artifact of the family first")
    ap.add_argument("--artifact", type=Path, help="use this artifact (read only)")
    ap.add_argument("--sampler", help="default: the recipe's")
    ap.add_argument("--steps", type=int, help="default: the recipe's")
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--cfg", action="store_true", help="classifier-free guidance (batch 2 through the denoiser)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    ap.add_argument("--sequential", action="store_true",
                    help="hold one session at a time (all loop rounds, then all graph rounds): for big models")
    ap.add_argument("--record", metavar="LABEL", help="merge the result into bench/results/denoise_graph_overhead.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="edgegen-denoise-bench-"))
    try:
        src = args.artifact
        if src is None:
            if not args.tiny:
                ap.error("give --artifact PATH or --tiny")
            src = tmp / "artifact"
            subprocess.run(["edgegen", "export", args.family, "--tiny", "--out", str(src)], check=True)
        manifest = json.loads((src / "manifest.json").read_text())
        filled = fill_old_recipe(manifest)
        recipe, d = manifest["pipeline"], manifest["pipeline"]["defaults"]
        sampler, steps = args.sampler or d["sampler"], args.steps or int(d["steps"])
        h, w = args.height or d["height"], args.width or d["width"]
        root = tmp / "view"
        mirror(src, manifest, root)

        t0 = time.perf_counter()
        entries = add_sampler_graphs(root, manifest, samplers=[(sampler, steps)], denoise=True, cfg=args.cfg)
        build_s = time.perf_counter() - t0
        entry = entries["denoise_graphs"][f"{sampler}-{steps}"]
        dio = IOSpec.from_dict(manifest["components"][recipe["denoiser"]]["io"])
        io = IOSpec.from_dict(entry["io"])
        lat = latent_spec(dio)
        sched, (lh, lw) = prepare_sampler(root, manifest, sampler, steps, h, w)

        # Inputs: conditioning at the denoiser's opt sizes, latents at the asked size, batch 1.
        sizes = dio.sizes("opt", batch=1)
        if "latent_height" in sizes:
            sizes.update(latent_height=lh, latent_width=lw)
        if "img_seq" in sizes:
            sizes["img_seq"] = (lh // 2) * (lw // 2)
        den_feeds = dio.example(sizes, seed=0)
        fixed = {k: v for k, v in den_feeds.items() if k not in (lat.name, "timestep")}
        if args.cfg:
            fixed = {k: np.concatenate([v, v]) if v.shape[:1] == (1,) else v for k, v in fixed.items()}
        rng = np.random.default_rng(1)
        x = (rng.standard_normal(lat.resolve(sizes)) * np.float32(sched.init_noise_sigma)).astype(np.float32)
        feeds = {"latents": x, **fixed}
        rows = None
        if "noise" in io.input_names:
            rows = feeds["noise"] = draw_noise(rng, [True] * steps, x.shape)
        if args.cfg:
            feeds["guidance_scale"] = np.array([4.0], np.float32)

        den, den_create = session(root / manifest["components"][recipe["denoiser"]]["graph"], args.threads)
        pred = dio.output_names[0]
        den_time = [0.0]

        def run_denoiser(**kw):
            t = time.perf_counter()
            out = den.run([pred], kw)[0]
            den_time[0] += time.perf_counter() - t
            return out

        def loop():
            return reference_denoise(run_denoiser, RowNoise(sched, rows), x, fixed, latent_input=lat.name,
                                     timestep_scale=float(recipe.get("timestep_scale", 1.0)), cfg=args.cfg,
                                     guidance=4.0)

        def open_graph():
            g, t = session(root / entry["graph"], args.threads)
            return g, t

        def one_call(g):
            return g.run(["final_latents"], feeds)[0]

        def time_loop():
            den_time[0] = 0.0
            t = time.perf_counter()
            loop()
            loop_t.append(time.perf_counter() - t)
            loop_den_t.append(den_time[0])

        def time_graph(g):
            t = time.perf_counter()
            one_call(g)
            graph_t.append(time.perf_counter() - t)

        loop_t, loop_den_t, graph_t = [], [], []
        ref = loop()  # warm-up
        if args.sequential:
            for _ in range(args.repeat):
                time_loop()
            del den
            graph, graph_create = open_graph()
            got = one_call(graph)  # warm-up
            for _ in range(args.repeat):
                time_graph(graph)
        else:
            graph, graph_create = open_graph()
            got = one_call(graph)  # warm-up
            for _ in range(args.repeat):  # alternate, so load from other processes hits both alike
                time_loop()
                time_graph(graph)
        del graph
        med = lambda v: float(np.median(v))  # noqa: E731
        loop_ms, graph_ms, den_ms = 1e3 * med(loop_t), 1e3 * med(graph_t), 1e3 * med(loop_den_t)
        import onnx

        nodes = {"denoiser": len(onnx.load(str(root / manifest["components"][recipe["denoiser"]]["graph"]),
                                           load_external_data=False).graph.node),
                 "denoise_graph": len(onnx.load(str(root / entry["graph"]), load_external_data=False).graph.node)}
        label = args.record or f"{args.family}-{sampler}-{steps}"
        result = {
            "command": " ".join(["python bench/denoise_graph_overhead.py", *sys.argv[1:]]),
            "family": args.family, "weights": manifest.get("size"), "source": manifest.get("source"),
            "recipe_keys_derived_for_old_artifact": filled,
            "denoiser_params": manifest["components"][recipe["denoiser"]].get("params"),
            "sampler": sampler, "steps": steps, "cfg": args.cfg, "latent_shape": list(x.shape),
            "height": h, "width": w, "repeat": args.repeat,
            "order": "sequential" if args.sequential else "alternating",
            "threads": args.threads or "onnxruntime default",
            "loop_ms": round(loop_ms, 3), "loop_denoiser_calls_ms": round(den_ms, 3),
            "loop_numpy_sampler_and_glue_ms": round(loop_ms - den_ms, 3),
            "graph_ms": round(graph_ms, 3), "ratio_graph_over_loop": round(graph_ms / loop_ms, 4),
            "overhead_ms": round(graph_ms - loop_ms, 3),
            "loop_min_ms": round(1e3 * min(loop_t), 3), "graph_min_ms": round(1e3 * min(graph_t), 3),
            "session_create_s": {"denoiser": round(den_create, 2), "denoise_graph": round(graph_create, 2)},
            "build_and_validate_s": round(build_s, 2),
            "graph_file_bytes": (root / entry["graph"]).stat().st_size,
            "shares_external_data": entry["shares_external_data"], "nodes": nodes,
            "max_abs_diff_graph_vs_loop": float(np.abs(got.astype(np.float64) - ref).max()),
            "validation": entry["validation"],
            "load_average_1_5_15m": [round(v, 2) for v in os.getloadavg()],  # other processes share the cores
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "machine": describe(),
        }
        print(json.dumps({k: v for k, v in result.items() if k not in ("validation", "machine")}, indent=2))
        if args.record:
            RESULTS.parent.mkdir(exist_ok=True)
            data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            data.setdefault("about", "bench/denoise_graph_overhead.py: one denoise-graph call vs the runtime loop "
                                     "(N denoiser session calls + numpy sampler steps); times are medians per full "
                                     "denoise, ratio = graph/loop")
            data.setdefault("runs", {})[label] = result
            RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
