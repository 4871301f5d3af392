"""`edgegen compile`: an artifact + a target -> a compiled artifact, checked by a quality gate.

Order of work: everything that can be refused without running a model is refused first
(artifact and its digests, target, library, device profile, capability rules, shapes, --out);
then the parent runs its gate prompts on onnxruntime CPU (the reference); then, inside
write_artifact's temporary folder, each component is built by the backend, the compiled
pipeline is gated against the reference per component and end to end, and the manifest with
its `target` section is written. Any failure removes the temporary folder: nothing is written.
"""
from __future__ import annotations

import copy
import gc
import time
from datetime import datetime, timezone
from pathlib import Path

from .artifact import Artifact, check_out_path, digest_files, load_artifact, save_manifest, sha256_file, write_artifact
from .backend import TARGETS, ComponentSpec, backend_class, cache_key, proc_status_bytes
from .capability import Device, check
from .errors import EdgegenError
from .shape_profile import IMAGE_DIMS, ShapeProfile, component_ios, is_static, narrow_resolution, recipe_profile

# Gate limits by the precision the compiled graph computes in, against the parent on ORT CPU.
# f32 must agree with onnxruntime to rounding; 16-bit compute and a quantized parent (whose
# int8 kernels differ between runtimes) get the limits of the optimize passes that cost as much.
LIMITS = {
    "f32": {"cosine": 0.9999, "rel_err": 0.01, "psnr": 40.0, "ssim": 0.98},
    "16bit": {"cosine": 0.999, "rel_err": 0.05, "psnr": 30.0, "ssim": 0.9},
    "quantized": {"cosine": 0.98, "rel_err": 0.2, "psnr": 24.0, "ssim": 0.85},
}
QUANTIZED = ("int8", "fp8", "int4", "int8-weights", "int8-dynamic")


def gate_limits(precision: str | None, component_precisions: list[str]) -> dict:
    if any(p in QUANTIZED for p in component_precisions):
        return LIMITS["quantized"]
    if precision in ("bf16", "f16") or any(p in ("fp16", "bf16") for p in component_precisions):
        return LIMITS["16bit"]
    return LIMITS["f32"]


def _pinned_dims(traj, ios_wide: dict) -> dict[str, dict[str, int]]:
    """Dims no image size decides (text length), at the values the parent's run fed."""
    out = {}
    for comp, feeds in traj.gate_inputs.items():
        if not feeds:
            continue
        sizes = ios_wide[comp].infer_sizes(feeds[0])
        out[comp] = {d: v for d, v in sizes.items() if d != "batch" and d not in IMAGE_DIMS}
    return out


