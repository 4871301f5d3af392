"""Helper of bench/gpu/check.sh: the measurements and the report of the GPU check.

    python3 bench/gpu/check.py env       --out J
    python3 bench/gpu/check.py providers --out J                 # exit 0: CUDAExecutionProvider really runs
    python3 bench/gpu/check.py latency   --art A --config cuda --config cuda+graph [--ref-art P --ref-steps K] ...
    python3 bench/gpu/check.py rtx       --art A --out J
    python3 bench/gpu/check.py record    --work W --name N --status S --rc RC --seconds T --cmd CMD [--log F]
    python3 bench/gpu/check.py report    --work W --out-dir OUT

`env`, `record` and `report` use the standard library only (they run before anything is
installed, and in --dry-run on a machine without a GPU). Every result file carries the command
that produced it; `report` joins them with the step records into gpu_check.json and
gpu_check.md. Each result is written as soon as it is known, so a call cut off at its time
limit still returns what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, 35mm"
WEIGHTS_NOTE = ("weights are seeded random (real architecture for sd15 and sdxl-turbo, the small config for "
                "'tiny'): latency and memory do not depend on weight values, so these figures are valid for "
                "speed and memory only, not image quality; PSNR here compares runtimes on the same graphs")
ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")
MiB = 2 ** 20


def _command() -> str:
    return "python3 bench/gpu/check.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _write(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text(path, json.dumps(data, indent=2, default=str))


def _write_text(path: Path, text: str) -> None:
    """Atomic: check.sh's background steps record (and rewrite the report) beside the foreground."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _sh(cmd: list[str], timeout: float = 30) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"


def _err(e: BaseException) -> str:
    lines = (str(e).strip().splitlines() or [""])
    return f"{type(e).__name__}: {lines[0][:500]}"


# -- GPU memory ---------------------------------------------------------------------------------

class Vram:
    """Device memory in use, from NVML (nvidia-ml-py), else nvidia-smi; a sampling thread keeps the
    peak while a generation runs. Device-wide figures: only this check runs on the lent GPU."""

    def __init__(self, index: int = 0, period: float = 0.02):
        self.period, self.peak, self._stop, self._t = period, None, threading.Event(), None
        self.source, self.h = None, None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml, self.h, self.source = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index), "nvml"
        except Exception:
            if shutil.which("nvidia-smi"):
                self.source = "nvidia-smi"

    def used(self) -> int | None:
        try:
            if self.source == "nvml":
                return int(self.nvml.nvmlDeviceGetMemoryInfo(self.h).used)
            if self.source == "nvidia-smi":
                out = _sh(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], 10)
                return int(float(out.splitlines()[0])) * MiB
        except Exception:
            return None
        return None

    def process_used(self) -> int | None:
        """This process's own device memory, where NVML lists it (not under every sandbox)."""
        if self.source != "nvml":
            return None
        try:
            for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.h):
                if p.pid == os.getpid() and p.usedGpuMemory:
                    return int(p.usedGpuMemory)
        except Exception:
            pass
        return None

    def __enter__(self):
        self.peak = self.used()
        if self.source == "nvml":
            self._stop.clear()
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def _loop(self):
        while not self._stop.is_set():
            u = self.used()
            if u is not None and (self.peak is None or u > self.peak):
                self.peak = u
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        if self._t is not None:
            self._t.join()
        u = self.used()
        if u is not None and (self.peak is None or u > self.peak):
            self.peak = u


def _mib(b) -> float | None:
    return None if b is None else round(b / MiB, 1)


# -- env ------------------------------------------------------------------------------------------

