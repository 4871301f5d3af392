"""`edgegen bench ARTIFACT --device PROFILE`: measured latency per stage and peak memory.

Each measured configuration (edgegen's runtime; the baseline) runs in its own child process
(bench/worker.py): it loads the model, runs --warmup unmeasured and --runs measured
generations from the same initial latents and reports every stage's time per run. The parent
takes the child's peak resident set from the kernel (ru_maxrss of that child, os.wait4), so a
peak belongs to its configuration alone; on GPU hosts the child samples NVML (see
bench/memory.py). Results: the median and the spread (min, max, interquartile range) of the
measured runs; ratios are baseline / edgegen for time (> 1: edgegen is faster) and edgegen /
baseline for memory.

The device profile must describe this host (bench/host.py); `--estimate` gives a labelled
roofline estimate instead (bench/estimate.py), never mixed with measurements.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from ..runtimes.errors import EdgegenError
from .worker import PROMPT

GiB = 2 ** 30
BASELINES = ("torch", "openvino", "optimum")
WEIGHTS_NOTE = ("weights are seeded random (real architecture): latency and memory do not depend on weight values, "
                "so these figures hold for the released checkpoint")
_NEEDS = {"torch": (("torch", "diffusers", "transformers"), "pip install 'edgegen[export]'"),
          "openvino": (("openvino",), "pip install openvino"),
          "optimum": (("optimum.onnxruntime", "torch", "diffusers"), "pip install 'optimum[onnxruntime]'")}


# -- statistics ------------------------------------------------------------------------------

def spread(xs: list[float]) -> dict:
    xs = sorted(xs)
    d = {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "n": len(xs)}
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        d["iqr"] = q3 - q1
    return d


def summarize(child: dict) -> dict:
    """Median and spread of the measured runs, per stage and end to end."""
    runs = [r for r in child["runs"] if not r["warmup"]]
    order: list[str] = []
    for r in child["runs"]:
        order += [s for s in r["stages"] if s not in order]
    stages = {}
    for s in order:
        per_run = [sum(r["stages"].get(s, [])) for r in runs]
        calls = [t for r in runs for t in r["stages"].get(s, [])]
        stages[s] = {"calls_per_run": statistics.median(len(r["stages"].get(s, [])) for r in runs),
                     "per_run": spread(per_run), "per_call": spread(calls) if calls else None}
    e2e = spread([r["seconds"] for r in runs])
    staged = statistics.median(sum(sum(v) for v in r["stages"].values()) for r in runs)
    out = {"runtime": child.get("runtime"), "load_seconds": child.get("load_seconds"),
           "end_to_end": e2e, "cpu_seconds": spread([r["cpu_seconds"] for r in runs]),
           "unstaged_seconds": max(e2e["median"] - staged, 0.0), "stages": stages,
           "warmup_seconds": [r["seconds"] for r in child["runs"] if r["warmup"]],
           "loadavg_1min": [r.get("loadavg_1min_after") for r in runs]}
    for k in ("providers", "intra_op_threads", "scheduler", "onnxruntime", "openvino", "memory_after_load", "compile"):
        if child.get(k) is not None:
            out[k] = child[k]
    return out


# -- child processes ----------------------------------------------------------------------

class Child:
    """One configuration in a fresh interpreter (bench/worker.py). With lockstep=True it loads, says
    "ready", and runs one generation each time `run_once` asks (interleaved measurement)."""

    def __init__(self, cfg: dict, workdir: Path, lockstep: bool = False):
        self.mode = mode = cfg["mode"]
        self.cfg_path, self.out_path, self.log_path = (workdir / f"{mode}.{ext}"
                                                       for ext in ("config.json", "result.json", "log"))
        self.cfg_path.write_text(json.dumps({**cfg, "lockstep": lockstep}))
        with open(self.log_path, "w") as log:
            pipe = subprocess.PIPE if lockstep else None
            self.p = subprocess.Popen([sys.executable, "-m", "edgegen.bench.worker", str(self.cfg_path),
                                       str(self.out_path)], stdout=pipe or log, stderr=log,
                                      stdin=pipe or subprocess.DEVNULL, text=True)
        self.ru_maxrss = None

    def _expect(self, word: str) -> None:
        line = self.p.stdout.readline()
        if not line.startswith(word):     # EOF: the child failed; wait() reports why
            self.wait()
            raise EdgegenError(f"the {self.mode} measurement process stopped unexpectedly")

    def ready(self) -> None:
        self._expect("ready")

    def run_once(self) -> None:
        self.p.stdin.write("run\n")
        self.p.stdin.flush()
        self._expect("done")

    def kill(self) -> None:
        if self.p.returncode is None and self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def last_log_line(self) -> str | None:
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.startswith(f"[{self.mode}]")]
        return lines[-1] if lines else None

    def wait(self, status=None) -> dict:
        """Wait for the child to exit; its report, with the peak RSS of its own address space."""
        try:
            if hasattr(os, "wait4"):
                while True:
                    pid, st, ru = os.wait4(self.p.pid, os.WNOHANG)
                    if pid:
                        self.p.returncode, self.ru_maxrss = os.waitstatus_to_exitcode(st), ru.ru_maxrss
                        break
                    if status is not None:
                        status.update(f"measuring {self.mode}: {self.last_log_line() or 'loading'}")
                    time.sleep(0.5)
            else:
                self.p.wait()
        finally:
            self.kill()
        try:
            res = json.loads(self.out_path.read_text())
        except (OSError, ValueError):
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise EdgegenError(f"the {self.mode} measurement process failed (exit {self.p.returncode})"
                               + (f": {tail[0][:300]}" if tail else "")) from None
        if "error" in res:
            raise EdgegenError(f"{self.mode} measurement failed: {res['error']}")
        from .memory import maxrss_bytes

        # The child's own VmHWM is the peak of its address space alone. The kernel's ru_maxrss for the
        # child is not: Linux carries the parent's high-water mark into the child across fork/vfork +
        # exec (exec_mmap folds the old mm's hiwater_rss into signal->maxrss), so a large parent (a test
        # process holding torch) would leak into it. ru_maxrss is kept as a cross-check only.
        res["ru_maxrss_bytes"] = maxrss_bytes(self.ru_maxrss) if self.ru_maxrss else None
        if res.get("peak_rss_self"):
            res["peak_rss_bytes"], res["peak_rss_method"] = res["peak_rss_self"], "VmHWM of the child process"
        else:
            res["peak_rss_bytes"], res["peak_rss_method"] = res["ru_maxrss_bytes"], "ru_maxrss of the child process"
        return res


def run_child(cfg: dict, workdir: Path, status=None) -> dict:
    """One configuration from start to end, alone."""
    return Child(cfg, workdir).wait(status)


def run_interleaved(cfgs: list[dict], workdir: Path, status=None) -> list[dict]:
    """Configurations loaded one after the other and kept loaded (their memory adds up on the host,
    each child's peak is still its own), then measured in turns, the order alternating every round,
    so that the load of a shared machine falls on all of them alike."""
    children: list[Child] = []
    try:
        for cfg in cfgs:
            if status is not None:
                status.update(f"loading {cfg['mode']}")
            children.append(Child(cfg, workdir, lockstep=True))
            children[-1].ready()
        total = cfgs[0]["warmup"] + cfgs[0]["runs"]
        for i in range(total):
            for c in (children if i % 2 == 0 else children[::-1]):
                if status is not None:
                    status.update(f"interleaved round {i + 1}/{total}: running {c.mode}")
                c.run_once()
        return [c.wait() for c in children]
    finally:
        for c in children:
            c.kill()


def _memory(child: dict, gpu: bool) -> dict:
    m = {"peak_rss_bytes": child["peak_rss_bytes"], "peak_rss_gib": round(child["peak_rss_bytes"] / GiB, 3),
         "method": child["peak_rss_method"]}
    if child.get("ru_maxrss_bytes"):
        m["ru_maxrss_gib"] = round(child["ru_maxrss_bytes"] / GiB, 3)
    load = child.get("after_load", {})
    if "VmRSS" in load:
        m["rss_after_load_gib"] = round(load["VmRSS"] / GiB, 3)
    m["hwm_after_each_run_gib"] = [round(r["rss_hwm_after"] / GiB, 3) for r in child["runs"] if r.get("rss_hwm_after")]
    if gpu:
        v = child.get("vram") or {}
        m["peak_vram_bytes"] = v.get("peak_bytes")
        m["peak_vram_gib"] = None if v.get("peak_bytes") is None else round(v["peak_bytes"] / GiB, 3)
        m["vram_method"] = v.get("method")
        if child.get("torch_cuda"):
            m["torch_cuda"] = {k: round(b / GiB, 3) for k, b in child["torch_cuda"].items()}
    m["peak_gib"] = m["peak_vram_gib"] if gpu else m["peak_rss_gib"]
    return m


# -- comparisons --------------------------------------------------------------------------

def ratios(ours: dict, base: dict) -> dict:
    def ratio(b, e):
        return None if not e or b is None else b / e

    stages = {}
    for s, v in ours["stages"].items():
        if s in base["stages"]:
            stages[s] = ratio(base["stages"][s]["per_run"]["median"], v["per_run"]["median"])
    mo, mb = ours["memory"].get("peak_gib"), base["memory"].get("peak_gib")
    return {"meaning": "speedup = baseline median / edgegen median (> 1: edgegen faster); "
                       "memory = edgegen peak / baseline peak (< 1: edgegen uses less)",
            "end_to_end_speedup": ratio(base["end_to_end"]["median"], ours["end_to_end"]["median"]),
            "stage_speedup": stages,
            "peak_memory": None if not mo or not mb else mo / mb}


def planner_prediction(manifest: dict, profile, height: int, width: int, runtime: str, warm: bool) -> dict | None:
    """What profiles/planner.py predicts for this configuration, or a reason it does not."""
    from ..profiles import planner

    if manifest.get("size") != "full":
        return {"note": "no prediction for a tiny artifact (the planner models full-size architectures)"}
    precs = {c.get("precision", "fp32") for c in manifest["components"].values()}
    prec = manifest["components"][manifest["pipeline"]["denoiser"]].get("precision", "fp32")
    try:
        if profile.kind == "cpu":
            b = planner.predict_peak_rss(manifest["family"], prec if runtime == "onnxruntime-cpu" else "fp32",
                                         height, width, 1, runtime, warm)
            d = {"model": f"predict_peak_rss(runtime={runtime!r}, warm={warm})", "predicted_gib": round(b / GiB, 3)}
        else:
            if runtime != "onnxruntime-cpu":
                return None
            plan = planner.plan_for_device(manifest["family"], profile, height, width, 1, prec)["plans"][0]
            d = {"model": "plan_for_device resident peak", "predicted_gib": plan["resident_peak_gib"]}
    except EdgegenError as e:
        return {"note": f"no prediction: {e}"}
    if len(precs) > 1:
        d["note"] = f"mixed precisions {sorted(precs)}: predicted as {prec} throughout"
    return d


def psnr(a, b) -> float | None:
    import numpy as np

    if a.shape != b.shape:
        return None
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


# -- the command --------------------------------------------------------------------------

def _check_available(baseline: str) -> None:
    mods, how = _NEEDS[baseline]
    for m in mods:
        try:
            found = importlib.util.find_spec(m) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise EdgegenError(f"--baseline {baseline} needs {m.split('.')[0]}, which is not installed here ({how})")


def _command(artifact, device, baseline, runs, warmup, steps, height, width, as_json, report, estimate, no_verify,
             interleave=False, memory="resident") -> str:
    args = ["edgegen", "bench", str(artifact), "--device", device]
    if memory != "resident":
        args += ["--memory", memory]
    for flag, v in (("--baseline", baseline), ("--steps", steps), ("--height", height), ("--width", width)):
        if v is not None:
            args += [flag, str(v)]
    if not estimate:
        args += ["--runs", str(runs), "--warmup", str(warmup)]
    args += [f for f, on in (("--interleave", interleave), ("--estimate", estimate), ("--json", as_json),
                             ("--no-verify", no_verify)) if on]
    if report:
        args += ["--report", str(report)]
    return " ".join(shlex.quote(a) for a in args)


def measure(art, profile, host, baseline, runs, warmup, steps, height, width, verify, status=None,
            interleave: bool = False, memory: str = "resident") -> dict:
    from .host import runtime_device

    manifest, r = art.manifest, art.manifest["pipeline"]
    device = runtime_device(profile)
    gpu = device == "cuda"
    base_cfg = {"artifact": str(art.root), "device": device, "prompt": PROMPT, "steps": steps,
                "guidance": r["defaults"]["guidance"], "sampler": r["defaults"]["sampler"], "seed": 0,
                "height": height, "width": width, "runs": runs, "warmup": warmup, "verify": verify, "memory": memory}
    results, images = {}, {}
    modes = ["edgegen"] + ([baseline] if baseline else [])
    with tempfile.TemporaryDirectory(prefix="edgegen-bench-") as tmp:
        tmp = Path(tmp)
        cfgs = [{**base_cfg, "mode": m, "image_out": str(tmp / f"{m}.npy")} for m in modes]
        if interleave and len(cfgs) > 1:
            children = run_interleaved(cfgs, tmp, status)
        else:
            children = [run_child(c, tmp, status) for c in cfgs]
        for mode, child in zip(modes, children):
            s = summarize(child)
            s["memory"] = _memory(child, gpu)
            runtime = "onnxruntime-cpu" if mode in ("edgegen", "openvino") else "torch-cpu"
            if not gpu and mode in ("edgegen", "torch"):
                pred = planner_prediction(manifest, profile, height, width, runtime, warmup + runs >= 2)
            elif gpu and mode == "edgegen":
                pred = planner_prediction(manifest, profile, height, width, runtime, True)
            else:
                pred = None
            if pred and "predicted_gib" in pred:
                pred["measured_gib"] = s["memory"]["peak_gib"]
                if pred["measured_gib"]:
                    pred["error_pct"] = round(100 * (pred["predicted_gib"] / pred["measured_gib"] - 1), 1)
            s["planner"] = pred
            results[mode] = s
            try:
                import numpy as np

                images[mode] = np.load(tmp / f"{mode}.npy")
            except (OSError, ValueError):
                pass
    out = {"runtimes": results}
    if baseline:
        out["ratios"] = ratios(results["edgegen"], results[baseline])
        if baseline in images and "edgegen" in images:
            out["image_psnr_db"] = psnr(images["edgegen"], images[baseline])
    out["measured_on"] = "GPU, VRAM" if gpu else "CPU, process RSS"
    out["schedule"] = ("interleaved: both loaded, runs alternating (order flipped every round)"
                       if interleave and baseline else "sequential: each configuration alone, one after the other")
    out["runtime_device"] = device
    return out


def _emit(result: dict, module, as_json: bool, report) -> None:
    """Report files, then JSON or a table: `module` is the report module of the result's kind."""
    if report:
        paths = module.write_report(result, report)
        click.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=1, default=str))
    else:
        module.print_table(result)


