"""`edgegen optimize --pipeline-option`: an artifact + pipeline options -> a new, gated artifact.

The parent's files are linked (hard links: nothing is copied), each option writes what it
needs, and the new pipeline regenerates the parent's gate prompts from the same latents:
worst-prompt PSNR and SSIM against the parent's images decide. The manifest records each
option with its version and config, the gate, and the U-Net work the step plan does against
the plain loop at the gate's step count.
"""
from __future__ import annotations

import copy
from datetime import datetime, timezone
from pathlib import Path

from ...runtimes.artifact import Artifact, check_out_path, load_artifact, save_manifest, sha256_file, write_artifact
from ...runtimes.errors import EdgegenError
from ...runtimes.step_options import KEY, StepPlan
from .. import graph as G
from ..calibrate import collect
from ..gate import gate_images
from ..registry import Thresholds
from .registry import PipelineOption


def apply_options(src: str | Path, options: list[PipelineOption], out: str | Path, force: bool = False,
                  gate: bool = True, thresholds: dict[str, float] | None = None, gate_prompts: int = 2,
                  steps: int | None = None, size: int | None = None, say=lambda msg: None) -> Path:
    out = Path(out)
    art = load_artifact(src)
    if "target" in art.manifest:
        raise EdgegenError(f"{art.root} is compiled; add pipeline options to its parent, then compile that")
    have = art.manifest.get(KEY) or {}
    for opt in options:
        if opt.name in have:
            raise EdgegenError(f"{art.root} already uses {opt.name} ({have[opt.name]['config']}); "
                               "start from its parent to change it")
        why = opt.applicable(art)
        if why:
            raise EdgegenError(f"cannot use {opt.name} on {art.root}: {why}")
    bad = set(thresholds or {}) - {"psnr", "ssim"}
    if bad:
        raise EdgegenError(f"unknown gate metric {sorted(bad)[0]!r} for pipeline options; known: psnr, ssim")
    check_out_path(out, force)
    if Path(src).resolve() == out.resolve():
        raise EdgegenError("--out must differ from the artifact being optimized")
    traj = None
    if gate:
        say("running the parent's gate prompts")
        try:
            traj = collect(art, 0, gate_prompts, steps, size, say=say)
        except EdgegenError as e:
            raise EdgegenError(f"cannot run the parent pipeline for gate data: {e}") from None

    manifest = copy.deepcopy(art.manifest)
    with write_artifact(out, force) as tmp:
        for comp in art.components.values():
            for rel in comp["files"]:
                G.link_or_copy(art.root / rel, tmp / rel)
        for rel in manifest.get("files", {}):   # tokenizers, scheduler, sampler and denoise graphs
            G.link_or_copy(art.root / rel, tmp / rel)
        entries = dict(have)
        for opt in options:
            say(f"{opt.name}: {opt.config}")
            try:
                facts = opt.build(art, tmp, manifest, say)
            except EdgegenError:
                raise
            except Exception as e:   # a library refusing a graph: one line, not a traceback
                msg = (str(e).strip().splitlines() or [""])[0][:300]
                raise EdgegenError(f"{opt.name} failed: {type(e).__name__}: {msg}") from e
            entries[opt.name] = {**opt.entry(), **facts,
                                 "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        manifest[KEY] = entries
        child = Artifact(tmp, manifest)
        if gate:
            psnr = min(o.psnr for o in options)
            ssim = min(o.ssim for o in options)
            thr = Thresholds(cosine=0.0, rel_err=float("inf"), psnr=psnr, ssim=ssim).with_overrides(thresholds or {})
            say("gate: end to end")
            e2e = gate_images(child, traj, thr, f"with {'+'.join(o.name for o in options)}")
            work = StepPlan.from_options(entries, traj.config["steps"]).denoiser_work(
                manifest["pipeline"].get("guidance") == "cfg")
            gate_rec = {"end_to_end": e2e, "data": traj.describe(), "denoiser_work": work}
            for opt in options:
                entries[opt.name]["gate"] = gate_rec
            if not e2e["passed"]:
                raise EdgegenError(f"quality gate failed for {'+'.join(o.name for o in options)}: end-to-end image "
                                   f"{e2e['failures'][0]}; nothing written (--no-gate to keep it anyway)")
        else:
            for opt in options:
                entries[opt.name]["gate"] = {"skipped": True}
        manifest["parent"] = {"path": str(Path(src)), "manifest_sha256": sha256_file(art.root / "manifest.json")}
        save_manifest(tmp, manifest)
    return out
