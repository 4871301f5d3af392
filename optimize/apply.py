"""`optimize`: an artifact + passes -> a new, gated artifact.

Order of work: check everything that can be checked without running a model (artifact,
format, passes, components, --out), collect trajectories from the parent, then inside
write_artifact's temporary folder: run the pass chain per component, copy the untouched
files, gate, write the manifest. Any error (a failing gate included) removes the
temporary folder: nothing is written.
"""
from __future__ import annotations

import copy
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from ..runtimes.artifact import Artifact, check_out_path, digest_files, load_artifact, save_manifest, write_artifact
from ..runtimes.errors import EdgegenError
from . import graph as G
from .calibrate import Trajectories, collect
from .gate import component_gate, gate_images
from .registry import NothingToDo, Pass, PassContext, Thresholds, order_passes

FORMAT = "onnx"


def roles(art: Artifact) -> dict[str, str]:
    return art.roles()


def check_format(art: Artifact) -> None:
    passes = art.manifest.get("passes") or [{}]
    fmt = passes[0].get("config", {}).get("format", FORMAT)
    if fmt != FORMAT:
        raise EdgegenError(f"{art.root} is a {fmt} artifact; edgegen optimize works on onnx artifacts")
    for name, comp in art.components.items():
        if not str(comp.get("graph", "")).endswith(".onnx"):
            raise EdgegenError(f"{art.root}: component {name} is not an ONNX graph ({comp.get('graph')})")


def plan(art: Artifact, passes: list[Pass], components: list[str] | None) -> dict[str, list[Pass]]:
    """Component -> the passes to run on it, in order. Explicit components must accept
    every pass; default components are each pass's roles where the pass applies."""
    role = roles(art)
    if components:
        unknown = [c for c in components if c not in art.components]
        if unknown:
            raise EdgegenError(f"unknown component {unknown[0]!r}; this artifact has {', '.join(art.components)}")
    out: dict[str, list[Pass]] = {}
    skipped: dict[str, str] = {}
    for p in passes:
        chosen = components or [c for c in art.components if role[c] in p.roles]
        for c in chosen:
            why = p.applicable(art.components[c]) or p.applicable_graph(art.graph_path(c))
            if why:
                if components:
                    raise EdgegenError(f"cannot apply {p.name} to {c}: {why}")
                if role[c] in p.roles:
                    skipped.setdefault(c, f"{p.name} on {c}: {why}")
                continue
            out.setdefault(c, []).append(p)
    if not out:
        why = f" ({'; '.join(skipped.values())})" if skipped else ""
        raise EdgegenError(f"no component to optimize: {', '.join(p.name for p in passes)} "
                           f"applies to none of {', '.join(art.components)}{why}")
    return out