def _device_bench(profile, families, artifacts, steps, as_json, report, *unused) -> None:
    from . import device_bench as db

    given = [flag for value, flag in unused if value]
    if given:
        raise EdgegenError(f"{given[0]} needs an ARTIFACT; without one, bench compares families on --device")
    if steps is not None and steps < 1:
        raise EdgegenError(f"--steps must be >= 1, got {steps}")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise EdgegenError("benchmarking a device across families builds each architecture to count its FLOPs: "
                           "pip install 'edgegen[export]'") from None
    from rich.console import Console

    with Console(stderr=True).status("planning") as status:
        result = db.device_bench(profile, list(families) or None, artifacts, steps, say=status.update)
    _emit(result, db, as_json, report)


@click.command("bench")
@click.argument("artifact", type=click.Path(path_type=Path), required=False)
@click.option("--device", "device", help="Device profile of this host (see `edgegen profiles`); without ARTIFACT, "
                                        "the device to benchmark across families.")
@click.option("--family", "families", multiple=True, help="Without ARTIFACT: only these families (repeatable).")
@click.option("--artifacts", type=click.Path(path_type=Path),
              help="Without ARTIFACT: a folder of full-size artifacts to measure where this host is the device.")
@click.option("--baseline", type=click.Choice(BASELINES), help="Also run the same model this way, in its own process.")
@click.option("--runs", type=int, default=3, show_default=True, help="Measured generations.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Unmeasured generations first.")
@click.option("--steps", type=int, help="Denoising steps (default: the artifact's).")
@click.option("--height", type=int, help="Image height (default: the artifact's).")
@click.option("--width", type=int, help="Image width (default: the artifact's).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path),
              help="Write Markdown, JSON and a PNG chart into this folder.")