def cmd_env(a) -> int:
    out: dict = {"command": _command(), "python": sys.version.split()[0], "executable": sys.executable,
                 "platform": platform.platform(), "machine": platform.machine(), "cores": os.cpu_count()}
    try:
        flags, model = set(), None
        for line in open("/proc/cpuinfo"):
            k = line.split(":", 1)[0].strip()
            if k == "flags" and not flags:
                flags = set(line.split(":", 1)[1].split())
            if k == "model name" and model is None:
                model = line.split(":", 1)[1].strip()
        out["cpu"] = {"model": model, "isa": sorted(flags & set(ISA))}
    except OSError:
        pass
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        out["ram_gib"] = round(pages * size / 2 ** 30, 1)
    except (ValueError, OSError):
        pass
    out["disk_free_gib"] = {p: round(shutil.disk_usage(p).free / 2 ** 30, 1) for p in ("/tmp", ".") if os.path.exists(p)}
    out["glibc"] = " ".join(platform.libc_ver())
    if shutil.which("nvidia-smi"):
        q = _sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap,clocks.max.sm",
                 "--format=csv,noheader"])
        out["nvidia_smi"] = q
        if q and "," in q:
            name, mem, drv, cc, clk = [s.strip() for s in q.splitlines()[0].split(",")][:5]
            out["gpu"] = {"name": name, "memory": mem, "driver": drv, "compute_capability": cc, "max_sm_clock": clk}
    else:
        out["nvidia_smi"] = "not found"
    if not a.no_torch:
        try:
            import torch

            t = {"version": torch.__version__, "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                 "cuda_available": torch.cuda.is_available()}
            if torch.cuda.is_available():
                p = torch.cuda.get_device_properties(0)
                t.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                         memory_gib=round(p.total_memory / 2 ** 30, 2))
            out["torch"] = t
        except Exception as e:
            out["torch"] = {"error": _err(e)}
    out["packages"] = _versions(("onnxruntime", "onnxruntime-gpu", "onnx", "onnxscript", "diffusers", "transformers",
                                 "huggingface-hub", "numpy", "tokenizers", "safetensors", "nvidia-ml-py",
                                 "nvidia-cudnn-cu13", "nvidia-cublas", "nvidia-cuda-runtime", "setuptools",
                                 "onnxruntime-ep-nv-tensorrt-rtx-cu13", "edgegen"))
    _write(a.out, out)
    print(json.dumps({k: out.get(k) for k in ("gpu", "torch", "cpu", "python")}, default=str))
    return 0


def _versions(names) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            pass
    return out


# -- providers ----------------------------------------------------------------------------------

def _tiny_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["y"])], "t", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def _missing_libs(lib: Path) -> list[str]:
    out = _sh(["ldd", str(lib)]) or ""
    return [ln.strip() for ln in out.splitlines() if "not found" in ln]