def optimize(src: str | Path, passes: list[Pass], out: str | Path, force: bool = False,
             components: list[str] | None = None, gate: bool = True, thresholds: dict[str, float] | None = None,
             trajectories: Trajectories | None = None, calibration_prompts: int = 4, gate_prompts: int = 2,
             steps: int | None = None, size: int | None = None, say=lambda msg: None) -> Path:
    out = Path(out)
    art = load_artifact(src)
    check_format(art)
    if (art.manifest.get("pipeline_options") or {}).get("deepcache"):
        raise EdgegenError(f"{art.root} uses deepcache, whose graphs are cut from its U-Net: apply graph passes to "
                           "its parent, then --pipeline-option deepcache to the result")
    passes = order_passes(passes)
    todo = plan(art, passes, components)
    bad = set(thresholds or {}) - set(Thresholds.NAMES)
    if bad:
        raise EdgegenError(f"unknown gate metric {sorted(bad)[0]!r}; known: {', '.join(Thresholds.NAMES)}")
    check_out_path(out, force)
    if Path(src).resolve() == out.resolve():
        raise EdgegenError("--out must differ from the artifact being optimized")
    role = roles(art)
    needs_data = gate or any(p.needs_calibration for p in passes)
    if needs_data and trajectories is None:
        say("collecting calibration and gate data from the parent's sampler trajectories")
        try:
            trajectories = collect(art, calibration_prompts, gate_prompts, steps, size, say=say)
        except EdgegenError as e:
            raise EdgegenError(f"cannot run the parent pipeline for calibration/gate data: {e}") from None

    manifest = copy.deepcopy(art.manifest)
    with write_artifact(out, force) as tmp:
        work = tmp / ".work"
        for name, comp in art.components.items():
            chain = todo.get(name)
            if not chain:
                for rel in comp["files"]:
                    G.link_or_copy(art.root / rel, tmp / rel)
                continue
            cur, reports, precision = art.graph_path(name), [], comp.get("precision", "fp32")
            compute = comp.get("compute_dtype")
            applied = []
            for i, p in enumerate(chain):
                say(f"{name}: {p.name}")
                t0 = time.time()
                dst = work / name / f"{i}-{p.name}"
                ctx = PassContext(name, role[name], cur, dst, art.io(name),
                                  trajectories.calibration.get(name, []) if trajectories else [], say)
                try:
                    res = p.apply(ctx)
                except NothingToDo as e:
                    if components:
                        raise EdgegenError(f"{p.name} cannot change {name}: {e}") from None
                    say(f"{name}: {p.name} left it unchanged ({e})")
                    continue
                except EdgegenError:
                    raise
                except Exception as e:  # a library refusing a graph: one line, not a traceback
                    msg = (str(e).strip().splitlines() or [""])[0][:300]
                    raise EdgegenError(f"{p.name} failed on {name}: {type(e).__name__}: {msg}") from e
                cur = dst / res.files[0]
                precision = res.precision or precision
                compute = res.report.get("compute", compute)
                applied.append(p)
                reports.append({"pass": p.name, "seconds": round(time.time() - t0, 2), **res.report})
            if not applied:
                del todo[name]
                for rel in comp["files"]:
                    G.link_or_copy(art.root / rel, tmp / rel)
                continue
            todo[name] = applied
            final = cur.parent
            files = sorted(f.name for f in final.iterdir())
            (tmp / name).mkdir()
            for f in files:
                os.replace(final / f, tmp / name / f)
            rels = [f"{name}/{f}" for f in files]
            rec = manifest["components"][name]
            parent_bytes = sum(f["bytes"] for f in comp["files"].values())
            rec["graph"] = f"{name}/{cur.name}"
            rec["files"] = digest_files(tmp, rels)
            rec["precision"] = precision
            if compute is not None:
                rec["compute_dtype"] = compute
            new_bytes = sum(f["bytes"] for f in rec["files"].values())
            rec["optimize"] = {"passes": [p.name for p in applied], "parent_bytes": parent_bytes, "bytes": new_bytes,
                               "size_ratio": round(new_bytes / parent_bytes, 4),
                               "weights": G.weight_change(art.graph_path(name), tmp / rec["graph"]),
                               "reports": reports}
            # Export's check against PyTorch was of the parent graph; this one has its gate.
            if "validation" in rec:
                rec["optimize"]["parent_validation"] = rec.pop("validation")
        shutil.rmtree(work, ignore_errors=True)
        if not todo:
            raise EdgegenError(f"{', '.join(p.name for p in passes)} changed no component of {art.root}")
        # Non-graph files (tokenizers, scheduler) are shared as they are.
        for rel in manifest.get("files", {}):
            G.link_or_copy(art.root / rel, tmp / rel)

        new_art = Artifact(tmp, manifest)
        if gate:
            _gate(art, new_art, todo, trajectories, thresholds or {}, passes, say)
        else:
            for name in todo:
                manifest["components"][name]["gate"] = {"skipped": True}
            manifest["gate"] = {"skipped": True}
        # A one-call denoise graph embeds its denoiser: rebuilt from the optimized one once the gate
        # (which runs the per-step loop) has passed, so a few-step artifact keeps that path and
        # carries no stale graph.
        from ..export.sampler_graphs import rebuild_denoise_graphs

        rebuild_denoise_graphs(tmp, manifest, say)
        done = []
        for p in passes:
            comps = sorted(c for c, ch in todo.items() if p in ch)
            secs = sum(r["seconds"] for c in comps for r in manifest["components"][c]["optimize"]["reports"]
                       if r["pass"] == p.name)
            d = {**p.record(), "components": comps, "seconds": round(secs, 1),
                 "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            if p.needs_calibration and trajectories is not None:
                d["calibration"] = trajectories.describe()
            done.append(d)
        manifest["passes"] = list(art.manifest.get("passes", [])) + done
        manifest["parent"] = {"path": str(Path(src)), "manifest_sha256": _sha(art.root / "manifest.json")}
        manifest["tools"] = {**manifest.get("tools", {}), **_tool_versions()}
        save_manifest(tmp, manifest)
    return out


def _tool_versions() -> dict[str, str]:
    """Versions of what optimize used (export's own helper imports torch)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("edgegen", "onnx", "onnxruntime", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _sha(path: Path) -> str:
    from ..runtimes.artifact import sha256_file

    return sha256_file(path)


def _gate(parent: Artifact, child: Artifact, todo: dict[str, list[Pass]], traj: Trajectories,
          overrides: dict[str, float], passes: list[Pass], say) -> None:
    from ..runtimes.onnxruntime_backend import OrtComponent

    failures = []
    for name, chain in todo.items():
        thr = chain[0].thresholds
        for p in chain[1:]:
            thr = thr.loosest(p.thresholds)
        thr = thr.with_overrides(overrides)
        say(f"gate: {name}")
        try:
            comp = OrtComponent(name, child.graph_path(name), child.io(name))
        except Exception as e:  # a graph ORT cannot load fails its gate, it is not a crash
            raise EdgegenError(f"gate failed: {name} does not load in onnxruntime: {str(e).splitlines()[0]}") from None
        try:
            res = component_gate(lambda f: comp(**f), traj.gate_inputs[name], traj.gate_outputs[name], thr)
        except EdgegenError:
            raise
        except Exception as e:
            raise EdgegenError(f"gate failed: {name} does not run in onnxruntime: {str(e).splitlines()[0]}") from None
        child.manifest["components"][name]["gate"] = res
        if not res["passed"]:
            failures.append(f"{name} {res['failures'][0]}")
    thr = passes[0].thresholds
    for p in passes[1:]:
        thr = thr.loosest(p.thresholds)
    thr = thr.with_overrides(overrides)
    say("gate: end to end")
    e2e = gate_images(child, traj, thr, "with the optimized graphs")
    child.manifest["gate"] = {"end_to_end": e2e, "data": traj.describe()}
    if not e2e["passed"]:
        failures.append(f"end-to-end image {e2e['failures'][0]}")
    if failures:
        names = "+".join(p.name for p in passes)
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise EdgegenError(f"quality gate failed for {names}: {failures[0]}{more}; "
                           f"nothing written (--no-gate to keep it anyway)")