@click.option("--estimate", is_flag=True, help="Roofline estimate from the profile instead of measuring.")
@click.option("--no-verify", is_flag=True, help="Skip checking the artifact's file digests.")
@click.option("--interleave", is_flag=True,
              help="With --baseline: keep both loaded and alternate their runs (fairer ratios on a busy host; "
                   "needs the memory of both at once).")
@click.option("--memory", type=click.Choice(["resident", "sequential"]), default="resident", show_default=True,
              help="edgegen's memory mode: every component kept loaded, or one stage's at a time (each image "
                   "then reloads them; stage times exclude loading, the per-image time includes it).")
def bench_cmd(artifact, device, families, artifacts, baseline, runs, warmup, steps, height, width, as_json, report,
              estimate, no_verify, interleave, memory):
    """Measure ARTIFACT on this host: per-stage latency, end to end, peak memory.

    Without ARTIFACT: the --device across every family (fit, plan, latency per stage and
    per image; estimates where nothing can be measured here)."""
    from ..profiles.device import get_profile, load_profiles
    from ..runtimes.artifact import load_artifact
    from ..runtimes.pipeline import Pipeline
    from . import report as rep

    if not device:
        raise EdgegenError(f"give --device (one of: {', '.join(load_profiles())})")
    profile = get_profile(device)
    if artifact is None:
        _device_bench(profile, families, artifacts, steps, as_json, report,
                      (baseline, "--baseline"), (height, "--height"), (width, "--width"), (interleave, "--interleave"))
        return
    if families or artifacts:
        raise EdgegenError("--family and --artifacts go with `edgegen bench --device D` without an ARTIFACT")
    if runs < 1 or warmup < 0:
        raise EdgegenError(f"need --runs >= 1 and --warmup >= 0, got {runs} and {warmup}")
    if steps is not None and steps < 1:
        raise EdgegenError(f"--steps must be >= 1, got {steps}")
    if estimate and (baseline or interleave):
        raise EdgegenError("--estimate measures nothing, so it takes no --baseline or --interleave")
    if interleave and not baseline:
        raise EdgegenError("--interleave alternates edgegen with a --baseline; give one")
    if interleave and memory == "sequential":
        raise EdgegenError("--interleave keeps both runners loaded, which --memory sequential does not; choose one")
    pipe = Pipeline.load(artifact, verify=False)   # reads the manifest; no sessions yet
    d = pipe.defaults
    steps, height, width = steps or d["steps"], height or d["height"], width or d["width"]
    try:
        pipe.check_size(height, width)
    except KeyError as e:
        raise EdgegenError(f"{artifact}: its manifest has no recipe field {e} (written by an older edgegen); "
                           "export it again") from None
    command = _command(artifact, device, baseline, runs, warmup, steps, height, width, as_json, report, estimate, no_verify,
                       interleave, memory)
    from .machine import describe

    manifest = pipe.artifact.manifest
    head = {"command": command, "machine": describe(), "device": profile.to_dict(),
            "artifact": {"path": str(artifact), "family": manifest["family"], "size": manifest.get("size"),
                         "denoiser": manifest["pipeline"]["denoiser"],
                         "source": manifest.get("source"), "bytes": pipe.artifact.total_bytes(),
                         "precisions": {n: c.get("precision", "fp32") for n, c in manifest["components"].items()}},
            "settings": {"steps": steps, "height": height, "width": width, "sampler": d["sampler"], "memory": memory,
                         "guidance": d["guidance"], "prompt": PROMPT, "seed": 0}}
    if (manifest.get("source") or {}).get("kind") == "random":
        head["weights_note"] = WEIGHTS_NOTE
    if estimate:
        from .estimate import estimate as roofline

        result = {**head, **roofline(manifest, profile, steps, height, width, d["guidance"])}
    else:
        from .host import detect, require_match

        host = detect()
        require_match(profile, host)
        if baseline:
            _check_available(baseline)
        if not no_verify:
            load_artifact(artifact, verify=True)   # once here, so the children need not
        head["settings"].update(runs=runs, warmup=warmup)
        head["host"] = host.to_dict()
        from rich.console import Console

        with Console(stderr=True).status("measuring") as status:
            body = measure(pipe.artifact, profile, host, baseline, runs, warmup, steps, height, width, False, status,
                           interleave, memory)
        result = {**head, "kind": "measurement", **body,
                  "budget": {"device_memory_gib": profile.memory_gb, "usable_gib": round(profile.usable_gb, 3)}}
    _emit(result, rep, as_json, report)
