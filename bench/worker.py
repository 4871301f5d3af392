"""One measured configuration, run in a child process of `edgegen bench`.

    python -m edgegen.bench.worker CONFIG.json RESULT.json

CONFIG names the artifact, the runner ("edgegen": this package's torch-free runtime;
"torch": plain diffusers; "openvino": the artifact's ONNX graphs through OpenVINO;
"optimum": Hugging Face Optimum) and the settings. The child loads the model, runs
`warmup` unmeasured and `runs` measured generations from the same initial latents, and writes
per-run stage timings and memory checkpoints to RESULT. Nothing of another runner is
imported, so the child's peak memory is its configuration's alone (the edgegen child never
imports torch).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from .memory import proc_status, self_peak_rss

PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, 35mm"


def initial_latents(manifest: dict, height: int, width: int, seed: int):
    """The initial noise every runner starts from: (1, C, H/s, W/s) float32 from numpy's PCG64."""
    import numpy as np

    r = manifest["pipeline"]
    c, s = r["latent_channels"], r["vae_scale_factor"]
    return np.random.default_rng(seed).standard_normal((1, c, height // s, width // s)).astype(np.float32)


def _loadavg() -> float | None:
    """The host's 1-minute load average: on a shared machine, how contended the CPUs were."""
    try:
        return round(__import__("os").getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


class Recorder:
    """Collects (stage, seconds) for the run in progress."""

    def __init__(self):
        self.current: dict[str, list[float]] | None = None

    def add(self, stage: str, seconds: float) -> None:
        if self.current is not None:
            self.current.setdefault(stage, []).append(seconds)

    def observer(self, stage, inputs, outputs, seconds) -> None:   # Pipeline.observers signature
        self.add(stage, seconds)


def _edgegen_runner(cfg: dict, manifest: dict, rec: Recorder):
    from ..runtimes.pipeline import Pipeline

    memory = cfg.get("memory", "resident")
    if cfg["mode"] == "openvino":   # the same graphs and loop, OpenVINO's backend at load time
        pipe = Pipeline.load(cfg["artifact"], device="GPU" if cfg["device"] == "cuda" else "CPU",
                             verify=cfg.get("verify", True), backend="openvino", memory=memory)
    else:                           # onnxruntime, or the backend a compiled artifact names
        pipe = Pipeline.load(cfg["artifact"], device=None if "target" in manifest else cfg["device"],
                             verify=cfg.get("verify", True), memory=memory)
    r = pipe.recipe
    # Sessions and tokenizers are created lazily; create them now so loading is not timed as a stage.
    # Sequential memory loads each stage's components when it runs, after releasing the others: a
    # stage's time never includes loading (the pipeline loads before its timer starts), the image's does.
    for te in r["text_encoders"]:
        pipe.tokenizer(te["tokenizer"], te.get("label"))
        if memory == "resident":
            pipe.component(te["component"])
    if memory == "resident":
        pipe.component(r["vae_decoder"])
    pipe.observers.append(rec.observer)
    be = pipe.backend
    sess = pipe.component(r["denoiser"])
    target = manifest.get("target")
    info = {"runtime": f"edgegen ({be.name} {be.device}"
                       f"{', ' + be.resolved_precision() if be.resolved_precision() else ''})"
                       + (", compiled" if target else ""),
            **be.versions(),
            "providers": sess.session.get_providers() if hasattr(sess, "session") else None,
            "intra_op_threads": "backend default (one per physical core)", "memory_mode": memory,
            "memory_after_load": be.memory()}
    if target:
        info["compile"] = {"target": target["target"], "seconds": target["build"]["seconds"],
                           "gate": target.get("gate", {}).get("end_to_end")}
    if memory == "sequential":
        del sess
        pipe.release()   # the warm-up and measured runs start from nothing loaded, each loading in turn

    def generate(latents):
        return pipe(cfg["prompt"], steps=cfg["steps"], guidance=cfg["guidance"], sampler=cfg["sampler"], seed=cfg["seed"],
                    latents=latents)

    return generate, info, dict


def main(argv: list[str]) -> int:
    cfg_path, out_path = Path(argv[0]), Path(argv[1])
    cfg = json.loads(cfg_path.read_text())
    result: dict = {"mode": cfg["mode"]}
    try:
        manifest = json.loads((Path(cfg["artifact"]) / "manifest.json").read_text())
        rec = Recorder()
        cuda = cfg["device"] == "cuda"
        from .memory import VramSampler

        vram = VramSampler() if cuda else None
        if vram is not None:
            vram.__enter__()
        t0 = time.perf_counter()
        if cfg["mode"] in ("edgegen", "openvino"):
            generate, info, finish = _edgegen_runner(cfg, manifest, rec)
        elif cfg["mode"] == "torch":
            from .torch_baseline import torch_runner

            generate, info, finish = torch_runner(cfg, manifest, rec)
        elif cfg["mode"] == "optimum":
            from .optimum_runner import optimum_runner

            generate, info, finish = optimum_runner(cfg, manifest, rec)
        else:
            raise ValueError(f"unknown mode {cfg['mode']!r}")
        result.update(info)
        result["load_seconds"] = time.perf_counter() - t0
        result["after_load"] = proc_status()
        latents = initial_latents(manifest, cfg["height"], cfg["width"], cfg["seed"])
        runs, image = [], None
        total = cfg["warmup"] + cfg["runs"]
        proto = None
        if cfg.get("lockstep"):
            # Interleaved measurement: the parent says when to run. Protocol lines go to the original
            # stdout; anything a library prints goes to stderr (the log).
            proto = os.fdopen(os.dup(1), "w")
            os.dup2(2, 1)
            proto.write("ready\n")
            proto.flush()
        for i in range(total):
            if proto is not None and sys.stdin.readline().strip() != "run":
                break
            rec.current = {}
            c0, w0 = time.process_time(), time.perf_counter()
            image = generate(latents)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            runs.append({"warmup": i < cfg["warmup"], "seconds": wall, "cpu_seconds": cpu, "stages": rec.current,
                         "rss_hwm_after": proc_status().get("VmHWM"), "loadavg_1min_after": _loadavg()})
            rec.current = None
            print(f"[{cfg['mode']}] run {i + 1}/{total}: {wall:.2f} s", file=sys.stderr, flush=True)
            if proto is not None:
                proto.write(f"done {wall}\n")
                proto.flush()
        result["runs"] = runs
        result["peak_rss_self"] = self_peak_rss()
        if vram is not None:
            vram.__exit__(None, None, None)
            result["vram"] = {"peak_bytes": vram.peak, "method": vram.method}
        result.update(finish())
        if cfg.get("image_out") and image is not None:
            import numpy as np

            np.save(cfg["image_out"], np.asarray(image))
    except Exception as e:  # reported to the parent, which turns it into a one-line error
        from ..runtimes.errors import EdgegenError

        result["error"] = str(e) if isinstance(e, EdgegenError) else f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
        out_path.write_text(json.dumps(result, default=str))
        return 3
    out_path.write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