def compile_artifact(src: str | Path, target: str, out: str | Path, force: bool = False, device: str | None = None,
                     precision: str | None = None, height=None, width=None, batch=None, ov_device: str | None = None,
                     options: dict | None = None, gate: bool = True, thresholds: dict | None = None,
                     gate_prompts: int = 2, steps: int | None = None, say=lambda msg: None) -> Path:
    out = Path(out)
    if target not in TARGETS:
        raise EdgegenError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    backend_name, default_device = TARGETS[target]
    if ov_device and target != "openvino":
        raise EdgegenError("--ov-device only applies to --target openvino")
    cls = backend_class(backend_name)
    art = load_artifact(src)          # digests checked: a corrupted graph stops here
    if "target" in art.manifest:
        raise EdgegenError(f"{art.root} is already compiled (for {art.manifest['target']['target']}); "
                           f"compile its parent {art.manifest['target'].get('parent', {}).get('path', '')}")
    if Path(src).resolve() == out.resolve():
        raise EdgegenError("--out must differ from the artifact being compiled")
    bad = set(thresholds or {}) - set(LIMITS["f32"])
    if bad:
        raise EdgegenError(f"unknown gate metric {sorted(bad)[0]!r}; known: {', '.join(LIMITS['f32'])}")
    if device:
        from ..profiles.device import get_profile

        dev = Device.from_profile(get_profile(device))
    else:
        dev = Device.this_host(target)
    asked, parent = ShapeProfile.parse(height, width, batch), recipe_profile(art.manifest["pipeline"])
    # What the user leaves out stays as the parent was exported (a static export compiles static).
    prof = ShapeProfile(*(getattr(asked, k) or getattr(parent, k) for k in ("height", "width", "batch")))
    # DeepCache's shallow U-Net runs in the denoiser's loop at the denoiser's batch (as
    # Pipeline.stage_of has it), so it takes the denoiser's shapes.
    shallow = (art.manifest.get("pipeline_options") or {}).get("deepcache", {}).get("component")
    roles = {**art.roles(), **({shallow: "denoiser"} if shallow in art.components else {})}
    recipe = narrow_resolution(art.manifest["pipeline"], prof)
    ios = component_ios(art.manifest, prof, roles)    # a shape outside the exported range stops here
    dev_name = ov_device or default_device
    check(target, dev, art.manifest, precision, prof.static, dev_name if target == "openvino" else "CPU",
          fixed_batch=prof.batch is not None and prof.batch.fixed)
    why = cls.missing()     # after the device rules: installing a library would not fix those
    if why:
        raise EdgegenError(f"--target {target} is not available here: {why}")
    check_out_path(out, force)
    backend = cls(device=dev_name, precision=precision, options={**(options or {})})
    backend.check_options()
    why = backend.not_ready()
    if why:
        raise EdgegenError(f"--target {target} is not available here: {why}")
    if target == "cuda" and "cuda_graph" not in backend.options:
        backend.options["cuda_graph"] = prof.static

    traj = None
    if gate or prof.static:
        say("running the parent on onnxruntime CPU for the gate's reference outputs")
        from ..optimize.calibrate import collect

        d = recipe["defaults"]
        try:
            traj = collect(art, 0, gate_prompts, steps, d["height"], width=d["width"], say=say,
                           batch=prof.batch.opt if prof.batch is not None and prof.batch.fixed else 1)
        except (EdgegenError, ValueError) as e:
            raise EdgegenError(f"cannot run the parent pipeline for gate data: {e}") from None
    if prof.static:
        ios = component_ios(art.manifest, prof, roles, _pinned_dims(traj, ios))

    manifest = copy.deepcopy(art.manifest)
    manifest["pipeline"] = recipe
    manifest.pop("gate", None)
    rss0, t0 = proc_status_bytes("VmHWM"), time.time()
    with write_artifact(out, force) as tmp:
        comp_keys, binding, options = {}, backend.binding(), backend.build_options()
        for name, comp in art.components.items():
            spec = ComponentSpec(name, art.graph_path(name), ios[name], art.root, None, is_static(ios[name]))
            digest = comp["files"][comp["graph"]]["sha256"]
            key = cache_key(binding, options, ios[name].to_dict()["dims"], digest)
            comp_keys[name] = key
            rec = manifest["components"][name]
            rec["io"] = ios[name].to_dict()
            say(f"{name}: building for {target}")
            tc = time.time()
            try:
                built = backend.build(spec, tmp / name, key)
            except EdgegenError:
                raise
            except Exception as e:  # a library refusing a graph: one line, not a traceback
                msg = (str(e).strip().splitlines() or [""])[0][:300]
                raise EdgegenError(f"{target} could not build {name}: {type(e).__name__}: {msg}") from e
            if built is None:       # the ONNX graph is what the backend loads
                from ..optimize.graph import link_or_copy

                for rel in comp["files"]:
                    link_or_copy(art.root / rel, tmp / rel)
                rec["compiled"] = {"cache_key": key, "seconds": round(time.time() - tc, 2)}
                continue
            rels = [f"{name}/{f}" for f in built.files]
            rec["graph"] = f"{name}/{built.graph}"
            rec["files"] = digest_files(tmp, rels)
            rec["compiled"] = {"cache_key": key, "seconds": round(time.time() - tc, 2), **built.info,
                               "parent_graph_sha256": digest}
        _copy_shared(art, manifest, tmp, backend.runs_onnx_graphs)
        build_seconds = time.time() - t0
        peak = proc_status_bytes("VmHWM")
        manifest["target"] = {
            "target": target, "backend": backend.name, "versions": backend.versions(),
            "options": options, "shape_profile": {**prof.to_dict(), "static": prof.static},
            "binding": binding,
            "fingerprint": {"host": backend.host(), "graphs": {n: c["files"][c["graph"]]["sha256"]
                                                                for n, c in art.components.items()}},
            "cache_keys": comp_keys, "device_profile": device,
            "build": {"seconds": round(build_seconds, 2),
                      "peak_rss_bytes": peak, "rss_before_bytes": rss0,
                      "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            "parent": {"path": str(Path(src)), "manifest_sha256": sha256_file(art.root / "manifest.json")},
        }
        new_art = Artifact(tmp, manifest)
        if gate:
            _gate(art, new_art, traj, thresholds or {}, precision or backend.resolved_precision(), target, say)
        else:
            manifest["target"]["gate"] = {"skipped": True}
        save_manifest(tmp, manifest)
    return out


def _copy_shared(art: Artifact, manifest: dict, tmp: Path, runs_onnx_graphs: bool) -> None:
    """Tokenizers, scheduler and sampler graphs as they are. The one-call denoise graphs embed
    the whole denoiser in ONNX: a backend that compiled the denoiser runs the per-step loop
    instead, so they are left out rather than shipped uncompiled."""
    from ..optimize.graph import link_or_copy

    drop = set()
    if not runs_onnx_graphs:
        for entry in manifest.pop("denoise_graphs", {}).values():
            drop |= set(entry.get("files", {}))
    manifest["files"] = {rel: f for rel, f in manifest.get("files", {}).items() if rel not in drop}
    for rel in manifest["files"]:
        link_or_copy(art.root / rel, tmp / rel)


def _gate(parent: Artifact, child: Artifact, traj, overrides: dict, precision: str | None, target: str, say) -> None:
    from ..optimize.gate import component_gate, end_to_end_gate
    from ..optimize.registry import Thresholds
    from .pipeline import Pipeline

    precs = [c.get("precision", "fp32") for c in parent.components.values()]
    thr = Thresholds(**{**gate_limits(precision, precs), **overrides})
    pipe = Pipeline.for_artifact(child)
    failures, per = [], {}
    for name in child.components:
        say(f"gate: {name} on {target}")
        try:
            comp = pipe.component(name)
            refused = getattr(comp, "graph_refused", None)
            if refused:     # the compiled manifest says what will really run
                say(f"{name}: no CUDA graph: {refused}")
                child.manifest["components"][name]["compiled"]["cuda_graph"] = {"used": False, "why": refused}
            res = component_gate(lambda f: comp(**f), traj.gate_inputs[name], traj.gate_outputs[name], thr)
        except EdgegenError:
            raise
        except Exception as e:
            raise EdgegenError(f"compile gate failed: {name} does not run on {target}: "
                               f"{(str(e).strip().splitlines() or [''])[0][:200]}") from None
        per[name] = res
        child.manifest["components"][name]["gate"] = res
        if not res["passed"]:
            failures.append(f"{name} {res['failures'][0]}")
    # Free this pipeline's compiled components before the end-to-end gate loads its own: two
    # sets of a real-size UNet at once doubled the compile's peak memory.
    pipe = comp = None
    gc.collect()
    say("gate: end to end")
    e2e = end_to_end_gate(child, traj.gate_runs, traj.images, thr)
    child.manifest["target"]["gate"] = {"reference": "parent artifact on onnxruntime CPU", "end_to_end": e2e,
                                        "data": traj.describe(), "thresholds": thr.to_dict()}
    if not e2e["passed"]:
        failures.append(f"end-to-end image {e2e['failures'][0]}")
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise EdgegenError(f"compile gate failed for {target}: {failures[0]}{more}; nothing written "
                           f"(--no-gate to keep it anyway)")


def compile_command():
    """The click command (built on demand so importing this module needs no click)."""
    import click

    @click.command("compile")
    @click.argument("artifact", type=click.Path(path_type=Path))
    @click.option("--target", required=True, help=f"One of: {', '.join(TARGETS)}.")
    @click.option("--out", required=True, type=click.Path(path_type=Path), help="Compiled artifact folder to create.")
    @click.option("--device", "device", help="Device profile to compile for (see `edgegen profiles`); default: this host.")
    @click.option("--precision", help="Inference precision where the backend takes one (openvino: f32, bf16, f16).")
    @click.option("--height", help="Image height: N (static) or MIN:MAX / MIN:OPT:MAX (default: the artifact's range).")
    @click.option("--width", help="Image width, as --height.")
    @click.option("--batch", help="Images per call, as --height (the denoiser doubles it under guidance).")
    @click.option("--ov-device", type=click.Choice(["CPU", "GPU", "NPU"]), help="OpenVINO device (default CPU).")
    @click.option("--option", "extra", multiple=True, metavar="K=V",
                  help="Backend build option (tensorrt: refit, weight_streaming, workspace_gb; cuda: cuda_graph; "
                       "openvino: keep_f32=Add+Multiply).")
    @click.option("--no-gate", is_flag=True, help="Skip the compile gate (results are not recorded).")
    @click.option("--threshold", multiple=True, metavar="METRIC=VALUE", help="Override a gate limit.")
    @click.option("--gate-prompts", type=int, default=2, show_default=True)
    @click.option("--steps", type=int, help="Steps of the gate's trajectories (default: the family's).")
    @click.option("--force", is_flag=True, help="Replace --out if it exists.")
    def compile_cmd(artifact, target, out, device, precision, height, width, batch, ov_device, extra, no_gate,
                    threshold, gate_prompts, steps, force):
        """Compile ARTIFACT's graphs for a TARGET backend; the result is gated against the parent."""
        from rich.console import Console

        from ..optimize.commands import _kv, _value, parse_thresholds

        options = dict(_kv(e, "--option") for e in extra)
        thresholds = parse_thresholds(threshold)
        if steps is not None and steps < 1:
            raise EdgegenError(f"--steps must be >= 1, got {steps}")
        if not 1 <= gate_prompts <= 8:
            raise EdgegenError("--gate-prompts must be between 1 and 8")
        console = Console(stderr=True)
        with console.status("starting") as status:
            def progress(msg):
                console.log(msg)
                status.update(msg)

            path = compile_artifact(artifact, target, out, force, device, precision, height, width, batch, ov_device,
                                    {k: _value(v) for k, v in options.items()}, not no_gate, thresholds,
                                    gate_prompts, steps, say=progress)
        t = load_artifact(path, verify=False).manifest["target"]
        g = t.get("gate", {})
        if not g.get("skipped"):
            e = g["end_to_end"]
            click.echo(f"gate: end to end PSNR {e['psnr']:.2f} dB, SSIM {e['ssim']:.4f} against the parent on "
                       f"onnxruntime CPU")
        click.echo(f"compiled for {target} ({', '.join(f'{k} {v}' for k, v in t['versions'].items())}, "
                   f"precision {t['options'].get('precision') or 'from the graph'}) in {t['build']['seconds']:.1f} s")
        click.echo(f"wrote {path}")

    return compile_cmd