def cmd_providers(a) -> int:
    out: dict = {"command": _command(), "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", "").split(":"),
                 "PYTHONPATH": os.environ.get("PYTHONPATH", "").split(":")}
    ok = False
    try:
        import numpy as np
        import onnxruntime as ort

        out.update(version=ort.__version__, file=ort.__file__, available=ort.get_available_providers(),
                   device=ort.get_device())
        capi = Path(ort.__file__).parent / "capi"
        for lib in sorted(capi.glob("libonnxruntime_providers_*.so")):
            out.setdefault("ldd_not_found", {})[lib.name] = _missing_libs(lib)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        try:
            s = ort.InferenceSession(_tiny_model(), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            out["session_providers"] = s.get_providers()
            x = np.eye(4, dtype=np.float32) * 2
            out["matmul_ok"] = bool(np.allclose(s.run(None, {"x": x})[0], x @ x))
            ok = out["session_providers"][0] == "CUDAExecutionProvider" and out["matmul_ok"]
        except Exception as e:
            out["session_error"] = _err(e)
    except Exception as e:
        out["import_error"] = _err(e)
    out["cuda_ok"] = ok
    _write(a.out, out)
    print(json.dumps({k: out.get(k) for k in ("version", "file", "available", "session_providers", "cuda_ok",
                                              "ldd_not_found", "session_error", "import_error")}, default=str))
    return 0 if ok else 2


# -- latency / parity ---------------------------------------------------------------------------

def _psnr(a, b) -> float | None:
    import numpy as np

    if a is None or b is None or a.shape != b.shape:
        return None
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return "inf (identical)" if mse == 0 else round(float(10 * np.log10(255.0 ** 2 / mse)), 2)


def _spread(xs: list[float], scale: float = 1000.0, nd: int = 2) -> dict | None:
    if not xs:
        return None
    return {"median": round(statistics.median(xs) * scale, nd), "min": round(min(xs) * scale, nd),
            "max": round(max(xs) * scale, nd), "n": len(xs)}


CONFIGS = {  # name -> (device given to Pipeline.load, cuda_graph override)
    "cpu": ("cpu", None),
    "cuda": ("cuda", False),
    "cuda+graph": ("cuda", True),             # every component with CUDA graphs, as a static compile does
    "cuda+graph-denoiser": ("cuda", False),   # only the denoiser (tried when cuda+graph fails)
    "compiled": (None, None),     # a compiled artifact: its own target decides (cuda_graph from the manifest)
}


def _load(art: str, config: str, verify: bool):
    from edgegen.runtimes import Pipeline

    device, graph = CONFIGS[config]
    pipe = Pipeline.load(art, device=device, verify=verify)
    pipe.use_denoise_graph = False          # per-step loop: per-step times, the same path on every config
    if graph is not None:
        pipe.backend.options["cuda_graph"] = graph
    if config == "cuda+graph-denoiser":
        from edgegen.runtimes.onnxruntime_backend import OrtCudaComponent
        from edgegen.runtimes.pipeline import component_spec

        spec = component_spec(pipe.artifact, pipe.recipe["denoiser"])
        pipe._components[spec.name] = OrtCudaComponent(spec.name, spec.graph, spec.io, pipe.threads, 0, cuda_graph=True)
    return pipe


def _graph_flags(pipe) -> dict:
    return {n: bool(getattr(c, "cuda_graph", False)) for n, c in pipe._components.items()}


def _preload(pipe) -> list[str]:
    r = pipe.recipe
    names = [te["component"] for te in r.get("text_encoders", [])] + [r["denoiser"], r["vae_decoder"]]
    for n in names:
        pipe.component(n)
    return names


def _providers(pipe) -> dict:
    out = {}
    for n, c in pipe._components.items():
        s = getattr(c, "session", None)
        out[n] = s.get_providers()[0] if s is not None else type(c).__name__
    return out


def _latents(manifest: dict, h: int, w: int, seed: int):
    import numpy as np

    r = manifest["pipeline"]
    c, s = r["latent_channels"], r["vae_scale_factor"]
    return np.random.default_rng(seed).standard_normal((1, c, h // s, w // s)).astype(np.float32)


def _run_config(a, config: str, latents, ref: bool = False) -> tuple[dict, object]:
    """Load, warm up, time `runs` generations (none for the reference); returns (record, image of the
    parity run)."""
    import gc

    rec: dict = {"config": config}
    image = None
    with Vram() as vm:
        base = vm.used()
    rec["vram_source"] = vm.source
    pipe = None
    try:
        times: dict[str, list[float]] | None = None

        def observe(stage, inputs, outputs, seconds):
            if times is not None:
                times.setdefault(stage, []).append(seconds)

        t0 = time.perf_counter()
        pipe = _load(a.art, config, not a.no_verify)
        _preload(pipe)
        rec["backend"] = {"name": pipe.backend.name, "device": pipe.backend.device,
                          "cuda_graph": any(_graph_flags(pipe).values())}
        rec["load_seconds"] = round(time.perf_counter() - t0, 2)
        rec["vram_after_load_mib"] = _mib(vm.used())
        pipe.observers.append(observe)
        gen = dict(steps=a.steps, latents=latents, seed=a.seed)
        if a.guidance is not None:
            gen["guidance"] = a.guidance
        with Vram() as peak:
            t0 = time.perf_counter()
            warm = pipe(PROMPT, **gen)
            rec["first_generation_seconds"] = round(time.perf_counter() - t0, 3)
            runs = 0 if ref else a.runs
            if ref or (a.ref_steps in (None, a.steps) and not runs):
                image = warm
            elif a.ref_steps and a.ref_steps != a.steps:
                # after the warm-up: a captured CUDA graph is replayed here, not captured
                image = pipe(PROMPT, **{**gen, "steps": a.ref_steps})
            per_run, den = [], []
            stages: dict[str, list[float]] = {}
            for _ in range(runs):
                times = {}
                t0 = time.perf_counter()
                last = pipe(PROMPT, **gen)
                per_run.append(time.perf_counter() - t0)
                if a.ref_steps in (None, a.steps):
                    image = last    # parity on a replayed run, not on the capturing one
                den += times.get(pipe.recipe["denoiser"], [])
                for k, v in times.items():
                    stages.setdefault(k, []).append(sum(v))
                times = None
        rec["providers"] = _providers(pipe)
        rec["cuda_graph_by_component"] = _graph_flags(pipe)
        rec["cuda_graph_refused"] = {n: c.graph_refused for n, c in pipe._components.items()
                                     if getattr(c, "graph_refused", None)}
        if runs:
            rec["denoiser_per_step_ms"] = _spread(den)
            rec["end_to_end_ms"] = _spread(per_run)
            rec["stage_per_run_ms"] = {k: _spread(v)["median"] for k, v in stages.items()}
        rec["vram"] = {"before_load_mib": _mib(base), "peak_mib": _mib(peak.peak),
                       "peak_minus_before_mib": _mib(peak.peak - base) if peak.peak is not None and base is not None
                       else None, "process_mib": _mib(peak.process_used())}
        rec["ok"] = True
    except Exception as e:
        rec["ok"], rec["error"] = False, _err(e)
        rec["traceback_tail"] = traceback.format_exc().strip().splitlines()[-6:]
    finally:
        del pipe
        gc.collect()
        time.sleep(0.5)   # sessions destroyed: their arenas go back before the next config's baseline
    rec["loadavg_after"] = round(os.getloadavg()[0], 2)
    return rec, image


def cmd_latency(a) -> int:
    from edgegen.runtimes.artifact import load_artifact

    res: dict = {"command": _command(), "label": a.label, "artifact": a.art, "reference_artifact": a.ref_art or a.art,
                 "prompt": PROMPT, "seed": a.seed, "steps": a.steps, "runs": a.runs, "height": a.height,
                 "width": a.width, "guidance": a.guidance, "note": a.note, "configs": {},
                 "loadavg_before": round(os.getloadavg()[0], 2)}
    try:
        man = load_artifact(a.art, verify=False).manifest
    except Exception as e:
        res["error"] = _err(e)
        _write(a.out, res)
        print(res["error"])
        return 2
    res["family"], res["source"] = man.get("family"), man.get("source")
    res["target"] = (man.get("target") or {}).get("target")
    res["shape_profile"] = (man.get("target") or {}).get("shape_profile")
    latents = _latents(man, a.height, a.width, a.seed)
    images, ok = {}, True
    todo = list(dict.fromkeys(a.config))
    if a.ref_steps != 0:       # the CPU reference runs last: on a short budget the GPU figures come first
        ref_art = a.ref_art or a.art
        res["reference"] = {"config": "cpu", "artifact": ref_art, "steps": a.ref_steps or a.steps}
        todo = todo + ["ref:cpu"]
    for config in todo:
        if a.deadline and time.time() > a.deadline:
            res["configs"][config] = {"config": config, "ok": False, "skipped": "deadline reached"}
            _write(a.out, res)
            continue
        print(f"[{a.label}] {config} ...", flush=True)
        if config == "ref:cpu":
            sub = argparse.Namespace(**{**vars(a), "art": a.ref_art or a.art, "steps": a.ref_steps or a.steps})
            rec, img = _run_config(sub, "cpu", latents, ref=True)
        else:
            rec, img = _run_config(a, config, latents)
        images[config] = img
        ok &= rec.get("ok", False)
        res["configs"][config] = rec
        if config == "cuda+graph" and not rec.get("ok") and "cuda+graph-denoiser" not in todo:
            todo.insert(todo.index(config) + 1, "cuda+graph-denoiser")   # graphs on the denoiser alone
        if config == "ref:cpu" and img is not None:
            for name, other in images.items():
                if name != "ref:cpu" and res["configs"][name].get("ok"):
                    res["configs"][name]["psnr_vs_cpu_db"] = _psnr(img, other)
        _write(a.out, res)
        print(json.dumps({k: rec.get(k) for k in ("ok", "error", "load_seconds", "denoiser_per_step_ms",
                                                  "psnr_vs_cpu_db", "vram", "providers")}, default=str), flush=True)
    res["loadavg_after"] = round(os.getloadavg()[0], 2)
    _write(a.out, res)
    return 0 if ok else 1


# -- TensorRT-RTX -------------------------------------------------------------------------------

def cmd_rtx(a) -> int:
    res: dict = {"command": _command(), "expected": "loads where a driver is present; the EP refuses compute "
                 "capability 9.0 (its own check accepts 8.6, 8.9 and >= 12.0)", "stages": {}}
    st = res["stages"]

    def save():
        _write(a.out, res)

    try:
        import onnxruntime as ort

        res["onnxruntime"] = {"version": ort.__version__, "file": ort.__file__}
        t0 = time.perf_counter()
        import onnxruntime_ep_nv_tensorrt_rtx as plugin

        st["import"] = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), "file": plugin.__file__}
        lib = plugin.get_library_path()
        name = plugin.get_ep_name()
        res.update(library=lib, ep_name=name, ldd_not_found=_missing_libs(Path(lib)))
    except Exception as e:
        st["import"] = {"ok": False, "error": _err(e)}
        save()
        print(json.dumps(res, default=str))
        return 1
    save()
    try:
        ort.register_execution_provider_library(name, lib)
        st["register"] = {"ok": True}
    except Exception as e:
        st["register"] = {"ok": False, "error": _err(e)}
        save()
        print(json.dumps(res, default=str))
        return 1
    try:
        devs = [d for d in ort.get_ep_devices() if d.ep_name == name]
        st["ep_devices"] = {"ok": bool(devs), "count": len(devs),
                            "devices": [{"vendor": d.ep_vendor, "metadata": dict(d.ep_metadata),
                                         "device_type": str(d.device.type), "device_id": d.device.device_id,
                                         "device_metadata": dict(d.device.metadata)} for d in devs]}
    except Exception as e:
        st["ep_devices"] = {"ok": False, "error": _err(e)}
        devs = []
    save()
    graph = Path(a.art) / "unet" / "model.onnx" if a.art else None
    if devs:
        for label, model in (("session_matmul", _tiny_model()), ("session_tiny_unet", str(graph) if graph and graph.exists() else None)):
            if model is None:
                continue
            try:
                so = ort.SessionOptions()
                so.log_severity_level = 1
                so.add_provider_for_devices(devs[:1], {})
                t0 = time.perf_counter()
                s = ort.InferenceSession(model, sess_options=so)
                st[label] = {"ok": True, "providers": s.get_providers(), "seconds": round(time.perf_counter() - t0, 2)}
                del s
            except Exception as e:
                st[label] = {"ok": False, "error": _err(e)}
            save()
    try:
        ort.unregister_execution_provider_library(name)
        st["unregister"] = {"ok": True}
    except Exception as e:
        st["unregister"] = {"ok": False, "error": _err(e)}
    save()
    print(json.dumps(res, default=str))
    return 0


# -- step records and the report ------------------------------------------------------------------

def cmd_record(a) -> int:
    rec = {"name": a.name, "status": a.status, "rc": a.rc, "seconds": a.seconds, "started_at_s": a.started,
           "command": a.command_line, "reason": a.reason or None}
    if a.log and os.path.exists(a.log):
        lines = Path(a.log).read_text(errors="replace").splitlines()
        rec["log_tail"] = lines[-15:]
    Path(a.work).mkdir(parents=True, exist_ok=True)
    with open(Path(a.work) / "steps.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    return cmd_report(a) if a.out_dir else 0


def _load_json(p: Path) -> dict | None:
    """A result file; one that is not JSON (a command's stdout) comes back as its head."""
    try:
        text = p.read_text(errors="replace")
    except OSError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {"unparsed_output_head": text[:2000]} if text.strip() else None


def _pretty(cmd: str | None) -> str:
    if not cmd:
        return ""
    for prefix in ("python3 -m edgegen.export.cli ", "python -m edgegen.export.cli "):
        cmd = cmd.replace(prefix, "edgegen ")
    return cmd


def cmd_report(a) -> int:
    work = Path(a.work)
    steps = []
    if (work / "steps.jsonl").exists():
        for ln in (work / "steps.jsonl").read_text().splitlines():
            try:
                steps.append(json.loads(ln))
            except ValueError:
                pass
    results = {p.stem: _load_json(p) for p in sorted((work / "results").glob("*.json"))}
    env = results.pop("env", None) or {}
    providers = results.pop("providers", None) or {}
    rtx = results.pop("rtx", None)
    marker = results.pop("marker", None)
    meta = _load_json(work / "run.json") or {}
    gpu = (env.get("gpu") or {}).get("name") or (env.get("torch") or {}).get("device")
    report = {"schema": 1, "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "gpu": env.get("gpu"), "weights_note": WEIGHTS_NOTE, "run": meta, "env": env,
              "onnxruntime": providers, "marker": marker, "steps": steps,
              "latency": {k: v for k, v in results.items() if v and "configs" in v},
              "tensorrt_rtx": rtx,
              "other_results": {k: v for k, v in results.items() if v and "configs" not in v}}
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "gpu_check.json", report)
    _write_text(out / "gpu_check.md", _markdown(report, gpu, steps))
    return 0


def _fmt(x, nd=1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _creator(steps: list[dict], art: str | None) -> str | None:
    if not art:
        return None
    for s in steps:
        if f"--out {art} " in (s.get("command") or "") + " " and s.get("status") == "ok":
            return _pretty(s["command"])
    return None


def _marker_line(m: dict | None) -> str:
    if not m:
        return "not checked"
    if m.get("survived"):
        return f"a marker written by an earlier call was still there ({m.get('previous')})"
    return "no marker from an earlier call (fresh machine, or the first call)"


def _markdown(r: dict, gpu: str | None, steps: list[dict]) -> str:
    env, meta = r.get("env") or {}, r.get("run") or {}
    t = env.get("torch") or {}
    ort = r.get("onnxruntime") or {}
    L = [f"# edgegen GPU check: {gpu or 'GPU unknown'}", ""]
    if meta.get("dry_run"):
        L += ["**DRY RUN: nothing was executed; this only shows the report layout.**", ""]
    L += [f"- written {r['written']}; script `{meta.get('command', 'bash bench/gpu/check.sh')}`, budget "
          f"{meta.get('soft_s', '?')} s to start steps, {meta.get('hard_s', '?')} s hard; repo {meta.get('git', '?')}",
          f"- GPU: {env.get('nvidia_smi', '-')}",
          f"- torch {t.get('version', '-')} (CUDA {t.get('cuda', '-')}, cuDNN {t.get('cudnn', '-')}), "
          f"Python {env.get('python', '-')}, CPU {(env.get('cpu') or {}).get('model', '-')} x {env.get('cores', '-')} "
          f"cores ({', '.join((env.get('cpu') or {}).get('isa', [])) or '-'})",
          f"- onnxruntime {ort.get('version', '-')} from `{ort.get('file', '-')}`; providers {ort.get('available', '-')}; "
          f"CUDA EP really used: **{ort.get('cuda_ok', False)}**",
          f"- /tmp between calls: {_marker_line(r.get('marker'))}",
          f"- **{r['weights_note']}.**", ""]
    if ort.get("ldd_not_found"):
        missing = {k: v for k, v in ort["ldd_not_found"].items() if v}
        if missing:
            L += [f"- libraries not found by the CUDA/TensorRT provider libs: `{json.dumps(missing)[:600]}`", ""]
    if ort.get("session_error") or ort.get("import_error"):
        L += [f"- onnxruntime error: `{ort.get('session_error') or ort.get('import_error')}`", ""]

    lat = r.get("latency") or {}
    if lat:
        L += ["## Latency, memory and parity (fp32)", "",
              "Per-step = one denoiser call through edgegen's runtime (IO binding: host-to-device copy of the "
              "latents, run, copy back), median of the measured runs after one warm-up generation. VRAM = "
              "device memory in use (NVML), peak during the measured generations minus before loading. PSNR: "
              "image against the same graphs on onnxruntime CPU, same prompt, seed and initial latents.", "",
              "| check | config | size | steps x runs | per step ms (min-max) | end to end ms | load s | "
              "first gen s | VRAM peak-before MiB | PSNR vs CPU dB | providers |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, res in lat.items():
            label = res.get("label") or label
            for cname, c in (res.get("configs") or {}).items():
                if cname == "ref:cpu":
                    continue
                size = f"{res.get('width')}x{res.get('height')}"
                if not c.get("ok"):
                    L.append(f"| {label} | {cname} | {size} | - | **{c.get('skipped') or c.get('error', 'failed')}** "
                             f"| | | | | | |")
                    continue
                d, e = c.get("denoiser_per_step_ms") or {}, c.get("end_to_end_ms") or {}
                provs = sorted(set((c.get("providers") or {}).values()))
                L.append(f"| {label} | {cname}{' (CUDA graph)' if (c.get('backend') or {}).get('cuda_graph') else ''} "
                         f"| {size} | {res.get('steps')} x {res.get('runs')} | {_fmt(d.get('median'), 2)} "
                         f"({_fmt(d.get('min'), 2)}-{_fmt(d.get('max'), 2)}) | {_fmt(e.get('median'), 1)} "
                         f"| {_fmt(c.get('load_seconds'), 1)} | {_fmt(c.get('first_generation_seconds'), 2)} "
                         f"| {_fmt((c.get('vram') or {}).get('peak_minus_before_mib'), 0)} "
                         f"| {_fmt(c.get('psnr_vs_cpu_db'), 2)} | {', '.join(provs)} |")
        L += ["", "Commands:", ""]
        for label, res in lat.items():
            made = _creator(steps, res.get("artifact"))
            L.append(f"- {res.get('label') or label}: {'`' + made + '` then ' if made else ''}`{res.get('command')}`"
                     + (f" (note: {res['note']})" if res.get("note") else "")
                     + (f"; load average {res.get('loadavg_before')} before, {res.get('loadavg_after')} after"))
        L.append("")
    rtx = r.get("tensorrt_rtx")
    if rtx:
        L += ["## TensorRT-RTX plugin EP", "", f"Expected: {rtx.get('expected')}. Command: `{rtx.get('command')}`", ""]
        for k, v in (rtx.get("stages") or {}).items():
            L.append(f"- {k}: {'ok' if v.get('ok') else 'FAILED'}"
                     + (f": `{v['error']}`" if v.get("error") else "")
                     + (f" ({json.dumps(v.get('devices'))[:300]})" if v.get("devices") else "")
                     + (f" providers {v['providers']}" if v.get("providers") else ""))
        if rtx.get("ldd_not_found"):
            L.append(f"- ldd, not found: {rtx['ldd_not_found']}")
        L.append("")
    other = r.get("other_results") or {}
    for k, v in other.items():
        L += [f"## {k}", "", "```", json.dumps(v, indent=1, default=str)[:3000], "```", ""]
    L += ["## Steps", "", "| step | status | s | command |", "|---|---|---|---|"]
    for s in steps:
        why = f" ({s['reason']})" if s.get("reason") else ""
        L.append(f"| {s['name']} | {s['status']}{why} | {_fmt(s.get('seconds'), 0)} | `{_pretty(s.get('command'))[:500]}` |")
    bad = [s for s in steps if s.get("status") in ("failed", "timeout")]
    if bad:
        L += ["", "## Failed steps (log tails)", ""]
        for s in bad:
            L += [f"### {s['name']} ({s['status']}, rc {s.get('rc')})", "", "```",
                  *[ln[:300] for ln in s.get("log_tail", [])], "```", ""]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="check.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="sub", required=True)
    e = sub.add_parser("env")
    e.add_argument("--out", required=True)
    e.add_argument("--no-torch", action="store_true", help="Skip importing torch.")
    pr = sub.add_parser("providers")
    pr.add_argument("--out", required=True)
    lt = sub.add_parser("latency")
    lt.add_argument("--art", required=True)
    lt.add_argument("--ref-art", help="Artifact run on onnxruntime CPU for the parity reference (default --art).")
    lt.add_argument("--ref-steps", type=int, default=None,
                    help="Steps of the parity generation (default --steps; 0: no CPU reference).")
    lt.add_argument("--config", action="append", choices=list(CONFIGS), required=True,
                    help="cpu: onnxruntime CPU, timed (the parity reference runs anyway unless --ref-steps 0)")
    lt.add_argument("--steps", type=int, default=4)
    lt.add_argument("--runs", type=int, default=3)
    lt.add_argument("--height", type=int, default=512)
    lt.add_argument("--width", type=int, default=512)
    lt.add_argument("--guidance", type=float, default=None)
    lt.add_argument("--seed", type=int, default=7)
    lt.add_argument("--label", required=True)
    lt.add_argument("--note", default=None)
    lt.add_argument("--no-verify", action="store_true", help="Skip the artifact's file digests (real-size: tens of s).")
    lt.add_argument("--deadline", type=float, default=0, help="Epoch seconds after which no new config starts.")
    lt.add_argument("--out", required=True)
    rx = sub.add_parser("rtx")
    rx.add_argument("--art", help="A tiny artifact whose unet graph a session is tried on.")
    rx.add_argument("--out", required=True)
    for name in ("record", "report"):
        r = sub.add_parser(name)
        r.add_argument("--work", required=True)
        r.add_argument("--out-dir", required=(name == "report"))
        if name == "record":
            r.add_argument("--name", required=True)
            r.add_argument("--status", required=True)
            r.add_argument("--rc", type=int, default=None)
            r.add_argument("--seconds", type=float, default=None)
            r.add_argument("--started", type=float, default=None)
            r.add_argument("--cmd", dest="command_line", default="")
            r.add_argument("--reason", default="")
            r.add_argument("--log", default=None)
    a = p.parse_args(argv)
    return {"env": cmd_env, "providers": cmd_providers, "latency": cmd_latency, "rtx": cmd_rtx,
            "record": cmd_record, "report": cmd_report}[a.sub](a)


if __name__ == "__main__":
    sys.exit(main())
